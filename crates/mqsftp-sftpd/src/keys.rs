//! The host key and `authorized_keys`.

use std::path::Path;
use std::str::FromStr;

use russh::keys::ssh_key::authorized_keys::Entry;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use crate::SftpdError;

/// `authorized_keys` options (lower case; OpenSSH matches them case-insensitively) whose effect this server has for every login anyway (it offers nothing but
/// SFTP). Any other option (`command=`, `from=`, `permitopen=`, `expiry-time=`, …) is a restriction it
/// cannot enforce, so a line carrying one is refused rather than silently ignored.
const HARMLESS_OPTIONS: &[&str] =
    &["restrict", "no-pty", "no-port-forwarding", "no-agent-forwarding", "no-x11-forwarding", "no-user-rc"];

/// Checks the one accepted user name.
pub(crate) fn check_user(user: &str) -> Result<(), SftpdError> {
    let err = |reason| Err(SftpdError::User { user: user.to_string(), reason });
    if user.is_empty() {
        return err("must not be empty");
    }
    if user.len() > 64 {
        return err("longer than 64 bytes");
    }
    if user.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return err("has whitespace or control characters");
    }
    Ok(())
}

/// Loads an unencrypted Ed25519 OpenSSH private key.
pub(crate) fn load_host_key(path: &Path) -> Result<PrivateKey, SftpdError> {
    let err = |reason: String| SftpdError::HostKey { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = PrivateKey::from_openssh(text.trim()).map_err(|e| err(format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(err("the key is encrypted (a server key must load without a passphrase)".into()));
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(err(format!("the key is {}, an ssh-ed25519 key is required", key.algorithm())));
    }
    Ok(key)
}

/// `ssh-ed25519 AAAA…` without a comment; `path` names the key in the error.
pub(crate) fn public_openssh(key: &PrivateKey, path: &Path) -> Result<String, SftpdError> {
    let mut public = key.public_key().clone();
    public.set_comment("");
    match public.to_openssh() {
        Ok(s) => Ok(s.trim_end().to_string()),
        Err(e) => {
            Err(SftpdError::HostKey { path: path.to_path_buf(), reason: format!("cannot encode its public key: {e}") })
        }
    }
}

/// Parses `authorized_keys`: blank lines and `#` comments are skipped; every other line must be a key with
/// at most [`HARMLESS_OPTIONS`]; at least one key is required.
pub(crate) fn load_authorized_keys(path: &Path) -> Result<Vec<PublicKey>, SftpdError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SftpdError::AuthorizedKeys { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_err =
            |reason: String| SftpdError::AuthorizedKeysLine { path: path.to_path_buf(), line: index + 1, reason };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let entry = Entry::from_str(trimmed).map_err(|e| line_err(format!("not a public key line: {e}")))?;
        for option in entry.config_opts().iter() {
            let name = option.split('=').next().unwrap_or(option).to_ascii_lowercase();
            if !HARMLESS_OPTIONS.contains(&name.as_str()) {
                return Err(line_err(format!("option {option:?} is not supported by this server")));
            }
        }
        keys.push(entry.public_key().clone());
    }
    if keys.is_empty() {
        return Err(SftpdError::AuthorizedKeys { path: path.to_path_buf(), reason: "lists no key".into() });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCbnypZ0/ohLuquX4Iod0taNx7u7cpky0OVFj9S4+Ul gw@x";

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn authorized_keys_with_restrict_comments_and_blank_lines() {
        let (_d, path) = write(&format!("# gateway\n\nrestrict {KEY}\n{KEY}\n"));
        let keys = load_authorized_keys(&path).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key_data(), keys[1].key_data());
    }

    #[test]
    fn authorized_keys_errors_name_file_and_line() {
        let (_d, path) = write(&format!("# c\n{KEY}\nssh-ed25519 not-base64!\n"));
        let err = load_authorized_keys(&path).unwrap_err();
        assert!(matches!(&err, SftpdError::AuthorizedKeysLine { line: 3, .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        let (_d, path) = write(&format!("command=\"/bin/sh\" {KEY}\n"));
        let err = load_authorized_keys(&path).unwrap_err();
        assert!(matches!(&err, SftpdError::AuthorizedKeysLine { line: 1, .. }), "{err}");
        assert!(err.to_string().contains("command"), "{err}");

        let (_d, path) = write("# only a comment\n\n");
        let err = load_authorized_keys(&path).unwrap_err();
        assert!(matches!(&err, SftpdError::AuthorizedKeys { .. }), "{err}");
        assert!(err.to_string().contains("lists no key"), "{err}");

        let missing = path.with_file_name("missing");
        let err = load_authorized_keys(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn host_key_must_be_an_ed25519_private_key() {
        let (_d, path) = write(KEY);
        let err = load_host_key(&path).unwrap_err();
        assert!(matches!(&err, SftpdError::HostKey { .. }), "{err}");
        assert!(err.to_string().contains("not an OpenSSH private key"), "{err}");
        let err = load_host_key(&path.with_file_name("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn user_names() {
        assert!(check_user("mqsftp").is_ok());
        assert!(check_user("").is_err());
        assert!(check_user("a b").is_err());
        assert!(check_user("a\nb").is_err());
    }
}
