use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqsftp_proto::{Chunk, Request, Response, Topic};

use crate::common::*;
use crate::support::*;

/// The gateway's resident memory (VmRSS) and its peak (VmHWM), in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `count` devices each download `path` at once; returns the seconds until the last finished.
async fn many_gets(configs: &[mqsftp_device::DeviceConfig], count: usize, out: &std::path::Path, tag: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let cfg = configs[i % configs.len()].clone();
        let target = out.join(format!("{tag}{i}.bin"));
        tasks.push(tokio::spawn(async move {
            let mut c = mqsftp_device::Client::connect(&cfg).await.expect("connects");
            c.get("f.bin", &target, |_| {}).await.expect("download completes");
            std::fs::remove_file(&target).unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(long_limit(), t).await.expect("in time").expect("no panic");
    }
    started.elapsed().as_secs_f64()
}

/// Issue 7, scenario 6: one device reads at 100 KiB/s while many others download at once. The gateway (its own
/// process) holds at most a window of chunks per download however slow a reader is (the window is encoded once
/// and shared with the MQTT client's queue), and reads beyond the windows only within one gateway-wide budget
/// (`mqsftp_gateway::READ_AHEAD_BUDGET`). So its peak memory stays within `window × chunk × transfers + C`, and the
/// others finish as fast as without the slow one. C = the gateway's memory after a warm-up round, plus the
/// read-ahead budget, plus 16 MiB for the buffers that do not grow with the number of transfers (the MQTT client's
/// write buffer, TLS and SSH buffers, the allocator's free lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_reader_among_many() {
    const RATE: f64 = 100.0 * 1024.0;
    let others: usize = scaled(20, 100);
    let size: usize = 16 * MIB;
    const DEVICES: usize = 10;
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_transfer_option(&stack, "max_transfers_per_device", ((others / DEVICES) as i64 + 2).into());
    let gw = GatewayProcess::spawn(&stack).await;
    let pid = gw.pid();
    let data = content(size, 101);
    let configs: Vec<_> = (0..DEVICES)
        .map(|d| {
            let id = format!("busy{d}");
            put_on_store(&stack, &id, "f.bin", &data);
            mqsftp_device::DeviceConfig::load(&stack.device(&id).unwrap()).unwrap()
        })
        .collect();
    let out = tempfile::tempdir().unwrap();
    // Warm up (TLS, SFTP session, allocator) with one small round, then take the idle memory as the base.
    many_gets(&configs, 2, out.path(), "warm").await;
    let (idle_rss, _) = memory(pid);

    // Without the slow reader: the speed to match.
    let alone = many_gets(&configs, others, out.path(), "a").await;
    let (_, peak_alone) = memory(pid);

    // The slow reader: a device speaking the protocol that acknowledges at 100 KiB/s.
    put_on_store(&stack, "slow", "big.bin", &content(64 * MIB, 102));
    let slow_cfg = mqsftp_device::DeviceConfig::load(&stack.device("slow").unwrap()).unwrap();
    let session = mqsftp_proto::SessionId::new("slow1").unwrap();
    let mut raw = RawDevice::connect_with(&slow_cfg, "slow1", vec![Topic::down(&slow_cfg.device_id, &session)]).await;
    let (id, path, hash) = ("g".into(), "big.bin".into(), mqsftp_proto::HashAlg::Blake3);
    raw.send(&Request::Get { id, session: session.clone(), path, offset: 0, hash }).await;
    let (transfer, gateway) = raw
        .expect(|r| match r {
            Response::GetAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
            Response::Error { code, message, .. } => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let slow_done = Arc::new(AtomicU64::new(0));
    let slow = {
        let (stop, slow_done) = (stop.clone(), slow_done.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), raw.link.incoming.recv()).await
                else {
                    continue;
                };
                let Ok(chunk) = Chunk::decode(p.payload) else { continue };
                if chunk.offset == next {
                    next += chunk.data.len() as u64;
                }
                // Acknowledge no faster than RATE.
                let due = started + Duration::from_secs_f64(next as f64 / RATE);
                tokio::time::sleep_until(due.into()).await;
                raw.send_to(&gateway, &Request::Ack { transfer, next }).await;
                slow_done.store(next, Ordering::Relaxed);
            }
            (next, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // the slow transfer is under way
    let with_slow = many_gets(&configs, others, out.path(), "b").await;
    stop.store(true, Ordering::Relaxed);
    let (slow_bytes, slow_time) = tokio::time::timeout(LIMIT, slow).await.expect("in time").expect("no panic");
    // VmHWM: the peak over the gateway's whole life, so over both rounds (the second has the most transfers).
    let (_, peak) = memory(pid);

    let transfers = others as u64 + 1;
    // The gateway shares its windows: each transfer has at least MIN_WINDOW chunks, and those that started while
    // few ran (the slow one, alone at first, whose window drains at 100 KiB/s) more, from the shared window.
    use mqsftp_gateway::config::{MIN_WINDOW, SHARED_WINDOW};
    let chunk = u64::from(mqsftp_proto::StreamParams::DEFAULT.chunk_size);
    let windows = (u64::from(SHARED_WINDOW) + u64::from(MIN_WINDOW) * transfers) * chunk;
    const K: u64 = 1;
    const ALLOWANCE: u64 = mqsftp_gateway::READ_AHEAD_BUDGET as u64 + 16 * 1024 * 1024;
    let bound = K * windows + idle_rss + ALLOWANCE;
    let slow_rate = slow_bytes as f64 / slow_time.as_secs_f64();
    println!(
        "1 reader at 100 KiB/s (measured {:.0} KiB/s) + {others} downloads of {} MiB: others took {with_slow:.2} s \
         (alone {alone:.2} s, ratio {:.2}); gateway memory idle {} MiB, peak (VmHWM) {} MiB ({} MiB after the round without the slow reader), bound \
         {K} x ({SHARED_WINDOW} + {MIN_WINDOW} x {transfers}) chunks + idle + {} MiB = {} MiB; above idle: {:.2} x \
         those windows",
        slow_rate / 1024.0,
        size >> 20,
        with_slow / alone,
        idle_rss >> 20,
        peak >> 20,
        peak_alone >> 20,
        ALLOWANCE >> 20,
        bound >> 20,
        peak.saturating_sub(idle_rss) as f64 / windows as f64
    );
    assert!(slow_rate <= RATE * 1.1, "the slow reader read at {slow_rate} B/s");
    assert!(peak <= bound, "gateway peak RSS {peak} above the bound {bound}");
    assert!(with_slow <= alone * 1.5 + 1.0, "the others slowed down: {with_slow:.2} s vs {alone:.2} s alone");
    gw.kill().await;
}
