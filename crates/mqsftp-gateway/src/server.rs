//! The gateway service: reads requests from the broker, answers them, and runs one task per transfer.
//!
//! The device id always comes from the topic (which the broker's ACL ties to the client certificate), never from a
//! payload. Acknowledgements are routed to a transfer only when they come from the device that owns it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mqsftp_mqtt::{LinkOptions, MqttError, MqttLink};
use mqsftp_proto::{
    confine, Chunk, DeviceId, ErrorCode, GatewayId, HashAlg, HexDigest, PathError, RelPath, Request, Response,
    SessionId, Topic, TopicKind, TransferId, MAX_TRANSFER_ID, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::GatewayConfig;
use crate::limit::Buckets;
use crate::outbox::{Lane, Outbox};
use crate::policy::{Access, Op, Policy, PolicyCell, PolicyError};
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
    /// The policy file was refused.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Control messages for a running transfer, routed to it only from the device that owns it.
pub(crate) enum Ctl {
    /// A download acknowledgement.
    Ack(u64),
    /// The device gives up.
    Cancel,
    /// An upload chunk.
    Chunk(Chunk),
    /// Commit an upload; answer request `id` on `session`. `digest` is the file's hash when the device gives it
    /// here (required when its `put` did not).
    Commit { id: String, session: SessionId, digest: Option<HexDigest> },
    /// The device resumes this upload (after losing its connection): answer with what is held.
    Reattach(Box<crate::put::PutRequest>),
}

pub(crate) struct Shared {
    /// Everything the gateway publishes goes through here: answers before chunks.
    pub(crate) outbox: Outbox,
    pub(crate) store: Store,
    pub(crate) cfg: GatewayConfig,
    /// This gateway's id in topics: devices address a running transfer's traffic to it.
    pub(crate) id: GatewayId,
    /// Counters.
    pub(crate) stats: Arc<GatewayStats>,
    /// Uploads committed lately, so that a commit sent again gets the same answer.
    pub(crate) committed: Mutex<Committed>,
    /// The per-device policy in force.
    pub(crate) policy: PolicyCell,
    /// Rate limits of devices that have one.
    pub(crate) buckets: Buckets,
    /// Bytes downloads may read beyond their windows, all together ([`crate::get::READ_AHEAD_BUDGET`]).
    pub(crate) read_ahead: Arc<tokio::sync::Semaphore>,
    /// The window each transfer may use, shared among those running.
    pub(crate) windows: crate::limit::WindowShare,
    transfers: Mutex<HashMap<TransferId, Entry>>,
}

/// A running transfer in the table.
struct Entry {
    device: DeviceId,
    tx: mpsc::UnboundedSender<Ctl>,
    /// Bytes an upload will add to the store (for quotas); 0 for downloads.
    reserved: u64,
    /// For a download: the session and path it serves, so that the same session asking for the same file again
    /// (it resumed after an interruption) replaces it.
    key: Option<(SessionId, String)>,
}

/// What a new transfer asks of the limits in [`Shared::register`].
pub(crate) struct Claim<'a> {
    pub(crate) access: &'a Access,
    /// The id of an upload being resumed (it keeps its id, which names its temporary file).
    pub(crate) wanted: Option<TransferId>,
    /// For an upload under a quota: the bytes the device already stores, and the upload's size.
    pub(crate) quota_use: Option<(u64, u64)>,
    /// For a download: its session and path. A download of the same device, session and path still running here
    /// is one the device gave up on (its connection broke and it asked again from what it holds): it is cancelled
    /// and does not count against the limits. Without this, every broker restart during a download left a
    /// transfer re-sending to nobody until its timeout, and a few restarts in a row made the resume `busy`.
    pub(crate) supersede: Option<(SessionId, String)>,
}

impl Shared {
    /// `put_accepted` for request `id` of upload `transfer`, held up to `offset`, with this gateway's settings and
    /// the upload's share of the window as it stands now (the device keeps it for the attempt).
    pub(crate) fn put_accepted(&self, id: String, transfer: TransferId, offset: u64, hash: HashAlg) -> Response {
        let t = self.cfg.transfer;
        Response::PutAccepted {
            gateway: self.id.clone(),
            id,
            transfer,
            chunk_size: t.chunk_size,
            window: self.windows.current(),
            offset,
            hash,
        }
    }

    /// Publishes `resp` to `session` of `device`: in the stream lane for `get_done` (it follows its chunks), in the
    /// control lane, ahead of waiting chunks, for every other answer.
    pub(crate) async fn respond(&self, device: &DeviceId, session: &SessionId, resp: &Response) {
        let topic = Topic::response(device, session);
        let lane = match resp {
            Response::GetDone { .. } => Lane::Stream,
            _ => Lane::Control,
        };
        if let Err(e) = self.outbox.send(lane, topic, Bytes::from(resp.encode())).await {
            warn!(%device, error = %e, "could not queue a response");
        }
    }

    /// Checks the concurrency limits and the quota and registers a new transfer under one lock, so that
    /// simultaneous requests cannot overshoot them. Returns the new transfer id, or the code and reason of refusal.
    pub(crate) fn register(
        &self,
        device: &DeviceId,
        tx: mpsc::UnboundedSender<Ctl>,
        claim: Claim<'_>,
    ) -> Result<TransferId, Failure> {
        let busy = |m: String| (ErrorCode::Busy, m);
        let max_all = self.cfg.transfer.max_transfers;
        let max_mine = claim.access.max_transfers;
        let mut t = self.transfers.lock().map_err(|_| busy("transfer table unavailable".to_string()))?;
        if let Some(key) = &claim.supersede {
            let stale: Vec<TransferId> = t
                .iter()
                .filter(|(_, e)| &e.device == device && e.key.as_ref() == Some(key))
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                if let Some(e) = t.remove(&id) {
                    info!(%device, transfer = id, "download asked for again by its session; the old one is cancelled");
                    let _ = e.tx.send(Ctl::Cancel);
                }
            }
        }
        let (all, mine) = (t.len(), t.values().filter(|e| &e.device == device).count());
        if all >= max_all || mine >= max_mine {
            return Err(busy(format!(
                "too many transfers in progress ({mine} for this device, limit {max_mine}; {all} in all, limit {max_all})"
            )));
        }
        if let Some(w) = claim.wanted {
            if t.contains_key(&w) {
                return Err(busy(format!("upload {w} is already running here")));
            }
        }
        let mut reserved = 0;
        if let (Some(quota), Some((stored, size))) = (claim.access.quota, claim.quota_use) {
            let pending: u64 = t.values().filter(|e| &e.device == device).map(|e| e.reserved).sum();
            let need = stored.saturating_add(pending).saturating_add(size);
            if need > quota {
                return Err((
                    ErrorCode::QuotaExceeded,
                    format!(
                        "uploading {size} bytes would exceed the quota of {quota} bytes ({stored} stored, {pending} \
                         in uploads in progress; {})",
                        claim.access.rule
                    ),
                ));
            }
            reserved = size;
        }
        let mut transfer = claim.wanted.unwrap_or_else(|| rand::random::<u64>() & MAX_TRANSFER_ID);
        while t.contains_key(&transfer) {
            transfer = rand::random::<u64>() & MAX_TRANSFER_ID;
        }
        t.insert(transfer, Entry { device: device.clone(), tx, reserved, key: claim.supersede });
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
    /// Messages answered on a device's errors topic (no session to answer on).
    pub rejected: AtomicU64,
}

impl Gateway {
    /// Connects to the SFTP store (checking its host key) and to the broker, and subscribes to all devices'
    /// requests. Fails fast on a bad certificate, key or host key.
    pub async fn connect(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        let policy = Policy::for_config(&cfg)?;
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
                // The outbox keeps chunks within the broker window; answers may use the room beyond it.
                inflight: cfg.transfer.broker_window.saturating_add(crate::outbox::CONTROL_ROOM),
                queue: crate::outbox::LINK_QUEUE,
            },
        )
        .await?;
        info!(broker = %cfg.broker.address(), sftp = %format!("{}:{}", cfg.sftp.host, cfg.sftp.port), %id, "gateway connected");
        // The outbox's task ends by itself when the last transfer holding `shared` is gone.
        let window = crate::outbox::BrokerWindow { limit: cfg.transfer.broker_window, acks: link.acks.clone() };
        let (outbox, _) = Outbox::start(link.client.clone(), window);
        let windows = crate::limit::WindowShare::new(cfg.transfer.window, cfg.transfer.shared_window);
        let shared = Arc::new(Shared {
            outbox,
            store,
            cfg,
            id,
            transfers: Mutex::new(HashMap::new()),
            committed: Mutex::new(Committed::default()),
            stats: Arc::default(),
            policy: PolicyCell::new(policy),
            buckets: Buckets::default(),
            read_ahead: Arc::new(tokio::sync::Semaphore::new(crate::get::READ_AHEAD_BUDGET)),
            windows,
        });
        Ok(Gateway { shared, link })
    }

    /// This gateway's counters.
    pub fn stats(&self) -> Arc<GatewayStats> {
        self.shared.stats.clone()
    }

    /// A handle that re-reads the policy file (on SIGHUP) while the gateway runs.
    pub fn policy_reloader(&self) -> PolicyReloader {
        PolicyReloader(self.shared.clone())
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

/// Re-reads the policy file of a running gateway.
#[derive(Clone)]
pub struct PolicyReloader(Arc<Shared>);

impl PolicyReloader {
    /// Loads the policy file again. On success the new policy applies to every request that arrives from now on
    /// (running transfers keep their limits) and the number of rules is returned; on error the policy in force
    /// stays and the error names the file, line and reason.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let p = Policy::for_config(&self.0.cfg)?;
        let rules = p.rules();
        self.0.policy.set(p);
        Ok(rules)
    }
}

/// The operation a request needs the policy to allow, with the id and session to answer a refusal on.
fn needs(request: &Request) -> Option<(Op, &str, &SessionId)> {
    Some(match request {
        Request::Get { id, session, .. } => (Op::Get, id, session),
        Request::Put { id, session, .. } => (Op::Put, id, session),
        Request::List { id, session, .. } | Request::Stat { id, session, .. } => (Op::Ls, id, session),
        Request::Remove { id, session, .. } => (Op::Rm, id, session),
        Request::Rename { id, session, .. } => (Op::Mv, id, session),
        Request::Mkdir { id, session, .. } => (Op::Mkdir, id, session),
        Request::Ping { .. } | Request::Commit { .. } | Request::Ack { .. } | Request::Cancel { .. } => return None,
    })
}

fn handle_publish(shared: &Arc<Shared>, topic: &str, payload: Bytes) {
    let device = match Topic::parse(topic) {
        Some(Topic { device, kind: TopicKind::Request }) => device,
        Some(Topic { device, kind: TopicKind::Direct(g) }) if g == shared.id => device,
        Some(Topic { device, kind: TopicKind::Up(g) }) if g == shared.id => {
            match Chunk::decode(payload) {
                Ok(chunk) => {
                    let transfer = chunk.transfer;
                    if route(shared, &device, transfer, Ctl::Chunk(chunk)).is_err() {
                        let why = format!("upload chunk for transfer {transfer}, which is not an upload of this device in progress on this gateway");
                        report_unaddressed(shared, device, Some(transfer), why);
                    }
                }
                // A corrupt chunk is dropped (the device resends what is not acknowledged) and reported.
                Err(e) => {
                    debug!(%device, error = %e, "dropping a bad upload chunk");
                    report_unaddressed(shared, device, None, format!("bad upload chunk: {e}"));
                }
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
            match bad.session {
                Some(session) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let resp = Response::error(bad.id, ErrorCode::BadRequest, bad.reason);
                        shared.respond(&device, &session, &resp).await;
                    });
                }
                None => report_unaddressed(shared, device, None, bad.reason),
            }
            return;
        }
    };
    let access = Arc::new(shared.policy.get().access(&device));
    if let Some((op, id, session)) = needs(&request) {
        if let Err(message) = access.check(&device, op) {
            info!(%device, %op, "denied by policy");
            let (shared, resp, session) = (
                shared.clone(),
                Response::error(Some(id.to_string()), ErrorCode::PermissionDenied, message),
                session.clone(),
            );
            tokio::spawn(async move { shared.respond(&device, &session, &resp).await });
            return;
        }
    }
    match request {
        Request::Ping { id, session } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.respond(&device, &session, &Response::Pong { id, version: PROTOCOL_VERSION }).await;
            });
        }
        Request::Get { id, session, path, offset, hash } => {
            tokio::spawn(crate::get::start_get(shared.clone(), device, access, session, id, (path, offset, hash)));
        }
        Request::Put { id, session, path, size, hash, digest, overwrite, resume } => {
            // An upload this gateway still runs (the device lost only its broker connection) takes the device back;
            // otherwise a new task adopts what the store holds.
            let put = crate::put::PutRequest { id, session, path, size, hash, digest, overwrite, resume };
            let committed_size = resume.and_then(|t| shared.committed.lock().ok()?.size_of(&device, t));
            if let (Some(t), Some(size)) = (resume, committed_size) {
                // Already committed (the answer to the commit was lost): let the device commit again.
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared.respond(&device, &put.session, &shared.put_accepted(put.id, t, size, put.hash)).await;
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
            tokio::spawn(crate::put::start_put(shared.clone(), device, access, put));
        }
        Request::Commit { id, session, transfer, digest } => {
            if let Err(Ctl::Commit { id, session, .. }) =
                route(shared, &device, transfer, Ctl::Commit { id, session, digest })
            {
                let shared = shared.clone();
                tokio::spawn(async move { answer_stale_commit(&shared, &device, &session, transfer, id).await });
            }
        }
        Request::List { id, session, path, offset, limit } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::list(&shared, &access, &path, offset, limit).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Stat { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::stat(&shared, &access, &path).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Remove { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::remove(&shared, &access, &path).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Mkdir { id, session, path } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::mkdir(&shared, &access, &path).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Rename { id, session, from, to, overwrite } => {
            let shared = shared.clone();
            tokio::spawn(async move {
                let r = crate::ops::rename(&shared, &access, &from, &to, overwrite).await;
                shared.respond(&device, &session, &answer(id, r)).await;
            });
        }
        Request::Ack { transfer, next } => {
            if route(shared, &device, transfer, Ctl::Ack(next)).is_err() {
                let why = format!(
                    "ack for transfer {transfer}, which is not a download of this device in progress on this gateway"
                );
                report_unaddressed(shared, device, Some(transfer), why);
            }
        }
        Request::Cancel { transfer } => {
            if route(shared, &device, transfer, Ctl::Cancel).is_err() {
                let why = format!(
                    "cancel of transfer {transfer}, which is not a transfer of this device in progress on this gateway"
                );
                report_unaddressed(shared, device, Some(transfer), why);
            }
        }
    }
}

/// Answers a message that names no session on the device's errors topic ([`Topic::errors`]), so that even
/// garbage gets a reason a device (or its developer) can read.
fn report_unaddressed(shared: &Arc<Shared>, device: DeviceId, transfer: Option<TransferId>, reason: String) {
    shared.stats.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outbox = shared.outbox.clone();
    tokio::spawn(async move {
        let resp = Response::Error { id: None, transfer, code: ErrorCode::BadRequest, message: reason };
        if let Err(e) = outbox.send(Lane::Control, Topic::errors(&device), Bytes::from(resp.encode())).await {
            debug!(%device, error = %e, "could not queue an error report");
        }
    });
}

/// Hands `ctl` to `transfer` if `device` owns it; gives it back when there is no such transfer of this device.
fn route(shared: &Shared, device: &DeviceId, transfer: TransferId, ctl: Ctl) -> Result<(), Ctl> {
    let Ok(transfers) = shared.transfers.lock() else {
        return Err(ctl);
    };
    match transfers.get(&transfer) {
        // A device can only steer its own transfers.
        Some(Entry { device: owner, tx, .. }) if owner == device => tx.send(ctl).map_err(|e| e.0),
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
            Some((owner, Response::Committed { transfer, size, digest, durable, .. })) if owner == device => {
                Some(Response::Committed {
                    id: id.to_string(),
                    transfer: *transfer,
                    size: *size,
                    digest: digest.clone(),
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
