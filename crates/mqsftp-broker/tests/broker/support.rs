//! PKI in a temporary directory, a broker on 127.0.0.1:0, and clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqsftp_broker::{Broker, BrokerSettings};
use mqsftp_mqtt::{BrokerConfig, LinkOptions, MqttLink};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, TlsConfiguration, Transport};

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// A deployment's PKI (`mqsftp pki init`) with devices issued on demand.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// A client identity: certificate and key, or none.
#[derive(Clone)]
pub struct Identity {
    pub ca: PathBuf,
    pub cert_key: Option<(PathBuf, PathBuf)>,
}

impl Pki {
    pub fn new() -> Pki {
        // RUST_LOG=mqsftp_broker=debug shows what the broker does.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        mqsftp_pki::init(&mqsftp_pki::InitOptions { dir: dir.path().to_path_buf(), ..Default::default() }).unwrap();
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn settings(&self) -> BrokerSettings {
        BrokerSettings {
            ca_cert: self.path("ca.crt"),
            cert: self.path("broker.crt"),
            key: self.path("broker.key"),
            acl: self.path("acl"),
        }
    }

    pub fn gateway(&self) -> Identity {
        Identity { ca: self.path("ca.crt"), cert_key: Some((self.path("gateway.crt"), self.path("gateway.key"))) }
    }

    /// Issues device `id` (CN = id) and returns its identity.
    pub fn device(&self, id: &str) -> Identity {
        let device = mqsftp_pki::parse_device_id(id).unwrap();
        let files = mqsftp_pki::issue_device(self.dir.path(), &device, &mqsftp_pki::DeviceOptions::default()).unwrap();
        Identity { ca: self.path("ca.crt"), cert_key: Some((files.cert, files.key)) }
    }

    /// No client certificate.
    pub fn anonymous(&self) -> Identity {
        Identity { ca: self.path("ca.crt"), cert_key: None }
    }

    pub async fn start_broker(&self) -> Broker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Broker::start(listener, self.settings()).await.unwrap()
    }
}

impl Identity {
    pub fn broker_config(&self, addr: SocketAddr) -> BrokerConfig {
        BrokerConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            ca: self.ca.clone(),
            cert: self.cert_key.as_ref().map(|(c, _)| c.clone()),
            key: self.cert_key.as_ref().map(|(_, k)| k.clone()),
            client_id: None,
            keep_alive: Duration::from_secs(30),
            passphrase_file: None,
            passphrase_env: None,
        }
    }

    /// An `MqttLink` (as the gateway and devices use) subscribed to `subscriptions`.
    pub async fn link(
        &self,
        addr: SocketAddr,
        client_id: &str,
        subscriptions: &[&str],
    ) -> Result<MqttLink, mqsftp_mqtt::MqttError> {
        let opts = LinkOptions {
            client_id: client_id.to_string(),
            subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
            connect_timeout: Duration::from_secs(10),
            reconnect: false,
            inflight: 32,
            queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
        };
        MqttLink::connect(&self.broker_config(addr), opts).await
    }

    /// A raw rumqttc client: its event loop runs only when the test polls it.
    pub fn raw(&self, addr: SocketAddr, client_id: &str) -> (AsyncClient, EventLoop) {
        self.raw_with(addr, client_id, |_| {})
    }

    /// [`Identity::raw`] with changed options.
    pub fn raw_with(
        &self,
        addr: SocketAddr,
        client_id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> (AsyncClient, EventLoop) {
        let tls = mqsftp_mqtt::tls_config(&self.broker_config(addr)).unwrap();
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(4 << 20, 4 << 20)
            .set_inflight(32)
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::clone(&tls))));
        configure(&mut opts);
        AsyncClient::new(opts, 64)
    }
}

/// Polls `eventloop` until CONNACK and the SUBACK for `count` subscriptions; returns the SUBACK codes.
pub async fn until_subacked(eventloop: &mut EventLoop, count: usize) -> Vec<rumqttc::SubscribeReasonCode> {
    let mut codes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while codes.len() < count {
            if let Event::Incoming(Packet::SubAck(ack)) = eventloop.poll().await.unwrap() {
                codes.extend(ack.return_codes);
            }
        }
    })
    .await
    .expect("no SUBACK");
    codes
}

/// The next publish a link receives, within [`WAIT`].
pub async fn next_message(link: &mut MqttLink) -> Publish {
    tokio::time::timeout(WAIT, link.incoming.recv()).await.expect("no message in time").expect("link closed")
}

/// Runs `cmd` with a timeout; its output.
pub async fn run(cmd: &mut tokio::process::Command) -> std::process::Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output()).await.expect("command timed out").expect("command did not start")
}

/// Fails with a clear message when a Mosquitto CLI tool is missing.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| Path::new(&p).join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} not found: install mosquitto-clients (scripts/install-deps)");
}
