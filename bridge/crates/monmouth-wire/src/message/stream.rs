//! The live-stream messages (`docs/wire.md`, "Notifications"): `notification` (bridge → sidecar, numbered
//! by `seq`) and its cumulative `ack`, with their wire structs, [`encode_notification`] (no clone of the
//! chains), and [`PreEncoded`], a notification frame encoded once and re-numbered cheaply on a re-send.

use serde::{Deserialize, Serialize};

use super::codec::{from_frame, from_frame_ref, read_uint, to_bytes, Frame};
use crate::error::WireError;
use crate::types::{Address, Block, BlockRef, Notification, NotificationKind, B256};

/// `notification` (bridge → sidecar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationMsg {
    /// Sequence number, +1 per notification on a bridge, from 1.
    pub seq: u64,
    /// The notification.
    pub notification: Notification,
}

/// `ack` (sidecar → bridge). Cumulative: acknowledges every `seq` up to and including this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The notification durably committed (or skipped as already applied).
    pub seq: u64,
    /// The sidecar's head after that commit; `None` only when its database is empty again.
    pub head: Option<BlockRef>,
}

// ------------------------------------------------------------------ wire structs

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

// ------------------------------------------------------------------ frames

impl Frame for NotificationMsg {
    const TYPE: &'static str = "notification";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        encode_notification(self.seq, &self.notification)
    }

    /// # Errors
    /// Besides [`WireError::Malformed`] for a bad field: [`WireError::InvalidNotification`] when the
    /// chains break an invariant ([`Notification::validate`]).
    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: NotificationIn = from_frame(frame, Self::TYPE)?;
        let notification = Notification { kind: m.kind, old: m.old, new: m.new };
        notification.validate().map_err(WireError::InvalidNotification)?;
        Ok(Self { seq: m.seq, notification })
    }
}

impl Frame for Ack {
    const TYPE: &'static str = "ack";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&AckOut { ty: Self::TYPE, seq: self.seq, head: &self.head })
    }

    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: AckIn = from_frame(frame, Self::TYPE)?;
        Ok(Self { seq: m.seq, head: m.head })
    }
}

/// Encode a `notification` message without cloning the notification.
///
/// # Errors
/// [`WireError::Encode`] only if serialization itself fails (it does not for well-formed values).
pub fn encode_notification(seq: u64, n: &Notification) -> Result<Vec<u8>, WireError> {
    to_bytes(&NotificationOut { ty: NotificationMsg::TYPE, seq, kind: n.kind, old: &n.old, new: &n.new })
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
    /// falls back to `message::decode`) or its chains cannot be read; [`WireError::InvalidNotification`]
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
        let meta: NotificationMeta = from_frame_ref(frame, NotificationMsg::TYPE)?;
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
    hash: B256,
    parent_hash: B256,
}

impl BlockMeta {
    fn into_block(self) -> Block {
        Block {
            number: self.number,
            hash: self.hash,
            parent_hash: self.parent_hash,
            timestamp: 0,
            beneficiary: Address::ZERO,
            gas_limit: 0,
            gas_used: 0,
            base_fee_per_gas: None,
            transactions: Vec::new(),
            receipts: Vec::new(),
        }
    }
}
