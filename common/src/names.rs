//! Validated names. A value of these types has passed its grammar check, so it can be used in
//! a NATS subject, a file name or (quoted) in SQL without further escaping.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(format!(concat!("invalid ", $what, " {:?}: {}"), truncate(s), Self::GRAMMAR))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_owned()
    }
}

name_type!(
    /// A shard id such as `sh1`: `^[A-Za-z0-9_-]{1,64}$`.
    ShardId,
    "shard id",
    |s| (1..=64).contains(&s.len()) && s.chars().all(is_name_char)
);
name_type!(
    /// A server name such as `Server0`: `^[A-Za-z0-9_-]{1,64}$`.
    ServerName,
    "server name",
    |s| (1..=64).contains(&s.len()) && s.chars().all(is_name_char)
);
name_type!(
    /// A column name: `^[A-Za-z_][A-Za-z0-9_]{0,63}$`.
    ColumnName,
    "column name",
    |s| {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && s.len() <= 64
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
);

impl ShardId {
    const GRAMMAR: &'static str = "must match ^[A-Za-z0-9_-]{1,64}$";
}
impl ServerName {
    const GRAMMAR: &'static str = "must match ^[A-Za-z0-9_-]{1,64}$";

    /// The assignment lets `/add` name a server `Server[5]`: a placeholder for a fresh name.
    pub fn is_placeholder(s: &str) -> bool {
        s.contains('[')
    }
}
impl ColumnName {
    const GRAMMAR: &'static str = "must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$";

    /// The name as a quoted SQL identifier. Safe because the grammar excludes quotes.
    pub fn sql(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_server_names() {
        for ok in ["sh1", "Server0", "a-b_c", &"x".repeat(64)] {
            assert!(ShardId::parse(ok).is_ok(), "{ok}");
            assert!(ServerName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "x;rm",
            "../x",
            "\"",
            "a.b",
            "a/b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(ShardId::parse(bad).is_err(), "{bad}");
            assert!(ServerName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn column_names() {
        for ok in ["Stud_id", "_x", "a1", &format!("a{}", "b".repeat(63))] {
            assert!(ColumnName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "a\"b", "a;drop", &"a".repeat(65)] {
            assert!(ColumnName::parse(bad).is_err(), "{bad}");
        }
    }
}
