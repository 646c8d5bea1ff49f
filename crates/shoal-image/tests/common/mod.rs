//! Test helpers: layer and archive builders (tar crate only, no Docker, no network) and a
//! snapshot of a store's on-disk state for "nothing changed" assertions.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use shoal_image::{Compression, host_arch};
use tar::{EntryType, Header};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips a test body when not root, saying so.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipping: this test needs root");
            return;
        }
    };
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// Builds a layer tar entry by entry, including entries `tar::Builder` would refuse.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    /// Appends with the name (and link name) written raw into the header.
    pub fn raw(
        mut self,
        name: &[u8],
        link: &[u8],
        kind: EntryType,
        mode: u32,
        data: &[u8],
    ) -> Self {
        let mut h = Self::header(kind, mode, data.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.owned_dir(path, mode, 0, 0)
    }

    pub fn owned_dir(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.owned_file(path, data, mode, 0, 0)
    }

    pub fn owned_file(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> Self {
        let mut h = Self::header(kind, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// `.wh.<name>` next to `path`'s parent.
    pub fn whiteout(self, path: &str) -> Self {
        let p = Path::new(path);
        let name = format!(".wh.{}", p.file_name().unwrap().to_str().unwrap());
        let wh = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => format!("{}/{name}", d.display()),
            _ => name,
        };
        self.file(&wh, b"", 0o644)
    }

    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// A PAX extended header (records `key=value`) applying to the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = Self::header(EntryType::XHeader, 0o644, data.len() as u64);
        self.b
            .append_data(&mut h, "PaxHeaders/x", &data[..])
            .unwrap();
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

pub fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An image under construction: uncompressed layer tars plus how to store each.
#[derive(Clone)]
pub struct TestImage {
    pub layers: Vec<(Vec<u8>, Compression)>,
    pub cmd: Vec<String>,
    pub created: String,
    /// Overrides the DiffIDs written into the config (to test mismatches).
    pub diff_ids_override: Option<Vec<String>>,
    pub architecture: String,
}

impl TestImage {
    pub fn new(layers: Vec<Vec<u8>>) -> TestImage {
        TestImage {
            layers: layers.into_iter().map(|l| (l, Compression::None)).collect(),
            cmd: vec!["/bin/sh".into()],
            created: "2024-05-01T10:00:00Z".into(),
            diff_ids_override: None,
            architecture: host_arch().into(),
        }
    }

    pub fn compressed(mut self, c: Compression) -> TestImage {
        for l in &mut self.layers {
            l.1 = c;
        }
        self
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.diff_ids_override
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|(l, _)| sha256(l)).collect())
    }

    pub fn config(&self) -> Vec<u8> {
        let history: Vec<_> = (0..self.layers.len())
            .map(|i| json!({"created": self.created, "created_by": format!("layer {i}")}))
            .collect();
        serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "created": self.created,
            "config": {"Cmd": self.cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
            "history": history,
        }))
        .unwrap()
    }

    pub fn id(&self) -> String {
        sha256(&self.config())
    }

    pub fn blobs(&self) -> Vec<(Vec<u8>, &'static str)> {
        self.layers
            .iter()
            .map(|(l, c)| (compress(l, *c), media_type(*c)))
            .collect()
    }

    pub fn manifest(&self) -> Vec<u8> {
        let config = self.config();
        let layers: Vec<_> = self
            .blobs()
            .iter()
            .map(|(b, mt)| json!({"mediaType": mt, "digest": sha256(b), "size": b.len()}))
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap()
    }
}

/// Writes named files into an outer archive tar.
pub struct Archive {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Archive {
    fn default() -> Self {
        Archive::new()
    }
}

impl Archive {
    pub fn new() -> Archive {
        Archive {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, name, data).unwrap();
        self
    }

    pub fn raw(mut self, name: &[u8], link: &[u8], kind: EntryType, data: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        self.b.append_link(&mut h, name, target).unwrap();
        self
    }

    pub fn blob(self, data: &[u8]) -> Self {
        let name = format!("blobs/sha256/{}", hex_of(&sha256(data)));
        self.file(&name, data)
    }

    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// A legacy `docker save` archive: `<id>/layer.tar`, `<cfg>.json`, `manifest.json`, `repositories`.
pub fn docker_archive(images: &[(&TestImage, &[&str])]) -> Vec<u8> {
    let mut a = Archive::new();
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    for (img, tags) in images {
        let config = img.config();
        let cfg_name = format!("{}.json", hex_of(&sha256(&config)));
        a = a.file(&cfg_name, &config);
        let mut layer_paths = Vec::new();
        for (blob, _) in img.blobs() {
            let dir = hex_of(&sha256(&blob)).to_owned();
            let path = format!("{dir}/layer.tar");
            if !layer_paths.contains(&path) {
                a = a
                    .file(&format!("{dir}/VERSION"), b"1.0")
                    .file(&format!("{dir}/json"), b"{}")
                    .file(&path, &blob);
            }
            layer_paths.push(path);
        }
        for t in tags.iter() {
            let (name, tag) = t.rsplit_once(':').unwrap();
            repositories.insert(name.to_owned(), json!({ tag: "0" }));
        }
        manifest.push(json!({"Config": cfg_name, "RepoTags": tags, "Layers": layer_paths}));
    }
    a.file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .file("repositories", &serde_json::to_vec(&repositories).unwrap())
        .build()
}

/// An OCI layout archive; each image is listed with the given annotations.
pub fn oci_archive(images: &[(&TestImage, BTreeMap<String, String>)]) -> Vec<u8> {
    let mut a = Archive::new().file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut manifests = Vec::new();
    for (img, ann) in images {
        for (blob, _) in img.blobs() {
            a = a.blob(&blob);
        }
        a = a.blob(&img.config());
        let m = img.manifest();
        a = a.blob(&m);
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&m),
            "size": m.len(),
            "annotations": ann,
        }));
    }
    a.file(
        "index.json",
        &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    )
    .build()
}

pub fn ref_name(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "org.opencontainers.image.ref.name".to_owned(),
        name.to_owned(),
    )])
}

/// Everything under a store root (paths, kinds, sizes) plus the index bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub files: Vec<String>,
    pub index: Option<Vec<u8>>,
}

pub fn snapshot(root: &Path) -> Snapshot {
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    Snapshot {
        files,
        index: fs::read(root.join("repositories.json")).ok(),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&p).unwrap();
        out.push(format!("{rel} {}", meta.len() * u64::from(meta.is_file())));
        if meta.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Lists a directory's names, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn layer_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}
