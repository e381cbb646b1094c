use std::time::Duration;

use mqsftp_device::{Client, DeviceConfig, DeviceError, MqttError};
use mqsftp_gateway::{Gateway, GatewayConfig, GatewayError, StoreError};
use mqsftp_mqtt::{LinkOptions, MqttLink};
use mqsftp_testkit::Stack;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::support::*;

async fn connect_err(cfg: &DeviceConfig) -> MqttError {
    match tokio::time::timeout(LIMIT, Client::connect(cfg)).await.expect("in time") {
        Err(DeviceError::Mqtt(e)) => e,
        Err(e) => panic!("expected an MQTT error, got {e}"),
        Ok(_) => panic!("the broker accepted a client it must refuse"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_a_client_without_certificate() {
    let stack = Stack::start().unwrap();
    let cfg = DeviceConfig::load(&stack.certless_device("nocert").unwrap()).unwrap();
    let e = connect_err(&cfg).await;
    assert!(e.is_tls(), "refusal is reported as a TLS problem: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_a_certificate_from_another_ca() {
    let stack = Stack::start().unwrap();
    let cfg = DeviceConfig::load(&stack.foreign_device("intruder").unwrap()).unwrap();
    let e = connect_err(&cfg).await;
    assert!(e.is_tls(), "refusal is reported as a TLS problem: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_trusting_another_ca_refuses_the_broker() {
    let stack = Stack::start().unwrap();
    let mut cfg = DeviceConfig::load(&stack.device("d1").unwrap()).unwrap();
    // Trust the CA of another PKI instead of ours: the broker's certificate must not verify.
    let other = tempfile::tempdir().unwrap();
    mqsftp_pki::init(&mqsftp_pki::InitOptions { dir: other.path().join("pki"), ..Default::default() }).unwrap();
    cfg.broker.ca = other.path().join("pki/ca.crt");
    let e = connect_err(&cfg).await;
    assert!(e.is_tls(), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{}", stack.mqtt_port())), "{e}");
}

/// The TLS cipher suite a client with `config` gets from the stack's broker.
async fn negotiated_suite(stack: &Stack, config: std::sync::Arc<rustls::ClientConfig>) -> rustls::CipherSuite {
    let tcp = tokio::net::TcpStream::connect(stack.mqtt_addr()).await.expect("broker reachable");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
    let tls = tokio::time::timeout(LIMIT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("in time")
        .expect("TLS handshake");
    tls.get_ref().1.negotiated_cipher_suite().expect("a suite once connected").suite()
}

/// mqsftp's clients offer AES-128-GCM first, and the broker configured by `pki init` picks it (Mosquitto by its
/// `ciphers_tls1.3`, the embedded broker by the client's order). A client that offers only AES-256-GCM still
/// connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_and_clients_agree_on_aes_128_gcm_and_still_accept_aes_256() {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    for stack in [Stack::start().unwrap(), Stack::start_embedded().unwrap()] {
        let cfg = DeviceConfig::load(&stack.device("d1").unwrap()).unwrap();
        let ours = mqsftp_mqtt::tls_config(&cfg.broker).unwrap();
        assert_eq!(negotiated_suite(&stack, ours.clone()).await, TLS13_AES_128_GCM_SHA256);

        let mut provider = (**ours.crypto_provider()).clone();
        provider.cipher_suites.retain(|s| s.suite() == TLS13_AES_256_GCM_SHA384);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(stack.ca_cert()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let only_256 = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(ours.client_auth_cert_resolver.clone());
        assert_eq!(negotiated_suite(&stack, only_256.into()).await, TLS13_AES_256_GCM_SHA384);
    }
}

/// Mosquitto 2.0 answers an MQTT 3.1.1 SUBSCRIBE that its ACL denies with "granted" and then delivers nothing, so
/// what is checked is delivery: bob receives his message, alice (subscribed to the same topic) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_never_receives_another_devices_messages() {
    let stack = Stack::start().unwrap();
    let alice = DeviceConfig::load(&stack.device("alice").unwrap()).unwrap();
    let bob = DeviceConfig::load(&stack.device("bob").unwrap()).unwrap();
    let gateway = GatewayConfig::load(stack.gateway_config()).unwrap();
    let topic = "mqsftp/v1/bob/down/s1".to_string();
    let link = |cfg: mqsftp_mqtt::BrokerConfig, id: &str, subs: Vec<String>| {
        let id = id.to_string();
        async move {
            let opts = LinkOptions {
                client_id: id,
                subscriptions: subs,
                connect_timeout: Duration::from_secs(10),
                reconnect: false,
                inflight: 8,
                queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
            };
            match MqttLink::connect(&cfg, opts).await {
                Ok(l) => Some(l),
                Err(MqttError::SubscriptionRefused { .. }) => None,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let snoop = link(alice.broker.clone(), "alice-snoop", vec![topic.clone(), "mqsftp/v1/+/req".into()]).await;
    let mut bob = link(bob.broker.clone(), "bob", vec![topic.clone()]).await.expect("bob may read his own topic");
    let gw = link(gateway.broker.clone(), "gw", vec![]).await.expect("gateway connects");
    gw.client.publish(topic.clone(), mqsftp_mqtt::rumqttc::QoS::AtLeastOnce, false, b"for bob".to_vec()).await.unwrap();
    let got = tokio::time::timeout(LIMIT, bob.incoming.recv()).await.expect("bob gets his message").unwrap();
    assert_eq!(&got.payload[..], b"for bob");
    if let Some(mut snoop) = snoop {
        // Bob already has it; give the broker a bounded moment in which it would have delivered to alice too.
        let leaked = tokio::time::timeout(Duration::from_millis(500), snoop.incoming.recv()).await;
        assert!(leaked.is_err(), "alice received a message on bob's topic: {leaked:?}");
    }
}

/// A link whose request queue is shorter than its subscriptions (the gateway's is short, so that its outbox decides
/// what goes first) still subscribes to every topic: they are queued all at once on connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_with_a_short_queue_subscribes_to_every_topic() {
    let stack = Stack::start().unwrap();
    let cfg = DeviceConfig::load(&stack.device("carol").unwrap()).unwrap();
    let gateway = GatewayConfig::load(stack.gateway_config()).unwrap();
    let topics: Vec<String> = (1..=3).map(|s| format!("mqsftp/v1/carol/down/s{s}")).collect();
    let opts = |id: &str, subscriptions: Vec<String>| LinkOptions {
        client_id: id.to_string(),
        subscriptions,
        connect_timeout: LIMIT,
        reconnect: false,
        inflight: 8,
        queue: 1,
    };
    let mut carol = MqttLink::connect(&cfg.broker, opts("carol-short-queue", topics.clone())).await.unwrap();
    let gw = MqttLink::connect(&gateway.broker, opts("gw-short-queue", vec![])).await.unwrap();
    for t in &topics {
        gw.client
            .publish(t.clone(), mqsftp_mqtt::rumqttc::QoS::AtLeastOnce, false, t.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < topics.len() {
        let p = tokio::time::timeout(LIMIT, carol.incoming.recv()).await.expect("every message in time").unwrap();
        got.push(p.topic);
    }
    got.sort();
    assert_eq!(got, topics);
}

async fn gateway_with_known_hosts(stack: &Stack, known_hosts: std::path::PathBuf) -> GatewayError {
    let mut cfg = GatewayConfig::load(stack.gateway_config()).unwrap();
    cfg.sftp.known_hosts = known_hosts;
    match tokio::time::timeout(LIMIT, Gateway::connect(cfg)).await.expect("in time") {
        Err(e) => e,
        Ok(_) => panic!("gateway accepted an SFTP server whose host key is not pinned"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_an_unknown_host_key() {
    let stack = Stack::start().unwrap();
    let empty = stack.pki_dir().join("empty_known_hosts");
    std::fs::write(&empty, "# nothing pinned\n").unwrap();
    let e = gateway_with_known_hosts(&stack, empty).await;
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Store(StoreError::UnknownHostKey { .. })), "{msg}");
    assert!(msg.contains(stack.sftp_host_key_fingerprint()), "names the fingerprint: {msg}");
    assert!(msg.contains(&format!("[127.0.0.1]:{}", stack.sftp_port())), "names the host: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_a_changed_host_key() {
    let stack = Stack::start().unwrap();
    let e = gateway_with_known_hosts(&stack, stack.wrong_known_hosts().unwrap()).await;
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Store(StoreError::ChangedHostKey { .. })), "{msg}");
    assert!(msg.contains(stack.sftp_host_key_fingerprint()), "names the fingerprint: {msg}");
}

// ---- Certificates: expired, revoked, re-issued --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_an_expired_certificate() {
    let stack = Stack::start().unwrap();
    // The same CA, key type and CN issued a day ago, valid for one day: only the date is wrong.
    let expired = stack.expired_device("old").unwrap();
    let e = connect_err(&DeviceConfig::load(&expired).unwrap()).await;
    assert!(e.is_tls(), "refusal is reported as a TLS problem: {e}");
    let o = cli(&["ls", "--config", expired.to_str().unwrap()], stack.dir(), &[]).await;
    assert_eq!(o.status.code(), Some(6), "{}", output_text(&o));
    // A device issued now by the same CA connects.
    let fresh = DeviceConfig::load(&stack.device("new").unwrap()).unwrap();
    tokio::time::timeout(LIMIT, Client::connect(&fresh)).await.expect("in time").expect("fresh device connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_refused_after_a_broker_reload_and_a_reissued_one_only_with_its_new_certificate() {
    let (stack, gw, good) = setup("good").await;
    let bad_path = stack.device("bad").unwrap();
    let bad = DeviceConfig::load(&bad_path).unwrap();
    connect(&bad).await.list("").await.expect("bad works before it is revoked");

    let pki = stack.pki_dir().to_str().unwrap().to_string();
    let o = cli(&["pki", "revoke", "bad", "--dir", &pki, "--reason", "key-compromise"], stack.dir(), &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("revoked bad serial") && stdout.contains("CRL number 2"), "{stdout}");
    stack.reload_broker().unwrap();

    let e = connect_err(&bad).await;
    assert!(e.is_tls(), "{e}");
    let o = cli(&["ls", "--config", bad_path.to_str().unwrap()], stack.dir(), &[]).await;
    assert_eq!(o.status.code(), Some(6), "{}", output_text(&o));
    connect(&good).await.list("").await.expect("a device that is not revoked still works");

    // Re-issue "good": its new certificate works, the one it had before is refused.
    let old = tempfile::tempdir().unwrap();
    let mut old_cfg = good.clone();
    for (from, to) in [(good.broker.cert.as_ref().unwrap(), "old.crt"), (good.broker.key.as_ref().unwrap(), "old.key")]
    {
        std::fs::copy(from, old.path().join(to)).unwrap();
    }
    old_cfg.broker.cert = Some(old.path().join("old.crt"));
    old_cfg.broker.key = Some(old.path().join("old.key"));
    let reissued = DeviceConfig::load(&stack.reissue_device("good").unwrap()).unwrap();
    stack.reload_broker().unwrap();
    connect(&reissued).await.list("").await.expect("the re-issued certificate works");
    let e = connect_err(&old_cfg).await;
    assert!(e.is_tls(), "the superseded certificate is refused: {e}");
    gw.stop().await;
}

// ---- Encrypted keys -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_device_run_with_encrypted_keys() {
    let stack = Stack::start().unwrap();
    let pass_file = stack.dir().join("gateway-passphrase");
    std::fs::write(&pass_file, "gateway secret\n").unwrap();
    let pass = mqsftp_pki::Passphrase::from_file(&pass_file).unwrap();
    mqsftp_pki::encrypt_key_file(&stack.gateway_ssh_key(), &pass).unwrap();
    mqsftp_pki::encrypt_key_file(&stack.gateway_key(), &pass).unwrap();

    // No passphrase configured: the SSH key (loaded first) is named, and so is the setting to add.
    let cfg = stack.pki_dir().join("gateway-encrypted.toml");
    std::fs::copy(stack.gateway_config(), &cfg).unwrap();
    let e = match tokio::time::timeout(LIMIT, Gateway::connect(GatewayConfig::load(&cfg).unwrap())).await.unwrap() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an encrypted key was used without its passphrase"),
    };
    assert!(e.contains("gateway_ed25519") && e.contains("passphrase_file or passphrase_env in [sftp]"), "{e}");
    // A wrong one.
    let wrong = stack.dir().join("wrong-passphrase");
    std::fs::write(&wrong, "not it\n").unwrap();
    edit_toml(&cfg, |t| set(t, "sftp", "passphrase_file", wrong.to_str().unwrap()));
    let e = match tokio::time::timeout(LIMIT, Gateway::connect(GatewayConfig::load(&cfg).unwrap())).await.unwrap() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a wrong passphrase was accepted"),
    };
    assert!(e.contains("gateway_ed25519") && e.contains("wrong passphrase"), "{e}");
    assert!(!e.contains("not it") && !e.contains("gateway secret"), "no passphrase in messages: {e}");
    // SSH key right, MQTT key still without: now gateway.key is named.
    edit_toml(&cfg, |t| set(t, "sftp", "passphrase_file", "../gateway-passphrase"));
    let e = match tokio::time::timeout(LIMIT, Gateway::connect(GatewayConfig::load(&cfg).unwrap())).await.unwrap() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an encrypted MQTT key was used without its passphrase"),
    };
    assert!(e.contains("gateway.key") && e.contains("[broker]"), "{e}");
    edit_toml(&cfg, |t| set(t, "broker", "passphrase_env", "MQSFTP_TEST_GATEWAY_PASS"));
    edit_toml(&cfg, |t| {
        t["broker"].as_table_mut().unwrap().remove("passphrase_env");
        set(t, "broker", "passphrase_file", pass_file.to_str().unwrap());
    });
    let gw = RunningGateway::start_with(&cfg).await;

    // A device whose key is encrypted, with the passphrase in a file beside it.
    let device_cfg = stack.device("locked").unwrap();
    let device_dir = device_cfg.parent().unwrap();
    std::fs::write(device_dir.join("passphrase"), "device secret\n").unwrap();
    let device_pass = mqsftp_pki::Passphrase::from_file(&device_dir.join("passphrase")).unwrap();
    mqsftp_pki::encrypt_key_file(&device_dir.join("device.key"), &device_pass).unwrap();
    let data = content(300_000, 11);
    put_on_store(&stack, "locked", "fw.bin", &data);
    let e = connect_err(&DeviceConfig::load(&device_cfg).unwrap()).await;
    assert!(e.to_string().contains("device.key") && e.to_string().contains("[broker]"), "{e}");
    edit_toml(&device_cfg, |t| set(t, "broker", "passphrase_file", "passphrase"));
    let out = tempfile::tempdir().unwrap();
    let mut client = connect(&DeviceConfig::load(&device_cfg).unwrap()).await;
    let got = tokio::time::timeout(LIMIT, client.get("fw.bin", out.path(), |_| {})).await.unwrap().unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    drop(client);

    // The same through the CLI with the passphrase in an environment variable.
    edit_toml(&device_cfg, |t| {
        t["broker"].as_table_mut().unwrap().remove("passphrase_file");
        set(t, "broker", "passphrase_env", "MQSFTP_TEST_DEVICE_PASS");
    });
    let c = device_cfg.to_str().unwrap();
    let o = cli(
        &["get", "--config", c, "fw.bin", "via-env.bin"],
        out.path(),
        &[("MQSFTP_TEST_DEVICE_PASS", "device secret")],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert_eq!(std::fs::read(out.path().join("via-env.bin")).unwrap(), data);
    let o = cli(&["get", "--config", c, "fw.bin", "no-env.bin"], out.path(), &[]).await;
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("MQSFTP_TEST_DEVICE_PASS"), "{}", output_text(&o));
    gw.stop().await;
}

// ---- known_hosts ----------------------------------------------------------------------------------

async fn gateway_connects_with_known_hosts(stack: &Stack, known_hosts: std::path::PathBuf) {
    let mut cfg = GatewayConfig::load(stack.gateway_config()).unwrap();
    cfg.sftp.known_hosts = known_hosts.clone();
    if let Err(e) = tokio::time::timeout(LIMIT, Gateway::connect(cfg)).await.expect("in time") {
        panic!("gateway refused the server with\n{}\n{e}", std::fs::read_to_string(&known_hosts).unwrap());
    }
}

/// The sshd host key line of this stack, as pki writes it.
fn host_line(stack: &Stack) -> String {
    std::fs::read_to_string(stack.known_hosts()).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_accepts_a_hashed_entry_printed_by_pki_known_hosts() {
    let stack = Stack::start().unwrap();
    let host_pub = stack.dir().join("sshd/ssh_host_ed25519_key.pub");
    let port = stack.sftp_port().to_string();
    let o = cli(
        &["pki", "known-hosts", "--hash", "--host", "127.0.0.1", "--port", &port, host_pub.to_str().unwrap()],
        stack.dir(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let line = String::from_utf8(o.stdout).unwrap();
    assert!(line.starts_with("|1|") && !line.contains("127.0.0.1"), "{line}");
    let known = stack.dir().join("hashed_known_hosts");
    std::fs::write(&known, format!("# hashed\n{line}")).unwrap();
    gateway_connects_with_known_hosts(&stack, known).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_accepts_the_matching_key_among_several_types_and_refuses_other_types_only() {
    let stack = Stack::start().unwrap();
    let ecdsa = stack.dir().join("other_ecdsa_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-C", "", "-f"])
        .arg(&ecdsa)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ecdsa_pub = std::fs::read_to_string(mqsftp_pki::public_key_path(&ecdsa)).unwrap();
    let ecdsa_line = mqsftp_pki::known_hosts_line("127.0.0.1", stack.sftp_port(), &ecdsa_pub).unwrap();

    let both = stack.dir().join("several_known_hosts");
    std::fs::write(&both, format!("{ecdsa_line}\n{}\n", host_line(&stack))).unwrap();
    gateway_connects_with_known_hosts(&stack, both).await;

    let only_other = stack.dir().join("other_type_known_hosts");
    std::fs::write(&only_other, format!("{ecdsa_line}\n")).unwrap();
    let e = gateway_with_known_hosts(&stack, only_other).await;
    assert!(matches!(e, GatewayError::Store(StoreError::UnknownHostKey { .. })), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_a_revoked_host_key_before_authenticating() {
    let stack = Stack::start().unwrap();
    // Control: a normal connection authenticates, and sshd logs it (LogLevel VERBOSE).
    gateway_connects_with_known_hosts(&stack, stack.known_hosts().to_path_buf()).await;
    stack.wait_for_sshd_log("Accepted publickey for", LIMIT).unwrap();

    let revoked = stack.dir().join("revoked_known_hosts");
    std::fs::write(
        &revoked,
        format!("{}\n@revoked * {}\n", host_line(&stack), host_line(&stack).split_once(' ').unwrap().1),
    )
    .unwrap();
    let before = stack.sshd_log().len();
    let e = gateway_with_known_hosts(&stack, revoked.clone()).await;
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Store(StoreError::RevokedHostKey { line: 2, .. })), "{msg}");
    assert!(msg.contains(stack.sftp_host_key_fingerprint()) && msg.contains("revoked"), "{msg}");
    assert!(msg.contains(&revoked.display().to_string()), "names the file: {msg}");

    // sshd saw the connection end before any authentication: find the connection (the control one may still be
    // logging its close), wait for its "[preauth]" close line, and check that nothing about a public key (offered,
    // accepted or failed) was logged for it.
    let deadline = std::time::Instant::now() + LIMIT;
    let lines = loop {
        let log = stack.sshd_log();
        let new = log.get(before..).unwrap_or_default().to_string();
        let port = new
            .lines()
            .find_map(|l| l.strip_prefix("Connection from 127.0.0.1 port "))
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string);
        if let Some(port) = port {
            let needle = format!("port {port}");
            let lines: Vec<String> = new
                .lines()
                .filter(|l| l.contains(&format!("{needle} ")) || l.ends_with(&needle))
                .map(String::from)
                .collect();
            if lines.iter().any(|l| l.contains("[preauth]")) {
                break lines;
            }
        }
        assert!(std::time::Instant::now() < deadline, "sshd logged no end of the connection:\n{new}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(lines.len() >= 2, "{lines:?}");
    for bad in ["publickey", "Accepted", "Failed", "Postponed", "Authentication"] {
        assert!(!lines.iter().any(|l| l.contains(bad)), "{bad} in {lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_known_hosts_is_an_error_naming_file_and_line() {
    let stack = Stack::start().unwrap();
    let broken = stack.dir().join("broken_known_hosts");
    // The right key on line 1 does not help: a file that is not what its owner thinks is refused as a whole.
    std::fs::write(&broken, format!("{}\n[127.0.0.1 ssh-ed25519 AAAA\n", host_line(&stack))).unwrap();
    let e = gateway_with_known_hosts(&stack, broken.clone()).await;
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Store(StoreError::KnownHosts { .. })), "{msg}");
    assert!(msg.contains(&broken.display().to_string()) && msg.contains("line 2:"), "{msg}");
}
