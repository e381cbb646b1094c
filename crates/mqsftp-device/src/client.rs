//! The device client: one MQTT connection, requests answered on this client's own session topics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqsftp_mqtt::rumqttc::{AsyncClient, QoS};
use mqsftp_mqtt::{LinkOptions, MqttLink};
use mqsftp_proto::{
    Chunk, DeviceId, Digest, Entry, ErrorCode, GatewayId, HashAlg, ReceiveError, Received, Receiver, Request, Response,
    Sender, SessionId, StreamParams, Topic, TopicKind, TransferId,
};
use tracing::debug;

use crate::file_io::{CommitError, FileReader, PartWriter};
use crate::{DeviceConfig, DeviceError};

/// Progress of a transfer, reported after every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Total bytes.
    pub total: u64,
}

/// The result of a verified download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
    /// Where the file was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its hash, verified (the algorithm the client asked for, or SHA-256 from a gateway that knows no other).
    pub digest: Digest,
    /// Bytes that arrived more than once (after interruptions, resumes and restarts); 0 on an undisturbed download.
    pub resent_bytes: u64,
    /// Times the download started again from nothing because what was received failed verification (a chunk
    /// corrupted in transit that still passed its CRC32C, or a part file left by another version of the file).
    pub restarts: u32,
    /// Chunk frames on this client's download topic that were dropped during the download because they did not
    /// decode (most often a CRC32C mismatch: data corrupted in transit). The gateway sends them again.
    pub bad_frames: u64,
}

/// The result of a committed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The remote path, as given.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Its hash, as the gateway verified it.
    pub digest: Digest,
    /// Whether the store confirmed an fsync before the rename.
    pub durable: bool,
    /// Bytes sent more than once (after interruptions and resumes); 0 on an undisturbed upload.
    pub resent_bytes: u64,
}

/// A connected device client.
pub struct Client {
    device: DeviceId,
    session: SessionId,
    link: MqttLink,
    /// Broker settings and MQTT options, to reconnect after the broker went away.
    broker: mqsftp_mqtt::BrokerConfig,
    options: LinkOptions,
    timeout: Duration,
    /// The algorithm transfers are verified with.
    hash: HashAlg,
    next_id: u64,
    /// A transfer whose cancel could not be sent because the connection was down; sent after reconnecting so that
    /// the gateway stops re-sending to nobody.
    orphan: Option<(TransferId, GatewayId)>,
    /// Frames on the download topic dropped because they did not decode, since the client connected.
    bad_frames: u64,
}

/// Attempts of one `get` (a first try and resumes) before a transient failure is reported.
const GET_ATTEMPTS: u32 = 30;

/// Tries allowed after a stall in which nothing moved (a gateway accepted the transfer, then died before it sent or
/// acknowledged anything) or an unanswered request (it reached a gateway that died before answering), before the
/// failure is reported; any progress resets the count. Each try first waits (up to the timeout) until some gateway
/// answers a ping, so with no gateway at all the failure comes after two timeouts.
const IDLE_RESUMES: u32 = 2;

/// Pause before resuming a transfer after the gateway reported the store `unavailable`.
const STORE_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// First pause after a `busy` answer; each further one doubles, up to [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE_FIRST: Duration = Duration::from_millis(100);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The pauses of a transfer whose request is answered `busy` (the gateway is at one of its concurrent-transfer
/// limits): each longer than the last, jittered to 50–100 % so that devices refused together do not all come back
/// together, and at most the transfer timeout in all; then the `busy` error is reported.
struct BusyBackoff {
    next: Duration,
    waited: Duration,
    limit: Duration,
}

impl BusyBackoff {
    fn new(limit: Duration) -> Self {
        BusyBackoff { next: BUSY_PAUSE_FIRST, waited: Duration::ZERO, limit }
    }

    /// Waits before the next try; `false` (at once) when the time for waiting is used up.
    async fn pause(&mut self) -> bool {
        if self.waited >= self.limit {
            return false;
        }
        let pause = self.next.mul_f64(rand::random::<f64>().mul_add(0.5, 0.5)).min(self.limit - self.waited);
        tokio::time::sleep(pause).await;
        self.waited += pause;
        self.next = (self.next * 2).min(BUSY_PAUSE_MAX);
        true
    }
}

/// Downloads of one `get`, each from nothing, whose received data fails verification before the failure is
/// reported: data corrupted on the way (with a valid CRC32C, or it would have been dropped) is fetched again, a
/// store or gateway that keeps sending a wrong file is not fetched forever.
const VERIFY_ATTEMPTS: u32 = 3;

enum Incoming {
    Response(Response),
    Chunk(Chunk),
}

/// Why one attempt of a download failed: like any request, or because what was received failed verification
/// (then the part file is worthless and the download starts again from nothing).
enum GetFailure {
    Device(DeviceError),
    Verify(ReceiveError),
}

impl From<DeviceError> for GetFailure {
    fn from(e: DeviceError) -> Self {
        GetFailure::Device(e)
    }
}

impl From<ReceiveError> for GetFailure {
    fn from(e: ReceiveError) -> Self {
        GetFailure::Verify(e)
    }
}

impl Client {
    /// Connects to the broker with the device's certificate and subscribes to this session's topics. Fails with
    /// [`DeviceError::Mqtt`] when TLS fails either way or the broker's ACL refuses the topics.
    pub async fn connect(cfg: &DeviceConfig) -> Result<Client, DeviceError> {
        let session = SessionId::from_random(rand::random());
        let device = cfg.device_id.clone();
        let client_id = cfg.broker.client_id.clone().unwrap_or_else(|| format!("mqsftp-{device}-{session}"));
        let options = LinkOptions {
            client_id,
            subscriptions: vec![Topic::response(&device, &session), Topic::down(&device, &session)],
            connect_timeout: cfg.transfer.timeout,
            reconnect: false,
            inflight: 32,
            queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
        };
        let link = MqttLink::connect(&cfg.broker, options.clone()).await?;
        Ok(Client {
            device,
            session,
            link,
            broker: cfg.broker.clone(),
            options,
            timeout: cfg.transfer.timeout,
            hash: cfg.transfer.hash,
            next_id: 0,
            orphan: None,
            bad_frames: 0,
        })
    }

    /// The algorithm later transfers are verified with (`[transfer] hash` in `device.toml` until changed here).
    pub fn set_hash(&mut self, hash: HashAlg) {
        self.hash = hash;
    }

    /// After a broker restart the gateways reconnect too, on their own schedule; a request published before one has
    /// subscribed again would be dropped by the broker. So ping (harmless to repeat) until a gateway answers.
    async fn await_gateway(&mut self, deadline: tokio::time::Instant) -> Result<(), DeviceError> {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.ping_within(left.min(Duration::from_millis(500))).await {
                Ok(_) => return Ok(()),
                Err(DeviceError::NoGateway { .. }) if !left.is_zero() => {}
                Err(DeviceError::NoGateway { .. }) => return Err(DeviceError::NoGateway { after: self.timeout }),
                Err(e) => return Err(e),
            }
        }
    }

    /// Gets ready to try again after `e`: reconnects after a lost connection; after a gateway fell silent, waits
    /// (up to the timeout) until some gateway answers.
    async fn recover(&mut self, e: &DeviceError) -> Result<(), DeviceError> {
        match e {
            DeviceError::Closed(_) => self.reconnect().await,
            _ => self.await_gateway(tokio::time::Instant::now() + self.timeout).await,
        }
    }

    /// Connects again (same session) after the broker connection broke, retrying for up to the timeout.
    async fn reconnect(&mut self) -> Result<(), DeviceError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            match MqttLink::connect(&self.broker, self.options.clone()).await {
                Ok(link) => {
                    self.link = link;
                    if let Some((transfer, gateway)) = self.orphan.take() {
                        let _ = self.send_to(&gateway, &Request::Cancel { transfer }).await;
                    }
                    return self.await_gateway(deadline).await;
                }
                Err(e) if e.is_tls() || tokio::time::Instant::now() + pause >= deadline => return Err(e.into()),
                Err(e) => {
                    debug!(error = %e, "broker not back yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// This client's device id.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    fn mqtt(&self) -> &AsyncClient {
        &self.link.client
    }

    fn request_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.session, self.next_id)
    }

    /// Publishes a new request, for whichever gateway the broker hands it to.
    async fn send(&self, req: &Request) -> Result<(), DeviceError> {
        self.publish(Topic::request(&self.device), req).await
    }

    /// Publishes a request about a transfer to the gateway holding it.
    async fn send_to(&self, gateway: &GatewayId, req: &Request) -> Result<(), DeviceError> {
        self.publish(Topic::direct(&self.device, gateway), req).await
    }

    async fn publish(&self, topic: String, req: &Request) -> Result<(), DeviceError> {
        self.mqtt()
            .publish(topic, QoS::AtLeastOnce, false, req.encode())
            .await
            .map_err(|e| DeviceError::Closed(e.to_string()))
    }

    /// Waits for the next message for this session, up to `timeout`. `Ok(None)` on timeout.
    async fn next(&mut self, timeout: Duration) -> Result<Option<Incoming>, DeviceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.link.incoming.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(DeviceError::Closed(self.link.closed().await)),
                Ok(Some(p)) => p,
            };
            match Topic::parse(&msg.topic).map(|t| t.kind) {
                Some(TopicKind::Response(s)) if s == self.session => match Response::decode(&msg.payload) {
                    Ok(r) => return Ok(Some(Incoming::Response(r))),
                    Err(e) => debug!(error = %e, "ignoring an undecodable response"),
                },
                Some(TopicKind::Down(s)) if s == self.session => match Chunk::decode(msg.payload) {
                    Ok(c) => return Ok(Some(Incoming::Chunk(c))),
                    // A corrupt chunk is dropped; the gateway resends what is not acknowledged.
                    Err(e) => {
                        self.bad_frames += 1;
                        debug!(error = %e, "dropping a bad chunk");
                    }
                },
                _ => debug!(topic = %msg.topic, "ignoring a message on another topic"),
            }
        }
    }

    /// Sends the request `make` builds (given a fresh request id and this session) and waits for the response that
    /// answers it. An `error` answer becomes [`DeviceError::Remote`]; no answer within the timeout is
    /// [`DeviceError::NoGateway`].
    async fn call(&mut self, make: impl FnOnce(String, SessionId) -> Request) -> Result<Response, DeviceError> {
        self.call_on(Topic::request(&self.device), make).await
    }

    /// Like [`call`](Self::call), on a given topic (a gateway's own, for requests about its transfers).
    async fn call_on(
        &mut self,
        topic: String,
        make: impl FnOnce(String, SessionId) -> Request,
    ) -> Result<Response, DeviceError> {
        let id = self.request_id();
        self.publish(topic, &make(id.clone(), self.session.clone())).await?;
        loop {
            match self.next(self.timeout).await? {
                None => return Err(DeviceError::NoGateway { after: self.timeout }),
                Some(Incoming::Response(r)) if r.request_id() == Some(id.as_str()) => {
                    return match r {
                        Response::Error { code, message, .. } => Err(DeviceError::Remote { code, message }),
                        r => Ok(r),
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// One page of the listing of `path` (relative to the device root; `""` for the root), starting at entry
    /// `offset`. Returns the entries and the offset of the next page, if any.
    pub async fn list_page(
        &mut self,
        path: &str,
        offset: u64,
        limit: Option<u32>,
    ) -> Result<(Vec<Entry>, Option<u64>), DeviceError> {
        let path = path.to_string();
        match self.call(|id, session| Request::List { id, session, path, offset, limit }).await? {
            Response::Listing { entries, next, .. } => Ok((entries, next)),
            other => Err(unexpected(&other)),
        }
    }

    /// The whole listing of `path`, fetched page by page.
    pub async fn list(&mut self, path: &str) -> Result<Vec<Entry>, DeviceError> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let (mut page, next) = self.list_page(path, offset, None).await?;
            all.append(&mut page);
            match next {
                Some(n) if n > offset => offset = n,
                _ => return Ok(all),
            }
        }
    }

    /// Size, modification time and type of `path`.
    pub async fn stat(&mut self, path: &str) -> Result<Entry, DeviceError> {
        let path = path.to_string();
        match self.call(|id, session| Request::Stat { id, session, path }).await? {
            Response::Stat { entry, .. } => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes a file or an empty directory.
    pub async fn remove(&mut self, path: &str) -> Result<(), DeviceError> {
        let path = path.to_string();
        self.call_done(|id, session| Request::Remove { id, session, path }).await
    }

    /// Creates a directory; its parent must exist.
    pub async fn mkdir(&mut self, path: &str) -> Result<(), DeviceError> {
        let path = path.to_string();
        self.call_done(|id, session| Request::Mkdir { id, session, path }).await
    }

    /// Renames `from` to `to`; an existing `to` is replaced only with `overwrite`.
    pub async fn rename(&mut self, from: &str, to: &str, overwrite: bool) -> Result<(), DeviceError> {
        let (from, to) = (from.to_string(), to.to_string());
        self.call_done(|id, session| Request::Rename { id, session, from, to, overwrite }).await
    }

    async fn call_done(&mut self, make: impl FnOnce(String, SessionId) -> Request) -> Result<(), DeviceError> {
        match self.call(make).await? {
            Response::Done { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Uploads `local` to `remote` (relative to the device root). The gateway writes a temporary file and renames
    /// it into place only after size and hash match; an existing `remote` is replaced only with `overwrite`.
    /// After an interruption (broker restart, gateway gone) the upload continues from what the store holds. A
    /// gateway at its transfer limit (`busy`) is asked again after growing, jittered pauses, for up to the transfer
    /// timeout.
    pub async fn put(
        &mut self,
        local: &Path,
        remote: &str,
        overwrite: bool,
        mut progress: impl FnMut(Progress),
    ) -> Result<PutOutcome, DeviceError> {
        let local_err = |source| DeviceError::Local { path: local.to_path_buf(), source };
        // Taken before the file is read: a change after it shows as a different length or modification time at the
        // end. The file is hashed as it is sent, and the hash goes with the commit.
        let stamp = crate::file_io::upload_stamp(local).await.map_err(local_err)?;
        let size = stamp.0;
        let mut upload = Upload {
            local,
            remote,
            size,
            hash: self.hash,
            digest: None,
            stamp,
            overwrite,
            resume: None,
            acked: 0,
            sent: 0,
        };
        let (mut attempt, mut idle) = (0, 0);
        let mut busy = BusyBackoff::new(self.timeout);
        loop {
            attempt += 1;
            let before = upload.acked;
            let result = self.put_once(&mut upload, &mut progress).await;
            idle = if upload.acked > before { 0 } else { idle + 1 };
            match result {
                Ok(o) => return Ok(o),
                // The gateway is at a transfer limit: ask again after a pause; that is neither an attempt nor a stall.
                Err(e @ DeviceError::Remote { code: ErrorCode::Busy, .. }) => {
                    if !busy.pause().await {
                        return Err(e);
                    }
                    debug!(error = %e, "gateway busy; asking again");
                    (attempt, idle) = (attempt - 1, 0);
                }
                // The store no longer holds the interrupted upload: start it again from nothing.
                Err(DeviceError::Remote { code: ErrorCode::Expired, .. })
                    if upload.resume.is_some() && attempt < GET_ATTEMPTS =>
                {
                    upload.resume = None;
                }
                // The gateway lost the SFTP store (restarted or unreachable); the temporary file stays there.
                // Try again, paced, until the store is back or the attempts are used up.
                Err(e @ DeviceError::Remote { code: ErrorCode::Unavailable, .. })
                    if upload.resume.is_some() && attempt < GET_ATTEMPTS =>
                {
                    debug!(error = %e, attempt, "store unavailable; resuming the upload after a pause");
                    tokio::time::sleep(STORE_RETRY_PAUSE).await;
                }
                Err(e)
                    if e.is_transient()
                        && attempt < GET_ATTEMPTS
                        && (matches!(e, DeviceError::Closed(_))
                            || upload.acked > before
                            || (matches!(e, DeviceError::Stalled { .. } | DeviceError::NoGateway { .. })
                                && idle <= IDLE_RESUMES)) =>
                {
                    debug!(error = %e, attempt, "upload interrupted; resuming");
                    self.recover(&e).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of an upload: a new one, or the continuation of `upload.resume`.
    async fn put_once(
        &mut self,
        upload: &mut Upload<'_>,
        progress: &mut impl FnMut(Progress),
    ) -> Result<PutOutcome, DeviceError> {
        let (local, size) = (upload.local, upload.size);
        let hash = upload.hash;
        let (path, overwrite, resume) = (upload.remote.to_string(), upload.overwrite, upload.resume);
        let digest = upload.digest.map(Into::into);
        let accepted =
            self.call(|id, session| Request::Put { id, session, path, size, hash, digest, overwrite, resume }).await?;
        let Response::PutAccepted { transfer, gateway, chunk_size, window, offset, hash: accepted_hash, .. } = accepted
        else {
            return Err(unexpected(&accepted));
        };
        if accepted_hash != hash {
            // A gateway that hashes with another algorithm (one from before `hash`, which always uses SHA-256)
            // gets its own: nothing is sent yet, and a hash known under the other one is computed again.
            debug!(asked = %hash, gateway = %accepted_hash, "the gateway hashes this upload with another algorithm");
            upload.hash = accepted_hash;
            upload.digest = None;
        }
        upload.resume = Some(transfer);
        let params = StreamParams {
            chunk_size: chunk_size.clamp(1, mqsftp_proto::chunk::MAX_CHUNK_DATA as u32),
            window: window.max(1),
            retransmit_after: StreamParams::default().retransmit_after,
            give_up_after: self.timeout,
        };
        // The sender hashes the file as it reads it, including what the store holds already (read, not sent), unless
        // an earlier attempt read it all: then the hash is known and only the rest is read.
        let sender = Sender::resume(transfer, size, offset, params, upload.hash, Instant::now());
        let (mut sender, read_from) = match upload.digest {
            Some(known) => (sender.with_known_digest(known), offset.min(size)),
            None => (sender, 0),
        };
        // Read ahead by a thread, about a window of chunks, in the sender's chunk size: no pool round trip and no
        // copy per chunk.
        let mut file = FileReader::start(local, read_from, size, params.chunk_size, params.window as usize);
        let up = Topic::up(&self.device, &gateway);
        upload.acked = upload.acked.max(sender.acked());
        progress(Progress { done: sender.acked(), total: size });
        loop {
            while let Some(read) = sender.poll_read() {
                let data = file.read(read).await?;
                sender
                    .handle_read(data)
                    .map_err(|e| DeviceError::LocalChanged { path: local.to_path_buf(), reason: e.to_string() })?;
            }
            while let Some(t) = sender.poll_transmit() {
                upload.sent += t.chunk.data.len() as u64;
                self.mqtt()
                    .publish_bytes(up.clone(), QoS::AtLeastOnce, false, t.frame)
                    .await
                    .map_err(|e| DeviceError::Closed(e.to_string()))?;
            }
            if let Some((_, digest)) = sender.poll_done() {
                // Everything was read: a file that changed meanwhile is reported now, with its name, rather than
                // committed in a version it never had.
                self.check_unchanged(upload, &gateway, transfer).await?;
                upload.digest = Some(digest);
            }
            if sender.is_complete() && upload.digest.is_some() {
                break;
            }
            let wait =
                sender.poll_timeout().map(|t| t.saturating_duration_since(Instant::now())).unwrap_or(self.timeout);
            match self.next(wait).await? {
                Some(Incoming::Response(Response::PutAck { transfer: t, next })) if t == transfer => {
                    // An acknowledgement beyond what was sent counts up to what was sent; the gateway's check of
                    // size and hash at the commit catches bytes that did not come from here.
                    sender.handle_ack(next, Instant::now());
                    upload.acked = upload.acked.max(sender.acked());
                    progress(Progress { done: sender.acked(), total: size });
                }
                Some(Incoming::Response(Response::Error { transfer: Some(t), code, message, .. })) if t == transfer => {
                    // The upload is over on the gateway's side: nothing to resume, unless the gateway lost the
                    // store, which keeps the temporary file for a resume.
                    if code != ErrorCode::Unavailable {
                        upload.resume = None;
                    }
                    return Err(DeviceError::Remote { code, message });
                }
                Some(_) => {}
                None => {
                    if sender.handle_timeout(Instant::now()).is_err() {
                        return Err(DeviceError::Stalled { after: self.timeout, received: sender.acked(), size });
                    }
                }
            }
        }
        // Everything was acknowledged. A file that changed after its last byte was read (a window and the read-ahead
        // are read early) is not committed either: the store would get a version the file no longer has.
        self.check_unchanged(upload, &gateway, transfer).await?;
        // Commit is idempotent on the gateway: a lost answer is recovered by asking again.
        let topic = Topic::direct(&self.device, &gateway);
        let sent = upload.digest;
        let digest = sent.map(Into::into);
        match self.call_on(topic, |id, session| Request::Commit { id, session, transfer, digest }).await? {
            Response::Committed { size, digest: committed, durable, .. } => {
                let digest = match (committed.parse(), sent) {
                    (Ok(d), Some(s)) if d == s => d,
                    _ => {
                        let message = format!(
                            "the gateway committed {} {}, not the {} sent",
                            committed.alg(),
                            committed.hex(),
                            sent.map_or_else(|| "nothing".to_string(), |s| s.to_string())
                        );
                        return Err(DeviceError::Remote { code: ErrorCode::Internal, message });
                    }
                };
                let resent_bytes = upload.sent.saturating_sub(size);
                Ok(PutOutcome { path: upload.remote.to_string(), size, digest, durable, resent_bytes })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Fails with `LocalChanged`, naming the file, when the upload's file no longer has the length and modification
    /// time it had when it was hashed; the gateway is told to drop the transfer.
    async fn check_unchanged(
        &self,
        upload: &Upload<'_>,
        gateway: &GatewayId,
        transfer: TransferId,
    ) -> Result<(), DeviceError> {
        let local = upload.local;
        let now = file_stamp(local).await.map_err(|source| DeviceError::Local { path: local.to_path_buf(), source })?;
        if now == upload.stamp {
            return Ok(());
        }
        let _ = self.send_to(gateway, &Request::Cancel { transfer }).await;
        Err(DeviceError::LocalChanged {
            path: local.to_path_buf(),
            reason: "its content changed while it was being uploaded".into(),
        })
    }

    /// Asks a gateway to answer; returns the round-trip time and the gateway's protocol version.
    pub async fn ping(&mut self) -> Result<(Duration, u32), DeviceError> {
        self.ping_within(self.timeout).await
    }

    async fn ping_within(&mut self, wait: Duration) -> Result<(Duration, u32), DeviceError> {
        let id = self.request_id();
        let started = Instant::now();
        self.send(&Request::Ping { id: id.clone(), session: self.session.clone() }).await?;
        loop {
            match self.next(wait.saturating_sub(started.elapsed())).await? {
                None => return Err(DeviceError::NoGateway { after: wait }),
                Some(Incoming::Response(Response::Pong { id: got, version })) if got == id => {
                    return Ok((started.elapsed(), version))
                }
                Some(Incoming::Response(Response::Error { id: Some(got), code, message, .. })) if got == id => {
                    return Err(DeviceError::Remote { code, message })
                }
                Some(_) => {}
            }
        }
    }

    /// Downloads `remote` (relative to the device's root) to `local`, verifying size and hash before the file
    /// appears at `local`. `local` may be an existing directory, in which case the remote file name is used.
    ///
    /// Interruptions resume from the bytes held in the part file beside the target (`.{name}.mqsftp-part`): a lost
    /// broker connection, a gateway that went silent, a gateway that lost its SFTP store (`unavailable`, retried
    /// after a pause). A gateway at its transfer limit (`busy`) is asked again after growing, jittered pauses, for
    /// up to the transfer timeout. Data that fails verification is dropped and fetched again from nothing, up to three
    /// downloads in all, then [`DeviceError::Integrity`]. Nothing ever appears at the target
    /// unless verified; a part file stays only after a transient failure, for the next `get` to continue from.
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        mut progress: impl FnMut(Progress),
    ) -> Result<GetOutcome, DeviceError> {
        let target = local_target(remote, local)?;
        let part = PartFile::for_target(&target);
        let mut received = 0u64;
        let mut held_at_start = None;
        let (mut attempt, mut idle, mut failed_checks) = (0, 0, 0);
        let mut busy = BusyBackoff::new(self.timeout);
        let bad_frames_before = self.bad_frames;
        loop {
            attempt += 1;
            let before = received;
            let result = self.get_once(remote, &part, &mut received, &mut held_at_start, &mut progress).await;
            idle = if received > before { 0 } else { idle + 1 };
            let e = match result {
                Ok((size, digest, writer)) => {
                    match writer.commit(&target).await {
                        Ok(()) => {}
                        // Data not known to be on disk: as any definite failure, the part file goes.
                        Err(CommitError::Part(e)) => {
                            part.discard().await;
                            return Err(e);
                        }
                        // The rename failed; the verified part file stays.
                        Err(CommitError::Target(e)) => return Err(e),
                    }
                    let resent_bytes = received.saturating_sub(size - held_at_start.unwrap_or(0));
                    let (restarts, bad_frames) = (failed_checks, self.bad_frames - bad_frames_before);
                    return Ok(GetOutcome { path: target, size, digest, resent_bytes, restarts, bad_frames });
                }
                // What is held is wrong (corrupted on the way, or another version of the file): start from nothing.
                Err(GetFailure::Verify(error)) => {
                    part.discard().await;
                    failed_checks += 1;
                    if failed_checks >= VERIFY_ATTEMPTS {
                        let (remote, path) = (remote.to_string(), target);
                        return Err(DeviceError::Integrity { remote, path, attempts: failed_checks, error });
                    }
                    debug!(%error, attempt, "download failed verification; starting again from nothing");
                    held_at_start = Some(0);
                    continue;
                }
                Err(GetFailure::Device(e)) => e,
            };
            // Try again when the connection broke, or when this attempt got somewhere before it stopped (a
            // gateway that went away mid-transfer), or, a few times, when nothing moved at all (see IDLE_RESUMES).
            let retry = |e: &DeviceError| {
                e.is_transient()
                    && attempt < GET_ATTEMPTS
                    && (matches!(e, DeviceError::Closed(_))
                        || received > before
                        || (matches!(e, DeviceError::Stalled { .. } | DeviceError::NoGateway { .. })
                            && idle <= IDLE_RESUMES))
            };
            match e {
                // The gateway is at a transfer limit: ask again after a pause; that is neither an attempt nor a stall.
                // Whatever the part file holds stays, as after any transient failure.
                e @ DeviceError::Remote { code: ErrorCode::Busy, .. } => {
                    if !busy.pause().await {
                        return Err(e);
                    }
                    debug!(error = %e, "gateway busy; asking again");
                    (attempt, idle) = (attempt - 1, 0);
                }
                // The gateway lost the SFTP store (restarted, or a session that stopped answering) after it had
                // accepted this download; the part file stays. Ask again, paced, until the store is back or the
                // attempts are used up (as an upload does).
                e @ DeviceError::Remote { code: ErrorCode::Unavailable, .. }
                    if held_at_start.is_some() && attempt < GET_ATTEMPTS =>
                {
                    debug!(error = %e, attempt, "store unavailable; resuming the download after a pause");
                    tokio::time::sleep(STORE_RETRY_PAUSE).await;
                }
                e if retry(&e) => {
                    debug!(error = %e, attempt, "download interrupted; resuming");
                    self.recover(&e).await?;
                }
                // The bytes held so far stay in the part file for the next `get` of the same target.
                e if e.is_transient() => return Err(e),
                e => {
                    part.discard().await;
                    return Err(e);
                }
            }
        }
    }

    /// One attempt: continues from what the part file holds. Returns size and hash of the verified file, and
    /// the writer holding it, to commit.
    async fn get_once(
        &mut self,
        remote: &str,
        part: &PartFile,
        received: &mut u64,
        held_at_start: &mut Option<u64>,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(u64, Digest, PartWriter), GetFailure> {
        // The part file (opened here, if there is one) and the bytes it holds; its writer thread starts meanwhile.
        let (writer, held) = PartWriter::open(&part.path)?;
        let id = self.request_id();
        let (path, session, hash) = (remote.to_string(), self.session.clone(), self.hash);
        self.send(&Request::Get { id: id.clone(), session, path, offset: held, hash }).await?;
        let (transfer, gateway, size, hash) =
            loop {
                match self.next(self.timeout).await? {
                    None => return Err(DeviceError::NoGateway { after: self.timeout }.into()),
                    // The algorithm the gateway hashes with: the one asked for, or SHA-256 from a gateway that
                    // knows no other.
                    Some(Incoming::Response(Response::GetAccepted {
                        id: got, transfer, gateway, size, hash, ..
                    })) if got == id => break (transfer, gateway, size, hash),
                    Some(Incoming::Response(Response::Error { id: Some(got), code, message, .. })) if got == id => {
                        // A part file longer than the remote file belongs to another version of it: start over.
                        if code == ErrorCode::BadRequest && held > 0 {
                            let _ = writer.close().await;
                            part.discard().await;
                            let message = format!("stale partial download discarded: {message}");
                            return Err(DeviceError::Closed(message).into());
                        }
                        return Err(DeviceError::Remote { code, message }.into());
                    }
                    Some(_) => {}
                }
            };
        held_at_start.get_or_insert(held);
        let result = self.receive((transfer, hash), &gateway, size, writer, held, received, progress).await;
        if result.is_err() {
            // Tell the gateway to stop; it would give up by itself later anyway.
            if self.send_to(&gateway, &Request::Cancel { transfer }).await.is_err() {
                self.orphan = Some((transfer, gateway));
            }
        }
        result.map(|(digest, writer)| (size, digest, writer))
    }

    /// Receives the transfer into the part file. On success the writer is handed back for the commit; on any
    /// failure it has been closed first, so that the part file holds everything received (for a resume, or to
    /// be removed).
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &mut self,
        transfer: (TransferId, HashAlg),
        gateway: &GatewayId,
        size: u64,
        mut writer: PartWriter,
        held: u64,
        received: &mut u64,
        progress: &mut impl FnMut(Progress),
    ) -> Result<(Digest, PartWriter), GetFailure> {
        match self.receive_into(transfer, gateway, size, &mut writer, held, received, progress).await {
            Ok(digest) => Ok((digest, writer)),
            // The part file is dropped anyway.
            Err(GetFailure::Verify(e)) => {
                let _ = writer.close().await;
                Err(GetFailure::Verify(e))
            }
            // A write that failed is reported before the interruption, as a flush would.
            Err(GetFailure::Device(e)) => {
                writer.close().await?;
                Err(GetFailure::Device(e))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn receive_into(
        &mut self,
        (transfer, hash): (TransferId, HashAlg),
        gateway: &GatewayId,
        size: u64,
        writer: &mut PartWriter,
        held: u64,
        received: &mut u64,
        progress: &mut impl FnMut(Progress),
    ) -> Result<Digest, GetFailure> {
        let mut rx = Receiver::new(transfer, size, hash);
        if held > 0 {
            rx = writer.hash_held(rx).await??;
        } else {
            writer.create().await?;
        }
        progress(Progress { done: rx.received(), total: size });
        loop {
            if let Some(result) = rx.poll_finished() {
                // A mismatch: the caller drops the part file and starts again.
                return Ok(result?);
            }
            let msg = match self.next(self.timeout).await? {
                Some(m) => m,
                None => return Err(DeviceError::Stalled { after: self.timeout, received: rx.received(), size }.into()),
            };
            match msg {
                Incoming::Chunk(c) if c.transfer == transfer => {
                    *received += c.data.len() as u64;
                    let ack = match rx.handle_chunk(c)? {
                        Received::Write { data, ack, .. } => {
                            writer.write(data, ack == size).await?;
                            progress(Progress { done: ack, total: size });
                            ack
                        }
                        Received::Reack { ack } => ack,
                    };
                    self.send_to(gateway, &Request::Ack { transfer, next: ack }).await?;
                }
                Incoming::Response(Response::GetDone { transfer: t, size: done_size, digest }) if t == transfer => {
                    rx.handle_done(done_size, &digest)?;
                }
                Incoming::Response(Response::Error { transfer: Some(t), code, message, .. }) if t == transfer => {
                    return Err(DeviceError::Remote { code, message }.into());
                }
                _ => {}
            }
        }
    }
}

/// An upload in progress, across attempts.
struct Upload<'a> {
    local: &'a Path,
    remote: &'a str,
    size: u64,
    /// The algorithm it is hashed with, in every attempt.
    hash: HashAlg,
    /// The file's hash, once an attempt has read all of it (a resume gives it in its `put`).
    digest: Option<Digest>,
    /// Length and modification time of the file before it was read.
    stamp: (u64, Option<std::time::SystemTime>),
    overwrite: bool,
    /// The transfer to continue after an interruption.
    resume: Option<TransferId>,
    /// Most bytes the gateway has acknowledged so far.
    acked: u64,
    /// Chunk bytes published, over all attempts.
    sent: u64,
}

/// A response of a type the request does not call for.
fn unexpected(r: &Response) -> DeviceError {
    DeviceError::Remote { code: ErrorCode::Internal, message: format!("unexpected answer from the gateway: {r:?}") }
}

/// Length and modification time of a local file.
async fn file_stamp(path: &Path) -> std::io::Result<crate::file_io::Stamp> {
    let m = tokio::fs::metadata(path).await?;
    Ok((m.len(), m.modified().ok()))
}

/// Where `get remote local` writes: `local`, or `local/<remote file name>` when `local` is a directory.
fn local_target(remote: &str, local: &Path) -> Result<PathBuf, DeviceError> {
    let name = remote.rsplit('/').find(|n| !n.is_empty() && *n != "." && *n != "..");
    if local.is_dir() {
        let name = name.ok_or_else(|| DeviceError::LocalPath {
            path: local.into(),
            reason: format!("remote path {remote:?} has no file name to use inside a directory"),
        })?;
        return Ok(local.join(name));
    }
    if local.file_name().is_none() {
        return Err(DeviceError::LocalPath { path: local.into(), reason: "no file name".into() });
    }
    Ok(local.to_path_buf())
}

/// The name of the partial download of `name`: `.{name}.mqsftp-part`, or, when that would pass the 255-byte name
/// limit of common file systems, a cut name plus a hash of the whole name, so that long names still differ.
fn part_name(name: &str) -> String {
    const SUFFIX: &str = ".mqsftp-part";
    if name.len() + 1 + SUFFIX.len() <= 255 {
        return format!(".{name}{SUFFIX}");
    }
    use sha2::Digest;
    let tag = &hex::encode(sha2::Sha256::digest(name.as_bytes()))[..16];
    let mut cut = 255 - 1 - 1 - tag.len() - SUFFIX.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}.{tag}{SUFFIX}", &name[..cut])
}

/// The partial download beside the target (`.{name}.mqsftp-part`): kept across interruptions so that the next
/// attempt (or the next `get` of the same target) continues from it, renamed into place only when verified, and
/// removed on a definite failure.
pub(crate) struct PartFile {
    path: PathBuf,
}

impl PartFile {
    fn for_target(target: &Path) -> PartFile {
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        PartFile { path: dir.join(part_name(&name)) }
    }

    async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

#[cfg(test)]
mod tests {
    use super::part_name;

    #[test]
    fn part_names_fit_the_name_limit_and_stay_distinct() {
        assert_eq!(part_name("a.bin"), ".a.bin.mqsftp-part");
        let a = format!("{}a", "日".repeat(84)); // 253 bytes
        let b = format!("{}b", "日".repeat(84));
        assert!(part_name(&a).len() <= 255 && part_name(&b).len() <= 255);
        assert_ne!(part_name(&a), part_name(&b));
    }
}
