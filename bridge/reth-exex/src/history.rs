//! The history service's reader: the canonical blocks a sidecar asks for with `history` (a plugin that joined
//! late), read from Reth's provider with their senders and receipts, converted as the notification stream
//! converts them. Runs on the wire crate's history thread (`monmouth_wire::HistoryService`), never on the ExEx
//! task or the server loop, so the live stream does not wait for it.

use std::marker::PhantomData;

use monmouth_wire::{Block, HistoryReader, HistoryRequest};
use reth_ethereum::primitives::{AlloyBlockHeader as _, BlockBody as _, NodePrimitives};
use reth_ethereum::provider::{BlockHashReader, BlockNumReader, BlockReader, ReceiptProvider};

use crate::convert::{b256, convert_block, MAX_BLOCKS_PER_COMMIT};
use crate::head::NodeHead;

/// Reads history from the node's database.
pub(crate) struct ProviderHistory<N, P> {
    provider: P,
    node_head: NodeHead<P>,
    _primitives: PhantomData<fn() -> N>,
}

impl<N, P: Clone> ProviderHistory<N, P> {
    pub(crate) fn new(provider: P, node_head: NodeHead<P>) -> Self {
        Self { provider, node_head, _primitives: PhantomData }
    }
}

impl<N, P> HistoryReader for ProviderHistory<N, P>
where
    N: NodePrimitives,
    P: BlockReader<Block = N::Block>
        + ReceiptProvider<Receipt = N::Receipt>
        + BlockNumReader
        + BlockHashReader
        + Send
        + Sync
        + 'static,
{
    fn max_blocks(&self) -> u64 {
        MAX_BLOCKS_PER_COMMIT as u64
    }

    /// Blocks `req.from..=last` of the node's canonical chain.
    ///
    /// # Errors
    /// A sentence naming the block: `last` beyond the node's head; `req.head` not the node's block at its
    /// height; a block or its receipts the node no longer has (pruned history), naming its earliest block.
    fn read(&self, req: &HistoryRequest, last: u64) -> Result<Vec<Block>, String> {
        let failed = |what: String, e: &dyn std::fmt::Display| format!("the node could not read {what}: {e}");
        let best = self.node_head.refresh().ok_or_else(|| "the node could not read its head".to_owned())?;
        if last > best {
            return Err(format!("block {last} is beyond the node's head, block {best}"));
        }
        if let Some(head) = req.head {
            let at = self.provider.block_hash(head.number).map_err(|e| failed(format!("block {}", head.number), &e))?;
            if at.map(b256) != Some(head.hash) {
                let at = at.map_or_else(|| "missing".to_owned(), |h| b256(h).to_string());
                return Err(format!(
                    "the node's block {} is {at}, not the sidecar's head {head}: a reorg the sidecar has not \
                     received yet, or another chain",
                    head.number
                ));
            }
        }
        let earliest = self.provider.earliest_block_number().map_err(|e| failed("its earliest block".to_owned(), &e))?;
        let pruned = |n: u64, what: &str| {
            format!("the node has no {what} for block {n} (pruned history: the earliest block it holds is block {earliest}; use an archive node, or a start_block it still holds)")
        };
        if req.from < earliest {
            return Err(pruned(req.from, "block"));
        }
        let blocks = self
            .provider
            .recovered_block_range(req.from..=last)
            .map_err(|e| failed(format!("blocks {}..={last}", req.from), &e))?;
        let mut out = Vec::with_capacity(blocks.len());
        for (n, block) in (req.from..=last).zip(blocks.iter().map(Some).chain(std::iter::repeat(None))) {
            let Some(block) = block.filter(|b| b.header().number() == n) else { return Err(pruned(n, "block")) };
            let receipts = self
                .provider
                .receipts_by_block(n.into())
                .map_err(|e| failed(format!("the receipts of block {n}"), &e))?
                .unwrap_or_default();
            if receipts.len() != block.body().transactions().len() {
                return Err(pruned(n, "receipts"));
            }
            out.push(convert_block::<N>(block, &receipts));
        }
        Ok(out)
    }
}
