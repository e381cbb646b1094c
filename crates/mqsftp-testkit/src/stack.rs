//! [`Stack`]: Mosquitto and sshd with their PKI in one temp dir.

use std::fs::{self, DirBuilder, Permissions};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use mqsftp_pki::{files, DeviceOptions, InitOptions};
use russh::keys::{HashAlg, PublicKey};
use tempfile::TempDir;

use crate::config::{self, GatewayTest, SshdConfig, HOST};
use crate::process::Server;
use crate::sys::{self, Program};
use crate::TestkitError;

/// How many ports a server tries when it finds its port taken.
const PORT_ATTEMPTS: u32 = 5;
/// Pause before a restart tries its taken port again.
const RESTART_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Lifetime of the certificates of a stack: tests are short.
const CERT_DAYS: u32 = 7;
/// Lifetime of the CA of a stack: a day longer, so that certificates issued later still end before it.
const CA_DAYS: u32 = 8;

/// What Mosquitto logs when SIGHUP makes it reload.
const RELOAD_LINE: &str = "Reloading config.";
/// The Mosquitto config written next to the generated `mosquitto.conf`.
const MOSQUITTO_TEST_CONF: &str = "mosquitto-test.conf";
/// The gateway config written next to the generated `gateway.toml`.
const GATEWAY_TEST_TOML: &str = "gateway-test.toml";
/// The `known_hosts` with this stack's sshd, next to the generated (placeholder) `known_hosts`.
const KNOWN_HOSTS_TEST: &str = "known_hosts-test";

/// A running Mosquitto (mutual TLS) and OpenSSH sshd (SFTP) on loopback, with certificates, keys
/// and config files generated for this stack only. See the [crate docs](crate) for the layout.
///
/// Dropping it kills (SIGKILL) and reaps both servers, then removes the temp dir.
#[derive(Debug)]
pub struct Stack {
    servers: Servers,
    /// Absolute root of everything below; owned by `tmp`.
    root: PathBuf,
    pki_dir: PathBuf,
    store_dir: PathBuf,
    gateway_config: PathBuf,
    known_hosts: PathBuf,
    host_key_fingerprint: String,
    user: String,
    /// The second CA of [`Stack::foreign_device`], made on first use.
    foreign_pki: Mutex<Option<PathBuf>>,
    /// A copy of this stack's CA for [`Stack::certless_device`], made on first use.
    certless_pki: Mutex<Option<PathBuf>>,
    /// Numbers the files of [`Stack::wrong_known_hosts`].
    counter: AtomicU32,
    /// Declared last: removed after the servers are gone.
    tmp: TempDir,
}

impl Stack {
    /// Generates PKI in a fresh temp dir, starts Mosquitto and sshd on free loopback ports and
    /// waits (at most 10 s each) until both accept TCP connections.
    ///
    /// On failure the temp dir is left in place, so that the logs and config files the error
    /// names can be read.
    pub fn start() -> Result<Stack, TestkitError> {
        let mosquitto = Program::MOSQUITTO.find()?;
        let sshd = Program::SSHD.find()?;
        let user = sys::current_user()?;
        let root_user = sys::is_root()?;

        let tmp = tempfile::Builder::new()
            .prefix("mqsftp-testkit-")
            .tempdir()
            .map_err(|e| TestkitError::io("create a temp dir in", std::env::temp_dir(), e))?;
        let root = std::path::absolute(tmp.path()).map_err(|e| TestkitError::io("resolve", tmp.path(), e))?;
        match Started::start(&root, mosquitto, sshd, &user, root_user) {
            Ok(s) => {
                tracing::info!(
                    dir = %root.display(),
                    mqtt_port = s.servers.ports().0,
                    sftp_port = s.servers.ports().1,
                    "test stack started"
                );
                Ok(Stack {
                    servers: s.servers,
                    pki_dir: s.pki_dir,
                    store_dir: s.store_dir,
                    gateway_config: s.gateway_config,
                    known_hosts: s.known_hosts,
                    host_key_fingerprint: s.host_key_fingerprint,
                    root,
                    user,
                    foreign_pki: Mutex::new(None),
                    certless_pki: Mutex::new(None),
                    counter: AtomicU32::new(0),
                    tmp,
                })
            }
            Err(e) => {
                // The servers are already stopped (dropped inside); keep their logs.
                let kept = tmp.keep();
                tracing::warn!(dir = %kept.display(), error = %e, "test stack failed to start; its dir is kept");
                Err(e)
            }
        }
    }

    /// Like [`Stack::start`], but with the embedded broker and SFTP server (`mqsftp-broker`, `mqsftp-sftpd`, the
    /// pair `mqsftp demo` runs) in this process instead of Mosquitto and sshd, started from the same generated
    /// files. Needs neither program installed. Killing a server stops it (closing its connections) and starting it
    /// binds the same port again; logs, pids and [`Stack::reload_broker`] are only for real servers.
    pub fn start_embedded() -> Result<Stack, TestkitError> {
        let user = sys::current_user()?;
        let tmp = tempfile::Builder::new()
            .prefix("mqsftp-testkit-embedded-")
            .tempdir()
            .map_err(|e| TestkitError::io("create a temp dir in", std::env::temp_dir(), e))?;
        let root = std::path::absolute(tmp.path()).map_err(|e| TestkitError::io("resolve", tmp.path(), e))?;
        let common = Common::prepare(&root, &user)?;
        let (broker, sftpd) =
            crate::embedded::settings(&common.pki_dir, common.store_dir.clone(), common.host_key.clone(), &user);
        let embedded = crate::embedded::Embedded::start(broker, sftpd)?;
        let (gateway_config, known_hosts) = common.gateway_view(embedded.mqtt_port, embedded.sftp_port)?;
        tracing::info!(dir = %root.display(), mqtt_port = embedded.mqtt_port, sftp_port = embedded.sftp_port, "embedded test stack started");
        Ok(Stack {
            servers: Servers::Embedded(embedded),
            pki_dir: common.pki_dir,
            store_dir: common.store_dir,
            gateway_config,
            known_hosts,
            host_key_fingerprint: common.host_key_fingerprint,
            root,
            user,
            foreign_pki: Mutex::new(None),
            certless_pki: Mutex::new(None),
            counter: AtomicU32::new(0),
            tmp,
        })
    }

    /// Whether this stack runs the embedded servers ([`Stack::start_embedded`]).
    pub fn is_embedded(&self) -> bool {
        matches!(self.servers, Servers::Embedded(_))
    }

    fn real(&self, what: &str) -> Result<(&Server, &Server), TestkitError> {
        match &self.servers {
            Servers::Real { broker, sshd } => Ok((broker, sshd)),
            Servers::Embedded(_) => {
                Err(TestkitError::Embedded { server: "stack", reason: format!("{what} exists only for real servers") })
            }
        }
    }

    /// The directory `mqsftp-pki init` wrote (plus this crate's `*-test` files).
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// The temp dir holding everything of this stack.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Port of the broker's mutual-TLS listener on 127.0.0.1.
    pub fn mqtt_port(&self) -> u16 {
        self.servers.ports().0
    }

    /// Port of sshd on 127.0.0.1.
    pub fn sftp_port(&self) -> u16 {
        self.servers.ports().1
    }

    /// `127.0.0.1:mqtt_port`.
    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.mqtt_port()))
    }

    /// `127.0.0.1:sftp_port`.
    pub fn sftp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.sftp_port()))
    }

    /// The SFTP account: the user running the tests (`id -un`), also `[sftp] user` of
    /// [`Stack::gateway_config`].
    pub fn sftp_user(&self) -> &str {
        &self.user
    }

    /// Absolute dir that the SFTP login starts in; device roots are `store_dir/devices/{id}`.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// `store_dir/devices/id` (not created).
    pub fn device_root(&self, id: &str) -> PathBuf {
        self.store_dir.join("devices").join(id)
    }

    /// `gateway-test.toml` in [`Stack::pki_dir`]: the `gateway.toml` written by pki init with only
    /// the broker and SFTP host (127.0.0.1) and ports changed, and `known_hosts` pointing at
    /// [`Stack::known_hosts`]. Its relative paths resolve in the pki dir, as the original's do.
    pub fn gateway_config(&self) -> &Path {
        &self.gateway_config
    }

    /// A `known_hosts` file listing this stack's sshd host key for `[127.0.0.1]:sftp_port`.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The CA certificate that signed the broker's, the gateway's and the devices' certificates.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki_dir.join(files::CA_CERT)
    }

    /// The gateway's MQTT client certificate (CN `gateway`).
    pub fn gateway_cert(&self) -> PathBuf {
        self.pki_dir.join(files::GATEWAY_CERT)
    }

    /// The gateway's MQTT client key.
    pub fn gateway_key(&self) -> PathBuf {
        self.pki_dir.join(files::GATEWAY_KEY)
    }

    /// The gateway's SSH private key, listed in sshd's `authorized_keys`.
    pub fn gateway_ssh_key(&self) -> PathBuf {
        self.pki_dir.join(files::GATEWAY_SSH_KEY)
    }

    /// The sshd host key's SHA256 fingerprint as OpenSSH prints it (`SHA256:…`).
    pub fn sftp_host_key_fingerprint(&self) -> &str {
        &self.host_key_fingerprint
    }

    fn device_options(&self) -> DeviceOptions {
        DeviceOptions {
            broker_host: HOST.to_string(),
            broker_port: self.mqtt_port(),
            cert_days: CERT_DAYS,
            ..DeviceOptions::default()
        }
    }

    /// Issues device `id` a certificate from this stack's CA (pki `issue_device`, broker
    /// 127.0.0.1:mqtt_port) and returns its `device.toml`, in `pki_dir/devices/ID/` next to
    /// `device.crt`, `device.key` and `ca.crt`. Fails if `id` was issued before.
    pub fn device(&self, id: &str) -> Result<PathBuf, TestkitError> {
        let device = mqsftp_pki::parse_device_id(id).map_err(|e| TestkitError::pki("issue a device", e))?;
        let issued = mqsftp_pki::issue_device(&self.pki_dir, &device, &self.device_options())
            .map_err(|e| TestkitError::pki(format!("issue device {id} in {}", self.pki_dir.display()), e))?;
        Ok(issued.config)
    }

    /// A device whose certificate comes from another CA (a second pki init, made on first use),
    /// but whose `ca.crt` is this stack's CA: TLS to the broker is attempted and the broker must
    /// refuse the client certificate. Returns its `device.toml`.
    pub fn foreign_device(&self, id: &str) -> Result<PathBuf, TestkitError> {
        let device = mqsftp_pki::parse_device_id(id).map_err(|e| TestkitError::pki("issue a device", e))?;
        let mut foreign = self.foreign_pki.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = match foreign.as_ref() {
            Some(dir) => dir.clone(),
            None => {
                let dir = self.root.join("foreign-pki");
                mqsftp_pki::init(&InitOptions {
                    dir: dir.clone(),
                    sftp_user: self.user.clone(),
                    sftp_host: HOST.to_string(),
                    ca_days: CA_DAYS,
                    cert_days: CERT_DAYS,
                    ..InitOptions::default()
                })
                .map_err(|e| TestkitError::pki(format!("generate the foreign PKI in {}", dir.display()), e))?;
                foreign.insert(dir).clone()
            }
        };
        let issued = mqsftp_pki::issue_device(&dir, &device, &self.device_options())
            .map_err(|e| TestkitError::pki(format!("issue device {id} in {}", dir.display()), e))?;
        config::copy(&self.ca_cert(), &issued.ca)?;
        Ok(issued.config)
    }

    /// Re-issues device `id` (pki `issue_device` with `reissue`): a new key and certificate in
    /// its directory, the old certificate revoked in `crl.pem`. The broker sees the revocation
    /// after [`Stack::reload_broker`]. Returns its `device.toml`.
    pub fn reissue_device(&self, id: &str) -> Result<PathBuf, TestkitError> {
        let device = mqsftp_pki::parse_device_id(id).map_err(|e| TestkitError::pki("re-issue a device", e))?;
        let opts = DeviceOptions { reissue: true, ..self.device_options() };
        let issued = mqsftp_pki::issue_device(&self.pki_dir, &device, &opts)
            .map_err(|e| TestkitError::pki(format!("re-issue device {id} in {}", self.pki_dir.display()), e))?;
        Ok(issued.config)
    }

    /// Device `id` of this stack whose certificate expired yesterday: issued like [`Stack::device`],
    /// then `device.crt` replaced by a certificate for the same key, CN and CA, valid from two
    /// days ago until one day ago. Returns its `device.toml`.
    pub fn expired_device(&self, id: &str) -> Result<PathBuf, TestkitError> {
        let config = self.device(id)?;
        let dir = config.parent().unwrap_or(&self.pki_dir).to_path_buf();
        let what = format!("the expired certificate of {id}");
        let cert_err = |e: rcgen::Error| TestkitError::Certificate { what: what.clone(), reason: e.to_string() };
        let device_key = rcgen::KeyPair::from_pem(&config::read(&dir.join("device.key"))?).map_err(cert_err)?;
        let ca_key = rcgen::KeyPair::from_pem(&config::read(&self.pki_dir.join(files::CA_KEY))?).map_err(cert_err)?;
        let ca = rcgen::Issuer::from_ca_cert_pem(&config::read(&self.ca_cert())?, ca_key).map_err(cert_err)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, id);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now - time::Duration::days(1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&device_key, &ca).map_err(cert_err)?;
        config::write(&dir.join("device.crt"), &cert.pem())?;
        Ok(config)
    }

    /// Sends SIGHUP to the broker, which makes Mosquitto 2.0 reload its configuration and its
    /// listeners' certificates and CRL, and waits (at most 10 s) until it has logged
    /// "Reloading config.".
    pub fn reload_broker(&self) -> Result<(), TestkitError> {
        let (broker, _) = self.real("reloading the broker")?;
        let pid = broker.pid().ok_or(TestkitError::NotRunning { server: "mosquitto", port: broker.port })?;
        let before = broker.log().matches(RELOAD_LINE).count();
        sys::run("kill", &["-HUP", &pid.to_string()])?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if broker.log().matches(RELOAD_LINE).count() > before {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return broker.wait_for_log("a new \"Reloading config.\" line", Duration::ZERO);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `device.toml` with no client certificate at all (`[broker] cert` and `key` removed, no
    /// `device.crt`/`device.key` beside it) that otherwise is a device of this stack: it trusts
    /// this stack's CA and points at its broker.
    pub fn certless_device(&self, id: &str) -> Result<PathBuf, TestkitError> {
        let device = mqsftp_pki::parse_device_id(id).map_err(|e| TestkitError::pki("issue a device", e))?;
        let mut certless = self.certless_pki.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = match certless.as_ref() {
            Some(dir) => dir.clone(),
            None => {
                // issue_device writes the config the way every device's is written; it needs a CA,
                // and this stack's own pki dir must stay free for `device(id)`, so it gets a copy.
                let dir = self.root.join("certless-pki");
                create_dir(&dir, 0o700)?;
                config::copy(&self.ca_cert(), &dir.join(files::CA_CERT))?;
                config::copy(&self.pki_dir.join(files::CA_KEY), &dir.join(files::CA_KEY))?;
                certless.insert(dir).clone()
            }
        };
        let issued = mqsftp_pki::issue_device(&dir, &device, &self.device_options())
            .map_err(|e| TestkitError::pki(format!("issue device {id} in {}", dir.display()), e))?;
        for file in [&issued.cert, &issued.key] {
            fs::remove_file(file).map_err(|e| TestkitError::io("remove", file, e))?;
        }
        config::strip_client_cert(&issued.config)?;
        Ok(issued.config)
    }

    /// A new `known_hosts` file that lists a different (freshly generated) key for this sshd's
    /// `[127.0.0.1]:sftp_port`: a client using it must refuse the server.
    pub fn wrong_known_hosts(&self) -> Result<PathBuf, TestkitError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("wrong-known-hosts-{n}"));
        create_dir(&dir, 0o700)?;
        let key = dir.join("not_the_host_key");
        let public = mqsftp_pki::generate_ssh_key(&key, "not-the-sshd-host-key")
            .map_err(|e| TestkitError::pki(format!("generate {}", key.display()), e))?;
        let path = dir.join("known_hosts");
        let line = mqsftp_pki::known_hosts_line(HOST, self.sftp_port(), &public)
            .map_err(|e| TestkitError::pki(format!("write {}", path.display()), e))?;
        config::write(&path, &format!("{line}\n"))?;
        Ok(path)
    }

    /// Process id of the broker, while it runs.
    pub fn broker_pid(&self) -> Option<u32> {
        self.real("a pid").ok().and_then(|(b, _)| b.pid())
    }

    /// Process id of sshd (the listener), while it runs.
    pub fn sshd_pid(&self) -> Option<u32> {
        self.real("a pid").ok().and_then(|(_, s)| s.pid())
    }

    /// Kills the broker with SIGKILL, reaps it and waits until its port refuses connections.
    /// Fails if it is not running.
    pub fn kill_broker(&mut self) -> Result<(), TestkitError> {
        match &mut self.servers {
            Servers::Real { broker, .. } => kill(broker),
            Servers::Embedded(e) => e.stop_broker(),
        }
    }

    /// Starts the broker again on the same port and config, and waits until it accepts
    /// connections. Fails if it is running, or with [`TestkitError::PortInUse`] if the port stays
    /// taken over 5 tries 100 ms apart.
    pub fn start_broker(&mut self) -> Result<(), TestkitError> {
        match &mut self.servers {
            Servers::Real { broker, .. } => restart(broker),
            Servers::Embedded(e) => e.start_broker(),
        }
    }

    /// Kills sshd's listener with SIGKILL, reaps it and waits until its port refuses connections.
    /// Sessions that are open keep running (they are sshd's children, not ours) until their
    /// client disconnects. Fails if it is not running.
    pub fn kill_sshd(&mut self) -> Result<(), TestkitError> {
        match &mut self.servers {
            Servers::Real { sshd, .. } => kill(sshd),
            Servers::Embedded(e) => e.stop_sftpd(),
        }
    }

    /// Starts sshd again on the same port, host key and config, and waits until it accepts
    /// connections. Fails like [`Stack::start_broker`].
    pub fn start_sshd(&mut self) -> Result<(), TestkitError> {
        match &mut self.servers {
            Servers::Real { sshd, .. } => restart(sshd),
            Servers::Embedded(e) => e.start_sftpd(),
        }
    }

    /// Everything the broker logged, across restarts.
    pub fn broker_log(&self) -> String {
        self.real("a log").map(|(b, _)| b.log()).unwrap_or_default()
    }

    /// Everything sshd logged (`LogLevel VERBOSE`), across restarts.
    pub fn sshd_log(&self) -> String {
        self.real("a log").map(|(_, s)| s.log()).unwrap_or_default()
    }

    /// Waits (polling, at most `timeout`) until the broker's log contains `needle`, e.g. the
    /// reason it refused a client, which it may write after the client has already given up.
    pub fn wait_for_broker_log(&self, needle: &str, timeout: Duration) -> Result<(), TestkitError> {
        self.real("a log")?.0.wait_for_log(needle, timeout)
    }

    /// Waits (polling, at most `timeout`) until sshd's log contains `needle`.
    pub fn wait_for_sshd_log(&self, needle: &str, timeout: Duration) -> Result<(), TestkitError> {
        self.real("a log")?.1.wait_for_log(needle, timeout)
    }

    /// The broker's log file.
    pub fn broker_log_path(&self) -> &Path {
        match &self.servers {
            Servers::Real { broker, .. } => broker.log_path(),
            Servers::Embedded(_) => Path::new("/dev/null"),
        }
    }

    /// sshd's log file.
    pub fn sshd_log_path(&self) -> &Path {
        match &self.servers {
            Servers::Real { sshd, .. } => sshd.log_path(),
            Servers::Embedded(_) => Path::new("/dev/null"),
        }
    }
}

impl Drop for Stack {
    /// Kills and reaps the two servers this stack spawned (by their `Child` handles, nothing
    /// else), before the temp dir is removed.
    fn drop(&mut self) {
        // The embedded servers stop when dropped.
        if let Servers::Real { broker, sshd } = &mut self.servers {
            for server in [sshd, broker] {
                if let Err(e) = server.stop() {
                    tracing::warn!(server = server.name, error = %e, "cannot stop server");
                }
            }
        }
        tracing::debug!(dir = %self.tmp.path().display(), "removing test stack");
    }
}

/// The two servers of a stack.
#[derive(Debug)]
enum Servers {
    /// Mosquitto and OpenSSH sshd, as child processes.
    Real { broker: Server, sshd: Server },
    /// `mqsftp-broker` and `mqsftp-sftpd` in this process.
    Embedded(crate::embedded::Embedded),
}

impl Servers {
    /// (MQTT port, SFTP port).
    fn ports(&self) -> (u16, u16) {
        match self {
            Servers::Real { broker, sshd } => (broker.port, sshd.port),
            Servers::Embedded(e) => (e.mqtt_port, e.sftp_port),
        }
    }
}

/// What both kinds of stack generate before any server starts: the PKI, the store and the SFTP host key.
struct Common {
    pki_dir: PathBuf,
    store_dir: PathBuf,
    sshd_dir: PathBuf,
    host_key: PathBuf,
    host_pub: String,
    host_key_fingerprint: String,
}

impl Common {
    fn prepare(root: &Path, user: &str) -> Result<Common, TestkitError> {
        let pki_dir = root.join("pki");
        let store_dir = root.join("store");
        let sshd_dir = root.join("sshd");
        mqsftp_pki::init(&InitOptions {
            dir: pki_dir.clone(),
            sftp_user: user.to_string(),
            sftp_host: HOST.to_string(),
            ca_days: CA_DAYS,
            cert_days: CERT_DAYS,
            ..InitOptions::default()
        })
        .map_err(|e| TestkitError::pki(format!("generate the PKI in {}", pki_dir.display()), e))?;
        create_dir(&store_dir, 0o755)?;
        create_dir(&sshd_dir, 0o700)?;
        let host_key = sshd_dir.join("ssh_host_ed25519_key");
        let host_pub = mqsftp_pki::generate_ssh_key(&host_key, "mqsftp-testkit-sshd")
            .map_err(|e| TestkitError::pki(format!("generate the sshd host key {}", host_key.display()), e))?;
        let host_key_fingerprint = PublicKey::from_openssh(&host_pub)
            .map_err(|source| TestkitError::HostKey { path: mqsftp_pki::public_key_path(&host_key), source })?
            .fingerprint(HashAlg::Sha256)
            .to_string();
        Ok(Common { pki_dir, store_dir, sshd_dir, host_key, host_pub, host_key_fingerprint })
    }

    /// Writes the gateway's view of the two servers: `known_hosts-test` and `gateway-test.toml`.
    fn gateway_view(&self, mqtt_port: u16, sftp_port: u16) -> Result<(PathBuf, PathBuf), TestkitError> {
        let known_hosts = self.pki_dir.join(KNOWN_HOSTS_TEST);
        let line = mqsftp_pki::known_hosts_line(HOST, sftp_port, &self.host_pub)
            .map_err(|e| TestkitError::pki(format!("write {}", known_hosts.display()), e))?;
        config::write(&known_hosts, &format!("{line}\n"))?;
        let gateway_config = self.pki_dir.join(GATEWAY_TEST_TOML);
        config::write_gateway_test(
            &self.pki_dir.join(files::GATEWAY_TOML),
            &gateway_config,
            &GatewayTest { mqtt_port, sftp_port, known_hosts: KNOWN_HOSTS_TEST },
        )?;
        Ok((gateway_config, known_hosts))
    }
}

/// What [`Stack::start`] sets up in the temp dir, before it becomes a [`Stack`].
struct Started {
    servers: Servers,
    pki_dir: PathBuf,
    store_dir: PathBuf,
    gateway_config: PathBuf,
    known_hosts: PathBuf,
    host_key_fingerprint: String,
}

impl Started {
    fn start(
        root: &Path,
        mosquitto: PathBuf,
        sshd: PathBuf,
        user: &str,
        root_user: bool,
    ) -> Result<Self, TestkitError> {
        let common = Common::prepare(root, user)?;
        let Common { pki_dir, store_dir, sshd_dir, host_key, .. } = &common;
        if root_user {
            prepare_for_mosquitto_user(root, pki_dir)?;
            prepare_for_root_sshd()?;
        }

        // The broker.
        let mut broker = Server::new("mosquitto", mosquitto, root.join("mosquitto.log"), mosquitto_ready);
        let generated_conf = pki_dir.join(files::MOSQUITTO_CONF);
        let original_conf = config::read(&generated_conf)?;
        let test_conf = pki_dir.join(MOSQUITTO_TEST_CONF);
        start_on_free_port(&mut broker, |port| {
            config::write(&test_conf, &config::mosquitto_test_conf(&generated_conf, &original_conf, port)?)?;
            Ok(vec!["-c".into(), test_conf.clone().into()])
        })?;

        // The SFTP server.
        let mut sshd = Server::new("sshd", sshd, root.join("sshd.log"), sshd_ready);
        let sshd_config = sshd_dir.join("sshd_config");
        let authorized_keys = pki_dir.join(files::AUTHORIZED_KEYS);
        let pid_file = sshd_dir.join("sshd.pid");
        start_on_free_port(&mut sshd, |port| {
            let text = config::sshd_config(&SshdConfig {
                port,
                host_key,
                pid_file: &pid_file,
                authorized_keys: &authorized_keys,
                user,
                store_dir,
            })?;
            config::write(&sshd_config, &text)?;
            // -D: stay in the foreground (our child); -e: log to stderr (our log file).
            Ok(vec!["-D".into(), "-e".into(), "-f".into(), sshd_config.clone().into()])
        })?;

        let (gateway_config, known_hosts) = common.gateway_view(broker.port, sshd.port)?;
        Ok(Started {
            servers: Servers::Real { broker, sshd },
            pki_dir: common.pki_dir,
            store_dir: common.store_dir,
            gateway_config,
            known_hosts,
            host_key_fingerprint: common.host_key_fingerprint,
        })
    }
}

/// Starts `server` on a free port, with the arguments `configure` returns after writing the
/// config for that port; tries another port when the chosen one was taken in the meantime.
fn start_on_free_port(
    server: &mut Server,
    mut configure: impl FnMut(u16) -> Result<Vec<std::ffi::OsString>, TestkitError>,
) -> Result<(), TestkitError> {
    retry_port_in_use(server, |server, _| {
        let port = sys::free_port()?;
        let args = configure(port)?;
        server.configure(args, port);
        Ok(())
    })
}

/// Starts a stopped server on its old port, which its clients are configured with. When the port
/// is taken, tries again a little later, [`PORT_ATTEMPTS`] times in all: under parallel tests the
/// holder is usually fleeting (seen: "Address already in use" with nothing on the port a moment
/// later, most likely another process's probe of a "free" port).
fn restart(server: &mut Server) -> Result<(), TestkitError> {
    retry_port_in_use(server, |_, attempt| {
        if attempt > 1 {
            std::thread::sleep(RESTART_RETRY_INTERVAL);
        }
        Ok(())
    })
}

/// Calls `prepare` and starts `server`, up to [`PORT_ATTEMPTS`] times while the start fails
/// because the port is taken; the last such failure is returned with the number of attempts.
fn retry_port_in_use(
    server: &mut Server,
    mut prepare: impl FnMut(&mut Server, u32) -> Result<(), TestkitError>,
) -> Result<(), TestkitError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        prepare(server, attempt)?;
        match server.start() {
            Err(TestkitError::PortInUse { server: name, port, log, tail, .. }) if attempt >= PORT_ATTEMPTS => {
                return Err(TestkitError::PortInUse { server: name, port, attempts: attempt, log, tail });
            }
            Err(TestkitError::PortInUse { .. }) => {
                tracing::debug!(server = server.name, port = server.port, attempt, "port taken, trying again");
            }
            other => return other,
        }
    }
}

fn kill(server: &mut Server) -> Result<(), TestkitError> {
    if server.stop()? {
        Ok(())
    } else {
        Err(TestkitError::NotRunning { server: server.name, port: server.port })
    }
}

/// Mosquitto is ready once it logs "mosquitto version 2.0.11 running", after it has opened the
/// listener and loaded the certificates, the key and the ACL.
fn mosquitto_ready(line: &str, _port: u16) -> bool {
    line.contains("mosquitto version ") && line.trim_end().ends_with(" running")
}

/// sshd is ready once it logs "Server listening on 127.0.0.1 port PORT.".
fn sshd_ready(line: &str, port: u16) -> bool {
    line.trim_end() == format!("Server listening on {HOST} port {port}.")
}

/// Creates a directory with `mode` (exactly: the umask does not narrow it).
fn create_dir(dir: &Path, mode: u32) -> Result<(), TestkitError> {
    DirBuilder::new().mode(mode).create(dir).map_err(|e| TestkitError::io("create directory", dir, e))?;
    set_mode(dir, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TestkitError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| TestkitError::io("change the mode of", path, e))
}

/// Lets Mosquitto started as root read its files.
///
/// Mosquitto 2.0.11 started as root switches to the `mosquitto` user right after opening the
/// listening socket, and only then loads `cafile`, `certfile`, `keyfile` and `acl_file` (found by
/// trying, root running `mosquitto -c` on a pki dir):
/// * with the temp dir and pki dir at 0700 (as tempfile and pki init make them) it fails with
///   `Error: Unable to open acl_file ".../pki/acl"`: the `mosquitto` user needs search (x)
///   permission on every directory on the way. 0711 is enough (no listing needed). The temp
///   dir's parents (`/tmp`, or `$TMPDIR`) must allow that too: a `TMPDIR` inside `/root` does not.
/// * then it fails with `Unable to load server key file ".../pki/broker.key"` (Permission
///   denied): the key is 0600 root. Chowning `broker.key` to the `mosquitto` user and group fixes
///   that; it stays 0600, so nobody else can read it.
/// * `ca.crt`, `broker.crt` and `acl` are 0644 already and need nothing.
///
/// As a normal user Mosquitto keeps running as that user (it only switches when root), which owns
/// every file, so none of this is done.
fn prepare_for_mosquitto_user(root: &Path, pki_dir: &Path) -> Result<(), TestkitError> {
    let (uid, gid) = sys::user_ids("mosquitto")?;
    set_mode(root, 0o711)?;
    set_mode(pki_dir, 0o711)?;
    let key = pki_dir.join(files::BROKER_KEY);
    std::os::unix::fs::chown(&key, Some(uid), Some(gid)).map_err(|e| TestkitError::io("chown to mosquitto", &key, e))
}

/// sshd started as root needs its privilege separation directory (compiled in as `/run/sshd` on
/// Debian) and fails with "Missing privilege separation directory: /run/sshd" without it. It is
/// normally made by the service unit, which a test machine may never have run. It must be owned
/// by root and not writable by others, like the 0755 root directory made here. As a normal user
/// sshd neither uses nor checks it.
fn prepare_for_root_sshd() -> Result<(), TestkitError> {
    let dir = Path::new("/run/sshd");
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(TestkitError::io("create directory", dir, e)),
    }
}
