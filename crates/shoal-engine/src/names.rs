//! Container names: validation and the random `adjective_surname` names Docker users expect
//! when they give none.

use rand::Rng;
use rand::seq::IndexedRandom;

const ADJECTIVES: &[&str] = &[
    "admiring", "agile", "amazing", "bold", "brave", "calm", "clever", "cool", "crisp", "daring",
    "eager", "elastic", "epic", "fervent", "fond", "gentle", "happy", "hardy", "keen", "kind",
    "lucid", "lucky", "merry", "modest", "nimble", "noble", "patient", "proud", "quick", "quiet",
    "rapid", "serene", "sharp", "silent", "steady", "stoic", "sunny", "swift", "tender", "vivid",
    "wise", "witty", "zealous",
];

const SURNAMES: &[&str] = &[
    "albatross",
    "anchovy",
    "barracuda",
    "bass",
    "bream",
    "carp",
    "cod",
    "dolphin",
    "eel",
    "flounder",
    "grouper",
    "gurnard",
    "haddock",
    "hake",
    "halibut",
    "herring",
    "kelp",
    "lamprey",
    "mackerel",
    "marlin",
    "minnow",
    "mullet",
    "narwhal",
    "octopus",
    "orca",
    "perch",
    "pike",
    "plaice",
    "pollock",
    "salmon",
    "sardine",
    "shark",
    "skate",
    "snapper",
    "sole",
    "sprat",
    "squid",
    "sturgeon",
    "tarpon",
    "trout",
    "tuna",
    "turbot",
    "wrasse",
];

/// A fresh `adjective_surname` name; `taken` says whether a candidate is in use.
pub(crate) fn random_name(taken: impl Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    for attempt in 0.. {
        let adjective = ADJECTIVES.choose(&mut rng).copied().unwrap_or("quiet");
        let surname = SURNAMES.choose(&mut rng).copied().unwrap_or("cod");
        let name = if attempt < 10 {
            format!("{adjective}_{surname}")
        } else {
            format!("{adjective}_{surname}{}", rng.random_range(0..1000))
        };
        if !taken(&name) {
            return name;
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Why a container name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
pub(crate) struct InvalidName {
    pub(crate) name: String,
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most 255 characters; a leading `/` is
/// accepted and dropped.
pub(crate) fn validate(name: &str) -> Result<String, InvalidName> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 255
        && bare.as_bytes()[0].is_ascii_alphanumeric()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(bare.to_owned())
    } else {
        Err(InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_avoid_taken_ones() {
        let first = random_name(|_| false);
        assert!(first.contains('_'));
        let other = random_name(|n| n == first);
        assert_ne!(first, other);
        // Even when every plain name is taken, a suffixed one is found.
        let suffixed = random_name(|n| !n.chars().last().is_some_and(|c| c.is_ascii_digit()));
        assert!(suffixed.chars().last().unwrap().is_ascii_digit());
    }

    #[test]
    fn name_rules() {
        assert_eq!(validate("/web").unwrap(), "web");
        assert_eq!(validate("a.b_c-1").unwrap(), "a.b_c-1");
        for bad in ["", "/", "-x", "a b", "a/b", "ü"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
