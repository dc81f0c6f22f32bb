//! The node's head: one reader of `best_block_number`, and the cell the bridge announces it from
//! (`welcome.node_head` and heartbeats), shared by the notification forwarding (which reads it once per
//! notification, to know whether Reth holds notifications back) and the server's `hello` handling (which
//! reads it before `welcome`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use monmouth_wire::NODE_HEAD_UNKNOWN;
use reth_ethereum::provider::BlockNumReader;

/// Reads the node's best block number and records it in a cell shared with the bridge server.
#[derive(Clone)]
pub(crate) struct NodeHead<P> {
    provider: P,
    cell: Arc<AtomicU64>,
}

impl<P: BlockNumReader> NodeHead<P> {
    /// A reader over `provider`; the cell holds [`NODE_HEAD_UNKNOWN`] until the first successful read.
    pub(crate) fn new(provider: P) -> Self {
        Self { provider, cell: Arc::new(AtomicU64::new(NODE_HEAD_UNKNOWN)) }
    }

    /// The cell the bridge server announces (see `ChannelSource::with_node_head`).
    pub(crate) fn cell(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.cell)
    }

    /// Read the node's best block number now and record it; `None` when the provider fails (the cell keeps
    /// the last value read).
    pub(crate) fn refresh(&self) -> Option<u64> {
        let best = self.provider.best_block_number().ok()?;
        self.cell.store(best, Ordering::Relaxed);
        Some(best)
    }
}
