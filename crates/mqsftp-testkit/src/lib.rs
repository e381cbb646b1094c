//! Real servers for mqsftp's tests: a [`Stack`] runs Mosquitto (MQTT over mutual TLS) and OpenSSH
//! `sshd` (SFTP) on loopback ports it picks, with a CA, certificates, keys and config files that
//! `mqsftp-pki` generates for that stack alone, and hands tests their ports and config files.
//!
//! ```no_run
//! let stack = mqsftp_testkit::Stack::start()?;
//! let gateway_toml = stack.gateway_config(); // broker 127.0.0.1:mqtt_port, sftp 127.0.0.1:sftp_port
//! let device_toml = stack.device("dev1")?;   // a certificate for device "dev1"
//! # Ok::<(), mqsftp_testkit::TestkitError>(())
//! ```
//!
//! The API is synchronous (`std::process`), so it serves plain and tokio tests alike: starting a
//! stack takes a fraction of a second, which a `#[tokio::test]` may simply block on. Each test
//! starts its own stack (cargo-nextest runs every test in a process of its own, so there is
//! nothing to share). Nothing is skipped: a missing `mosquitto` or `sshd` is an error telling to
//! run `scripts/test`. Set `MQSFTP_MOSQUITTO` / `MQSFTP_SSHD` to use other binaries.
//!
//! Startup never sleeps blindly: it polls the child, its log (for Mosquitto's "running" and sshd's
//! "Server listening" line) and then the port every 20 ms, fails at once with the log's tail when
//! the server exits, and tries a new port when the picked one was taken in the meantime. If the
//! stack cannot start, its temp dir is kept for the logs the error names. The one readiness
//! connection shows in the logs (Mosquitto: "Client connection from 127.0.0.1 failed: … unexpected
//! eof"; sshd: a connection closed before authentication); tests that look for log lines should
//! look for specific ones, with [`Stack::wait_for_broker_log`] / [`Stack::wait_for_sshd_log`],
//! since a server may log why it refused a client after the client has exited.
//!
//! # Layout of a stack's temp dir
//!
//! ```text
//! mqsftp-testkit-XXXX/
//!   pki/                    `mqsftp-pki init` output (sftp user = the user running the tests)
//!     mosquitto-test.conf   mosquitto.conf with only `listener 8883` -> `listener PORT 127.0.0.1`
//!     gateway-test.toml     gateway.toml with only hosts, ports and known_hosts changed
//!     known_hosts-test      `[127.0.0.1]:PORT ssh-ed25519 …` for this sshd
//!     crl.pem issued.json   the CRL (Mosquitto's crlfile) and certificate index; `Stack::reissue_device`
//!                           rewrites them, `Stack::reload_broker` (SIGHUP) makes Mosquitto re-read the CRL
//!     devices/ID/           `Stack::device` (device.toml, device.crt, device.key, ca.crt);
//!                           `Stack::expired_device` replaces device.crt by one that expired yesterday
//!   store/                  where SFTP sessions start (`ForceCommand internal-sftp -d`)
//!   sshd/                   host key, private sshd_config, pid file
//!   mosquitto.log sshd.log  stdout and stderr of every run of each server
//!   foreign-pki/ certless-pki/ wrong-known-hosts-N/   made on demand for negative tests
//! ```
//!
//! # Running as root
//!
//! Both servers behave differently when started by root; the stack prepares for that (details
//! in `stack.rs`): Mosquitto drops to the `mosquitto` user before it reads its certificates, key
//! and ACL, so the temp and pki dirs get mode 0711 and `broker.key` is chowned to that user; sshd
//! needs `/run/sshd`, which is created if missing. As a normal user nothing of this is needed.
//!
//! # Files of this crate
//!
//! * `stack.rs`: [`Stack`], what is generated where, the root-specific preparation.
//! * `process.rs`: one server process: spawn with a log file, wait until ready, kill and reap.
//! * `config.rs`: the test variants of the generated config files.
//! * `sys.rs`: finding programs ([`Program`]), `id`, free ports.
//! * `error.rs`: [`TestkitError`].

mod config;
mod embedded;
mod error;
mod process;
mod stack;
mod sys;

pub use config::HOST;
pub use error::TestkitError;
pub use stack::Stack;
#[cfg(target_os = "linux")]
pub use sys::dirty_pages;
pub use sys::Program;
