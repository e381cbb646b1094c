//! Identifiers that appear in topics and messages.

use std::fmt;

/// Longest session id, in bytes.
pub const MAX_SESSION_LEN: usize = 32;

/// Why a session id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session id {0:?} must be 1-{MAX_SESSION_LEN} characters of a-z, 0-9")]
pub struct SessionIdError(pub String);

/// A device client's session: 1–32 characters of `a-z0-9`, chosen by the client at connect time and used as the
/// last level of its response and download topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, SessionIdError> {
        let s = s.into();
        if s.is_empty() || s.len() > MAX_SESSION_LEN || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(SessionIdError(s));
        }
        Ok(Self(s))
    }
    /// A session id from 64 random bits (the caller supplies the randomness; this crate has no I/O).
    pub fn from_random(bits: u64) -> Self {
        Self(format!("{bits:016x}"))
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Identifies one transfer between a gateway and a device session. Chosen by the gateway; carried in every chunk
/// header. Values stay below 2^53 so that JSON parsers that read numbers as doubles keep them exact.
pub type TransferId = u64;

/// Largest transfer id (2^53 - 1).
pub const MAX_TRANSFER_ID: TransferId = (1 << 53) - 1;
