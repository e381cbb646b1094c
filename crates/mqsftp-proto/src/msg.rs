//! JSON messages on `req` (device → gateway) and `res/{session}` (gateway → device) topics.
//!
//! Every message is one JSON object. Requests are tagged by `"op"`, responses by `"type"`. Unknown fields are
//! ignored so that later versions can add fields; unknown `op`s are answered with `bad_request`.

use serde::{Deserialize, Serialize};

use crate::hash::{HashAlg, HexDigest};
use crate::topic::GatewayId;
use crate::{SessionId, TransferId};

/// Largest JSON request accepted, in bytes.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Protocol version spoken by this crate (sent in `pong`).
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; the gateway answers [`Response::Pong`].
    Ping {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
    },
    /// Download `path` (relative to the device root).
    Get {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer and send chunks.
        session: SessionId,
        /// File path relative to the device root.
        path: String,
        /// Bytes the device already holds from an interrupted download of this file; the gateway sends from
        /// here on (and still announces the hash of the whole file).
        #[serde(default)]
        offset: u64,
        /// The algorithm to hash the file with (`sha256` when not given).
        #[serde(default)]
        hash: HashAlg,
    },
    /// Upload `size` bytes to `path`; chunks follow on the device's `up` topic once accepted.
    Put {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// Target path relative to the device root.
        path: String,
        /// Exact size of the file.
        size: u64,
        /// The algorithm the file is hashed with (`sha256` when not given).
        #[serde(default)]
        hash: HashAlg,
        /// The hash of the whole file (in the field named by `hash`), when the device knows it before sending;
        /// otherwise the device hashes the file as it sends it and gives the hash with [`Request::Commit`] (the
        /// upload then starts at once, and the file is read once instead of twice).
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        digest: Option<HexDigest>,
        /// Replace an existing file at `path` (otherwise the commit fails with `exists`).
        #[serde(default)]
        overwrite: bool,
        /// Continue upload `resume` (same path and size, and the same hash if one is given) from what the store
        /// holds, after an interruption.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<TransferId>,
    },
    /// All chunks of upload `transfer` are acknowledged: verify, make durable and rename into place.
    Commit {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// The upload.
        transfer: TransferId,
        /// The hash of the whole file, with the put's algorithm: required when the `put` did not carry it, and
        /// must equal it when it did.
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        digest: Option<HexDigest>,
    },
    /// List a directory (relative to the device root; empty for the root), a page at a time.
    List {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// Directory path; `""` is the device root.
        #[serde(default)]
        path: String,
        /// Index of the first entry (names sorted bytewise) to return.
        #[serde(default)]
        offset: u64,
        /// Entries per page (at most [`MAX_LIST_PAGE`]).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Size, time and type of one path.
    Stat {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// The path.
        path: String,
    },
    /// Remove a file or an empty directory.
    Remove {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// The path.
        path: String,
    },
    /// Create a directory (its parent must exist).
    Mkdir {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// The path.
        path: String,
    },
    /// Rename `from` to `to`, both inside the device root.
    Rename {
        /// Chosen by the device, echoed in the answer.
        id: String,
        /// Where to answer.
        session: SessionId,
        /// Existing path.
        from: String,
        /// New path.
        to: String,
        /// Replace an existing `to` (otherwise `exists`).
        #[serde(default)]
        overwrite: bool,
    },
    /// Everything below `next` of `transfer` has been received and stored.
    Ack {
        /// The transfer being acknowledged.
        transfer: TransferId,
        /// Offset of the first byte not yet received.
        next: u64,
    },
    /// The device gives up on `transfer`.
    Cancel {
        /// The transfer to stop.
        transfer: TransferId,
    },
}

/// Error codes carried in [`Response::Error`]. Stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed or is invalid.
    BadRequest,
    /// No such file or directory.
    NotFound,
    /// The path is outside the device root, or the store refused access.
    PermissionDenied,
    /// The path names a directory where a file was expected.
    IsDirectory,
    /// The gateway is at its limit of concurrent transfers.
    Busy,
    /// The device stopped acknowledging and the transfer was abandoned.
    Timeout,
    /// The SFTP store cannot be reached.
    Unavailable,
    /// The target exists and overwriting was not asked for.
    Exists,
    /// A directory to remove is not empty.
    NotEmpty,
    /// The file is larger than the gateway allows.
    TooLarge,
    /// The upload would take the device over its storage quota.
    QuotaExceeded,
    /// The uploaded data does not match the declared size or hash.
    ChecksumMismatch,
    /// The upload saw no data for longer than the gateway keeps incomplete uploads.
    Expired,
    /// The store's file system has no space left for the upload.
    StorageFull,
    /// Anything else; the message says what.
    Internal,
}

impl ErrorCode {
    /// The wire string, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::IsDirectory => "is_directory",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Exists => "exists",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::Expired => "expired",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message from the gateway to one device session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong {
        /// The request id.
        id: String,
        /// Protocol version of the gateway.
        version: u32,
    },
    /// A get was accepted; chunks follow on the session's `down` topic.
    GetAccepted {
        /// The request id.
        id: String,
        /// Id carried by every chunk of this transfer.
        transfer: TransferId,
        /// The gateway holding the transfer: send `ack` and `cancel` to `req/{gateway}`.
        gateway: GatewayId,
        /// File size in bytes.
        size: u64,
        /// Data bytes per chunk (the last one may be shorter).
        chunk_size: u32,
        /// Chunks the gateway sends before waiting for an acknowledgement.
        window: u32,
        /// The algorithm `get_done` will carry the file's hash in (the get's; a gateway that does not send it
        /// hashes with `sha256`).
        #[serde(default)]
        hash: HashAlg,
    },
    /// All chunks of a get have been sent; the hash lets the device verify what it wrote.
    GetDone {
        /// The transfer.
        transfer: TransferId,
        /// File size in bytes.
        size: u64,
        /// The hash of the whole file, in the field named after its algorithm.
        #[serde(flatten)]
        digest: HexDigest,
    },
    /// A put was accepted; send chunks on the device's `up` topic.
    PutAccepted {
        /// The request id.
        id: String,
        /// Id to put in every chunk of this upload.
        transfer: TransferId,
        /// The gateway holding the upload: send chunks to `up/{gateway}`, `commit` and `cancel` to
        /// `req/{gateway}`.
        gateway: GatewayId,
        /// Largest data part per chunk the gateway accepts.
        chunk_size: u32,
        /// Chunks to send before waiting for a `put_ack`.
        window: u32,
        /// Bytes the store already holds (durably) for this upload: send from here on. 0 for a new upload.
        #[serde(default)]
        offset: u64,
        /// The algorithm the gateway hashes the upload with: the put's.
        #[serde(default)]
        hash: HashAlg,
    },
    /// The gateway holds everything below `next` of an upload.
    PutAck {
        /// The upload.
        transfer: TransferId,
        /// Offset of the first byte not yet received.
        next: u64,
    },
    /// The upload is verified, durable (when `durable`) and at its final path.
    Committed {
        /// The commit request id.
        id: String,
        /// The upload.
        transfer: TransferId,
        /// File size.
        size: u64,
        /// The hash of the file, in the field named after its algorithm.
        #[serde(flatten)]
        digest: HexDigest,
        /// Whether the store confirmed an fsync (`fsync@openssh.com`); false when the server lacks it.
        durable: bool,
    },
    /// One page of a directory listing.
    Listing {
        /// The request id.
        id: String,
        /// Entries, sorted by name.
        entries: Vec<Entry>,
        /// Offset of the next page, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// Answer to a stat.
    Stat {
        /// The request id.
        id: String,
        /// The path's entry.
        entry: Entry,
    },
    /// A remove, mkdir or rename succeeded.
    Done {
        /// The request id.
        id: String,
    },
    /// A request or transfer failed.
    Error {
        /// The request id, when the failure answers a request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The transfer, when the failure ends one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer: Option<TransferId>,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail naming the offending value.
        message: String,
    },
}

/// Most entries in one `listing` page.
pub const MAX_LIST_PAGE: u32 = 1000;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else.
    Other,
}

/// A directory entry or stat result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name (for a stat: the last name of the path).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch, when the store reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<u64>,
    /// File, directory, ...
    #[serde(rename = "type")]
    pub kind: EntryKind,
}

/// A request that could not be decoded, with whatever could be salvaged to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad request: {reason}")]
pub struct BadRequest {
    /// The request id, if one could be read.
    pub id: Option<String>,
    /// The session to answer, if one could be read.
    pub session: Option<SessionId>,
    /// What is wrong, naming the field or limit.
    pub reason: String,
}

impl Request {
    /// Encodes the request as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain types into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates a request payload.
    pub fn decode(payload: &[u8]) -> Result<Request, BadRequest> {
        if payload.len() > MAX_REQUEST_LEN {
            return Err(BadRequest {
                id: None,
                session: None,
                reason: format!("request is {} bytes; the limit is {MAX_REQUEST_LEN}", payload.len()),
            });
        }
        let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| BadRequest {
            id: None,
            session: None,
            reason: format!("not valid JSON: {e}"),
        })?;
        // Salvage id and session first so that even a malformed request gets an answer.
        let id = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
        let session = value.get("session").and_then(|v| v.as_str()).and_then(|s| SessionId::new(s).ok());
        let bad = |reason: String| BadRequest { id: id.clone(), session: session.clone(), reason };
        if let Some(id) = &id {
            if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
                return Err(bad(format!("field id must be 1-{MAX_REQUEST_ID_LEN} bytes, got {}", id.len())));
            }
        }
        if matches!(value.get("op").and_then(|v| v.as_str()), Some("put" | "commit")) {
            // Flattened, a second hash or one that is not a string would be dropped silently: refuse them here.
            let given: Vec<&str> = HashAlg::ALL.iter().map(|a| a.as_str()).filter(|f| value.get(f).is_some()).collect();
            if given.len() > 1 {
                return Err(bad(format!(
                    "fields {} both give a hash; give the file's hash in one",
                    given.join(" and ")
                )));
            }
            if let Some(f) = given.first().filter(|f| !value[**f].is_string()) {
                return Err(bad(format!("field {f} must be a string of hex digits, got {}", value[*f])));
            }
        }
        let req: Request = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        if let Request::Put { hash, digest: Some(d), .. } = &req {
            let given = d.alg();
            if given != *hash {
                let fix = format!(r#"name it with "hash":"{given}""#);
                return Err(bad(format!("field {given} gives a {given} hash but the put's hash is {hash} ({fix})")));
            }
        }
        Ok(req)
    }
}

impl Response {
    /// The request id this response answers, if it answers one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Response::Pong { id, .. }
            | Response::GetAccepted { id, .. }
            | Response::PutAccepted { id, .. }
            | Response::Committed { id, .. }
            | Response::Listing { id, .. }
            | Response::Stat { id, .. }
            | Response::Done { id } => Some(id),
            Response::Error { id, .. } => id.as_deref(),
            Response::GetDone { .. } | Response::PutAck { .. } => None,
        }
    }

    /// Encodes the response as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a response payload.
    pub fn decode(payload: &[u8]) -> Result<Response, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    /// An error answering request `id`.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error { id, transfer: None, code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn session() -> impl Strategy<Value = SessionId> {
        "[a-z0-9]{1,32}".prop_map(|s| SessionId::new(s).unwrap())
    }
    fn req_id() -> impl Strategy<Value = String> {
        "[ -~]{1,64}"
    }

    fn alg() -> impl Strategy<Value = HashAlg> {
        prop::sample::select(HashAlg::ALL.to_vec())
    }
    fn hex_digest(alg: HashAlg, hex: String) -> HexDigest {
        match alg {
            HashAlg::Sha256 => HexDigest::Sha256(hex),
            HashAlg::Blake3 => HexDigest::Blake3(hex),
        }
    }
    fn digest() -> impl Strategy<Value = HexDigest> {
        (alg(), "[0-9a-f]{64}").prop_map(|(alg, hex)| hex_digest(alg, hex))
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (req_id(), session()).prop_map(|(id, session)| Request::Ping { id, session }),
            (req_id(), session(), any::<String>(), any::<u64>(), alg())
                .prop_map(|(id, session, path, offset, hash)| Request::Get { id, session, path, offset, hash }),
            (
                (req_id(), session(), any::<String>(), any::<u64>()),
                (alg(), any::<bool>(), any::<bool>(), "[0-9a-f]{64}", proptest::option::of(any::<u64>()))
            )
                .prop_map(|((id, session, path, size), (hash, given, overwrite, hex, resume))| {
                    let digest = given.then(|| hex_digest(hash, hex));
                    Request::Put { id, session, path, size, hash, digest, overwrite, resume }
                }),
            (req_id(), session(), any::<u64>(), proptest::option::of(digest()))
                .prop_map(|(id, session, transfer, digest)| Request::Commit { id, session, transfer, digest }),
            (req_id(), session(), any::<String>(), any::<u64>(), proptest::option::of(any::<u32>()))
                .prop_map(|(id, session, path, offset, limit)| Request::List { id, session, path, offset, limit }),
            (req_id(), session(), any::<String>()).prop_map(|(id, session, path)| Request::Stat { id, session, path }),
            (req_id(), session(), any::<String>()).prop_map(|(id, session, path)| Request::Remove {
                id,
                session,
                path
            }),
            (req_id(), session(), any::<String>()).prop_map(|(id, session, path)| Request::Mkdir { id, session, path }),
            (req_id(), session(), any::<String>(), any::<String>(), any::<bool>())
                .prop_map(|(id, session, from, to, overwrite)| Request::Rename { id, session, from, to, overwrite }),
            (any::<u64>(), any::<u64>()).prop_map(|(transfer, next)| Request::Ack { transfer, next }),
            any::<u64>().prop_map(|transfer| Request::Cancel { transfer }),
        ]
    }

    fn code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::BadRequest),
            Just(ErrorCode::NotFound),
            Just(ErrorCode::PermissionDenied),
            Just(ErrorCode::IsDirectory),
            Just(ErrorCode::Busy),
            Just(ErrorCode::Timeout),
            Just(ErrorCode::Unavailable),
            Just(ErrorCode::Exists),
            Just(ErrorCode::NotEmpty),
            Just(ErrorCode::TooLarge),
            Just(ErrorCode::QuotaExceeded),
            Just(ErrorCode::ChecksumMismatch),
            Just(ErrorCode::Expired),
            Just(ErrorCode::StorageFull),
            Just(ErrorCode::Internal),
        ]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let kind =
            prop_oneof![Just(EntryKind::File), Just(EntryKind::Dir), Just(EntryKind::Symlink), Just(EntryKind::Other)];
        (any::<String>(), any::<u64>(), proptest::option::of(any::<u64>()), kind)
            .prop_map(|(name, size, mtime, kind)| Entry { name, size, mtime, kind })
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<String>(), any::<u64>(), session(), any::<u32>(), any::<u32>(), any::<u64>(), alg()).prop_map(
                |(id, transfer, gateway, chunk_size, window, offset, hash)| Response::PutAccepted {
                    id,
                    transfer,
                    gateway,
                    chunk_size,
                    window,
                    offset,
                    hash
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(transfer, next)| Response::PutAck { transfer, next }),
            (any::<String>(), any::<u64>(), any::<u64>(), digest(), any::<bool>()).prop_map(
                |(id, transfer, size, digest, durable)| { Response::Committed { id, transfer, size, digest, durable } }
            ),
            (any::<String>(), proptest::collection::vec(entry(), 0..4), proptest::option::of(any::<u64>()))
                .prop_map(|(id, entries, next)| Response::Listing { id, entries, next }),
            (any::<String>(), entry()).prop_map(|(id, entry)| Response::Stat { id, entry }),
            any::<String>().prop_map(|id| Response::Done { id }),
            (any::<String>(), any::<u32>()).prop_map(|(id, version)| Response::Pong { id, version }),
            (any::<String>(), any::<u64>(), session(), any::<u64>(), any::<u32>(), any::<u32>(), alg()).prop_map(
                |(id, transfer, gateway, size, chunk_size, window, hash)| Response::GetAccepted {
                    id,
                    transfer,
                    gateway,
                    size,
                    chunk_size,
                    window,
                    hash
                }
            ),
            (any::<u64>(), any::<u64>(), digest())
                .prop_map(|(transfer, size, digest)| { Response::GetDone { transfer, size, digest } }),
            (proptest::option::of(any::<String>()), proptest::option::of(any::<u64>()), code(), any::<String>())
                .prop_map(|(id, transfer, code, message)| Response::Error { id, transfer, code, message }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in request()) {
            prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn responses_round_trip(r in response()) {
            prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let r = Request::decode(br#"{"op":"get","id":"r1","session":"abc","path":"a/b.txt","extra":1}"#).unwrap();
        assert_eq!(
            r,
            Request::Get {
                id: "r1".into(),
                session: SessionId::new("abc").unwrap(),
                path: "a/b.txt".into(),
                offset: 0,
                hash: HashAlg::Sha256
            }
        );
        let e = Response::error(Some("r1".into()), ErrorCode::NotFound, "no such file: a");
        assert_eq!(
            String::from_utf8(e.encode()).unwrap(),
            r#"{"type":"error","id":"r1","code":"not_found","message":"no such file: a"}"#
        );
    }

    #[test]
    fn a_put_may_leave_its_hash_to_the_commit() {
        let r = Request::decode(br#"{"op":"put","id":"p","session":"s1","path":"a","size":3}"#).unwrap();
        assert!(matches!(r, Request::Put { digest: None, hash: HashAlg::Sha256, .. }), "{r:?}");
        // A commit without a hash decodes and encodes as it always did.
        let r = Request::decode(br#"{"op":"commit","id":"c","session":"s1","transfer":7}"#).unwrap();
        assert!(matches!(r, Request::Commit { digest: None, transfer: 7, .. }), "{r:?}");
        let c = Request::Commit { id: "c".into(), session: SessionId::new("s1").unwrap(), transfer: 7, digest: None };
        assert_eq!(String::from_utf8(c.encode()).unwrap(), r#"{"op":"commit","id":"c","session":"s1","transfer":7}"#);
        let Request::Commit { id, session, transfer, .. } = c else { unreachable!() };
        let c = Request::Commit { id, session, transfer, digest: Some(HexDigest::Sha256("ab".repeat(32))) };
        assert!(String::from_utf8(c.encode())
            .unwrap()
            .ends_with(&format!(r#""transfer":7,"sha256":"{}"}}"#, "ab".repeat(32))));
    }

    #[test]
    fn hashes_travel_in_a_field_named_after_their_algorithm() {
        // A device from before `hash` existed: SHA-256, in `sha256`.
        let r = Request::decode(br#"{"op":"get","id":"g","session":"s1","path":"a"}"#).unwrap();
        assert!(matches!(r, Request::Get { hash: HashAlg::Sha256, .. }), "{r:?}");
        let r = Request::decode(br#"{"op":"get","id":"g","session":"s1","path":"a","hash":"blake3"}"#).unwrap();
        assert!(matches!(r, Request::Get { hash: HashAlg::Blake3, .. }), "{r:?}");
        let h = "cd".repeat(32);
        let put =
            format!(r#"{{"op":"put","id":"p","session":"s1","path":"a","size":3,"hash":"blake3","blake3":"{h}"}}"#);
        let r = Request::decode(put.as_bytes()).unwrap();
        assert!(
            matches!(&r, Request::Put { digest: Some(HexDigest::Blake3(x)), hash: HashAlg::Blake3, .. } if *x == h)
        );
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let done = Response::GetDone { transfer: 1, size: 3, digest: HexDigest::Blake3(h.clone()) };
        assert_eq!(
            String::from_utf8(done.encode()).unwrap(),
            format!(r#"{{"type":"get_done","transfer":1,"size":3,"blake3":"{h}"}}"#)
        );
        // A gateway from before `hash` existed: no echo means SHA-256.
        let acc = br#"{"type":"get_accepted","id":"g","transfer":1,"gateway":"g1","size":3,"chunk_size":9,"window":2}"#;
        assert!(matches!(Response::decode(acc).unwrap(), Response::GetAccepted { hash: HashAlg::Sha256, .. }));

        // Each way a hash can be given wrongly is refused, naming the fields.
        for (req, want) in [
            (
                format!(r#"{{"op":"put","id":"p","session":"s1","path":"a","size":3,"blake3":"{h}"}}"#),
                "field blake3 gives a blake3 hash but the put's hash is sha256",
            ),
            (
                format!(r#"{{"op":"commit","id":"c","session":"s1","transfer":7,"sha256":"{h}","blake3":"{h}"}}"#),
                "fields blake3 and sha256 both give a hash",
            ),
            (
                r#"{"op":"commit","id":"c","session":"s1","transfer":7,"blake3":7}"#.to_string(),
                "field blake3 must be a string of hex digits, got 7",
            ),
            (r#"{"op":"get","id":"g","session":"s1","path":"a","hash":"md5"}"#.to_string(), "unknown variant `md5`"),
        ] {
            let e = Request::decode(req.as_bytes()).unwrap_err();
            assert!(e.reason.contains(want), "{req}: {}", e.reason);
            assert_eq!(e.session, Some(SessionId::new("s1").unwrap()));
        }
    }

    #[test]
    fn bad_requests_keep_what_can_answer_them() {
        let e = Request::decode(br#"{"op":"frobnicate","id":"r9","session":"s1"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("r9"));
        assert_eq!(e.session, Some(SessionId::new("s1").unwrap()));
        assert!(e.reason.contains("frobnicate"), "{}", e.reason);

        let e = Request::decode(br#"{"op":"get","id":"r9","session":"s1"}"#).unwrap_err();
        assert!(e.reason.contains("path"), "{}", e.reason);

        let e = Request::decode(br#"{"op":"ack","transfer":1,"next":-5}"#).unwrap_err();
        assert!(e.reason.contains("-5"), "{}", e.reason);

        let e = Request::decode(b"{nope").unwrap_err();
        assert!(e.reason.starts_with("not valid JSON"), "{}", e.reason);

        let big = vec![b' '; MAX_REQUEST_LEN + 1];
        assert!(Request::decode(&big).unwrap_err().reason.contains("limit"));

        let long_id = format!(r#"{{"op":"ping","id":"{}","session":"s"}}"#, "x".repeat(65));
        assert!(Request::decode(long_id.as_bytes()).unwrap_err().reason.contains("field id"));
    }
}
