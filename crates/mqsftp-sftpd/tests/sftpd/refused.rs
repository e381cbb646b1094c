use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;

use crate::common::{assert_success, text, Fixture, USER};

const DENIED: &str = "Permission denied (publickey)";

/// Nothing but the key pair on the server list gets in: no key, another key, another user name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_without_the_authorized_key_and_user_are_refused() {
    let fx = Fixture::start().await;
    let other_key = fx.dir.path().join("other_ed25519");
    mqsftp_pki::generate_ssh_key(&other_key, "intruder").unwrap();
    let cases: [(&str, &str, Option<&std::path::Path>, &[&str]); 4] = [
        ("no key", USER, None, &[]),
        (
            "no key, password and keyboard-interactive asked for",
            USER,
            None,
            &["-o", "PreferredAuthentications=password,keyboard-interactive,publickey"],
        ),
        ("unknown key", USER, Some(&other_key), &[]),
        ("wrong user", "root", Some(&fx.key), &[]),
    ];
    for (what, user, key, extra) in cases {
        let out = fx.sftp_as(user, key, "put /etc/hostname planted\n", extra).await;
        assert!(!out.status.success(), "{what}: the login succeeded");
        assert!(text(&out.stderr).contains(DENIED), "{what}: {}", text(&out.stderr));
    }
    assert!(!fx.root.join("planted").exists());
    // And the right key and user do get in.
    assert_success(&fx.sftp("pwd\n", &[]).await);
}

/// Commands, shells and terminals are refused: the server only runs the sftp subsystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_shell_and_pty_are_refused() {
    let fx = Fixture::start().await;
    let marker = fx.dir.path().join("pwned");
    let command = format!("touch {}; echo ran", marker.display());
    let host = format!("{USER}@127.0.0.1");

    let out = fx.ssh(&[&host, &command]).await;
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("ran"));
    assert!(text(&out.stderr).contains("exec request failed"), "{}", text(&out.stderr));

    let out = fx.ssh(&["-T", &host]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("shell request failed"), "{}", text(&out.stderr));

    let out = fx.ssh(&["-tt", &host, &command]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("PTY allocation request failed"), "{}", text(&out.stderr));

    let out = fx.ssh(&["-s", &host, "shell"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("subsystem request failed"), "{}", text(&out.stderr));
    assert!(!marker.exists());
}

/// `ssh -R`: the server refuses to listen for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_port_forwarding_is_refused() {
    let fx = Fixture::start().await;
    let host = format!("{USER}@127.0.0.1");
    let out = fx.ssh(&["-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9", &host]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("remote port forwarding failed"), "{}", text(&out.stderr));
}

struct Pinned(PublicKey);

impl client::Handler for Pinned {
    type Error = russh::Error;
    async fn check_server_key(&mut self, offered: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(matches!(offered, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()))
    }
}

/// Local port forwarding (direct-tcpip) and agent forwarding, asked for by a russh client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_port_and_agent_forwarding_are_refused() {
    let fx = Fixture::start().await;
    let server_key = PublicKey::from_openssh(&fx.server.as_ref().unwrap().host_public_key_openssh()).unwrap();
    let key = russh::keys::load_secret_key(&fx.key, None).unwrap();
    let config = Arc::new(client::Config::default());
    let limit = Duration::from_secs(20);
    let mut session =
        tokio::time::timeout(limit, client::connect(config, ("127.0.0.1", fx.port()), Pinned(server_key)))
            .await
            .unwrap()
            .unwrap();
    let auth = session.authenticate_publickey(USER, PrivateKeyWithHashAlg::new(Arc::new(key), None)).await.unwrap();
    assert!(matches!(auth, AuthResult::Success), "{auth:?}");

    let forward = tokio::time::timeout(limit, session.channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 4000))
        .await
        .unwrap();
    assert!(forward.is_err(), "direct-tcpip channel was opened");

    let mut channel = tokio::time::timeout(limit, session.channel_open_session()).await.unwrap().unwrap();
    channel.agent_forward(true).await.unwrap();
    let reply = tokio::time::timeout(limit, channel.wait()).await.unwrap();
    assert!(matches!(reply, Some(ChannelMsg::Failure)), "{reply:?}");

    // The same connection still serves sftp.
    channel.request_subsystem(true, "sftp").await.unwrap();
    let sftp = tokio::time::timeout(limit, russh_sftp::client::SftpSession::new(channel.into_stream()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sftp.canonicalize(".").await.unwrap(), "/");
}
