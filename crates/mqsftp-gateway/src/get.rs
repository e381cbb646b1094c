//! Downloads: one task per `get`, driving a [`Sender`] with the file read ahead from the store.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use mqsftp_proto::{DeviceId, ErrorCode, HashAlg, Response, Sender, SessionId, StreamParams, Topic, TransferId};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, info_span, warn, Instrument};

use crate::outbox::Lane;
use crate::policy::Access;
use crate::server::{confine_file, sleep_until, Claim, Ctl, Failure, Registration, Shared};
use crate::store::{Channel, ReadFile, StoreError};

pub(crate) async fn start_get(
    shared: Arc<Shared>,
    device: DeviceId,
    access: Arc<Access>,
    session: SessionId,
    id: String,
    (path, offset, hash): (String, u64, HashAlg),
) {
    let fail = |(code, message): Failure| Response::error(Some(id.clone()), code, message);
    let rel = match confine_file(&path) {
        Ok(rel) => rel,
        Err(f) => return shared.respond(&device, &session, &fail(f)).await,
    };
    let store_path = access.path_of(&rel);
    let (tx, rx) = mpsc::unbounded_channel();
    let transfer = match shared.register(
        &device,
        tx,
        Claim {
            access: &access,
            wanted: None,
            quota_use: None,
            supersede: Some((session.clone(), rel.as_str().to_string())),
        },
    ) {
        Ok(t) => t,
        Err(f) => return shared.respond(&device, &session, &fail(f)).await,
    };
    let span = info_span!("get", %device, transfer, path = %rel.as_str(), %hash);
    async move {
        let _registration = Registration { shared: &shared, transfer };
        let target = (store_path.as_str(), rel.as_str(), offset);
        match serve_get(&shared, (&device, &access), &session, (&id, hash), transfer, target, rx).await {
            Ok(stats) => info!(size = stats.0, resent = stats.1, "get complete"),
            Err((code, message)) => {
                info!(%code, %message, "get failed");
                let resp = Response::Error { id: Some(id.clone()), transfer: Some(transfer), code, message };
                shared.respond(&device, &session, &resp).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn serve_get(
    shared: &Shared,
    (device, access): (&DeviceId, &Access),
    session: &SessionId,
    (id, hash): (&str, HashAlg),
    transfer: TransferId,
    (store_path, rel, offset): (&str, &str, u64),
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
    let bucket = shared.buckets.get(device, access.rate);
    let sftp_err = |op: &'static str| move |source| StoreError::Sftp { op, path: store_path.to_string(), source };
    // One round trip instead of three: the symlink check, the stat and the open go out together, on the channel
    // that then serves the reads (one `sftp-server`). Nothing is read or sent before the check has passed; a handle
    // opened outside the root is closed unused.
    let (resolved, meta, file) = tokio::join!(
        crate::ops::check_resolved(shared, (&sftp, Channel::Reads), access, store_path, rel),
        sftp.stat_for_read(store_path),
        sftp.open_read(store_path),
    );
    resolved?;
    let opened = match meta.map_err(sftp_err("stat")) {
        Ok(meta) if meta.is_dir() => return Err((ErrorCode::IsDirectory, format!("is a directory: {rel}"))),
        Ok(meta) => file.map(|f| (meta, f)).map_err(sftp_err("open")),
        Err(e) => Err(e),
    };
    let (meta, mut file) = match opened {
        Ok(x) => x,
        Err(e) => {
            let (code, msg, err) = fail(e);
            shared.store.note_error(&err).await;
            return Err((code, msg));
        }
    };
    // Held to the end of the download, beyond the handle (closed once the whole file is read, see `ReadAhead`): the
    // permits bound the downloads holding windows in memory, not only the open handles (`MAX_OPEN_HANDLES`).
    let _slot = file.take_permit();
    let _share = shared.windows.join();
    let t = shared.cfg.transfer;
    let params = StreamParams {
        chunk_size: t.chunk_size,
        window: t.window,
        retransmit_after: t.retransmit_after,
        give_up_after: t.give_up_after,
    };
    let size = meta.len();
    if offset > size {
        let msg = format!("offset {offset} is beyond the end of {rel} ({size} bytes)");
        return Err((ErrorCode::BadRequest, msg));
    }
    let mut sender = Sender::resume(transfer, size, offset, params, hash, Instant::now());
    sender.set_window(shared.windows.current());
    // Reads beyond the window are bounded by the most a window can be (and by the gateway's read-ahead budget).
    let window_bytes = u64::from(params.chunk_size) * u64::from(params.window);
    let piece = read_piece(params.chunk_size, file.max_read());
    let mut reads = ReadAhead::new(Arc::new(file), size, piece, window_bytes, &shared.read_ahead);
    // The first reads go out before the answer, which then travels to the device while the store reads.
    reads.fill(sender.read_room());
    shared
        .respond(
            device,
            session,
            &Response::GetAccepted {
                gateway: shared.id.clone(),
                id: id.to_string(),
                transfer,
                size,
                chunk_size: params.chunk_size,
                window: sender.params().window,
                hash,
            },
        )
        .await;
    let down = Topic::down(device, session);
    // The read the sender asked for and has not been given yet.
    let mut wanted = None;
    loop {
        // This download's share of the window, as transfers start and end.
        sender.set_window(shared.windows.current());
        loop {
            if wanted.is_none() {
                wanted = sender.poll_read();
            }
            let Some(want) = wanted else { break };
            let Some(parts) = reads.take(want.len as usize) else { break };
            wanted = None;
            sender.handle_read_parts(&parts).map_err(|e| (ErrorCode::Internal, format!("{rel}: {e}")))?;
        }
        reads.fill(sender.read_room());
        while let Some(t) = sender.poll_transmit() {
            let len = t.chunk.data.len();
            if let Some(b) = &bucket {
                b.take(len).await;
            }
            shared.stats.sent_bytes.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
            shared
                .outbox
                .send(Lane::Stream, down.clone(), t.frame)
                .await
                .map_err(|e| (ErrorCode::Internal, format!("broker link failed: {e}")))?;
        }
        if let Some((size, digest)) = sender.poll_done() {
            shared.respond(device, session, &Response::GetDone { transfer, size, digest: digest.into() }).await;
        }
        if sender.is_complete() {
            return Ok((size, sender.resent_bytes()));
        }
        let deadline = sender.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            landed = reads.next(), if reads.is_reading() => match landed {
                Ok(()) => {}
                Err(ReadFailure::Store { offset, source }) => {
                    warn!(offset, error = %source, "read from the store failed");
                    let err = StoreError::Sftp { op: "read", path: store_path.to_string(), source };
                    let (code, msg) = (err.code(), err.device_message(rel));
                    shared.store.note_error(&err).await;
                    return Err((code, msg));
                }
                Err(ReadFailure::Short { offset, want, got }) => {
                    warn!(offset, want, got, "read from the store failed: the file ended early");
                    let msg = format!("{rel} changed while being read: {got} bytes at offset {offset} where {want} were expected");
                    return Err((ErrorCode::Internal, msg));
                }
            },
            ctl = rx.recv() => match ctl {
                Some(Ctl::Ack(next)) => {
                    let beyond = sender.acks_beyond_sent();
                    sender.handle_ack(next, Instant::now());
                    if sender.acks_beyond_sent() > beyond && beyond == 0 {
                        // The device took bytes this gateway has not sent: forged or stray frames on its topic. Its
                        // whole-file check will fail and it starts again; the download goes on meanwhile.
                        warn!(next, "the device acknowledged bytes this gateway had not sent yet (forged frames?)");
                    }
                }
                Some(Ctl::Chunk(_) | Ctl::Commit { .. } | Ctl::Reattach(_)) => {} // upload messages mean nothing to a download
                Some(Ctl::Cancel) => return Err((ErrorCode::Internal, "cancelled by the device".into())),
                None => return Err((ErrorCode::Internal, "gateway shutting down".into())),
            },
            _ = sleep_until(deadline) => {
                sender.handle_timeout(Instant::now()).map_err(|e| (ErrorCode::Timeout, e.to_string()))?;
            }
        }
    }
}

/// The length of the store reads of a download: the chunk, or when the store answers less per read (OpenSSH: at
/// most 255 KiB), the chunk cut into equal reads that it answers in full, sent together. The sender copies the
/// pieces of a chunk once, into its frame ([`Sender::handle_read_parts`]).
fn read_piece(chunk: u32, max_read: u32) -> u32 {
    let chunk = chunk.max(1);
    chunk.div_ceil(chunk.div_ceil(max_read.max(1)))
}

/// Most bytes read ahead of all downloads together, beyond what their windows hold: see [`ReadAhead`].
pub const READ_AHEAD_BUDGET: usize = 16 << 20;

/// Why a store read failed.
enum ReadFailure {
    Store {
        offset: u64,
        source: russh_sftp::client::error::Error,
    },
    /// The file ended before the size it had when the download began.
    Short {
        offset: u64,
        want: u32,
        got: usize,
    },
}

/// One completed read and, if it was read beyond the window, its share of the read-ahead budget.
struct Piece {
    data: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

type PendingRead<'a> = Pin<Box<dyn Future<Output = Result<Piece, ReadFailure>> + Send + 'a>>;

/// The file's reads ([`read_piece`] long), issued ahead of the [`Sender`] and handed to it in offset order.
///
/// Memory: reads that fit in the sender's free window ([`Sender::read_room`]) are free, as they end up in the
/// window anyway. Reads beyond it (at most one more window per download, so that the store's latency hides behind
/// the device's) each take their bytes from a budget shared by every download of the gateway
/// ([`READ_AHEAD_BUDGET`]), given back when the sender takes the data. When the budget is spent, downloads read
/// only into their windows: slower for a fast device, but a slow device (whose window stays full) can never pile up
/// more than its window plus its share of the budget. So the gateway holds at most window × chunk per download,
/// plus the budget.
struct ReadAhead<'a> {
    /// Until the last read is issued; the handle is closed once that read is done (the sender keeps what it
    /// sends until it is acknowledged, so nothing is read twice).
    file: Option<Arc<ReadFile>>,
    size: u64,
    piece: u32,
    /// Most bytes read beyond the free window for this download.
    beyond: u64,
    budget: &'a Arc<Semaphore>,
    /// Next offset to request.
    next: u64,
    reads: FuturesOrdered<PendingRead<'a>>,
    in_flight: u64,
    ready: VecDeque<Piece>,
    ready_bytes: u64,
}

impl<'a> ReadAhead<'a> {
    fn new(file: Arc<ReadFile>, size: u64, piece: u32, beyond: u64, budget: &'a Arc<Semaphore>) -> Self {
        let (reads, ready) = (FuturesOrdered::new(), VecDeque::new());
        ReadAhead {
            file: Some(file),
            size,
            piece: piece.max(1),
            beyond,
            budget,
            next: 0,
            reads,
            in_flight: 0,
            ready,
            ready_bytes: 0,
        }
    }

    /// Issues reads while the sender has room (`room` bytes from its read position), then up to one window more as
    /// the shared budget allows.
    fn fill(&mut self, room: u64) {
        // Reads of a held prefix are free but not unbounded.
        let most_reads = (2 * self.beyond / u64::from(self.piece)).max(2) as usize;
        while self.next < self.size && self.reads.len() < most_reads {
            let Some(file) = self.file.clone() else { break };
            let len = (self.size - self.next).min(u64::from(self.piece)) as u32;
            let ahead = self.in_flight + self.ready_bytes + u64::from(len);
            if ahead > room + self.beyond {
                break;
            }
            let budget = if ahead <= room {
                None
            } else {
                match self.budget.clone().try_acquire_many_owned(len) {
                    Ok(p) => Some(p),
                    Err(_) => break,
                }
            };
            let offset = self.next;
            self.reads.push_back(Box::pin(async move {
                let data =
                    file.read_exact_at(offset, len).await.map_err(|source| ReadFailure::Store { offset, source })?;
                if data.len() < len as usize {
                    return Err(ReadFailure::Short { offset, want: len, got: data.len() });
                }
                Ok(Piece { data: Bytes::from(data), _budget: budget })
            }));
            self.next += u64::from(len);
            self.in_flight += u64::from(len);
        }
        if self.next >= self.size {
            self.file = None;
        }
    }

    fn is_reading(&self) -> bool {
        !self.reads.is_empty()
    }

    /// Waits for the oldest read in flight.
    async fn next(&mut self) -> Result<(), ReadFailure> {
        if let Some(piece) = self.reads.next().await {
            let piece = piece?;
            let len = piece.data.len() as u64;
            self.in_flight -= len;
            self.ready_bytes += len;
            self.ready.push_back(piece);
        }
        Ok(())
    }

    /// The next `len` bytes of the file, if they have been read, as the pieces (or parts of pieces) that hold
    /// them, in order; no copy.
    fn take(&mut self, len: usize) -> Option<Vec<Bytes>> {
        if self.ready_bytes < len as u64 {
            return None;
        }
        self.ready_bytes -= len as u64;
        let mut parts = Vec::with_capacity(2);
        let mut need = len;
        while need > 0 {
            let front = self.ready.front_mut()?;
            if front.data.len() > need {
                parts.push(front.data.split_to(need));
                break;
            }
            need -= front.data.len();
            parts.push(self.ready.pop_front()?.data);
        }
        Some(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::read_piece;

    #[test]
    fn chunks_are_read_in_equal_pieces_the_store_answers_in_full() {
        const OPENSSH: u32 = 256 * 1024 - 1024;
        assert_eq!(read_piece(64 * 1024, OPENSSH), 64 * 1024);
        assert_eq!(read_piece(256 * 1024, OPENSSH), 128 * 1024);
        assert_eq!(read_piece(1 << 20, OPENSSH), 209_716); // 5 reads, the last 4 bytes shorter
        assert_eq!(read_piece(256 * 1024, 256 * 1024), 256 * 1024);
        assert_eq!(read_piece(100_000, 32 * 1024), 25_000);
        assert_eq!(read_piece(0, 0), 1);
        for (chunk, max) in [(1u32 << 20, OPENSSH), (100_000, 32 * 1024), (12_345, 1000), (7, 1)] {
            let p = read_piece(chunk, max);
            assert!(p <= max && chunk.div_ceil(p) == chunk.div_ceil(max), "{chunk} {max} {p}");
        }
    }
}
