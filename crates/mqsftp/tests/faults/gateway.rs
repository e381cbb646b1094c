use tokio::sync::watch;

use crate::common::*;
use crate::support::*;

enum Second {
    /// Another gateway is already running when the first is killed.
    Running,
    /// The only gateway is killed and a new one started.
    Restarted,
}

/// The gateway serving a transfer is SIGKILLed at 40 %; the device notices the silence, finds a gateway (another
/// one, or the restarted one) and continues from what it (get) or the store (put) holds.
async fn transfer_survives_a_killed_gateway(upload: bool, second: Second) {
    let size: usize = scaled(64 * MIB, 512 * MIB);
    let stack = mqsftp_testkit::Stack::start().unwrap();
    let id = if upload { "gkput" } else { "gkget" };
    let cfg = device_with_timeout(&stack, id, "3s");
    let data = content(size, 80);
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
    reach(&mut done, size as u64 * 2 / 5, &mut task).await;
    let second_kind = match second {
        Second::Running => "running",
        Second::Restarted => "restarted",
    };
    let other = match second {
        Second::Running => Some(GatewayProcess::spawn(&stack).await),
        Second::Restarted => None,
    };
    first.kill().await;
    let other = match other {
        Some(g) => g,
        None => GatewayProcess::spawn(&stack).await,
    };
    let resent = match tokio::time::timeout(long_limit(), task).await {
        Ok(r) => r.expect("no panic").expect("succeeds"),
        Err(_) => panic!("the transfer did not finish; broker log:\n{}", stack.broker_log()),
    };
    let result = if upload { stack.device_root(id).join("f.bin") } else { local.clone() };
    assert_eq!(sha256_file(&result), sha256(&data));
    if upload {
        assert_eq!(entries(&stack.device_root(id)), vec!["f.bin".to_string()], "one file, no temporary file");
    }
    println!(
        "gateway killed at 40 % of a {} MiB {} ({}): {} bytes sent again, {:.2} windows",
        size >> 20,
        if upload { "put" } else { "get" },
        match second_kind {
            "running" => "second gateway running",
            _ => "gateway restarted",
        },
        resent,
        resent as f64 / WINDOW_BYTES as f64
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
