use mqsftp_device::ErrorCode;
use mqsftp_proto::{Request, Response};

use crate::common::*;
use crate::support::*;

/// Sends `data[from..to]` as chunks of at most 64 KiB.
async fn send_range(raw: &RawDevice, gw: &mqsftp_proto::GatewayId, transfer: u64, data: &[u8], from: usize, to: usize) {
    let mut at = from;
    while at < to {
        let end = (at + 64 * 1024).min(to);
        raw.send_chunk(gw, transfer, at as u64, &data[at..end]).await;
        at = end;
    }
}

/// Issue 7, scenario 3: sshd (listener and sessions) is SIGKILLed and restarted while an upload is open and its
/// temporary file on the store holds 0, 1, 1 KiB, 1 MiB, size − 1 or size bytes. The device resumes by transfer
/// id; the gateway, whose SFTP session died, answers `unavailable` until the store is back, then adopts the
/// temporary file, and the device sends from what the store holds. The committed file is byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_resume_after_sshd_restarts_whatever_the_store_holds() {
    let size = scaled(3 * MIB + 17, 64 * MIB + 17);
    let mut stack = mqsftp_testkit::Stack::start().unwrap();
    let gw = RunningGateway::start(&stack).await;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device("sshdr").unwrap()).unwrap();
    let mut raw = RawDevice::connect(&cfg, "sshdr1").await;
    let session = raw.session.clone();
    let data = content(size, 91);
    let root = stack.device_root("sshdr");
    let mut figures = Vec::new();
    for (i, held) in [0, 1, 1024, MIB, size - 1, size].into_iter().enumerate() {
        let path = format!("r{i}.bin");
        let put = |id: String, resume| Request::Put {
            id,
            session: session.clone(),
            path: path.clone(),
            size: size as u64,
            hash: mqsftp_proto::HashAlg::Sha256,
            digest: Some(mqsftp_proto::HexDigest::Sha256(sha256(&data))),
            overwrite: false,
            resume,
        };
        let first = format!("p{i}");
        raw.send(&put(first.clone(), None)).await;
        let (transfer, gw_id) = raw
            .expect(|r| match r {
                Response::PutAccepted { id, transfer, gateway, .. } if id == first => Some((transfer, gateway)),
                Response::Error { id: Some(id), code, message, .. } if id == first => panic!("{code}: {message}"),
                _ => None,
            })
            .await;
        send_range(&raw, &gw_id, transfer, &data, 0, held).await;
        if held > 0 {
            raw.expect(|r| matches!(r, Response::PutAck { next, .. } if next == held as u64).then_some(())).await;
        }
        let part = root.join(format!(".{path}.{transfer:x}.mqsftp-part"));
        wait_until(LIMIT, "the temporary file holds what was acknowledged", || {
            std::fs::metadata(&part).is_ok_and(|m| m.len() == held as u64)
        })
        .await;

        restart_sshd_hard(&mut stack);
        let restarted = std::time::Instant::now();

        // Resume until the gateway has the store back.
        let mut unavailable = 0;
        let (offset, gw_id) = loop {
            let id = format!("p{i}-{unavailable}");
            raw.send(&put(id.clone(), Some(transfer))).await;
            let answer = raw
                .expect(|r| match r {
                    Response::PutAccepted { id: got, offset, gateway, .. } if got == id => Some(Ok((offset, gateway))),
                    Response::Error { id: Some(got), code, message, .. } if got == id => Some(Err((code, message))),
                    _ => None,
                })
                .await;
            match answer {
                Ok(accepted) => break accepted,
                Err((ErrorCode::Unavailable, _)) if unavailable < 50 => {
                    unavailable += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err((code, message)) => panic!("resume with {held} bytes held: {code}: {message}"),
            }
        };
        let resumed_after = restarted.elapsed();
        assert_eq!(offset, held as u64, "the resume continues from what the store holds");
        send_range(&raw, &gw_id, transfer, &data, held, size).await;
        if held < size {
            raw.expect(|r| matches!(r, Response::PutAck { next, .. } if next == size as u64).then_some(())).await;
        }
        let commit = format!("c{i}");
        raw.send_to(&gw_id, &Request::Commit { id: commit.clone(), session: session.clone(), transfer, digest: None })
            .await;
        raw.expect(|r| match r {
            Response::Committed { id, .. } if id == commit => Some(()),
            Response::Error { id: Some(id), code, message, .. } if id == commit => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
        assert_eq!(sha256_file(&root.join(&path)), sha256(&data), "{path} with {held} bytes held");
        assert!(part_files(&root).is_empty(), "{:?}", part_files(&root));
        figures.push(format!(
            "{held} B: resumed {:.2} s after the restart ({unavailable}x unavailable)",
            resumed_after.as_secs_f64()
        ));
    }
    println!(
        "sshd killed and restarted mid-upload of {size} bytes, store holding {}; all byte-identical",
        figures.join(", ")
    );
    gw.stop().await;
}

/// The same with the device client (`mqsftp put`): sshd is killed and restarted at 40 % of a streaming upload; the
/// client resumes by itself and one byte-identical file is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_client_resumes_an_upload_after_sshd_restarts() {
    let size = scaled(48 * MIB, 256 * MIB);
    let (mut stack, gw, cfg) = setup("sshdc").await;
    let data = content(size, 92);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, &data).unwrap();
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_put(client, local.clone(), "up/f.bin");
    reach(&mut done, size as u64 * 2 / 5, &mut task).await;
    restart_sshd_hard(&mut stack);
    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the upload resumes after sshd restarted");
    let root = stack.device_root("sshdc");
    assert_eq!(sha256_file(&root.join("up/f.bin")), sha256(&data));
    assert_eq!(entries(&root.join("up")), vec!["f.bin".to_string()], "one file, no temporary file");
    println!(
        "sshd killed and restarted at 40 % of a {} MiB put (device client): {} bytes sent again ({:.2} windows)",
        size >> 20,
        outcome.resent_bytes,
        outcome.resent_bytes as f64 / WINDOW_BYTES as f64
    );
    gw.stop().await;
}
