use std::collections::HashSet;
use std::time::{Duration, Instant};

use mqsftp_device::{DeviceError, ErrorCode};
use mqsftp_proto::{Chunk, ReceiveError, Request, Response, SessionId, Topic, TransferId};

use crate::common::{device_requests, gateway_identity, publish};
use crate::support::*;

/// Issue 7, scenario 5 (uploads): a chunk with a bad CRC is dropped and, sent again intact, written; duplicate
/// chunks are idempotent; a chunk overlapping what is held with other content writes nothing; the file committed
/// is exactly what was declared. A wrong whole-file hash fails the upload and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_duplicate_and_overlapping_chunks() {
    const C: usize = 64 * 1024;
    let (stack, gw, cfg) = setup("integ").await;
    let root = stack.device_root("integ");
    let mut raw = RawDevice::connect(&cfg, "integ1").await;
    let session = raw.session.clone();
    let data = content(5 * C + 333, 97);
    let size = data.len() as u64;
    raw.send(&Request::Put {
        id: "p".into(),
        session: session.clone(),
        path: "i.bin".into(),
        size,
        hash: mqsftp_proto::HashAlg::Sha256,
        digest: Some(mqsftp_proto::HexDigest::Sha256(sha256(&data))),
        overwrite: false,
        resume: None,
    })
    .await;
    let (transfer, gw_id) = raw
        .expect(|r| match r {
            Response::PutAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
            _ => None,
        })
        .await;
    let up = mqsftp_proto::Topic::up(&cfg.device_id, &gw_id);
    let frame = |offset: usize, bytes: &[u8]| {
        mqsftp_proto::Chunk { transfer, offset: offset as u64, data: bytes::Bytes::copy_from_slice(bytes) }
            .encode()
            .to_vec()
    };
    let mut acks = Vec::new();
    // 1. Chunk 0 with one data byte flipped: its CRC no longer matches; the gateway drops it.
    let mut bad = frame(0, &data[..C]);
    bad[24 + 1000] ^= 0x40;
    raw.publish(up.clone(), bad).await;
    // 2. Chunk 1 intact: out of order after the dropped one, so nothing is written and 0 is acknowledged.
    raw.publish(up.clone(), frame(C, &data[C..2 * C])).await;
    acks.push(
        raw.expect(|r| match r {
            Response::PutAck { next, .. } => Some(next),
            _ => None,
        })
        .await,
    );
    assert_eq!(acks[0], 0, "a corrupt chunk is not written");
    // 3. Chunk 0 sent again, intact: written.
    raw.publish(up.clone(), frame(0, &data[..C])).await;
    acks.push(
        raw.expect(|r| match r {
            Response::PutAck { next, .. } => Some(next),
            _ => None,
        })
        .await,
    );
    assert_eq!(acks[1], C as u64);
    // 4. The same chunk again (a duplicate, as after a lost ack): acknowledged, written once.
    raw.publish(up.clone(), frame(0, &data[..C])).await;
    acks.push(
        raw.expect(|r| match r {
            Response::PutAck { next, .. } => Some(next),
            _ => None,
        })
        .await,
    );
    assert_eq!(acks[2], C as u64, "a duplicate changes nothing");
    raw.publish(up.clone(), frame(C, &data[C..2 * C])).await;
    raw.publish(up.clone(), frame(C, &data[C..2 * C])).await;
    raw.expect(|r| matches!(r, Response::PutAck { next, .. } if next == 2 * C as u64).then_some(())).await;
    // 5. A chunk overlapping the held bytes with other content: nothing of it is written.
    let other = content(C, 98);
    raw.publish(up.clone(), frame(2 * C - 1000, &other)).await;
    let after_overlap = raw
        .expect(|r| match r {
            Response::PutAck { next, .. } => Some(next),
            _ => None,
        })
        .await;
    assert_eq!(after_overlap, 2 * C as u64, "an overlapping chunk is not written");
    // The rest, then the commit: exactly the declared bytes.
    for (k, piece) in data[2 * C..].chunks(C).enumerate() {
        raw.publish(up.clone(), frame(2 * C + k * C, piece)).await;
    }
    raw.expect(|r| matches!(r, Response::PutAck { next, .. } if next == size).then_some(())).await;
    raw.send_to(&gw_id, &Request::Commit { id: "c".into(), session: session.clone(), transfer, digest: None }).await;
    raw.expect(|r| match r {
        Response::Committed { id, .. } if id == "c" => Some(()),
        Response::Error { code, message, .. } => panic!("{code}: {message}"),
        _ => None,
    })
    .await;
    assert_eq!(std::fs::read(root.join("i.bin")).unwrap(), data, "byte-identical despite the bad chunks");
    let received = gw.stats.received_bytes.load(std::sync::atomic::Ordering::Relaxed);

    // A wrong whole-file hash: every chunk is fine, the upload is not.
    let wrong = content(3 * C, 99);
    raw.send(&Request::Put {
        id: "w".into(),
        session: session.clone(),
        path: "w.bin".into(),
        size: wrong.len() as u64,
        hash: mqsftp_proto::HashAlg::Sha256,
        digest: Some(mqsftp_proto::HexDigest::Sha256(sha256(&data))),
        overwrite: false,
        resume: None,
    })
    .await;
    let (wt, wgw) = raw
        .expect(|r| match r {
            Response::PutAccepted { id, transfer, gateway, .. } if id == "w" => Some((transfer, gateway)),
            _ => None,
        })
        .await;
    for (k, piece) in wrong.chunks(C).enumerate() {
        raw.send_chunk(&wgw, wt, (k * C) as u64, piece).await;
    }
    let code = raw
        .expect(|r| match r {
            Response::Error { transfer: Some(t), code, .. } if t == wt => Some(code),
            Response::Committed { .. } => panic!("a wrong hash was committed"),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::ChecksumMismatch);
    raw.send_to(&wgw, &Request::Commit { id: "wc".into(), session: session.clone(), transfer: wt, digest: None }).await;
    let code = raw
        .expect(|r| match r {
            Response::Error { id: Some(id), code, .. } if id == "wc" => Some(code),
            Response::Committed { .. } => panic!("a wrong hash was committed"),
            _ => None,
        })
        .await;
    assert_ne!(code, ErrorCode::Internal, "the failed upload's commit gets a definite answer");
    assert_eq!(entries(&root), vec!["i.bin".to_string()], "nothing at w.bin, no temporary file");
    println!(
        "integrity: corrupt chunk dropped (ack stayed at 0) and accepted when sent again; 3 duplicates idempotent; \
         overlapping chunk with other content not written; {received} bytes received for a {size}-byte file, \
         committed byte-identical; wrong whole-file hash: `checksum_mismatch`, then `{code}` for its commit, \
         nothing left"
    );
    gw.stop().await;
}

/// Issue 7, scenario 5 (commits): three commits of one upload sent at once: three identical answers, exactly one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_commits_give_one_file() {
    let (stack, gw, cfg) = setup("tri").await;
    let mut raw = RawDevice::connect(&cfg, "tri1").await;
    let session = raw.session.clone();
    let data = content(300_000, 12);
    raw.send(&Request::Put {
        id: "p".into(),
        session: session.clone(),
        path: "tri.bin".into(),
        size: data.len() as u64,
        hash: mqsftp_proto::HashAlg::Sha256,
        digest: Some(mqsftp_proto::HexDigest::Sha256(sha256(&data))),
        overwrite: false,
        resume: None,
    })
    .await;
    let (transfer, gw_id) = raw
        .expect(|r| match r {
            Response::PutAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
            _ => None,
        })
        .await;
    for (i, piece) in data.chunks(64 * 1024).enumerate() {
        raw.send_chunk(&gw_id, transfer, (i * 64 * 1024) as u64, piece).await;
    }
    let size = data.len() as u64;
    raw.expect(|r| matches!(r, Response::PutAck { next, .. } if next == size).then_some(())).await;
    for id in ["c1", "c2", "c3"] {
        raw.send_to(&gw_id, &Request::Commit { id: id.into(), session: session.clone(), transfer, digest: None }).await;
    }
    let mut answered = Vec::new();
    while answered.len() < 3 {
        let (id, sha) = raw
            .expect(|r| match r {
                Response::Committed { id, digest, .. } => Some((id, digest)),
                Response::Error { id, code, message, .. } => panic!("{id:?}: {code}: {message}"),
                _ => None,
            })
            .await;
        assert_eq!(sha, mqsftp_proto::HexDigest::Sha256(sha256(&data)));
        answered.push(id);
    }
    answered.sort();
    assert_eq!(answered, ["c1", "c2", "c3"]);
    assert_eq!(entries(&stack.device_root("tri")), vec!["tri.bin".to_string()]);
    assert_eq!(std::fs::read(stack.device_root("tri").join("tri.bin")).unwrap(), data);
    println!("three concurrent commits of one upload: {answered:?} all `committed` with the same SHA-256; one file");
    gw.stop().await;
}

/// What the forger of the download tests publishes at the offset the device expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgery {
    /// Other content under the CRC32C of the frame as it was encoded, with one data byte flipped afterwards: the
    /// frame fails its CRC check.
    BadCrc,
    /// Other content with its own, valid CRC32C: only the whole-file SHA-256 can tell.
    WrongContent,
}

/// A man in the middle with the gateway's credentials (scenario 5, downloads). It follows the device's requests
/// (`get` gives the session, acknowledgements give the transfer and the offset the device expects next) and, for
/// the first `corrupt` transfers it sees, publishes a forged chunk on the device's `down` topic at that offset,
/// as long as the real chunk there. The real gateway is rate-limited by the policy, so a forged frame published
/// when an acknowledgement is seen reaches the device before the real chunk for that offset.
struct Forger {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u64, Vec<TransferId>)>,
}

impl Forger {
    async fn start(stack: &mqsftp_testkit::Stack, device: &str, size: u64, kind: Forgery, corrupt: usize) -> Forger {
        const CHUNK: u64 = PACED_CHUNK as u64;
        let mut link = gateway_identity(stack, &format!("forger-{device}"), vec![device_requests(device)]).await;
        let device = mqsftp_proto::DeviceId::new(device).unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut session, mut transfers, mut forged) = (None::<SessionId>, Vec::new(), HashSet::new());
            loop {
                let msg = tokio::select! {
                    _ = &mut stopped => return (forged.len() as u64, transfers),
                    m = link.incoming.recv() => m.expect("forger's link up"),
                };
                let (transfer, next) = match Request::decode(&msg.payload) {
                    Ok(Request::Get { session: s, .. }) => {
                        session = Some(s);
                        continue;
                    }
                    Ok(Request::Ack { transfer, next }) => (transfer, next),
                    _ => continue,
                };
                if !transfers.contains(&transfer) {
                    transfers.push(transfer);
                }
                let index = transfers.iter().position(|t| *t == transfer).unwrap_or(usize::MAX);
                // Content is forged only from the acknowledgement of the first paced chunk on (chunk 2, after the
                // burst of two): a frame altered in transit, not one injected at the start. A forged frame may
                // still land ahead of what the paced gateway has sent; the device then acknowledges bytes the
                // gateway never sent, which counts only up to what it sent (`Sender::handle_ack`), and the
                // download fails its whole-file check all the same.
                let first = if kind == Forgery::WrongContent { 3 * CHUNK } else { 0 };
                let Some(session) = &session else { continue };
                if index >= corrupt || next >= size || next < first || !forged.insert((transfer, next)) {
                    continue;
                }
                let len = CHUNK.min(size - next) as usize;
                let other = bytes::Bytes::from(content(len, 0xbad ^ next));
                let mut frame = Chunk { transfer, offset: next, data: other }.encode().to_vec();
                if kind == Forgery::BadCrc {
                    frame[mqsftp_proto::chunk::HEADER_LEN] ^= 0x01;
                }
                publish(&link, Topic::down(&device, session), frame).await;
            }
        });
        Forger { stop, task }
    }

    /// Stops forging: the frames forged and the transfers seen, in order.
    async fn finish(self) -> (u64, Vec<TransferId>) {
        let _ = self.stop.send(());
        tokio::time::timeout(LIMIT, self.task).await.expect("forger stops").expect("no panic")
    }
}

/// Chunk size and window of the paced gateway: small chunks, so that the pacing leaves gaps between them.
const PACED_CHUNK: usize = 64 * 1024;
const PACED_WINDOW: i64 = 8;

/// A stack whose gateway sends device `id` at most 128 KiB/s (two 64 KiB chunks a second after a burst of two):
/// the gaps in which a forged frame reaches the device first.
async fn paced_setup(id: &str) -> (mqsftp_testkit::Stack, RunningGateway, mqsftp_device::DeviceConfig) {
    let stack = start_stack();
    set_policy(&stack, &format!("[[device]]\nmatch = \"{id}\"\nrate = \"128 KiB\"\n"));
    set_transfer_option(&stack, "chunk_size", (PACED_CHUNK as i64).into());
    set_transfer_option(&stack, "window", PACED_WINDOW.into());
    let gw = RunningGateway::start(&stack).await;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device(id).unwrap()).unwrap();
    (stack, gw, cfg)
}

/// Five 64 KiB chunks: two at once, then one every 0.5 s at the paced rate, so that every forged frame reaches the
/// device well before the download ends (a short last chunk would follow the one before it at once).
const FORGED_FILE: usize = 5 * PACED_CHUNK;

/// Issue 7, scenario 5 (downloads), a: frames whose CRC32C does not match their data, forged at the offset the
/// device expects next during a real `get`. The device drops every one (they never reach the file or the hash);
/// the download completes byte-identical, nothing received twice, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_drops_chunks_that_fail_their_crc() {
    let (stack, gw, cfg) = paced_setup("fcrc").await;
    let data = content(FORGED_FILE, 201);
    put_on_store(&stack, "fcrc", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let forger = Forger::start(&stack, "fcrc", data.len() as u64, Forgery::BadCrc, usize::MAX).await;
    let mut client = connect(&cfg).await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(LIMIT, client.get("f.bin", &target, |_| {})).await.expect("in time");
    let took = started.elapsed();
    let (forged, transfers) = forger.finish().await;
    let outcome = outcome.expect("the download succeeds");
    println!(
        "download of {} bytes with {forged} forged frames failing their CRC32C, each at the offset the device \
         expected next: {} dropped by the device, {} restarts, {} bytes received twice, byte-identical ({:.1} s \
         at 128 KiB/s)",
        data.len(),
        outcome.bad_frames,
        outcome.restarts,
        outcome.resent_bytes,
        took.as_secs_f64()
    );
    assert!(forged >= 3, "frames were forged during the download: {forged}");
    assert_eq!(transfers.len(), 1, "one transfer");
    assert_eq!(outcome.bad_frames, forged, "every forged frame reached the device and was dropped");
    assert_eq!((outcome.restarts, outcome.resent_bytes), (0, 0), "no forged byte was taken");
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()], "one file, no part file");
    gw.stop().await;
}

/// Issue 7, scenario 5 (downloads), b: chunks with a valid CRC32C but other content, forged at offsets the device
/// has not received yet, during the first download only. The SHA-256 in `get_done` does not match what the device
/// holds: it drops the part file and downloads again from nothing; the file that appears is byte-identical, and
/// nothing else is left beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_corrupted_in_transit_starts_again_and_arrives_intact() {
    let (stack, gw, cfg) = paced_setup("fcontent").await;
    let data = content(FORGED_FILE, 202);
    put_on_store(&stack, "fcontent", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let forger = Forger::start(&stack, "fcontent", data.len() as u64, Forgery::WrongContent, 1).await;
    let mut client = connect(&cfg).await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(LIMIT, client.get("f.bin", &target, |_| {})).await.expect("in time");
    let took = started.elapsed();
    let (forged, transfers) = forger.finish().await;
    let outcome = outcome.expect("the second download is intact");
    println!(
        "download of {} bytes with {forged} forged chunks of valid CRC32C and other content in its first \
         transfer: SHA-256 mismatch at the end, part file dropped, {} restart from nothing, {} bytes received \
         twice; byte-identical, no part file ({:.1} s for {} transfers)",
        data.len(),
        outcome.restarts,
        outcome.resent_bytes,
        took.as_secs_f64(),
        transfers.len()
    );
    assert!(forged >= 1, "chunks were forged");
    assert_eq!(outcome.restarts, 1, "the corrupted download was noticed and started again once");
    assert_eq!(transfers.len(), 2, "a second transfer from nothing");
    assert!(outcome.resent_bytes >= data.len() as u64 / 2, "the whole file came again: {}", outcome.resent_bytes);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()], "one file, no part file");
    gw.stop().await;
}

/// Issue 7, scenario 5 (downloads), b: the same forgery in every download. After a bounded number of downloads
/// from nothing the device gives up with a verification error that names the remote and the local path, and
/// `mqsftp get` exits 7 with `checksum_mismatch` in `--json`; no file ever appears at the target and no part file
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_corrupted_every_time_fails_and_leaves_nothing() {
    let (stack, gw, cfg) = paced_setup("fevery").await;
    let data = content(FORGED_FILE, 203);
    put_on_store(&stack, "fevery", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let forger = Forger::start(&stack, "fevery", data.len() as u64, Forgery::WrongContent, usize::MAX).await;
    // Watches the target for as long as the downloads run: a wrong file must never appear there, even briefly.
    let (stop_watch, mut watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let watched = target.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = false;
        loop {
            seen |= watched.exists();
            tokio::select! {
                _ = &mut watch_stopped => return seen,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });

    // The device library: a typed error.
    let mut client = connect(&cfg).await;
    let started = Instant::now();
    let result = tokio::time::timeout(LIMIT, client.get("f.bin", &target, |_| {})).await.expect("in time");
    let took = started.elapsed();
    let err = result.expect_err("every download was corrupted");
    let DeviceError::Integrity { ref remote, ref path, attempts, ref error } = err else {
        panic!("expected a verification failure, got {err}");
    };
    assert_eq!((remote.as_str(), path.as_path()), ("f.bin", target.as_path()));
    assert_eq!(attempts, 3, "three downloads from nothing, then the error");
    assert!(matches!(error, ReceiveError::ChecksumMismatch { .. }), "{error}");
    assert!(err.to_string().contains(&target.display().to_string()), "the error names the target: {err}");
    assert_eq!(entries(out.path()), Vec::<String>::new(), "nothing at the target, no part file");

    // The command line: exit 7 and the protocol's code for it.
    let device_toml = stack.pki_dir().join("devices/fevery/device.toml");
    let args = ["get", "--json", "--config", device_toml.to_str().unwrap(), "f.bin", target.to_str().unwrap()];
    let o = cli(&args, out.path(), &[]).await;
    let _ = stop_watch.send(());
    let appeared = watcher.await.unwrap();
    let (forged, transfers) = forger.finish().await;
    println!(
        "every download corrupted ({forged} forged chunks of valid CRC32C over {} transfers): the library failed \
         after {attempts} downloads from nothing ({:.1} s) with: {err}; `mqsftp get` exited {:?}; nothing at the \
         target, no part file",
        transfers.len(),
        took.as_secs_f64(),
        o.status.code()
    );
    assert_eq!(o.status.code(), Some(7), "{}", output_text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON error on stdout");
    assert_eq!(json["error"], ErrorCode::ChecksumMismatch.as_str(), "{}", output_text(&o));
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.contains(&target.display().to_string()), "the message names the target: {message}");
    assert_eq!(transfers.len(), 6, "three downloads each");
    assert!(!appeared, "a file appeared at the target");
    assert_eq!(entries(out.path()), Vec::<String>::new(), "nothing at the target, no part file");
    gw.stop().await;
}
