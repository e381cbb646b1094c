use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

/// Sets `[section] key = value` in the TOML file at `path`.
fn set_option(path: &Path, section: &str, key: &str, value: toml::Value) {
    let mut t: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let s = t.entry(section).or_insert(toml::Table::new().into()).as_table_mut().unwrap();
    s.insert(key.into(), value);
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

/// Issue 7, scenario 7a: the broker stops answering without closing (SIGSTOP) during a download. The gateway's
/// MQTT keepalive (2 s) notices within twice the keepalive; after SIGCONT the gateway and the device reconnect and
/// the download resumes, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_detected_and_the_transfer_resumes() {
    const KEEPALIVE: Duration = Duration::from_secs(2);
    let size = scaled(64 * MIB, 256 * MIB);
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_option(stack.gateway_config(), "broker", "keep_alive", "2s".into());
    device_with_timeout(&stack, "hobroker", "10s");
    let device_toml = stack.pki_dir().join("devices/hobroker/device.toml");
    set_option(&device_toml, "broker", "keep_alive", "2s".into());
    let cfg = mqsftp_device::DeviceConfig::load(&device_toml).unwrap();
    let gw = GatewayProcess::spawn(&stack).await;
    let data = content(size, 103);
    put_on_store(&stack, "hobroker", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_get(client, "f.bin", target.clone());
    reach(&mut done, size as u64 * 3 / 10, &mut task).await;
    let broker = stack.broker_pid().expect("broker runs");
    signal(broker, "STOP");
    let stopped = Instant::now();
    gw.wait_for_log("MQTT connection lost").await;
    let detected = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(broker, "CONT");
    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the download resumes after the broker answers again");
    assert_eq!(sha256_file(&target), sha256(&data));
    println!(
        "broker silent (SIGSTOP) during a {} MiB get, MQTT keepalive {KEEPALIVE:?}: gateway detected it after {:.2} s \
         ({:.2} x keepalive); resumed after SIGCONT, {} bytes received twice, byte-identical",
        size >> 20,
        detected.as_secs_f64(),
        detected.as_secs_f64() / KEEPALIVE.as_secs_f64(),
        outcome.resent_bytes
    );
    // Polling the log adds up to 50 ms; rumqttc sends its ping one keepalive after the last packet and fails the
    // connection when the next tick finds it unanswered.
    assert!(detected <= KEEPALIVE * 2 + Duration::from_millis(500), "detected after {detected:?}");
    gw.kill().await;
}

/// Issue 7, scenario 7b: the sshd processes serving the gateway's SFTP session stop answering without closing
/// (SIGSTOP) during an upload. The SSH keepalive (1 s, one may go unanswered) drops the dead session within about
/// twice the keepalive; the upload's pending writes fail, the device is told `unavailable`, resumes, and the
/// gateway continues on a new session from what the store holds. Byte-identical, one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sftp_session_is_detected_and_the_upload_resumes() {
    const KEEPALIVE: Duration = Duration::from_secs(1);
    let size = scaled(64 * MIB, 256 * MIB);
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_option(stack.gateway_config(), "sftp", "keepalive", "1s".into());
    set_option(stack.gateway_config(), "sftp", "keepalive_max", 1.into());
    set_option(stack.gateway_config(), "sftp", "request_timeout", "10s".into());
    let cfg = device_with_timeout(&stack, "hosshd", "10s");
    let gw = GatewayProcess::spawn(&stack).await;
    let data = content(size, 104);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, &data).unwrap();
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_put(client, local.clone(), "f.bin");
    reach(&mut done, size as u64 * 3 / 10, &mut task).await;
    let sessions = descendants(stack.sshd_pid().expect("sshd runs"));
    assert!(!sessions.is_empty(), "the gateway's SFTP session has its sshd processes");
    for &p in &sessions {
        signal(p, "STOP");
    }
    let stopped = Instant::now();
    gw.wait_for_log("write to the store failed").await;
    let detected = stopped.elapsed();
    for &p in &sessions {
        signal(p, "CONT");
    }
    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the upload resumes on a new SFTP session");
    let root = stack.device_root("hosshd");
    assert_eq!(sha256_file(&root.join("f.bin")), sha256(&data));
    assert_eq!(entries(&root), vec!["f.bin".to_string()], "one file, no temporary file");
    println!(
        "SFTP session silent (sshd session processes SIGSTOPped) during a {} MiB put, SSH keepalive {KEEPALIVE:?} \
         (1 may be missed): gateway detected it after {:.2} s ({:.2} x keepalive); resumed on a new session, {} \
         bytes sent again, byte-identical",
        size >> 20,
        detected.as_secs_f64(),
        detected.as_secs_f64() / KEEPALIVE.as_secs_f64(),
        outcome.resent_bytes
    );
    assert!(detected <= KEEPALIVE * 2 + Duration::from_millis(1500), "detected after {detected:?}");
    gw.kill().await;
}
