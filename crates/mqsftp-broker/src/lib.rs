//! A small MQTT 3.1.1 broker that runs inside the `mqsftp` binary for `mqsftp demo` / `mqsftp dev`, so that those
//! need nothing but Rust. It makes the same checks as the production setup (Mosquitto with the files from
//! `mqsftp pki init`): TLS with a client certificate signed by the deployment's CA, the certificate's CN as user
//! name, and the Mosquitto ACL file, deny by default.
//!
//! # Why its own broker
//!
//! File transfer needs every QoS 1 message delivered and memory that stays bounded when a subscriber is slower than
//! its publisher. The embeddable brokers measured for this (docs/embedded-broker.md) either drop QoS 1 messages for a
//! connected subscriber when its queue is full (rmqtt 0.24, rumqttd 0.20) or buffer without bound. This broker
//! applies **backpressure** instead: a publisher's connection stops reading while a subscriber's queue is full.
//!
//! # What it does
//!
//! MQTT 3.1.1 only (other levels get CONNACK 0x01). CONNECT/CONNACK, PUBLISH QoS 0 and 1 with PUBACK, SUBSCRIBE
//! (a filter the ACL does not fully allow gets 0x80), UNSUBSCRIBE, PINGREQ, DISCONNECT, wildcards `+`/`#`, shared
//! subscriptions `$share/GROUP/FILTER` (one member per message, round robin), client id takeover, wills (published
//! with QoS ≤ 1 if the ACL lets the client write there). A username or password in CONNECT is ignored.
//!
//! Not supported, on purpose: QoS 2 (a QoS 2 PUBLISH closes the connection; a QoS 2 subscription is granted QoS
//! 1), retained messages (the retain flag is ignored: the message is delivered, not stored), persistent sessions
//! (`clean_session = 0` is served as a clean session and answered with session present = 0, which tells the
//! client no state was kept), MQTT 5, WebSockets, plain TCP.
//!
//! # Limits
//!
//! | limit | value | what happens beyond it |
//! |---|---|---|
//! | packet size (remaining length) | [`MAX_PACKET_SIZE`] | the connection is closed |
//! | QoS 1 publishes from one client awaiting PUBACK | [`MAX_INFLIGHT_IN`] | the connection is closed |
//! | QoS 1 deliveries to one client awaiting its PUBACK | [`MAX_INFLIGHT_OUT`] | the broker waits |
//! | deliveries queued for one client | [`OUT_QUEUE`] | QoS 1: the publishers wait; QoS 0: dropped |
//! | subscriber with a full queue taking nothing | [`STALL_TIMEOUT`] | that subscriber is disconnected |
//! | silence from a client | 1.5 × its keepalive | the connection is closed |
//! | TLS handshake / CONNECT | [`HANDSHAKE_TIMEOUT`] / [`CONNECT_TIMEOUT`] | the connection is closed |
//! | connections | [`MAX_CONNECTIONS`] | new ones are closed at once |
//!
//! So a connection holds at most `MAX_INFLIGHT_IN + OUT_QUEUE` messages (plus 32 QoS 0 ones waiting to be routed),
//! each at most [`MAX_PACKET_SIZE`] and shared, not copied, between subscribers: with 64 KiB messages about 14 MiB
//! per connection in the worst case, besides the TLS and socket buffers.
//!
//! # Layout
//!
//! * `lib.rs`: [`Broker`], [`BrokerSettings`], the accept loop.
//! * `connection.rs`: one connection (reader, router, writer; the flow control is described there).
//! * `router.rs`: the subscription table and shared groups. `topic.rs`: topic and filter rules.
//! * `acl.rs`: the Mosquitto ACL file. `tls.rs`: rustls setup and the certificate CN. `error.rs`: [`BrokerError`].

mod acl;
mod connection;
mod error;
mod router;
mod tls;
mod topic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

pub use error::BrokerError;

/// Largest packet accepted (remaining length): a 1 MiB chunk plus header and topic. It must not exceed the limit of
/// the gateway's client (`mqsftp_mqtt::MAX_PACKET_SIZE`, the same value): a bigger packet the broker let through
/// would make the gateway's client drop its connection, so one device could knock the gateway off the broker.
pub const MAX_PACKET_SIZE: usize = (1 << 20) + 1024;
/// QoS 1 publishes a client may have sent without a PUBACK yet (mqsftp uses at most 64, mosquitto_pub 20).
pub const MAX_INFLIGHT_IN: usize = 128;
/// QoS 1 deliveries to one client that may await its PUBACK.
pub const MAX_INFLIGHT_OUT: usize = 32;
/// Deliveries queued for one client besides those in flight.
pub const OUT_QUEUE: usize = 64;
/// How long a QoS 1 delivery waits for room in a subscriber's queue before that subscriber is disconnected.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed between the TLS handshake and CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed right after accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long [`Broker::shutdown`] waits for connections to close before it aborts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Files of the broker; `mqsftp pki init` writes them all (`ca.crt`, `broker.crt`, `broker.key`, `acl`).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// PEM CA certificate: clients must present a certificate signed by it.
    pub ca_cert: PathBuf,
    /// PEM server certificate (chain) of the broker.
    pub cert: PathBuf,
    /// PEM private key of the broker (PKCS#8).
    pub key: PathBuf,
    /// The Mosquitto ACL file (user name = certificate CN).
    pub acl: PathBuf,
}

/// State shared by all connections.
pub(crate) struct Shared {
    pub(crate) tls: tokio_rustls::TlsAcceptor,
    pub(crate) acl: acl::Acl,
    pub(crate) router: router::Router,
    pub(crate) next_conn_id: AtomicU64,
}

/// A running broker. Dropping it stops it too, without waiting; [`Broker::shutdown`] waits.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// The accept loop; taken by [`Broker::shutdown`].
    task: Option<JoinHandle<()>>,
}

impl Broker {
    /// Loads the certificates, key and ACL and serves MQTT over TLS on `listener` (bound by the caller, so there is
    /// no port race). Must be called within a Tokio runtime.
    pub async fn start(listener: TcpListener, settings: BrokerSettings) -> Result<Broker, BrokerError> {
        let addr = listener.local_addr().map_err(BrokerError::LocalAddr)?;
        let tls = tokio_rustls::TlsAcceptor::from(tls::server_config(&settings)?);
        let acl = acl::Acl::load(&settings.acl)?;
        let shared = Arc::new(Shared { tls, acl, router: router::Router::default(), next_conn_id: AtomicU64::new(1) });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, shutdown_rx));
        info!(%addr, "MQTT broker listening");
        Ok(Broker { addr, shutdown, task: Some(task) })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and waits (a few seconds at most) until they are gone.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!("broker task ended abnormally: {e}");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) if conns.len() >= MAX_CONNECTIONS => {
                    warn!(%peer, "connection refused: already {MAX_CONNECTIONS} connections");
                    drop(tcp);
                }
                Ok((tcp, peer)) => {
                    conns.spawn(connection::run(tcp, peer, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    debug!(connections = conns.len(), "shutting down");
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
    info!("MQTT broker stopped");
}
