use std::sync::atomic::Ordering;

use crate::common::*;
use crate::support::*;

/// The broker is killed and restarted ten times during a download: the device reconnects and resumes from the
/// bytes it holds each time, the file is byte-identical, and the gateway sent at most two windows again per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_resumes_after_the_broker_is_killed() {
    let size: usize = scaled(160 * MIB, 1024 * MIB);
    const KILLS: u64 = 10;
    let (mut stack, gw, cfg) = setup("bkget").await;
    let data = content(size, 77);
    put_on_store(&stack, "bkget", "big.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("big.bin");
    let client = connect(&cfg).await;
    let (mut get, mut done) = spawn_get(client, "big.bin", target.clone());
    for k in 1..=KILLS {
        let threshold = size as u64 * k / (KILLS + 1);
        reach(&mut done, threshold, &mut get).await;
        stack.kill_broker().unwrap();
        stack.start_broker().unwrap();
    }
    let outcome =
        tokio::time::timeout(long_limit(), get).await.expect("in time").expect("no panic").expect("get succeeds");
    assert_eq!(sha256_file(&target), sha256(&data));
    let sent = gw.stats.sent_bytes.load(Ordering::Relaxed);
    let resent = sent.saturating_sub(size as u64);
    println!(
        "broker killed {KILLS}x during a {} MiB get: gateway re-sent {resent} bytes ({:.2} windows per kill), \
         device received {} bytes twice",
        size >> 20,
        resent as f64 / WINDOW_BYTES as f64 / KILLS as f64,
        outcome.resent_bytes
    );
    assert!(resent <= KILLS * 2 * WINDOW_BYTES, "re-sent {resent} bytes for {KILLS} kills");
    assert!(part_files(out.path()).is_empty());
    gw.stop().await;
}

/// A download interrupted for good (no gateway any more) keeps what it holds; the next `get` of the same target
/// continues from there. A part file that is not a prefix of the remote file is dropped and the download starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_get_continues_from_the_part_file() {
    let size: usize = 5 * 1024 * 1024 + 123;
    let (stack, gw, cfg) = setup("later").await;
    let data = content(size, 78);
    put_on_store(&stack, "later", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    // What an interrupted download leaves: the first 3,000,001 bytes in the part file.
    std::fs::write(out.path().join(".f.bin.mqsftp-part"), &data[..3_000_001]).unwrap();
    let mut client = connect(&cfg).await;
    let before = gw.stats.sent_bytes.load(Ordering::Relaxed);
    client.get("f.bin", &out.path().join("f.bin"), |_| {}).await.unwrap();
    let sent = gw.stats.sent_bytes.load(Ordering::Relaxed) - before;
    assert_eq!(sent, size as u64 - 3_000_001, "only the missing bytes were sent");
    assert_eq!(std::fs::read(out.path().join("f.bin")).unwrap(), data);
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()]);

    // A part file that is not a prefix of the remote file fails verification: it is dropped and the download
    // starts again from nothing (once), so the right file arrives and nothing else is left.
    std::fs::write(out.path().join(".g.bin.mqsftp-part"), b"garbage").unwrap();
    put_on_store(&stack, "later", "g.bin", &data[..1000]);
    let outcome = client.get("g.bin", &out.path().join("g.bin"), |_| {}).await.unwrap();
    assert_eq!(outcome.restarts, 1, "the bad part file failed verification once, then the download started over");
    assert_eq!(std::fs::read(out.path().join("g.bin")).unwrap(), &data[..1000]);
    assert_eq!(entries(out.path()), vec!["f.bin".to_string(), "g.bin".to_string()], "bad part file removed");
    gw.stop().await;
}

/// The broker is killed and restarted ten times during an upload: the device reconnects, asks to resume, and
/// continues from what the store holds; exactly one file is committed, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_resumes_after_the_broker_is_killed() {
    let size: usize = scaled(160 * MIB, 1024 * MIB);
    const KILLS: u64 = 10;
    let (mut stack, gw, cfg) = setup("bkput").await;
    let data = content(size, 79);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &data).unwrap();
    let client = connect(&cfg).await;
    let (mut put, mut done) = spawn_put(client, local.clone(), "up/big.bin");
    for k in 1..=KILLS {
        let threshold = size as u64 * k / (KILLS + 1);
        reach(&mut done, threshold, &mut put).await;
        stack.kill_broker().unwrap();
        stack.start_broker().unwrap();
    }
    let outcome =
        tokio::time::timeout(long_limit(), put).await.expect("in time").expect("no panic").expect("put succeeds");
    assert_eq!(outcome.digest, mqsftp_proto::HashAlg::Blake3.digest(&data));
    let root = stack.device_root("bkput");
    assert_eq!(sha256_file(&root.join("up/big.bin")), sha256(&data));
    assert_eq!(entries(&root.join("up")), vec!["big.bin".to_string()], "one file, no temporary file left");
    let received = gw.stats.received_bytes.load(Ordering::Relaxed);
    let resent = received.saturating_sub(size as u64);
    println!(
        "broker killed {KILLS}x during a {} MiB put: device sent {} bytes again ({:.2} windows per kill), \
         gateway received {resent} bytes twice",
        size >> 20,
        outcome.resent_bytes,
        outcome.resent_bytes as f64 / WINDOW_BYTES as f64 / KILLS as f64
    );
    assert!(
        outcome.resent_bytes <= KILLS * 2 * WINDOW_BYTES,
        "re-sent {} bytes for {KILLS} kills",
        outcome.resent_bytes
    );
    assert!(resent <= outcome.resent_bytes);
    gw.stop().await;
}

/// The MQTT link reports the broker's PUBACKs (`MqttLink::acks`, by which the gateway's outbox keeps its broker
/// window): one per QoS 1 publish, and a new connection number once the link is back after a broker restart, when
/// rumqttc resends what was unacknowledged and the outbox's count starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_reports_the_brokers_acknowledgements_across_a_restart() {
    let mut stack = mqsftp_testkit::Stack::start().unwrap();
    let cfg = mqsftp_gateway::GatewayConfig::load(stack.gateway_config()).expect("gateway config loads");
    let options = mqsftp_mqtt::LinkOptions {
        client_id: "test-acks".into(),
        subscriptions: Vec::new(),
        connect_timeout: LIMIT,
        reconnect: true,
        inflight: 8,
        queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
    };
    let link = mqsftp_mqtt::MqttLink::connect(&cfg.broker, options).await.expect("the gateway's identity connects");
    let device = mqsftp_proto::DeviceId::new("acks").unwrap();
    let topic = mqsftp_proto::Topic::down(&device, &mqsftp_proto::SessionId::new("s1").unwrap());
    for _ in 0..3 {
        publish(&link, topic.clone(), b"x".to_vec()).await;
    }
    wait_until(LIMIT, "three PUBACKs", || link.acks.borrow().acked == 3).await;
    assert_eq!(link.acks.borrow().connection, 1);
    stack.kill_broker().unwrap();
    stack.start_broker().unwrap();
    wait_until(LIMIT, "the link back on a new connection", || link.acks.borrow().connection == 2).await;
    publish(&link, topic, b"y".to_vec()).await;
    wait_until(LIMIT, "the fourth PUBACK", || link.acks.borrow().acked == 4).await;
    assert_eq!(*link.acks.borrow(), mqsftp_mqtt::PubAcks { connection: 2, acked: 4 });
}
