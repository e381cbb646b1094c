//! Validation of the host and user names that end up in certificates and config files.

use std::fmt;
use std::net::IpAddr;

use crate::PkiError;

/// A host name that is safe in a certificate SAN, a TOML string, a known_hosts line and a
/// Mosquitto or sshd config: an IP address literal or a plain DNS name (no wildcards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 address literal (written without brackets).
    Ip(IpAddr),
    /// A DNS name: dot-separated labels of ASCII letters, digits and inner hyphens.
    Dns(String),
}

impl Host {
    /// Validates `host`.
    pub fn parse(host: &str) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::InvalidHost { host: host.to_string(), reason };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if host.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if host.starts_with('[') {
            return Err(bad("write IPv6 addresses without brackets".into()));
        }
        if host.len() > 253 {
            return Err(bad("it is longer than 253 bytes".into()));
        }
        if let Some(ch) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))) {
            return Err(bad(format!(
                "it contains {ch:?}; only letters, digits, '-' and '.' are allowed (no wildcards)"
            )));
        }
        for label in host.split('.') {
            if label.is_empty() {
                return Err(bad("it has an empty label".into()));
            }
            if label.len() > 63 {
                return Err(bad(format!("label {label:?} is longer than 63 bytes")));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad(format!("label {label:?} starts or ends with '-'")));
            }
        }
        if host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(bad("it looks like an IPv4 address but is not one".into()));
        }
        Ok(Host::Dns(host.to_string()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

/// Validates a Unix account name for the SFTP user: 1–32 bytes of `A-Z a-z 0-9 . _ -`, not
/// starting with '-' (which also keeps it free of sshd pattern characters like `*`, `?`, `!`, `,`).
pub(crate) fn validate_user(user: &str) -> Result<(), PkiError> {
    let bad = |reason| Err(PkiError::InvalidUser { user: user.to_string(), reason });
    if user.is_empty() {
        return bad("it is empty");
    }
    if user.len() > 32 {
        return bad("it is longer than 32 bytes");
    }
    if !user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if user.starts_with('-') {
        return bad("it starts with '-'");
    }
    Ok(())
}

/// Quotes `s` as a TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(Host::parse("127.0.0.1").unwrap(), Host::Ip([127, 0, 0, 1].into()));
        assert!(matches!(Host::parse("::1").unwrap(), Host::Ip(_)));
        assert_eq!(Host::parse("broker.example.com").unwrap(), Host::Dns("broker.example.com".into()));
        for bad in ["", "*.example.com", "a b", "[::1]", "a..b", "-a.b", "1.2.3", "a,b", "h\n"] {
            let err = Host::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn users() {
        validate_user("mqsftp").unwrap();
        validate_user("svc_sftp-1.a").unwrap();
        for bad in ["", "-x", "a b", "a*", "a,b", &"x".repeat(33)] {
            assert!(validate_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_strings() {
        assert_eq!(toml_string("a\"b\\c\n"), r#""a\"b\\c\u000A""#);
    }
}
