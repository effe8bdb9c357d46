//! Strings as PostgreSQL's `text` can hold them.
//!
//! The contract allows any character in a name, and a NUL among the others
//! of a town, street or building. PostgreSQL's `text` cannot hold U+0000, so
//! the PostgreSQL store escapes, and every other store keeps strings as they
//! are. The escape is exact, and applies only to strings that need it (the
//! common string is passed through, not copied):
//!
//! - U+0000 is stored as `ESC '0'`;
//! - `ESC` itself is stored as `ESC 'e'`;
//! - `ESC` is U+10FFFF, the last code point: a noncharacter, valid in UTF-8
//!   and in PostgreSQL, and not expected in names and addresses.
//!
//! The encoding is injective, so uniqueness (a town per import) and equality
//! (`WHERE town = $2`) hold on encoded strings; ordering is done in Rust on
//! decoded strings. Schema migration 3 escapes any `ESC` stored before.

use std::borrow::Cow;

/// The escape character.
pub const ESC: char = '\u{10FFFF}';

/// `s` as stored.
pub fn encode(s: &str) -> Cow<'_, str> {
    if !s.contains(['\0', ESC]) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\0' => {
                out.push(ESC);
                out.push('0');
            }
            ESC => {
                out.push(ESC);
                out.push('e');
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A stored string as it was sent; `None` if it is not one [`encode`] makes.
pub fn decode(s: String) -> Option<String> {
    if !s.contains(ESC) {
        return Some(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == ESC {
            match chars.next()? {
                '0' => out.push('\0'),
                'e' => out.push(ESC),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nul_and_the_escape_are_escaped_and_nothing_else() {
        assert!(matches!(encode("Москва"), Cow::Borrowed("Москва")));
        assert_eq!(encode("a\0b"), "a\u{10FFFF}0b");
        assert_eq!(encode("\u{10FFFF}"), "\u{10FFFF}e");
        assert_eq!(encode("\0\u{10FFFF}0"), "\u{10FFFF}0\u{10FFFF}e0");
        assert!(!encode("\0\0").contains('\0'));
    }

    #[test]
    fn strings_encode_never_makes_are_refused() {
        assert_eq!(decode("a\u{10FFFF}".into()), None);
        assert_eq!(decode("a\u{10FFFF}x".into()), None);
        assert_eq!(decode("plain".into()).as_deref(), Some("plain"));
    }

    proptest! {
        #[test]
        fn every_string_comes_back_exactly(s in "(\\PC|\\x00|\u{10FFFF}|0|e){0,40}") {
            let stored = encode(&s).into_owned();
            prop_assert!(!stored.contains('\0'));
            prop_assert_eq!(decode(stored), Some(s));
        }

        #[test]
        fn different_strings_stay_different(a in "(a|\\x00|\u{10FFFF}|0|e){0,8}", b in "(a|\\x00|\u{10FFFF}|0|e){0,8}") {
            prop_assert_eq!(a == b, encode(&a) == encode(&b));
        }
    }
}
