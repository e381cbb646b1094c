use std::path::Path;

use mqsftp_sftpd::{OpenFiles, Sftpd, SftpdConfig, SftpdError};

use crate::common::{init_tracing, make_keys, USER};

struct Setup {
    _dir: tempfile::TempDir,
    config: SftpdConfig,
}

fn setup() -> Setup {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (pki, host_key) = make_keys(dir.path());
    let root = dir.path().join("store");
    std::fs::create_dir(&root).unwrap();
    let config = SftpdConfig {
        root,
        host_key,
        authorized_keys: pki.join("authorized_keys"),
        user: USER.into(),
        open_files: OpenFiles::Shared,
    };
    Setup { _dir: dir, config }
}

async fn start(config: SftpdConfig) -> Result<Sftpd, SftpdError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sftpd::start(listener, config).await
}

fn names(err: &SftpdError, path: &Path) {
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn bad_configuration_is_a_typed_error_naming_the_file() {
    // Missing host key.
    let s = setup();
    let mut c = s.config.clone();
    c.host_key = c.host_key.with_file_name("missing_key");
    let err = start(c.clone()).await.err().unwrap();
    assert!(matches!(err, SftpdError::HostKey { .. }), "{err}");
    names(&err, &c.host_key);

    // A public key where the private key belongs.
    let mut c = s.config.clone();
    c.host_key = mqsftp_pki::public_key_path(&c.host_key);
    let err = start(c.clone()).await.err().unwrap();
    assert!(matches!(err, SftpdError::HostKey { .. }), "{err}");
    names(&err, &c.host_key);

    // Empty authorized_keys.
    let c = s.config.clone();
    let authorized = std::fs::read(&c.authorized_keys).unwrap();
    std::fs::write(&c.authorized_keys, "").unwrap();
    let err = start(c.clone()).await.err().unwrap();
    assert!(matches!(err, SftpdError::AuthorizedKeys { .. }), "{err}");
    names(&err, &c.authorized_keys);

    // A broken line: the error has its number.
    let key = std::fs::read_to_string(mqsftp_pki::public_key_path(&s.config.host_key)).unwrap();
    std::fs::write(&c.authorized_keys, format!("# ok\nrestrict {key}ssh-ed25519 AAAA!!broken\n")).unwrap();
    let err = start(c.clone()).await.err().unwrap();
    assert!(matches!(err, SftpdError::AuthorizedKeysLine { line: 3, .. }), "{err}");
    names(&err, &c.authorized_keys);
    std::fs::write(&c.authorized_keys, authorized).unwrap();

    // Root is a file, or missing.
    let mut c = s.config.clone();
    c.root = c.host_key.clone();
    let err = start(c.clone()).await.err().unwrap();
    assert!(matches!(err, SftpdError::Root { .. }), "{err}");
    assert!(err.to_string().contains("not a directory"), "{err}");
    c.root = c.root.with_file_name("nowhere");
    let err = start(c.clone()).await.err().unwrap();
    assert!(matches!(err, SftpdError::Root { .. }), "{err}");
    names(&err, &c.root);

    // Empty user.
    let mut c = s.config.clone();
    c.user = String::new();
    assert!(matches!(start(c).await.err().unwrap(), SftpdError::User { .. }));
}
