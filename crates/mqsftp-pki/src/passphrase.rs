//! Passphrases of private keys: read from a file or an environment variable, never prompted for
//! (a service has no terminal), never printed.

use std::fmt;
use std::path::Path;

use pkcs8::der::zeroize::Zeroizing;

use crate::PkiError;

/// The environment variable `mqsftp pki` reads the CA key's passphrase from when no
/// `--passphrase-file` is given.
pub const PASSPHRASE_ENV: &str = "MQSFTP_PKI_PASSPHRASE";

/// A key passphrase. Its `Debug` output is redacted and its memory is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// A passphrase given as text; `source` names where it came from in the error. Refuses an
    /// empty one (an "encrypted" key with an empty passphrase protects nothing).
    pub fn new(text: impl Into<String>, source: &str) -> Result<Self, PkiError> {
        let text = Zeroizing::new(text.into());
        if text.is_empty() {
            return Err(PkiError::Passphrase { source_name: source.to_string(), reason: "it is empty" });
        }
        Ok(Self(text))
    }

    /// The first line of `path` (a final `\n` or `\r\n` is not part of it). The file may hold
    /// nothing else, so that a passphrase file is never mistaken for another file.
    pub fn from_file(path: &Path) -> Result<Self, PkiError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| PkiError::io("read the passphrase file", path, e))?);
        let source = format!("passphrase file {}", path.display());
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| PkiError::Passphrase { source_name: source.clone(), reason: "it is not UTF-8" })?;
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
        if text.contains('\n') {
            return Err(PkiError::Passphrase { source_name: source, reason: "it has more than one line" });
        }
        Self::new(text, &source)
    }

    /// The value of the environment variable `name`, or `None` when it is not set.
    pub fn from_env(name: &str) -> Result<Option<Self>, PkiError> {
        let source = format!("environment variable {name}");
        match std::env::var(name) {
            Ok(v) => Self::new(v, &source).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(PkiError::Passphrase { source_name: source, reason: "it is not UTF-8" })
            }
        }
    }

    /// From `file` when given, else from the environment variable [`PASSPHRASE_ENV`], else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Self>, PkiError> {
        match file {
            Some(f) => Self::from_file(f).map(Some),
            None => Self::from_env(PASSPHRASE_ENV),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn file_passphrases() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("p");
        for (text, want) in [("secret\n", "secret"), ("secret\r\n", "secret"), ("sec ret", "sec ret")] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(Passphrase::from_file(&f).unwrap().as_bytes(), want.as_bytes());
        }
        for (text, reason) in [("", "empty"), ("\n", "empty"), ("a\nb\n", "more than one line")] {
            std::fs::write(&f, text).unwrap();
            let err = Passphrase::from_file(&f).unwrap_err().to_string();
            assert!(err.contains(&f.display().to_string()) && err.contains(reason), "{err}");
        }
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(Passphrase::from_file(&f).unwrap_err().to_string().contains("not UTF-8"));
        let err = Passphrase::from_file(&tmp.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_passphrase() {
        let p = Passphrase::new("hunter2", "test").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
