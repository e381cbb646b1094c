use std::time::Duration;

use mqsftp_gateway::config::SftpConfig;
use mqsftp_gateway::StoreError;
use russh_sftp::protocol::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mqsftp_sftpd::OpenFiles;

use crate::common::{pseudo_random, Fixture, USER};
use crate::confinement::code;

/// Creates (or truncates) `path` with `data`.
async fn put(store: &mqsftp_gateway::StoreSession, path: &str, data: &[u8]) {
    let mut f = store.create(path).await.unwrap();
    f.write_all(data).await.unwrap();
    f.shutdown().await.unwrap();
}

pub(crate) fn sftp_config(fx: &Fixture) -> SftpConfig {
    SftpConfig {
        host: "127.0.0.1".into(),
        port: fx.port(),
        user: USER.into(),
        key: fx.key.clone(),
        known_hosts: fx.known_hosts.clone(),
        connect_timeout: Duration::from_secs(20),
        passphrase_file: None,
        passphrase_env: None,
        keepalive: Duration::from_secs(15),
        keepalive_max: 3,
        request_timeout: Duration::from_secs(30),
    }
}

/// What the gateway does for a put: temp file, pipelined writes, fsync, rename without clobbering, or
/// posix-rename to replace; the extensions that make `durable: true` are detected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_store_put_rename_fsync_durable() {
    let fx = Fixture::start().await;
    let store = mqsftp_gateway::store::connect(&sftp_config(&fx)).await.unwrap();
    assert!(store.fsync, "fsync@openssh.com not detected: the gateway would report durable: false");
    assert!(store.posix_rename, "posix-rename@openssh.com not detected");

    let created = store.create_dir_all("devices/d1/reports").await.unwrap();
    assert_eq!(created, vec!["devices", "devices/d1", "devices/d1/reports"]);
    let dir = fx.root.join("devices/d1/reports");
    assert!(dir.is_dir());

    let first = pseudo_random(3 * 1024 * 1024 + 17, 1);
    let mut f = store.create("devices/d1/reports/.a.part").await.unwrap();
    for chunk in first.chunks(64 * 1024) {
        f.write_all(chunk).await.unwrap();
    }
    f.sync_all().await.unwrap();
    f.shutdown().await.unwrap();
    store.rename("devices/d1/reports/.a.part", "devices/d1/reports/a.bin").await.unwrap();
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == first);
    assert!(!dir.join(".a.part").exists());

    // A plain rename never replaces the target.
    let second = pseudo_random(100_000, 2);
    put(&store, "devices/d1/reports/.b.part", &second).await;
    let refused = store.rename("devices/d1/reports/.b.part", "devices/d1/reports/a.bin").await;
    assert_eq!(code(refused), StatusCode::Failure);
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == first);
    // posix-rename does, atomically.
    store.rename_replacing("devices/d1/reports/.b.part", "devices/d1/reports/a.bin").await.unwrap();
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == second);
    assert!(!dir.join(".b.part").exists());

    // stat, list, read back, remove.
    let md = store.metadata("devices/d1/reports/a.bin").await.unwrap();
    assert_eq!(md.size, Some(second.len() as u64));
    assert!(md.file_type().is_file());
    let names: Vec<String> = store.read_dir("devices/d1/reports").await.unwrap().map(|e| e.file_name()).collect();
    assert_eq!(names, vec!["a.bin"]);
    let mut back = Vec::new();
    store.open("devices/d1/reports/a.bin").await.unwrap().read_to_end(&mut back).await.unwrap();
    assert!(back == second);
    store.remove_file("devices/d1/reports/a.bin").await.unwrap();
    assert_eq!(code(store.metadata("devices/d1/reports/a.bin").await), StatusCode::NoSuchFile);
    assert_eq!(code(store.remove_file("devices/d1/reports/a.bin").await), StatusCode::NoSuchFile);
    store.remove_dir("devices/d1/reports").await.unwrap();
    assert!(!dir.exists());
    fx.server.unwrap().shutdown().await;
}

/// The gateway pins the host key: a known_hosts line with another key is a changed host key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_a_server_whose_host_key_is_not_pinned() {
    let fx = Fixture::start().await;
    let other = fx.dir.path().join("other_host");
    let other_public = mqsftp_pki::generate_ssh_key(&other, "").unwrap();
    let line = mqsftp_pki::known_hosts_line("127.0.0.1", fx.port(), &other_public).unwrap();
    std::fs::write(&fx.known_hosts, format!("{line}\n")).unwrap();
    let err = mqsftp_gateway::store::connect(&sftp_config(&fx)).await.err().unwrap();
    assert!(matches!(err, StoreError::ChangedHostKey { .. }), "{err}");
}

/// After shutdown the port is closed and an open session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_and_the_listener() {
    let mut fx = Fixture::start().await;
    let store = mqsftp_gateway::store::connect(&sftp_config(&fx)).await.unwrap();
    put(&store, "x", b"1").await;
    let addr = fx.server.as_ref().unwrap().local_addr();
    tokio::time::timeout(Duration::from_secs(10), fx.server.take().unwrap().shutdown()).await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    assert!(store.create("y").await.is_err(), "the session survived shutdown");
    assert!(!fx.root.join("y").exists());
}

/// With `OpenFiles::Locked` (as a Windows store behaves, and as the test suite's embedded stores run), a file open
/// in any session is neither renamed, nor replaced, nor removed: the request fails with a message that names the
/// file, and nothing changes. Once it is closed, the same requests succeed. With the default (`Shared`, POSIX) the
/// rename of an open file succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_refuses_to_rename_replace_or_remove_an_open_file() {
    let fx = Fixture::start_with(OpenFiles::Locked).await;
    let store = mqsftp_gateway::store::connect(&sftp_config(&fx)).await.unwrap();
    let other = mqsftp_gateway::store::connect(&sftp_config(&fx)).await.unwrap();
    put(&store, "a.bin", b"first").await;
    put(&store, "new.part", b"second").await;
    let mut held = other.open("a.bin").await.unwrap();
    let refused = |r: Result<(), russh_sftp::client::error::Error>| match r {
        Err(russh_sftp::client::error::Error::Status(s)) => {
            assert_eq!(s.status_code, StatusCode::Failure, "{s:?}");
            s.error_message
        }
        other => panic!("not refused: {other:?}"),
    };
    let m = refused(store.rename("a.bin", "b.bin").await);
    assert!(m.contains("a.bin is open"), "{m}");
    let m = refused(store.rename_replacing("new.part", "a.bin").await);
    assert!(m.contains("a.bin is open"), "{m}");
    let m = refused(store.remove_file("a.bin").await);
    assert!(m.contains("a.bin is open"), "{m}");
    assert_eq!(std::fs::read(fx.root.join("a.bin")).unwrap(), b"first");
    assert_eq!(std::fs::read(fx.root.join("new.part")).unwrap(), b"second");
    assert!(!fx.root.join("b.bin").exists());
    // Another file is not affected.
    store.rename("new.part", "c.part").await.unwrap();

    held.shutdown().await.unwrap();
    store.rename_replacing("c.part", "a.bin").await.unwrap();
    assert_eq!(std::fs::read(fx.root.join("a.bin")).unwrap(), b"second");
    store.remove_file("a.bin").await.unwrap();

    let posix = Fixture::start().await;
    let store = mqsftp_gateway::store::connect(&sftp_config(&posix)).await.unwrap();
    put(&store, "a.bin", b"first").await;
    let _held = store.open("a.bin").await.unwrap();
    store.rename("a.bin", "b.bin").await.unwrap();
}
