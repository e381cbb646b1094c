//! Integration tests of mqsftp-testkit: the servers of a [`Stack`], used by the real OpenSSH and
//! Mosquitto command-line clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mqsftp_testkit::{Program, Stack};

/// Longest a server may take to log what happened.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest any client command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

fn stack() -> Stack {
    Stack::start().unwrap_or_else(|e| panic!("cannot start the test stack: {e}\n{e:?}"))
}

/// Runs a command to completion, with [`COMMAND_TIMEOUT`].
fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot wait for {what}: {e}")),
        Err(_) => {
            // Our own child, by its pid; the waiting thread reaps it.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

mod lifecycle {
    //! A stack starts, answers on both ports, restarts a killed server on the same port, and leaves
    //! no server behind when dropped.
    use super::*;
    use mqsftp_testkit::TestkitError;

    #[test]
    fn starts_and_drop_kills_both_servers() {
        let stack = stack();
        let (mqtt, sftp) = (stack.mqtt_addr(), stack.sftp_addr());
        assert_ne!(mqtt.port(), sftp.port());
        assert!(accepts(mqtt), "broker does not accept connections on {mqtt}");
        assert!(accepts(sftp), "sshd does not accept connections on {sftp}");
        let broker_pid = stack.broker_pid().unwrap();
        let sshd_pid = stack.sshd_pid().unwrap();
        assert!(process_exists(broker_pid) && process_exists(sshd_pid));
        assert!(stack.broker_log().contains("running"), "{}", stack.broker_log());
        assert!(stack.sshd_log().contains("Server listening"), "{}", stack.sshd_log());
        let dir = stack.dir().to_path_buf();
        assert!(dir.is_dir());

        drop(stack);
        assert!(!accepts(mqtt), "broker still accepts connections on {mqtt}");
        assert!(!accepts(sftp), "sshd still accepts connections on {sftp}");
        assert!(!process_exists(broker_pid), "broker pid {broker_pid} is still there");
        assert!(!process_exists(sshd_pid), "sshd pid {sshd_pid} is still there");
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }

    #[test]
    fn killed_broker_comes_back_on_the_same_port() {
        let mut stack = stack();
        let port = stack.mqtt_port();
        let old_pid = stack.broker_pid().unwrap();
        stack.kill_broker().unwrap();
        assert_eq!(stack.broker_pid(), None);
        assert!(!accepts(stack.mqtt_addr()), "broker still accepts connections after kill");
        assert!(!process_exists(old_pid));
        assert!(matches!(stack.kill_broker(), Err(TestkitError::NotRunning { .. })));

        stack.start_broker().unwrap();
        assert_eq!(stack.mqtt_port(), port);
        assert!(accepts(stack.mqtt_addr()));
        assert_ne!(stack.broker_pid(), Some(old_pid));
        let err = stack.start_broker().unwrap_err();
        assert!(matches!(err, TestkitError::AlreadyRunning { .. }), "{err}");
        // Both runs are in the one log.
        assert_eq!(stack.broker_log().matches(" running").count(), 2, "{}", stack.broker_log());
    }

    #[test]
    fn killed_sshd_comes_back_on_the_same_port() {
        let mut stack = stack();
        let port = stack.sftp_port();
        stack.kill_sshd().unwrap();
        assert!(!accepts(stack.sftp_addr()), "sshd still accepts connections after kill");
        stack.start_sshd().unwrap();
        assert_eq!(stack.sftp_port(), port);
        assert!(accepts(stack.sftp_addr()));
    }

    #[test]
    fn restart_on_a_taken_port_fails_with_the_log_tail() {
        let mut stack = stack();
        stack.kill_broker().unwrap();
        stack.kill_sshd().unwrap();
        let squatters = [stack.mqtt_addr(), stack.sftp_addr()].map(|addr| std::net::TcpListener::bind(addr).unwrap());

        for (err, port) in [
            (stack.start_broker().unwrap_err(), stack.mqtt_port()),
            (stack.start_sshd().unwrap_err(), stack.sftp_port()),
        ] {
            assert!(matches!(err, TestkitError::PortInUse { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("Address already in use"), "{msg}");
        }
        assert_eq!((stack.broker_pid(), stack.sshd_pid()), (None, None));

        drop(squatters);
        stack.start_broker().unwrap();
        stack.start_sshd().unwrap();
        assert!(accepts(stack.mqtt_addr()) && accepts(stack.sftp_addr()));
    }

    #[test]
    fn missing_program_is_an_error_naming_scripts_test() {
        let program = Program {
            name: "mqsftp-no-such-program",
            env: None,
            default_path: "/nonexistent/mqsftp-no-such-program",
            package: "mosquitto",
        };
        let err = program.find().unwrap_err().to_string();
        assert!(err.contains("mqsftp-no-such-program not found"), "{err}");
        assert!(err.contains("run scripts/test"), "{err}");
    }
}

mod files {
    //! The files a stack hands out: gateway-test.toml, known_hosts, the host key fingerprint and
    //! the device configs for negative tests.
    use super::*;

    fn table(path: &Path) -> toml::Table {
        std::fs::read_to_string(path).unwrap().parse().unwrap()
    }

    #[test]
    fn gateway_config_changes_only_hosts_ports_and_known_hosts() {
        let stack = stack();
        let path = stack.gateway_config();
        assert_eq!(path, stack.pki_dir().join("gateway-test.toml"));
        let mut test = table(path);
        let mut original = table(&stack.pki_dir().join("gateway.toml"));

        assert_eq!(test["broker"]["host"].as_str(), Some("127.0.0.1"));
        assert_eq!(test["broker"]["port"].as_integer(), Some(i64::from(stack.mqtt_port())));
        assert_eq!(test["sftp"]["host"].as_str(), Some("127.0.0.1"));
        assert_eq!(test["sftp"]["port"].as_integer(), Some(i64::from(stack.sftp_port())));
        assert_eq!(test["sftp"]["user"].as_str(), Some(stack.sftp_user()));
        let known_hosts = stack.pki_dir().join(test["sftp"]["known_hosts"].as_str().unwrap());
        assert_eq!(known_hosts, stack.known_hosts());

        for (section, key) in
            [("broker", "host"), ("broker", "port"), ("sftp", "host"), ("sftp", "port"), ("sftp", "known_hosts")]
        {
            for t in [&mut test, &mut original] {
                t[section].as_table_mut().unwrap().remove(key).unwrap();
            }
        }
        assert_eq!(test, original, "gateway-test.toml changes more than hosts, ports and known_hosts");
    }

    #[test]
    fn host_key_fingerprint_is_what_ssh_keygen_prints_for_the_server() {
        let stack = stack();
        let fingerprint = stack.sftp_host_key_fingerprint();
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");

        // The key the running sshd offers, as ssh-keyscan fetches it.
        let mut scan = Command::new(Program::SSH_KEYSCAN.find().unwrap());
        scan.args(["-t", "ed25519", "-p", &stack.sftp_port().to_string(), "127.0.0.1"]);
        let out = run(scan);
        assert!(out.status.success(), "{}", describe(&out));
        let scanned = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(scanned.path(), &out.stdout).unwrap();

        for file in [scanned.path(), stack.known_hosts()] {
            let mut keygen = Command::new(Program::SSH_KEYGEN.find().unwrap());
            keygen.args(["-l", "-E", "sha256", "-f"]).arg(file);
            let out = run(keygen);
            assert!(out.status.success(), "{}", describe(&out));
            // "256 SHA256:… [127.0.0.1]:PORT (ED25519)"
            let printed = String::from_utf8(out.stdout).unwrap();
            let fields: Vec<&str> = printed.split_whitespace().collect();
            assert_eq!(fields.get(1), Some(&fingerprint), "{}: {printed}", file.display());
            let host = format!("[127.0.0.1]:{}", stack.sftp_port());
            assert_eq!(fields.get(2), Some(&host.as_str()), "{}: {printed}", file.display());
        }
    }

    #[test]
    fn device_configs_point_at_the_broker() {
        let stack = stack();
        let device = table(&stack.device("dev-files").unwrap());
        assert_eq!(device["device_id"].as_str(), Some("dev-files"));
        assert_eq!(device["broker"]["host"].as_str(), Some("127.0.0.1"));
        assert_eq!(device["broker"]["port"].as_integer(), Some(i64::from(stack.mqtt_port())));
        assert!(stack.device("dev-files").is_err(), "a device id can be issued only once");

        let certless_path = stack.certless_device("dev-files").unwrap();
        let certless = table(&certless_path);
        assert_eq!(certless["broker"]["port"].as_integer(), Some(i64::from(stack.mqtt_port())));
        assert!(certless["broker"].get("cert").is_none() && certless["broker"].get("key").is_none(), "{certless:?}");
        assert!(!certless_path.with_file_name("device.key").exists());
        let ca = certless_path.with_file_name(certless["broker"]["ca"].as_str().unwrap());
        assert_eq!(std::fs::read(ca).unwrap(), std::fs::read(stack.ca_cert()).unwrap());

        let foreign_path = stack.foreign_device("dev-files").unwrap();
        let foreign = table(&foreign_path);
        let ca = foreign_path.with_file_name(foreign["broker"]["ca"].as_str().unwrap());
        assert_eq!(std::fs::read(ca).unwrap(), std::fs::read(stack.ca_cert()).unwrap());
        let cert = foreign_path.with_file_name(foreign["broker"]["cert"].as_str().unwrap());
        assert!(cert.starts_with(stack.dir().join("foreign-pki")), "{}", cert.display());
        assert!(stack.foreign_device("dev-files2").is_ok(), "the foreign CA is reused");

        assert!(stack.device("bad/id").is_err());
    }
}

mod sftp {
    //! OpenSSH's `sftp` logs in with the gateway's key, checks the host key against the stack's
    //! known_hosts, and writes into store_dir; a known_hosts with another key is refused.
    use super::*;

    fn sftp(stack: &Stack, known_hosts: &Path, batch: &Path) -> Output {
        let mut cmd = Command::new(Program::SFTP.find().unwrap());
        cmd.arg("-i")
            .arg(stack.gateway_ssh_key())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "IdentitiesOnly=yes", "-F", "/dev/null"])
            .arg("-P")
            .arg(stack.sftp_port().to_string())
            .arg("-b")
            .arg(batch)
            .arg(format!("{}@127.0.0.1", stack.sftp_user()));
        run(cmd)
    }

    #[test]
    fn sftp_client_puts_a_file_into_the_store() {
        let stack = stack();
        let work = tempfile::tempdir().unwrap();
        let local = work.path().join("report.csv");
        std::fs::write(&local, b"a,b\n1,2\n").unwrap();
        let batch = work.path().join("batch");
        std::fs::write(
            &batch,
            format!(
                "mkdir devices\nmkdir devices/dev1\nput {} devices/dev1/report.csv\nls devices/dev1\n",
                local.display()
            ),
        )
        .unwrap();

        let out = sftp(&stack, stack.known_hosts(), &batch);
        assert!(out.status.success(), "{}\nsshd log:\n{}", describe(&out), stack.sshd_log());
        assert!(String::from_utf8_lossy(&out.stdout).contains("devices/dev1/report.csv"), "{}", describe(&out));
        let landed = stack.device_root("dev1").join("report.csv");
        assert_eq!(std::fs::read(&landed).unwrap(), b"a,b\n1,2\n", "{}", landed.display());
        stack.wait_for_sshd_log("Accepted publickey", LOG_TIMEOUT).unwrap();
    }

    #[test]
    fn sftp_client_refuses_a_wrong_host_key() {
        let stack = stack();
        let work = tempfile::tempdir().unwrap();
        let batch = work.path().join("batch");
        std::fs::write(&batch, "mkdir devices\n").unwrap();

        let wrong = stack.wrong_known_hosts().unwrap();
        assert_ne!(stack.wrong_known_hosts().unwrap(), wrong, "each call makes a new file");
        let out = sftp(&stack, &wrong, &batch);
        assert!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "{}", describe(&out));
        assert!(!stack.store_dir().join("devices").exists());
    }
}

mod mqtt {
    //! `mosquitto_pub`/`mosquitto_sub` over mutual TLS: a device of the stack publishes its
    //! request and the gateway reads it; clients without or with a foreign certificate are refused.
    use super::*;

    /// `mosquitto_pub`/`mosquitto_sub` with the TLS options of a client; `cert` is `(crt, key)`.
    fn client(program: Program, stack: &Stack, ca: &Path, cert: Option<(&Path, &Path)>) -> Command {
        let mut cmd = Command::new(program.find().unwrap());
        cmd.args(["-h", "127.0.0.1", "-p", &stack.mqtt_port().to_string()]).arg("--cafile").arg(ca);
        if let Some((crt, key)) = cert {
            cmd.arg("--cert").arg(crt).arg("--key").arg(key);
        }
        cmd
    }

    /// Publishes a retained QoS 1 message, so that a later subscriber sees it without racing.
    fn publish(stack: &Stack, ca: &Path, cert: Option<(&Path, &Path)>, topic: &str, msg: &str) -> Output {
        let mut cmd = client(Program::MOSQUITTO_PUB, stack, ca, cert);
        cmd.args(["-q", "1", "-r", "-t", topic, "-m", msg]);
        run(cmd)
    }

    fn device_files(config: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let dir = config.parent().unwrap();
        (dir.join("ca.crt"), dir.join("device.crt"), dir.join("device.key"))
    }

    #[test]
    fn device_publishes_and_gateway_receives() {
        let stack = stack();
        let (ca, crt, key) = device_files(&stack.device("dev1").unwrap());
        let out = publish(&stack, &ca, Some((&crt, &key)), "mqsftp/v1/dev1/req", "hello");
        assert!(out.status.success(), "{}\nbroker log:\n{}", describe(&out), stack.broker_log());

        let (gw_crt, gw_key) = (stack.gateway_cert(), stack.gateway_key());
        let mut sub = client(Program::MOSQUITTO_SUB, &stack, &stack.ca_cert(), Some((&gw_crt, &gw_key)));
        sub.args(["-t", "mqsftp/v1/+/req", "-C", "1", "-W", "10", "-v"]);
        let out = run(sub);
        assert!(out.status.success(), "{}\nbroker log:\n{}", describe(&out), stack.broker_log());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mqsftp/v1/dev1/req hello");
        // The broker took the certificate's CN as the user name.
        stack.wait_for_broker_log("u'dev1'", LOG_TIMEOUT).unwrap();
    }

    #[test]
    fn client_without_certificate_is_refused() {
        let stack = stack();
        let config = stack.certless_device("dev2").unwrap();
        let ca = config.with_file_name("ca.crt");
        let out = publish(&stack, &ca, None, "mqsftp/v1/dev2/req", "hello");
        assert!(!out.status.success(), "a client without certificate got in: {}", describe(&out));
        stack.wait_for_broker_log("peer did not return a certificate", LOG_TIMEOUT).unwrap();
        let log = stack.broker_log();
        assert!(!log.contains("u'dev2'"), "{log}");
    }

    #[test]
    fn client_with_foreign_certificate_is_refused() {
        let stack = stack();
        let (ca, crt, key) = device_files(&stack.foreign_device("dev3").unwrap());
        let out = publish(&stack, &ca, Some((&crt, &key)), "mqsftp/v1/dev3/req", "hello");
        assert!(!out.status.success(), "a client with a foreign certificate got in: {}", describe(&out));
        stack.wait_for_broker_log("certificate verify failed", LOG_TIMEOUT).unwrap();
        let log = stack.broker_log();
        assert!(!log.contains("u'dev3'"), "{log}");
    }
}
