//! MQTT over mutual TLS for mqsftp, shared by the gateway and the device library.
//!
//! - [`BrokerConfig`]: the `[broker]` section of `gateway.toml` and `device.toml`.
//! - [`tls_config`]: a rustls client configuration that trusts only the deployment's CA and presents the client
//!   certificate. There is no "insecure" mode. It offers the cipher suites of [`crypto_provider`], AES-128-GCM
//!   first.
//! - [`MqttLink::connect`]: connects with rumqttc, subscribes, checks that the broker granted every subscription,
//!   and then runs the event loop on its own task, forwarding incoming publishes on a channel. Publishing from the
//!   task that polls the event loop can deadlock rumqttc, so nothing here does that.
//!
//! - [`passphrase`]: `passphrase_file` / `passphrase_env` for an encrypted client key.
//! - [`heap::tune`]: glibc heap settings that stop chunk-sized buffers from being faulted in anew for each chunk;
//!   binaries call it first thing. [`heap::copy_tunables`]: on AMD processors with glibc before 2.40, what
//!   `GLIBC_TUNABLES` the `mqsftp` binary restarts with so that copies keep off a slow `rep movsb`.
//!
//! Errors are classified ([`MqttError`]) so that callers can tell a bad certificate from a broker that is down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pkcs8::der::zeroize::Zeroizing;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

pub use rumqttc;

pub mod heap;
pub mod passphrase;
pub use passphrase::Passphrase;

/// Largest MQTT packet sent or accepted: a 1 MiB chunk plus headers.
pub const MAX_PACKET_SIZE: usize = (1 << 20) + 1024;

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

/// How to reach the broker (the `[broker]` section of a config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or IP; must match a SAN of the broker's certificate.
    pub host: String,
    /// TLS port.
    pub port: u16,
    /// The CA certificate (PEM) the broker's certificate must chain to.
    pub ca: PathBuf,
    /// This client's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This client's private key (PKCS#8 PEM, possibly encrypted).
    pub key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted `key` (one line).
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase of an encrypted `key`.
    pub passphrase_env: Option<String>,
    /// MQTT client id. The gateway uses it as a prefix and appends its instance id (so that several gateways can
    /// share one config); the device uses it as given, or derives one per connection when absent.
    pub client_id: Option<String>,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
}

impl BrokerConfig {
    /// Makes relative file paths relative to `base` (the directory of the config file).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.ca);
        if let Some(p) = self.cert.as_mut() {
            fix(p);
        }
        if let Some(p) = self.key.as_mut() {
            fix(p);
        }
        if let Some(p) = self.passphrase_file.as_mut() {
            fix(p);
        }
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A certificate or key file could not be read or parsed.
    #[error("cannot load {what} from {path}: {reason}")]
    Pem { what: &'static str, path: PathBuf, reason: String },
    /// The passphrase of the client key could not be read.
    #[error(transparent)]
    Passphrase(#[from] passphrase::PassphraseError),
    /// The client certificate is given without its key or the other way round.
    #[error("broker config gives {0} but not the other of cert/key")]
    HalfIdentity(&'static str),
    /// rustls refused the configuration (e.g. key does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(#[source] rustls::Error),
    /// The TLS handshake failed: the broker's certificate is not trusted, or the broker refused ours.
    #[error("TLS with the broker at {broker} failed: {reason}")]
    Tls { broker: String, reason: String },
    /// The broker answered CONNECT with a refusal.
    #[error("the broker at {broker} refused the connection: {code:?}")]
    Refused { broker: String, code: ConnectReturnCode },
    /// The broker refused a subscription (its ACL does not allow this client the topic).
    #[error("the broker at {broker} refused the subscription to {topic} (not authorised by its ACL)")]
    SubscriptionRefused { broker: String, topic: String },
    /// Could not reach the broker or the connection broke.
    #[error("connection to the broker at {broker} failed: {reason}")]
    Connection { broker: String, reason: String },
    /// The broker did not complete the handshake in time.
    #[error("the broker at {broker} did not answer within {after:?}")]
    Timeout { broker: String, after: Duration },
    /// The event loop has stopped.
    #[error("the MQTT connection to {0} is closed")]
    Closed(String),
}

impl MqttError {
    /// Whether the error is about certificates (ours or the broker's), as opposed to reachability.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            MqttError::Tls { .. }
                | MqttError::Pem { .. }
                | MqttError::TlsConfig(_)
                | MqttError::HalfIdentity(_)
                | MqttError::Passphrase(_)
        )
    }
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let err = |reason: String| MqttError::Pem { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Loads the client key, decrypting it with the configured passphrase when it is encrypted.
fn load_key(cfg: &BrokerConfig, path: &Path) -> Result<PrivateKeyDer<'static>, MqttError> {
    let err = |reason: String| MqttError::Pem { what: "the client private key", path: path.to_path_buf(), reason };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    if !passphrase::is_encrypted_pkcs8(&text) {
        return PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| err(e.to_string()));
    }
    let pass = passphrase::read("broker", cfg.passphrase_file.as_deref(), cfg.passphrase_env.as_deref())?;
    let der = passphrase::decrypt_pkcs8(&text, pass.as_ref(), "broker").map_err(|e| err(e.to_string()))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec())))
}

/// Builds the rustls client configuration: trusts only `cfg.ca`, presents `cfg.cert`/`cfg.key` when given.
pub fn tls_config(cfg: &BrokerConfig) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs("the CA certificate", &cfg.ca)? {
        roots.add(cert).map_err(|e| MqttError::Pem {
            what: "the CA certificate",
            path: cfg.ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(MqttError::TlsConfig)?
        .with_root_certificates(roots);
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("the client certificate", cert)?;
            let key = load_key(cfg, key)?;
            builder.with_client_auth_cert(chain, key).map_err(MqttError::TlsConfig)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(MqttError::HalfIdentity("cert")),
        (None, Some(_)) => return Err(MqttError::HalfIdentity("key")),
    };
    Ok(Arc::new(config))
}

/// rustls's aws-lc-rs provider with its cipher suites in the order mqsftp offers them: AES-128-GCM first, then
/// AES-256-GCM, then ChaCha20-Poly1305, for TLS 1.3 and (with ECDSA, then RSA certificates) TLS 1.2.
///
/// rustls offers AES-256-GCM first. AES-128-GCM is as safe for this use (it is the suite every TLS 1.3 peer must
/// support) and costs less per byte at every hop: 10 AES rounds instead of 14. A broker that picks by the client's
/// order (the embedded one) then uses it; Mosquitto picks by its own `ciphers_tls1.3`, which `mqsftp pki init`
/// writes in the same order (docs/performance.md, "TLS with AES-128-GCM").
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Finds a rustls error anywhere in an error's source chain.
fn rustls_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                    return Some(t.to_string());
                }
            }
        }
        cur = e.source();
    }
    None
}

/// Classifies a rumqttc connection error.
pub fn classify(broker: &str, err: &rumqttc::ConnectionError) -> MqttError {
    let broker = broker.to_string();
    if let rumqttc::ConnectionError::ConnectionRefused(code) = err {
        return MqttError::Refused { broker, code: *code };
    }
    // rumqttc reports I/O failures during the handshake (a broker going down mid-connect) as TLS errors; those are
    // reachability, not trust.
    if let rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(e)) = err {
        if rustls_cause(e).is_none() {
            return MqttError::Connection { broker, reason: e.to_string() };
        }
    }
    if let Some(reason) = rustls_cause(err) {
        return MqttError::Tls { broker, reason };
    }
    if let rumqttc::ConnectionError::Tls(e) = err {
        return MqttError::Tls { broker, reason: e.to_string() };
    }
    MqttError::Connection { broker, reason: err.to_string() }
}

/// Options for [`MqttLink::connect`].
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Client id sent in CONNECT.
    pub client_id: String,
    /// Topic filters to subscribe (QoS 1) on every connection.
    pub subscriptions: Vec<String>,
    /// How long the first connection and subscription may take.
    pub connect_timeout: Duration,
    /// After the first connection: reconnect (gateway) or stop at the first error (device CLI).
    pub reconnect: bool,
    /// QoS 1 messages this client keeps in flight towards the broker.
    pub inflight: u16,
    /// Requests (publishes, subscriptions) rumqttc queues before its event loop takes them; a sender waits while
    /// the queue is full. A short queue lets the caller decide what goes first (the gateway's outbox). It is never
    /// shorter than `subscriptions`, which are queued all at once when the first connection is accepted.
    pub queue: usize,
}

impl LinkOptions {
    /// The request queue of a client that needs no priorities: deep enough never to stall a sender.
    pub const DEFAULT_QUEUE: usize = 256;
}

/// State of a running link, observable by its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connected and subscribed; the counter increases on every new connection.
    Up(u64),
    /// Disconnected; the reason is kept. The link retries when `reconnect` was set.
    Down(String),
    /// The event loop has stopped for good.
    Closed(String),
}

/// The broker's acknowledgements of this client's QoS 1 publishes, for an owner that keeps its own count of what
/// is in flight (the gateway's outbox lets chunks, not answers, wait for the broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAcks {
    /// The connection they came on: 1 for the first, one more on each reconnect (after which rumqttc resends what
    /// the broker had not acknowledged, so an owner's count starts again).
    pub connection: u64,
    /// PUBACKs received since the link was made.
    pub acked: u64,
}

/// A connected MQTT client with its event loop running on a task.
pub struct MqttLink {
    /// Publishes and subscribes.
    pub client: AsyncClient,
    /// Incoming publishes, in the order the broker sent them.
    pub incoming: mpsc::UnboundedReceiver<rumqttc::Publish>,
    /// Connection state.
    pub state: watch::Receiver<LinkState>,
    /// The broker's PUBACKs so far.
    pub acks: watch::Receiver<PubAcks>,
    /// UNSUBACKs received so far.
    unsubacks: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttLink {
    /// Connects, subscribes and checks every subscription was granted, then leaves the event loop running.
    pub async fn connect(cfg: &BrokerConfig, opts: LinkOptions) -> Result<MqttLink, MqttError> {
        let broker = cfg.address();
        let tls = tls_config(cfg)?;
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), cfg.host.clone(), cfg.port);
        mqtt.set_keep_alive(cfg.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
            .set_inflight(opts.inflight.max(1))
            .set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
        let (client, mut eventloop) = AsyncClient::new(mqtt, opts.queue.max(opts.subscriptions.len()).max(1));
        // Without TCP_NODELAY, small acks wait for Nagle + delayed ACK (40 ms each) and a get crawls at ~10 MB/s.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(opts.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        let (tx, incoming) = mpsc::unbounded_channel();

        let first = first_connect(&client, &mut eventloop, &opts, &broker, &tx);
        match tokio::time::timeout(opts.connect_timeout, first).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(MqttError::Timeout { broker, after: opts.connect_timeout }),
        }
        let (state_tx, state) = watch::channel(LinkState::Up(1));
        let (unsub_tx, unsubacks) = watch::channel(0);
        let (acks_tx, acks) = watch::channel(PubAcks { connection: 1, acked: 0 });
        let watches = (state_tx, unsub_tx, acks_tx);
        let task = tokio::spawn(run_eventloop(client.clone(), eventloop, opts, broker, tx, watches));
        Ok(MqttLink { client, incoming, state, acks, unsubacks, task })
    }

    /// Leaves cleanly: unsubscribes from `filters` and waits until the broker confirmed it (so that, for a shared
    /// subscription, the broker hands nothing more to this client), then disconnects. Each wait is bounded by
    /// `timeout`.
    pub async fn close(mut self, filters: &[String], timeout: Duration) {
        let want = *self.unsubacks.borrow() + filters.len() as u64;
        for f in filters {
            let _ = self.client.unsubscribe(f.clone()).await;
        }
        let unsubscribed = async {
            while *self.unsubacks.borrow_and_update() < want {
                if self.unsubacks.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, unsubscribed).await;
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(timeout, self.closed()).await;
    }

    /// Waits until the link is closed for good and returns why.
    pub async fn closed(&mut self) -> String {
        loop {
            if let LinkState::Closed(why) = &*self.state.borrow_and_update() {
                return why.clone();
            }
            if self.state.changed().await.is_err() {
                return "event loop stopped".into();
            }
        }
    }
}

async fn first_connect(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    opts: &LinkOptions,
    broker: &str,
    tx: &mpsc::UnboundedSender<rumqttc::Publish>,
) -> Result<(), MqttError> {
    let mut pending = opts.subscriptions.len();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(MqttError::Refused { broker: broker.into(), code: ack.code });
                }
                if pending == 0 {
                    return Ok(());
                }
                for topic in &opts.subscriptions {
                    client
                        .try_subscribe(topic.clone(), QoS::AtLeastOnce)
                        .map_err(|e| MqttError::Connection { broker: broker.into(), reason: e.to_string() })?;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // Subscriptions were sent one per SUBSCRIBE, in order; SUBACKs come back in the same order.
                let index = opts.subscriptions.len() - pending;
                if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                    let topic = opts.subscriptions.get(index).cloned().unwrap_or_default();
                    return Err(MqttError::SubscriptionRefused { broker: broker.into(), topic });
                }
                pending = pending.saturating_sub(1);
                if pending == 0 {
                    return Ok(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send(p);
            }
            Ok(_) => {}
            Err(e) => return Err(classify(broker, &e)),
        }
    }
}

async fn run_eventloop(
    client: AsyncClient,
    mut eventloop: EventLoop,
    opts: LinkOptions,
    broker: String,
    tx: mpsc::UnboundedSender<rumqttc::Publish>,
    (state, unsubacks, acks): (watch::Sender<LinkState>, watch::Sender<u64>, watch::Sender<PubAcks>),
) {
    let mut generation = 1u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    let _ = state.send(LinkState::Closed("owner dropped the link".into()));
                    return;
                }
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                unsubacks.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acks.send_modify(|a| a.acked += 1);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                let _ = state.send(LinkState::Closed("disconnected".into()));
                return;
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                generation += 1;
                acks.send_modify(|a| a.connection = generation);
                backoff = Duration::from_millis(100);
                tracing::info!(%broker, generation, "reconnected to the broker");
                // Subscribe from another task: awaiting the request channel here could deadlock the event loop.
                let client = client.clone();
                let topics = opts.subscriptions.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    for t in topics {
                        if let Err(e) = client.subscribe(t.clone(), QoS::AtLeastOnce).await {
                            tracing::warn!(topic = %t, error = %e, "resubscribe failed");
                        }
                    }
                    let _ = state.send(LinkState::Up(generation));
                });
            }
            Ok(_) => {}
            Err(e) => {
                let err = classify(&broker, &e);
                tracing::warn!(%broker, error = %err, "MQTT connection lost");
                if !opts.reconnect || matches!(e, rumqttc::ConnectionError::RequestsDone) {
                    let _ = state.send(LinkState::Closed(err.to_string()));
                    return;
                }
                let _ = state.send(LinkState::Down(err.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Opens a TCP connection to the broker and completes a TLS handshake, verifying the broker's certificate against
/// the CA. Used by `mqsftp check` to tell "the broker's certificate is wrong" apart from "the broker refused ours"
/// (with TLS 1.3 the broker judges the client certificate only after the client's handshake has finished).
pub async fn probe_tls(cfg: &BrokerConfig, timeout: Duration) -> Result<(), MqttError> {
    let broker = cfg.address();
    let tls = tls_config(cfg)?;
    let server_name = rustls::pki_types::ServerName::try_from(cfg.host.clone()).map_err(|e| MqttError::Tls {
        broker: broker.clone(),
        reason: format!("{:?} is not a valid server name: {e}", cfg.host),
    })?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| MqttError::Connection { broker: broker.clone(), reason: e.to_string() })?;
        tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await.map_err(|e| MqttError::Tls {
            broker: broker.clone(),
            reason: rustls_cause(&e).unwrap_or(e.to_string()),
        })?;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| MqttError::Timeout { broker: broker.clone(), after: timeout })?
}

/// One line of a `mqsftp check` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` or `Err(reason)`.
    pub result: Result<String, String>,
}

/// The first line of every check report: TCP + TLS to the broker, its certificate verified against the CA.
pub async fn check_broker_tls(cfg: &BrokerConfig) -> CheckLine {
    let result = probe_tls(cfg, Duration::from_secs(10))
        .await
        .map(|_| format!("{} presents a certificate signed by {}", cfg.address(), cfg.ca.display()))
        .map_err(|e| e.to_string());
    CheckLine { name: "broker tls", result }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A CA-less self-signed client certificate with its key encrypted under "pw".
    fn encrypted_identity(dir: &Path) -> BrokerConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["dev".into()]).unwrap().self_signed(&key).unwrap();
        let info = pkcs8::PrivateKeyInfoRef::try_from(key.serialized_der()).unwrap();
        let pem = info.encrypt("pw").unwrap().to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF).unwrap();
        std::fs::write(dir.join("c.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("c.key"), pem.as_bytes()).unwrap();
        BrokerConfig {
            host: "localhost".into(),
            port: 8883,
            ca: dir.join("c.crt"),
            cert: Some(dir.join("c.crt")),
            key: Some(dir.join("c.key")),
            passphrase_file: None,
            passphrase_env: None,
            client_id: None,
            keep_alive: Duration::from_secs(30),
        }
    }

    #[test]
    fn encrypted_client_key_needs_the_right_passphrase() {
        let dir = std::env::temp_dir().join(format!("mqsftp-mqtt-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = encrypted_identity(&dir);
        let e = tls_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("c.key") && e.contains("set passphrase_file or passphrase_env in [broker]"), "{e}");
        std::fs::write(dir.join("pass"), "nope\n").unwrap();
        cfg.passphrase_file = Some(dir.join("pass"));
        let e = tls_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("c.key") && e.contains("wrong passphrase"), "{e}");
        std::fs::write(dir.join("pass"), "pw\n").unwrap();
        tls_config(&cfg).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn aes_128_gcm_is_offered_first_and_no_suite_is_lost() {
        use rustls::CipherSuite as C;
        let ours: Vec<C> = crypto_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut theirs: Vec<C> =
            rustls::crypto::aws_lc_rs::default_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            ours[..3],
            [C::TLS13_AES_128_GCM_SHA256, C::TLS13_AES_256_GCM_SHA384, C::TLS13_CHACHA20_POLY1305_SHA256]
        );
        let mut sorted = ours.clone();
        sorted.sort_by_key(|c| u16::from(*c));
        theirs.sort_by_key(|c| u16::from(*c));
        assert_eq!(sorted, theirs, "the same suites as rustls's default, reordered");
    }
}
