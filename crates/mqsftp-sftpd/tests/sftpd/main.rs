//! mqsftp-sftpd against real clients: OpenSSH's `sftp` and `ssh`, russh, and the gateway's store session.
//! Each test starts its own server on 127.0.0.1:0 with keys made by mqsftp-pki in a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

/// Bad configuration gives typed errors that name the file (and line).
mod config;
/// `..` and symbolic links cannot leave the served directory.
mod confinement;
/// The gateway's store session (russh-sftp client): put, rename with and without replace, fsync, `durable`.
mod gateway;
/// OpenSSH `sftp -b`: pwd, ls, put, get, mkdir, rename, rm, rmdir; byte-identical files; cipher choice.
mod openssh;
/// Refused: no key, unknown key, wrong user, exec, shell, pty, port and agent forwarding.
mod refused;
