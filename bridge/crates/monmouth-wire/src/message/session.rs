//! The session's own messages (`docs/wire.md`, "Session"): the handshake (`hello`, `welcome`), the
//! liveness beat (`heartbeat`) and `error`, with their wire structs in the spec's key order.

use serde::{Deserialize, Serialize};

use super::codec::{from_frame, to_bytes, Frame};
use crate::error::{ErrorCode, WireError};
use crate::types::BlockRef;

/// Smallest and largest credit window a `hello` may ask for.
pub const WINDOW_RANGE: std::ops::RangeInclusive<u64> = 1..=1024;

/// `hello` (sidecar → bridge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the sidecar speaks.
    pub version: u64,
    /// The sidecar's durable head; `None` on an empty database.
    pub head: Option<BlockRef>,
    /// Credit window: most notifications un-acked at once (1–1024).
    pub window: u64,
    /// Free text naming the client.
    pub client: String,
    /// The first block the sidecar wants when its database is empty (`head` is `None`): the bridge
    /// backfills from it. `None`: follow from the node's head. Ignored when `head` is set. Optional key.
    pub start_block: Option<u64>,
}

/// `welcome` (bridge → sidecar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the bridge speaks.
    pub version: u64,
    /// EIP-155 chain id of the node.
    pub chain_id: u64,
    /// Node name and version.
    pub node: String,
    /// Heartbeat interval of both sides (milliseconds).
    pub heartbeat_ms: u64,
    /// Random u64 chosen when the bridge starts: `seq` values are unique only within one epoch.
    /// Decoded as 0 when absent.
    pub epoch: u64,
    /// The newest block number the node has, when the bridge knows it (the key is omitted otherwise).
    pub node_head: Option<u64>,
    /// The bridge serves `history` requests, answering at most this many blocks per `history_blocks` (the
    /// key is omitted by a bridge that serves none). Optional key.
    pub history: Option<u64>,
}

/// `heartbeat` (both ways).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's wall clock (milliseconds since the Unix epoch).
    pub ts_ms: u64,
    /// Bridge → sidecar: the newest block number the node has, when known (the key is omitted otherwise; a
    /// sidecar never sends it).
    pub node_head: Option<u64>,
}

/// `error` (both ways). `code` is kept as text so that codes added by a later minor revision still
/// decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// One of [`ErrorCode`]'s spellings.
    pub code: String,
    /// A sentence naming the problem.
    pub message: String,
}

impl ErrorMsg {
    /// Build from a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.as_str().to_owned(), message: message.into() }
    }
}

// ------------------------------------------------------------------ wire structs (encode order)

#[derive(Serialize)]
struct HelloOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    version: u64,
    head: &'a Option<BlockRef>,
    window: u64,
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_block: Option<u64>,
}

#[derive(Serialize)]
struct WelcomeOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    version: u64,
    chain_id: u64,
    node: &'a str,
    heartbeat_ms: u64,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_head: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<u64>,
}

#[derive(Serialize)]
struct HeartbeatOut {
    #[serde(rename = "type")]
    ty: &'static str,
    ts_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_head: Option<u64>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    code: &'a str,
    message: &'a str,
}

// ------------------------------------------------------------------ wire structs (decode)

#[derive(Deserialize)]
struct HelloIn {
    version: u64,
    #[serde(default)]
    head: Option<BlockRef>,
    window: u64,
    #[serde(default)]
    client: String,
    #[serde(default)]
    start_block: Option<u64>,
}

#[derive(Deserialize)]
struct WelcomeIn {
    version: u64,
    chain_id: u64,
    #[serde(default)]
    node: String,
    heartbeat_ms: u64,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    node_head: Option<u64>,
    #[serde(default)]
    history: Option<u64>,
}

#[derive(Deserialize)]
struct HeartbeatIn {
    ts_ms: u64,
    #[serde(default)]
    node_head: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorIn {
    code: String,
    #[serde(default)]
    message: String,
}

// ------------------------------------------------------------------ frames

impl Frame for Hello {
    const TYPE: &'static str = "hello";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&HelloOut {
            ty: Self::TYPE,
            version: self.version,
            head: &self.head,
            window: self.window,
            client: &self.client,
            start_block: self.start_block,
        })
    }

    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: HelloIn = from_frame(frame, Self::TYPE)?;
        Ok(Self { version: m.version, head: m.head, window: m.window, client: m.client, start_block: m.start_block })
    }
}

impl Frame for Welcome {
    const TYPE: &'static str = "welcome";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&WelcomeOut {
            ty: Self::TYPE,
            version: self.version,
            chain_id: self.chain_id,
            node: &self.node,
            heartbeat_ms: self.heartbeat_ms,
            epoch: self.epoch,
            node_head: self.node_head,
            history: self.history,
        })
    }

    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: WelcomeIn = from_frame(frame, Self::TYPE)?;
        Ok(Self {
            version: m.version,
            chain_id: m.chain_id,
            node: m.node,
            heartbeat_ms: m.heartbeat_ms,
            epoch: m.epoch,
            node_head: m.node_head,
            history: m.history,
        })
    }
}

impl Frame for Heartbeat {
    const TYPE: &'static str = "heartbeat";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&HeartbeatOut { ty: Self::TYPE, ts_ms: self.ts_ms, node_head: self.node_head })
    }

    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: HeartbeatIn = from_frame(frame, Self::TYPE)?;
        Ok(Self { ts_ms: m.ts_ms, node_head: m.node_head })
    }
}

impl Frame for ErrorMsg {
    const TYPE: &'static str = "error";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&ErrorOut { ty: Self::TYPE, code: &self.code, message: &self.message })
    }

    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: ErrorIn = from_frame(frame, Self::TYPE)?;
        Ok(Self { code: m.code, message: m.message })
    }
}
