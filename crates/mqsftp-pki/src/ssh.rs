//! SSH: the gateway's Ed25519 login key and the lines of `authorized_keys` and `known_hosts`.

use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};

use crate::fsutil::{self, Kind};
use crate::names::Host;
use crate::PkiError;

/// An Ed25519 key pair in OpenSSH format, not yet on disk.
pub(crate) struct SshKeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` text, unencrypted.
    pub(crate) private_openssh: String,
    /// `ssh-ed25519 AAAA… comment`, without a line break.
    pub(crate) public_line: String,
}

/// Generates an Ed25519 key pair with `comment`; `path` only names the key in errors.
pub(crate) fn new_ssh_key(path: &Path, comment: &str) -> Result<SshKeyPair, PkiError> {
    if comment.chars().any(char::is_control) {
        return Err(PkiError::InvalidComment(comment.to_string()));
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut seed).map_err(PkiError::Random)?;
    let keypair = KeypairData::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    let encode_err = |e| PkiError::SshKey(path.to_path_buf(), e);
    let key = PrivateKey::new(keypair, comment).map_err(encode_err)?;
    let private_openssh = key.to_openssh(LineEnding::LF).map_err(encode_err)?.to_string();
    let public_line = key.public_key().to_openssh().map_err(encode_err)?;
    Ok(SshKeyPair { private_openssh, public_line })
}

/// The path of the public half of the key at `private_path`: the same name plus `.pub`.
pub fn public_key_path(private_path: &Path) -> PathBuf {
    let mut name = private_path.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// Generates an Ed25519 SSH key and writes it to `private_path` (OpenSSH format, unencrypted,
/// mode 0600 from creation) and `private_path` + `.pub` (0644). Returns the public key line
/// (`ssh-ed25519 AAAA… comment`, no line break).
///
/// Refuses, writing nothing, when either file already exists.
pub fn generate_ssh_key(private_path: &Path, comment: &str) -> Result<String, PkiError> {
    let public_path = public_key_path(private_path);
    fsutil::ensure_absent(private_path, Kind::Secret)?;
    fsutil::ensure_absent(&public_path, Kind::Public)?;
    let key = new_ssh_key(private_path, comment)?;
    let mut batch = fsutil::Batch::new(None);
    batch.write(private_path.to_path_buf(), key.private_openssh.as_bytes(), Kind::Secret)?;
    batch.write(public_path, format!("{}\n", key.public_line).as_bytes(), Kind::Public)?;
    batch.commit();
    Ok(key.public_line)
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… [comment]`); `what` describes where it
/// came from for the error.
fn parse_public_key(text: &str, what: impl FnOnce() -> String) -> Result<PublicKey, PkiError> {
    PublicKey::from_openssh(text.trim()).map_err(|source| PkiError::InvalidPublicKey { what: what(), source })
}

/// Shortens `text` for an error message.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{:?}…", &text[..i]),
        None => format!("{text:?}"),
    }
}

/// A `known_hosts` line for the SSH server at `host`:`port` with the public key
/// `public_key_openssh` (a `.pub` file's line; its comment is dropped).
///
/// Port 22 gives `host ssh-ed25519 AAAA…`, any other port `[host]:port ssh-ed25519 AAAA…`, the
/// forms OpenSSH and russh look up. The host must be a plain name or IP literal: never a pattern.
pub fn known_hosts_line(host: &str, port: u16, public_key_openssh: &str) -> Result<String, PkiError> {
    let host = Host::parse(host)?;
    let key = parse_public_key(public_key_openssh, || excerpt(public_key_openssh))?;
    known_hosts_entry(&host, port, &key, || excerpt(public_key_openssh))
}

/// Like [`known_hosts_line`], with the key read from a `.pub` file such as
/// `/etc/ssh/ssh_host_ed25519_key.pub`.
pub fn known_hosts_line_from_file(host: &str, port: u16, public_key_file: &Path) -> Result<String, PkiError> {
    let host = Host::parse(host)?;
    let text = std::fs::read_to_string(public_key_file).map_err(|e| PkiError::io("read", public_key_file, e))?;
    let what = || format!("in {}", public_key_file.display());
    let key = parse_public_key(&text, what)?;
    known_hosts_entry(&host, port, &key, what)
}

fn known_hosts_entry(
    host: &Host,
    port: u16,
    key: &PublicKey,
    what: impl FnOnce() -> String,
) -> Result<String, PkiError> {
    let mut key = key.clone();
    key.set_comment("");
    let key = key.to_openssh().map_err(|source| PkiError::InvalidPublicKey { what: what(), source })?;
    let key = key.trim_end();
    Ok(if port == 22 { format!("{host} {key}") } else { format!("[{host}]:{port} {key}") })
}

/// Replaces the host field of a [`known_hosts_line`] by its hashed form `|1|salt|hash` (as
/// `ssh-keygen -H` writes it: HMAC-SHA1 of the name under a random 20-byte salt), so that the
/// file does not reveal which hosts the gateway talks to.
pub fn hash_known_hosts_line(line: &str) -> Result<String, PkiError> {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let (name, rest) = line
        .split_once(' ')
        .filter(|(name, _)| !name.is_empty() && !name.starts_with('|'))
        .ok_or_else(|| PkiError::InvalidHost { host: line.to_string(), reason: "not a known_hosts line".into() })?;
    let mut salt = [0u8; 20];
    rand::rngs::OsRng.try_fill_bytes(&mut salt).map_err(PkiError::Random)?;
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt)
        .map_err(|_| PkiError::InvalidHost { host: name.to_string(), reason: "cannot hash it".into() })?;
    mac.update(name.as_bytes());
    let e = base64::engine::general_purpose::STANDARD;
    Ok(format!("|1|{}|{} {rest}", e.encode(salt), e.encode(mac.finalize().into_bytes())))
}

/// The `authorized_keys` line for the gateway's key: `restrict` turns off forwarding, pty, X11,
/// agent and user rc for it.
pub(crate) fn authorized_keys_line(public_line: &str) -> String {
    format!("restrict {public_line}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCbnypZ0/ohLuquX4Iod0taNx7u7cpky0OVFj9S4+Ul host@example";

    #[test]
    fn known_hosts_port_22_and_other() {
        let base = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCbnypZ0/ohLuquX4Iod0taNx7u7cpky0OVFj9S4+Ul";
        assert_eq!(known_hosts_line("sftp.example", 22, KEY).unwrap(), format!("sftp.example {base}"));
        assert_eq!(
            known_hosts_line("127.0.0.1", 2222, &format!("{KEY}\n")).unwrap(),
            format!("[127.0.0.1]:2222 {base}")
        );
        assert_eq!(known_hosts_line("::1", 2222, KEY).unwrap(), format!("[::1]:2222 {base}"));
    }

    #[test]
    fn known_hosts_rejects_bad_input() {
        let err = known_hosts_line("localhost", 22, "ssh-ed25519 not-base64!").unwrap_err();
        assert!(matches!(err, PkiError::InvalidPublicKey { .. }), "{err}");
        assert!(err.to_string().contains("not-base64!"), "{err}");
        assert!(known_hosts_line("localhost", 22, "").is_err());
        let err = known_hosts_line("*", 22, KEY).unwrap_err();
        assert!(err.to_string().contains("\"*\""), "{err}");
        assert!(known_hosts_line("a,b", 22, KEY).is_err());
    }

    #[test]
    fn generated_key_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        let public = generate_ssh_key(&path, "test@mqsftp").unwrap();
        assert!(public.starts_with("ssh-ed25519 AAAA") && public.ends_with(" test@mqsftp"), "{public}");

        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&public_key_path(&path)), 0o644);

        let private = PrivateKey::read_openssh_file(&path).unwrap();
        assert!(!private.is_encrypted());
        assert_eq!(private.public_key().to_openssh().unwrap(), public);
        assert_eq!(std::fs::read_to_string(public_key_path(&path)).unwrap(), format!("{public}\n"));

        let err = generate_ssh_key(&path, "again").unwrap_err();
        assert!(matches!(&err, PkiError::ExistingKey(p) if p == &path), "{err}");
        assert_eq!(PrivateKey::read_openssh_file(&path).unwrap(), private);
    }

    #[test]
    fn generated_key_is_read_by_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let public = generate_ssh_key(&path, "c").unwrap();
        let out = std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path).output();
        match out {
            Ok(out) => {
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let derived = String::from_utf8(out.stdout).unwrap();
                assert_eq!(
                    derived.split_whitespace().take(2).collect::<Vec<_>>(),
                    public.split_whitespace().take(2).collect::<Vec<_>>()
                );
            }
            Err(e) => panic!("ssh-keygen (OpenSSH client) is needed for this test: {e}"),
        }
    }

    #[test]
    fn hashed_line_is_found_by_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let public = generate_ssh_key(&dir.path().join("host_key"), "c").unwrap();
        let line = known_hosts_line("127.0.0.1", 2022, &public).unwrap();
        let hashed = hash_known_hosts_line(&line).unwrap();
        assert!(hashed.starts_with("|1|") && !hashed.contains("127.0.0.1"), "{hashed}");
        assert_eq!(hashed.split(' ').skip(1).collect::<Vec<_>>(), line.split(' ').skip(1).collect::<Vec<_>>());
        assert_ne!(hash_known_hosts_line(&line).unwrap(), hashed, "a fresh salt each time");
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, format!("{hashed}\n")).unwrap();
        for (host, found) in [("[127.0.0.1]:2022", true), ("127.0.0.1", false)] {
            let out = std::process::Command::new("ssh-keygen").args(["-F", host, "-f"]).arg(&known).output().unwrap();
            assert_eq!(out.status.success(), found, "{host}: {}", String::from_utf8_lossy(&out.stdout));
        }
        assert!(hash_known_hosts_line("|1|a|b ssh-ed25519 AAAA").is_err(), "already hashed");
    }

    #[test]
    fn russh_accepts_known_hosts_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        let public = generate_ssh_key(&path, "").unwrap();
        let key = PublicKey::from_openssh(&public).unwrap();
        let known = dir.path().join("known_hosts");
        let lines = format!(
            "# comment\n{}\n{}\n",
            known_hosts_line("localhost", 22, &public).unwrap(),
            known_hosts_line("127.0.0.1", 2022, &public).unwrap()
        );
        std::fs::write(&known, lines).unwrap();
        assert!(russh::keys::check_known_hosts_path("localhost", 22, &key, &known).unwrap());
        assert!(russh::keys::check_known_hosts_path("127.0.0.1", 2022, &key, &known).unwrap());
        assert!(!russh::keys::check_known_hosts_path("127.0.0.1", 22, &key, &known).unwrap());
        assert!(!russh::keys::check_known_hosts_path("otherhost", 22, &key, &known).unwrap());
    }
}
