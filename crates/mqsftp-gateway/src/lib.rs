//! The mqsftp gateway: serves devices' file requests arriving over MQTT from an SFTP store.
//!
//! - `config.rs`: `gateway.toml`, validated at load.
//! - `store.rs`: the SFTP connection (pinned host key from known_hosts, public-key auth, modern algorithms
//!   only), shared by all transfers and reopened when it breaks.
//! - `known_hosts.rs`: the strict known_hosts parser (hashed entries, `@revoked`, several keys per host).
//! - `get.rs` / `put.rs`: one task per download / upload. Downloads read the store chunk by chunk, ahead of the
//!   window only within a gateway-wide budget ([`READ_AHEAD_BUDGET`]), so memory is window × chunk per download
//!   plus a constant.
//! - `outbox.rs`: everything the gateway publishes, in two lanes (answers, then chunks) into its one broker
//!   connection, so that an answer never waits behind the chunks of every running download.
//! - `server.rs`: [`Gateway`]: subscribes to `mqsftp/v1/+/req`, takes the device id from the topic, confines
//!   paths to the device's root, and runs one task per transfer that drives the sans-io
//!   [`mqsftp_proto::Sender`].
//!
//! The protocol itself (messages, chunk frames, windows) is in `mqsftp-proto`; nothing here encodes bytes.

pub mod check;
pub mod config;
mod get;
pub mod known_hosts;
mod limit;
mod ops;
mod outbox;
pub mod policy;
mod put;
pub mod server;
pub mod store;
mod sweep;

pub use config::{ConfigError, GatewayConfig};
pub use get::READ_AHEAD_BUDGET;
pub use policy::{Policy, PolicyError};
pub use server::{Gateway, GatewayError, GatewayStats, PolicyReloader};
pub use store::{Store, StoreError, StoreSession};
