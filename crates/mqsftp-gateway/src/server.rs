//! The gateway service: reads requests from the broker, answers them, and runs one task per transfer.
//!
//! The device id always comes from the topic (which the broker's ACL ties to the client certificate), never from a
//! payload. Acknowledgements are routed to a transfer only when they come from the device that owns it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use mqsftp_mqtt::rumqttc::{AsyncClient, QoS};
use mqsftp_mqtt::{LinkOptions, MqttError, MqttLink};
use mqsftp_proto::{
    confine, DeviceId, ErrorCode, GetParams, GetSender, Request, Response, SessionId, Topic,
    TopicKind, TransferId, MAX_TRANSFER_ID, PROTOCOL_VERSION,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::GatewayConfig;
use crate::store::{Store, StoreError};

/// Why the gateway stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The broker connection failed at start.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The store failed at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker link closed for good.
    #[error("the broker connection closed: {0}")]
    LinkClosed(String),
}

/// Control messages for a running transfer.
enum Ctl {
    Ack(u64),
    Cancel,
}

struct Shared {
    client: AsyncClient,
    store: Store,
    cfg: GatewayConfig,
    transfers: Mutex<HashMap<TransferId, (DeviceId, mpsc::UnboundedSender<Ctl>)>>,
}

impl Shared {
    async fn respond(&self, device: &DeviceId, session: &SessionId, resp: &Response) {
        let topic = Topic::response(device, session);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, resp.encode())
            .await
        {
            warn!(%device, error = %e, "could not queue a response");
        }
    }

    /// Checks the concurrency limits and registers a new transfer under one lock, so that simultaneous requests
    /// cannot overshoot them. Returns the new transfer id, or why the gateway is busy.
    fn register(
        &self,
        device: &DeviceId,
        tx: mpsc::UnboundedSender<Ctl>,
    ) -> Result<TransferId, String> {
        let limits = self.cfg.transfer;
        let mut t = self
            .transfers
            .lock()
            .map_err(|_| "transfer table unavailable".to_string())?;
        let (all, mine) = (t.len(), t.values().filter(|(d, _)| d == device).count());
        if all >= limits.max_transfers || mine >= limits.max_transfers_per_device {
            return Err(format!(
                "too many transfers in progress ({mine} for this device, limit {}; {all} in all, limit {})",
                limits.max_transfers_per_device, limits.max_transfers
            ));
        }
        let mut transfer = rand::random::<u64>() & MAX_TRANSFER_ID;
        while t.contains_key(&transfer) {
            transfer = rand::random::<u64>() & MAX_TRANSFER_ID;
        }
        t.insert(transfer, (device.clone(), tx));
        Ok(transfer)
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    link: MqttLink,
}

impl Gateway {
    /// Connects to the SFTP store (checking its host key) and to the broker, and subscribes to all devices'
    /// requests. Fails fast on a bad certificate, key or host key.
    pub async fn connect(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        let store = Store::new(cfg.sftp.clone());
        store.session().await?;
        let client_id = cfg
            .broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mqsftp-gateway-{:08x}", rand::random::<u32>()));
        let link = MqttLink::connect(
            &cfg.broker,
            LinkOptions {
                client_id,
                subscriptions: vec![Topic::all_requests_filter()],
                connect_timeout: std::time::Duration::from_secs(15),
                reconnect: true,
                inflight: 64,
            },
        )
        .await?;
        info!(broker = %cfg.broker.address(), sftp = %format!("{}:{}", cfg.sftp.host, cfg.sftp.port), "gateway connected");
        let shared = Arc::new(Shared {
            client: link.client.clone(),
            store,
            cfg,
            transfers: Mutex::new(HashMap::new()),
        });
        Ok(Gateway { shared, link })
    }

    /// Serves requests until `shutdown` completes or the broker link closes for good.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    info!("gateway shutting down");
                    let _ = self.shared.client.disconnect().await;
                    return Ok(());
                }
                msg = self.link.incoming.recv() => {
                    let Some(p) = msg else {
                        let why = self.link.closed().await;
                        return Err(GatewayError::LinkClosed(why));
                    };
                    handle_publish(&self.shared, &p.topic, p.payload);
                }
            }
        }
    }
}

fn handle_publish(shared: &Arc<Shared>, topic: &str, payload: Bytes) {
    let Some(Topic {
        device,
        kind: TopicKind::Request,
    }) = Topic::parse(topic)
    else {
        debug!(
            topic,
            "ignoring a message on a topic that is not a device request topic"
        );
        return;
    };
    let request = match Request::decode(&payload) {
        Ok(r) => r,
        Err(bad) => {
            info!(%device, reason = %bad.reason, "bad request");
            if let Some(session) = bad.session {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let resp = Response::error(bad.id, ErrorCode::BadRequest, bad.reason);
                    shared.respond(&device, &session, &resp).await;
                });
            }
            return;
        }
    };
    match request {
        Request::Ping { id, session } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared
                    .respond(
                        &device,
                        &session,
                        &Response::Pong {
                            id,
                            version: PROTOCOL_VERSION,
                        },
                    )
                    .await;
            });
        }
        Request::Get { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move { start_get(shared, device, session, id, path).await });
        }
        Request::Ack { transfer, next } => route(shared, &device, transfer, Ctl::Ack(next)),
        Request::Cancel { transfer } => route(shared, &device, transfer, Ctl::Cancel),
    }
}

fn route(shared: &Shared, device: &DeviceId, transfer: TransferId, ctl: Ctl) {
    let Ok(transfers) = shared.transfers.lock() else {
        return;
    };
    match transfers.get(&transfer) {
        // A device can only steer its own transfers.
        Some((owner, tx)) if owner == device => {
            let _ = tx.send(ctl);
        }
        Some(_) => warn!(%device, transfer, "device addressed another device's transfer; ignored"),
        None => debug!(%device, transfer, "message for an unknown or finished transfer; ignored"),
    }
}

/// Removes the transfer from the table when dropped, however the task ends.
struct Registration<'a> {
    shared: &'a Shared,
    transfer: TransferId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.shared.transfers.lock() {
            t.remove(&self.transfer);
        }
    }
}

async fn start_get(
    shared: Arc<Shared>,
    device: DeviceId,
    session: SessionId,
    id: String,
    path: String,
) {
    let fail = |code: ErrorCode, message: String| Response::error(Some(id.clone()), code, message);
    let rel = match confine(&path) {
        Ok(rel) if rel.is_root() => {
            return shared
                .respond(
                    &device,
                    &session,
                    &fail(
                        ErrorCode::IsDirectory,
                        "the device root is a directory".into(),
                    ),
                )
                .await
        }
        Ok(rel) => rel,
        Err(e) => {
            let code = if e.is_denial() {
                ErrorCode::PermissionDenied
            } else {
                ErrorCode::BadRequest
            };
            return shared
                .respond(&device, &session, &fail(code, e.to_string()))
                .await;
        }
    };
    let store_path = shared.cfg.store.path_of(&device, &rel);
    let (tx, rx) = mpsc::unbounded_channel();
    let transfer = match shared.register(&device, tx) {
        Ok(t) => t,
        Err(msg) => {
            return shared
                .respond(&device, &session, &fail(ErrorCode::Busy, msg))
                .await
        }
    };
    let span = info_span!("get", %device, transfer, path = %rel.as_str());
    async move {
        let _registration = Registration {
            shared: &shared,
            transfer,
        };
        match serve_get(
            &shared,
            &device,
            &session,
            &id,
            transfer,
            (&store_path, rel.as_str()),
            rx,
        )
        .await
        {
            Ok(stats) => info!(size = stats.0, resent = stats.1, "get complete"),
            Err((code, message)) => {
                info!(%code, %message, "get failed");
                let resp = Response::Error {
                    id: Some(id.clone()),
                    transfer: Some(transfer),
                    code,
                    message,
                };
                shared.respond(&device, &session, &resp).await;
            }
        }
    }
    .instrument(span)
    .await
}

type Failure = (ErrorCode, String);

async fn serve_get(
    shared: &Shared,
    device: &DeviceId,
    session: &SessionId,
    id: &str,
    transfer: TransferId,
    (store_path, rel): (&str, &str),
    mut rx: mpsc::UnboundedReceiver<Ctl>,
) -> Result<(u64, u64), Failure> {
    // Store errors are logged with the server path and reported with the device-relative one.
    let fail = |e: StoreError| {
        warn!(error = %e, "store operation failed");
        (e.code(), e.device_message(rel), e)
    };
    let sftp = shared.store.session().await.map_err(|e| {
        let (code, msg, _) = fail(e);
        (code, msg)
    })?;
    let sftp_err = |op: &'static str| {
        move |source| StoreError::Sftp {
            op,
            path: store_path.to_string(),
            source,
        }
    };
    let opened = async {
        let meta = sftp.metadata(store_path).await.map_err(sftp_err("stat"))?;
        if meta.is_dir() {
            return Ok(Err(meta));
        }
        let file = sftp.open(store_path).await.map_err(sftp_err("open"))?;
        Ok(Ok((meta, file)))
    };
    let (meta, file) = match opened.await {
        Ok(Ok(x)) => x,
        Ok(Err(_)) => return Err((ErrorCode::IsDirectory, format!("is a directory: {rel}"))),
        Err(e) => {
            let (code, msg, err) = fail(e);
            shared.store.note_error(&err).await;
            return Err((code, msg));
        }
    };
    let t = shared.cfg.transfer;
    let params = GetParams {
        chunk_size: t.chunk_size,
        window: t.window,
        retransmit_after: t.retransmit_after,
        give_up_after: t.give_up_after,
    };
    let size = meta.len();
    let mut sender = GetSender::new(transfer, size, params, Instant::now());
    shared
        .respond(
            device,
            session,
            &Response::GetAccepted {
                id: id.to_string(),
                transfer,
                size,
                chunk_size: params.chunk_size,
                window: params.window,
            },
        )
        .await;
    let down = Topic::down(device, session);
    let block =
        (params.chunk_size as usize * params.window as usize).max(params.chunk_size as usize);
    let mut reader = ReadAhead::spawn(file, size, block);
    loop {
        while let Some(read) = sender.poll_read() {
            let data = match reader.read(read.len as usize).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(offset = read.offset, error = %e, "read from the store failed");
                    return Err((
                        ErrorCode::Internal,
                        format!("reading from the store failed at offset {}", read.offset),
                    ));
                }
            };
            sender
                .handle_read(data)
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        }
        while let Some(chunk) = sender.poll_transmit() {
            shared
                .client
                .publish_bytes(down.clone(), QoS::AtLeastOnce, false, chunk.encode())
                .await
                .map_err(|e| (ErrorCode::Internal, format!("broker link failed: {e}")))?;
        }
        if let Some((size, sha)) = sender.poll_done() {
            shared
                .respond(
                    device,
                    session,
                    &Response::GetDone {
                        transfer,
                        size,
                        sha256: hex::encode(sha),
                    },
                )
                .await;
        }
        if sender.is_complete() {
            return Ok((size, sender.resent_bytes()));
        }
        let deadline = sender.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            ctl = rx.recv() => match ctl {
                Some(Ctl::Ack(next)) => {
                    sender.handle_ack(next, Instant::now()).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
                }
                Some(Ctl::Cancel) => return Err((ErrorCode::Internal, "cancelled by the device".into())),
                None => return Err((ErrorCode::Internal, "gateway shutting down".into())),
            },
            _ = sleep_until(deadline) => {
                sender.handle_timeout(Instant::now()).map_err(|e| (ErrorCode::Timeout, e.to_string()))?;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads the file sequentially on its own task, one block ahead of the sender, so that SFTP round trips overlap
/// with waiting for the device's acknowledgements. Holds at most two blocks (one queued, one being cut into
/// chunks), so memory per transfer stays bounded by `2 × block`.
struct ReadAhead {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    task: tokio::task::JoinHandle<()>,
}

impl ReadAhead {
    fn spawn(mut file: russh_sftp::client::fs::File, size: u64, block: usize) -> ReadAhead {
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut left = size;
            while left > 0 {
                let n = left.min(block as u64) as usize;
                let mut buf = vec![0u8; n];
                let r = file.read_exact(&mut buf).await.map(|_| Bytes::from(buf));
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    return;
                }
                left -= n as u64;
            }
        });
        ReadAhead {
            rx,
            current: Bytes::new(),
            task,
        }
    }

    /// The next `len` bytes of the file.
    async fn read(&mut self, len: usize) -> std::io::Result<Bytes> {
        if self.current.is_empty() {
            self.current = match self.rx.recv().await {
                Some(r) => r?,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file ended early",
                    ))
                }
            };
        }
        if self.current.len() < len {
            // Chunks never straddle blocks: block is a multiple of the chunk size and only the last chunk is short.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short block",
            ));
        }
        Ok(self.current.split_to(len))
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}
