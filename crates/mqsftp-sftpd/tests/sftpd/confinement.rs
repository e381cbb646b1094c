use std::time::Duration;

use mqsftp_gateway::config::SftpConfig;
use russh_sftp::protocol::StatusCode;

use crate::common::{assert_success, text, Fixture, USER};

/// `secret.txt` beside the root, `root/escape` -> the root's parent, `root/inside` -> `root/sub`.
fn plant(fx: &Fixture) {
    std::fs::write(fx.dir.path().join("secret.txt"), "top secret").unwrap();
    std::fs::create_dir(fx.root.join("sub")).unwrap();
    std::fs::write(fx.root.join("sub/ok.txt"), "fine").unwrap();
    std::os::unix::fs::symlink(fx.dir.path(), fx.root.join("escape")).unwrap();
    std::os::unix::fs::symlink("sub", fx.root.join("inside")).unwrap();
}

/// OpenSSH's client: every way out fails (its `get` reports a refused path as "not found", as it globs first);
/// `ls` shows the escaping link itself but nothing behind it; a link inside the root works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_cannot_leave_the_root() {
    let fx = Fixture::start().await;
    plant(&fx);
    let dl = fx.dir.path().join("downloads");
    std::fs::create_dir(&dl).unwrap();
    let src = fx.dir.path().join("src.txt");
    std::fs::write(&src, "planted").unwrap();
    let (dl, src) = (dl.display(), src.display());
    // A leading '-' lets the batch go on after a failed command.
    let attempts = [
        format!("-get ../secret.txt {dl}/a"),
        format!("-get /../secret.txt {dl}/b"),
        format!("-get escape/secret.txt {dl}/c"),
        format!("-get /sub/../../secret.txt {dl}/d"),
        format!("-put {src} escape/planted.txt"),
        format!("-put {src} ../planted.txt"),
        "-cd escape".to_string(),
        "-cd ..".to_string(),
        "-rename sub/ok.txt escape/stolen.txt".to_string(),
    ];
    let batch = format!("{}\n-ls escape/\n-ls -l escape/secret.txt\nget inside/ok.txt {dl}/ok\n", attempts.join("\n"));
    let out = fx.sftp(&batch, &[]).await;
    assert_success(&out);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    // One error per attempt and one for `ls -l escape/secret.txt`.
    assert_eq!(errors.len(), attempts.len() + 1, "{stderr}\n{stdout}");
    assert_eq!(errors.iter().filter(|l| l.contains("ermission denied")).count(), 5, "{stderr}");
    let listed: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("sftp>")).collect();
    assert!(!listed.iter().any(|l| l.contains("secret")), "{stdout}");
    assert_eq!(std::fs::read_dir(fx.dir.path().join("downloads")).unwrap().count(), 1, "only ok was downloaded");
    assert_eq!(std::fs::read_to_string(fx.dir.path().join("downloads/ok")).unwrap(), "fine");
    assert!(!fx.dir.path().join("planted.txt").exists());
    assert!(!fx.dir.path().join("stolen.txt").exists());
    assert!(fx.root.join("sub/ok.txt").exists());
}

/// The status code of a failed request.
pub fn code<T>(result: Result<T, russh_sftp::client::error::Error>) -> StatusCode {
    match result {
        Ok(_) => panic!("the request succeeded"),
        Err(russh_sftp::client::error::Error::Status(s)) => s.status_code,
        Err(other) => panic!("not a status: {other}"),
    }
}

/// The exact status codes, through the gateway's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_get_permission_denied() {
    let fx = Fixture::start().await;
    plant(&fx);
    let store = mqsftp_gateway::store::connect(&SftpConfig {
        host: "127.0.0.1".into(),
        port: fx.port(),
        user: USER.into(),
        key: fx.key.clone(),
        known_hosts: fx.known_hosts.clone(),
        connect_timeout: Duration::from_secs(20),
        keepalive: Duration::from_secs(15),
        keepalive_max: 3,
        request_timeout: Duration::from_secs(30),
    })
    .await
    .unwrap();
    let denied = StatusCode::PermissionDenied;
    assert_eq!(code(store.metadata("../secret.txt").await), denied);
    assert_eq!(code(store.metadata("/..").await), denied);
    assert_eq!(code(store.metadata("escape/secret.txt").await), denied);
    assert_eq!(code(store.metadata("escape").await), denied);
    assert_eq!(code(store.open("escape/secret.txt").await), denied);
    assert_eq!(code(store.create("escape/new.txt").await), denied);
    assert_eq!(code(store.read_dir("escape").await), denied);
    assert_eq!(code(store.create_dir("escape/d").await), denied);
    assert_eq!(code(store.rename("sub/ok.txt", "escape/stolen.txt").await), denied);
    assert_eq!(code(store.rename_replacing("sub/ok.txt", "escape/stolen.txt").await), denied);
    assert_eq!(code(store.remove_file("escape/secret.txt").await), denied);
    assert_eq!(code(store.canonicalize("escape").await), denied);
    assert_eq!(code(store.read_link("escape").await), denied);
    // Clients cannot make links at all.
    assert_eq!(code(store.symlink("link", "/etc/passwd").await), StatusCode::OpUnsupported);
    assert!(!fx.root.join("link").exists());
    // lstat does not follow, so it shows the link itself; a link inside the root is followed.
    assert!(store.symlink_metadata("escape").await.unwrap().file_type().is_symlink());
    assert_eq!(store.read("inside/ok.txt").await.unwrap(), b"fine");
    assert_eq!(store.canonicalize("inside/ok.txt").await.unwrap(), "/sub/ok.txt");
    assert_eq!(store.canonicalize("/sub/../inside/./ok.txt").await.unwrap(), "/sub/ok.txt");
    assert_eq!(std::fs::read_to_string(fx.dir.path().join("secret.txt")).unwrap(), "top secret");
}
