//! Compression of layers and archives, detected by magic bytes (never by name or media type).

use std::io::{self, Cursor, Read};

use crate::error::{ImageError, Result};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// How a stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for a tar compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Recognises a compression from the first bytes of a stream.
    pub fn detect(prefix: &[u8]) -> Result<Compression> {
        if prefix.starts_with(GZIP_MAGIC) {
            Ok(Compression::Gzip)
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Ok(Compression::Zstd)
        } else if prefix.starts_with(XZ_MAGIC) {
            Err(ImageError::Unsupported("xz-compressed stream".to_owned()))
        } else if prefix.starts_with(BZIP2_MAGIC) && prefix.len() > 3 && prefix[3].is_ascii_digit()
        {
            Err(ImageError::Unsupported(
                "bzip2-compressed stream".to_owned(),
            ))
        } else {
            Ok(Compression::None)
        }
    }
}

/// A reader with its first bytes already consumed and put back in front.
pub(crate) type Peeked<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// Reads up to `n` bytes ahead (fewer only at end of stream) without losing them.
pub(crate) fn peek<R: Read>(mut reader: R, n: usize) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    let prefix = buf.clone();
    Ok((prefix, Cursor::new(buf).chain(reader)))
}

/// Detects the compression of `reader` and returns the decompressed stream.
pub(crate) fn decompress<'a, R: Read + 'a>(reader: R) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let (prefix, reader) = peek(reader, 8).map_err(ImageError::stream("reading stream header"))?;
    let kind = Compression::detect(&prefix)?;
    let out: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(reader)
                .map_err(ImageError::stream("starting zstd decoder"))?,
        ),
    };
    Ok((kind, out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn detects_by_magic_and_round_trips() {
        let data = b"hello layer".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (bytes, kind) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
        ] {
            let (k, mut r) = decompress(&bytes[..]).unwrap();
            assert_eq!(k, kind);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        assert!(matches!(
            decompress(&b"\xfd7zXZ\x00rest"[..]),
            Err(ImageError::Unsupported(_))
        ));
        let (k, mut r) = decompress(&b"ab"[..]).unwrap();
        assert_eq!(k, Compression::None);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
    }
}
