use crate::support::*;

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

/// Issue 7, scenario 9: uploads are in progress when the only gateway dies; it comes back after their
/// `upload_expiry`. The new gateway's sweep removes their temporary files, a device resuming by protocol gets
/// `expired`, and the device client, told `expired`, starts its upload again and commits exactly one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_expired_while_no_gateway_ran_are_swept_and_answered_expired() {
    use mqsftp_device::ErrorCode;
    use mqsftp_proto::{Request, Response};

    use crate::common::*;

    const EXPIRY: std::time::Duration = std::time::Duration::from_secs(2);
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_transfer_option(&stack, "upload_expiry", "2s".into());
    let first = GatewayProcess::spawn(&stack).await;

    // A device speaking the protocol: half of a 10-byte upload is on the store.
    let raw_cfg = mqsftp_device::DeviceConfig::load(&stack.device("exraw").unwrap()).unwrap();
    let mut raw = RawDevice::connect(&raw_cfg, "exraw1").await;
    let session = raw.session.clone();
    let put = |resume| Request::Put {
        id: "e1".into(),
        session: session.clone(),
        path: "half.bin".into(),
        size: 10,
        hash: mqsftp_proto::HashAlg::Sha256,
        digest: Some(mqsftp_proto::HexDigest::Sha256(sha256(b"0123456789"))),
        overwrite: false,
        resume,
    };
    raw.send(&put(None)).await;
    let (transfer, gw_id) = raw
        .expect(|r| match r {
            Response::PutAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
            _ => None,
        })
        .await;
    raw.send_chunk(&gw_id, transfer, 0, b"01234").await;
    raw.expect(|r| matches!(r, Response::PutAck { next: 5, .. }).then_some(())).await;

    // The device client: a larger upload, interrupted at 40 %.
    let size = scaled(24 * MIB, 128 * MIB);
    let cfg = device_with_timeout(&stack, "exlib", "10s");
    let data = content(size, 90);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, &data).unwrap();
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_put(client, local.clone(), "f.bin");
    reach(&mut done, size as u64 * 2 / 5, &mut task).await;
    first.kill().await;
    let killed = std::time::Instant::now();
    assert_eq!(part_files(stack.store_dir()).len(), 2, "both uploads hold a temporary file");

    // Past the expiry, a new gateway starts; its first sweep removes both temporary files.
    tokio::time::sleep(EXPIRY + std::time::Duration::from_millis(500)).await;
    let second = GatewayProcess::spawn(&stack).await;
    let swept = wait_until(std::time::Duration::from_secs(10), "temporary files swept", || {
        part_files(stack.store_dir()).is_empty()
    })
    .await;
    let swept_after = killed.elapsed();

    raw.send(&put(Some(transfer))).await;
    let code = raw
        .expect(|r| match r {
            Response::Error { id: Some(id), code, .. } if id == "e1" => Some(code),
            Response::PutAccepted { .. } => panic!("an expired upload was resumed"),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::Expired);
    assert!(!stack.device_root("exraw").join("half.bin").exists());

    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the client starts an expired upload again and commits it");
    assert_eq!(sha256_file(&stack.device_root("exlib").join("f.bin")), sha256(&data));
    assert_eq!(entries(&stack.device_root("exlib")), vec!["f.bin".to_string()], "one file, no temporary file");
    assert!(
        outcome.resent_bytes >= size as u64 * 2 / 5,
        "the expired part was sent again from the start: {} bytes",
        outcome.resent_bytes
    );
    println!(
        "gateway down {:.1} s with 2 uploads in progress (upload_expiry 2 s): temporary files swept {:.1} s after \
         the kill ({:.2} s after the new gateway started); resume answered `expired`; the client sent {} MiB again \
         and committed one file",
        (swept_after - swept).as_secs_f64(),
        swept_after.as_secs_f64(),
        swept.as_secs_f64(),
        outcome.resent_bytes >> 20
    );
    second.kill().await;
}
