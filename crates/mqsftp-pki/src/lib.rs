//! Creates what an mqsftp deployment needs: a private CA, the certificates of the MQTT broker,
//! the gateway and each device, the gateway's SSH key, and the config files of Mosquitto 2.0,
//! OpenSSH's sshd and the gateway. The `mqsftp pki …` commands are thin wrappers around it.
//!
//! # What [`init`] writes
//!
//! ```text
//! DIR/                      (created with mode 0700 if missing)
//!   ca.crt       ca.key        self-signed CA "mqsftp CA" (keyCertSign, cRLSign, pathlen 0)
//!   broker.crt   broker.key    server certificate: serverAuth; SANs localhost, 127.0.0.1, ::1
//!                              and the extra broker hosts; CN = first extra host or localhost
//!   gateway.crt  gateway.key   client certificate: clientAuth, CN "gateway"
//!   gateway_ed25519(.pub)      the gateway's SSH login key (Ed25519, OpenSSH format)
//!   mosquitto.conf             mutual-TLS listener, CN as user name, ACL; absolute paths to DIR
//!   acl                        Mosquitto ACL: each device only its own topics, gateway all
//!   sshd_config                Match block for the SFTP-only, chrooted account (append to
//!                              /etc/ssh/sshd_config)
//!   authorized_keys            `restrict` + the gateway's public key, for that account
//!   known_hosts                the SFTP server's host key, or comments on how to add it
//!   gateway.toml               the gateway's config (docs/dev/config-formats.md), relative paths
//!   crl.pem                    CRL signed by the CA (mosquitto.conf `crlfile`), empty at first
//!   issued.json                index of every certificate issued and whether it is revoked
//!   devices/                   one directory per device, see below
//! ```
//!
//! # What [`issue_device`] writes
//!
//! ```text
//! DIR/devices/ID/           (mode 0700) copy it to the device
//!   ca.crt                     copy of DIR/ca.crt, to verify the broker
//!   device.crt   device.key    client certificate: clientAuth, CN = device id, signed by DIR/ca.key
//!   device.toml                the device's config, relative paths
//! ```
//!
//! # Over a PKI's life
//!
//! * [`issue_device`] with `reissue` replaces a device's key and certificate and revokes the old one;
//!   [`revoke`] revokes every certificate of a device. Both rewrite `crl.pem` (and `issued.json`)
//!   atomically; Mosquitto re-reads the CRL on SIGHUP.
//! * [`InitOptions::passphrase`] encrypts `ca.key`; [`encrypt_key_file`] encrypts any other key in
//!   place. Passphrases come from a file or [`PASSPHRASE_ENV`] ([`Passphrase`]), never a prompt, and
//!   are never printed (redacted `Debug`, error messages name files only).
//!
//! # Guarantees
//!
//! * Keys are ECDSA P-256 (PKCS#8 PEM) for X.509 and Ed25519 for SSH.
//! * Private keys are mode 0600 from the moment they are created; everything else is 0644.
//! * Every file is written to a temporary file in the same directory and then linked into place,
//!   so a crash never leaves half a file, and an existing file is never replaced (except the CRL, the
//!   index, and what `reissue` / `encrypt_key_file` replace on purpose, by atomic rename): `init` and
//!   `issue_device` check all their outputs first and refuse, writing nothing, when one exists
//!   ([`PkiError::ExistingKey`] / [`PkiError::ExistingFile`] name it). If a write fails part-way,
//!   the files this call already wrote are removed again.
//! * Host names are plain DNS names or IP literals, never patterns, so `known_hosts` and the
//!   broker certificate cannot match more than intended.
//!
//! # Layout of this crate
//!
//! * `init.rs`, `device.rs`: the two operations and their options. `crl.rs`: the index, the CRL and
//!   [`revoke`]. `keys.rs`: encrypted keys. `passphrase.rs`: [`Passphrase`].
//! * `certs.rs`: X.509 with rcgen. `ssh.rs`: SSH keys, `known_hosts` and `authorized_keys` lines.
//! * `templates.rs`: the text of every config file. `names.rs`: host and user name checks.
//! * `fsutil.rs`: atomic no-clobber writes and the all-or-nothing `Batch`.
//! * `error.rs`: [`PkiError`].

mod certs;
mod crl;
mod device;
mod error;
mod fsutil;
mod init;
mod keys;
mod names;
mod passphrase;
mod ssh;
mod templates;

#[cfg(test)]
mod tests;

pub use certs::{CA_COMMON_NAME, GATEWAY_COMMON_NAME};
pub use crl::{revoke, RevokeReason, RevokeReport, REASONS};
pub use device::{device_files, issue_device, parse_device_id, DeviceFiles, DeviceOptions};
pub use error::PkiError;
pub use init::{
    files, init, InitOptions, InitReport, DEFAULT_BROKER_PORT, DEFAULT_CA_DAYS, DEFAULT_CERT_DAYS, DEFAULT_SFTP_USER,
};
pub use keys::encrypt_key_file;
pub use names::Host;
pub use passphrase::{Passphrase, PASSPHRASE_ENV};
pub use ssh::{generate_ssh_key, hash_known_hosts_line, known_hosts_line, known_hosts_line_from_file, public_key_path};
pub use templates::{sshd_config_snippet, MOSQUITTO_INSTALL_DIR, SFTP_CHROOT};

pub use mqsftp_proto::DeviceId;
