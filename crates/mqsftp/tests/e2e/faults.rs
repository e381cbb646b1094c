use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::support::*;

/// Waits until the transfer has done `at` bytes; if it ended first, fails with its result.
async fn reach<T: std::fmt::Debug>(done: &mut watch::Receiver<u64>, at: u64, task: &mut tokio::task::JoinHandle<T>) {
    // A bool, not the borrow: holding the watch borrow would block the sender (the transfer).
    let reached = tokio::time::timeout(LIMIT, done.wait_for(|d| *d >= at)).await.expect("progress").is_ok();
    if !reached {
        let ended = task.await.expect("no panic");
        panic!("the transfer ended before {at} bytes: {ended:?}");
    }
}

/// Window × chunk size of the default gateway config: the most a sender has in flight.
const WINDOW_BYTES: u64 = 8 * 64 * 1024;

/// The broker is killed and restarted three times during a download: the device reconnects and resumes from the
/// bytes it holds each time, the file is byte-identical, and the gateway sent at most two windows again per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_resumes_after_the_broker_is_killed() {
    const SIZE: usize = 200 * 1024 * 1024;
    const KILLS: u64 = 3;
    let (mut stack, gw, cfg) = setup("bkget").await;
    let data = content(SIZE, 77);
    put_on_store(&stack, "bkget", "big.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("big.bin");
    let mut client = connect(&cfg).await;
    let (tx, mut done) = watch::channel(0u64);
    let t = target.clone();
    let mut get = tokio::spawn(async move {
        client
            .get("big.bin", &t, |p| {
                tx.send_replace(p.done);
            })
            .await
    });
    for k in 1..=KILLS {
        let threshold = SIZE as u64 * k / (KILLS + 1);
        reach(&mut done, threshold, &mut get).await;
        stack.kill_broker().unwrap();
        stack.start_broker().unwrap();
    }
    let outcome = tokio::time::timeout(LIMIT, get).await.expect("in time").expect("no panic").expect("get succeeds");
    assert_eq!(sha256_file(&target), sha256(&data));
    let sent = gw.stats.sent_bytes.load(Ordering::Relaxed);
    let resent = sent.saturating_sub(SIZE as u64);
    println!(
        "broker killed {KILLS}x during a {} MiB get: gateway re-sent {resent} bytes ({:.2} windows per kill), \
         device received {} bytes twice",
        SIZE >> 20,
        resent as f64 / WINDOW_BYTES as f64 / KILLS as f64,
        outcome.resent_bytes
    );
    assert!(resent <= KILLS * 2 * WINDOW_BYTES, "re-sent {resent} bytes for {KILLS} kills");
    assert!(part_files(out.path()).is_empty());
    gw.stop().await;
}

/// A download interrupted for good (no gateway any more) keeps what it holds; the next `get` of the same target
/// continues from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_get_continues_from_the_part_file() {
    const SIZE: usize = 5 * 1024 * 1024 + 123;
    let (stack, gw, cfg) = setup("later").await;
    let data = content(SIZE, 78);
    put_on_store(&stack, "later", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    // What an interrupted download leaves: the first 3,000,001 bytes in the part file.
    std::fs::write(out.path().join(".f.bin.mqsftp-part"), &data[..3_000_001]).unwrap();
    let mut client = connect(&cfg).await;
    let before = gw.stats.sent_bytes.load(Ordering::Relaxed);
    client.get("f.bin", &out.path().join("f.bin"), |_| {}).await.unwrap();
    let sent = gw.stats.sent_bytes.load(Ordering::Relaxed) - before;
    assert_eq!(sent, SIZE as u64 - 3_000_001, "only the missing bytes were sent");
    assert_eq!(std::fs::read(out.path().join("f.bin")).unwrap(), data);
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()]);

    // A part file that is not a prefix of the remote file fails verification and is dropped, not kept.
    std::fs::write(out.path().join(".g.bin.mqsftp-part"), b"garbage").unwrap();
    put_on_store(&stack, "later", "g.bin", &data[..1000]);
    let err = client.get("g.bin", &out.path().join("g.bin"), |_| {}).await.unwrap_err();
    assert!(matches!(err, mqsftp_device::DeviceError::Integrity(_)), "{err}");
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()], "bad part file removed, nothing at g.bin");
    client.get("g.bin", &out.path().join("g.bin"), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("g.bin")).unwrap(), &data[..1000]);
    gw.stop().await;
}

/// The broker is killed and restarted three times during an upload: the device reconnects, asks to resume, and
/// continues from what the store holds; exactly one file is committed, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_resumes_after_the_broker_is_killed() {
    const SIZE: usize = 200 * 1024 * 1024;
    const KILLS: u64 = 3;
    let (mut stack, gw, cfg) = setup("bkput").await;
    let data = content(SIZE, 79);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &data).unwrap();
    let mut client = connect(&cfg).await;
    let (tx, mut done) = watch::channel(0u64);
    let l = local.clone();
    let mut put = tokio::spawn(async move {
        client
            .put(&l, "up/big.bin", false, |p| {
                tx.send_replace(p.done);
            })
            .await
    });
    for k in 1..=KILLS {
        let threshold = SIZE as u64 * k / (KILLS + 1);
        reach(&mut done, threshold, &mut put).await;
        stack.kill_broker().unwrap();
        stack.start_broker().unwrap();
    }
    let outcome = tokio::time::timeout(LIMIT, put).await.expect("in time").expect("no panic").expect("put succeeds");
    assert_eq!(outcome.sha256, sha256(&data));
    let root = stack.device_root("bkput");
    assert_eq!(sha256_file(&root.join("up/big.bin")), sha256(&data));
    assert_eq!(entries(&root.join("up")), vec!["big.bin".to_string()], "one file, no temporary file left");
    let received = gw.stats.received_bytes.load(Ordering::Relaxed);
    let resent = received.saturating_sub(SIZE as u64);
    println!(
        "broker killed {KILLS}x during a {} MiB put: device sent {} bytes again ({:.2} windows per kill), \
         gateway received {resent} bytes twice",
        SIZE >> 20,
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

enum Second {
    /// Another gateway is already running when the first is killed.
    Running,
    /// The only gateway is killed and a new one started.
    Restarted,
}

/// The gateway serving a transfer is SIGKILLed at 40 %; the device notices the silence, finds a gateway (another
/// one, or the restarted one) and continues from what it (get) or the store (put) holds.
async fn transfer_survives_a_killed_gateway(upload: bool, second: Second) {
    const SIZE: usize = 120 * 1024 * 1024;
    let stack = mqsftp_testkit::Stack::start().unwrap();
    let id = if upload { "gkput" } else { "gkget" };
    let cfg = device_with_timeout(&stack, id, "3s");
    let data = content(SIZE, 80);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    if upload {
        std::fs::write(&local, &data).unwrap();
    } else {
        put_on_store(&stack, id, "f.bin", &data);
    }
    let first = GatewayProcess::spawn(&stack).await;
    let mut client = connect(&cfg).await;
    let (tx, mut done) = watch::channel(0u64);
    let l = local.clone();
    let mut task = tokio::spawn(async move {
        let report = |p: mqsftp_device::Progress| {
            tx.send_replace(p.done);
        };
        if upload {
            client.put(&l, "f.bin", false, report).await.map(|o| o.resent_bytes)
        } else {
            client.get("f.bin", &l, report).await.map(|o| o.resent_bytes)
        }
    });
    reach(&mut done, SIZE as u64 * 2 / 5, &mut task).await;
    let other = match second {
        Second::Running => Some(GatewayProcess::spawn(&stack).await),
        Second::Restarted => None,
    };
    first.kill().await;
    let other = match other {
        Some(g) => g,
        None => GatewayProcess::spawn(&stack).await,
    };
    let resent = match tokio::time::timeout(LIMIT, task).await {
        Ok(r) => r.expect("no panic").expect("succeeds"),
        Err(_) => panic!("the transfer did not finish; broker log:\n{}", stack.broker_log()),
    };
    let result = if upload { stack.device_root(id).join("f.bin") } else { local.clone() };
    assert_eq!(sha256_file(&result), sha256(&data));
    if upload {
        assert_eq!(entries(&stack.device_root(id)), vec!["f.bin".to_string()], "one file, no temporary file");
    }
    println!(
        "gateway killed at 40 % of a {} MiB {}: {} bytes sent again",
        SIZE >> 20,
        if upload { "put" } else { "get" },
        resent
    );
    other.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_continues_through_a_second_gateway() {
    transfer_survives_a_killed_gateway(false, Second::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_continues_through_a_second_gateway() {
    transfer_survives_a_killed_gateway(true, Second::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_continues_through_a_restarted_gateway() {
    transfer_survives_a_killed_gateway(false, Second::Restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_continues_through_a_restarted_gateway() {
    transfer_survives_a_killed_gateway(true, Second::Restarted).await;
}

/// A gateway starting after a crash removes the temporary files that nobody will finish (older than
/// `upload_expiry`), and leaves fresh ones (an upload another gateway may still be running) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_swept() {
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_transfer_option(&stack, "upload_expiry", "3s".into());
    let dir = stack.device_root("crashed").join("sub");
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join(".a.bin.1f.mqsftp-part");
    let fresh = dir.join(".b.bin.2f.mqsftp-part");
    let kept = dir.join("c.bin");
    for p in [&old, &fresh, &kept] {
        std::fs::write(p, b"partial").unwrap();
    }
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(an_hour_ago).unwrap();
    std::fs::File::options().write(true).open(&kept).unwrap().set_modified(an_hour_ago).unwrap();
    let gw = RunningGateway::start(&stack).await;
    let swept = async {
        while old.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), swept).await.expect("old temporary file swept");
    assert!(fresh.exists(), "a recently written temporary file is left alone");
    assert!(kept.exists(), "ordinary files are never touched");
    gw.stop().await;
}
