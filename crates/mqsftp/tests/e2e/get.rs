use crate::support::*;

async fn round_trip(sizes: &[usize]) {
    let (stack, gw, cfg) = setup("getter").await;
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{i}-{len}.bin");
        let data = content(len, len as u64 + 7);
        put_on_store(&stack, "getter", &format!("dir/{name}"), &data);
        let mut last = None;
        let outcome = tokio::time::timeout(LIMIT, client.get(&format!("dir/{name}"), out.path(), |p| last = Some(p)))
            .await
            .expect("in time")
            .expect("get succeeds");
        assert_eq!(outcome.size, len as u64);
        assert_eq!(outcome.digest, blake3(&data), "reported hash of {name}");
        assert_eq!(sha256_file(&out.path().join(&name)), sha256(&data), "file content of {name}");
        let last = last.expect("progress reported");
        assert_eq!((last.done, last.total), (len as u64, len as u64));
    }
    // Only the verified files, no leftovers.
    assert_eq!(entries(out.path()).len(), sizes.len(), "{:?}", entries(out.path()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_round_trip() {
    round_trip(&[0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 10 * 1024 * 1024]).await;
}

/// The prototype failed at 256 MiB because it sent the whole file as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_of_300_mib_round_trips() {
    round_trip(&[300 * 1024 * 1024]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_names_and_nested_dirs() {
    let (stack, gw, cfg) = setup("names").await;
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    for rel in ["a b/c d.txt", "日本/データ 😀.bin", "x/%41%2F.dat"] {
        let data = content(5000, rel.len() as u64);
        put_on_store(&stack, "names", rel, &data);
        let target = out.path().join("got");
        client.get(rel, &target, |_| {}).await.unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(std::fs::read(&target).unwrap(), data, "{rel}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_get_concurrently_each_their_own_file() {
    let (stack, gw, cfg_a) = setup("dev-a").await;
    let cfg_b = mqsftp_device::DeviceConfig::load(&stack.device("dev-b").unwrap()).unwrap();
    let a = content(3_000_000, 1);
    let b = content(2_000_000, 2);
    put_on_store(&stack, "dev-a", "same.bin", &a);
    put_on_store(&stack, "dev-b", "same.bin", &b);
    let out = tempfile::tempdir().unwrap();
    let (pa, pb) = (out.path().join("a"), out.path().join("b"));
    let (mut ca, mut cb) = (connect(&cfg_a).await, connect(&cfg_b).await);
    let (ra, rb) = tokio::join!(ca.get("same.bin", &pa, |_| {}), cb.get("same.bin", &pb, |_| {}));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(std::fs::read(&pa).unwrap(), a);
    assert_eq!(std::fs::read(&pb).unwrap(), b);
    gw.stop().await;
}

/// The gateway closes a download's store file as soon as it has read the whole of it, not once the device has
/// acknowledged the last chunk (the chunks it may resend are kept in memory): a device that stops acknowledging
/// does not hold a handle on the store, and a small get's close does not compete with the device's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_file_is_closed_once_read_before_the_device_acknowledges() {
    use mqsftp_proto::{HashAlg, Request, Response, SessionId};
    let (stack, gw, cfg) = setup("closer").await;
    let on_store = put_on_store(&stack, "closer", "c.bin", &content(100 * 1024, 3)).canonicalize().unwrap();
    // The scan finds a file held open, here by this process, so that finding none below means something.
    let held = std::fs::File::open(&on_store).unwrap();
    assert!(holders(&on_store).contains(&std::process::id()), "the scan sees {}", on_store.display());
    drop(held);

    let mut raw = RawDevice::connect(&cfg, "close1").await;
    let session = SessionId::new("close1").unwrap();
    raw.send(&Request::Get { id: "g".into(), session, path: "c.bin".into(), offset: 0, hash: HashAlg::Blake3 }).await;
    // `get_done`: every byte has been read and sent. Nothing is acknowledged: the gateway keeps the transfer for
    // its resends (for `give_up_after`, 60 s).
    let size = raw
        .expect(|r| match r {
            Response::GetDone { size, .. } => Some(size),
            Response::Error { code, message, .. } => panic!("{code}: {message}"),
            _ => None,
        })
        .await;
    assert_eq!(size, 100 * 1024);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let open = holders(&on_store);
        if open.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} still open in {open:?} 10 s after the gateway read all of it",
            on_store.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.stop().await;
}
