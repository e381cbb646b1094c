use std::path::Path;
use std::process::Output;

use mqsftp_testkit::Stack;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mqsftp");

async fn mqsftp(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).current_dir(cwd).kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output()).await.expect("mqsftp finishes in time").expect("mqsftp runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// device.toml with a short timeout, for the "no gateway" cases.
fn short_timeout(stack: &Stack, id: &str) -> String {
    let path = stack.device(id).unwrap();
    let mut t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let mut transfer = toml::Table::new();
    transfer.insert("timeout".into(), "2s".into());
    t.insert("transfer".into(), transfer.into());
    std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_exit_codes() {
    let stack = Stack::start().unwrap();
    let cfg = short_timeout(&stack, "cli");
    let out = tempfile::tempdir().unwrap();

    // No gateway yet: exit 5 after the timeout, with a message saying so.
    let o = mqsftp(&["get", "--config", &cfg, "a.txt"], out.path()).await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no gateway answered"), "{}", text(&o));

    let gw = RunningGateway::start(&stack).await;
    let data = content(200_000, 3);
    put_on_store(&stack, "cli", "a.txt", &data);

    let o = mqsftp(&["get", "--config", &cfg, "a.txt"], out.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(std::fs::read(out.path().join("a.txt")).unwrap(), data);
    // BLAKE3 unless asked otherwise; SHA-256 on request, as `sha256sum` prints it; an unknown algorithm is refused
    // before anything is fetched.
    assert!(String::from_utf8_lossy(&o.stdout).contains(&blake3(&data).to_string()), "{}", text(&o));
    let o = mqsftp(&["get", "--config", &cfg, "--hash", "sha256", "a.txt", "b.txt"], out.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("sha256 {}", sha256(&data))), "{}", text(&o));
    assert_eq!(std::fs::read(out.path().join("b.txt")).unwrap(), data);
    std::fs::remove_file(out.path().join("b.txt")).unwrap();
    let o = mqsftp(&["get", "--config", &cfg, "--hash", "md5", "a.txt", "c.txt"], out.path()).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(r#"unknown hash algorithm "md5""#), "{}", text(&o));
    assert!(!out.path().join("c.txt").exists());

    let o = mqsftp(&["get", "--config", &cfg, "missing.txt", "m"], out.path()).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.txt"), "{}", text(&o));

    let o = mqsftp(&["get", "--config", &cfg, "../other/x", "m"], out.path()).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));

    let nocert = stack.certless_device("cli-nocert").unwrap();
    let o = mqsftp(&["get", "--config", nocert.to_str().unwrap(), "a.txt", "n"], out.path()).await;
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));

    let o = mqsftp(&["get", "--config", "/nonexistent/device.toml", "a.txt"], out.path()).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/device.toml"), "{}", text(&o));

    assert_eq!(entries(out.path()), vec!["a.txt".to_string()], "failed gets leave nothing behind");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_step() {
    let stack = Stack::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw_cfg = stack.gateway_config().to_str().unwrap().to_string();

    let o = mqsftp(&["check", "--config", &gw_cfg], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for step in ["broker tls", "broker client certificate", "sftp host key", "sftp key auth", "sftp write+remove"] {
        assert!(out.contains(&format!("pass  {step}")), "{step}: {}", text(&o));
    }
    assert!(entries(stack.store_dir()).iter().all(|n| !n.starts_with(".mqsftp-check")), "probe removed");

    // Device check fails its last step while no gateway runs, and passes with one.
    let dev = short_timeout(&stack, "checker");
    let o = mqsftp(&["check", "--config", &dev], dir.path()).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("pass  broker tls") && out.contains("pass  client certificate"), "{}", text(&o));
    assert!(out.contains("FAIL  request topics: no gateway answered"), "{}", text(&o));

    let gw = RunningGateway::start(&stack).await;
    let o = mqsftp(&["check", "--config", &dev], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    gw.stop().await;

    // A gateway config whose known_hosts pins another key fails on the host key, naming the fingerprint.
    let mut t: toml::Table = std::fs::read_to_string(&gw_cfg).unwrap().parse().unwrap();
    let wrong = stack.wrong_known_hosts().unwrap();
    t["sftp"].as_table_mut().unwrap().insert("known_hosts".into(), wrong.to_str().unwrap().into());
    let bad = stack.pki_dir().join("gateway-wrong-hostkey.toml");
    std::fs::write(&bad, toml::to_string(&t).unwrap()).unwrap();
    let o = mqsftp(&["check", "--config", bad.to_str().unwrap()], dir.path()).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAIL  sftp host key") && out.contains(stack.sftp_host_key_fingerprint()), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_commands_write_files_and_never_replace_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let p = pki.to_str().unwrap();
    let o =
        mqsftp(&["pki", "init", "--dir", p, "--broker-host", "mqtt.example.com", "--sftp-user", "files"], dir.path())
            .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for f in [
        "ca.crt",
        "ca.key",
        "broker.crt",
        "broker.key",
        "gateway.crt",
        "gateway.key",
        "gateway_ed25519",
        "gateway_ed25519.pub",
        "mosquitto.conf",
        "acl",
        "sshd_config",
        "authorized_keys",
        "gateway.toml",
    ] {
        assert!(pki.join(f).is_file(), "{f} written");
    }
    let before = std::fs::read(pki.join("ca.key")).unwrap();
    let o = mqsftp(&["pki", "init", "--dir", p], dir.path()).await;
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ca.key"), "{}", text(&o));
    assert_eq!(std::fs::read(pki.join("ca.key")).unwrap(), before, "key unchanged");

    let o = mqsftp(&["pki", "device", "sensor-7", "--dir", p], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for f in ["device.crt", "device.key", "device.toml", "ca.crt"] {
        assert!(pki.join("devices/sensor-7").join(f).is_file(), "{f} written");
    }
    let o = mqsftp(&["pki", "device", "bad/id", "--dir", p], dir.path()).await;
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad/id"), "{}", text(&o));

    let o = mqsftp(
        &[
            "pki",
            "known-hosts",
            "--host",
            "sftp.example.com",
            "--port",
            "2222",
            pki.join("gateway_ed25519.pub").to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("[sftp.example.com]:2222 ssh-ed25519 "), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_commands_and_json_output() {
    let stack = Stack::start().unwrap();
    let gw = RunningGateway::start(&stack).await;
    let cfg = stack.device("clifiles").unwrap();
    let cfg = cfg.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = content(100_000, 4);
    std::fs::write(dir.path().join("up.bin"), &data).unwrap();

    let o = mqsftp(&["--json", "put", "--config", cfg, "up.bin", "d/up.bin"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&v["hash"], &v["blake3"]), (&"blake3".into(), &blake3(&data).hex().into()), "{v}");
    assert_eq!(v["size"], 100_000);
    assert_eq!(v["durable"], true);
    let o = mqsftp(&["--json", "put", "--config", cfg, "--hash", "sha256", "up.bin", "d/up2.bin"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&v["hash"], &v["sha256"]), (&"sha256".into(), &sha256(&data).into()), "{v}");
    // put created the missing parent; making it again is refused as existing.
    let o = mqsftp(&["mkdir", "--config", cfg, "d"], dir.path()).await;
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));

    let o = mqsftp(&["put", "--config", cfg, "up.bin", "d/up.bin"], dir.path()).await;
    assert_eq!(o.status.code(), Some(9), "exists without --overwrite: {}", text(&o));
    let o = mqsftp(&["put", "--config", cfg, "--overwrite", "up.bin", "d/up.bin"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let o = mqsftp(&["ls", "--config", cfg, "--json", "d"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "up.bin");
    assert_eq!(v[0]["type"], "file");
    assert_eq!(v[0]["size"], 100_000);

    let o = mqsftp(&["stat", "--config", cfg, "--json", "d/nope"], dir.path()).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"], "not_found");

    let o = mqsftp(&["mv", "--config", cfg, "d/up.bin", "top.bin"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = mqsftp(&["rm", "--config", cfg, "top.bin"], dir.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = mqsftp(&["ls", "--config", cfg], dir.path()).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end().lines().count(), 1, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(" d/"), "{}", text(&o));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_passphrase_lifetimes_revoke_reissue_and_encrypt_key() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let pki = cwd.join("pki");
    let p = pki.to_str().unwrap();
    let pass = cwd.join("ca-passphrase");
    std::fs::write(&pass, "ca secret\n").unwrap();
    let pass_arg = pass.to_str().unwrap();
    let ok = |o: &Output| assert_eq!(o.status.code(), Some(0), "{}", text(o));
    let fails_with = |o: &Output, needle: &str| {
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{needle:?} in {}", text(o));
    };

    fails_with(&cli(&["pki", "init", "--dir", p, "--ca-days", "0"], cwd, &[]).await, "0 days");
    fails_with(
        &cli(&["pki", "init", "--dir", p, "--ca-days", "100", "--cert-days", "200"], cwd, &[]).await,
        "outlasts",
    );
    assert!(!pki.exists(), "nothing written");
    let o = cli(
        &["pki", "init", "--dir", p, "--ca-days", "400", "--cert-days", "90", "--passphrase-file", pass_arg],
        cwd,
        &[],
    )
    .await;
    ok(&o);
    assert!(std::fs::read_to_string(pki.join("ca.key")).unwrap().contains("ENCRYPTED PRIVATE KEY"));
    assert!(pki.join("crl.pem").is_file() && pki.join("issued.json").is_file());

    // The CA key's passphrase: missing, wrong (file or environment), right.
    fails_with(&cli(&["pki", "device", "d1", "--dir", p], cwd, &[]).await, "MQSFTP_PKI_PASSPHRASE");
    let wrong = [("MQSFTP_PKI_PASSPHRASE", "wrong")];
    fails_with(&cli(&["pki", "device", "d1", "--dir", p], cwd, &wrong).await, "wrong passphrase for");
    assert!(!pki.join("devices/d1").exists());
    let right = [("MQSFTP_PKI_PASSPHRASE", "ca secret")];
    ok(&cli(&["pki", "device", "d1", "--dir", p, "--days", "30"], cwd, &right).await);
    ok(&cli(&["pki", "device", "d2", "--dir", p, "--days", "30", "--passphrase-file", pass_arg], cwd, &[]).await);
    fails_with(&cli(&["pki", "device", "d3", "--dir", p, "--days", "500"], cwd, &right).await, "outlasts the CA");

    // Revoke, twice; an unknown reason.
    fails_with(&cli(&["pki", "revoke", "d1", "--dir", p, "--reason", "lost"], cwd, &right).await, "key-compromise");
    let o = cli(&["pki", "revoke", "d1", "--dir", p, "--reason", "key-compromise"], cwd, &right).await;
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("reload Mosquitto"), "{}", text(&o));
    fails_with(&cli(&["pki", "revoke", "d1", "--dir", p], cwd, &right).await, "already revoked");
    fails_with(&cli(&["pki", "revoke", "nobody", "--dir", p], cwd, &right).await, "no certificate");

    // Re-issue: new key, CRL number moves on.
    let key = std::fs::read(pki.join("devices/d2/device.key")).unwrap();
    fails_with(&cli(&["pki", "device", "d9", "--dir", p, "--reissue"], cwd, &right).await, "cannot be re-issued");
    let o = cli(&["pki", "device", "d2", "--dir", p, "--days", "30", "--reissue"], cwd, &right).await;
    ok(&o);
    assert_ne!(std::fs::read(pki.join("devices/d2/device.key")).unwrap(), key);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pki.join("issued.json")).unwrap()).unwrap();
    assert_eq!(index["crl_number"], 3, "{index}");

    // encrypt-key on a device key, then again.
    let device_key = pki.join("devices/d2/device.key");
    let k = device_key.to_str().unwrap();
    fails_with(&cli(&["pki", "encrypt-key", k], cwd, &[]).await, "no passphrase");
    ok(&cli(&["pki", "encrypt-key", k], cwd, &[("MQSFTP_PKI_PASSPHRASE", "device secret")]).await);
    fails_with(&cli(&["pki", "encrypt-key", k, "--passphrase-file", pass_arg], cwd, &[]).await, "already encrypted");
}

/// The binary is built without aws-lc's CPU jitter entropy (`.cargo/config.toml`): gathering it cost every
/// `mqsftp get` or `put` process 60-100 ms of CPU before its first TLS handshake, most of a 1 KiB get's 80 ms
/// (docs/performance.md). Its code is only linked in when the build includes it.
#[test]
fn the_binary_is_built_without_cpu_jitter_entropy() {
    let binary = std::fs::read(BIN).unwrap();
    let needle = b"jent_read_entropy";
    let found = binary.windows(needle.len()).any(|w| w == needle);
    assert!(
        !found,
        "{BIN} contains aws-lc's jitter entropy; is AWS_LC_SYS_NO_JITTER_ENTROPY set in .cargo/config.toml?"
    );
}

/// The commands that move files restart themselves with glibc's `rep movsb` threshold raised on the processors
/// where glibc's and the kernel's `rep movsb` copies are slow (AMD with `erms`, `heap::copy_tunables`), and only
/// there, once, keeping the process's arguments; the other commands never do. Checked on whatever processor the
/// tests run on: what is expected follows from this machine's /proc/cpuinfo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_that_move_files_restart_with_fast_copies_where_they_need_them() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let expected = mqsftp_mqtt::heap::copy_tunables_for(&cpuinfo, None, None);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &'static [&'static str], tunables: Option<&'static str>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "mqsftp=debug")
            .env_remove(mqsftp_mqtt::heap::RESTARTED_ENV)
            .kill_on_drop(true);
        match tunables {
            Some(t) => cmd.env("GLIBC_TUNABLES", t),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        async move {
            tokio::time::timeout(LIMIT, cmd.output()).await.expect("mqsftp finishes in time").expect("mqsftp runs")
        }
    };
    let restarted = "started again with GLIBC_TUNABLES";
    let out = run(&["get", "--config", "/nonexistent/device.toml", "a", "b"], None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The restarted process still got its arguments: it names the config it could not read, and fails as before.
    assert!(stderr.contains("/nonexistent/device.toml"), "{}", text(&out));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    match &expected {
        Some(t) => {
            assert_eq!(stderr.matches(restarted).count(), 1, "restarted once: {}", text(&out));
            assert!(stderr.contains(&*t.to_string_lossy()), "with the threshold: {}", text(&out));
        }
        None => assert!(!stderr.contains(restarted), "no restart on this processor: {}", text(&out)),
    }
    // Other tunables are kept alongside.
    let out = run(&["put", "--config", "/nonexistent/device.toml", "a", "b"], Some("glibc.malloc.arena_max=2")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if expected.is_some() {
        assert!(stderr.contains("glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold="), "{}", text(&out));
    } else {
        assert!(!stderr.contains(restarted), "{}", text(&out));
    }
    // A threshold set by hand is left alone, and a command that moves no file's bytes never restarts.
    let by_hand = "glibc.cpu.x86_rep_movsb_threshold=4096";
    let out = run(&["get", "--config", "/nonexistent/device.toml", "a", "b"], Some(by_hand)).await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains(restarted), "{}", text(&out));
    let out = run(&["ls", "--config", "/nonexistent/device.toml", "a"], None).await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains(restarted), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/device.toml"), "{}", text(&out));
}
