//! The two ends of a stream of chunks, as state machines with no I/O. Downloads and uploads use the same pair:
//! for a `get` the gateway runs the [`Sender`] and the device the [`Receiver`]; for a `put` it is the other way
//! round.
//!
//! [`Sender`] asks its driver to read the file piece by piece ([`Sender::poll_read`] / [`Sender::handle_read`]),
//! hands out chunk frames to publish ([`Sender::poll_transmit`]), keeps at most `window` chunks unacknowledged
//! (each encoded once, so a resend or a publish still queued in the MQTT client shares the window's memory),
//! hashes the file as it first reads it, and resends everything unacknowledged when no acknowledgement has moved
//! the window for `retransmit_after` (go-back-N; MQTT keeps order within one topic, so a gap means a lost
//! connection, not reordering).
//!
//! [`Receiver`] accepts the next chunk in order, tells its driver what to write and what to acknowledge, ignores
//! duplicates, and verifies size and hash ([`crate::hash`]) once the expected hash is known (from `get_done` for a
//! download, from the `put` request or its `commit` for an upload) and all bytes are in.
//!
//! Time is passed in as [`Instant`]s, so tests drive both ends on a virtual clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::hash::{Digest, HashAlg, Hasher, HexDigest};
use crate::{Chunk, TransferId};

/// Tunables of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    /// Data bytes per chunk.
    pub chunk_size: u32,
    /// Chunks in flight before waiting for an acknowledgement.
    pub window: u32,
    /// Resend the unacknowledged chunks when the window has not moved for this long.
    pub retransmit_after: Duration,
    /// Abandon the transfer when the window has not moved for this long.
    pub give_up_after: Duration,
}

impl StreamParams {
    /// The defaults: 255 KiB chunks, 8 in flight (~2 MiB a window). Chosen by measurement (docs/performance.md):
    /// against 64 KiB chunks, every process of a transfer (device, broker, gateway, SFTP server) spends less CPU per
    /// GiB, a sixth less in all, as each pays per message; 255 KiB rather than 256 because OpenSSH answers at most
    /// 255 KiB per read (`limits@openssh.com`), so a chunk is one SFTP read or write, not two (sshd's CPU per GiB
    /// fell by a fifth). 8 in flight make a lone 1 GiB get on two cores 13–17 % faster than 4. A fixed 8 made
    /// answers under load wait behind twice the chunks in the broker (three-gateway fault test: 145–184 of 200
    /// transfers completed within the devices' 3 s answer timeout, against 187–200 with 4), so the gateway shares a
    /// budget of windows among the transfers running and 8 is only what a transfer gets when few run
    /// (`[transfer] shared_window`; with it 199–200 of 200 completed). The gateway's memory stays within a window
    /// per download since it runs on one thread by default (with one thread per core, glibc's per-thread arenas
    /// kept ~16 MiB of freed 256 KiB blocks more).
    pub const DEFAULT: StreamParams = StreamParams {
        chunk_size: 255 * 1024,
        window: 8,
        retransmit_after: Duration::from_secs(5),
        give_up_after: Duration::from_secs(60),
    };
}

impl Default for StreamParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A read the driver must perform on the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// Where to read.
    pub offset: u64,
    /// Exactly this many bytes (the file must still be this long).
    pub len: u32,
}

/// A chunk to publish: the chunk and its encoded frame, which share one allocation with the sender's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The chunk; `data` is a slice of `frame`.
    pub chunk: Chunk,
    /// The encoded frame ([`Chunk::encode`]), ready to publish.
    pub frame: Bytes,
}

/// Why a download stopped on the sending side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The store gave back a different amount of data than asked for.
    #[error(
        "store returned {got} bytes at offset {offset} where {want} were expected (file changed while being read?)"
    )]
    ShortRead { offset: u64, want: u32, got: usize },
    /// The device stopped acknowledging.
    #[error("no acknowledgement from the device for {0:?}")]
    Stalled(Duration),
}

#[derive(Debug)]
struct Unacked {
    sent: Transmit,
    pending: bool,
}

/// The gateway's end of a download.
#[derive(Debug)]
pub struct Sender {
    transfer: TransferId,
    size: u64,
    params: StreamParams,
    /// Bytes the receiver held before this transfer began: read for the hash, never sent.
    start: u64,
    /// Next offset to read from the store.
    read_pos: u64,
    reading: bool,
    /// Read but not acknowledged, in offset order; `pending` says whether it still has to be (re)sent.
    unacked: VecDeque<Unacked>,
    acked: u64,
    hasher: Option<Hasher>,
    digest: Option<Digest>,
    done_sent: bool,
    last_progress: Instant,
    last_retransmit: Instant,
    retransmits: u64,
    resent_bytes: u64,
    acks_beyond_sent: u64,
}

impl Sender {
    /// A download of a `size`-byte file hashed with `hash`, started at `now`.
    pub fn new(transfer: TransferId, size: u64, params: StreamParams, hash: HashAlg, now: Instant) -> Self {
        Self::resume(transfer, size, 0, params, hash, now)
    }

    /// A transfer of which the receiver already holds the first `start` bytes (capped at `size`). Those bytes are
    /// still read (so that the whole file is hashed) but never sent.
    pub fn resume(
        transfer: TransferId,
        size: u64,
        start: u64,
        params: StreamParams,
        hash: HashAlg,
        now: Instant,
    ) -> Self {
        let params = StreamParams { chunk_size: params.chunk_size.max(1), window: params.window.max(1), ..params };
        let start = start.min(size);
        let mut s = Self {
            transfer,
            size,
            params,
            start,
            read_pos: 0,
            reading: false,
            unacked: VecDeque::new(),
            acked: start,
            hasher: Some(hash.hasher()),
            digest: None,
            done_sent: false,
            last_progress: now,
            last_retransmit: now,
            retransmits: 0,
            resent_bytes: 0,
            acks_beyond_sent: 0,
        };
        s.finish_hash_if_read();
        s
    }

    /// For a caller that already knows the file's hash (an uploader that read the whole file in an earlier
    /// attempt of the same upload): the data is not hashed again, and the first `start` bytes, which the receiver
    /// holds, are not read at all.
    /// [`poll_done`](Self::poll_done) reports the given hash.
    pub fn with_known_digest(mut self, digest: Digest) -> Self {
        self.hasher = None;
        self.digest = Some(digest);
        self.read_pos = self.start;
        self
    }

    /// The transfer id.
    pub fn transfer(&self) -> TransferId {
        self.transfer
    }
    /// File size.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The parameters in force.
    pub fn params(&self) -> StreamParams {
        self.params
    }
    /// Bytes the device has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }
    /// Bytes sent more than once.
    pub fn resent_bytes(&self) -> u64 {
        self.resent_bytes
    }
    /// Acknowledgements beyond what this sender had sent (see [`handle_ack`](Self::handle_ack)).
    pub fn acks_beyond_sent(&self) -> u64 {
        self.acks_beyond_sent
    }
    /// Changes the window (at least 1) from now on, e.g. as the gateway shares its window among more or fewer
    /// transfers. A smaller window than is in flight sends nothing more until acknowledgements bring the window
    /// below it; nothing sent is taken back.
    pub fn set_window(&mut self, window: u32) {
        self.params.window = window.max(1);
    }

    /// Whether the device has acknowledged the whole file.
    pub fn is_complete(&self) -> bool {
        self.acked == self.size
    }

    fn finish_hash_if_read(&mut self) {
        if self.read_pos == self.size {
            if let Some(h) = self.hasher.take() {
                self.digest = Some(h.finalize());
            }
        }
    }

    /// The next read the driver should perform, if the window has room.
    pub fn poll_read(&mut self) -> Option<ReadRequest> {
        let in_prefix = self.read_pos < self.start;
        if self.reading
            || self.read_pos >= self.size
            || (!in_prefix && self.unacked.len() >= self.params.window as usize)
        {
            return None;
        }
        self.reading = true;
        Some(ReadRequest { offset: self.read_pos, len: self.next_len() })
    }

    /// How many bytes the sender would take from reads right now: the rest of the held prefix (read only to be
    /// hashed, then dropped) plus the free part of the window. A driver that reads ahead can fetch this much
    /// without holding more than the window; anything beyond is read-ahead it has to account for itself.
    pub fn read_room(&self) -> u64 {
        let free = u64::from(self.params.window).saturating_sub(self.unacked.len() as u64);
        let prefix = self.start.saturating_sub(self.read_pos);
        (prefix + free * u64::from(self.params.chunk_size)).min(self.size - self.read_pos)
    }

    /// Length of the next read: a chunk, cut short at the end of the held prefix and of the file.
    fn next_len(&self) -> u32 {
        let end = if self.read_pos < self.start { self.start } else { self.size };
        (end - self.read_pos).min(u64::from(self.params.chunk_size)) as u32
    }

    /// The data of the read last returned by [`poll_read`](Self::poll_read).
    pub fn handle_read(&mut self, data: Bytes) -> Result<(), SendError> {
        self.handle_read_parts(std::slice::from_ref(&data))
    }

    /// Like [`handle_read`](Self::handle_read), with the data in `parts` one after the other (a chunk read from
    /// the store in several reads); they are copied once, into the frame.
    pub fn handle_read_parts(&mut self, parts: &[Bytes]) -> Result<(), SendError> {
        let want = self.next_len();
        let len: usize = parts.iter().map(Bytes::len).sum();
        if !self.reading || len != want as usize {
            return Err(SendError::ShortRead { offset: self.read_pos, want, got: len });
        }
        self.reading = false;
        if let Some(h) = self.hasher.as_mut() {
            for p in parts {
                h.update(p);
            }
        }
        let offset = self.read_pos;
        self.read_pos += len as u64;
        if offset >= self.start {
            // Encoded once: the window keeps the frame, and the chunk's data is a slice of it.
            let frame = Chunk::encode_parts(self.transfer, offset, parts);
            let data = frame.slice(crate::chunk::HEADER_LEN..);
            let sent = Transmit { chunk: Chunk { transfer: self.transfer, offset, data }, frame };
            self.unacked.push_back(Unacked { sent, pending: true });
        }
        self.finish_hash_if_read();
        Ok(())
    }

    /// The next chunk to publish, if any (cloning its frame costs no copy).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let u = self.unacked.iter_mut().find(|u| u.pending)?;
        u.pending = false;
        Some(u.sent.clone())
    }

    /// Size and hash to announce once every byte has been read and sent once; returned a single time.
    pub fn poll_done(&mut self) -> Option<(u64, Digest)> {
        if self.done_sent || self.read_pos < self.size || self.unacked.iter().any(|u| u.pending) {
            return None;
        }
        let digest = self.digest?;
        self.done_sent = true;
        Some((self.size, digest))
    }

    /// The receiver has everything below `next`.
    ///
    /// An acknowledgement beyond what this sender has sent means the receiver took bytes that did not come from it
    /// (a forged or stray frame with a valid CRC, placed ahead of the stream): it counts only up to what was sent,
    /// and is counted ([`acks_beyond_sent`](Self::acks_beyond_sent)). The transfer goes on; the receiver's
    /// whole-file check then fails on the foreign bytes and it starts again, as after any corruption.
    pub fn handle_ack(&mut self, next: u64, now: Instant) {
        if next > self.read_pos {
            self.acks_beyond_sent += 1;
        }
        let next = next.min(self.read_pos);
        if next <= self.acked {
            return; // stale or duplicate
        }
        while let Some(u) = self.unacked.front() {
            if u.sent.chunk.end() <= next {
                self.unacked.pop_front();
            } else {
                break;
            }
        }
        self.acked = next;
        self.last_progress = now;
    }

    /// When [`handle_timeout`](Self::handle_timeout) next needs calling.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_complete() || self.unacked.is_empty() {
            return None;
        }
        let resend = self.last_progress.max(self.last_retransmit) + self.params.retransmit_after;
        Some(resend.min(self.last_progress + self.params.give_up_after))
    }

    /// Drives timers: resends the window after `retransmit_after` without progress, gives up after
    /// `give_up_after`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SendError> {
        if self.is_complete() || self.unacked.is_empty() {
            return Ok(());
        }
        let idle = now.saturating_duration_since(self.last_progress);
        if idle >= self.params.give_up_after {
            return Err(SendError::Stalled(idle));
        }
        if now.saturating_duration_since(self.last_progress.max(self.last_retransmit)) >= self.params.retransmit_after {
            self.last_retransmit = now;
            self.retransmits += 1;
            for u in self.unacked.iter_mut() {
                if !u.pending {
                    u.pending = true;
                    self.resent_bytes += u.sent.chunk.data.len() as u64;
                }
            }
        }
        Ok(())
    }
}

/// What the device driver should do with a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Write `data` at `offset`, then acknowledge `ack`.
    Write { offset: u64, data: Bytes, ack: u64 },
    /// Already had it (or it is ahead of a gap): acknowledge `ack` again, write nothing.
    Reack { ack: u64 },
}

/// Why a download failed on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// A chunk would run past the announced size.
    #[error("chunk at offset {offset} with {len} bytes runs past the announced size {size}")]
    PastEnd { offset: u64, len: usize, size: u64 },
    /// `get_done` announced another size than `get_accepted`.
    #[error("gateway announced {announced} bytes but finished with {done}")]
    SizeChanged { announced: u64, done: u64 },
    /// The hash announced is not 64 lowercase hex digits.
    #[error(transparent)]
    BadHash(#[from] crate::hash::BadDigest),
    /// The hash announced is of another algorithm than the transfer is hashed with.
    #[error("a {got} hash was announced for a transfer hashed with {expected}")]
    OtherAlg { expected: HashAlg, got: HashAlg },
    /// The data received does not hash to what was announced.
    #[error("{alg} mismatch: {expected} was announced, the data received hashes to {actual}")]
    ChecksumMismatch { alg: HashAlg, expected: String, actual: String },
}

/// The device's end of a download.
#[derive(Debug)]
pub struct Receiver {
    transfer: TransferId,
    size: u64,
    next: u64,
    hasher: Option<Hasher>,
    alg: HashAlg,
    expected: Option<Digest>,
    finished: bool,
}

impl Receiver {
    /// A download of `size` bytes hashed with `hash`, as announced in `get_accepted`.
    pub fn new(transfer: TransferId, size: u64, hash: HashAlg) -> Self {
        Self { transfer, size, next: 0, hasher: Some(hash.hasher()), alg: hash, expected: None, finished: false }
    }
    /// The transfer id.
    pub fn transfer(&self) -> TransferId {
        self.transfer
    }
    /// Bytes received in order so far.
    pub fn received(&self) -> u64 {
        self.next
    }
    /// Announced size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the device already held before this transfer (a resumed download), in order from offset 0: hashed,
    /// counted as received, never written again.
    pub fn handle_held(&mut self, data: &[u8]) -> Result<(), ReceiveError> {
        let end = self.next + data.len() as u64;
        if end > self.size {
            return Err(ReceiveError::PastEnd { offset: self.next, len: data.len(), size: self.size });
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
        self.next = end;
        Ok(())
    }

    /// A chunk of this transfer arrived.
    pub fn handle_chunk(&mut self, chunk: Chunk) -> Result<Received, ReceiveError> {
        if chunk.end() > self.size {
            return Err(ReceiveError::PastEnd { offset: chunk.offset, len: chunk.data.len(), size: self.size });
        }
        if chunk.offset != self.next || chunk.data.is_empty() {
            return Ok(Received::Reack { ack: self.next });
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk.data);
        }
        self.next = chunk.end();
        Ok(Received::Write { offset: chunk.offset, ack: self.next, data: chunk.data })
    }

    /// The algorithm the data is hashed with.
    pub fn hash_alg(&self) -> HashAlg {
        self.alg
    }

    /// The whole file's size and hash arrived (a download's `get_done`; an upload's `put` or `commit`).
    pub fn handle_done(&mut self, size: u64, digest: &HexDigest) -> Result<(), ReceiveError> {
        if size != self.size {
            return Err(ReceiveError::SizeChanged { announced: self.size, done: size });
        }
        if digest.alg() != self.alg {
            return Err(ReceiveError::OtherAlg { expected: self.alg, got: digest.alg() });
        }
        self.expected = Some(digest.parse()?);
        Ok(())
    }

    /// Once all bytes are in and the hash is known: `Some(Ok(digest))` for a verified file, `Some(Err)` for a
    /// mismatch. Returns `Some` only once.
    pub fn poll_finished(&mut self) -> Option<Result<Digest, ReceiveError>> {
        if self.finished || self.next != self.size {
            return None;
        }
        let expected = self.expected?;
        let actual = self.hasher.take()?.finalize();
        self.finished = true;
        if actual == expected {
            Some(Ok(actual))
        } else {
            Some(Err(ReceiveError::ChecksumMismatch { alg: self.alg, expected: expected.hex(), actual: actual.hex() }))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::testing::{Lossy, Rng};

    fn file(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed | 1);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    #[test]
    fn a_read_in_parts_sends_what_a_whole_read_sends() {
        let data = file(10_000, 3);
        let params = StreamParams { chunk_size: 4096, window: 8, ..StreamParams::default() };
        let now = Instant::now();
        let (mut whole, mut parts) = (
            Sender::new(1, 10_000, params, HashAlg::Blake3, now),
            Sender::new(1, 10_000, params, HashAlg::Blake3, now),
        );
        while let Some(r) = whole.poll_read() {
            let (o, l) = (r.offset as usize, r.len as usize);
            whole.handle_read(Bytes::copy_from_slice(&data[o..o + l])).unwrap();
            let p = parts.poll_read().unwrap();
            assert_eq!(p, r);
            let (a, b) = (Bytes::copy_from_slice(&data[o..o + l / 3]), Bytes::copy_from_slice(&data[o + l / 3..o + l]));
            // Parts that do not add up to the read are refused, and the read stays open.
            assert!(matches!(parts.handle_read_parts(std::slice::from_ref(&a)), Err(SendError::ShortRead { .. })));
            parts.handle_read_parts(&[a, Bytes::new(), b]).unwrap();
        }
        while let Some(t) = whole.poll_transmit() {
            assert_eq!(parts.poll_transmit(), Some(t));
        }
        assert_eq!(parts.poll_transmit(), None);
        assert_eq!(whole.poll_done(), parts.poll_done());
    }

    /// Runs a whole download over a lossy link on a virtual clock; returns (bytes written, resent bytes, now).
    fn run(data: &[u8], params: StreamParams, alg: HashAlg, mut link: Lossy) -> (Vec<u8>, u64, Duration) {
        let start = Instant::now();
        let mut now = start;
        let mut tx = Sender::new(42, data.len() as u64, params, alg, now);
        let mut rx = Receiver::new(42, data.len() as u64, alg);
        let mut out = vec![0u8; data.len()];
        let mut done: Option<(u64, Digest)> = None;
        let mut acks: Vec<u64> = Vec::new();
        for _ in 0..1_000_000 {
            while let Some(r) = tx.poll_read() {
                let (o, l) = (r.offset as usize, r.len as usize);
                tx.handle_read(Bytes::copy_from_slice(&data[o..o + l])).unwrap();
            }
            while let Some(t) = tx.poll_transmit() {
                let c = Chunk::decode(t.frame).expect("the sender's frames decode");
                for c in link.deliver(c) {
                    match rx.handle_chunk(c).unwrap() {
                        Received::Write { offset, data, ack } => {
                            out[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                            acks.push(ack);
                        }
                        Received::Reack { ack } => acks.push(ack),
                    }
                }
            }
            if let Some(d) = tx.poll_done() {
                done = Some(d);
            }
            if let Some((size, sha)) = done.take() {
                if link.drop_this() {
                    // A lost get_done is recovered by the device's next ack/timeout in the real driver; here we
                    // model it as delivered later.
                    done = Some((size, sha));
                } else {
                    rx.handle_done(size, &sha.into()).unwrap();
                }
            }
            for a in acks.drain(..) {
                if !link.drop_this() {
                    tx.handle_ack(a, now);
                }
            }
            if let Some(res) = rx.poll_finished() {
                assert_eq!(res.expect("verified"), alg.digest(data));
                assert!(tx.is_complete() || data.is_empty() || tx.acked() <= data.len() as u64);
                return (out, tx.resent_bytes(), now - start);
            }
            match tx.poll_timeout() {
                Some(t) => {
                    now = now.max(t);
                    tx.handle_timeout(now).unwrap();
                }
                None => now += Duration::from_millis(1),
            }
        }
        panic!("download did not finish");
    }

    #[test]
    fn clean_link_delivers_every_size() {
        for alg in HashAlg::ALL {
            for len in [0, 1, 65535, 65536, 65537, 3 * 65536 + 7] {
                let data = file(len, len as u64);
                let (out, resent, _) = run(&data, StreamParams::default(), alg, Lossy::perfect());
                assert_eq!(out, data, "len {len}");
                assert_eq!(resent, 0);
            }
        }
    }

    #[test]
    fn lossy_duplicating_reordering_link_still_delivers() {
        let params = StreamParams { chunk_size: 1000, window: 4, ..StreamParams::default() };
        for seed in 1..40 {
            let data = file(50_000 + seed as usize * 37, seed);
            let link = Lossy { rng: Rng(seed * 7919), loss: 0.1, dup: 0.1, reorder: 0.1, held: Vec::new() };
            let (out, _, _) = run(&data, params, HashAlg::ALL[seed as usize % 2], link);
            assert_eq!(out, data, "seed {seed}");
        }
    }

    /// A download resumed at any offset sends exactly the missing bytes and still hashes the whole file.
    #[test]
    fn resume_sends_only_what_is_missing() {
        let data = file(10_000, 3);
        let params = StreamParams { chunk_size: 1000, window: 3, ..StreamParams::default() };
        for (i, start) in [0u64, 1, 999, 1000, 1001, 5500, 9999, 10_000].into_iter().enumerate() {
            let now = Instant::now();
            let alg = HashAlg::ALL[i % 2];
            let mut tx = Sender::resume(9, data.len() as u64, start, params, alg, now);
            let mut rx = Receiver::new(9, data.len() as u64, alg);
            rx.handle_held(&data[..start as usize]).unwrap();
            let mut sent = 0u64;
            let mut out = data[..start as usize].to_vec();
            let mut done = None;
            for _ in 0..10_000 {
                while let Some(r) = tx.poll_read() {
                    let (o, l) = (r.offset as usize, r.len as usize);
                    tx.handle_read(Bytes::copy_from_slice(&data[o..o + l])).unwrap();
                }
                while let Some(c) = tx.poll_transmit().map(|t| t.chunk) {
                    assert!(c.offset >= start, "held bytes are never sent");
                    sent += c.data.len() as u64;
                    if let Received::Write { data, ack, .. } = rx.handle_chunk(c).unwrap() {
                        out.extend_from_slice(&data);
                        tx.handle_ack(ack, now);
                    }
                }
                if let Some((size, digest)) = tx.poll_done() {
                    rx.handle_done(size, &digest.into()).unwrap();
                }
                if let Some(r) = rx.poll_finished() {
                    done = Some(r.unwrap());
                    assert_eq!(done, Some(alg.digest(&data)), "start {start}: the whole file's hash");
                    break;
                }
            }
            assert!(done.is_some(), "start {start}: finished");
            assert_eq!(sent, data.len() as u64 - start, "start {start}");
            assert_eq!(out, data);
            assert!(tx.is_complete());
        }
    }

    #[test]
    fn window_bounds_unacknowledged_data() {
        let now = Instant::now();
        let params = StreamParams { chunk_size: 10, window: 3, ..StreamParams::default() };
        let mut tx = Sender::new(1, 1000, params, HashAlg::Sha256, now);
        let mut sent = 0;
        while let Some(r) = tx.poll_read() {
            tx.handle_read(Bytes::from(vec![0; r.len as usize])).unwrap();
            while tx.poll_transmit().is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, 3, "never more than `window` chunks before an ack");
        tx.handle_ack(10, now);
        assert!(tx.poll_read().is_some(), "an ack opens the window");
    }

    #[test]
    fn a_window_changed_midway_bounds_what_is_sent_from_then_on() {
        let now = Instant::now();
        let params = StreamParams { chunk_size: 10, window: 4, ..StreamParams::default() };
        let mut tx = Sender::new(1, 1000, params, HashAlg::Sha256, now);
        let in_flight = |tx: &mut Sender| {
            let mut n = 0;
            while let Some(r) = tx.poll_read() {
                tx.handle_read(Bytes::from(vec![0; r.len as usize])).unwrap();
                while tx.poll_transmit().is_some() {
                    n += 1;
                }
            }
            n
        };
        assert_eq!(in_flight(&mut tx), 4);
        tx.set_window(2);
        tx.handle_ack(10, now);
        assert_eq!(in_flight(&mut tx), 0, "3 in flight, above the new window of 2: nothing more");
        tx.handle_ack(20, now);
        assert_eq!(in_flight(&mut tx), 0, "2 in flight: the window is full");
        tx.handle_ack(30, now);
        assert_eq!(in_flight(&mut tx), 1, "1 in flight: one more");
        tx.set_window(8);
        assert_eq!(in_flight(&mut tx), 6, "a larger window is used at once");
        tx.set_window(0);
        assert_eq!(tx.params().window, 1, "never below one");
    }

    #[test]
    fn read_room_is_the_held_prefix_plus_the_free_window() {
        let now = Instant::now();
        let params = StreamParams { chunk_size: 10, window: 3, ..StreamParams::default() };
        let mut tx = Sender::new(1, 100, params, HashAlg::Sha256, now);
        assert_eq!(tx.read_room(), 30);
        let r = tx.poll_read().unwrap();
        tx.handle_read(Bytes::from(vec![1; r.len as usize])).unwrap();
        assert_eq!(tx.read_room(), 20, "one chunk in the window");
        tx.handle_ack(10, now);
        assert_eq!(tx.read_room(), 30, "acknowledged chunks leave the window");

        let mut resumed = Sender::resume(2, 100, 25, params, HashAlg::Sha256, now);
        assert_eq!(resumed.read_room(), 25 + 30, "the held prefix is read only to be hashed");
        let mut tail = Sender::new(3, 15, params, HashAlg::Sha256, now);
        assert_eq!(tail.read_room(), 15, "never past the end of the file");
        for tx in [&mut resumed, &mut tail] {
            while let Some(r) = tx.poll_read() {
                tx.handle_read(Bytes::from(vec![1; r.len as usize])).unwrap();
            }
        }
        assert_eq!((resumed.read_room(), tail.read_room()), (0, 0));
    }

    #[test]
    fn frames_are_encoded_once_and_shared_with_the_window() {
        let now = Instant::now();
        let params = StreamParams { chunk_size: 4, window: 2, ..StreamParams::default() };
        let mut tx = Sender::new(9, 6, params, HashAlg::Sha256, now);
        while let Some(r) = tx.poll_read() {
            tx.handle_read(Bytes::from(vec![7; r.len as usize])).unwrap();
        }
        let first = tx.poll_transmit().unwrap();
        assert_eq!(Chunk::decode(first.frame.clone()).unwrap(), first.chunk);
        assert_eq!(first.frame.slice(crate::chunk::HEADER_LEN..).as_ptr(), first.chunk.data.as_ptr());
        tx.handle_timeout(now + params.retransmit_after).unwrap();
        let again = tx.poll_transmit().unwrap();
        assert_eq!(again.frame.as_ptr(), first.frame.as_ptr(), "a resend publishes the same frame");
    }

    #[test]
    fn stalled_device_is_abandoned_and_resends_are_counted() {
        let t0 = Instant::now();
        let params = StreamParams {
            chunk_size: 10,
            window: 2,
            retransmit_after: Duration::from_secs(1),
            give_up_after: Duration::from_secs(5),
        };
        let mut tx = Sender::new(1, 100, params, HashAlg::Sha256, t0);
        while let Some(r) = tx.poll_read() {
            tx.handle_read(Bytes::from(vec![0; r.len as usize])).unwrap();
        }
        while tx.poll_transmit().is_some() {}
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        tx.handle_timeout(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(tx.poll_transmit().map(|t| t.chunk.offset), Some(0));
        assert_eq!(tx.resent_bytes(), 20);
        assert_eq!(tx.handle_timeout(t0 + Duration::from_secs(5)), Err(SendError::Stalled(Duration::from_secs(5))));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let now = Instant::now();
        let mut tx =
            Sender::new(1, 100, StreamParams { chunk_size: 10, ..StreamParams::default() }, HashAlg::Sha256, now);
        assert!(matches!(tx.handle_read(Bytes::from_static(b"xx")), Err(SendError::ShortRead { .. })));
        // An acknowledgement beyond what was sent counts only up to what was sent (nothing yet).
        tx.handle_ack(50, now);
        assert_eq!((tx.acked(), tx.acks_beyond_sent()), (0, 1));
        let r = tx.poll_read().unwrap();
        assert!(matches!(tx.handle_read(Bytes::from(vec![0; r.len as usize - 1])), Err(SendError::ShortRead { .. })));

        let mut rx = Receiver::new(1, 5, HashAlg::Blake3);
        let past = Chunk { transfer: 1, offset: 3, data: Bytes::from_static(b"abc") };
        assert!(matches!(rx.handle_chunk(past), Err(ReceiveError::PastEnd { .. })));
        let zero = HexDigest::Blake3("0".repeat(64));
        assert_eq!(rx.handle_done(6, &zero), Err(ReceiveError::SizeChanged { announced: 5, done: 6 }));
        assert!(matches!(rx.handle_done(5, &HexDigest::Blake3("zz".into())), Err(ReceiveError::BadHash(_))));
        assert_eq!(
            rx.handle_done(5, &HexDigest::Sha256("0".repeat(64))),
            Err(ReceiveError::OtherAlg { expected: HashAlg::Blake3, got: HashAlg::Sha256 })
        );
    }

    #[test]
    fn wrong_hash_is_reported() {
        let mut rx = Receiver::new(1, 3, HashAlg::Sha256);
        rx.handle_chunk(Chunk { transfer: 1, offset: 0, data: Bytes::from_static(b"abc") }).unwrap();
        // The right value under the other algorithm is still wrong.
        rx.handle_done(3, &HexDigest::Sha256(HashAlg::Blake3.digest(b"abc").hex())).unwrap();
        let e = rx.poll_finished().unwrap().unwrap_err();
        assert!(matches!(e, ReceiveError::ChecksumMismatch { alg: HashAlg::Sha256, .. }), "{e:?}");
        assert!(e.to_string().starts_with("sha256 mismatch"), "{e}");
        assert_eq!(rx.poll_finished(), None);
    }

    #[test]
    fn known_hash_skips_the_held_prefix_and_the_second_hash() {
        let params = StreamParams { chunk_size: 1000, window: 4, ..StreamParams::default() };
        let now = Instant::now();
        let known = Digest { alg: HashAlg::Blake3, bytes: [9; 32] };
        let mut tx = Sender::resume(7, 10_500, 3_000, params, HashAlg::Blake3, now).with_known_digest(known);
        let mut offsets = Vec::new();
        loop {
            while let Some(r) = tx.poll_read() {
                offsets.push(r.offset);
                tx.handle_read(Bytes::from(vec![0u8; r.len as usize])).unwrap();
            }
            let mut last = None;
            while let Some(t) = tx.poll_transmit() {
                last = Some(t.chunk.end());
            }
            if tx.poll_done().is_some_and(|d| d == (10_500, known)) {
                break;
            }
            tx.handle_ack(last.unwrap_or(tx.acked()), now);
        }
        assert_eq!(offsets.first(), Some(&3_000), "the held prefix is not read");
        assert_eq!(offsets.last(), Some(&10_000));
    }
}
