//! Errors. Every variant's message names the problem; none of them is a panic.

use std::fmt;

use thiserror::Error;

/// The `code` of an `error` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The peer speaks a newer protocol version.
    UnsupportedVersion,
    /// Not msgpack, not a map, a missing or mistyped field.
    Malformed,
    /// Frame larger than the receiver's limit.
    FrameTooLarge,
    /// `type` names no message of this version.
    UnknownType,
    /// A valid message at the wrong time (no session, ack of an unsent seq, ...).
    Unexpected,
    /// A sequence number was skipped.
    Gap,
    /// The bridge cannot serve the sidecar from where it asked: a start block outside what the node
    /// holds, or a head that is on neither the node's chain nor its ExEx WAL. The message says which.
    Refused,
}

impl ErrorCode {
    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::Malformed => "malformed",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnknownType => "unknown_type",
            Self::Unexpected => "unexpected",
            Self::Gap => "gap",
            Self::Refused => "refused",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoding and encoding failures of single frames and replay files.
#[derive(Debug, Error)]
pub enum WireError {
    /// Not msgpack, not a map, or a missing / mistyped field (the text names it).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The frame exceeds the receiver's limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Frame size (bytes).
        size: usize,
        /// Limit (bytes).
        limit: usize,
    },
    /// `type` names no message of this protocol version.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A notification's chains break an invariant (empty, not contiguous, no common fork point).
    #[error("invalid notification: {0}")]
    InvalidNotification(String),
    /// Serialization failed.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl WireError {
    /// The `error` message code a receiver answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) | Self::InvalidNotification(_) | Self::Encode(_) => ErrorCode::Malformed,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnknownType(_) => ErrorCode::UnknownType,
        }
    }
}

/// Replay-file failures; each names the frame index and byte offset where applicable.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The file could not be opened or read.
    #[error("replay file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The header is not `MNMRP` followed by a known version byte.
    #[error("replay file {path}: bad header ({detail})")]
    BadHeader {
        /// File path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A frame ends before its declared length.
    #[error("replay file {path}: frame {index} at byte {offset} is truncated ({detail})")]
    Truncated {
        /// File path.
        path: String,
        /// Frame index (0-based).
        index: u64,
        /// Byte offset of the frame's length prefix.
        offset: u64,
        /// What was missing.
        detail: String,
    },
    /// The CRC-32 of a payload does not match.
    #[error("replay file {path}: frame {index} at byte {offset}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc {
        /// File path.
        path: String,
        /// Frame index (0-based).
        index: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// CRC stored in the file.
        stored: u32,
        /// CRC of the payload read.
        computed: u32,
    },
    /// The payload is not a valid `notification` message.
    #[error("replay file {path}: frame {index} at byte {offset}: {source}")]
    Decode {
        /// File path.
        path: String,
        /// Frame index (0-based).
        index: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// Cause.
        #[source]
        source: WireError,
    },
    /// The payload decoded to a message other than `notification`.
    #[error("replay file {path}: frame {index} at byte {offset}: expected a notification, got {got:?}")]
    NotANotification {
        /// File path.
        path: String,
        /// Frame index (0-based).
        index: u64,
        /// Byte offset of the frame.
        offset: u64,
        /// The `type` found.
        got: String,
    },
}

/// Failures of a [`crate::NotificationSource`].
#[derive(Debug, Error)]
pub enum SourceError {
    /// The upstream is gone (channel closed, node shutting down).
    #[error("notification source closed: {0}")]
    Closed(String),
    /// A replay file could not be read.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The source cannot serve this sidecar from where it asked (a start block outside the node's
    /// history, a head on neither the node's chain nor its WAL). Not fatal: the server answers the
    /// sidecar with `error` code `refused` and this sentence, and waits for another `hello`.
    #[error("{0}")]
    Refused(String),
    /// Anything else, with a sentence.
    #[error("notification source failed: {0}")]
    Other(String),
}

/// Failures of the session server that end [`crate::Server::run`].
#[derive(Debug, Error)]
pub enum BridgeError {
    /// A ZeroMQ call failed (bind, socket creation, send other than "peer gone").
    #[error("zeromq {op}: {source}")]
    Zmq {
        /// The operation attempted, e.g. `bind tcp://127.0.0.1:5555`.
        op: String,
        /// Cause.
        #[source]
        source: zmq::Error,
    },
    /// A notification could not be encoded or is larger than the frame limit.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The configuration is invalid.
    #[error("invalid bridge configuration: {0}")]
    Config(String),
}

impl BridgeError {
    /// Binding failed because another socket holds the endpoint (`EADDRINUSE`): worth retrying.
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, Self::Zmq { source: zmq::Error::EADDRINUSE, .. })
    }
}
