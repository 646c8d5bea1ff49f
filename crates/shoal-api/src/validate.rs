//! Validation of user-given names and labels, shared by the CLI and the managers so both give
//! the same answer.

/// Why a user-given value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("invalid {what} name {name:?}: {why}")]
    Name {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("invalid label key {key:?}: {why}")]
    LabelKey { key: String, why: &'static str },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
}

/// Longest object name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// Largest config payload (Docker allows 1000 KiB).
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;

/// Object names: 1–63 characters of `[a-zA-Z0-9_.-]`, starting with an alphanumeric.
pub fn object_name(what: &'static str, name: &str) -> Result<(), InvalidInput> {
    let refuse = |why| {
        Err(InvalidInput::Name {
            what,
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("must be at most 63 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return refuse("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return refuse("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Longest volume name accepted: one path component on the host.
pub const MAX_VOLUME_NAME_LEN: usize = 255;

/// Volume names, as Docker's local driver takes them: `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (so at least
/// two characters; an anonymous volume's 64 hex digits fit), at most 255 bytes.
pub fn volume_name(name: &str) -> Result<(), InvalidInput> {
    let refuse = |why| {
        Err(InvalidInput::Name {
            what: "volume",
            name: name.to_owned(),
            why,
        })
    };
    if name.len() < 2 {
        return refuse("must be at least 2 characters");
    }
    if name.len() > MAX_VOLUME_NAME_LEN {
        return refuse("must be at most 255 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return refuse("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return refuse("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Label keys: non-empty, printable, no whitespace, at most 255 bytes.
pub fn label_key(key: &str) -> Result<(), InvalidInput> {
    let refuse = |why| {
        Err(InvalidInput::LabelKey {
            key: key.to_owned(),
            why,
        })
    };
    if key.is_empty() {
        return refuse("must not be empty");
    }
    if key.len() > 255 {
        return refuse("must be at most 255 bytes");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("must not contain whitespace or control characters");
    }
    Ok(())
}

/// Checks every key of a label map.
pub fn labels<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), InvalidInput> {
    keys.into_iter().try_for_each(|k| label_key(k))
}

/// Refuses payloads over `limit` bytes.
pub fn size(what: &'static str, size: usize, limit: usize) -> Result<(), InvalidInput> {
    if size > limit {
        return Err(InvalidInput::TooLarge { what, size, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for name in ["web", "a", "my_app.v2-1", &"x".repeat(63)] {
            object_name("config", name).unwrap();
        }
    }

    #[test]
    fn bad_names() {
        for name in ["", "-x", ".x", "a b", "a/b", "ü", &"x".repeat(64), "a\n"] {
            let err = object_name("config", name).unwrap_err();
            assert!(err.to_string().starts_with("invalid config name"), "{err}");
        }
    }

    #[test]
    fn volume_names() {
        for name in ["db", "my_vol.v2-1", &"a".repeat(64), &"x".repeat(255)] {
            volume_name(name).unwrap();
        }
        for name in [
            "",
            "a",
            "-x",
            ".x",
            "_x",
            "a b",
            "a/b",
            "..",
            "ü",
            &"x".repeat(256),
        ] {
            let err = volume_name(name).unwrap_err();
            assert!(err.to_string().starts_with("invalid volume name"), "{err}");
        }
    }

    #[test]
    fn label_keys() {
        label_key("com.example.tier").unwrap();
        assert!(label_key("").is_err());
        assert!(label_key("a b").is_err());
        assert!(size("config", 11, 10).is_err());
    }
}
