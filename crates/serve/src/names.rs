//! How the names clients see are formed: `<prefix>__<name>`, within the
//! characters and length every MCP client and model API accepts.
//!
//! An exposed name matches `^[a-zA-Z0-9_-]{1,64}$`. A character outside that set
//! becomes `_`. A name longer than 64 characters is cut and ends in `_` and 16
//! hexadecimal digits of a SHA-256 of the raw name, so the same upstream name
//! always gives the same exposed name. Names are only ever formed, never parsed:
//! calls find their server through the catalog's table.

use ring::digest::{SHA256, digest};

/// The longest exposed name.
pub const MAX_LEN: usize = 64;

/// Between the prefix and the upstream name.
pub const SEPARATOR: &str = "__";

/// Hex digits of the hash a cut or renamed name ends with.
const HASH_HEX: usize = 16;

/// Whether `c` may appear in an exposed name.
pub fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The name clients see for `name` of a server with `prefix`.
pub fn exposed(prefix: &str, name: &str) -> String {
    let raw = format!("{prefix}{SEPARATOR}{name}");
    let clean: String = raw.chars().map(|c| if allowed(c) { c } else { '_' }).collect();
    if clean.len() <= MAX_LEN { clean } else { hashed(&clean, raw.as_bytes()) }
}

/// `base` cut to leave room for `_` and the hash of `identity`, then both.
/// Every byte of `base` is ASCII, so any cut is at a character boundary.
pub fn hashed(base: &str, identity: &[u8]) -> String {
    let keep = MAX_LEN - 1 - HASH_HEX;
    let cut = &base[..base.len().min(keep)];
    format!("{cut}_{}", hex(identity))
}

fn hex(identity: &[u8]) -> String {
    digest(&SHA256, identity).as_ref()[..HASH_HEX / 2].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a valid exposed name.
pub fn is_valid(name: &str) -> bool {
    (1..=MAX_LEN).contains(&name.len()) && name.chars().all(allowed)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_short_clean_name_is_prefix_separator_name() {
        assert_eq!(exposed("github", "create_issue"), "github__create_issue");
        assert_eq!(exposed("fs", "read-file"), "fs__read-file");
    }

    #[test]
    fn characters_outside_the_set_become_underscores() {
        assert_eq!(exposed("my.server", "get.item"), "my_server__get_item");
        assert_eq!(exposed("a b", "x/y:z"), "a_b__x_y_z");
        assert_eq!(exposed("é", "ü"), "____");
    }

    #[test]
    fn a_long_name_is_cut_and_ends_in_a_stable_hash_of_the_raw_name() {
        let long = "x".repeat(80);
        let a = exposed("srv", &long);
        assert_eq!(a.len(), MAX_LEN);
        assert!(a.starts_with("srv__xxx"), "{a}");
        assert_eq!(a, exposed("srv", &long), "stable");
        // The hash is of the raw name: names that clean up alike still differ.
        let b = exposed("srv", &format!("{}.", "x".repeat(79)));
        let c = exposed("srv", &format!("{}:", "x".repeat(79)));
        assert_ne!(b, c);
        assert!(is_valid(&b) && is_valid(&c));
        // Exactly 64 is kept whole, 65 is cut.
        assert_eq!(exposed("p", &"y".repeat(61)).len(), 64);
        assert!(!exposed("p", &"y".repeat(61)).contains(|c: char| c.is_ascii_digit()));
        assert_eq!(exposed("p", &"y".repeat(62)).len(), 64);
        assert_ne!(exposed("p", &"y".repeat(62)), format!("p__{}", "y".repeat(59)));
    }

    #[test]
    fn the_hash_suffix_is_sixteen_hex_digits_of_sha256() {
        // SHA-256("abc") starts ba7816bf8f01cfea.
        assert_eq!(hashed("base", b"abc"), "base_ba7816bf8f01cfea");
        assert_eq!(hashed(&"b".repeat(70), b"abc"), format!("{}_ba7816bf8f01cfea", "b".repeat(47)));
    }

    #[test]
    fn validity() {
        assert!(is_valid("a"));
        assert!(is_valid(&"a".repeat(64)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(65)));
        assert!(!is_valid("a.b"));
    }

    proptest! {
        #[test]
        fn every_exposed_name_is_valid_and_stable(prefix in "\\PC{1,40}", name in "\\PC{1,200}") {
            let e = exposed(&prefix, &name);
            prop_assert!(is_valid(&e), "{}", e);
            prop_assert_eq!(&e, &exposed(&prefix, &name));
        }

        #[test]
        fn distinct_raw_names_that_are_cut_stay_distinct(name in "[a-z.]{70,90}", other in "[a-z.]{70,90}") {
            prop_assume!(name != other);
            prop_assert_ne!(exposed("p", &name), exposed("p", &other));
        }
    }
}
