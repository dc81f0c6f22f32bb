//! The history messages (`docs/wire.md`, "History"): `history`, a sidecar's request for canonical blocks
//! beside the stream, and `history_blocks`, its answer, with their wire structs and the answer's check
//! (exactly one of `blocks` and `error`, contiguous blocks).

use serde::{Deserialize, Serialize};

use super::codec::{from_frame, to_bytes, Frame};
use crate::error::WireError;
use crate::types::{Block, BlockRef};

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

// ------------------------------------------------------------------ wire structs

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

// ------------------------------------------------------------------ frames

impl Frame for HistoryRequest {
    const TYPE: &'static str = "history";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&HistoryOut { ty: Self::TYPE, id: self.id, from: self.from, to: self.to, head: &self.head })
    }

    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: HistoryIn = from_frame(frame, Self::TYPE)?;
        Ok(Self { id: m.id, from: m.from, to: m.to, head: m.head })
    }
}

impl Frame for HistoryBlocks {
    const TYPE: &'static str = "history_blocks";

    fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        to_bytes(&HistoryBlocksOut { ty: Self::TYPE, id: self.id, blocks: &self.blocks, error: &self.error })
    }

    /// # Errors
    /// Besides [`WireError::Malformed`] for a bad field: [`WireError::Malformed`] when not exactly one of
    /// `blocks` and `error` is set, [`WireError::InvalidNotification`] when the blocks are not contiguous.
    fn decode_frame(frame: &[u8]) -> Result<Self, WireError> {
        let m: HistoryBlocksIn = from_frame(frame, Self::TYPE)?;
        check_history_blocks(&m)?;
        Ok(Self { id: m.id, blocks: m.blocks, error: m.error })
    }
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
