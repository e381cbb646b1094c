//! The gateway service: reads requests from the broker, answers them, and runs one task per transfer.
//!
//! The device id always comes from the topic (which the broker's ACL ties to the client certificate), never from a
//! payload. Acknowledgements are routed to a transfer only when they come from the device that owns it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mqsftp_mqtt::rumqttc::{AsyncClient, QoS};
use mqsftp_mqtt::{LinkOptions, MqttError, MqttLink};
use mqsftp_proto::{
    confine, Chunk, DeviceId, ErrorCode, GatewayId, PathError, RelPath, Request, Response, SessionId, Topic, TopicKind,
    TransferId, MAX_TRANSFER_ID, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

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

/// Control messages for a running transfer, routed to it only from the device that owns it.
pub(crate) enum Ctl {
    /// A download acknowledgement.
    Ack(u64),
    /// The device gives up.
    Cancel,
    /// An upload chunk.
    Chunk(Chunk),
    /// Commit an upload; answer request `id` on `session`.
    Commit { id: String, session: SessionId },
    /// The device resumes this upload (after losing its connection): answer with what is held.
    Reattach(Box<crate::put::PutRequest>),
}

pub(crate) struct Shared {
    pub(crate) client: AsyncClient,
    pub(crate) store: Store,
    pub(crate) cfg: GatewayConfig,
    /// This gateway's id in topics: devices address a running transfer's traffic to it.
    pub(crate) id: GatewayId,
    /// Counters.
    pub(crate) stats: Arc<GatewayStats>,
    /// Uploads committed lately, so that a commit sent again gets the same answer.
    pub(crate) committed: Mutex<Committed>,
    transfers: Mutex<HashMap<TransferId, (DeviceId, mpsc::UnboundedSender<Ctl>)>>,
}

impl Shared {
    pub(crate) async fn respond(&self, device: &DeviceId, session: &SessionId, resp: &Response) {
        let topic = Topic::response(device, session);
        if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, false, resp.encode()).await {
            warn!(%device, error = %e, "could not queue a response");
        }
    }

    /// Checks the concurrency limits and registers a new transfer under one lock, so that simultaneous requests
    /// cannot overshoot them. Returns the new transfer id, or why the gateway is busy.
    /// `wanted`: the id of an upload being resumed (it keeps its id, which names its temporary file).
    pub(crate) fn register(
        &self,
        device: &DeviceId,
        tx: mpsc::UnboundedSender<Ctl>,
        wanted: Option<TransferId>,
    ) -> Result<TransferId, String> {
        let limits = self.cfg.transfer;
        let mut t = self.transfers.lock().map_err(|_| "transfer table unavailable".to_string())?;
        let (all, mine) = (t.len(), t.values().filter(|(d, _)| d == device).count());
        if all >= limits.max_transfers || mine >= limits.max_transfers_per_device {
            return Err(format!(
                "too many transfers in progress ({mine} for this device, limit {}; {all} in all, limit {})",
                limits.max_transfers_per_device, limits.max_transfers
            ));
        }
        if let Some(w) = wanted {
            if t.contains_key(&w) {
                return Err(format!("upload {w} is already running here"));
            }
        }
        let mut transfer = wanted.unwrap_or_else(|| rand::random::<u64>() & MAX_TRANSFER_ID);
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

/// Counters of a running gateway, readable while it runs (for tests, benchmarks and logs).
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Chunk data bytes published to devices (downloads), re-sends included.
    pub sent_bytes: AtomicU64,
    /// Chunk data bytes received from devices (uploads), duplicates included.
    pub received_bytes: AtomicU64,
}

impl Gateway {
    /// Connects to the SFTP store (checking its host key) and to the broker, and subscribes to all devices'
    /// requests. Fails fast on a bad certificate, key or host key.
    pub async fn connect(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        let store = Store::new(cfg.sftp.clone());
        store.session().await?;
        // A fresh id per start: transfers do not outlive the process that held them.
        let id = GatewayId::from_random(rand::random());
        // The configured client id is a prefix: several gateways may share one gateway.toml, and two MQTT clients
        // with one id would take each other's connection over and over.
        let prefix = cfg.broker.client_id.as_deref().unwrap_or("mqsftp-gateway");
        let client_id = format!("{prefix}-{id}");
        let link = MqttLink::connect(
            &cfg.broker,
            LinkOptions {
                client_id,
                subscriptions: vec![Topic::shared_requests_filter(), Topic::direct_filter(&id), Topic::up_filter(&id)],
                connect_timeout: std::time::Duration::from_secs(15),
                reconnect: true,
                inflight: 64,
            },
        )
        .await?;
        info!(broker = %cfg.broker.address(), sftp = %format!("{}:{}", cfg.sftp.host, cfg.sftp.port), %id, "gateway connected");
        let shared = Arc::new(Shared {
            client: link.client.clone(),
            store,
            cfg,
            id,
            transfers: Mutex::new(HashMap::new()),
            committed: Mutex::new(Committed::default()),
            stats: Arc::default(),
        });
        Ok(Gateway { shared, link })
    }

    /// This gateway's counters.
    pub fn stats(&self) -> Arc<GatewayStats> {
        self.shared.stats.clone()
    }

    /// This gateway's id (the `{gateway}` level of its transfer topics).
    pub fn id(&self) -> &GatewayId {
        &self.shared.id
    }

    /// Serves requests until `shutdown` completes or the broker link closes for good.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        tokio::pin!(shutdown);
        let sweeper = {
            let shared = self.shared.clone();
            let every = (shared.cfg.transfer.upload_expiry / 2).max(std::time::Duration::from_secs(1));
            tokio::spawn(async move {
                loop {
                    crate::sweep::sweep(&shared).await;
                    tokio::time::sleep(every).await;
                }
            })
        };
        let _stop_sweeper = AbortOnDrop(sweeper);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    info!("gateway shutting down");
                    // Stop taking new requests first, so that none is handed to a gateway that is going away.
                    self.link.close(&[Topic::shared_requests_filter()], std::time::Duration::from_secs(5)).await;
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
    let device = match Topic::parse(topic) {
        Some(Topic { device, kind: TopicKind::Request }) => device,
        Some(Topic { device, kind: TopicKind::Direct(g) }) if g == shared.id => device,
        Some(Topic { device, kind: TopicKind::Up(g) }) if g == shared.id => {
            match Chunk::decode(payload) {
                Ok(chunk) => {
                    let _ = route(shared, &device, chunk.transfer, Ctl::Chunk(chunk));
                }
                // A corrupt chunk is dropped: the device resends what is not acknowledged.
                Err(e) => debug!(%device, error = %e, "dropping a bad upload chunk"),
            }
            return;
        }
        _ => {
            debug!(topic, "ignoring a message on a topic that is not a device request or upload topic");
            return;
        }
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
                shared.respond(&device, &session, &Response::Pong { id, version: PROTOCOL_VERSION }).await;
            });
        }
        Request::Get { id, session, path, offset } => {
            tokio::spawn(crate::get::start_get(shared.clone(), device, session, id, (path, offset)));
        }
        Request::Put { id, session, path, size, sha256, overwrite, resume } => {
            // An upload this gateway still runs (the device lost only its broker connection) takes the device back;
            // otherwise a new task adopts what the store holds.
            let put = crate::put::PutRequest { id, session, path, size, sha256, overwrite, resume };
            let committed_size = resume.and_then(|t| shared.committed.lock().ok()?.size_of(&device, t));
            if let (Some(t), Some(size)) = (resume, committed_size) {
                // Already committed (the answer to the commit was lost): let the device commit again.
                let shared = shared.clone();
                tokio::spawn(async move {
                    let t_cfg = shared.cfg.transfer;
                    let resp = Response::PutAccepted {
                        id: put.id,
                        transfer: t,
                        gateway: shared.id.clone(),
                        chunk_size: t_cfg.chunk_size,
                        window: t_cfg.window,
                        offset: size,
                    };
                    shared.respond(&device, &put.session, &resp).await;
                });
                return;
            }
            let put = match resume {
                Some(t) => match route(shared, &device, t, Ctl::Reattach(Box::new(put))) {
                    Ok(()) => return,
                    Err(Ctl::Reattach(put)) => *put,
                    Err(_) => return,
                },
                None => put,
            };
            tokio::spawn(crate::put::start_put(shared.clone(), device, put));
        }
        Request::Commit { id, session, transfer } => {
            if let Err(Ctl::Commit { id, session }) = route(shared, &device, transfer, Ctl::Commit { id, session }) {
                let shared = shared.clone();
                tokio::spawn(async move { answer_stale_commit(&shared, &device, &session, transfer, id).await });
            }
        }
        Request::List { id, session, path, offset, limit } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::list(&shared, &device, &path, offset, limit).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Stat { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::stat(&shared, &device, &path).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Remove { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::remove(&shared, &device, &path).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Mkdir { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::mkdir(&shared, &device, &path).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Rename { id, session, from, to, overwrite } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::rename(&shared, &device, &from, &to, overwrite).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Ack { transfer, next } => {
            let _ = route(shared, &device, transfer, Ctl::Ack(next));
        }
        Request::Cancel { transfer } => {
            let _ = route(shared, &device, transfer, Ctl::Cancel);
        }
    }
}

/// Hands `ctl` to `transfer` if `device` owns it; gives it back when there is no such transfer of this device.
fn route(shared: &Shared, device: &DeviceId, transfer: TransferId, ctl: Ctl) -> Result<(), Ctl> {
    let Ok(transfers) = shared.transfers.lock() else {
        return Err(ctl);
    };
    match transfers.get(&transfer) {
        // A device can only steer its own transfers.
        Some((owner, tx)) if owner == device => tx.send(ctl).map_err(|e| e.0),
        Some(_) => {
            warn!(%device, transfer, "device addressed another device's transfer; ignored");
            Err(ctl)
        }
        None => {
            debug!(%device, transfer, "message for an unknown or finished transfer; ignored");
            Err(ctl)
        }
    }
}

/// A commit for a transfer that is no longer running: the remembered answer if it was committed, else an error.
pub(crate) async fn answer_stale_commit(
    shared: &Shared,
    device: &DeviceId,
    session: &SessionId,
    transfer: TransferId,
    id: String,
) {
    let remembered = shared.committed.lock().ok().and_then(|c| c.answer(device, transfer, &id));
    let resp = remembered.unwrap_or_else(|| {
        Response::error(Some(id), ErrorCode::BadRequest, format!("no upload {transfer} in progress or committed here"))
    });
    shared.respond(device, session, &resp).await;
}

/// The response to a simple request: its result, or an error naming the request.
fn answer(id: String, result: Result<OpResult, Failure>) -> Response {
    match result {
        Ok(OpResult::Listing { entries, next }) => Response::Listing { id, entries, next },
        Ok(OpResult::Stat(entry)) => Response::Stat { id, entry },
        Ok(OpResult::Done) => Response::Done { id },
        Err((code, message)) => Response::error(Some(id), code, message),
    }
}

/// What a simple (non-transfer) operation produced.
pub(crate) enum OpResult {
    /// A page of a listing.
    Listing { entries: Vec<mqsftp_proto::Entry>, next: Option<u64> },
    /// A stat.
    Stat(mqsftp_proto::Entry),
    /// Done, nothing to report.
    Done,
}

/// Removes the transfer from the table when dropped, however the task ends.
pub(crate) struct Registration<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) transfer: TransferId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.shared.transfers.lock() {
            t.remove(&self.transfer);
        }
    }
}

/// A failure to report to the device: its code and a message naming the device-relative path.
pub(crate) type Failure = (ErrorCode, String);

/// Confines a device path that must name something below the root (not the root itself).
pub(crate) fn confine_file(path: &str) -> Result<RelPath, Failure> {
    match confine(path) {
        Ok(rel) if rel.is_root() => Err((ErrorCode::IsDirectory, "the device root is a directory".into())),
        Ok(rel) => Ok(rel),
        Err(e) => Err(path_failure(&e)),
    }
}

/// The code for a refused path: escapes are denials, the rest malformed requests.
pub(crate) fn path_failure(e: &PathError) -> Failure {
    let code = if e.is_denial() { ErrorCode::PermissionDenied } else { ErrorCode::BadRequest };
    (code, e.to_string())
}

/// Sleeps until `deadline`, or forever when there is none.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The answers to the most recent commits, by transfer, so that a commit sent again (after a lost answer or a
/// reconnect) gets the same answer instead of a second file.
#[derive(Default)]
pub(crate) struct Committed {
    answers: HashMap<TransferId, (DeviceId, Response)>,
    order: std::collections::VecDeque<TransferId>,
}

/// Commits remembered per gateway process.
const COMMITTED_REMEMBERED: usize = 4096;

impl Committed {
    pub(crate) fn insert(&mut self, transfer: TransferId, device: DeviceId, answer: Response) {
        if self.order.len() >= COMMITTED_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
        self.order.push_back(transfer);
        self.answers.insert(transfer, (device, answer));
    }

    /// The size of `device`'s committed upload `transfer`, if it is remembered.
    fn size_of(&self, device: &DeviceId, transfer: TransferId) -> Option<u64> {
        match self.answers.get(&transfer) {
            Some((owner, Response::Committed { size, .. })) if owner == device => Some(*size),
            _ => None,
        }
    }

    /// The answer for `transfer` of `device`, re-addressed to request `id`.
    fn answer(&self, device: &DeviceId, transfer: TransferId, id: &str) -> Option<Response> {
        match self.answers.get(&transfer) {
            Some((owner, Response::Committed { transfer, size, sha256, durable, .. })) if owner == device => {
                Some(Response::Committed {
                    id: id.to_string(),
                    transfer: *transfer,
                    size: *size,
                    sha256: sha256.clone(),
                    durable: *durable,
                })
            }
            _ => None,
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
