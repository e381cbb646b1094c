//! Encrypted private keys.
//!
//! * X.509 keys (CA, broker, gateway, devices) are PKCS#8 PEM; encrypted they become
//!   `-----BEGIN ENCRYPTED PRIVATE KEY-----` (PKCS#5 PBES2: scrypt with pkcs5's defaults, log₂N = 14,
//!   r = 8, p = 1, i.e. 16 MiB, and AES-256-CBC), which OpenSSL reads too (`openssl pkey -passin
//!   file:F`; a larger N would exceed OpenSSL's default 32 MiB scrypt memory limit).
//! * SSH keys are OpenSSH format; encrypted with bcrypt-pbkdf and AES-256-CTR, as `ssh-keygen -p`
//!   does.
//!
//! Error messages name the file, never the passphrase or key material.

use std::path::Path;

use pkcs8::der::zeroize::Zeroizing;
use pkcs8::{EncryptedPrivateKeyInfoRef, PrivateKeyInfoRef, SecretDocument};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use crate::fsutil::{self, Kind};
use crate::{Passphrase, PkiError};

const PKCS8_LABEL: &str = "PRIVATE KEY";
const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
const OPENSSH_LABEL: &str = "OPENSSH PRIVATE KEY";

/// What kind of key a PEM text holds, from its first `-----BEGIN …-----` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFormat {
    Pkcs8,
    EncryptedPkcs8,
    OpenSsh,
}

fn key_format(text: &str, path: &Path) -> Result<KeyFormat, PkiError> {
    let label = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")))
        .ok_or_else(|| PkiError::UnsupportedKey { path: path.to_path_buf(), reason: "no PEM block".into() })?;
    match label {
        PKCS8_LABEL => Ok(KeyFormat::Pkcs8),
        ENCRYPTED_LABEL => Ok(KeyFormat::EncryptedPkcs8),
        OPENSSH_LABEL => Ok(KeyFormat::OpenSsh),
        other => Err(PkiError::UnsupportedKey {
            path: path.to_path_buf(),
            reason: format!("a {other:?} PEM block; expected PKCS#8 (\"PRIVATE KEY\") or \"OPENSSH PRIVATE KEY\""),
        }),
    }
}

/// Encrypts PKCS#8 PEM `key_pem` with `pass`; `path` names the key in errors.
pub(crate) fn encrypt_pkcs8_pem(key_pem: &str, pass: &Passphrase, path: &Path) -> Result<String, PkiError> {
    let bad = |reason: String| PkiError::UnsupportedKey { path: path.to_path_buf(), reason };
    let (label, doc) = SecretDocument::from_pem(key_pem).map_err(|e| bad(format!("not a PEM key ({e})")))?;
    if label != PKCS8_LABEL {
        return Err(bad(format!("a {label:?} PEM block, expected \"{PKCS8_LABEL}\"")));
    }
    let info = PrivateKeyInfoRef::try_from(doc.as_bytes()).map_err(|e| bad(format!("not PKCS#8 ({e})")))?;
    let encrypted = info
        .encrypt(pass.as_bytes())
        .map_err(|e| PkiError::KeyEncryption { path: path.to_path_buf(), reason: e.to_string() })?;
    let pem = encrypted
        .to_pem(ENCRYPTED_LABEL, pkcs8::LineEnding::LF)
        .map_err(|e| PkiError::KeyEncryption { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(pem.to_string())
}

/// The PKCS#8 DER of the key in PEM `text` (read from `path`), decrypting it with `pass` when it
/// is encrypted. An encrypted key without a passphrase is [`PkiError::EncryptedKey`], a wrong
/// passphrase [`PkiError::WrongPassphrase`].
pub(crate) fn pkcs8_der(text: &str, pass: Option<&Passphrase>, path: &Path) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let bad = |reason: String| PkiError::UnsupportedKey { path: path.to_path_buf(), reason };
    let (label, doc) = SecretDocument::from_pem(text).map_err(|e| bad(format!("not a PEM key ({e})")))?;
    match label {
        PKCS8_LABEL => Ok(doc.to_bytes()),
        ENCRYPTED_LABEL => {
            let pass = pass.ok_or_else(|| PkiError::EncryptedKey(path.to_path_buf()))?;
            let info = EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes())
                .map_err(|e| bad(format!("not an encrypted PKCS#8 key ({e})")))?;
            let plain = info.decrypt(pass.as_bytes()).map_err(|_| PkiError::WrongPassphrase(path.to_path_buf()))?;
            Ok(plain.to_bytes())
        }
        other => Err(bad(format!("a {other:?} PEM block, expected \"{PKCS8_LABEL}\" or \"{ENCRYPTED_LABEL}\""))),
    }
}

/// Encrypts an OpenSSH private key text with `pass`.
pub(crate) fn encrypt_openssh(key_text: &str, pass: &Passphrase, path: &Path) -> Result<String, PkiError> {
    let key = PrivateKey::from_openssh(key_text).map_err(|e| PkiError::SshKey(path.to_path_buf(), e))?;
    if key.is_encrypted() {
        return Err(PkiError::AlreadyEncrypted(path.to_path_buf()));
    }
    let encrypted =
        key.encrypt(&mut getrandom::SysRng, pass.as_bytes()).map_err(|e| PkiError::SshKey(path.to_path_buf(), e))?;
    Ok(encrypted.to_openssh(LineEnding::LF).map_err(|e| PkiError::SshKey(path.to_path_buf(), e))?.to_string())
}

/// Encrypts the private key file `path` in place with `pass`: a PKCS#8 PEM key (CA, broker,
/// gateway or device key) or an OpenSSH key (the gateway's SSH key). The encrypted key is checked
/// to decrypt to the same key, then atomically replaces the file (mode 0600).
///
/// Refuses a key that is already encrypted ([`PkiError::AlreadyEncrypted`]).
pub fn encrypt_key_file(path: &Path, pass: &Passphrase) -> Result<(), PkiError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| PkiError::io("read", path, e))?);
    let encrypted = match key_format(&text, path)? {
        KeyFormat::EncryptedPkcs8 => return Err(PkiError::AlreadyEncrypted(path.to_path_buf())),
        KeyFormat::Pkcs8 => {
            let encrypted = encrypt_pkcs8_pem(&text, pass, path)?;
            let plain = pkcs8_der(&text, None, path)?;
            if pkcs8_der(&encrypted, Some(pass), path)? != plain {
                return Err(PkiError::KeyEncryption { path: path.to_path_buf(), reason: "round trip failed".into() });
            }
            encrypted
        }
        KeyFormat::OpenSsh => {
            let encrypted = encrypt_openssh(&text, pass, path)?;
            let check = PrivateKey::from_openssh(&encrypted)
                .and_then(|k| k.decrypt(pass.as_bytes()))
                .map_err(|e| PkiError::SshKey(path.to_path_buf(), e))?;
            let original =
                PrivateKey::from_openssh(text.as_str()).map_err(|e| PkiError::SshKey(path.to_path_buf(), e))?;
            if check.public_key() != original.public_key() {
                return Err(PkiError::KeyEncryption { path: path.to_path_buf(), reason: "round trip failed".into() });
            }
            encrypted
        }
    };
    fsutil::replace(path, encrypted.as_bytes(), Kind::Secret)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s, "test").unwrap()
    }

    #[test]
    fn pkcs8_round_trip_and_wrong_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.key");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        encrypt_key_file(&path, &pass("right")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(*pkcs8_der(&text, Some(&pass("right")), &path).unwrap(), key.serialize_der());

        let err = pkcs8_der(&text, Some(&pass("wrong")), &path).unwrap_err();
        assert!(matches!(&err, PkiError::WrongPassphrase(p) if p == &path), "{err:?}");
        let err = pkcs8_der(&text, None, &path).unwrap_err();
        assert!(matches!(&err, PkiError::EncryptedKey(p) if p == &path), "{err:?}");
        assert!(!err.to_string().contains("right"));
        let err = encrypt_key_file(&path, &pass("again")).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyEncrypted(_)), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "unchanged");
    }

    #[test]
    fn openssl_reads_the_encrypted_pkcs8_key() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.key");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&path, key.serialize_pem()).unwrap();
        encrypt_key_file(&path, &pass("open sesame")).unwrap();
        let pass_file = tmp.path().join("pass");
        std::fs::write(&pass_file, "open sesame\n").unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-passin"])
            .arg(format!("file:{}", pass_file.display()))
            .arg("-in")
            .arg(&path)
            .output()
            .expect("openssl is needed for this test");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), key.public_key_pem().trim());
    }

    #[test]
    fn openssh_key_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("id");
        let public = crate::generate_ssh_key(&path, "c").unwrap();
        encrypt_key_file(&path, &pass("pw")).unwrap();
        let err = russh::keys::load_secret_key(&path, None).map(|_| ()).unwrap_err();
        assert!(matches!(err, russh::keys::Error::KeyIsEncrypted), "{err:?}");
        let key = russh::keys::load_secret_key(&path, Some("pw")).unwrap();
        assert_eq!(key.public_key().to_openssh().unwrap().split(' ').nth(1), public.split(' ').nth(1));
        assert!(russh::keys::load_secret_key(&path, Some("nope")).is_err());
        // ssh-keygen agrees (-y derives the public key, needing the passphrase).
        let out = std::process::Command::new("ssh-keygen")
            .args(["-y", "-P", "pw", "-f"])
            .arg(&path)
            .output()
            .expect("ssh-keygen is needed for this test");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = encrypt_key_file(&path, &pass("pw")).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyEncrypted(_)), "{err:?}");
    }

    #[test]
    fn other_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let err = encrypt_key_file(&path, &pass("pw")).unwrap_err().to_string();
        assert!(err.contains("CERTIFICATE") && err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, "hello").unwrap();
        assert!(encrypt_key_file(&path, &pass("pw")).unwrap_err().to_string().contains("no PEM block"));
    }
}
