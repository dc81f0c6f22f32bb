//! Monmouth wire protocol, version 1 (`docs/wire.md`): message types, the ZeroMQ ROUTER session
//! server, the history service (`history` requests beside the stream), replay files, and the [`NotificationSource`] trait that keeps Reth's types out of this
//! crate.
//!
//! # Invariants
//!
//! * **One encoding.** Every message is one msgpack map with string keys in the order of the spec
//!   (`rmp_serde::to_vec_named` on structs declared in that order). Hashes and addresses are `bin`
//!   of exactly 32 / 20 bytes; uint256 values are `bin` of 0–32 big-endian bytes with no leading
//!   zero byte ([`U256`]); absent optionals are `nil`. The Python sidecar (`sidecar/codec.py`,
//!   `sidecar/wire.py`) produces the same bytes; `tests/vectors/` pins both.
//! * **Tolerant decoding, strict values.** Decoders accept keys in any order and ignore unknown
//!   keys, but refuse wrong types, wrong byte lengths, non-minimal uint256, trailing bytes, frames
//!   over the limit, and notifications whose chains are not contiguous.
//! * **Order.** Notifications get `seq` 1, 2, 3, … in the order the source produced them and are
//!   sent to a session in `seq` order; a re-send starts at the first un-acknowledged `seq`.
//! * **Credit.** At most `window` notifications (the window of the latest `hello`) are in flight,
//!   and at most `window` are buffered: the server pulls from its source only below that, so a
//!   slow sidecar slows the source and nothing is dropped.
//! * **Re-send.** Un-acknowledged notifications stay buffered across sessions and are re-sent from
//!   the start on every `hello`. Acks are cumulative.
//! * **Ack before progress.** [`NotificationSource::acked`] (which drives Reth's `FinishedHeight`)
//!   is called only for notifications a sidecar acknowledged.
//! * **No panics on input.** Nothing reachable from a socket, a file or a peer's bytes unwraps,
//!   indexes out of bounds or panics: every failure is a [`WireError`], [`ReplayError`],
//!   [`SourceError`] or [`BridgeError`], and bad peer frames are answered with an `error` message.
//!
//! # Why the `zmq` crate
//!
//! `zmq` (rust-zmq) is the long-standing binding to libzmq, the same C++ implementation pyzmq uses
//! on the sidecar side, so both ends share one ZMTP implementation. Its `zmq-sys` builds libzmq
//! from the vendored source (`zeromq-src`) with the system C++ compiler, so the workspace builds
//! from crates.io alone, with no system libzmq. The pure-Rust `zeromq` crate was considered; it is
//! async-only and younger, and the server here is a simple single-threaded poll loop.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod error;
pub mod history;
pub mod message;
pub mod replay;
pub mod sample;
pub mod server;
pub mod sources;
pub mod types;

pub use error::{BridgeError, ErrorCode, ReplayError, SourceError, WireError};
pub use message::{
    decode, encode, encode_notification, Ack, ErrorMsg, Heartbeat, Hello, HistoryBlocks, HistoryRequest, Message,
    NotificationMsg, Welcome, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
pub use history::{HistoryReader, HistoryService};
pub use replay::{ReplayReader, ReplayWriter};
pub use server::{percentile, Acked, Next, NotificationSource, RunEnd, Server, ServerConfig, Start, Stats};
pub use sources::{ChannelSource, Inbox, ReplaySource, NODE_HEAD_UNKNOWN};
pub use types::{Address, Block, BlockRef, FixedBytes, Log, Notification, NotificationKind, Receipt, Transaction, B256, U256};
