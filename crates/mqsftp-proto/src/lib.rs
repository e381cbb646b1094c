//! The mqsftp transfer protocol, with no I/O.
//!
//! Everything that gateway, device, tests and fuzzer must agree on lives here and nowhere else: topic names
//! ([`topic`]), JSON requests and responses ([`msg`]), the binary chunk frame ([`chunk`]), path confinement
//! ([`path`]), the per-transfer state machines ([`stream`]) and the whole-file hashes they verify with
//! ([`hash`]). Nothing here opens a socket, reads a clock or spawns a task: callers feed inputs in through
//! `handle_*` methods and take outputs from `poll_*` methods, passing the current time in, in the style of
//! quinn-proto. The wire format is specified in `docs/protocol.md`.
//!
//! Layout: `device_id.rs`, `ids.rs` (session and transfer ids), `topic.rs`, `msg.rs`, `chunk.rs`, `path.rs`,
//! `stream.rs`, `hash.rs`; `testing.rs` holds a deterministic lossy link used by the tests.

pub mod chunk;
pub mod device_id;
pub mod hash;
pub mod ids;
pub mod msg;
pub mod path;
pub mod stream;
#[doc(hidden)]
pub mod testing;
pub mod topic;

pub use chunk::{Chunk, ChunkError};
pub use device_id::{DeviceId, DeviceIdError};
pub use hash::{BadDigest, Digest, HashAlg, Hasher, HexDigest, UnknownHashAlg};
pub use ids::{SessionId, SessionIdError, TransferId, MAX_TRANSFER_ID};
pub use msg::{BadRequest, Entry, EntryKind, ErrorCode, Request, Response, MAX_LIST_PAGE, PROTOCOL_VERSION};
pub use path::{confine, PathError, RelPath};
pub use stream::{ReadRequest, ReceiveError, Received, Receiver, SendError, Sender, StreamParams, Transmit};
pub use topic::{GatewayId, Topic, TopicKind};
