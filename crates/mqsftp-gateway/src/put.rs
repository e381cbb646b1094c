//! Uploads: one task per `put`. Chunks are written in order to a temporary file beside the target (the
//! russh-sftp file keeps several writes in flight); the commit checks size and hash, fsyncs, and renames into
//! place without clobbering (or atomically replacing, when asked). Nothing partial ever appears at the final
//! name; an aborted, failed or expired upload removes its temporary file.

use std::sync::Arc;

use mqsftp_proto::{
    DeviceId, Digest, ErrorCode, HashAlg, HexDigest, Received, Receiver, RelPath, Response, SessionId, TransferId,
};
use russh_sftp::client::fs::File;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use crate::ops::{ensure_dir, move_into_place, session, sftp_failure, PART_SUFFIX};
use crate::policy::Access;
use crate::server::{confine_file, Claim, Ctl, Failure, Registration, Shared};
use crate::store::{StoreSession, WritebackFile};

/// Bytes written to an upload's temporary file between two fsyncs that have the store write them to disk as the
/// upload goes on ([`Writeback`]).
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// A `put` request, as the device sent it.
pub(crate) struct PutRequest {
    pub id: String,
    pub session: SessionId,
    pub path: String,
    pub size: u64,
    /// The algorithm the upload is hashed with.
    pub hash: HashAlg,
    /// The file's hash when the device gave it with the request; otherwise it comes with the commit.
    pub digest: Option<HexDigest>,
    pub overwrite: bool,
    /// The upload to continue, if this resumes one.
    pub resume: Option<TransferId>,
}

/// What an upload knows of the hash its bytes must have: given with the `put`, a resuming `put` or the commit,
/// whichever comes first; every later one must agree with it.
struct ExpectedHash(Option<Digest>);

impl ExpectedHash {
    /// Takes the hash `given` (if any) in a message about upload `receiver`. `Ok(Some(hash))` once all bytes are
    /// in and match the known hash (a mismatch is an error), `Ok(None)` while either is missing. A malformed hash,
    /// or one of another algorithm than the upload's, is `bad_request` (nothing changes); one that differs from the
    /// hash given before is `checksum_mismatch`, as the bytes cannot match both.
    fn take(&mut self, receiver: &mut Receiver, given: Option<&HexDigest>) -> Result<Option<Digest>, Failure> {
        if let Some(h) = given {
            let d = h.parse().map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
            if d.alg != receiver.hash_alg() {
                let msg = format!("field {} gives a hash for an upload hashed with {}", d.alg, receiver.hash_alg());
                return Err((ErrorCode::BadRequest, msg));
            }
            match &self.0 {
                Some(known) if *known != d => {
                    return Err((
                        ErrorCode::ChecksumMismatch,
                        format!("the upload was announced with {} {}, and now {}", known.alg, known.hex(), d.hex()),
                    ))
                }
                Some(_) => {}
                None => {
                    receiver.handle_done(receiver.size(), h).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
                    self.0 = Some(d);
                }
            }
        }
        match receiver.poll_finished() {
            Some(Ok(digest)) => Ok(Some(digest)),
            Some(Err(e)) => Err((ErrorCode::ChecksumMismatch, e.to_string())),
            None => Ok(None),
        }
    }
}

pub(crate) async fn start_put(shared: Arc<Shared>, device: DeviceId, access: Arc<Access>, req: PutRequest) {
    let fail = |(code, message): Failure| Response::error(Some(req.id.clone()), code, message);
    let rel = match confine_file(&req.path) {
        Ok(rel) => rel,
        Err(f) => return shared.respond(&device, &req.session, &fail(f)).await,
    };
    if let Some(Err(e)) = req.digest.as_ref().map(HexDigest::parse) {
        return shared.respond(&device, &req.session, &fail((ErrorCode::BadRequest, e.to_string()))).await;
    }
    let max = access.max_file_size;
    if req.size > max {
        let f = (
            ErrorCode::TooLarge,
            format!("{} is {} bytes; the limit is {max} ({})", rel.as_str(), req.size, access.rule),
        );
        return shared.respond(&device, &req.session, &fail(f)).await;
    }
    let quota_use = match access.quota {
        Some(_) => match stored_bytes(&shared, &access.root).await {
            Ok(used) => Some((used, req.size)),
            Err(f) => return shared.respond(&device, &req.session, &fail(f)).await,
        },
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let transfer =
        match shared.register(&device, tx, Claim { access: &access, wanted: req.resume, quota_use, supersede: None }) {
            Ok(t) => t,
            Err(f) => return shared.respond(&device, &req.session, &fail(f)).await,
        };
    let span = info_span!("put", %device, transfer, path = %rel.as_str(), size = req.size, hash = %req.hash);
    async move {
        let mut rx = rx;
        let registration = Registration { shared: &shared, transfer };
        let mut reply = (req.id.clone(), req.session.clone());
        let result = serve_put(&shared, (&device, &access), &req, transfer, &rel, &mut rx, &mut reply).await;
        // Once out of the table nothing more is queued for this task; commits that were queued meanwhile (several
        // sent at once) get the remembered answer like any later one.
        drop(registration);
        while let Ok(ctl) = rx.try_recv() {
            if let Ctl::Commit { id, session, .. } = ctl {
                crate::server::answer_stale_commit(&shared, &device, &session, transfer, id).await;
            }
        }
        if let Err((code, message)) = result {
            info!(%code, %message, "put failed");
            let (id, session) = reply;
            let resp = Response::Error { id: Some(id), transfer: Some(transfer), code, message };
            shared.respond(&device, &session, &resp).await;
        }
    }
    .instrument(span)
    .await
}

/// The temporary file of an upload: removed unless it was renamed into place.
struct Part<'a> {
    sftp: &'a StoreSession,
    path: String,
    committed: bool,
    /// The permit for the file's handle; the file (a local declared after the part) is dropped first.
    _permit: Option<crate::store::HandlePermit>,
}

impl Part<'_> {
    async fn discard(&mut self, file: Option<File>) {
        if let Some(f) = file {
            let _ = f.close().await;
        }
        if !self.committed {
            if let Err(e) = self.sftp.remove_file(self.path.as_str()).await {
                warn!(path = %self.path, error = %e, "could not remove the temporary file of a failed upload");
            }
            self.committed = true; // nothing left to remove
        }
    }
}

async fn serve_put(
    shared: &Shared,
    (device, access): (&DeviceId, &Access),
    req: &PutRequest,
    transfer: TransferId,
    rel: &RelPath,
    rx: &mut mpsc::UnboundedReceiver<Ctl>,
    reply: &mut (String, SessionId),
) -> Result<(), Failure> {
    let sftp = session(shared).await?;
    let final_path = access.path_of(rel);
    crate::ops::check_resolved(shared, (&sftp, crate::store::Channel::Main), access, &final_path, rel.as_str()).await?;
    let (dir, name) = match final_path.rsplit_once('/') {
        Some((d, n)) => (d.to_string(), n.to_string()),
        None => (".".to_string(), final_path.clone()),
    };
    let path = format!("{dir}/{}", part_name(&name, transfer));
    // A resume that names the file's hash may find the upload committed already (only a device that has sent every
    // byte knows the hash, and only such an upload can have been committed).
    let resumed_hash = req.digest.as_ref().filter(|_| req.resume.is_some());
    if let Some(digest) = resumed_hash {
        if committed_already(&sftp, (&final_path, &path), transfer, req.size, digest).await {
            // Committed, by another gateway or by this one before a restart, and the answer was lost (the device
            // gave up waiting and asked again): answer as for a commit remembered here, instead of `exists` for its
            // own file.
            info!("the upload is in place already (its commit's answer was lost); answering its commit again");
            let answer = Response::Committed {
                id: req.id.clone(),
                transfer,
                size: req.size,
                digest: digest.clone(),
                durable: sftp.fsync,
            };
            if let Ok(mut c) = shared.committed.lock() {
                c.insert(transfer, device.clone(), answer);
            }
            shared
                .respond(device, &req.session, &shared.put_accepted(req.id.clone(), transfer, req.size, req.hash))
                .await;
            return Ok(());
        }
    }
    if !req.overwrite && sftp.try_exists(final_path.as_str()).await.unwrap_or(false) {
        return Err((ErrorCode::Exists, format!("already exists: {} (ask to overwrite to replace it)", rel.as_str())));
    }
    let rel_dir = rel.as_str().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    ensure_dir(shared, &sftp, &dir, rel_dir).await?;
    let permit = sftp.handle_permit().await;
    let mut part = Part { sftp: &sftp, path, committed: false, _permit: permit };
    let mut receiver = Receiver::new(transfer, req.size, req.hash);
    let mut file = if req.resume.is_some() {
        match adopt(shared, &sftp, &part.path, rel, &mut receiver).await {
            Ok(f) => Some(f),
            Err(f) => {
                // Adopting failed: the temporary file is left to expiry unless it is plainly wrong.
                if f.0 == ErrorCode::ChecksumMismatch || f.0 == ErrorCode::BadRequest {
                    part.discard(None).await;
                }
                return Err(f);
            }
        }
    } else {
        match sftp.create(part.path.as_str()).await {
            Ok(f) => Some(f),
            Err(e) => return Err(sftp_failure(shared, "create", &part.path, rel.as_str(), e).await),
        }
    };
    let mut writeback = Writeback::start(&sftp, &part.path, receiver.received(), req.size);
    let _share = shared.windows.join();
    let t = shared.cfg.transfer;
    let bucket = shared.buckets.get(device, access.rate);
    let mut session = req.session.clone();
    shared
        .respond(device, &req.session, &shared.put_accepted(req.id.clone(), transfer, receiver.received(), req.hash))
        .await;
    let mut expected = ExpectedHash(None);
    // An empty upload (or one the store holds whole) is complete before any chunk; a wrong hash for it is caught
    // here. The hash of what arrived, once it is verified.
    let mut verified = match expected.take(&mut receiver, req.digest.as_ref()) {
        Ok(v) => v,
        Err(f) => {
            part.discard(file.take()).await;
            return Err(f);
        }
    };
    let outcome = loop {
        let ctl = match tokio::time::timeout(t.upload_expiry, rx.recv()).await {
            Ok(Some(ctl)) => ctl,
            Ok(None) => break Err((ErrorCode::Internal, "gateway shutting down".to_string())),
            Err(_) => {
                break Err((
                    ErrorCode::Expired,
                    format!("no data for {:?}; the incomplete upload was removed", t.upload_expiry),
                ))
            }
        };
        match ctl {
            Ctl::Chunk(chunk) => {
                if let Some(b) = &bucket {
                    // Holding the acknowledgement back is what slows the device down.
                    b.take(chunk.data.len()).await;
                }
                shared.stats.received_bytes.fetch_add(chunk.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if chunk.data.len() > t.chunk_size as usize {
                    break Err((
                        ErrorCode::BadRequest,
                        format!("chunk of {} bytes exceeds the chunk size {}", chunk.data.len(), t.chunk_size),
                    ));
                }
                let ack = match receiver.handle_chunk(chunk) {
                    Ok(Received::Write { data, ack, .. }) => {
                        let Some(f) = file.as_mut() else {
                            break Err((ErrorCode::Internal, "file closed".into()));
                        };
                        if let Err(e) = f.write_all(&data).await {
                            break Err(write_failure(shared, &sftp, &part.path, rel.as_str(), &e).await);
                        }
                        if let Some(w) = &writeback {
                            w.wrote(receiver.received());
                        }
                        ack
                    }
                    Ok(Received::Reack { ack }) => ack,
                    Err(e) => break Err((ErrorCode::BadRequest, e.to_string())),
                };
                match expected.take(&mut receiver, None) {
                    Ok(Some(sha)) => verified = Some(sha),
                    Ok(None) => {}
                    Err(f) => break Err(f),
                }
                shared.respond(device, &session, &Response::PutAck { transfer, next: ack }).await;
            }
            Ctl::Commit { id, session, digest } => {
                match expected.take(&mut receiver, digest.as_ref()) {
                    Ok(Some(sha)) => verified = Some(sha),
                    Ok(None) => {}
                    Err(f @ (ErrorCode::BadRequest, _)) => {
                        // A malformed hash: this commit is refused, the upload goes on.
                        let (code, message) = f;
                        let resp = Response::Error { id: Some(id), transfer: Some(transfer), code, message };
                        shared.respond(device, &session, &resp).await;
                        continue;
                    }
                    Err(f) => {
                        *reply = (id, session);
                        break Err(f);
                    }
                }
                let Some(digest) = verified else {
                    let msg = if expected.0.is_none() {
                        format!("commit without {}: the put did not give the file's hash, so the commit must", req.hash)
                    } else {
                        format!("commit before all data arrived: have {} of {} bytes", receiver.received(), req.size)
                    };
                    let resp = Response::Error {
                        id: Some(id),
                        transfer: Some(transfer),
                        code: ErrorCode::BadRequest,
                        message: msg,
                    };
                    shared.respond(device, &session, &resp).await;
                    continue;
                };
                // A failing commit is answered to this commit (the device waits for its answer), not to the put.
                *reply = (id.clone(), session.clone());
                if let Some(w) = writeback.take() {
                    w.finish().await;
                }
                match commit(shared, &sftp, &mut part, file.take(), (&final_path, rel), req.overwrite).await {
                    Ok(durable) => {
                        let digest = digest.into();
                        let answer = Response::Committed { id, transfer, size: req.size, digest, durable };
                        if let Ok(mut c) = shared.committed.lock() {
                            c.insert(transfer, device.clone(), answer.clone());
                        }
                        info!(durable, "put committed");
                        shared.respond(device, &session, &answer).await;
                        break Ok(());
                    }
                    Err(f) => break Err(f),
                }
            }
            Ctl::Reattach(again) => {
                // A device that has sent every byte since knows the hash, and says it now.
                match expected.take(&mut receiver, again.digest.as_ref()) {
                    Ok(Some(sha)) => verified = Some(sha),
                    Ok(None) => {}
                    Err((code @ ErrorCode::BadRequest, message)) => {
                        // A malformed hash: this request is refused, the upload stays as it is.
                        let resp = Response::Error { id: Some(again.id), transfer: Some(transfer), code, message };
                        shared.respond(device, &again.session, &resp).await;
                        continue;
                    }
                    Err(f) => {
                        *reply = (again.id, again.session);
                        break Err(f);
                    }
                }
                *reply = (again.id.clone(), again.session.clone());
                // Make what is held durable before telling the device it need not send it again.
                if let Some(f) = file.as_mut() {
                    let synced = match f.flush().await {
                        Ok(()) => f.sync_all().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = synced {
                        break Err(write_failure(shared, &sftp, &part.path, rel.as_str(), &e).await);
                    }
                }
                session = again.session.clone();
                shared
                    .respond(device, &session, &shared.put_accepted(again.id, transfer, receiver.received(), req.hash))
                    .await;
            }
            Ctl::Cancel => break Err((ErrorCode::Internal, "cancelled by the device".to_string())),
            Ctl::Ack(_) => {} // download acknowledgements mean nothing to an upload
        }
    };
    match &outcome {
        // The store connection broke: the temporary file cannot be removed now, and it is what a resume continues
        // from (on a new session, here or at another gateway); expiry removes it if nobody does.
        Err((ErrorCode::Unavailable, _)) => info!(path = %part.path, "store lost; temporary file kept for a resume"),
        Err(_) => part.discard(file.take()).await,
        Ok(()) => {}
    }
    outcome
}

/// Has the store write a long upload to disk as it arrives, not all at its commit.
///
/// Why: the store's kernel keeps what an upload writes dirty in memory (up to 30 s, or a tenth of its RAM), so
/// the commit's fsync used to write nearly all of it while the device waited: 0.75–1.1 s per 512 MiB on the
/// benchmark's disk. Every [`WRITEBACK_STEP`] bytes this fsyncs the temporary file through a handle on a channel
/// of its own ([`StoreSession::open_for_writeback`]), so the disk writes while the upload goes on and the commit
/// is left with the last step. At most one of these fsyncs is in flight per upload; one that is still running when
/// the next step is reached covers it. Advisory throughout: the commit's fsync is what makes the upload durable.
struct Writeback {
    written: Option<tokio::sync::watch::Sender<u64>>,
    /// Ends when `written` is dropped, handing back the file it opened (if any), or at a failure.
    task: tokio::task::JoinHandle<Option<WritebackFile>>,
}

impl Writeback {
    /// For an upload of `size` bytes that holds `held` already; `None` when less than two steps are left to come.
    fn start(sftp: &Arc<StoreSession>, path: &str, held: u64, size: u64) -> Option<Writeback> {
        if size.saturating_sub(held) < 2 * WRITEBACK_STEP {
            return None;
        }
        let (written, mut rx) = tokio::sync::watch::channel(held);
        let (sftp, path) = (sftp.clone(), path.to_string());
        let task = tokio::spawn(async move {
            let mut file = None;
            let mut synced = held;
            while rx.changed().await.is_ok() {
                let at = *rx.borrow_and_update();
                if at < synced.saturating_add(WRITEBACK_STEP) {
                    continue;
                }
                if file.is_none() {
                    file = sftp.open_for_writeback(&path).await;
                }
                let Some(f) = &file else { return None };
                if let Err(e) = f.sync().await {
                    tracing::debug!(error = %e, "fsync during the upload failed; the commit's fsync decides");
                    return file;
                }
                synced = at;
            }
            file
        });
        Some(Writeback { written: Some(written), task })
    }

    /// The temporary file holds `at` bytes (written or queued on the main channel).
    fn wrote(&self, at: u64) {
        if let Some(w) = &self.written {
            w.send_replace(at);
        }
    }

    /// Before the commit: lets an fsync in flight finish (the commit's own fsync would wait for the disk as long)
    /// and closes the handle, so that no handle of this upload is open on the store when its file is renamed.
    async fn finish(mut self) {
        drop(self.written.take());
        if let Ok(Some(file)) = (&mut self.task).await {
            file.close().await;
        }
    }
}

impl Drop for Writeback {
    /// The upload ended without a commit (failed or gone): no more fsyncs; the handle is closed in the background.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a failed write (or flush) of an upload's temporary file means. The writes are pipelined, so the error may
/// belong to an earlier chunk; the store itself is asked. A session that no longer answers is dropped
/// (`unavailable`: the device resumes once the store is back); a full or read-only file system gets its own code.
async fn write_failure(
    shared: &Shared,
    sftp: &Arc<StoreSession>,
    part_path: &str,
    rel: &str,
    err: &(dyn std::fmt::Display + Sync),
) -> Failure {
    warn!(error = %err, path = %part_path, "write to the store failed");
    let dir = crate::ops::parent(part_path);
    let alive = tokio::time::timeout(std::time::Duration::from_secs(5), sftp.metadata(dir)).await;
    if !matches!(alive, Ok(Ok(_))) {
        shared.store.forget(sftp).await;
        return (ErrorCode::Unavailable, format!("the file store is unavailable while writing {rel}"));
    }
    match crate::ops::file_system_failure(sftp, dir, rel).await {
        Some(f) => f,
        None => (ErrorCode::Internal, format!("writing {rel} failed")),
    }
}

/// Flushes and fsyncs the temporary file, closes it and renames it into place. Returns whether the store
/// confirmed the fsync.
async fn commit(
    shared: &Shared,
    sftp: &Arc<StoreSession>,
    part: &mut Part<'_>,
    file: Option<File>,
    (final_path, rel): (&str, &RelPath),
    overwrite: bool,
) -> Result<bool, Failure> {
    let Some(mut f) = file else {
        return Err((ErrorCode::Internal, "upload file already closed".into()));
    };
    if let Err(e) = f.flush().await {
        let failure = write_failure(shared, sftp, &part.path, rel.as_str(), &e).await;
        if failure.0 != ErrorCode::Unavailable {
            part.discard(Some(f)).await;
        }
        return Err(failure);
    }
    let durable = sftp.fsync;
    if let Err(e) = f.sync_all().await {
        let failure = write_failure(shared, sftp, &part.path, rel.as_str(), &e).await;
        if failure.0 != ErrorCode::Unavailable {
            part.discard(Some(f)).await;
        }
        return Err(failure);
    }
    if let Err(e) = f.shutdown().await {
        warn!(error = %e, "close failed");
        part.discard(None).await;
        return Err((ErrorCode::Internal, format!("closing {} failed", rel.as_str())));
    }
    let part_path = part.path.clone();
    if let Err(f) = move_into_place(shared, sftp, (&part_path, final_path), rel.as_str(), overwrite).await {
        part.discard(None).await;
        return Err(f);
    }
    part.committed = true;
    Ok(durable)
}

/// Whether a resumed upload of `size` bytes with hash `digest` is committed already: its temporary file
/// (`part_path`) is gone and the target (`final_path`) holds exactly that size and hash. Any doubt (a store error,
/// another size) is a no: the request then goes on as any resume, to `exists` or `expired`.
async fn committed_already(
    sftp: &StoreSession,
    (final_path, part_path): (&str, &str),
    transfer: TransferId,
    size: u64,
    digest: &HexDigest,
) -> bool {
    if sftp.try_exists(part_path).await.unwrap_or(true) {
        return false;
    }
    match sftp.metadata(final_path).await {
        Ok(meta) if !meta.is_dir() && meta.len() == size => {}
        _ => return false,
    }
    let Ok(mut file) = sftp.open(final_path).await else { return false };
    let mut receiver = Receiver::new(transfer, size, digest.alg());
    let read_all = feed_held(&mut file, &mut receiver).await.is_ok();
    let _ = file.shutdown().await;
    read_all && receiver.handle_done(size, digest).is_ok() && matches!(receiver.poll_finished(), Some(Ok(_)))
}

/// Why [`feed_held`] stopped.
enum FeedError {
    Read(std::io::Error),
    Held(mqsftp_proto::ReceiveError),
}

/// Reads `file` from where it stands to its end into `receiver` as held bytes (hashed, not written).
async fn feed_held(file: &mut File, receiver: &mut Receiver) -> Result<(), FeedError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(FeedError::Read)?;
        if n == 0 {
            return Ok(());
        }
        receiver.handle_held(&buf[..n]).map_err(FeedError::Held)?;
    }
}

/// Takes over the temporary file of an interrupted upload: hashes what it holds into `receiver`, makes it durable,
/// and returns it opened for writing at its end.
async fn adopt(
    shared: &Shared,
    sftp: &StoreSession,
    part_path: &str,
    rel: &RelPath,
    receiver: &mut Receiver,
) -> Result<File, Failure> {
    use russh_sftp::protocol::OpenFlags;
    use tokio::io::AsyncSeekExt;
    let mut reader = match sftp.open(part_path).await {
        Ok(f) => f,
        Err(russh_sftp::client::error::Error::Status(st))
            if st.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
        {
            return Err((
                ErrorCode::Expired,
                format!("no interrupted upload of {} to resume (it expired or was never started)", rel.as_str()),
            ))
        }
        Err(e) => return Err(sftp_failure(shared, "open", part_path, rel.as_str(), e).await),
    };
    match feed_held(&mut reader, receiver).await {
        Ok(()) => {}
        Err(FeedError::Read(e)) => {
            warn!(error = %e, "reading the temporary file failed");
            return Err((ErrorCode::Internal, format!("reading the partial upload of {} failed", rel.as_str())));
        }
        Err(FeedError::Held(e)) => return Err((ErrorCode::BadRequest, e.to_string())),
    }
    let _ = reader.close().await;
    let held = receiver.received();
    let mut file = match sftp.open_with_flags(part_path, OpenFlags::WRITE).await {
        Ok(f) => f,
        Err(e) => return Err(sftp_failure(shared, "open", part_path, rel.as_str(), e).await),
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(held)).await {
        warn!(error = %e, "seek failed");
        return Err((ErrorCode::Internal, format!("reopening the partial upload of {} failed", rel.as_str())));
    }
    if let Err(e) = file.sync_all().await {
        return Err(sftp_failure(shared, "fsync", part_path, rel.as_str(), e).await);
    }
    info!(held, "resuming an interrupted upload");
    Ok(file)
}

/// The name of an upload's temporary file beside `name`: hidden, tagged with the transfer (so a resume finds it
/// and concurrent uploads of one name never share it), and cut so it stays within the 255-byte name limit of
/// common file systems even for the longest names a device may use.
pub(crate) fn part_name(name: &str, transfer: TransferId) -> String {
    let suffix = format!(".{transfer:x}{PART_SUFFIX}");
    let mut cut = name.len().min(mqsftp_proto::path::MAX_NAME_LEN - 1 - suffix.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{suffix}", &name[..cut])
}

/// Files below a device root counted against its quota (temporary files of uploads are counted by the
/// reservations of the uploads instead); bounded so a huge tree cannot stall the gateway.
const QUOTA_WALK_LIMIT: usize = 100_000;

/// The bytes stored under `root`: the sum of the sizes of its regular files.
async fn stored_bytes(shared: &Shared, root: &str) -> Result<u64, Failure> {
    let sftp = session(shared).await?;
    let (mut total, mut seen) = (0u64, 0usize);
    let mut dirs = vec![root.to_string()];
    while let Some(dir) = dirs.pop() {
        let entries = match sftp.list_dir(dir.as_str()).await {
            Ok(e) => e,
            Err(russh_sftp::client::error::Error::Status(s))
                if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
            {
                continue
            }
            Err(e) => return Err(sftp_failure(shared, "list", &dir, "", e).await),
        };
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." || name.ends_with(PART_SUFFIX) {
                continue;
            }
            seen += 1;
            if seen > QUOTA_WALK_LIMIT {
                return Err((
                    ErrorCode::QuotaExceeded,
                    format!("the device root holds more than {QUOTA_WALK_LIMIT} entries; the quota cannot be checked"),
                ));
            }
            let meta = e.metadata();
            if meta.file_type().is_dir() {
                dirs.push(format!("{dir}/{name}"));
            } else if meta.file_type().is_file() {
                total = total.saturating_add(meta.size.unwrap_or(0));
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_fit_and_stay_unique_per_transfer() {
        assert_eq!(part_name("a.bin", 0x1f), ".a.bin.1f.mqsftp-part");
        let long = "é".repeat(127); // 254 bytes
        let p = part_name(&long, mqsftp_proto::MAX_TRANSFER_ID);
        assert!(p.len() <= 255, "{}", p.len());
        assert!(p.ends_with(&format!(".{:x}.mqsftp-part", mqsftp_proto::MAX_TRANSFER_ID)));
        assert_ne!(part_name(&long, 1), part_name(&long, 2));
    }
}
