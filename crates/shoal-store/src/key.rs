//! The key type of every table and index: a shared string that carries its first bytes
//! inline, so that comparing two keys inside a tree rarely has to follow a pointer.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

const HEAD: usize = 16;

/// An id or name. Orders exactly as its `str` does, which is what lets maps keyed by `Key`
/// be searched with a `&str`.
#[derive(Clone)]
pub(crate) struct Key {
    /// The first 16 bytes, big-endian and zero-padded: comparing heads orders two keys
    /// whenever they differ there, and random ids always do.
    head: u128,
    text: Arc<str>,
}

impl Key {
    pub(crate) fn new(text: &str) -> Key {
        let mut head = [0u8; HEAD];
        let len = text.len().min(HEAD);
        head[..len].copy_from_slice(&text.as_bytes()[..len]);
        Key {
            head: u128::from_be_bytes(head),
            text: Arc::from(text),
        }
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Key {
        Key::new(text)
    }
}

impl Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        // Zero padding cannot misorder: a string ending inside the head pads with zeros,
        // which sort no later than any byte the other string has there, and equal heads
        // fall through to the full comparison.
        self.head
            .cmp(&other.head)
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.head == other.head && self.text == other.text
    }
}

impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_its_text() {
        let samples = [
            "",
            "\0",
            "a",
            "a\0",
            "a\0\0",
            "ab",
            "abc",
            "b",
            "0123456789abcdef",
            "0123456789abcdef\0",
            "0123456789abcdefg",
            "0123456789abcdeg",
            "zzzzzzzzzzzzzzzzzzzzzzzzz",
            "é",
            "\u{7f}",
        ];
        for a in samples {
            for b in samples {
                assert_eq!(Key::new(a).cmp(&Key::new(b)), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(Key::new(a) == Key::new(b), a == b);
            }
        }
    }
}
