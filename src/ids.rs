//! Parsed identifiers.
//!
//! Every id that can end up inside a Redis key or a SQL lookup is one of the
//! newtypes below, and the only way to get one is [`parse`](UserId::parse),
//! which enforces `^[A-Za-z0-9_-]{1,64}$` (SPEC §3). A key can therefore never
//! carry `:`, `*`, `?`, `[`, whitespace or NUL from a client.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a client-supplied id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidId;

/// True when `s` is a valid id under SPEC §3.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The schema of every id in the OpenAPI document: what [`is_valid_id`] accepts.
fn id_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(64))
        .into()
}

/// [`is_valid_id`] as a regular expression (for the OpenAPI document).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// An id type that can be parsed from a request (used by the path extractor).
pub trait ParseId: Sized {
    /// What to call it in an error message.
    const WHAT: &'static str;
    fn parse_id(s: &str) -> Result<Self, InvalidId>;
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a client- or store-supplied string.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if is_valid_id(s) { Ok(Self(s.to_owned())) } else { Err(InvalidId) }
            }

            /// A fresh random id (a UUID v4 in its hyphenated form).
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ParseId for $name {
            const WHAT: &'static str = $what;
            fn parse_id(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // In the OpenAPI document an id is a string of the SPEC §3 alphabet.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The id of a user: the `sub` claim of a verified JWT, never a request field.
    UserId,
    "user id"
);
id_type!(
    /// A client-chosen or generated task id (imports, chat sessions).
    TaskId,
    "task_id"
);
id_type!(
    /// The id of an imported document.
    DocumentId,
    "document id"
);
id_type!(
    /// The id of one AI answer stream.
    StreamId,
    "stream_id"
);

/// The three AI assistants, each with its own session namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Generate,
    Optimize,
    Search,
}

impl SessionKind {
    pub const ALL: [SessionKind; 3] = [Self::Generate, Self::Optimize, Self::Search];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Optimize => "optimize",
            Self::Search => "search",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or(InvalidId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_id_alphabet() {
        for ok in ["a", "A-b_9", &"x".repeat(64), "550e8400-e29b-41d4-a716-446655440000"] {
            assert!(TaskId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_that_could_reach_into_a_key() {
        let long = "x".repeat(65);
        for bad in ["", "a:b", "*", "a b", "a?b", "[a]", "a\nb", "a\0b", "é", long.as_str(), "a/b", "a.b"] {
            assert!(TaskId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TaskId>("\"ok_1\"").is_ok());
        assert!(serde_json::from_str::<TaskId>("\"a:b\"").is_err());
    }
}
