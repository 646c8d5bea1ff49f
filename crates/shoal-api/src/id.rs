//! Object identifiers: 128 random bits written in base36, always 25 characters.

use rand::Rng;

/// Length of every generated ID.
pub const ID_LEN: usize = 25;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A fresh random ID (128 bits, base36, zero-padded to [`ID_LEN`]).
pub fn new_id() -> String {
    encode_base36(rand::rng().random::<u128>())
}

/// Writes `value` in base36, zero-padded to [`ID_LEN`] characters.
pub fn encode_base36(mut value: u128) -> String {
    let mut digits = [b'0'; ID_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(value % 36) as usize];
        value /= 36;
    }
    String::from_utf8(digits.to_vec()).expect("alphabet is ascii")
}

/// True when `candidate` has the shape of a generated ID.
pub fn is_id(candidate: &str) -> bool {
    candidate.len() == ID_LEN && candidate.bytes().all(|b| ALPHABET.contains(&b))
}

/// The short form shown in tables (first 12 characters), as Docker shows.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fixed_length_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(is_id(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn extremes_encode_to_full_width() {
        assert_eq!(encode_base36(0), "0".repeat(ID_LEN));
        let max = encode_base36(u128::MAX);
        assert_eq!(max.len(), ID_LEN);
        assert_eq!(max, "f5lxx1zz5pnorynqglhzmsp33");
    }

    #[test]
    fn shapes_that_are_not_ids() {
        assert!(!is_id("abc"));
        assert!(!is_id(&"Z".repeat(ID_LEN)));
    }
}
