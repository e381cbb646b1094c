//! Downloads: one task per `get`, driving a [`Sender`] with the file read ahead from the store.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqsftp_mqtt::rumqttc::QoS;
use mqsftp_proto::{DeviceId, ErrorCode, Response, Sender, SessionId, StreamParams, Topic, TransferId};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use crate::policy::Access;
use crate::server::{confine_file, sleep_until, Claim, Ctl, Failure, Registration, Shared};
use crate::store::StoreError;

pub(crate) async fn start_get(
    shared: Arc<Shared>,
    device: DeviceId,
    access: Arc<Access>,
    session: SessionId,
    id: String,
    (path, offset): (String, u64),
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
    let span = info_span!("get", %device, transfer, path = %rel.as_str());
    async move {
        let _registration = Registration { shared: &shared, transfer };
        let target = (store_path.as_str(), rel.as_str(), offset);
        match serve_get(&shared, (&device, &access), &session, &id, transfer, target, rx).await {
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
    id: &str,
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
    crate::ops::check_resolved(shared, &sftp, access, store_path, rel).await?;
    let bucket = shared.buckets.get(device, access.rate);
    let sftp_err = |op: &'static str| move |source| StoreError::Sftp { op, path: store_path.to_string(), source };
    let opened = async {
        let meta = sftp.metadata(store_path).await.map_err(sftp_err("stat"))?;
        if meta.is_dir() {
            return Ok(Err(meta));
        }
        let permit = sftp.handle_permit().await;
        let file = sftp.open(store_path).await.map_err(sftp_err("open"))?;
        Ok(Ok((meta, OpenFile { file, _permit: permit })))
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
    let mut sender = Sender::resume(transfer, size, offset, params, Instant::now());
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
                window: params.window,
            },
        )
        .await;
    let down = Topic::down(device, session);
    let block = (params.chunk_size as usize * params.window as usize).max(params.chunk_size as usize);
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
            sender.handle_read(data).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        }
        while let Some(chunk) = sender.poll_transmit() {
            if let Some(b) = &bucket {
                b.take(chunk.data.len()).await;
            }
            shared.stats.sent_bytes.fetch_add(chunk.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            shared
                .client
                .publish_bytes(down.clone(), QoS::AtLeastOnce, false, chunk.encode())
                .await
                .map_err(|e| (ErrorCode::Internal, format!("broker link failed: {e}")))?;
        }
        if let Some((size, sha)) = sender.poll_done() {
            shared.respond(device, session, &Response::GetDone { transfer, size, sha256: hex::encode(sha) }).await;
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

/// An open store file with its handle permit. Fields drop in order: the file's close is queued on the channel
/// before the permit lets another open through.
struct OpenFile {
    file: russh_sftp::client::fs::File,
    _permit: Option<crate::store::HandlePermit>,
}

/// Reads the file sequentially on its own task, one block ahead of the sender, so that SFTP round trips overlap
/// with waiting for the device's acknowledgements. Holds at most three blocks (one being filled by the read task,
/// one queued, one being cut into chunks), so memory per transfer stays bounded by `3 × block` (plus the SFTP
/// reads in flight, `store::SFTP_READS_IN_FLIGHT`).
struct ReadAhead {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    task: tokio::task::JoinHandle<()>,
}

impl ReadAhead {
    fn spawn(mut open: OpenFile, size: u64, block: usize) -> ReadAhead {
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut left = size;
            while left > 0 {
                let n = left.min(block as u64) as usize;
                let mut buf = vec![0u8; n];
                let r = open.file.read_exact(&mut buf).await.map(|_| Bytes::from(buf));
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    return;
                }
                left -= n as u64;
            }
        });
        ReadAhead { rx, current: Bytes::new(), task }
    }

    /// The next `len` bytes of the file.
    async fn read(&mut self, len: usize) -> std::io::Result<Bytes> {
        // Usually a slice of the current block (zero-copy); a read that straddles two blocks (after a resume at an
        // odd offset) is assembled.
        let mut assembled: Option<bytes::BytesMut> = None;
        loop {
            if self.current.is_empty() {
                self.current = match self.rx.recv().await {
                    Some(r) => r?,
                    None => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file ended early")),
                };
            }
            let have = assembled.as_ref().map_or(0, |b| b.len());
            let need = len - have;
            if assembled.is_none() && self.current.len() >= need {
                return Ok(self.current.split_to(need));
            }
            let take = need.min(self.current.len());
            let buf = assembled.get_or_insert_with(|| bytes::BytesMut::with_capacity(len));
            buf.extend_from_slice(&self.current.split_to(take));
            if buf.len() == len {
                return Ok(assembled.take().map(|b| b.freeze()).unwrap_or_default());
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}
