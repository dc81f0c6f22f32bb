//! Where to serve a sidecar from, decided on its `hello` (on the bridge server's thread): resume after its
//! head, backfill from its `start_block`, or follow from the node's head; or refuse, naming the reason.

use monmouth_wire::{BlockRef, SourceError, Start};
use reth_ethereum::provider::{BlockHashReader, BlockNumReader, HeaderProvider, StateProviderFactory};

use crate::convert::{b256, convert_header};

/// Where to resume Reth's notification stream for a sidecar, decided by [`plan_start`].
#[derive(Debug)]
pub(crate) enum Plan {
    /// Follow from the node's head (empty database, no start block).
    Live,
    /// Resume after the sidecar's durable head.
    Resume(BlockRef),
    /// Backfill from block `head.number + 1`; `genesis` is sent first when the start is block 0.
    Backfill { head: BlockRef, genesis: Option<Box<monmouth_wire::Block>> },
}

impl Plan {
    /// The block the first notification must connect to (its parent), if the plan has one.
    pub(crate) fn anchor(&self) -> Option<BlockRef> {
        match self {
            Self::Live => None,
            Self::Resume(h) | Self::Backfill { head: h, .. } => Some(*h),
        }
    }
}

/// Decide where to serve a sidecar from, or refuse with a sentence naming the reason.
///
/// # Errors
/// [`SourceError::Refused`]: a `start_block` beyond the node's head + 1, below the earliest block it
/// holds, or whose parent state it no longer has (pruned history); a provider failure.
pub(crate) fn plan_start<P>(provider: &P, start: Start) -> Result<Plan, SourceError>
where
    P: BlockNumReader + BlockHashReader + HeaderProvider + StateProviderFactory,
{
    let failed = |what: &str, e: &dyn std::fmt::Display| SourceError::Refused(format!("the node could not {what}: {e}"));
    if let Some(head) = start.head {
        return Ok(Plan::Resume(head));
    }
    let Some(n) = start.start_block else { return Ok(Plan::Live) };
    let best = provider.best_block_number().map_err(|e| failed("read its head", &e))?;
    if n > best.saturating_add(1) {
        return Err(SourceError::Refused(format!(
            "start block {n} is in the future: the node's head is block {best}; set source.start_block to at most {} \
             or wait for the node",
            best + 1
        )));
    }
    let earliest = provider.earliest_block_number().map_err(|e| failed("read its earliest block", &e))?;
    if n < earliest {
        return Err(SourceError::Refused(format!(
            "start block {n} is below the earliest block this node can serve, block {earliest} (its history is \
             pruned); set source.start_block to {earliest} or more, or use an archive node"
        )));
    }
    if n == 0 {
        let genesis = provider
            .sealed_header(0)
            .map_err(|e| failed("read the genesis header", &e))?
            .ok_or_else(|| SourceError::Refused("the node has no genesis header".to_owned()))?;
        let hash = b256(genesis.hash());
        let block = convert_header(genesis.header(), hash);
        return Ok(Plan::Backfill { head: BlockRef { number: 0, hash }, genesis: Some(Box::new(block)) });
    }
    let parent = n - 1;
    if let Err(e) = provider.history_by_block_number(parent) {
        return Err(SourceError::Refused(format!(
            "start block {n} cannot be backfilled: the node has no state for block {parent} to re-execute from ({e}); \
             the earliest block this node can serve is block {earliest} or later (pruned history)"
        )));
    }
    let hash = provider
        .block_hash(parent)
        .map_err(|e| failed("read a block hash", &e))?
        .ok_or_else(|| SourceError::Refused(format!("start block {n}: the node has no block {parent}")))?;
    Ok(Plan::Backfill { head: BlockRef { number: parent, hash: b256(hash) }, genesis: None })
}

/// The refusal for a sidecar whose head is on neither the node's chain nor its ExEx WAL.
pub(crate) fn not_on_this_chain(head: BlockRef, detail: &str) -> String {
    format!(
        "Reth cannot resume from the sidecar's head {head}: {detail}. That block is on neither this node's chain nor \
         its ExEx WAL (a database from another chain, or blocks the node lost before persisting them): point the \
         sidecar at the node it indexed, restore it from a checkpoint below block {}, or start it on an empty database",
        head.number
    )
}
