//! The device identity: the client certificate's CN, the user name Mosquitto derives from it, and the
//! `{device}` level of every mqsftp topic.

use std::fmt;

/// Longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Reserved ids that can never name a device (the gateway's own certificate CN is `gateway`).
pub const RESERVED_IDS: &[&str] = &["gateway"];

/// Why a string is not a valid device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// The id is empty.
    #[error("device id is empty")]
    Empty,
    /// The id is longer than [`MAX_DEVICE_ID_LEN`].
    #[error("device id {id:?} is {len} bytes long; the limit is {MAX_DEVICE_ID_LEN}")]
    TooLong { id: String, len: usize },
    /// The id contains a character outside `A-Z a-z 0-9 - _ .`.
    #[error("device id {id:?} contains {ch:?}; only letters, digits, '-', '_' and '.' are allowed")]
    BadChar { id: String, ch: char },
    /// The id starts with a '.' or '-'.
    #[error("device id {0:?} must start with a letter, digit or '_'")]
    BadStart(String),
    /// The id is reserved.
    #[error("device id {0:?} is reserved")]
    Reserved(String),
}

/// A validated device id: 1–64 bytes of `A-Z a-z 0-9 - _ .`, not starting with `.` or `-`, and not a
/// reserved name. Such an id is safe as an MQTT topic level, a certificate CN and a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, DeviceIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > MAX_DEVICE_ID_LEN {
            let len = id.len();
            return Err(DeviceIdError::TooLong { id, len });
        }
        if let Some(ch) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(DeviceIdError::BadChar { id, ch });
        }
        if id.starts_with('.') || id.starts_with('-') {
            return Err(DeviceIdError::BadStart(id));
        }
        if RESERVED_IDS.contains(&id.as_str()) {
            return Err(DeviceIdError::Reserved(id));
        }
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["dev1", "sensor-42", "a", "A_b.c-d", &"x".repeat(64)] {
            assert_eq!(DeviceId::new(id).map(|d| d.to_string()), Ok(id.to_string()));
        }
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert!(matches!(DeviceId::new("x".repeat(65)), Err(DeviceIdError::TooLong { len: 65, .. })));
        for (id, ch) in [("a/b", '/'), ("a+", '+'), ("#", '#'), ("$SYS", '$'), ("a b", ' '), ("é", 'é')] {
            assert_eq!(DeviceId::new(id), Err(DeviceIdError::BadChar { id: id.into(), ch }));
        }
        assert_eq!(DeviceId::new(".."), Err(DeviceIdError::BadStart("..".into())));
        assert_eq!(DeviceId::new("-x"), Err(DeviceIdError::BadStart("-x".into())));
        assert_eq!(DeviceId::new("gateway"), Err(DeviceIdError::Reserved("gateway".into())));
    }
}
