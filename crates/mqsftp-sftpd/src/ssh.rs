//! The russh server side: algorithms, authentication, and what a session may ask for (the `sftp` subsystem only).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Preferred, Pty, SshId};
use tracing::{debug, info, warn, Instrument};

use crate::fs::Root;

/// Sessions (channels) one connection may have open; the gateway uses up to three.
const MAX_CHANNELS: usize = 8;

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) user: String,
    pub(crate) authorized: Vec<PublicKey>,
    pub(crate) root: Arc<Root>,
}

impl Shared {
    fn allows(&self, user: &str, key: &PublicKey) -> bool {
        user == self.user && self.authorized.iter().any(|k| k.key_data() == key.key_data())
    }
}

/// Public key only: `none`, password and keyboard-interactive are not even offered.
fn methods() -> MethodSet {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods
}

/// The russh configuration: the host key, modern algorithms, public-key auth only.
pub(crate) fn server_config(host_key: PrivateKey) -> russh::server::Config {
    // The client's order decides (RFC 4253 7.1); ours only limits the choice. AEAD ciphers only; AES-GCM first
    // where the CPU has AES instructions (OpenSSH's client prefers chacha20-poly1305 unless told otherwise).
    let mut cipher = vec![russh::cipher::CHACHA20_POLY1305, russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];
    if has_aes_instructions() {
        cipher = vec![russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM, russh::cipher::CHACHA20_POLY1305];
    }
    let preferred = Preferred {
        kex: Cow::Owned(vec![
            russh::kex::MLKEM768X25519_SHA256,
            russh::kex::CURVE25519,
            russh::kex::CURVE25519_PRE_RFC_8731,
            russh::kex::EXTENSION_SUPPORT_AS_SERVER,
            russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Owned(vec![Algorithm::Ed25519]),
        host_key_certificates: Cow::Owned(Vec::new()),
        cipher: Cow::Owned(cipher),
        // Only used with a non-AEAD cipher, which is not offered; the list must not be empty.
        mac: Cow::Owned(vec![russh::mac::HMAC_SHA512_ETM, russh::mac::HMAC_SHA256_ETM]),
        compression: Cow::Owned(vec![russh::compression::NONE]),
    };
    russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed(concat!("SSH-2.0-mqsftp_sftpd_", env!("CARGO_PKG_VERSION")))),
        methods: methods(),
        auth_rejection_time: Duration::from_secs(1),
        // OpenSSH clients start with a "none" request to learn the methods; answering it at once gives nothing away.
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        keys: vec![host_key],
        // Room for a pipelined upload: OpenSSH keeps 64 requests of up to 255 KiB in flight.
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        preferred,
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    }
}

fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// One SSH connection.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// russh runs the handler on a task of its own, outside the connection's span: events here name it.
    span: tracing::Span,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, span: tracing::Span) -> Self {
        Self { shared, channels: HashMap::new(), span }
    }

    fn refuse(&self, what: &str, channel: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
        warn!(parent: &self.span, ?channel, "refused {what}: this server offers only the sftp subsystem");
        session.channel_failure(channel)
    }
}

fn reject() -> Auth {
    Auth::Reject { proceed_with_methods: Some(methods()), partial_success: false }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        warn!(parent: &self.span, user, "refused password authentication: public keys only");
        Ok(reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        warn!(parent: &self.span, user, "refused keyboard-interactive authentication: public keys only");
        Ok(reject())
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        if self.shared.allows(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            let fingerprint = offer.public_key.fingerprint(HashAlg::Sha256);
            debug!(parent: &self.span, user, %fingerprint, "offered key not authorized");
            Ok(reject())
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256);
        if self.shared.allows(user, key.public_key) {
            info!(parent: &self.span, user, %fingerprint, "authenticated");
            Ok(Auth::Accept)
        } else {
            warn!(parent: &self.span, user, %fingerprint, "refused: user or key not authorized");
            Ok(reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_CHANNELS {
            warn!(parent: &self.span, limit = MAX_CHANNELS, "refused a session channel: too many open");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        warn!(parent: &self.span, "refused an X11 channel");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        warn!(parent: &self.span, host = host_to_connect, port = port_to_connect, "refused port forwarding");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        warn!(parent: &self.span, host = host_to_connect, port = port_to_connect, "refused a forwarded-tcpip channel");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        warn!(parent: &self.span, socket_path, "refused unix socket forwarding");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("a pty", channel, session)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("X11 forwarding", channel, session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // OpenSSH clients send LANG and the like; refusing is silent for them.
        session.channel_failure(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.refuse("a shell", channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The command is not logged: it may carry anything the client typed.
        self.refuse("a command", channel, session)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        warn!(parent: &self.span, "refused agent forwarding");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        warn!(parent: &self.span, address, port = *port, "refused remote port forwarding");
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        warn!(parent: &self.span, socket_path, "refused remote unix socket forwarding");
        Ok(false)
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            warn!(parent: &self.span, subsystem = name, "refused a subsystem other than sftp");
            return session.channel_failure(channel_id);
        }
        let Some(channel) = self.channels.remove(&channel_id) else {
            warn!(parent: &self.span, ?channel_id, "refused sftp on a channel that already runs it");
            return session.channel_failure(channel_id);
        };
        session.channel_success(channel_id)?;
        let span = tracing::info_span!(parent: &self.span, "sftp", channel = %channel_id);
        tokio::spawn(crate::sftp::serve(channel, self.shared.root.clone()).instrument(span));
        Ok(())
    }
}
