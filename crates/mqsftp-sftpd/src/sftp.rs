//! The SFTP v3 request loop of one `sftp` subsystem channel.
//!
//! russh-sftp's `server::run` reads a request, awaits its handler, writes the reply, and only then reads the
//! next request, so a client's pipelined reads and writes (OpenSSH keeps 64 in flight) are served one at a
//! time. This loop uses russh-sftp's packet types but runs each request as its own job on tokio's blocking
//! pool (all of them are file system calls), so file I/O stays off the async runtime and requests overlap.
//!
//! Order: READ, WRITE (except to a handle opened with APPEND), STAT, LSTAT, READLINK and REALPATH run
//! concurrently with each other; every other request (open, close, fsync, rename, remove, …) waits for all earlier requests and holds back all later
//! ones. A fair read/write lock taken in arrival order does that. So a client gets the same results as from a
//! sequential server, except that pipelined reads and writes of the same bytes of a file race (as with any
//! server that does not serialise them; no client relies on it). At most [`MAX_IN_FLIGHT`] requests run at
//! once; beyond that the loop stops reading and SSH flow control holds the client back.

use std::collections::{HashMap, HashSet};
use std::fs::{File, ReadDir};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh::server::Msg;
use russh::Channel;
use russh_sftp::extensions::LimitsExtension;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as NameEntry, FileAttributes, Handle, Name, Packet, StatusCode, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, Semaphore};
use tracing::{debug, info, Instrument};

use crate::fs::{self, lock, Fail, Last, OpenLock, Root, Target};

/// Largest request accepted (OpenSSH's SFTP_MAX_MSG_LENGTH); a longer one ends the session.
const MAX_PACKET: u32 = 256 * 1024;
/// Largest READ answered and WRITE expected, as announced in `limits@openssh.com`.
const MAX_DATA: u32 = MAX_PACKET - 1024;
/// Requests running at once.
const MAX_IN_FLIGHT: usize = 64;
/// Open file and directory handles per session.
const MAX_HANDLES: usize = 1024;
/// Names per READDIR reply.
const READDIR_BATCH: usize = 100;

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_LSTAT: u8 = 7;
const SSH_FXP_REALPATH: u8 = 16;
const SSH_FXP_STAT: u8 = 17;
const SSH_FXP_READLINK: u8 = 19;
const SSH_FXP_SYMLINK: u8 = 20;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_EXTENDED: u8 = 200;

const POSIX_RENAME: &str = "posix-rename@openssh.com";
const FSYNC: &str = "fsync@openssh.com";
const LIMITS: &str = "limits@openssh.com";

/// Why a session ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("reading from the channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("request of {0} bytes exceeds the limit of {MAX_PACKET}")]
    TooLong(u32),
    #[error("the first message is not SSH_FXP_INIT (type {0})")]
    NotInit(u8),
}

/// Serves SFTP on `channel` until the client closes it.
pub(crate) async fn serve(channel: Channel<Msg>, root: Arc<Root>) {
    let (mut read_half, write_half) = channel.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(MAX_IN_FLIGHT);
    // One writer, so replies never interleave on the channel.
    let writer = tokio::spawn(
        async move {
            while let Some(reply) = rx.recv().await {
                if let Err(e) = write_half.data_bytes(reply).await {
                    debug!(error = %e, "cannot send a reply; the channel is gone");
                    break;
                }
            }
            let _ = write_half.eof().await;
            let _ = write_half.close().await;
        }
        .in_current_span(),
    );
    // Requests are read on a task of their own, into a queue, so that the SSH session is never held up delivering
    // channel data to us. Otherwise a wait below (for a slot, or for the order of an open after running reads) stops
    // the session loop, which then never sees the client's window adjustments; the writer waits for window, the
    // running requests wait for the writer, and everything stalls (seen with 200 concurrent downloads). The queue
    // holds no more than the client has in flight.
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let reading = tokio::spawn(
        async move {
            let mut reader = read_half.make_reader();
            pump(&mut reader, requests_tx).await;
        }
        .in_current_span(),
    );
    let session = Arc::new(Session::new(root));
    match run(requests, session, tx).await {
        Ok(()) => debug!("sftp session ended"),
        Err(e) => info!(error = %e, "sftp session ended"),
    }
    reading.abort();
    let _ = writer.await;
}

async fn read_packet<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Bytes>, SessionError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_PACKET {
        return Err(SessionError::TooLong(len));
    }
    let mut buf = vec![0u8; len as usize];
    reader.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

enum Order {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// Reads requests from `reader` into `requests` until the client closes the channel or a read fails (the error is
/// queued too).
async fn pump<R: AsyncRead + Unpin>(
    reader: &mut R,
    requests: mpsc::UnboundedSender<Result<Option<Bytes>, SessionError>>,
) {
    loop {
        let next = read_packet(reader).await;
        let end = !matches!(next, Ok(Some(_)));
        if requests.send(next).is_err() || end {
            break;
        }
    }
}

/// The next request from the reading task; `None` when the client closed the channel.
async fn next_request(
    requests: &mut mpsc::UnboundedReceiver<Result<Option<Bytes>, SessionError>>,
) -> Result<Option<Bytes>, SessionError> {
    requests.recv().await.unwrap_or(Ok(None))
}

async fn run(
    mut requests: mpsc::UnboundedReceiver<Result<Option<Bytes>, SessionError>>,
    session: Arc<Session>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), SessionError> {
    let Some(init) = next_request(&mut requests).await? else { return Ok(()) };
    let kind = init.first().copied().unwrap_or(0);
    if kind != SSH_FXP_INIT {
        return Err(SessionError::NotInit(kind));
    }
    let client_version = init.get(1..5).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    debug!(client_version, "sftp session started");
    let mut version = Version::new();
    for name in [POSIX_RENAME, FSYNC, LIMITS] {
        version.extensions.insert(name.to_string(), "1".to_string());
    }
    let _ = tx.send(encode(Packet::Version(version), 0)).await;

    let order = Arc::new(RwLock::new(()));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(request) = next_request(&mut requests).await? {
        let kind = request.first().copied().unwrap_or(0);
        let concurrent = match kind {
            SSH_FXP_READ | SSH_FXP_STAT | SSH_FXP_LSTAT | SSH_FXP_READLINK | SSH_FXP_REALPATH => true,
            SSH_FXP_WRITE => !session.is_append_write(&request),
            _ => false,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let guard = if concurrent {
            Order::Shared(order.clone().read_owned().await)
        } else {
            Order::Exclusive(order.clone().write_owned().await)
        };
        let session = session.clone();
        let tx = tx.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let reply = session.handle(request);
            let _ = tx.blocking_send(reply);
            drop(guard);
            drop(slot);
        });
    }
    Ok(())
}

enum Open {
    /// A file, and its count among the open files while they are locked ([`crate::OpenFiles::Locked`]).
    File(Arc<File>, #[expect(dead_code, reason = "held for its Drop, which uncounts the file")] Option<OpenLock>),
    Dir {
        path: PathBuf,
        entries: Arc<Mutex<ReadDir>>,
    },
}

#[derive(Default)]
struct Handles {
    next: u64,
    open: HashMap<String, Open>,
    /// Handles opened with APPEND: their WRITEs land at the end of the file whatever the offset, so they are
    /// run one after the other, in order.
    append: HashSet<String>,
}

struct Session {
    root: Arc<Root>,
    handles: Mutex<Handles>,
    /// Tests hold READs here to see whether they overlap.
    #[cfg(test)]
    read_gate: Option<Arc<tests::Gate>>,
}

fn no_handle() -> Fail {
    Fail::new(StatusCode::Failure, "invalid handle")
}

fn ok() -> Result<Reply, Fail> {
    Ok(Reply::Status(StatusCode::Ok))
}

/// A successful answer.
enum Reply {
    Packet(Packet),
    Status(StatusCode),
}

impl Session {
    fn new(root: Arc<Root>) -> Self {
        Session {
            root,
            handles: Mutex::new(Handles::default()),
            #[cfg(test)]
            read_gate: None,
        }
    }

    fn insert(&self, open: Open) -> Result<String, Fail> {
        let mut handles = lock(&self.handles);
        if handles.open.len() >= MAX_HANDLES {
            return Err(Fail::new(StatusCode::Failure, format!("too many open handles (limit {MAX_HANDLES})")));
        }
        handles.next += 1;
        let handle = handles.next.to_string();
        handles.open.insert(handle.clone(), open);
        Ok(handle)
    }

    /// Whether `request` (an SSH_FXP_WRITE: type, id, handle, …) writes to a handle opened with APPEND.
    fn is_append_write(&self, request: &[u8]) -> bool {
        let mut rest = request.get(5..).unwrap_or_default();
        let Some(handle) = take_string(&mut rest) else { return false };
        lock(&self.handles).append.contains(&handle)
    }

    fn file(&self, handle: &str) -> Result<Arc<File>, Fail> {
        match lock(&self.handles).open.get(handle) {
            Some(Open::File(f, _)) => Ok(f.clone()),
            _ => Err(no_handle()),
        }
    }

    /// Runs one request and encodes its reply.
    fn handle(&self, mut request: Bytes) -> Bytes {
        let kind = request.first().copied().unwrap_or(0);
        let id = request.get(1..5).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let known = (SSH_FXP_OPEN..=SSH_FXP_SYMLINK).contains(&kind) || kind == SSH_FXP_EXTENDED;
        if !known {
            return status(id, StatusCode::OpUnsupported, &format!("unsupported request type {kind}"));
        }
        let result = match Packet::try_from(&mut request) {
            Ok(packet) => self.dispatch(packet),
            Err(e) => Err(Fail::new(StatusCode::BadMessage, format!("malformed request: {e}"))),
        };
        match result {
            Ok(Reply::Packet(packet)) => encode(packet, id),
            Ok(Reply::Status(code)) => status(id, code, &code.to_string()),
            Err(fail) => {
                debug!(id, code = ?fail.code, message = %fail.message, "request failed");
                status(id, fail.code, &fail.message)
            }
        }
    }

    fn dispatch(&self, packet: Packet) -> Result<Reply, Fail> {
        let root = &self.root;
        match packet {
            Packet::Open(r) => {
                let last = if r.pflags.contains(russh_sftp::protocol::OpenFlags::CREATE) {
                    Last::Create
                } else {
                    Last::Follow
                };
                let path = root.resolve(&r.filename, last)?;
                let file = fs::open_file(&path, r.pflags, &r.attrs)?;
                let counted = root.lock_open(&file)?;
                let handle = self.insert(Open::File(Arc::new(file), counted))?;
                if r.pflags.contains(russh_sftp::protocol::OpenFlags::APPEND) {
                    lock(&self.handles).append.insert(handle.clone());
                }
                debug!(path = %r.filename, handle, "opened");
                Ok(Reply::Packet(Packet::Handle(Handle { id: r.id, handle })))
            }
            Packet::Close(r) => {
                let mut handles = lock(&self.handles);
                handles.append.remove(&r.handle);
                match handles.open.remove(&r.handle) {
                    Some(_) => ok(),
                    None => Err(no_handle()),
                }
            }
            Packet::Read(r) => {
                let file = self.file(&r.handle)?;
                #[cfg(test)]
                if let Some(gate) = &self.read_gate {
                    gate.pass();
                }
                let len = r.len.min(MAX_DATA) as usize;
                let mut data = vec![0u8; len];
                let mut filled = 0;
                while filled < len {
                    match file.read_at(&mut data[filled..], r.offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if filled == 0 && len > 0 {
                    return Ok(Reply::Status(StatusCode::Eof));
                }
                data.truncate(filled);
                Ok(Reply::Packet(Packet::Data(Data { id: r.id, data })))
            }
            Packet::Write(r) => {
                self.file(&r.handle)?.write_all_at(&r.data, r.offset)?;
                ok()
            }
            Packet::Lstat(r) => {
                let md = std::fs::symlink_metadata(root.resolve(&r.path, Last::NoFollow)?)?;
                Ok(Reply::Packet(Packet::Attrs(Attrs { id: r.id, attrs: fs::attrs(&md) })))
            }
            Packet::Stat(r) => {
                let md = std::fs::metadata(root.resolve(&r.path, Last::Follow)?)?;
                Ok(Reply::Packet(Packet::Attrs(Attrs { id: r.id, attrs: fs::attrs(&md) })))
            }
            Packet::Fstat(r) => {
                let md = match lock(&self.handles).open.get(&r.handle) {
                    Some(Open::File(f, _)) => f.metadata()?,
                    Some(Open::Dir { path, .. }) => std::fs::metadata(path)?,
                    None => return Err(no_handle()),
                };
                Ok(Reply::Packet(Packet::Attrs(Attrs { id: r.id, attrs: fs::attrs(&md) })))
            }
            Packet::SetStat(r) => {
                let path = root.resolve(&r.path, Last::Follow)?;
                fs::set_attrs(Target::Path(&path), &r.attrs)?;
                ok()
            }
            Packet::FSetStat(r) => {
                let open = match lock(&self.handles).open.get(&r.handle) {
                    Some(Open::File(f, _)) => Ok(f.clone()),
                    Some(Open::Dir { path, .. }) => Err(path.clone()),
                    None => return Err(no_handle()),
                };
                match open {
                    Ok(file) => fs::set_attrs(Target::File(&file), &r.attrs)?,
                    Err(path) => fs::set_attrs(Target::Path(&path), &r.attrs)?,
                }
                ok()
            }
            Packet::OpenDir(r) => {
                let path = root.resolve(&r.path, Last::Follow)?;
                let entries = std::fs::read_dir(&path)?;
                let handle = self.insert(Open::Dir { path, entries: Arc::new(Mutex::new(entries)) })?;
                Ok(Reply::Packet(Packet::Handle(Handle { id: r.id, handle })))
            }
            Packet::ReadDir(r) => {
                let entries = match lock(&self.handles).open.get(&r.handle) {
                    Some(Open::Dir { entries, .. }) => entries.clone(),
                    _ => return Err(no_handle()),
                };
                let mut entries = lock(&entries);
                let mut files = Vec::new();
                for entry in entries.by_ref().take(READDIR_BATCH) {
                    let entry = entry?;
                    // DirEntry::metadata does not follow a symbolic link, like OpenSSH's lstat here.
                    let Ok(md) = entry.metadata() else { continue };
                    files.push(NameEntry::new(entry.file_name().to_string_lossy(), fs::attrs(&md)));
                }
                if files.is_empty() {
                    return Ok(Reply::Status(StatusCode::Eof));
                }
                Ok(Reply::Packet(Packet::Name(Name { id: r.id, files })))
            }
            Packet::Remove(r) => {
                let path = root.resolve(&r.filename, Last::NoFollow)?;
                root.unless_open(&[(&path, &r.filename)], || Ok(std::fs::remove_file(&path)?))?;
                info!(path = %r.filename, "removed");
                ok()
            }
            Packet::MkDir(r) => {
                let path = root.resolve(&r.path, Last::Create)?;
                let mode = r.attrs.permissions.map_or(0o777, |p| p & 0o7777);
                std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), mode).create(path)?;
                ok()
            }
            Packet::RmDir(r) => {
                std::fs::remove_dir(root.resolve(&r.path, Last::NoFollow)?)?;
                ok()
            }
            Packet::RealPath(r) => {
                let lexical = root.lexical(&r.path)?;
                let path = match root.resolve(&r.path, Last::Follow) {
                    Ok(host) => root.client_path(&host),
                    Err(fail) if fail.code == StatusCode::NoSuchFile => lexical,
                    Err(fail) => return Err(fail),
                };
                Ok(name(r.id, path))
            }
            Packet::ReadLink(r) => {
                let link = root.resolve(&r.path, Last::NoFollow)?;
                std::fs::read_link(&link)?;
                // The target as the client sees it; a link leading outside the root is refused by resolve.
                let target = root.resolve(&r.path, Last::Follow)?;
                Ok(name(r.id, root.client_path(&target)))
            }
            Packet::Rename(r) => {
                let from = root.resolve(&r.oldpath, Last::NoFollow)?;
                let to = root.resolve(&r.newpath, Last::NoFollow)?;
                root.unless_open(&[(&from, &r.oldpath), (&to, &r.newpath)], || fs::rename_no_replace(&from, &to))?;
                info!(from = %r.oldpath, to = %r.newpath, "renamed");
                ok()
            }
            Packet::Symlink(_) => {
                Err(Fail::new(StatusCode::OpUnsupported, "creating symbolic links is not supported by this server"))
            }
            Packet::Extended(r) => self.extended(r.id, &r.request, Bytes::from(r.data)),
            _ => Err(Fail::new(StatusCode::BadMessage, "not a request")),
        }
    }

    fn extended(&self, id: u32, request: &str, mut data: Bytes) -> Result<Reply, Fail> {
        let malformed = || Fail::new(StatusCode::BadMessage, format!("malformed {request} request"));
        match request {
            POSIX_RENAME => {
                let from = take_string(&mut data).ok_or_else(malformed)?;
                let to = take_string(&mut data).ok_or_else(malformed)?;
                let from_path = self.root.resolve(&from, Last::NoFollow)?;
                let to_path = self.root.resolve(&to, Last::NoFollow)?;
                let names = [(from_path.as_path(), from.as_str()), (to_path.as_path(), to.as_str())];
                self.root.unless_open(&names, || Ok(std::fs::rename(&from_path, &to_path)?))?;
                info!(%from, %to, "renamed (replacing)");
                ok()
            }
            FSYNC => {
                let handle = take_string(&mut data).ok_or_else(malformed)?;
                self.file(&handle)?.sync_all()?;
                ok()
            }
            LIMITS => {
                let limits = LimitsExtension {
                    max_packet_len: u64::from(MAX_PACKET),
                    max_read_len: u64::from(MAX_DATA),
                    max_write_len: u64::from(MAX_DATA),
                    max_open_handles: MAX_HANDLES as u64,
                };
                let data = russh_sftp::ser::to_bytes(&limits)
                    .map_err(|e| Fail::new(StatusCode::Failure, format!("cannot encode limits: {e}")))?;
                Ok(Reply::Packet(Packet::ExtendedReply(ExtendedReply { id, data: data.to_vec() })))
            }
            other => Err(Fail::new(StatusCode::OpUnsupported, format!("unsupported extension {other}"))),
        }
    }
}

fn name(id: u32, path: String) -> Reply {
    let entry = NameEntry { filename: path.clone(), longname: path, attrs: FileAttributes::empty() };
    Reply::Packet(Packet::Name(Name { id, files: vec![entry] }))
}

/// An SSH string (u32 length, bytes) holding UTF-8.
fn take_string(data: &mut impl Buf) -> Option<String> {
    if data.remaining() < 4 {
        return None;
    }
    let len = data.get_u32() as usize;
    if data.remaining() < len {
        return None;
    }
    String::from_utf8(data.copy_to_bytes(len).to_vec()).ok()
}

fn encode(packet: Packet, id: u32) -> Bytes {
    match Bytes::try_from(packet) {
        Ok(bytes) => bytes,
        Err(e) => status(id, StatusCode::Failure, &format!("cannot encode the reply: {e}")),
    }
}

/// SSH_FXP_STATUS, encoded by hand so that it cannot fail.
fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + 1 + 4 + 4 + 4 + message.len() + 4 + 2);
    b.put_u32((1 + 4 + 4 + 4 + message.len() + 4 + 2) as u32);
    b.put_u8(SSH_FXP_STATUS);
    b.put_u32(id);
    b.put_u32(code as u32);
    b.put_u32(message.len() as u32);
    b.put_slice(message.as_bytes());
    b.put_u32(2);
    b.put_slice(b"en");
    b.freeze()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    use std::collections::HashMap;
    use std::sync::Condvar;
    use std::time::Duration;

    use russh_sftp::protocol::{Close, Init, Open, OpenFlags, Read};
    use tokio::io::AsyncWriteExt;

    /// Lets threads through once `need` of them wait at the same time (or each after 5 s); remembers whether they
    /// met.
    pub(super) struct Gate {
        need: usize,
        state: Mutex<(usize, bool)>,
        cv: Condvar,
    }

    impl Gate {
        fn new(need: usize) -> Self {
            Gate { need, state: Mutex::new((0, false)), cv: Condvar::new() }
        }

        pub(super) fn pass(&self) {
            let mut s = lock(&self.state);
            s.0 += 1;
            if s.0 >= self.need {
                s.1 = true;
                self.cv.notify_all();
                return;
            }
            let (mut s, _) =
                self.cv.wait_timeout_while(s, Duration::from_secs(5), |s| !s.1).unwrap_or_else(|e| e.into_inner());
            // Gone from the gate: a later arrival does not count as meeting this one.
            s.0 -= 1;
        }

        fn met(&self) -> bool {
            lock(&self.state).1
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Bytes>) -> Packet {
        decode(tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap())
    }

    fn decode(mut reply: Bytes) -> Packet {
        let len = reply.get_u32() as usize;
        assert_eq!(len, reply.len());
        Packet::try_from(&mut reply).unwrap()
    }

    /// Runs a session on the server half of a duplex stream, its requests read by the same pump as `serve`'s.
    fn serve_duplex(
        mut server_read: tokio::io::ReadHalf<tokio::io::DuplexStream>,
        session: Session,
        tx: mpsc::Sender<Bytes>,
    ) -> tokio::task::JoinHandle<Result<(), SessionError>> {
        let (rtx, rrx) = mpsc::unbounded_channel();
        tokio::spawn(async move { pump(&mut server_read, rtx).await });
        tokio::spawn(run(rrx, Arc::new(session), tx))
    }

    /// Two pipelined READs are in the handler at the same time (each waits for the other at the gate), and the
    /// CLOSE sent after them is answered only after both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_reads_overlap_and_close_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let gate = Arc::new(Gate::new(2));
        let mut session = Session::new(Arc::new(Root::open(dir.path(), crate::OpenFiles::Shared).unwrap()));
        session.read_gate = Some(gate.clone());
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (server_read, _server_write) = tokio::io::split(server);
        let (tx, mut rx) = mpsc::channel(64);
        let task = serve_duplex(server_read, session, tx);

        let requests = [
            Packet::Init(Init { version: 3, extensions: HashMap::new() }),
            Packet::Open(Open {
                id: 1,
                filename: "/f".into(),
                pflags: OpenFlags::READ,
                attrs: FileAttributes::empty(),
            }),
            Packet::Read(Read { id: 2, handle: "1".into(), offset: 0, len: 1000 }),
            Packet::Read(Read { id: 3, handle: "1".into(), offset: 1000, len: 1000 }),
            Packet::Close(Close { id: 4, handle: "1".into() }),
        ];
        for request in requests {
            client.write_all(&Bytes::try_from(request).unwrap()).await.unwrap();
        }
        let mut replies = Vec::new();
        for _ in 0..5 {
            let reply = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
            replies.push(decode(reply));
        }
        assert!(gate.met(), "the two READs did not run at the same time");
        assert!(matches!(replies[0], Packet::Version(_)), "{:?}", replies[0]);
        assert!(matches!(&replies[1], Packet::Handle(h) if h.id == 1 && h.handle == "1"), "{:?}", replies[1]);
        let mut data: Vec<(u32, Vec<u8>)> = replies[2..4]
            .iter()
            .map(|p| match p {
                Packet::Data(d) => (d.id, d.data.clone()),
                other => panic!("expected data, got {other:?}"),
            })
            .collect();
        data.sort();
        assert_eq!(data, vec![(2, content[..1000].to_vec()), (3, content[1000..2000].to_vec())]);
        assert!(
            matches!(&replies[4], Packet::Status(s) if s.id == 4 && s.status_code == StatusCode::Ok),
            "{:?}",
            replies[4]
        );
        drop(client);
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
    }

    /// Pipelined writes to a handle opened with APPEND land in the order sent (they are not run concurrently).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(Arc::new(Root::open(dir.path(), crate::OpenFiles::Shared).unwrap()));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (server_read, _server_write) = tokio::io::split(server);
        let (tx, mut rx) = mpsc::channel(64);
        let task = serve_duplex(server_read, session, tx);
        let mut requests = vec![
            Packet::Init(Init { version: 3, extensions: HashMap::new() }),
            Packet::Open(Open {
                id: 1,
                filename: "log".into(),
                pflags: OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::APPEND,
                attrs: FileAttributes::empty(),
            }),
        ];
        let blocks: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 700]).collect();
        for (i, block) in blocks.iter().enumerate() {
            let id = 2 + i as u32;
            requests.push(Packet::Write(russh_sftp::protocol::Write {
                id,
                handle: "1".into(),
                offset: 0,
                data: block.clone(),
            }));
        }
        requests.push(Packet::Close(Close { id: 100, handle: "1".into() }));
        let count = requests.len();
        for request in requests {
            client.write_all(&Bytes::try_from(request).unwrap()).await.unwrap();
        }
        for _ in 0..count {
            let reply = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
            match decode(reply) {
                Packet::Status(s) => assert_eq!(s.status_code, StatusCode::Ok, "{s:?}"),
                Packet::Version(_) | Packet::Handle(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(std::fs::read(dir.path().join("log")).unwrap() == blocks.concat());
        drop(client);
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
    }

    /// Unknown and malformed requests get a status with their id; an oversized one ends the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_a_status_and_oversized_ones_end_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(Arc::new(Root::open(dir.path(), crate::OpenFiles::Shared).unwrap()));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (server_read, _server_write) = tokio::io::split(server);
        let (tx, mut rx) = mpsc::channel(64);
        let task = serve_duplex(server_read, session, tx);
        let init = Packet::Init(Init { version: 3, extensions: HashMap::new() });
        client.write_all(&Bytes::try_from(init).unwrap()).await.unwrap();
        let raw = |kind: u8, id: u32, rest: &[u8]| {
            let mut b = BytesMut::new();
            b.put_u32((5 + rest.len()) as u32);
            b.put_u8(kind);
            b.put_u32(id);
            b.put_slice(rest);
            b.freeze()
        };
        client.write_all(&raw(99, 7, b"")).await.unwrap();
        client.write_all(&raw(SSH_FXP_OPEN, 8, &[0, 0, 0, 200, b'x'])).await.unwrap();
        client.write_all(&raw(SSH_FXP_EXTENDED, 9, &[0, 0, 0, 3, b'f', b'o', b'o'])).await.unwrap();
        assert!(matches!(next(&mut rx).await, Packet::Version(v) if v.extensions.contains_key(FSYNC)));
        for (id, code) in [(7, StatusCode::OpUnsupported), (8, StatusCode::BadMessage), (9, StatusCode::OpUnsupported)]
        {
            match next(&mut rx).await {
                Packet::Status(s) => assert_eq!((s.id, s.status_code), (id, code), "{s:?}"),
                other => panic!("{other:?}"),
            }
        }
        client.write_all(&(MAX_PACKET + 1).to_be_bytes()).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
        assert!(matches!(ended, Err(SessionError::TooLong(n)) if n == MAX_PACKET + 1), "{ended:?}");
    }

    #[test]
    fn hand_made_status_decodes() {
        let mut bytes = status(7, StatusCode::NoSuchFile, "no such file");
        let _len = bytes.get_u32();
        match Packet::try_from(&mut bytes).unwrap() {
            Packet::Status(s) => {
                assert_eq!(
                    (s.id, s.status_code, s.error_message.as_str()),
                    (7, StatusCode::NoSuchFile, "no such file")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
