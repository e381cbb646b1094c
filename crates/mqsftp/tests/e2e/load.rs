//! Many transfers at once on one gateway (run against both pairs: this test found a stall in the embedded SFTP
//! server, fixed in `mqsftp-sftpd`'s `sftp.rs`).

use crate::support::*;

/// More downloads open at once than an SFTP session has safe handle numbers (russh-sftp mangles handles from 128
/// on): the gateway queues them within its handle limit, and every one completes with the right content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_gets_than_safe_sftp_handles_all_complete() {
    use mqsftp_proto::{Chunk, Request, Response};
    use std::collections::HashMap;
    const N: usize = 200;
    let stack = start_stack();
    set_transfer_option(&stack, "max_transfers_per_device", (N as i64).into());
    set_transfer_option(&stack, "max_transfers", (N as i64).into());
    let gw = GatewayProcess::spawn(&stack).await;
    let mut gateway = None;
    let (want, down, mut raw) = start_gets(&stack, "many", N, |i| content(3000 + i, i as u64)).await;
    let (mut ids, mut done) = (HashMap::new(), 0);
    while done < N {
        let p = tokio::time::timeout(LIMIT, raw.link.incoming.recv()).await.expect("progress in time").unwrap();
        if p.topic == down {
            let c = Chunk::decode(p.payload).unwrap();
            let next = c.offset + c.data.len() as u64;
            raw.send_to(gateway.as_ref().unwrap(), &Request::Ack { transfer: c.transfer, next }).await;
            continue;
        }
        match Response::decode(&p.payload).unwrap() {
            Response::GetAccepted { id, transfer, gateway: g, .. } => {
                gateway = Some(g);
                ids.insert(transfer, id);
            }
            Response::GetDone { transfer, digest, .. } => {
                assert_eq!(Some(&digest), want.get(&ids[&transfer]), "content of {}", ids[&transfer]);
                done += 1;
            }
            other => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                panic!("after {done} of {N} downloads: {other:?}")
            }
        }
    }
    gw.kill().await;
}

/// The gateway shares its windows among the downloads running (`[transfer] shared_window` 32, `window` 8, at least 2
/// each): a device that acknowledges nothing gets at most a share per download, far less than 8 each when 16 run;
/// once it acknowledges, every download completes with the right content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_share_the_gateways_windows() {
    use mqsftp_gateway::config::{MIN_WINDOW, SHARED_WINDOW, WINDOW};
    use mqsftp_proto::{Chunk, Request, Response};
    use std::collections::HashMap;
    const N: usize = 16;
    let chunk = mqsftp_proto::StreamParams::DEFAULT.chunk_size as usize;
    let stack = start_stack();
    set_transfer_option(&stack, "max_transfers_per_device", (N as i64).into());
    let gw = GatewayProcess::spawn(&stack).await;
    // More chunks than the largest window, so that each download stops at its window.
    let (want, down, mut raw) = start_gets(&stack, "sharer", N, |i| content(12 * chunk + i, i as u64 + 7)).await;
    // Nothing acknowledged: take what comes until the gateway has sent every window and stopped.
    let (mut ids, mut sent, mut held, mut gateway) = (HashMap::new(), HashMap::<u64, usize>::new(), Vec::new(), None);
    while let Ok(p) = tokio::time::timeout(std::time::Duration::from_millis(1500), raw.link.incoming.recv()).await {
        let p = p.unwrap();
        if p.topic == down {
            let c = Chunk::decode(p.payload).unwrap();
            *sent.entry(c.transfer).or_default() += 1;
            held.push(c);
        } else if let Response::GetAccepted { id, transfer, gateway: g, .. } = Response::decode(&p.payload).unwrap() {
            ids.insert(transfer, id);
            gateway = Some(g);
        }
    }
    let counts: Vec<usize> = ids.keys().map(|t| sent.get(t).copied().unwrap_or(0)).collect();
    let total: usize = counts.iter().sum();
    println!("{N} downloads, nothing acknowledged: chunks in flight per download {counts:?}, {total} in all");
    assert_eq!(ids.len(), N, "every download accepted");
    assert!(counts.iter().all(|&c| c <= WINDOW as usize), "none above the window: {counts:?}");
    let bound = (SHARED_WINDOW + MIN_WINDOW * N as u32) as usize;
    assert!(total <= bound, "{total} chunks in flight, above the shared bound {bound}: {counts:?}");
    assert_eq!(counts.iter().min(), Some(&(MIN_WINDOW as usize)), "the last to start got the least share: {counts:?}");
    // Now acknowledge as chunks arrive (those held first): every download completes, verified.
    let gateway = gateway.unwrap();
    for c in held {
        raw.send_to(&gateway, &Request::Ack { transfer: c.transfer, next: c.offset + c.data.len() as u64 }).await;
    }
    let mut done = 0;
    while done < N {
        let p = tokio::time::timeout(LIMIT, raw.link.incoming.recv()).await.expect("progress in time").unwrap();
        if p.topic == down {
            let c = Chunk::decode(p.payload).unwrap();
            raw.send_to(&gateway, &Request::Ack { transfer: c.transfer, next: c.offset + c.data.len() as u64 }).await;
        } else if let Response::GetDone { transfer, digest, .. } = Response::decode(&p.payload).unwrap() {
            assert_eq!(Some(&digest), want.get(&ids[&transfer]), "content of {}", ids[&transfer]);
            done += 1;
        }
    }
    gw.kill().await;
}

/// Puts `n` files `f{i}` with `data(i)` on the store for `device`, connects a raw device subscribed to its chunks
/// (session = the device id) and asks for all of them at once (request ids `g{i}`), half with BLAKE3 and half with
/// SHA-256. Returns each request's expected hash, the chunk topic and the device.
async fn start_gets(
    stack: &mqsftp_testkit::Stack,
    device: &str,
    n: usize,
    data: impl Fn(usize) -> Vec<u8>,
) -> (std::collections::HashMap<String, mqsftp_proto::HexDigest>, String, RawDevice) {
    use mqsftp_proto::{HashAlg, Request, Topic};
    let alg = |i: usize| HashAlg::ALL[i % 2];
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device(device).unwrap()).unwrap();
    let mut want = std::collections::HashMap::new();
    for i in 0..n {
        let data = data(i);
        put_on_store(stack, device, &format!("f{i}"), &data);
        want.insert(format!("g{i}"), alg(i).digest(&data).into());
    }
    let down = Topic::down(&cfg.device_id, &mqsftp_proto::SessionId::new(device).unwrap());
    let raw = RawDevice::connect_with(&cfg, device, vec![down.clone()]).await;
    for i in 0..n {
        let (id, path, session) = (format!("g{i}"), format!("f{i}"), raw.session.clone());
        raw.send(&Request::Get { id, session, path, offset: 0, hash: alg(i) }).await;
    }
    (want, down, raw)
}
