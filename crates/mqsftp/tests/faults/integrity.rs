use mqsftp_device::ErrorCode;
use mqsftp_proto::{Request, Response};

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
        sha256: sha256(&data),
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
    raw.send_to(&gw_id, &Request::Commit { id: "c".into(), session: session.clone(), transfer }).await;
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
        sha256: sha256(&data),
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
    raw.send_to(&wgw, &Request::Commit { id: "wc".into(), session: session.clone(), transfer: wt }).await;
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
        sha256: sha256(&data),
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
        raw.send_to(&gw_id, &Request::Commit { id: id.into(), session: session.clone(), transfer }).await;
    }
    let mut answered = Vec::new();
    while answered.len() < 3 {
        let (id, sha) = raw
            .expect(|r| match r {
                Response::Committed { id, sha256, .. } => Some((id, sha256)),
                Response::Error { id, code, message, .. } => panic!("{id:?}: {code}: {message}"),
                _ => None,
            })
            .await;
        assert_eq!(sha, sha256(&data));
        answered.push(id);
    }
    answered.sort();
    assert_eq!(answered, ["c1", "c2", "c3"]);
    assert_eq!(entries(&stack.device_root("tri")), vec!["tri.bin".to_string()]);
    assert_eq!(std::fs::read(stack.device_root("tri").join("tri.bin")).unwrap(), data);
    println!("three concurrent commits of one upload: {answered:?} all `committed` with the same SHA-256; one file");
    gw.stop().await;
}
