//! Passphrases of encrypted private keys in service configs: `passphrase_file = "…"` or
//! `passphrase_env = "VAR"` beside the key, never an interactive prompt (a service has no
//! terminal). Shared by the `[broker]` section (this crate) and the gateway's `[sftp]` section.

use std::fmt;
use std::path::{Path, PathBuf};

use pkcs8::der::zeroize::Zeroizing;
use pkcs8::EncryptedPrivateKeyInfoRef;
use pkcs8::SecretDocument;

/// A passphrase read from a file or the environment; redacted in `Debug`, wiped when dropped.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// The passphrase text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a passphrase could not be read. Never contains the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// Both `passphrase_file` and `passphrase_env` are set.
    #[error("[{section}] gives both passphrase_file and passphrase_env; give one")]
    Both {
        /// "broker" or "sftp".
        section: &'static str,
    },
    /// The file could not be read.
    #[error("cannot read the passphrase file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The variable is not set.
    #[error("environment variable {0} (passphrase_env) is not set")]
    Unset(String),
    /// The file or variable holds no usable passphrase.
    #[error("the {what} holds no usable passphrase: {reason}")]
    Invalid {
        /// "passphrase file PATH" or "environment variable NAME".
        what: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads the passphrase configured by `file` or `env` (at most one may be set) for `section`;
/// `None` when neither is. A file holds one line (a final newline is not part of it).
pub fn read(
    section: &'static str,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<Passphrase>, PassphraseError> {
    let (text, what) = match (file, env) {
        (Some(_), Some(_)) => return Err(PassphraseError::Both { section }),
        (None, None) => return Ok(None),
        (Some(path), None) => {
            let bytes = Zeroizing::new(
                std::fs::read(path).map_err(|source| PassphraseError::Read { path: path.to_path_buf(), source })?,
            );
            let what = format!("passphrase file {}", path.display());
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| PassphraseError::Invalid { what: what.clone(), reason: "it is not UTF-8" })?;
            let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
            if text.contains('\n') {
                return Err(PassphraseError::Invalid { what, reason: "it has more than one line" });
            }
            (Zeroizing::new(text.to_string()), what)
        }
        (None, Some(name)) => {
            let what = format!("environment variable {name}");
            match std::env::var(name) {
                Ok(v) => (Zeroizing::new(v), what),
                Err(std::env::VarError::NotPresent) => return Err(PassphraseError::Unset(name.to_string())),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(PassphraseError::Invalid { what, reason: "it is not UTF-8" })
                }
            }
        }
    };
    if text.is_empty() {
        return Err(PassphraseError::Invalid { what, reason: "it is empty" });
    }
    Ok(Some(Passphrase(text)))
}

/// Why a PKCS#8 key could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The key is encrypted and no passphrase is configured.
    #[error("it is encrypted; set passphrase_file or passphrase_env in [{0}]")]
    NoPassphrase(&'static str),
    /// The passphrase does not open it.
    #[error("wrong passphrase (or a damaged key)")]
    Wrong,
    /// Not an encrypted PKCS#8 PEM key.
    #[error("not an encrypted PKCS#8 key: {0}")]
    Format(String),
}

/// Whether PEM `text` is an encrypted PKCS#8 key.
pub fn is_encrypted_pkcs8(text: &str) -> bool {
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
}

/// Decrypts an `-----BEGIN ENCRYPTED PRIVATE KEY-----` PEM text to PKCS#8 DER.
pub fn decrypt_pkcs8(
    text: &str,
    pass: Option<&Passphrase>,
    section: &'static str,
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let pass = pass.ok_or(DecryptError::NoPassphrase(section))?;
    let (label, doc) = SecretDocument::from_pem(text).map_err(|e| DecryptError::Format(e.to_string()))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(DecryptError::Format(format!("PEM label {label:?}")));
    }
    let info = EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes()).map_err(|e| DecryptError::Format(e.to_string()))?;
    let plain = info.decrypt(pass.as_str().as_bytes()).map_err(|_| DecryptError::Wrong)?;
    Ok(plain.to_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn sources() {
        let dir = std::env::temp_dir().join(format!("mqsftp-pass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read("sftp", Some(&f), None).unwrap().unwrap().as_str(), "s3cret");
        assert!(read("sftp", None, None).unwrap().is_none());
        let e = read("sftp", Some(&f), Some("X")).unwrap_err().to_string();
        assert_eq!(e, "[sftp] gives both passphrase_file and passphrase_env; give one");
        std::fs::write(&f, "\n").unwrap();
        let e = read("broker", Some(&f), None).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains(&f.display().to_string()), "{e}");
        let e = read("broker", None, Some("MQSFTP_TEST_SURELY_UNSET_VAR")).unwrap_err().to_string();
        assert!(e.contains("MQSFTP_TEST_SURELY_UNSET_VAR") && e.contains("not set"), "{e}");
        let e = read("broker", Some(&dir.join("missing")), None).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!format!("{:?}", Passphrase(Zeroizing::new("hunter2".into()))).contains("hunter2"));
    }
}
