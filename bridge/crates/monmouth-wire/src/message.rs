//! The session messages of `docs/wire.md` (six, plus the history request and its answer) and their encoding.
//!
//! Encoding is `rmp_serde::to_vec_named` of a struct whose first field is `type`, so every frame is
//! one msgpack map with the keys in the order of the spec. Decoding first reads only the `type` key,
//! then the message's own fields; unknown keys are ignored, keys may come in any order.

use std::fmt;
use std::io::Cursor;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::types::{Block, BlockRef, Notification, NotificationKind};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest frame accepted by default (bytes): 64 MiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
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

/// `history` (sidecar → bridge): the canonical blocks `from..=to` (with senders and receipts), for a plugin
/// that joined late. Answered by one [`HistoryBlocks`] with the same `id`; not part of the notification
/// stream (no `seq`, never acknowledged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Chosen by the sidecar; echoed in the answer.
    pub id: u64,
    /// First block number wanted.
    pub from: u64,
    /// Last block number wanted (inclusive).
    pub to: u64,
    /// The sidecar's head: the blocks must be its ancestors (the node's block at `head.number` must be
    /// `head.hash`). `None`: the node's canonical chain, unchecked.
    pub head: Option<BlockRef>,
}

/// `history_blocks` (bridge → sidecar): the answer to the [`HistoryRequest`] with the same `id`: either
/// `blocks` (`from`, `from + 1`, ..., contiguous, at most the bridge's batch limit: fewer than asked means
/// "ask again for the rest"), or `error`, a sentence naming the block number that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryBlocks {
    /// The request's `id`.
    pub id: u64,
    /// The blocks, oldest first; `None` with an `error`.
    pub blocks: Option<Vec<Block>>,
    /// Why the request cannot be served; `None` with `blocks`.
    pub error: Option<String>,
}

/// `ack` (sidecar → bridge). Cumulative: acknowledges every `seq` up to and including this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The notification durably committed (or skipped as already applied).
    pub seq: u64,
    /// The sidecar's head after that commit; `None` only when its database is empty again.
    pub head: Option<BlockRef>,
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

/// `notification` (bridge → sidecar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationMsg {
    /// Sequence number, +1 per notification on a bridge, from 1.
    pub seq: u64,
    /// The notification.
    pub notification: Notification,
}

/// Any protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`NotificationMsg`].
    Notification(NotificationMsg),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`ErrorMsg`].
    Error(ErrorMsg),
    /// See [`HistoryRequest`].
    History(HistoryRequest),
    /// See [`HistoryBlocks`].
    HistoryBlocks(HistoryBlocks),
}

impl Message {
    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Welcome(_) => "welcome",
            Self::Notification(_) => "notification",
            Self::Ack(_) => "ack",
            Self::Heartbeat(_) => "heartbeat",
            Self::Error(_) => "error",
            Self::History(_) => "history",
            Self::HistoryBlocks(_) => "history_blocks",
        }
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
struct HistoryOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    id: u64,
    from: u64,
    to: u64,
    head: &'a Option<BlockRef>,
}

#[derive(Serialize)]
struct HistoryBlocksOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    id: u64,
    blocks: &'a Option<Vec<Block>>,
    error: &'a Option<String>,
}

#[derive(Serialize)]
struct NotificationOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    seq: u64,
    kind: NotificationKind,
    old: &'a Option<Vec<Block>>,
    new: &'a Option<Vec<Block>>,
}

#[derive(Serialize)]
struct AckOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    seq: u64,
    head: &'a Option<BlockRef>,
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
struct HistoryIn {
    id: u64,
    from: u64,
    to: u64,
    #[serde(default)]
    head: Option<BlockRef>,
}

#[derive(Deserialize)]
struct HistoryBlocksIn {
    id: u64,
    #[serde(default)]
    blocks: Option<Vec<Block>>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct NotificationIn {
    seq: u64,
    kind: NotificationKind,
    #[serde(default)]
    old: Option<Vec<Block>>,
    #[serde(default)]
    new: Option<Vec<Block>>,
}

#[derive(Deserialize)]
struct AckIn {
    seq: u64,
    head: Option<BlockRef>,
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

/// Reads only the `type` key of a top-level map (skipping every other value without building it).
struct Envelope(Option<String>);

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with a `type` key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut ty = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "type" && ty.is_none() {
                        ty = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Envelope(ty))
            }
        }
        d.deserialize_map(V)
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(value).map_err(|e| WireError::Encode(e.to_string()))
}

/// Encode one message into a frame.
///
/// # Errors
/// [`WireError::Encode`] only if serialization itself fails (it does not for well-formed values).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    match msg {
        Message::Hello(m) => to_bytes(&HelloOut {
            ty: "hello",
            version: m.version,
            head: &m.head,
            window: m.window,
            client: &m.client,
            start_block: m.start_block,
        }),
        Message::Welcome(m) => to_bytes(&WelcomeOut {
            ty: "welcome",
            version: m.version,
            chain_id: m.chain_id,
            node: &m.node,
            heartbeat_ms: m.heartbeat_ms,
            epoch: m.epoch,
            node_head: m.node_head,
            history: m.history,
        }),
        Message::History(m) => {
            to_bytes(&HistoryOut { ty: "history", id: m.id, from: m.from, to: m.to, head: &m.head })
        }
        Message::HistoryBlocks(m) => {
            to_bytes(&HistoryBlocksOut { ty: "history_blocks", id: m.id, blocks: &m.blocks, error: &m.error })
        }
        Message::Notification(m) => encode_notification(m.seq, &m.notification),
        Message::Ack(m) => to_bytes(&AckOut { ty: "ack", seq: m.seq, head: &m.head }),
        Message::Heartbeat(m) => to_bytes(&HeartbeatOut { ty: "heartbeat", ts_ms: m.ts_ms, node_head: m.node_head }),
        Message::Error(m) => to_bytes(&ErrorOut { ty: "error", code: &m.code, message: &m.message }),
    }
}

/// Encode a `notification` message without cloning the notification.
///
/// # Errors
/// As [`encode`].
pub fn encode_notification(seq: u64, n: &Notification) -> Result<Vec<u8>, WireError> {
    to_bytes(&NotificationOut { ty: "notification", seq, kind: n.kind, old: &n.old, new: &n.new })
}

/// The bytes every canonically encoded `notification` frame starts with: a 5-entry map, `"type"`,
/// `"notification"`, `"seq"`; the `seq` value follows.
const NOTIFICATION_PREFIX: &[u8] = b"\x85\xa4type\xacnotification\xa3seq";

/// A `notification` frame encoded once and re-numbered cheaply: the bytes after the `seq` value
/// (from the `kind` key on), plus what the server needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreEncoded {
    /// The variant.
    pub kind: NotificationKind,
    /// Tip of the committed chain, if any.
    pub committed_tip: Option<BlockRef>,
    /// Chain head after the notification.
    pub resulting_head: Option<BlockRef>,
    /// Encoded `kind`, `old` and `new` entries, exactly as they follow `seq` in a frame.
    pub tail: Vec<u8>,
}

impl PreEncoded {
    /// The complete frame with sequence number `seq`.
    pub fn frame(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(NOTIFICATION_PREFIX.len() + 9 + self.tail.len());
        out.extend_from_slice(NOTIFICATION_PREFIX);
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_uint(&mut out, seq);
        out.extend_from_slice(&self.tail);
        out
    }

    /// Split a canonically encoded `notification` frame (as written by this crate or the Python
    /// codec) into its `seq` and a [`PreEncoded`]. Reads only the block identities of the chains,
    /// skipping transactions and receipts without building them.
    ///
    /// # Errors
    /// [`WireError::Malformed`] when the frame does not start with the canonical prefix (the caller
    /// falls back to [`decode`]) or its chains cannot be read; [`WireError::InvalidNotification`]
    /// when they break an invariant.
    pub fn from_frame(frame: &[u8]) -> Result<(u64, Self), WireError> {
        let rest = frame
            .strip_prefix(NOTIFICATION_PREFIX)
            .ok_or_else(|| WireError::Malformed("not a canonical notification frame".to_owned()))?;
        let (seq, used) = read_uint(rest).ok_or_else(|| WireError::Malformed("notification.seq: not an unsigned int".to_owned()))?;
        let tail = &rest[used..];
        if !tail.starts_with(b"\xa4kind") {
            return Err(WireError::Malformed("not a canonical notification frame (kind does not follow seq)".to_owned()));
        }
        let meta: NotificationMeta = from_frame_ref(frame, "notification")?;
        let n = Notification {
            kind: meta.kind,
            old: meta.old.map(|c| c.into_iter().map(BlockMeta::into_block).collect()),
            new: meta.new.map(|c| c.into_iter().map(BlockMeta::into_block).collect()),
        };
        n.validate().map_err(WireError::InvalidNotification)?;
        Ok((
            seq,
            Self { kind: n.kind, committed_tip: n.committed_tip(), resulting_head: n.resulting_head(), tail: tail.to_vec() },
        ))
    }
}

fn read_uint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let be = |n: usize| -> Option<u64> {
        let bytes = b.get(1..1 + n)?;
        Some(bytes.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    match first {
        0x00..=0x7f => Some((u64::from(first), 1)),
        0xcc => Some((be(1)?, 2)),
        0xcd => Some((be(2)?, 3)),
        0xce => Some((be(4)?, 5)),
        0xcf => Some((be(8)?, 9)),
        _ => None,
    }
}

/// Only what the server needs of a notification; everything else is skipped.
#[derive(Deserialize)]
struct NotificationMeta {
    kind: NotificationKind,
    #[serde(default)]
    old: Option<Vec<BlockMeta>>,
    #[serde(default)]
    new: Option<Vec<BlockMeta>>,
}

#[derive(Deserialize)]
struct BlockMeta {
    number: u64,
    hash: crate::types::B256,
    parent_hash: crate::types::B256,
}

impl BlockMeta {
    fn into_block(self) -> Block {
        Block {
            number: self.number,
            hash: self.hash,
            parent_hash: self.parent_hash,
            timestamp: 0,
            beneficiary: crate::types::Address::ZERO,
            gas_limit: 0,
            gas_used: 0,
            base_fee_per_gas: None,
            transactions: Vec::new(),
            receipts: Vec::new(),
        }
    }
}

/// Like [`from_frame`] but borrowing from the frame (skipped `bin` values are not copied).
fn from_frame_ref<'a, T: Deserialize<'a>>(frame: &'a [u8], what: &str) -> Result<T, WireError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    let value = T::deserialize(&mut de).map_err(|e| WireError::Malformed(format!("{what}: {e}")))?;
    Ok(value)
}

fn from_frame<T: DeserializeOwned>(frame: &[u8], what: &str) -> Result<T, WireError> {
    let mut cursor = Cursor::new(frame);
    let value = {
        let mut de = rmp_serde::Deserializer::new(&mut cursor);
        T::deserialize(&mut de).map_err(|e| WireError::Malformed(format!("{what}: {e}")))?
    };
    let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if used != frame.len() {
        return Err(WireError::Malformed(format!(
            "{what}: {} trailing bytes after the message",
            frame.len().saturating_sub(used)
        )));
    }
    Ok(value)
}

fn is_map_marker(byte: u8) -> bool {
    (0x80..=0x8f).contains(&byte) || byte == 0xde || byte == 0xdf
}

/// Decode one frame.
///
/// # Errors
/// * [`WireError::FrameTooLarge`] when `frame` exceeds `max_bytes`;
/// * [`WireError::Malformed`] when it is not one msgpack map with a string `type` and the fields of
///   that message (the text names the field);
/// * [`WireError::UnknownType`] when `type` names no message of this version;
/// * [`WireError::InvalidNotification`] when a notification's chains break an invariant.
pub fn decode(frame: &[u8], max_bytes: usize) -> Result<Message, WireError> {
    if frame.len() > max_bytes {
        return Err(WireError::FrameTooLarge { size: frame.len(), limit: max_bytes });
    }
    match frame.first() {
        None => return Err(WireError::Malformed("empty frame".to_owned())),
        Some(b) if !is_map_marker(*b) => {
            return Err(WireError::Malformed(format!("frame is not a msgpack map (first byte 0x{b:02x})")));
        }
        Some(_) => {}
    }
    let Envelope(ty) = from_frame::<Envelope>(frame, "message")?;
    let ty = ty.ok_or_else(|| WireError::Malformed("message has no `type` key".to_owned()))?;
    Ok(match ty.as_str() {
        "hello" => {
            let m: HelloIn = from_frame(frame, "hello")?;
            Message::Hello(Hello {
                version: m.version,
                head: m.head,
                window: m.window,
                client: m.client,
                start_block: m.start_block,
            })
        }
        "welcome" => {
            let m: WelcomeIn = from_frame(frame, "welcome")?;
            Message::Welcome(Welcome {
                version: m.version,
                chain_id: m.chain_id,
                node: m.node,
                heartbeat_ms: m.heartbeat_ms,
                epoch: m.epoch,
                node_head: m.node_head,
                history: m.history,
            })
        }
        "history" => {
            let m: HistoryIn = from_frame(frame, "history")?;
            Message::History(HistoryRequest { id: m.id, from: m.from, to: m.to, head: m.head })
        }
        "history_blocks" => {
            let m: HistoryBlocksIn = from_frame(frame, "history_blocks")?;
            check_history_blocks(&m)?;
            Message::HistoryBlocks(HistoryBlocks { id: m.id, blocks: m.blocks, error: m.error })
        }
        "notification" => {
            let m: NotificationIn = from_frame(frame, "notification")?;
            let notification = Notification { kind: m.kind, old: m.old, new: m.new };
            notification.validate().map_err(WireError::InvalidNotification)?;
            Message::Notification(NotificationMsg { seq: m.seq, notification })
        }
        "ack" => {
            let m: AckIn = from_frame(frame, "ack")?;
            Message::Ack(Ack { seq: m.seq, head: m.head })
        }
        "heartbeat" => {
            let m: HeartbeatIn = from_frame(frame, "heartbeat")?;
            Message::Heartbeat(Heartbeat { ts_ms: m.ts_ms, node_head: m.node_head })
        }
        "error" => {
            let m: ErrorIn = from_frame(frame, "error")?;
            Message::Error(ErrorMsg { code: m.code, message: m.message })
        }
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(WireError::UnknownType(shown));
        }
    })
}

/// A `history_blocks` carries exactly one of `blocks` and `error`, and its blocks are contiguous.
fn check_history_blocks(m: &HistoryBlocksIn) -> Result<(), WireError> {
    match (&m.blocks, &m.error) {
        (Some(blocks), None) => {
            if !blocks.is_empty() {
                crate::types::check_chain(blocks)
                    .map_err(|e| WireError::InvalidNotification(format!("history_blocks {}: {e}", m.id)))?;
            }
            Ok(())
        }
        (None, Some(_)) => Ok(()),
        _ => Err(WireError::Malformed(format!("history_blocks {}: exactly one of `blocks` and `error` must be set", m.id))),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FixedBytes, B256};

    fn roundtrip(msg: Message) {
        let frame = encode(&msg).expect("encode");
        assert_eq!(decode(&frame, MAX_FRAME_BYTES).expect("decode"), msg);
    }

    #[test]
    fn session_messages_roundtrip() {
        let head = BlockRef { number: 7, hash: FixedBytes([9u8; 32]) };
        roundtrip(Message::Hello(Hello { version: 1, head: Some(head), window: 64, client: "t".into(), start_block: None }));
        roundtrip(Message::Hello(Hello { version: 1, head: None, window: 1, client: String::new(), start_block: None }));
        roundtrip(Message::Hello(Hello { version: 1, head: None, window: 8, client: "s".into(), start_block: Some(0) }));
        roundtrip(Message::Hello(Hello { version: 1, head: None, window: 8, client: "s".into(), start_block: Some(1 << 40) }));
        for node_head in [None, Some(21_000_000)] {
            roundtrip(Message::Welcome(Welcome { version: 1, chain_id: 1, node: "n".into(), heartbeat_ms: 1000, epoch: 5, node_head, history: None }));
            roundtrip(Message::Welcome(Welcome { version: 1, chain_id: 1, node: "n".into(), heartbeat_ms: 1000, epoch: 5, node_head, history: Some(64) }));
        }
        roundtrip(Message::Ack(Ack { seq: u64::MAX, head: Some(head) }));
        roundtrip(Message::Ack(Ack { seq: 1, head: None }));
        roundtrip(Message::Heartbeat(Heartbeat { ts_ms: 1_700_000_000_000, node_head: None }));
        roundtrip(Message::Heartbeat(Heartbeat { ts_ms: 1_700_000_000_000, node_head: Some(0) }));
        roundtrip(Message::Error(ErrorMsg::new(ErrorCode::Gap, "seq 3 after 1")));
        roundtrip(Message::History(HistoryRequest { id: 1, from: 1, to: 64, head: Some(head) }));
        roundtrip(Message::History(HistoryRequest { id: u64::MAX, from: 0, to: 0, head: None }));
        let chain = crate::sample::sample_chain(5, 3, 2, 0);
        roundtrip(Message::HistoryBlocks(HistoryBlocks { id: 2, blocks: Some(chain), error: None }));
        roundtrip(Message::HistoryBlocks(HistoryBlocks { id: 2, blocks: Some(Vec::new()), error: None }));
        roundtrip(Message::HistoryBlocks(HistoryBlocks { id: 3, blocks: None, error: Some("block 9 is beyond".into()) }));
    }

    #[test]
    fn refuses_inconsistent_history_answers() {
        let both = HistoryBlocks { id: 1, blocks: Some(Vec::new()), error: Some("x".into()) };
        let frame = encode(&Message::HistoryBlocks(both)).expect("encode");
        assert!(matches!(decode(&frame, MAX_FRAME_BYTES), Err(WireError::Malformed(m)) if m.contains("exactly one")));
        let mut chain = crate::sample::sample_chain(5, 3, 1, 0);
        chain.remove(1);
        let gap = HistoryBlocks { id: 4, blocks: Some(chain), error: None };
        let frame = encode(&Message::HistoryBlocks(gap)).expect("encode");
        assert!(matches!(decode(&frame, MAX_FRAME_BYTES), Err(WireError::InvalidNotification(m)) if m.contains("history_blocks 4")));
    }

    #[test]
    fn key_order_is_the_spec_order() {
        let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: 5, node_head: None })).expect("encode");
        // fixmap(2) "type" "heartbeat" "ts_ms" 5
        let mut want = vec![0x82, 0xa4];
        want.extend(b"type");
        want.push(0xa9);
        want.extend(b"heartbeat");
        want.push(0xa5);
        want.extend(b"ts_ms");
        want.push(5);
        assert_eq!(frame, want);
        // An optional key comes last, and only when present: fixmap(3) ... "node_head" 7
        let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: 5, node_head: Some(7) })).expect("encode");
        want[0] = 0x83;
        want.push(0xa9);
        want.extend(b"node_head");
        want.push(7);
        assert_eq!(frame, want);
    }

    #[test]
    fn pre_encoded_frames_equal_fresh_encodings() {
        let chain = crate::sample::sample_chain(5, 3, 3, 0);
        let fork = crate::sample::sample_chain(6, 2, 1, 1);
        for n in [
            Notification::committed(chain.clone()),
            Notification::reorged(chain[1..].to_vec(), fork.clone()),
            Notification::reverted(chain[1..].to_vec()),
        ] {
            let frame = encode_notification(7, &n).expect("encode");
            let (seq, pre) = PreEncoded::from_frame(&frame).expect("canonical");
            assert_eq!(seq, 7);
            assert_eq!(pre.kind, n.kind);
            assert_eq!(pre.committed_tip, n.committed_tip());
            assert_eq!(pre.resulting_head, n.resulting_head());
            for s in [0, 1, 127, 128, 255, 256, 65_535, 65_536, u64::from(u32::MAX) + 1, u64::MAX] {
                assert_eq!(pre.frame(s), encode_notification(s, &n).expect("encode"), "seq {s}");
            }
        }
        assert!(PreEncoded::from_frame(&encode(&Message::Heartbeat(Heartbeat { ts_ms: 1, node_head: None })).expect("e")).is_err());
    }

    #[test]
    fn refuses_bad_frames() {
        assert!(matches!(decode(&[], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0x93, 1, 2, 3], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0x80], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0x81, 0xa1], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: 5, node_head: None })).expect("encode");
        assert!(matches!(decode(&frame[..frame.len() - 1], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        let mut trailing = frame.clone();
        trailing.push(0xc0);
        assert!(matches!(decode(&trailing, MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&frame, 3), Err(WireError::FrameTooLarge { .. })));
        let unknown = rmp_serde::to_vec_named(&HeartbeatOut { ty: "bogus", ts_ms: 1, node_head: None }).expect("encode");
        assert!(matches!(decode(&unknown, MAX_FRAME_BYTES), Err(WireError::UnknownType(t)) if t == "bogus"));
    }

    #[test]
    fn ignores_unknown_keys_and_any_order() {
        #[derive(Serialize)]
        struct Reordered {
            extra: u8,
            seq: u64,
            head: Option<BlockRef>,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        let head = Some(BlockRef { number: 3, hash: B256::ZERO });
        let frame = rmp_serde::to_vec_named(&Reordered { extra: 1, seq: 4, head, ty: "ack" }).expect("encode");
        assert_eq!(decode(&frame, MAX_FRAME_BYTES).expect("decode"), Message::Ack(Ack { seq: 4, head }));
    }
}
