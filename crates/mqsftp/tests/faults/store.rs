use std::path::{Path, PathBuf};

use mqsftp_device::ErrorCode;
use mqsftp_proto::{Request, Response};

use crate::common::*;
use crate::support::*;

/// A tmpfs mounted over a device root for one test, unmounted on drop (tests run as root; sshd sees the mount
/// through its chroot, as it shares the mount namespace).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t tmpfs on {} (the fault suite needs root and mount)", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn read_only(&self) {
        let ok =
            std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap().success();
        assert!(ok, "remount {} read-only", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 7, scenario 4a: the store's file system is full (a 1 MiB tmpfs on the device root) during a 4 MiB upload:
/// the device gets `storage_full`, nothing appears at the final path and the temporary file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_answers_storage_full_and_leaves_nothing() {
    let (stack, gw, cfg) = setup("full").await;
    let root = stack.device_root("full");
    let _fs = Tmpfs::mount(&root, "1m");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, content(4 * MIB, 93)).unwrap();
    let mut client = connect(&cfg).await;
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(LIMIT, client.put(&local, "f.bin", false, |_| {})).await.expect("in time");
    let err = err.expect_err("a 4 MiB upload cannot fit in 1 MiB");
    let message = err.to_string();
    assert_eq!(remote_code(err), ErrorCode::StorageFull, "{message}");
    assert!(!root.join("f.bin").exists(), "nothing at the final path");
    assert!(part_files(&root).is_empty(), "temporary file removed: {:?}", part_files(&root));
    // The space is free again: a file that fits goes in.
    std::fs::write(&local, content(100_000, 94)).unwrap();
    client.put(&local, "small.bin", false, |_| {}).await.expect("a small upload fits");
    println!(
        "store full (1 MiB tmpfs, 4 MiB upload): `storage_full` after {:.2} s (\"{message}\"), nothing at the final \
         path, temporary file removed",
        started.elapsed().as_secs_f64()
    );
    gw.stop().await;
}

/// Issue 7, scenario 4b: the store is read-only (the tmpfs remounted `ro`): the device gets `permission_denied`
/// naming the read-only store; nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_answers_permission_denied_and_leaves_nothing() {
    let (stack, gw, cfg) = setup("rofs").await;
    let root = stack.device_root("rofs");
    let fs = Tmpfs::mount(&root, "8m");
    std::fs::create_dir(root.join("sub")).unwrap();
    fs.read_only();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, content(300_000, 95)).unwrap();
    let mut client = connect(&cfg).await;
    let mut figures = Vec::new();
    for remote in ["f.bin", "sub/f.bin", "new/dir/f.bin"] {
        let err = client.put(&local, remote, false, |_| {}).await.expect_err("the store is read-only");
        let message = err.to_string();
        assert_eq!(remote_code(err), ErrorCode::PermissionDenied, "{remote}: {message}");
        assert!(message.contains("read-only"), "{message}");
        figures.push(message);
    }
    assert_eq!(entries(&root), vec!["sub".to_string()], "nothing created");
    assert!(entries(&root.join("sub")).is_empty());
    println!("read-only store: `permission_denied` for every upload ({}); nothing created", figures.join("; "));
    gw.stop().await;
}

/// Issue 7, scenario 4c: the rename into place is refused because a directory appeared at the target while the
/// upload ran: `exists` without overwrite, `is_directory` with it; the directory is untouched and the temporary
/// file removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rename_is_answered_and_the_temporary_file_removed() {
    let (stack, gw, cfg) = setup("norename").await;
    let root = stack.device_root("norename");
    let mut raw = RawDevice::connect(&cfg, "nr1").await;
    let session = raw.session.clone();
    let data = content(200_000, 96);
    let mut figures = Vec::new();
    for (i, (overwrite, want)) in [(false, ErrorCode::Exists), (true, ErrorCode::IsDirectory)].into_iter().enumerate() {
        let path = format!("t{i}.bin");
        raw.send(&Request::Put {
            id: format!("p{i}"),
            session: session.clone(),
            path: path.clone(),
            size: data.len() as u64,
            hash: mqsftp_proto::HashAlg::Sha256,
            digest: Some(mqsftp_proto::HexDigest::Sha256(sha256(&data))),
            overwrite,
            resume: None,
        })
        .await;
        let (transfer, gw_id) = raw
            .expect(|r| match r {
                Response::PutAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
                Response::Error { code, message, .. } => panic!("{code}: {message}"),
                _ => None,
            })
            .await;
        for (k, piece) in data.chunks(64 * 1024).enumerate() {
            raw.send_chunk(&gw_id, transfer, (k * 64 * 1024) as u64, piece).await;
        }
        let size = data.len() as u64;
        raw.expect(|r| matches!(r, Response::PutAck { next, .. } if next == size).then_some(())).await;
        std::fs::create_dir(root.join(&path)).unwrap();
        std::fs::write(root.join(&path).join("inside"), b"kept").unwrap();
        let commit = format!("c{i}");
        raw.send_to(&gw_id, &Request::Commit { id: commit.clone(), session: session.clone(), transfer, digest: None })
            .await;
        let (code, message) = raw
            .expect(|r| match r {
                Response::Error { id: Some(id), code, message, .. } if id == commit => Some((code, message)),
                Response::Committed { id, .. } if id == commit => panic!("committed over a directory"),
                _ => None,
            })
            .await;
        assert_eq!(code, want, "overwrite {overwrite}: {message}");
        assert_eq!(std::fs::read(root.join(&path).join("inside")).unwrap(), b"kept", "the directory is untouched");
        figures.push(format!("overwrite={overwrite}: `{code}`"));
    }
    assert!(part_files(&root).is_empty(), "temporary files removed: {:?}", part_files(&root));
    println!("rename refused (a directory at the target): {}; temporary files removed", figures.join(", "));
    gw.stop().await;
}
