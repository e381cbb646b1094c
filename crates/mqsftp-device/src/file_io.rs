//! The device's file I/O on blocking threads, fed through bounded channels.
//!
//! Why: through `tokio::fs` every operation is a round trip to the blocking pool and every write is copied twice
//! (into a `BufWriter`, then into tokio's own buffer). perf showed memmove at 18 % of the device's CPU during a 1 GiB
//! get, and a 1 KiB get paid for about eight pool round trips (stat, open for the hash, open to append, flush,
//! fsync, rename, open the directory, fsync it). Here a download is one thread owning a `std::fs::File` that writes
//! each received `Bytes` as it is (no copy). A fresh get waits for the thread once, at the commit: the part file is
//! opened before the request, in place (one `open` that fails when there is none), and the thread fsyncs it as soon
//! as the last byte is written, while the device waits for the gateway's `get_done`, so that the commit is left
//! with the rename and the directory fsync; the file the target replaces is held open across the rename and freed
//! after the commit has answered ([`hold_replaced`]). A long download has the kernel start writing its pages to
//! disk every 8 MiB as they arrive ([`start_writeback`]), so that its final fsync is left with the last few. An
//! upload is one thread reading the file ahead, in the sender's chunk sizes, into `Bytes` handed to the sender as
//! they are (its one copy is the one into the frame), instead of a pool round trip and a fresh buffer per chunk.
//!
//! - [`PartWriter`]: the part file of a download (`.{name}.mqsftp-part`): open, hash what it holds, append, then
//!   either commit (data fsynced, renamed to the target, directory fsynced) or close (everything sent is in the
//!   part file, for a resume).
//! - [`FileReader`]: a local file read sequentially from a resume offset, a window ahead of the sender.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use mqsftp_proto::{ReadRequest, ReceiveError, Receiver};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::DeviceError;

/// Chunks queued for the writer thread: enough to keep the disk busy while the network delivers, few enough that
/// a slow disk holds back the acknowledgements (and so the gateway) instead of filling memory.
const WRITE_QUEUE: usize = 4;

/// Bytes appended to a part file between two requests to the kernel to start writing them to disk
/// ([`start_writeback`]).
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Buffer for reading back what a part file holds, to hash it.
const HASH_BUF: usize = 256 * 1024;

/// Most chunks the reader thread reads ahead of the sender.
const MAX_READ_AHEAD: usize = 64;

/// Why committing a download failed.
#[derive(Debug)]
pub(crate) enum CommitError {
    /// Writing or fsyncing the part file failed: what it holds is not known to be on disk.
    Part(DeviceError),
    /// Renaming the (fsynced) part file to the target failed; the part file is left as it was.
    Target(DeviceError),
}

impl From<CommitError> for DeviceError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Part(e) | CommitError::Target(e) => e,
        }
    }
}

enum Op {
    /// Create the part file if it does not exist yet (a download was accepted).
    Create,
    /// Feed what the part file holds into the receiver (hash and position) and hand it back.
    Hash(Box<Receiver>, oneshot::Sender<Result<Box<Receiver>, ReceiveError>>),
    /// Append these bytes; when `last`, fsync the part file right after (the download is complete unless it fails
    /// verification, and the fsync then overlaps the wait for `get_done`).
    Write { data: Bytes, last: bool },
    /// Fsync the part file, rename it to this target, fsync the target's directory, answer; then release the file
    /// the rename replaced (see [`hold_replaced`]) and stop.
    Commit(PathBuf, oneshot::Sender<Result<(), CommitError>>),
}

/// The part file of a download, written by a thread of its own.
///
/// Every method that talks to the thread reports a failure of the thread (a write that failed earlier) as
/// [`DeviceError::Local`] naming the part file: when the thread failed, the next message to it cannot be sent, and
/// the thread's own error is then collected by joining it.
pub(crate) struct PartWriter {
    path: PathBuf,
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<Result<(), CommitError>>>,
}

impl PartWriter {
    /// Opens the part file at `path` if it exists and starts the writer thread with it. Returns the writer and the
    /// bytes the part file holds (0 when there is none; then nothing is created until [`create`](Self::create) or
    /// the first write).
    ///
    /// The open happens here, on the caller's thread: it is one local `open` (and an `fstat` when the file
    /// exists), like the `is_dir` that picks the target, and waiting for a pool thread to do it cost a fresh 1 KiB
    /// get about 50 µs (docs/performance.md).
    pub(crate) fn open(path: &Path) -> Result<(PartWriter, u64), DeviceError> {
        let held = open_held(path).map_err(|source| DeviceError::Local { path: path.to_path_buf(), source })?;
        let len = held.as_ref().map_or(0, |(_, len)| *len);
        let (ops, queue) = mpsc::channel(WRITE_QUEUE);
        let thread_path = path.to_path_buf();
        let thread = tokio::task::spawn_blocking(move || run_writer(thread_path, held.map(|(f, _)| f), queue));
        Ok((PartWriter { path: path.to_path_buf(), ops: Some(ops), thread: Some(thread) }, len))
    }

    /// Creates the part file if it does not exist yet. Does not wait for the thread; a failure shows at the next
    /// call.
    pub(crate) async fn create(&mut self) -> Result<(), DeviceError> {
        self.send(Op::Create).await
    }

    /// Feeds what the part file holds into `rx` (one round trip). The outer error is the part file's, the inner
    /// one the receiver's (the part file is longer than the download).
    pub(crate) async fn hash_held(&mut self, rx: Receiver) -> Result<Result<Receiver, ReceiveError>, DeviceError> {
        let (reply, hashed) = oneshot::channel();
        self.send(Op::Hash(Box::new(rx), reply)).await?;
        match hashed.await {
            Ok(r) => Ok(r.map(|rx| *rx)),
            Err(_) => Err(self.stopped().await),
        }
    }

    /// Appends `data` (queued; waits only while the queue is full). `last`: these are the download's last bytes,
    /// and the thread fsyncs the part file right after them.
    pub(crate) async fn write(&mut self, data: Bytes, last: bool) -> Result<(), DeviceError> {
        self.send(Op::Write { data, last }).await
    }

    /// Makes the download final in one round trip: the part file is fsynced (unless that happened after the last
    /// write and nothing was written since), renamed to `target`, and the target's directory fsynced, in that
    /// order. Returns once that is done; the thread then frees the file the target replaced, on its own.
    pub(crate) async fn commit(mut self, target: &Path) -> Result<(), CommitError> {
        let (reply, done) = oneshot::channel();
        self.send(Op::Commit(target.to_path_buf(), reply)).await.map_err(CommitError::Part)?;
        match done.await {
            Ok(result) => {
                // The thread ends by itself once the replaced file is released.
                self.ops = None;
                drop(self.thread.take());
                result
            }
            // It stopped before answering (the fsync failed): its error is the answer.
            Err(_) => self.finish().await,
        }
    }

    /// Stops the thread once everything sent has been written: the part file then holds every byte handed to
    /// [`write`](Self::write), for a resume. Reports a write that failed.
    pub(crate) async fn close(mut self) -> Result<(), DeviceError> {
        self.finish().await.map_err(DeviceError::from)
    }

    async fn send(&mut self, op: Op) -> Result<(), DeviceError> {
        if let Some(ops) = &self.ops {
            if ops.send(op).await.is_ok() {
                return Ok(());
            }
        }
        Err(self.stopped().await)
    }

    /// The error of a thread that stopped on its own.
    async fn stopped(&mut self) -> DeviceError {
        match self.finish().await {
            Err(e) => e.into(),
            Ok(()) => self.local(std::io::Error::other("the part file writer stopped")),
        }
    }

    /// Closes the queue and waits for the thread to finish it.
    async fn finish(&mut self) -> Result<(), CommitError> {
        self.ops = None;
        let Some(thread) = self.thread.take() else { return Ok(()) };
        match thread.await {
            Ok(r) => r,
            Err(e) => {
                Err(CommitError::Part(self.local(std::io::Error::other(format!("the part file writer failed: {e}")))))
            }
        }
    }

    fn local(&self, source: std::io::Error) -> DeviceError {
        DeviceError::Local { path: self.path.clone(), source }
    }
}

/// The writer thread: works through `queue` on the part file (`file`, or created at the first need).
fn run_writer(path: PathBuf, mut file: Option<File>, mut queue: mpsc::Receiver<Op>) -> Result<(), CommitError> {
    let part_err = |source| CommitError::Part(DeviceError::Local { path: path.clone(), source });
    // Everything written so far is fsynced.
    let mut synced = false;
    // Bytes appended since the kernel was last asked to start writing them out.
    let mut unflushed: u64 = 0;
    // Where a chunk is copied to line it up with its place in the file (`write_lined_up`).
    let mut stage = Vec::new();
    while let Some(op) = queue.blocking_recv() {
        match op {
            Op::Create => {
                ensure_open(&mut file, &path).map_err(part_err)?;
            }
            Op::Hash(mut rx, reply) => {
                let f = ensure_open(&mut file, &path).map_err(part_err)?;
                match hash_into(f, &mut rx) {
                    Ok(Ok(())) => {
                        let _ = reply.send(Ok(rx));
                    }
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    Err(e) => return Err(part_err(e)),
                }
            }
            Op::Write { data, last } => {
                let f = ensure_open(&mut file, &path).map_err(part_err)?;
                write_lined_up(f, &data, &mut stage).map_err(part_err)?;
                unflushed += data.len() as u64;
                if unflushed >= WRITEBACK_STEP && !last {
                    start_writeback(f);
                    unflushed = 0;
                }
                // A failed fsync is final (the kernel may drop the dirty pages): the thread stops with it.
                if last {
                    f.sync_all().map_err(part_err)?;
                }
                synced = last;
            }
            Op::Commit(target, reply) => {
                let f = ensure_open(&mut file, &path).map_err(part_err)?;
                if !synced {
                    f.sync_all().map_err(part_err)?;
                }
                drop(file);
                let replaced = hold_replaced(&target);
                let _ = reply.send(commit(&path, &target));
                drop(replaced);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Alignment on which the kernel's copies run at full speed (a cache line).
const LINE: usize = 64;

/// How far into a buffer at `addr` bytes must start to sit at the same offset within a cache line as `pos`.
fn lined_up(addr: usize, pos: u64) -> usize {
    (pos as usize).wrapping_sub(addr) % LINE
}

/// Appends `data` to `f`, first copied into `stage` at the same offset within a cache line as its place in the file
/// when it is not there already.
///
/// Why: the kernel copies written bytes into the page cache with `rep movsb` on processors that have it fast
/// (FSRM). AMD's Zen 3 and Zen 4 run that 20 times slower when the destination is 1 to 15 bytes past the source's
/// offset within a cache line (glibc bug 30994 is the same slowdown in user space). A chunk's bytes sit wherever
/// they fell in the MQTT client's read buffer, so a whole download either hit that or did not: the page-cache
/// copy was 6 % of the device's CPU in one run and 37 % in the next (docs/performance.md, "Copies on AMD
/// processors"). The copy here costs a few hundredths of a second per GiB and makes the kernel's always fast.
fn write_lined_up(f: &mut File, data: &[u8], stage: &mut Vec<u8>) -> std::io::Result<()> {
    let pos = f.stream_position()?;
    if data.len() < 4096 || lined_up(data.as_ptr() as usize, pos) == 0 {
        return f.write_all(data);
    }
    stage.clear();
    stage.reserve(data.len() + LINE);
    let off = lined_up(stage.as_ptr() as usize, pos);
    stage.resize(off, 0);
    stage.extend_from_slice(data);
    f.write_all(&stage[off..])
}

/// Asks the kernel to start writing `f`'s dirty pages to disk now, without waiting for it.
///
/// Why: left alone, the kernel keeps a download's pages dirty in memory until the final fsync (up to 30 s, or a
/// tenth of RAM), which then writes all of them while the device waits: 0.75–1.1 s for 512 MiB on this machine's
/// disk, against 0.12–0.28 s when the writing was started every 8 MiB as the data arrived (docs/performance.md).
/// Starting it early also keeps a large download from filling a small device's memory with dirty pages. Advisory:
/// a failure here is ignored, since the fsync at the commit reports any error writing the file.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // Offset 0 and length 0: the whole file; pages already being written are skipped.
    // SAFETY: sync_file_range takes no pointers, and `f` stays open for the duration of the call.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

/// The part file opened to read and append, and its length; `None` when there is none.
fn open_held(path: &Path) -> std::io::Result<Option<(File, u64)>> {
    match File::options().read(true).append(true).open(path) {
        Ok(f) => {
            let len = f.metadata()?.len();
            Ok(Some((f, len)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn ensure_open<'a>(file: &'a mut Option<File>, path: &Path) -> std::io::Result<&'a mut File> {
    match file {
        Some(f) => Ok(f),
        None => Ok(file.insert(File::options().create(true).append(true).open(path)?)),
    }
}

/// Reads the part file from its start into `rx`. Appends still go to the end (the file is in append mode).
fn hash_into(f: &mut File, rx: &mut Receiver) -> std::io::Result<Result<(), ReceiveError>> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        let n = read_full(f, &mut buf)?;
        if n == 0 {
            return Ok(Ok(()));
        }
        if let Err(e) = rx.handle_held(&buf[..n]) {
            return Ok(Err(e));
        }
    }
}

/// The file at `target`, if any, held open (`O_PATH`: no read permission needed, no FIFO or device opened) across
/// the rename that replaces it, so that the filesystem frees it when this handle is dropped, after the caller has
/// its answer, rather than inside the rename. On ext4 here, freeing a replaced 1 KiB file inside the rename took
/// 180–240 µs of a 1 KiB get's commit, against 25 µs for the rename alone (docs/performance.md); freeing a large
/// file takes longer. Nothing depends on it: when the open fails, the rename frees the file as usual.
fn hold_replaced(target: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        File::options().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW).open(target).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = target;
        None
    }
}

/// Renames the fsynced part file to `target`, then fsyncs the directory so that the rename itself is durable.
fn commit(part: &Path, target: &Path) -> Result<(), CommitError> {
    if let Err(source) = std::fs::rename(part, target) {
        return Err(CommitError::Target(DeviceError::Local { path: target.to_path_buf(), source }));
    }
    if let Some(dir) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A local file read from an offset to its announced size by a thread of its own, a bounded number of chunks
/// ahead of the consumer.
pub(crate) struct FileReader {
    path: PathBuf,
    pieces: mpsc::Receiver<Result<Bytes, DeviceError>>,
    /// Read but not handed out yet; starts at `pos`.
    pending: Bytes,
    pos: u64,
}

impl FileReader {
    /// Starts reading `path` from `offset` up to `size`, in pieces of `piece` bytes, at most `ahead` pieces ahead
    /// (at least one, at most [`MAX_READ_AHEAD`]). Does not wait: an error opening the file shows at the first
    /// read.
    pub(crate) fn start(path: &Path, offset: u64, size: u64, piece: u32, ahead: usize) -> FileReader {
        let (tx, pieces) = mpsc::channel(ahead.clamp(1, MAX_READ_AHEAD));
        let thread_path = path.to_path_buf();
        // Detached: it stops at the end of the file, at an error, or when this reader is dropped.
        drop(tokio::task::spawn_blocking(move || run_reader(&thread_path, offset, size, piece.max(1), &tx)));
        FileReader { path: path.to_path_buf(), pieces, pending: Bytes::new(), pos: offset }
    }

    /// The bytes of `req`, which must continue where the previous read ended. Exactly `req.len` bytes, or an
    /// error naming the file (the file got shorter: [`DeviceError::LocalChanged`]).
    pub(crate) async fn read(&mut self, req: ReadRequest) -> Result<Bytes, DeviceError> {
        if req.offset != self.pos {
            let reason = format!("read at offset {} asked for where the file is read up to {}", req.offset, self.pos);
            return Err(DeviceError::Local { path: self.path.clone(), source: std::io::Error::other(reason) });
        }
        let len = req.len as usize;
        while self.pending.len() < len {
            let next = match self.pieces.recv().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => return Err(e),
                None => {
                    let at = self.pos + self.pending.len() as u64;
                    let reason = format!("the file reader stopped at offset {at}");
                    return Err(DeviceError::Local { path: self.path.clone(), source: std::io::Error::other(reason) });
                }
            };
            self.pending = if self.pending.is_empty() {
                next
            } else {
                // Only when the reads do not line up with the pieces (they do with the sender's chunk size).
                let mut joined = BytesMut::with_capacity(self.pending.len() + next.len());
                joined.extend_from_slice(&self.pending);
                joined.extend_from_slice(&next);
                joined.freeze()
            };
        }
        self.pos += len as u64;
        Ok(self.pending.split_to(len))
    }
}

fn run_reader(path: &Path, offset: u64, size: u64, piece: u32, tx: &mpsc::Sender<Result<Bytes, DeviceError>>) {
    let local = |source| DeviceError::Local { path: path.to_path_buf(), source };
    let mut file = match File::open(path).and_then(|mut f| f.seek(SeekFrom::Start(offset)).map(|_| f)) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(local(e)));
            return;
        }
    };
    let mut pos = offset;
    while pos < size {
        let len = (size - pos).min(u64::from(piece)) as usize;
        // Read into spare capacity: `vec![0; len]` zeroed every piece first (3 % of the device's CPU in a put). The
        // bytes land at the same offset within a cache line as in the file, so that the kernel's copy out of the
        // page cache runs at full speed (`write_lined_up`).
        let mut buf = Vec::with_capacity(len + LINE);
        let off = lined_up(buf.as_ptr() as usize, pos);
        buf.resize(off, 0);
        let item = match (&mut file).take(len as u64).read_to_end(&mut buf) {
            Ok(n) if n == len => Ok(Bytes::from(buf).slice(off..)),
            Ok(n) => Err(DeviceError::LocalChanged {
                path: path.to_path_buf(),
                reason: format!(
                    "it got shorter while it was being uploaded: it ends at {} bytes, it had {size} when hashed",
                    pos + n as u64
                ),
            }),
            Err(e) => Err(local(e)),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
        pos += len as u64;
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Length and modification time of a local file.
pub(crate) type Stamp = (u64, Option<std::time::SystemTime>);

/// The stamp of a local file to upload, taken before it is read: a change after it shows as another length or
/// modification time at the end. The file is opened, so that a file that cannot be read is reported before
/// anything is sent; anything but a regular file is refused (`InvalidInput`).
pub(crate) async fn upload_stamp(path: &Path) -> std::io::Result<Stamp> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || {
        let m = File::open(&path)?.metadata()?;
        if !m.is_file() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok((m.len(), m.modified().ok()))
    })
    .await
    {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("reading the file's metadata failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use mqsftp_proto::HashAlg;

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Writes `data` in pieces of `piece` bytes, each its own `Bytes` (as chunks arrive), the last one marked so.
    async fn write_all(w: &mut PartWriter, data: &[u8], piece: usize) -> Result<(), DeviceError> {
        let pieces = data.chunks(piece).count();
        for (i, c) in data.chunks(piece).enumerate() {
            w.write(Bytes::copy_from_slice(c), i + 1 == pieces).await?;
        }
        Ok(())
    }

    fn local_path(e: &DeviceError) -> &Path {
        match e {
            DeviceError::Local { path, .. } => path,
            other => panic!("not a local error: {other}"),
        }
    }

    #[test]
    fn lined_up_puts_the_bytes_at_the_files_offset_within_a_cache_line() {
        for addr in [0x1000usize, 0x1005, 0x103f, 0x7fff_ffff_fff1] {
            for pos in [0u64, 1, 5, 63, 64, 261_120, 261_125, 1 << 40] {
                let off = lined_up(addr, pos);
                assert!(off < LINE, "addr {addr:#x} pos {pos}: {off}");
                assert_eq!((addr + off) % LINE, (pos % LINE as u64) as usize, "addr {addr:#x} pos {pos}");
            }
        }
    }

    #[test]
    fn lined_up_writes_land_byte_exact_whatever_the_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        let data = content(200_000, 9);
        let mut stage = Vec::new();
        let mut expected = Vec::new();
        // Sources at every offset within a cache line, file positions moving by odd amounts, small and large.
        let mut at = 0;
        for (i, len) in [5000usize, 100, 70_001, 4096, 4095, 65_536, 3, 20_000].into_iter().enumerate() {
            let src = &data[i * 7 % 64..][at % 1000..][..len];
            write_lined_up(&mut f, src, &mut stage).unwrap();
            expected.extend_from_slice(src);
            at += len;
        }
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[tokio::test]
    async fn writes_land_byte_exact_and_the_target_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (part, target) = (dir.path().join(".f.mqsftp-part"), dir.path().join("f"));
        let (mut w, held) = PartWriter::open(&part).unwrap();
        assert_eq!(held, 0);
        assert!(!part.exists(), "nothing is created before the download is accepted");
        w.create().await.unwrap();
        let data = content(1_000_003, 1);
        write_all(&mut w, &data, 65_536).await.unwrap();
        assert!(!target.exists(), "nothing at the target before the commit");
        w.commit(&target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), data);
        assert!(!part.exists(), "the part file became the target");
    }

    #[tokio::test]
    async fn an_empty_download_commits_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let (part, target) = (dir.path().join(".e.mqsftp-part"), dir.path().join("e"));
        let (mut w, _) = PartWriter::open(&part).unwrap();
        w.create().await.unwrap();
        w.commit(&target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), Vec::<u8>::new());
    }

    /// A long download has the kernel write its pages as they arrive (every [`WRITEBACK_STEP`]), so that the
    /// commit's fsync is left with the last step instead of the whole file.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_long_download_is_written_to_disk_as_it_arrives_not_all_at_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(".big.mqsftp-part");
        let len = 4 * WRITEBACK_STEP as usize;
        let (mut w, _) = PartWriter::open(&part).unwrap();
        for c in content(len, 5).chunks(261_120) {
            w.write(Bytes::copy_from_slice(c), false).await.unwrap();
        }
        // Closing does not fsync: whatever is not dirty any more, the writer had the kernel write out.
        w.close().await.unwrap();
        let f = File::open(&part).unwrap();
        assert_eq!(f.metadata().unwrap().len(), len as u64);
        // Left to itself the kernel keeps these pages dirty for 30 s (`vm.dirty_expire_centisecs`), unless a
        // tenth of the memory is dirty. Written out as they came, at most the last step's pages are left.
        let page = 4096;
        let most = (WRITEBACK_STEP + 261_120) / page + 1;
        let started = std::time::Instant::now();
        let mut dirty = mqsftp_testkit::dirty_pages(&f).unwrap();
        while dirty > most && started.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(50));
            dirty = mqsftp_testkit::dirty_pages(&f).unwrap();
        }
        assert!(dirty <= most, "{dirty} pages of {} still dirty after 20 s (at most {most} expected)", len / 4096);
    }

    /// An interruption closes the writer: everything written is in the part file, and the next attempt hashes it
    /// and continues after it.
    #[tokio::test]
    async fn close_keeps_everything_written_and_a_resume_continues_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (part, target) = (dir.path().join(".r.mqsftp-part"), dir.path().join("r"));
        let data = content(700_001, 2);
        let (mut w, _) = PartWriter::open(&part).unwrap();
        w.create().await.unwrap();
        write_all(&mut w, &data[..300_000], 4096).await.unwrap();
        w.close().await.unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), &data[..300_000]);

        let (mut w, held) = PartWriter::open(&part).unwrap();
        assert_eq!(held, 300_000);
        let rx = w.hash_held(Receiver::new(7, data.len() as u64, HashAlg::Blake3)).await.unwrap().unwrap();
        assert_eq!(rx.received(), 300_000);
        write_all(&mut w, &data[300_000..], 65_536).await.unwrap();
        w.commit(&target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), data);
    }

    /// The fsync after a write marked last covers only what was written up to then: bytes written after it are
    /// fsynced by the commit, and land.
    #[tokio::test]
    async fn bytes_written_after_the_last_marked_write_still_reach_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let (part, target) = (dir.path().join(".m.mqsftp-part"), dir.path().join("m"));
        let data = content(200_000, 3);
        let (mut w, _) = PartWriter::open(&part).unwrap();
        write_all(&mut w, &data[..120_000], 65_536).await.unwrap();
        w.write(Bytes::copy_from_slice(&data[120_000..]), false).await.unwrap();
        w.commit(&target).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), data);
        assert!(!part.exists());
    }

    #[tokio::test]
    async fn a_part_file_longer_than_the_download_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(".l.mqsftp-part");
        std::fs::write(&part, content(5000, 3)).unwrap();
        let (mut w, held) = PartWriter::open(&part).unwrap();
        assert_eq!(held, 5000);
        let got = w.hash_held(Receiver::new(1, 4000, HashAlg::Sha256)).await.unwrap();
        assert!(matches!(got, Err(ReceiveError::PastEnd { .. })), "{got:?}");
        w.close().await.unwrap();
    }

    /// The part file's directory went away before the first write: the error names the part file, and nothing
    /// appears at the target.
    #[tokio::test]
    async fn a_write_error_names_the_part_file_and_nothing_reaches_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (part, target) = (sub.join(".w.mqsftp-part"), dir.path().join("w"));
        let (mut w, _) = PartWriter::open(&part).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        // The first failure shows at a later write, or at the latest at the commit.
        let e = match write_all(&mut w, &content(1 << 20, 4), 65_536).await {
            Err(e) => e,
            Ok(()) => match w.commit(&target).await {
                Err(CommitError::Part(e)) => e,
                Err(CommitError::Target(e)) => panic!("the rename was tried: {e}"),
                Ok(()) => panic!("committed without a part file"),
            },
        };
        assert_eq!(local_path(&e), part, "{e}");
        assert!(e.to_string().contains(".w.mqsftp-part"), "{e}");
        assert!(!target.exists());
    }

    #[tokio::test]
    async fn a_part_file_that_cannot_be_opened_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(".d.mqsftp-part");
        std::fs::create_dir(&part).unwrap();
        let e = PartWriter::open(&part).err().expect("a directory is no part file");
        assert_eq!(local_path(&e), part, "{e}");
    }

    /// Data is fsynced before the rename, so a rename that fails leaves the whole part file (for another try)
    /// and the error names the target.
    #[tokio::test]
    async fn a_failed_rename_names_the_target_and_keeps_the_part_file() {
        let dir = tempfile::tempdir().unwrap();
        let (part, target) = (dir.path().join(".t.mqsftp-part"), dir.path().join("t"));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("occupied"), b"x").unwrap();
        let data = content(200_000, 5);
        let (mut w, _) = PartWriter::open(&part).unwrap();
        w.create().await.unwrap();
        write_all(&mut w, &data, 65_536).await.unwrap();
        match w.commit(&target).await {
            Err(CommitError::Target(e)) => assert_eq!(local_path(&e), target, "{e}"),
            Err(CommitError::Part(e)) => panic!("blamed the part file: {e}"),
            Ok(()) => panic!("renamed over a directory"),
        }
        assert_eq!(std::fs::read(&part).unwrap(), data);
        assert!(target.join("occupied").exists());
    }

    /// The commit holds what the target was across the rename (to free it after answering). Whatever that is, the
    /// download replaces the name alone: a symlink is replaced, not followed, and its destination is left as it
    /// was; a FIFO is replaced without being opened (an ordinary open would wait for a writer for ever).
    #[tokio::test]
    async fn the_commit_replaces_a_file_a_symlink_or_a_fifo_at_the_target_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not to be touched").unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, content(300_000, 7)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo {}", fifo.display());
        for (n, target) in [file, link, fifo].into_iter().enumerate() {
            let data = content(1024 + n, n as u8);
            let part = dir.path().join(format!(".{n}.mqsftp-part"));
            let (mut w, _) = PartWriter::open(&part).unwrap();
            w.create().await.unwrap();
            write_all(&mut w, &data, 512).await.unwrap();
            let commit = w.commit(&target);
            let Ok(committed) = tokio::time::timeout(std::time::Duration::from_secs(10), commit).await else {
                // Free the writer thread stuck in an open of the FIFO (as a writer would), so that the test ends.
                let _ = File::options().write(true).open(&target);
                panic!("the commit over {} did not return", target.display());
            };
            assert!(committed.is_ok(), "commit over {}", target.display());
            let meta = std::fs::symlink_metadata(&target).unwrap();
            assert!(meta.is_file(), "{} is now a plain file", target.display());
            assert_eq!(std::fs::read(&target).unwrap(), data, "{}", target.display());
            assert!(!part.exists());
        }
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not to be touched");
    }

    /// Reads as the sender asks for them: from `offset`, in `chunk` sizes.
    async fn read_as_sender(r: &mut FileReader, offset: u64, size: u64, chunk: u64) -> Result<Vec<u8>, DeviceError> {
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < size {
            let len = (size - pos).min(chunk) as u32;
            let b = r.read(ReadRequest { offset: pos, len }).await?;
            assert_eq!(b.len(), len as usize);
            out.extend_from_slice(&b);
            pos += u64::from(len);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn the_reader_delivers_the_exact_bytes_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.bin");
        let data = content(1_000_000, 6);
        std::fs::write(&path, &data).unwrap();
        let size = data.len() as u64;
        for (offset, piece, chunk) in [(0, 65_536, 65_536), (300_001, 65_536, 65_536), (12_345, 4096, 10_000)] {
            let mut r = FileReader::start(&path, offset, size, piece, 4);
            let got = read_as_sender(&mut r, offset, size, chunk).await.unwrap();
            assert!(got == data[offset as usize..], "offset {offset}, pieces {piece}, reads {chunk}");
        }
        // Everything already sent: nothing to read.
        let mut r = FileReader::start(&path, size, size, 65_536, 4);
        assert!(read_as_sender(&mut r, size, size, 65_536).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_reader_reports_a_file_that_got_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.bin");
        let data = content(100_000, 7);
        std::fs::write(&path, &data).unwrap();
        // Hashed at 150,000 bytes; 100,000 are left.
        let mut r = FileReader::start(&path, 0, 150_000, 65_536, 4);
        let first = r.read(ReadRequest { offset: 0, len: 65_536 }).await.unwrap();
        assert_eq!(first, &data[..65_536]);
        let e = r.read(ReadRequest { offset: 65_536, len: 65_536 }).await.unwrap_err();
        assert!(matches!(&e, DeviceError::LocalChanged { path: p, .. } if *p == path), "{e}");
        assert!(e.to_string().contains("short.bin") && e.to_string().contains("100000"), "{e}");
    }

    #[tokio::test]
    async fn the_reader_names_a_file_it_cannot_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.bin");
        let mut r = FileReader::start(&path, 0, 10, 65_536, 4);
        let e = r.read(ReadRequest { offset: 0, len: 10 }).await.unwrap_err();
        assert_eq!(local_path(&e), path, "{e}");
    }

    #[tokio::test]
    async fn an_upload_is_stamped_only_from_a_readable_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.bin");
        std::fs::write(&path, content(600_000, 8)).unwrap();
        let (len, mtime) = upload_stamp(&path).await.unwrap();
        assert_eq!((len, mtime), (600_000, std::fs::metadata(&path).unwrap().modified().ok()));
        let e = upload_stamp(dir.path()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(e.to_string(), "not a regular file");
        let e = upload_stamp(&dir.path().join("gone")).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
}
