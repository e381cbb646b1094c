//! The protocol integration tests (get, put, list/stat/remove/mkdir/rename, confinement) against the embedded
//! broker and SFTP server (`mqsftp-broker`, `mqsftp-sftpd`: what `mqsftp demo` runs), the same tests `e2e` runs
//! against Mosquitto and OpenSSH sshd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Every stack of this binary is `Stack::start_embedded`.
pub const EMBEDDED: bool = true;

#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/get.rs"]
mod get;

#[path = "e2e/put.rs"]
mod put;

#[path = "e2e/ops.rs"]
mod ops;

#[path = "e2e/confinement.rs"]
mod confinement;

#[path = "e2e/load.rs"]
mod load;
