//! `mqsftp demo` and `mqsftp dev`: the whole system on one machine with nothing installed but this binary.
//!
//! Both generate a deployment's PKI with `mqsftp-pki` (exactly what `mqsftp pki init` writes), start the embedded
//! broker (`mqsftp-broker`: TLS, client certificates required, device id from the certificate, the generated ACL)
//! and the embedded SFTP server (`mqsftp-sftpd`: public-key login with the generated gateway key, pinned host key)
//! on loopback listeners bound first (no port races), and run the real gateway against them with the generated
//! `gateway.toml`. The embedded servers are for trying mqsftp out; deployments use Mosquitto and OpenSSH.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use mqsftp_broker::{Broker, BrokerSettings};
use mqsftp_device::{Client, DeviceConfig};
use mqsftp_gateway::{Gateway, GatewayConfig};
use mqsftp_pki::{files, DeviceId, DeviceOptions, InitOptions};
use mqsftp_proto::{Digest, HashAlg};
use mqsftp_sftpd::{OpenFiles, Sftpd, SftpdConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The loopback address everything listens on and every config names.
const HOST: &str = "127.0.0.1";
/// The SFTP account of the gateway on the embedded server.
const SFTP_USER: &str = "mqsftp";

/// Broker, SFTP server and gateway running in this process.
struct Running {
    pki: PathBuf,
    store: PathBuf,
    broker: Broker,
    sftpd: Sftpd,
    gateway: Option<(oneshot::Sender<()>, GatewayTask)>,
}

type GatewayTask = tokio::task::JoinHandle<Result<(), mqsftp_gateway::GatewayError>>;

impl Running {
    /// Starts the stack in `dir`: creates the PKI on first use (ports chosen by the OS), or reuses the one there
    /// (and its ports, so that the configs handed out stay valid).
    async fn start(dir: &Path, say: &impl Fn(&str)) -> anyhow::Result<Running> {
        let pki = dir.join("pki");
        let store = dir.join("store");
        let host_key = dir.join("sftpd").join("ssh_host_ed25519_key");
        let gateway_toml = pki.join(files::GATEWAY_TOML);
        let (mqtt, sftp) = if gateway_toml.exists() {
            let cfg = GatewayConfig::load(&gateway_toml)?;
            say(&format!("reusing the deployment in {}", pki.display()));
            (bind(cfg.broker.port, &gateway_toml).await?, bind(cfg.sftp.port, &gateway_toml).await?)
        } else {
            let (mqtt, sftp) = (bind(0, dir).await?, bind(0, dir).await?);
            let (mqtt_port, sftp_port) = (mqtt.local_addr()?.port(), sftp.local_addr()?.port());
            std::fs::create_dir_all(host_key.parent().unwrap_or(dir))
                .with_context(|| format!("cannot create {}", dir.display()))?;
            mqsftp_pki::generate_ssh_key(&host_key, "mqsftp-embedded-sftpd")?;
            mqsftp_pki::init(&InitOptions {
                dir: pki.clone(),
                broker_hosts: vec![HOST.into()],
                broker_port: mqtt_port,
                sftp_user: SFTP_USER.into(),
                sftp_host: HOST.into(),
                sftp_port,
                sftp_host_key: Some(mqsftp_pki::public_key_path(&host_key)),
                ..InitOptions::default()
            })?;
            say(&format!(
                "generated a CA, broker, gateway and SSH keys, mosquitto.conf, acl, authorized_keys, known_hosts \
                 and gateway.toml in {}",
                pki.display()
            ));
            (mqtt, sftp)
        };
        std::fs::create_dir_all(&store).with_context(|| format!("cannot create {}", store.display()))?;
        let broker = Broker::start(
            mqtt,
            BrokerSettings {
                ca_cert: pki.join(files::CA_CERT),
                cert: pki.join(files::BROKER_CERT),
                key: pki.join(files::BROKER_KEY),
                acl: pki.join(files::ACL),
            },
        )
        .await
        .context("the embedded broker did not start")?;
        say(&format!(
            "embedded MQTT broker on {} (TLS, client certificate required, device id = certificate CN, ACL {})",
            broker.local_addr(),
            pki.join(files::ACL).display()
        ));
        let sftpd = Sftpd::start(
            sftp,
            SftpdConfig {
                root: store.clone(),
                host_key: host_key.clone(),
                authorized_keys: pki.join(files::AUTHORIZED_KEYS),
                user: SFTP_USER.into(),
                open_files: OpenFiles::Shared,
            },
        )
        .await
        .context("the embedded SFTP server did not start")?;
        say(&format!(
            "embedded SFTP server on {} (public-key login only; its host key is pinned in {})",
            sftpd.local_addr(),
            pki.join(files::KNOWN_HOSTS).display()
        ));
        let cfg = GatewayConfig::load(&gateway_toml)?;
        let gw = Gateway::connect(cfg).await.context("the gateway could not start")?;
        say(&format!("gateway {} connected to both (host key checked against known_hosts)", gw.id()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = stopped.await;
        }));
        Ok(Running { pki, store, broker, sftpd, gateway: Some((stop, task)) })
    }

    /// The device `id`'s config, issued on first use.
    fn device(&self, id: &str) -> anyhow::Result<PathBuf> {
        let toml = self.pki.join(files::DEVICES_DIR).join(id).join("device.toml");
        if !toml.exists() {
            let opts = DeviceOptions {
                broker_host: HOST.into(),
                broker_port: self.broker.local_addr().port(),
                ..DeviceOptions::default()
            };
            mqsftp_pki::issue_device(&self.pki, &DeviceId::new(id)?, &opts)?;
        }
        Ok(toml)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some((stop, task)) = self.gateway.take() {
            let _ = stop.send(());
            task.await.context("the gateway task failed")??;
        }
        self.sftpd.shutdown().await;
        self.broker.shutdown().await;
        Ok(())
    }
}

async fn bind(port: u16, named_in: &Path) -> anyhow::Result<TcpListener> {
    TcpListener::bind((HOST, port)).await.with_context(|| {
        if port == 0 {
            format!("cannot listen on {HOST}")
        } else {
            format!(
                "cannot listen on {HOST}:{port} (the port {} names); is another `mqsftp dev` running?",
                named_in.display()
            )
        }
    })
}

fn step(n: usize, total: usize, text: &str) {
    println!("[{n}/{total}] {text}");
}

/// `mqsftp demo`: a verified round trip through everything, in a temporary directory.
pub async fn demo(size: u64, keep: bool) -> anyhow::Result<()> {
    const STEPS: usize = 6;
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("mqsftp-demo-").tempdir().context("cannot create a temp dir")?;
    step(1, STEPS, &format!("starting a private deployment in {}", tmp.path().display()));
    let stack = Running::start(tmp.path(), &|s| println!("      {s}")).await?;
    let device_toml = stack.device("demo-device")?;
    let cfg = DeviceConfig::load(&device_toml)?;
    step(2, STEPS, &format!("device demo-device connects with its own certificate ({})", device_toml.display()));
    let mut client = Client::connect(&cfg).await?;
    let (rtt, version) = client.ping().await?;
    println!("      a gateway answered (protocol v{version}) in {rtt:?}");

    let work = tmp.path().join("device-files");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let original = work.join("sample.bin");
    write_sample(&original, size)?;
    step(3, STEPS, &format!("uploading a generated {} file as reports/sample.bin", human(size)));
    let bar = crate::progress_bar(false, "put reports/sample.bin");
    let t = Instant::now();
    let put = client.put(&original, "reports/sample.bin", false, |p| crate::show(&bar, p)).await;
    crate::finish(&bar);
    let put = put?;
    let stored = stack.store.join("devices/demo-device/reports/sample.bin");
    println!(
        "      committed {} bytes in {:?} ({}, durable: {}); on the SFTP store at {}",
        put.size,
        t.elapsed(),
        put.digest,
        put.durable,
        stored.display()
    );

    step(4, STEPS, "listing reports/");
    for e in client.list("reports").await? {
        println!("      {:?} {} ({} bytes)", e.kind, e.name, e.size);
    }

    step(5, STEPS, "downloading it back as sample.copy");
    let copy = work.join("sample.copy");
    let bar = crate::progress_bar(false, "get reports/sample.bin");
    let t = Instant::now();
    let got = client.get("reports/sample.bin", &copy, |p| crate::show(&bar, p)).await;
    crate::finish(&bar);
    let got = got?;
    println!("      received {} bytes in {:?}, {}", got.size, t.elapsed(), got.digest);

    step(6, STEPS, "verifying");
    let alg = put.digest.alg;
    let (a, b) = (digest_file(&original, alg)?, digest_file(&copy, alg)?);
    let on_store = digest_file(&stored, alg)?;
    if a != b || a != on_store || a != put.digest || a != got.digest {
        bail!("verification failed: original {a}, stored {on_store}, downloaded {b}");
    }
    println!("      original, stored and downloaded files all have {a}");
    drop(client);
    stack.stop().await?;
    if keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    println!("demo OK in {:.1?}: upload, list, download and verification through MQTT and SFTP", started.elapsed());
    Ok(())
}

/// `mqsftp dev`: the same stack, kept running until Ctrl-C, with the commands to try.
pub async fn dev(dir: &Path, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let stack = Running::start(&dir, &|s| println!("{s}")).await?;
    let device = stack.device("dev-device")?;
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "mqsftp".into());
    let c = format!("--config {}", device.display());
    println!(
        "\nmqsftp dev is running. Device files live in {store}/devices/dev-device. From another terminal, try:\n\n  \
         {exe} put {c} README.md docs/readme.md\n  \
         {exe} ls {c} docs\n  \
         {exe} get {c} docs/readme.md /tmp/readme.md\n  \
         {exe} check {c}\n  \
         {exe} pki device sensor-2 --dir {pki} --broker-host {HOST} --broker-port {port}   # another device\n\n\
         Press Ctrl-C to stop.",
        store = stack.store.display(),
        pki = stack.pki.display(),
        port = stack.broker.local_addr().port(),
    );
    shutdown.await;
    println!("stopping");
    stack.stop().await
}

/// Writes `size` bytes of pseudo-random data (xorshift: fast, and not compressible).
fn write_sample(path: &Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ size;
    let mut left = size;
    let mut block = vec![0u8; 1 << 16];
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    f.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn digest_file(path: &Path, alg: HashAlg) -> anyhow::Result<Digest> {
    let mut h = alg.hasher();
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize())
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{bytes} bytes")
    }
}
