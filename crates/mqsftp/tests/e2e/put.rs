use mqsftp_device::ErrorCode;
use mqsftp_proto::{HashAlg, HexDigest, Request, Response};

use crate::support::*;

async fn put_and_get_back(sizes: &[usize]) {
    let (stack, gw, cfg) = setup("putter").await;
    let mut client = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        let data = content(len, len as u64 + 11);
        let local = dir.path().join(format!("up{i}"));
        std::fs::write(&local, &data).unwrap();
        let remote = format!("in/sub/f{i}-{len}.bin");
        let mut last = None;
        let o = tokio::time::timeout(LIMIT, client.put(&local, &remote, false, |p| last = Some(p)))
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("put of {len} bytes: {e}"));
        assert_eq!((o.size, o.digest), (len as u64, blake3(&data)));
        assert!(o.durable, "OpenSSH offers fsync@openssh.com");
        let last = last.expect("progress reported");
        assert_eq!((last.done, last.total), (len as u64, len as u64));
        let stored = stack.device_root("putter").join(&remote);
        assert_eq!(sha256_file(&stored), sha256(&data), "stored content of {remote}");
        let back = dir.path().join(format!("back{i}"));
        client.get(&remote, &back, |_| {}).await.unwrap();
        assert_eq!(sha256_file(&back), sha256(&data));
    }
    assert!(part_files(stack.store_dir()).is_empty(), "no temporary files left: {:?}", part_files(stack.store_dir()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_edge_sizes_round_trip() {
    put_and_get_back(&[0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 10 * 1024 * 1024]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_300_mib_round_trips() {
    put_and_get_back(&[300 * 1024 * 1024]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_is_refused_unless_asked() {
    let (stack, gw, cfg) = setup("ow").await;
    let mut client = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"first version").unwrap();
    std::fs::write(&b, b"second version, longer").unwrap();
    client.put(&a, "doc.txt", false, |_| {}).await.unwrap();
    let err = client.put(&b, "doc.txt", false, |_| {}).await.unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::Exists);
    let stored = stack.device_root("ow").join("doc.txt");
    assert_eq!(std::fs::read(&stored).unwrap(), b"first version", "refused put changed nothing");
    client.put(&b, "doc.txt", true, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(&stored).unwrap(), b"second version, longer");
    assert!(part_files(stack.store_dir()).is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_puts_are_answered_with_their_code_and_leave_nothing() {
    let stack = start_stack();
    set_transfer_option(&stack, "max_file_size", 1_000_000.into());
    let gw = RunningGateway::start(&stack).await;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device("badput").unwrap()).unwrap();
    let mut raw = RawDevice::connect(&cfg, "raw1").await;
    let session = raw.session.clone();
    let put = |id: &str, path: &str, size: u64, sha256: &str| Request::Put {
        id: id.into(),
        session: session.clone(),
        path: path.into(),
        size,
        hash: HashAlg::Sha256,
        digest: Some(HexDigest::Sha256(sha256.into())),
        overwrite: false,
        resume: None,
    };
    let good_sha = sha256(b"hello");
    for (id, req, want) in [
        ("p1", put("p1", "x.bin", 5, "nothex"), ErrorCode::BadRequest),
        ("p2", put("p2", "x.bin", 2_000_000, &good_sha), ErrorCode::TooLarge),
        ("p3", put("p3", "../other/x.bin", 5, &good_sha), ErrorCode::PermissionDenied),
        ("p4", put("p4", "/abs.bin", 5, &good_sha), ErrorCode::PermissionDenied),
        ("p5", put("p5", "", 5, &good_sha), ErrorCode::IsDirectory),
    ] {
        raw.send(&req).await;
        let code = raw
            .expect(|r| match r {
                Response::Error { id: Some(got), code, .. } if got == id => Some(code),
                _ => None,
            })
            .await;
        assert_eq!(code, want, "{id}");
    }

    // Declared hash does not match the data: the commit fails, nothing appears, the temporary file goes.
    let (transfer, gw_id) = raw.put_accepted(&put("p6", "wrong.bin", 5, &sha256(b"HELLO")), "p6").await;
    raw.send_chunk(&gw_id, transfer, 0, b"hello").await;
    let code = raw
        .expect(|r| match r {
            Response::Error { transfer: Some(t), code, .. } if t == transfer => Some(code),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::ChecksumMismatch);
    assert!(!stack.device_root("badput").join("wrong.bin").exists());
    assert!(part_files(stack.store_dir()).is_empty(), "{:?}", part_files(stack.store_dir()));

    // A commit before all data arrived is refused, and the upload goes on and commits afterwards.
    let (transfer, gw_id) = raw.put_accepted(&put("p7", "late.bin", 5, &good_sha), "p7").await;
    raw.send_chunk(&gw_id, transfer, 0, b"hel").await;
    raw.send_to(&gw_id, &Request::Commit { id: "c1".into(), session: session.clone(), transfer, digest: None }).await;
    let code = raw
        .expect(|r| match r {
            Response::Error { id: Some(id), code, .. } if id == "c1" => Some(code),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::BadRequest);
    // An overlapping chunk with other content is not written over what was received (only the tail counts).
    raw.send_chunk(&gw_id, transfer, 3, b"lo").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    raw.send_to(&gw_id, &Request::Commit { id: "c2".into(), session: session.clone(), transfer, digest: None }).await;
    let first = raw
        .expect(|r| match r {
            Response::Committed { id, durable, .. } if id == "c2" => Some(durable),
            _ => None,
        })
        .await;
    assert!(first);
    // The same commit again (a lost answer): the same answer, still one file.
    raw.send_to(&gw_id, &Request::Commit { id: "c3".into(), session: session.clone(), transfer, digest: None }).await;
    raw.expect(|r| matches!(r, Response::Committed { ref id, .. } if id == "c3").then_some(())).await;
    assert_eq!(std::fs::read(stack.device_root("badput").join("late.bin")).unwrap(), b"hello");
    assert_eq!(entries(&stack.device_root("badput")), vec!["late.bin".to_string()]);
    gw.stop().await;
}

/// A device may start an upload without its hash (it hashes the file as it sends it) and give the hash with the
/// commit: what the gateway then checks and answers with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_may_give_its_hash_with_the_commit() {
    let (stack, gw, cfg) = setup("latehash").await;
    let mut raw = RawDevice::connect(&cfg, "raw4").await;
    let session = raw.session.clone();
    let put = |id: &str, path: &str, sha256: Option<String>| Request::Put {
        id: id.into(),
        session: session.clone(),
        path: path.into(),
        size: 5,
        hash: HashAlg::Sha256,
        digest: sha256.map(HexDigest::Sha256),
        overwrite: false,
        resume: None,
    };
    let commit = |id: &str, transfer, sha256: Option<String>| Request::Commit {
        id: id.into(),
        session: session.clone(),
        transfer,
        digest: sha256.map(HexDigest::Sha256),
    };
    let root = stack.device_root("latehash");

    // All five bytes sent, no hash yet: a commit without one is refused, as is a malformed one, in a commit or in
    // a resuming put; the upload goes on.
    let (transfer, gw_id) = raw.put_accepted(&put("p1", "a.bin", None), "p1").await;
    raw.send_chunk(&gw_id, transfer, 0, b"hello").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    let resume = Request::Put {
        id: "p1r".into(),
        session: session.clone(),
        path: "a.bin".into(),
        size: 5,
        hash: HashAlg::Sha256,
        digest: Some(HexDigest::Sha256("NOTHEX".into())),
        overwrite: false,
        resume: Some(transfer),
    };
    raw.send(&resume).await;
    let (code, message) = raw.error_for("p1r").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("field sha256"), "{message}");
    raw.send_to(&gw_id, &commit("c1", transfer, None)).await;
    let (code, message) = raw.error_for("c1").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("commit without sha256"), "{message}");
    raw.send_to(&gw_id, &commit("c2", transfer, Some("NOTHEX".into()))).await;
    let (code, message) = raw.error_for("c2").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("field sha256") && message.contains("NOTHEX"), "{message}");
    assert!(!root.join("a.bin").exists());
    raw.send_to(&gw_id, &commit("c3", transfer, Some(sha256(b"hello")))).await;
    let committed = raw
        .expect(|r| match r {
            Response::Committed { id, digest, size, .. } if id == "c3" => Some((digest, size)),
            _ => None,
        })
        .await;
    assert_eq!(committed, (HexDigest::Sha256(sha256(b"hello")), 5));
    assert_eq!(std::fs::read(root.join("a.bin")).unwrap(), b"hello");

    // The hash given with the commit does not match the bytes: nothing appears, the temporary file goes.
    let (transfer, gw_id) = raw.put_accepted(&put("p2", "b.bin", None), "p2").await;
    raw.send_chunk(&gw_id, transfer, 0, b"hello").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    raw.send_to(&gw_id, &commit("c4", transfer, Some(sha256(b"HELLO")))).await;
    let (code, message) = raw.error_for("c4").await;
    assert_eq!(code, ErrorCode::ChecksumMismatch, "{message}");

    // A hash given with the put and another with the commit: the bytes cannot match both.
    let (transfer, gw_id) = raw.put_accepted(&put("p3", "c.bin", Some(sha256(b"hello"))), "p3").await;
    raw.send_chunk(&gw_id, transfer, 0, b"hello").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    raw.send_to(&gw_id, &commit("c5", transfer, Some(sha256(b"HELLO")))).await;
    let (code, message) = raw.error_for("c5").await;
    assert_eq!(code, ErrorCode::ChecksumMismatch);
    assert!(message.contains("announced with sha256"), "{message}");

    assert_eq!(entries(&root), vec!["a.bin".to_string()]);
    assert!(part_files(stack.store_dir()).is_empty(), "{:?}", part_files(stack.store_dir()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_upload_expires_and_is_removed() {
    let stack = start_stack();
    set_transfer_option(&stack, "upload_expiry", "1s".into());
    let gw = RunningGateway::start(&stack).await;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device("exp").unwrap()).unwrap();
    let mut raw = RawDevice::connect(&cfg, "raw2").await;
    let req = Request::Put {
        id: "e1".into(),
        session: raw.session.clone(),
        path: "half.bin".into(),
        size: 10,
        hash: HashAlg::Sha256,
        digest: Some(HexDigest::Sha256(sha256(b"0123456789"))),
        overwrite: false,
        resume: None,
    };
    raw.send(&req).await;
    let (transfer, gw_id) = raw
        .expect(|r| match r {
            Response::PutAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
            _ => None,
        })
        .await;
    raw.send_chunk(&gw_id, transfer, 0, b"01234").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    assert_eq!(part_files(stack.store_dir()).len(), 1, "the upload in progress has its temporary file");
    let code = raw
        .expect(|r| match r {
            Response::Error { transfer: Some(t), code, .. } if t == transfer => Some(code),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::Expired);
    assert!(part_files(stack.store_dir()).is_empty(), "expired upload removed");
    assert!(!stack.device_root("exp").join("half.bin").exists());
    gw.stop().await;
}

/// While uploads run, an observer that keeps listing the target directory never sees a file at a final name
/// that is shorter than, or different from, what was uploaded there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_never_sees_a_partial_file() {
    const UPLOADS: usize = 200;
    let (stack, gw, cfg) = setup("obs").await;
    let root = stack.device_root("obs");
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * 64 * 1024 + 100, 5);
    let local = dir.path().join("f");
    std::fs::write(&local, &data).unwrap();
    let want = sha256(&data);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let observer = {
        let (root, stop, want, len) = (root.join("out"), stop.clone(), want.clone(), data.len());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(rd) = std::fs::read_dir(&root) else { continue };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue; // temporary files are hidden names
                    }
                    let got = std::fs::read(e.path()).unwrap();
                    assert_eq!(got.len(), len, "{name} seen partial");
                    assert_eq!(sha256(&got), want, "{name} seen with other content");
                    looks += 1;
                }
            }
            looks
        })
    };
    let mut client = connect(&cfg).await;
    for i in 0..UPLOADS {
        client.put(&local, &format!("out/f{i:03}.bin"), false, |_| {}).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let looks = observer.join().expect("observer saw only whole files");
    assert!(looks > 0, "the observer looked at files");
    assert_eq!(entries(&root.join("out")).len(), UPLOADS);
    gw.stop().await;
}

/// Two gateways share one broker: each new request goes to one of them (shared subscription), and the chunks,
/// acknowledgements and commits of a transfer reach the gateway holding it. When one gateway stops, the other
/// serves everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_the_work() {
    let (stack, gw_a, cfg) = setup("shared").await;
    let gw_b = RunningGateway::start(&stack).await;
    let mut c = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..12 {
        let data = content(150_000 + i, i as u64);
        let local = dir.path().join(format!("l{i}"));
        std::fs::write(&local, &data).unwrap();
        c.put(&local, &format!("f{i}"), false, |_| {}).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
        let back = dir.path().join(format!("b{i}"));
        c.get(&format!("f{i}"), &back, |_| {}).await.unwrap_or_else(|e| panic!("get {i}: {e}"));
        assert_eq!(std::fs::read(&back).unwrap(), data);
    }
    gw_a.stop().await;
    for i in 0..4 {
        if let Err(e) = c.get(&format!("f{i}"), &dir.path().join(format!("c{i}")), |_| {}).await {
            let log = stack.broker_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("get {i} after one gateway stopped: {e}\n{}", tail.join("\n"));
        }
    }
    gw_b.stop().await;
}

/// Bad requests of every kind, sent while a large download runs, are each answered with their code, and the
/// download finishes intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_do_not_disturb_a_running_transfer() {
    let (stack, gw, cfg) = setup("noisy").await;
    let data = content(40 * 1024 * 1024, 13);
    put_on_store(&stack, "noisy", "big.bin", &data);
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("big.bin");
    let t = target.clone();
    let get = tokio::spawn(async move { client.get("big.bin", &t, |_| {}).await });
    let mut raw = RawDevice::connect(&cfg, "noise").await;
    let s = raw.session.as_str().to_string();
    let cases: Vec<(String, mqsftp_proto::ErrorCode)> = vec![
        (format!(r#"{{"op":"frob","id":"b1","session":"{s}"}}"#), mqsftp_proto::ErrorCode::BadRequest),
        (format!(r#"{{"op":"get","id":"b2","session":"{s}","path":7}}"#), mqsftp_proto::ErrorCode::BadRequest),
        (
            format!(r#"{{"op":"get","id":"b3","session":"{s}","path":"x","offset":-1}}"#),
            mqsftp_proto::ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"op":"get","id":"b4","session":"{s}","path":"big.bin","offset":99999999999}}"#),
            mqsftp_proto::ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"op":"stat","id":"b5","session":"{s}","path":"../x"}}"#),
            mqsftp_proto::ErrorCode::PermissionDenied,
        ),
        (format!(r#"{{"op":"list","id":"b6","session":"{s}","path":"nope"}}"#), mqsftp_proto::ErrorCode::NotFound),
        (
            format!(r#"{{"op":"commit","id":"b7","session":"{s}","transfer":12345}}"#),
            mqsftp_proto::ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"op":"put","id":"b8","session":"{s}","path":"a","size":1,"sha256":"00"}}"#),
            mqsftp_proto::ErrorCode::BadRequest,
        ),
        (
            format!(r#"{{"op":"get","id":"{}","session":"{s}","path":"a"}}"#, "i".repeat(65)),
            mqsftp_proto::ErrorCode::BadRequest,
        ),
    ];
    for (payload, want) in cases {
        let id = serde_json::from_str::<serde_json::Value>(&payload).unwrap()["id"].as_str().unwrap().to_string();
        raw.publish(mqsftp_proto::Topic::request(&cfg.device_id), payload.clone()).await;
        let code = raw
            .expect(|r| match r {
                Response::Error { id: Some(got), code, .. } if got == id => Some(code),
                _ => None,
            })
            .await;
        assert_eq!(code, want, "{payload}");
    }
    // A chunk for a transfer nobody runs, and garbage on the upload topic, are dropped.
    raw.publish(format!("mqsftp/v1/{}/up/deadbeef", cfg.device_id), b"garbage".to_vec()).await;
    raw.send_chunk(&mqsftp_proto::SessionId::new("deadbeef").unwrap(), 424242, 0, b"x").await;
    tokio::time::timeout(LIMIT, get).await.expect("in time").expect("no panic").expect("download succeeds");
    assert_eq!(sha256_file(&target), sha256(&data));
    gw.stop().await;
}

/// The device hashes a file as it sends it; if the file changes while it is uploaded, the upload ends with an error
/// naming the file and nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_during_upload_is_not_committed() {
    // When 1 MiB is acknowledged, the device has read at most that, a window in flight and a window read ahead: the
    // file is 2 MiB longer, so that the change lands before its end was read.
    let p = mqsftp_proto::StreamParams::DEFAULT;
    changed_at_1_mib((3 << 20) + 2 * p.window as usize * p.chunk_size as usize).await;
}

/// The same when the change comes after the device read the file's last byte (it reads a window early): what it
/// sent is the file as hashed, but no longer the file, so it is not committed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_after_its_last_byte_was_read_is_not_committed() {
    // At 1 MiB acknowledged, a window is in flight beyond it: the whole file has been read.
    let p = mqsftp_proto::StreamParams::DEFAULT;
    changed_at_1_mib((1 << 20) + p.window as usize * p.chunk_size as usize / 2).await;
}

/// A stack whose policy paces every device at `rate` per second, its gateway, and the config of `device`.
async fn paced(rate: &str, device: &str) -> (mqsftp_testkit::Stack, RunningGateway, mqsftp_device::DeviceConfig) {
    let stack = start_stack();
    set_policy(&stack, &format!("[default]\nrate = \"{rate}\"\n"));
    let gw = RunningGateway::start(&stack).await;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device(device).unwrap()).unwrap();
    (stack, gw, cfg)
}

/// Uploads a file of `size` bytes paced at 1 MiB/s, rewrites it once 1 MiB is acknowledged, and expects
/// `LocalChanged` naming it, with nothing committed.
async fn changed_at_1_mib(size: usize) {
    let (stack, gw, cfg) = paced("1 MiB", "changer").await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, content(size, 5)).unwrap();
    let client = connect(&cfg).await;
    let (mut put, mut done) = spawn_put(client, local.clone(), "f.bin");
    let reached = tokio::time::timeout(LIMIT, done.wait_for(|d| *d >= 1 << 20)).await.expect("progress").is_ok();
    assert!(reached, "upload ended early: {:?}", (&mut put).await);
    std::thread::sleep(std::time::Duration::from_millis(20)); // a modification time that differs
    std::fs::write(&local, content(size, 6)).unwrap();
    let err = tokio::time::timeout(LIMIT, put).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, mqsftp_device::DeviceError::LocalChanged { .. }), "{err}");
    assert!(err.to_string().contains("f.bin"), "{err}");
    assert!(!stack.device_root("changer").join("f.bin").exists(), "nothing committed");
    gw.stop().await;
}

/// A long upload has the store write its temporary file to disk as the data arrives (the gateway fsyncs it every
/// 8 MiB, on an SFTP channel of its own), not all at the commit. Left alone, the store's kernel would keep every
/// page written dirty for 30 s, so the count would only grow with the upload; here it falls back below one step
/// again and again while the upload runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_upload_is_written_to_the_stores_disk_as_it_arrives() {
    // Paced, so that the upload is still running while the test looks.
    let (stack, gw, cfg) = paced("8 MiB", "flusher").await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    let data = content(64 << 20, 9);
    std::fs::write(&local, &data).unwrap();
    let client = connect(&cfg).await;
    let (mut put, mut done) = spawn_put(client, local.clone(), "big.bin");
    let reached = tokio::time::timeout(LIMIT, done.wait_for(|d| *d >= 24 << 20)).await.expect("progress").is_ok();
    assert!(reached, "upload ended early: {:?}", (&mut put).await);
    let root = stack.device_root("flusher");
    let parts = part_files(&root);
    assert_eq!(parts.len(), 1, "one temporary file: {parts:?}");
    let part = std::fs::File::open(&parts[0]).unwrap();
    let (page, step_pages) = (4096, (8 << 20) / 4096);
    let mut least = u64::MAX;
    let mut samples = 0;
    while *done.borrow() < 56 << 20 && !put.is_finished() {
        least = least.min(mqsftp_testkit::dirty_pages(&part).unwrap());
        samples += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(samples >= 10, "only {samples} looks while the upload ran");
    assert!(
        least <= step_pages * 3 / 2,
        "the temporary file never had fewer than {least} dirty pages ({} MiB) after 24 MiB were uploaded",
        least * page / (1 << 20)
    );
    tokio::time::timeout(LIMIT, put).await.unwrap().unwrap().unwrap();
    // The handle those fsyncs went through is closed, not leaked: nothing holds the file now but this test (its
    // `part`, the same file under its old name, which shows that the scan sees it).
    let target = root.join("big.bin");
    assert!(holders(&target).contains(&std::process::id()), "the scan sees {}", target.display());
    drop(part);
    assert_eq!(holders(&target), Vec::<u32>::new(), "{} still open", target.display());
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert!(part_files(&root).is_empty());
    gw.stop().await;
}

/// An upload committed by one gateway whose answer never reached the device: the device asks again (a put resuming
/// the transfer), and another gateway, which never saw it, finds the target holding exactly the announced bytes
/// and answers as for a commit, instead of `exists` for the device's own file. A target with other bytes is still
/// `exists`. (Seen in the three-gateway fault test at full size, with a device timeout of 3 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_answered_by_another_gateway() {
    let (stack, gw_a, cfg) = setup("lostcommit").await;
    let mut raw = RawDevice::connect(&cfg, "raw3").await;
    let session = raw.session.clone();
    let put = |id: &str, size: u64, sha256: String, resume: Option<u64>| Request::Put {
        id: id.into(),
        session: session.clone(),
        path: "c.bin".into(),
        size,
        hash: HashAlg::Sha256,
        digest: Some(HexDigest::Sha256(sha256)),
        overwrite: false,
        resume,
    };
    let (transfer, first) = raw.put_accepted(&put("p1", 5, sha256(b"hello"), None), "p1").await;
    raw.send_chunk(&first, transfer, 0, b"hello").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    raw.send_to(&first, &Request::Commit { id: "c1".into(), session: session.clone(), transfer, digest: None }).await;
    raw.expect(|r| matches!(r, Response::Committed { ref id, .. } if id == "c1").then_some(())).await;
    // The gateway that committed goes away with what it remembers; another one takes the requests.
    gw_a.stop().await;
    let gw_b = RunningGateway::start(&stack).await;
    raw.send(&put("p2", 5, sha256(b"hello"), Some(transfer))).await;
    let (offset, second) = raw
        .expect(|r| match r {
            Response::PutAccepted { id, offset, gateway, .. } if id == "p2" => Some((offset, gateway)),
            Response::Error { id: Some(id), code, message, .. } if id == "p2" => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
    assert_eq!(offset, 5, "nothing to send again");
    assert_ne!(second, first);
    raw.send_to(&second, &Request::Commit { id: "c2".into(), session: session.clone(), transfer, digest: None }).await;
    let (size, sha) = raw
        .expect(|r| match r {
            Response::Committed { id, size, digest, .. } if id == "c2" => Some((size, digest)),
            Response::Error { id: Some(id), code, message, .. } if id == "c2" => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
    assert_eq!((size, sha), (5, HexDigest::Sha256(sha256(b"hello"))));
    // Another upload to the same name (other bytes) resuming a transfer nobody knows: the file is someone else's.
    raw.send(&put("p3", 5, sha256(b"HELLO"), Some(transfer + 1))).await;
    let code = raw
        .expect(|r| match r {
            Response::Error { id: Some(id), code, .. } if id == "p3" => Some(code),
            Response::PutAccepted { id, .. } if id == "p3" => panic!("accepted an upload over another file"),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::Exists);
    assert_eq!(std::fs::read(stack.device_root("lostcommit").join("c.bin")).unwrap(), b"hello");
    assert!(part_files(stack.store_dir()).is_empty(), "{:?}", part_files(stack.store_dir()));
    gw_b.stop().await;
}

/// The device names the hash each transfer is verified with; a device that names none (one from before BLAKE3 was
/// added) gets SHA-256, in the `sha256` field, as before. A hash of the other algorithm is refused without ending
/// the upload. The library does either, and reports which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transfer_is_verified_with_the_hash_its_device_names() {
    let (stack, gw, cfg) = setup("hashes").await;
    let data = content(300_000, 21);
    put_on_store(&stack, "hashes", "f.bin", &data);
    let mut raw = RawDevice::connect_with(&cfg, "raw5", Vec::new()).await;
    let session = raw.session.clone();

    // A get with no `hash`, written as an older device writes it: SHA-256 is announced and sent.
    let old_get = format!(r#"{{"op":"get","id":"g1","session":"{session}","path":"f.bin"}}"#);
    raw.publish(mqsftp_proto::Topic::request(&cfg.device_id), old_get).await;
    let hash = raw
        .expect(|r| match r {
            Response::GetAccepted { id, hash, .. } if id == "g1" => Some(hash),
            Response::Error { id: Some(id), code, message, .. } if id == "g1" => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
    assert_eq!(hash, HashAlg::Sha256);
    // (Chunks go to the session's `down` topic, which this device does not read; `get_done` follows them once all
    // are read and sent.)
    let done = raw.expect(|r| matches!(r, Response::GetDone { .. }).then_some(r)).await;
    let text = String::from_utf8(done.encode()).unwrap();
    assert!(text.contains(&format!(r#""sha256":"{}""#, sha256(&data))), "{text}");

    // Asking for BLAKE3: echoed, and the hash comes in the `blake3` field.
    let get = Request::Get {
        id: "g2".into(),
        session: session.clone(),
        path: "f.bin".into(),
        offset: 0,
        hash: HashAlg::Blake3,
    };
    raw.send(&get).await;
    let hash = raw.expect(|r| matches!(&r, Response::GetAccepted { id, .. } if id == "g2").then_some(r)).await;
    assert!(matches!(hash, Response::GetAccepted { hash: HashAlg::Blake3, .. }), "{hash:?}");
    let done = raw.expect(|r| matches!(r, Response::GetDone { .. }).then_some(r)).await;
    assert!(
        matches!(&done, Response::GetDone { digest, size: 300_000, .. } if *digest == blake3(&data).into()),
        "{done:?}"
    );

    // An upload hashed with BLAKE3, the hash given with the commit; a SHA-256 for it is refused and changes nothing.
    let put = Request::Put {
        id: "p1".into(),
        session: session.clone(),
        path: "up.bin".into(),
        size: 5,
        hash: HashAlg::Blake3,
        digest: None,
        overwrite: false,
        resume: None,
    };
    raw.send(&put).await;
    let (transfer, gw_id, hash) = raw
        .expect(|r| match r {
            Response::PutAccepted { id, transfer, gateway, hash, .. } if id == "p1" => Some((transfer, gateway, hash)),
            _ => None,
        })
        .await;
    assert_eq!(hash, HashAlg::Blake3);
    raw.send_chunk(&gw_id, transfer, 0, b"hello").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;
    let commit = |id: &str, digest: HexDigest| Request::Commit {
        id: id.into(),
        session: session.clone(),
        transfer,
        digest: Some(digest),
    };
    raw.send_to(&gw_id, &commit("c1", HexDigest::Sha256(sha256(b"hello")))).await;
    let (code, message) = raw.error_for("c1").await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("field sha256 gives a hash for an upload hashed with blake3"), "{message}");
    let root = stack.device_root("hashes");
    assert!(!root.join("up.bin").exists());
    raw.send_to(&gw_id, &commit("c2", blake3(b"hello").into())).await;
    let committed = raw
        .expect(|r| match r {
            Response::Committed { id, digest, .. } if id == "c2" => Some(digest),
            Response::Error { id: Some(id), code, message, .. } if id == "c2" => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
    assert_eq!(committed, blake3(b"hello").into());
    assert_eq!(std::fs::read(root.join("up.bin")).unwrap(), b"hello");

    // The library: BLAKE3 by default, SHA-256 when set; the outcome says which, and the files are whole.
    let mut client = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    for (alg, name) in [(HashAlg::Blake3, "b"), (HashAlg::Sha256, "s")] {
        if alg == HashAlg::Sha256 {
            client.set_hash(alg);
        }
        let got = client.get("f.bin", &dir.path().join(name), |_| {}).await.unwrap();
        assert_eq!(got.digest, alg.digest(&data), "get with {alg}");
        let put = client.put(&dir.path().join(name), &format!("{name}.bin"), false, |_| {}).await.unwrap();
        assert_eq!(put.digest, alg.digest(&data), "put with {alg}");
        assert_eq!(std::fs::read(root.join(format!("{name}.bin"))).unwrap(), data);
    }
    assert!(part_files(stack.store_dir()).is_empty(), "{:?}", part_files(stack.store_dir()));
    gw.stop().await;
}
