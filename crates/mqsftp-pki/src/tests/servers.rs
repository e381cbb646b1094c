//! The generated configs in the real servers: Mosquitto 2.0 must start with `mosquitto.conf` and
//! enforce the ACL with the generated certificates; `sshd -t` must accept the `sshd_config` block.
//! A missing server binary fails these tests (it is never a skip).

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// `/usr/sbin/NAME`, else NAME found on PATH; fails the test when neither exists.
fn program(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.is_file() {
        return sbin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is required for this test but is neither in /usr/sbin nor on PATH"))
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Output of `id ARGS` (trimmed).
fn id(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().expect("run id");
    assert!(out.status.success(), "id {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn is_root() -> bool {
    id(&["-u"]) == "0"
}

/// Runs `cmd`, killing it after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Mosquitto, killed when dropped.
struct Broker {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Broker {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts `mosquitto -c conf` and waits (50 ms polls, 10 s at most) until it accepts TCP
    /// connections on `port` and has logged that it is running. Mosquitto opens its sockets before
    /// it loads the key, so an open port alone does not prove the config works.
    fn start(conf: &Path, port: u16, log: PathBuf) -> Broker {
        let out = File::create(&log).unwrap();
        let child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(conf)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start mosquitto");
        let mut broker = Broker { child, log, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("mosquitto exited ({status}) while starting:\n{}", broker.log());
            }
            let connected = TcpStream::connect(("127.0.0.1", port)).is_ok();
            if connected && broker.log().contains(" running") {
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto did not come up on port {port} in 10 s:\n{}", broker.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(broker.child.try_wait().unwrap().is_none(), "mosquitto died:\n{}", broker.log());
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto started as root switches to the `mosquitto` user before it reads the certificates,
/// key and ACL: hand it the files, and make the temporary directory traversable.
fn let_mosquitto_read(tmp: &Path, pki: &Path) {
    if !is_root() {
        return;
    }
    let uid: u32 = id(&["-u", "mosquitto"]).parse().unwrap();
    let gid: u32 = id(&["-g", "mosquitto"]).parse().unwrap();
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    fn chown_all(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                chown_all(&entry.unwrap().path(), uid, gid);
            }
        }
    }
    chown_all(pki, uid, gid);
}

/// A PKI for a broker on a free port, with devices `dev1` and `dev2`, and the broker running.
fn running_broker() -> (tempfile::TempDir, PathBuf, Broker) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let port = free_port();
    init(&InitOptions { broker_port: port, ..options(&dir) }).unwrap();
    for dev in ["dev1", "dev2"] {
        issue_device(&dir, &parse_device_id(dev).unwrap(), &DeviceOptions::default()).unwrap();
    }
    let_mosquitto_read(tmp.path(), &dir);
    let broker = Broker::start(&dir.join("mosquitto.conf"), port, tmp.path().join("mosquitto.log"));
    (tmp, dir, broker)
}

#[test]
fn mosquitto_starts_with_the_generated_config() {
    let (_tmp, _dir, broker) = running_broker();
    let log = broker.log();
    assert!(log.contains("mosquitto version 2.0"), "{log}");
    assert!(!log.contains("Error"), "{log}");
}

/// An MQTT client of the broker: the gateway or a device (or nobody, without a certificate).
enum Who<'a> {
    Gateway,
    Device(&'a str),
    Anonymous,
}

fn client(tool: &str, dir: &Path, broker: &Broker, who: Who<'_>, args: &[&str]) -> Output {
    let mut cmd = Command::new(program(tool));
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"]);
    cmd.arg("--cafile").arg(dir.join("ca.crt"));
    let creds = match who {
        Who::Gateway => Some((dir.join("gateway.crt"), dir.join("gateway.key"))),
        Who::Device(id) => {
            let d = dir.join("devices").join(id);
            Some((d.join("device.crt"), d.join("device.key")))
        }
        Who::Anonymous => None,
    };
    if let Some((cert, key)) = creds {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.args(args);
    run(cmd, Duration::from_secs(15))
}

/// Publishes a retained message (so that a later subscriber sees it) and returns the output.
fn publish(dir: &Path, broker: &Broker, who: Who<'_>, topic: &str, msg: &str) -> Output {
    client("mosquitto_pub", dir, broker, who, &["-r", "-t", topic, "-m", msg])
}

/// Subscribes to `topics` for `secs` seconds (or until `count` messages) and returns the
/// "topic payload" lines received.
fn receive(dir: &Path, broker: &Broker, who: Who<'_>, topics: &[&str], count: usize, secs: u32) -> Vec<String> {
    let mut args = vec!["-v".to_string(), "-W".into(), secs.to_string(), "-C".into(), count.to_string()];
    for t in topics {
        args.extend(["-t".to_string(), t.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = client("mosquitto_sub", dir, broker, who, &args);
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn mosquitto_acl_keeps_devices_apart() {
    let (_tmp, dir, broker) = running_broker();

    // A device publishes its requests on its own topic only.
    let out = publish(&dir, &broker, Who::Device("dev1"), "mqsftp/v1/dev1/req", "own");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), broker.log());
    publish(&dir, &broker, Who::Device("dev1"), "mqsftp/v1/dev2/req", "forged");
    assert_eq!(
        receive(&dir, &broker, Who::Gateway, &["mqsftp/v1/+/req"], 2, 2),
        ["mqsftp/v1/dev1/req own"],
        "{}",
        broker.log()
    );

    // The gateway answers; only that device reads the answer, and a device cannot forge one.
    for topic in ["mqsftp/v1/dev1/res/s1", "mqsftp/v1/dev1/down/s1", "mqsftp/v1/dev1/res"] {
        let out = publish(&dir, &broker, Who::Gateway, topic, "answer");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    publish(&dir, &broker, Who::Device("dev1"), "mqsftp/v1/dev1/res/s2", "fake");
    let expected = ["mqsftp/v1/dev1/down/s1 answer", "mqsftp/v1/dev1/res answer", "mqsftp/v1/dev1/res/s1 answer"];
    let topics = ["mqsftp/v1/dev1/res/#", "mqsftp/v1/dev1/down/#"];
    assert_eq!(receive(&dir, &broker, Who::Device("dev1"), &topics, 3, 5), expected);
    assert_eq!(receive(&dir, &broker, Who::Gateway, &["mqsftp/v1/dev1/res/+"], 2, 2), ["mqsftp/v1/dev1/res/s1 answer"]);
    assert_eq!(receive(&dir, &broker, Who::Device("dev2"), &["mqsftp/v1/#"], 1, 2), Vec::<String>::new());

    // No certificate, no connection.
    let out = client("mosquitto_sub", &dir, &broker, Who::Anonymous, &["-t", "mqsftp/v1/#", "-W", "2"]);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
}

/// Writes an sshd config around the generated block for the current user; returns its path.
fn sshd_config(tmp: &Path, user: &str) -> PathBuf {
    let host_key = tmp.join("ssh_host_ed25519_key");
    generate_ssh_key(&host_key, "").unwrap();
    let conf = tmp.join("sshd_config");
    let text = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\nUsePAM no\n\n{snippet}",
        port = free_port(),
        key = host_key.display(),
        pid = tmp.join("sshd.pid").display(),
        snippet = sshd_config_snippet(user, "/srv/mqsftp"),
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

/// Runs sshd with `args` and the config, after creating the privilege separation directory that
/// sshd insists on when run as root.
fn sshd(conf: &Path, args: &[&str]) -> Output {
    let sshd = program("sshd");
    if is_root() && !Path::new("/run/sshd").exists() {
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = Command::new(sshd);
    cmd.args(args).arg("-f").arg(conf);
    run(cmd, Duration::from_secs(10))
}

#[test]
fn sshd_accepts_the_config_block() {
    let tmp = tempfile::tempdir().unwrap();
    let user = id(&["-un"]);
    let conf = sshd_config(tmp.path(), &user);
    let out = sshd(&conf, &["-t"]);
    assert!(
        out.status.success(),
        "sshd -t rejected\n{}\n{}",
        std::fs::read_to_string(&conf).unwrap(),
        String::from_utf8_lossy(&out.stderr)
    );

    // And the Match block applies to that user.
    let spec = format!("user={user},host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport=22");
    let out = sshd(&conf, &["-T", "-C", &spec]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective = String::from_utf8(out.stdout).unwrap();
    for line in [
        "chrootdirectory /srv/mqsftp",
        "forcecommand internal-sftp -d /",
        "authenticationmethods publickey",
        "passwordauthentication no",
        "disableforwarding yes",
        "permittty no",
        "kbdinteractiveauthentication no",
        "allowagentforwarding no",
        "allowtcpforwarding no",
        "allowstreamlocalforwarding no",
        "x11forwarding no",
        "permittunnel no",
        "permituserrc no",
    ] {
        assert!(effective.lines().any(|l| l == line), "{line:?} missing from sshd -T:\n{effective}");
    }
}

#[test]
fn sshd_rejects_a_broken_config() {
    // The check above would be worthless if sshd -t accepted anything.
    let tmp = tempfile::tempdir().unwrap();
    let conf = sshd_config(tmp.path(), "nobody");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("    NoSuchOption yes\n");
    std::fs::write(&conf, text).unwrap();
    assert!(!sshd(&conf, &["-t"]).status.success());
}

/// Whether `who` can publish through the broker (mosquitto_pub exits 0 only after a CONNACK).
fn can_connect(dir: &Path, broker: &Broker, who: Who<'_>) -> bool {
    let topic = match &who {
        Who::Device(id) => format!("mqsftp/v1/{id}/req"),
        _ => "mqsftp/v1/x/res".into(),
    };
    client("mosquitto_pub", dir, broker, who, &["-t", &topic, "-m", "hello"]).status.success()
}

/// Sends SIGHUP to the broker, which makes Mosquitto 2.0 reload its config and its listeners'
/// TLS files (the CRL included), and waits for its "Reloading config." line.
fn reload(broker: &Broker) {
    let before = broker.log().matches("Reloading config.").count();
    let pid = broker.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.log().matches("Reloading config.").count() == before {
        assert!(Instant::now() < deadline, "no reload logged:\n{}", broker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mosquitto_refuses_revoked_and_superseded_certificates_after_a_reload() {
    let (tmp, dir, broker) = running_broker();
    assert!(can_connect(&dir, &broker, Who::Device("dev1")), "{}", broker.log());
    assert!(can_connect(&dir, &broker, Who::Device("dev2")), "{}", broker.log());

    let report = revoke(&dir, &parse_device_id("dev2").unwrap(), RevokeReason::KeyCompromise, None).unwrap();
    assert_eq!(report.crl_number, 2, "init wrote CRL 1");
    // The broker still has the old CRL in memory: the reload is what makes the revocation count.
    assert!(can_connect(&dir, &broker, Who::Device("dev2")), "{}", broker.log());
    reload(&broker);
    assert!(!can_connect(&dir, &broker, Who::Device("dev2")), "revoked dev2 refused:\n{}", broker.log());
    assert!(can_connect(&dir, &broker, Who::Device("dev1")), "dev1 unaffected:\n{}", broker.log());
    assert!(can_connect(&dir, &broker, Who::Gateway), "{}", broker.log());

    // Re-issue dev1: the new certificate works, the old one (kept aside here) no longer does.
    let old = tmp.path().join("old-dev1");
    std::fs::create_dir(&old).unwrap();
    for f in ["device.crt", "device.key"] {
        std::fs::copy(dir.join("devices/dev1").join(f), old.join(f)).unwrap();
    }
    issue_device(&dir, &parse_device_id("dev1").unwrap(), &DeviceOptions { reissue: true, ..DeviceOptions::default() })
        .unwrap();
    if is_root() {
        let_mosquitto_read(tmp.path(), &dir);
    }
    reload(&broker);
    assert!(can_connect(&dir, &broker, Who::Device("dev1")), "re-issued dev1:\n{}", broker.log());
    let mut cmd = Command::new(program("mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-t", "mqsftp/v1/dev1/req", "-m", "x"]);
    cmd.arg("--cafile").arg(dir.join("ca.crt"));
    cmd.arg("--cert").arg(old.join("device.crt")).arg("--key").arg(old.join("device.key"));
    let out = run(cmd, Duration::from_secs(15));
    assert!(!out.status.success(), "superseded certificate refused:\n{}", broker.log());
    assert!(broker.log().contains("certificate verify failed"), "{}", broker.log());
}
