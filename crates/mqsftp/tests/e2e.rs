//! End-to-end tests of the `mqsftp` binary and libraries against real Mosquitto and OpenSSH sshd, started per test
//! by `mqsftp-testkit` on loopback ports it picks, with PKI generated per run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// This binary runs against Mosquitto and OpenSSH sshd; `embedded.rs` runs the protocol tests against the
/// embedded pair.
pub const EMBEDDED: bool = false;

#[path = "e2e/support.rs"]
mod support;

/// get of files of every edge size, compared by SHA-256.
#[path = "e2e/get.rs"]
mod get;

/// Paths outside the device root, missing files, directories.
#[path = "e2e/confinement.rs"]
mod confinement;

/// Certificates and host keys: what the broker and the gateway refuse.
#[path = "e2e/trust.rs"]
mod trust;

/// The CLI: exit codes, `check`, `pki`.
#[path = "e2e/cli.rs"]
mod cli;

/// put: sizes, overwrite, bad uploads, expiry, commit idempotence, no partial file at a final name.
#[path = "e2e/put.rs"]
mod put;

/// list (paged), stat, remove, mkdir, rename, and their confinement.
#[path = "e2e/ops.rs"]
mod ops;

/// Issue 4: policy, symlinks, names, malformed floods, a permissive broker.
#[path = "e2e/security.rs"]
mod security;

/// Issue 5: `mqsftp demo` and `mqsftp dev` on the embedded servers.
#[path = "e2e/demo.rs"]
mod demo;

/// Many concurrent transfers on one SFTP session.
#[path = "e2e/load.rs"]
mod load;
