//! A device that asks for BLAKE3, served by a gateway from before the protocol named hashes: that gateway ignores
//! `hash`, leaves it out of `get_accepted` and `put_accepted`, and hashes with SHA-256. The device then verifies
//! the download with SHA-256, hashes the upload with SHA-256 for its commit, and reports which it used. The gateway
//! is played by hand (the gateway's certificate, its answers written as that gateway writes them) so that every
//! message is exact.

use mqsftp_proto::{Chunk, HashAlg, HexDigest, Request, Topic};

use crate::common::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_names_no_hash_is_answered_with_sha256() {
    const C: usize = 64 * 1024;
    let stack = mqsftp_testkit::Stack::start().unwrap();
    let cfg = device_with_timeout(&stack, "older", "10s");
    let device = cfg.device_id.clone();
    let gateway = mqsftp_proto::GatewayId::new("beforehash").unwrap();
    let up = Topic::up(&device, &gateway);
    let mut gw = gateway_identity(&stack, "older", vec![device_requests("older"), up.clone()]).await;
    let data = content(3 * C + 7, 106);
    let dir = tempfile::tempdir().unwrap();
    let accepted = |ty: &str, id: &str, rest: &str| {
        format!(r#"{{"type":"{ty}","id":"{id}","transfer":1,"gateway":"{gateway}","chunk_size":{C},"window":8{rest}}}"#)
    };

    // Download: the device asks for BLAKE3 and is given SHA-256.
    let (task, _) = spawn_get(connect(&cfg).await, "f.bin", dir.path().join("f.bin"));
    let (id, session, hash) = loop {
        if let Request::Get { id, session, hash, .. } = next_request(&mut gw).await {
            break (id, session, hash);
        }
    };
    assert_eq!(hash, HashAlg::Blake3, "the library asks for BLAKE3");
    let res = Topic::response(&device, &session);
    let size = data.len();
    publish(&gw, res.clone(), accepted("get_accepted", &id, &format!(r#","size":{size}"#)).into_bytes()).await;
    for (k, piece) in data.chunks(C).enumerate() {
        let c = Chunk { transfer: 1, offset: (k * C) as u64, data: bytes::Bytes::copy_from_slice(piece) };
        publish(&gw, Topic::down(&device, &session), c.encode().to_vec()).await;
    }
    let done = format!(r#"{{"type":"get_done","transfer":1,"size":{size},"sha256":"{}"}}"#, sha256(&data));
    publish(&gw, res, done.into_bytes()).await;
    let got = tokio::time::timeout(LIMIT, task).await.expect("in time").expect("no panic").expect("get succeeds");
    assert_eq!((got.digest.alg, got.digest.hex()), (HashAlg::Sha256, sha256(&data)));
    assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), data);

    // Upload: the device asks for BLAKE3, is accepted without a word of it, and commits with SHA-256.
    let local = dir.path().join("up.bin");
    std::fs::write(&local, &data).unwrap();
    let (task, _) = spawn_put(connect(&cfg).await, local, "up.bin");
    let (id, session, hash) = loop {
        if let Request::Put { id, session, hash, .. } = next_request(&mut gw).await {
            break (id, session, hash);
        }
    };
    assert_eq!(hash, HashAlg::Blake3);
    let res = Topic::response(&device, &session);
    publish(&gw, res.clone(), accepted("put_accepted", &id, r#","offset":0"#).into_bytes()).await;
    let mut stored = Vec::new();
    let (commit_id, digest) = loop {
        let p = tokio::time::timeout(LIMIT, gw.incoming.recv()).await.expect("in time").expect("link up");
        if p.topic == up {
            let c = Chunk::decode(p.payload).expect("a chunk frame");
            assert_eq!(c.offset, stored.len() as u64, "chunks in order");
            stored.extend_from_slice(&c.data);
            let ack = format!(r#"{{"type":"put_ack","transfer":1,"next":{}}}"#, stored.len());
            publish(&gw, res.clone(), ack.into_bytes()).await;
        } else if let Ok(Request::Commit { id, digest, .. }) = Request::decode(&p.payload) {
            break (id, digest);
        }
    };
    assert_eq!(stored, data);
    assert_eq!(digest, Some(HexDigest::Sha256(sha256(&data))), "the commit carries the hash that gateway checks");
    let committed = format!(
        r#"{{"type":"committed","id":"{commit_id}","transfer":1,"size":{size},"sha256":"{}","durable":true}}"#,
        sha256(&data)
    );
    publish(&gw, res, committed.into_bytes()).await;
    let put = tokio::time::timeout(LIMIT, task).await.expect("in time").expect("no panic").expect("put succeeds");
    assert_eq!((put.digest.alg, put.digest.hex()), (HashAlg::Sha256, sha256(&data)));
}
