use mqsftp_device::{EntryKind, ErrorCode};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_ls_stat_mv_rm() {
    let (stack, gw, cfg) = setup("ops").await;
    let mut c = connect(&cfg).await;
    assert!(c.list("").await.unwrap().is_empty(), "a new device has an empty root");
    c.mkdir("docs").await.unwrap();
    assert_eq!(remote_code(c.mkdir("docs").await.unwrap_err()), ErrorCode::Exists);
    assert_eq!(remote_code(c.mkdir("no/such/parent").await.unwrap_err()), ErrorCode::NotFound);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    std::fs::write(&local, b"12345").unwrap();
    c.put(&local, "docs/a.txt", false, |_| {}).await.unwrap();
    c.put(&local, "b.txt", false, |_| {}).await.unwrap();

    let root = c.list("").await.unwrap();
    let names: Vec<_> = root.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(names, vec![("b.txt", EntryKind::File), ("docs", EntryKind::Dir)]);
    let st = c.stat("docs/a.txt").await.unwrap();
    assert_eq!((st.name.as_str(), st.size, st.kind), ("a.txt", 5, EntryKind::File));
    assert!(st.mtime.is_some());
    assert_eq!(remote_code(c.stat("nope").await.unwrap_err()), ErrorCode::NotFound);

    assert_eq!(remote_code(c.rename("b.txt", "docs/a.txt", false).await.unwrap_err()), ErrorCode::Exists);
    c.rename("b.txt", "docs/c.txt", false).await.unwrap();
    c.rename("docs/c.txt", "docs/a.txt", true).await.unwrap();
    assert_eq!(c.list("docs").await.unwrap().len(), 1);

    assert_eq!(remote_code(c.remove("docs").await.unwrap_err()), ErrorCode::NotEmpty);
    c.remove("docs/a.txt").await.unwrap();
    c.remove("docs").await.unwrap();
    assert_eq!(remote_code(c.remove("docs").await.unwrap_err()), ErrorCode::NotFound);
    assert!(c.list("").await.unwrap().is_empty());
    assert!(entries(&stack.device_root("ops")).is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_directories_are_listed_in_pages() {
    let (stack, gw, cfg) = setup("pages").await;
    let big = stack.device_root("pages").join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..2500 {
        std::fs::write(big.join(format!("f{i:05}")), b"").unwrap();
    }
    let mut c = connect(&cfg).await;
    let (page, next) = c.list_page("big", 0, Some(1000)).await.unwrap();
    assert_eq!((page.len(), next), (1000, Some(1000)));
    assert_eq!(page[0].name, "f00000");
    let (page, next) = c.list_page("big", 2000, Some(1000)).await.unwrap();
    assert_eq!((page.len(), next), (500, None));
    assert_eq!(page[499].name, "f02499");
    let all = c.list("big").await.unwrap();
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].name < w[1].name), "sorted");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_confined_to_the_device_root() {
    let (stack, gw, cfg) = setup("cage").await;
    put_on_store(&stack, "victim", "secret.txt", b"not yours");
    put_on_store(&stack, "cage", "mine.txt", b"mine");
    let mut c = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    std::fs::write(&local, b"x").unwrap();
    let denied = ErrorCode::PermissionDenied;
    assert_eq!(remote_code(c.list("../victim").await.unwrap_err()), denied);
    assert_eq!(remote_code(c.list("/").await.unwrap_err()), denied);
    assert_eq!(remote_code(c.stat("../victim/secret.txt").await.unwrap_err()), denied);
    assert_eq!(remote_code(c.remove("../victim/secret.txt").await.unwrap_err()), denied);
    assert_eq!(remote_code(c.mkdir("../victim/new").await.unwrap_err()), denied);
    assert_eq!(remote_code(c.rename("mine.txt", "../victim/stolen.txt", false).await.unwrap_err()), denied);
    assert_eq!(remote_code(c.rename("../victim/secret.txt", "got.txt", false).await.unwrap_err()), denied);
    assert_eq!(remote_code(c.put(&local, "../victim/planted.txt", false, |_| {}).await.unwrap_err()), denied);
    assert_eq!(remote_code(c.remove("").await.unwrap_err()), denied, "the root itself cannot be removed");
    assert_eq!(entries(&stack.device_root("victim")), vec!["secret.txt".to_string()]);
    assert_eq!(entries(&stack.device_root("cage")), vec!["mine.txt".to_string()]);
    gw.stop().await;
}
