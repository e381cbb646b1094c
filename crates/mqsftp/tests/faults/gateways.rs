use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mqsftp_device::{DeviceError, ErrorCode};

use crate::common::*;
use crate::support::*;

/// Issue 7, scenario 8: three gateways share one broker; one is SIGKILLed while many transfers (half gets, half
/// puts, from several devices) run. Every transfer ends with a result (none hangs, none is lost), each success is
/// byte-identical, and no upload is committed twice (no `exists` for its own file, one file per upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_gateways_killed_under_load() {
    let transfers: usize = 200;
    let size: usize = scaled(MIB, 4 * MIB);
    const DEVICES: usize = 8;
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_transfer_option(&stack, "max_transfers_per_device", (transfers as i64).into());
    // Short, so that the sweep of orphaned temporary files is seen within the test (see the end).
    set_transfer_option(&stack, "upload_expiry", "10s".into());
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(GatewayProcess::spawn(&stack).await);
    }
    let configs: Vec<_> =
        (0..DEVICES).map(|d| device_with_timeout(&stack, &format!("three{d}"), "3s")).collect::<Vec<_>>();
    let dir = tempfile::tempdir().unwrap();
    let data: Arc<Vec<u8>> = Arc::new(content(size, 100));
    let local = dir.path().join("src.bin");
    std::fs::write(&local, &*data).unwrap();
    for d in 0..DEVICES {
        put_on_store(&stack, &format!("three{d}"), "src.bin", &data);
    }
    let progress = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..transfers {
        let cfg = configs[i % DEVICES].clone();
        let (progress, local, out) = (progress.clone(), local.clone(), dir.path().join(format!("get{i}.bin")));
        tasks.push(tokio::spawn(async move {
            let mut client = mqsftp_device::Client::connect(&cfg).await?;
            let mut last = 0u64;
            let report = |p: mqsftp_device::Progress| {
                progress.fetch_add(p.done.saturating_sub(last), Ordering::Relaxed);
                last = last.max(p.done);
            };
            if i % 2 == 0 {
                client.get("src.bin", &out, report).await.map(|_| ())
            } else {
                client.put(&local, &format!("up/{i}.bin"), false, report).await.map(|_| ())
            }
        }));
    }
    let total = (transfers * size) as u64;
    wait_until(LIMIT, "30 % of all bytes moved", || progress.load(Ordering::Relaxed) >= total * 3 / 10).await;
    let killed_at = progress.load(Ordering::Relaxed);
    gateways.remove(0).kill().await;
    let started = std::time::Instant::now();
    let mut ok = 0;
    let mut errors: Vec<String> = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = tokio::time::timeout(long_limit(), t).await.unwrap_or_else(|_| panic!("transfer {i} never ended"));
        match r.expect("no panic") {
            Ok(()) => ok += 1,
            Err(e) => {
                if let DeviceError::Remote { code: ErrorCode::Exists, .. } = &e {
                    panic!("upload {i} found its own file: committed twice? {e}");
                }
                errors.push(format!("{i}: {e}"));
            }
        }
    }
    let drained = started.elapsed();
    // Every success is right; every upload left at most its one file and no temporary file.
    let want = sha256(&data);
    for i in 0..transfers {
        let device = format!("three{}", i % DEVICES);
        if i % 2 == 0 {
            let p = dir.path().join(format!("get{i}.bin"));
            if p.exists() {
                assert_eq!(sha256_file(&p), want, "get {i}");
            }
        } else {
            let p = stack.device_root(&device).join(format!("up/{i}.bin"));
            if p.exists() {
                assert_eq!(sha256_file(&p), want, "put {i}");
            }
        }
    }
    // An upload whose `put_accepted` never reached its device (the gateway died between creating the temporary
    // file and answering) is started again under a new transfer id; the orphaned temporary file is removed by the
    // surviving gateways' sweep once it is older than `upload_expiry`.
    let parts = part_files(stack.store_dir());
    let swept = wait_until(std::time::Duration::from_secs(40), "orphaned temporary files swept", || {
        part_files(stack.store_dir()).is_empty()
    })
    .await;
    println!(
        "3 gateways, one SIGKILLed after {} of {} MiB moved by {transfers} transfers of {} MiB: {ok} completed, {} \
         definite errors {:?}, none lost, none committed twice; all ended {:.1} s after the kill; {} orphaned \
         temporary files, swept {:.1} s later (upload_expiry 10 s)",
        killed_at >> 20,
        total >> 20,
        size >> 20,
        errors.len(),
        errors,
        drained.as_secs_f64(),
        parts.len(),
        swept.as_secs_f64()
    );
    for g in gateways {
        g.kill().await;
    }
}
