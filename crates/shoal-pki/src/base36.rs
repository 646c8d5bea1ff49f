//! Fixed-width lowercase base36 for digests and token secrets, matching swarm's token alphabet.

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Encodes a big-endian unsigned integer as lowercase base36, left-padded with `0` to `width`.
///
/// `width` must be large enough for any value of `bytes.len()` bytes; the callers use 50 for
/// 32 bytes (36^50 > 2^256) and 25 for 16 bytes (36^25 > 2^128).
pub(crate) fn encode(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while num.iter().any(|&b| b != 0) {
        // Schoolbook long division of the whole number by 36, most significant byte first.
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 36) as u8;
            rem = acc % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// Decodes lowercase base36 into a big-endian integer of exactly `len` bytes.
///
/// Returns `None` for a character outside the alphabet or a value that does not fit.
pub(crate) fn decode(s: &str, len: usize) -> Option<Vec<u8>> {
    let mut num = vec![0u8; len];
    for c in s.bytes() {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        // num = num * 36 + digit, least significant byte first so the carry flows upwards.
        let mut carry = u32::from(digit);
        for byte in num.iter_mut().rev() {
            let acc = u32::from(*byte) * 36 + carry;
            *byte = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(num)
}

/// True when every character of `s` is in the lowercase base36 alphabet.
pub(crate) fn is_base36(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_small_values_with_padding() {
        assert_eq!(encode(&[0], 5), "00000");
        assert_eq!(encode(&[35], 3), "00z");
        assert_eq!(encode(&[36], 3), "010");
        assert_eq!(encode(&[1, 0], 3), "074"); // 256 = 7*36 + 4
    }

    #[test]
    fn maximum_values_fit_their_widths() {
        assert_eq!(encode(&[0xff; 32], 50).len(), 50);
        assert_eq!(encode(&[0xff; 16], 25).len(), 25);
    }

    #[test]
    fn round_trips() {
        let values: [&[u8]; 4] = [
            &[0; 16],
            &[0xff; 16],
            &[1; 16],
            &[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        ];
        for v in values {
            let s = encode(v, 25);
            assert_eq!(decode(&s, 16).as_deref(), Some(v), "{s}");
        }
    }

    #[test]
    fn decode_refuses_overflow_and_bad_characters() {
        assert_eq!(decode("zzzzzzzzzzzzzzzzzzzzzzzzz", 16), None);
        assert_eq!(decode("A", 16), None);
        assert_eq!(decode("-", 16), None);
    }
}
