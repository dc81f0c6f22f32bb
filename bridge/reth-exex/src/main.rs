//! `monmouth-reth`: the `reth` node with the Monmouth bridge installed as an Execution Extension.
//!
//! The ExEx is deliberately thin; the protocol lives in `monmouth-wire` (tested in the bridge
//! workspace). Here:
//!
//! 1. a [`monmouth_wire::Server`] runs on its own thread with a [`monmouth_wire::ChannelSource`];
//! 2. the ExEx task waits for the first sidecar `hello` and configures Reth's notification stream
//!    with its head (`set_notifications_with_head`), so blocks produced while the sidecar was away
//!    are backfilled; with no head (an empty sidecar database) it follows from the node's head;
//! 3. each `ExExNotification` is converted to wire types and sent into a bounded channel: the
//!    server pulls from it only while the sidecar has credit, so a slow sidecar slows this task,
//!    which then stops polling Reth (Reth buffers, nothing is dropped);
//! 4. on each sidecar `ack`, the server's callback sends `ExExEvent::FinishedHeight` with the chain
//!    head after the acknowledged notification (for a reorg, the new tip; Reth compares finished
//!    heights by number). Nothing is reported finished before a sidecar committed it;
//! 5. the node's best block number (`BlockNumReader::best_block_number`), read at start and with every
//!    notification, is announced as `node_head` in `welcome` and heartbeats, so that the sidecar's lag
//!    counts the blocks Reth has yet to backfill.
//!
//! The ExEx future returns only when Reth's notification stream ends (node shutdown) or on a
//! failure that would otherwise lose notifications (the bridge thread died): Reth treats a returned
//! ExEx as fatal, which is the intended, loud outcome in that case.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy_consensus::{BlockHeader, Transaction as _};
use alloy_eips::{BlockNumHash, Typed2718 as _};
use alloy_primitives::{Address, B256};
use clap::Parser;
use eyre::eyre;
use futures::TryStreamExt;
use monmouth_wire::sources::{OnAck, OnStart};
use monmouth_wire::{
    Acked, BlockRef, ChannelSource, FixedBytes, Inbox, Notification, Server, ServerConfig, SourceError, U256,
    NODE_HEAD_UNKNOWN,
};
use reth_ethereum::chainspec::EthChainSpec;
use reth_ethereum::cli::chainspec::EthereumChainSpecParser;
use reth_ethereum::cli::interface::Cli;
use reth_ethereum::exex::{ExExContext, ExExEvent, ExExHead, ExExNotification};
use reth_ethereum::node::api::{FullNodeComponents, NodeTypes};
use reth_ethereum::node::EthereumNode;
use reth_ethereum::provider::{BlockNumReader, Chain};
use reth_ethereum::{EthPrimitives, Receipt as RethReceipt};
use tracing::{error, info};

/// Largest number of blocks per `ChainCommitted` sent to the sidecar; longer committed chains
/// (backfill) are split, which is equivalent and keeps frames far below the 64 MiB limit.
const MAX_BLOCKS_PER_COMMIT: usize = 64;

/// Command-line options added to `reth node`.
#[derive(Debug, Clone, clap::Args)]
struct MonmouthArgs {
    /// ZeroMQ endpoint the bridge binds (ROUTER); sidecars connect to it.
    #[arg(long = "monmouth.endpoint", env = "MONMOUTH_BRIDGE_ENDPOINT", default_value = "tcp://127.0.0.1:5555")]
    endpoint: String,
    /// Heartbeat interval (milliseconds).
    #[arg(long = "monmouth.heartbeat-ms", default_value_t = 1000)]
    heartbeat_ms: u64,
}

/// Reth's notification receiver as the server's inbox.
struct TokioInbox(tokio::sync::mpsc::Receiver<Notification>);

impl Inbox for TokioInbox {
    fn try_next(&mut self) -> Result<Option<Notification>, SourceError> {
        use tokio::sync::mpsc::error::TryRecvError;
        match self.0.try_recv() {
            Ok(n) => Ok(Some(n)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(SourceError::Closed("the ExEx task stopped".to_owned())),
        }
    }
}

fn b256(h: B256) -> monmouth_wire::B256 {
    FixedBytes(h.0)
}

fn addr(a: Address) -> monmouth_wire::Address {
    FixedBytes(a.0 .0)
}

fn u256(v: alloy_primitives::U256) -> U256 {
    U256(v.to_be_bytes::<32>())
}

fn num_hash(r: BlockRef) -> BlockNumHash {
    BlockNumHash::new(r.number, B256::from(r.hash.0))
}

/// Convert one of Reth's chains (blocks with senders, and receipts) to wire blocks.
fn convert_chain(chain: &Chain<EthPrimitives>) -> Vec<monmouth_wire::Block> {
    chain
        .blocks_and_receipts()
        .map(|(block, receipts)| {
            let header = block.header();
            let mut transactions = Vec::with_capacity(receipts.len());
            let mut out_receipts = Vec::with_capacity(receipts.len());
            for ((sender, tx), receipt) in block.transactions_with_sender().zip(receipts.iter()) {
                transactions.push(convert_tx(*sender, tx));
                out_receipts.push(convert_receipt(*sender, tx, receipt));
            }
            monmouth_wire::Block {
                number: header.number(),
                hash: b256(block.hash()),
                parent_hash: b256(header.parent_hash()),
                timestamp: header.timestamp(),
                beneficiary: addr(header.beneficiary()),
                gas_limit: header.gas_limit(),
                gas_used: header.gas_used(),
                base_fee_per_gas: header.base_fee_per_gas().map(U256::from),
                transactions,
                receipts: out_receipts,
            }
        })
        .collect()
}

fn convert_tx(sender: Address, tx: &reth_ethereum::TransactionSigned) -> monmouth_wire::Transaction {
    let dynamic = tx.is_dynamic_fee();
    monmouth_wire::Transaction {
        hash: b256(*tx.tx_hash()),
        tx_type: u64::from(tx.ty()),
        sender: addr(sender),
        to: tx.to().map(addr),
        value: u256(tx.value()),
        input: tx.input().to_vec(),
        nonce: tx.nonce(),
        gas_limit: tx.gas_limit(),
        gas_price: if dynamic { None } else { tx.gas_price().map(U256::from) },
        max_fee_per_gas: dynamic.then(|| U256::from(tx.max_fee_per_gas())),
        max_priority_fee_per_gas: if dynamic { tx.max_priority_fee_per_gas().map(U256::from) } else { None },
        chain_id: tx.chain_id(),
    }
}

fn convert_receipt(sender: Address, tx: &reth_ethereum::TransactionSigned, r: &RethReceipt) -> monmouth_wire::Receipt {
    monmouth_wire::Receipt {
        status: Some(u64::from(r.success)),
        cumulative_gas_used: r.cumulative_gas_used,
        logs: r
            .logs
            .iter()
            .map(|l| monmouth_wire::Log {
                address: addr(l.address),
                topics: l.data.topics().iter().map(|t| b256(*t)).collect(),
                data: l.data.data.to_vec(),
            })
            .collect(),
        contract_address: tx.to().is_none().then(|| addr(sender.create(tx.nonce()))),
    }
}

/// One Reth notification as one or more wire notifications (long committed chains are split).
fn convert(n: &ExExNotification<EthPrimitives>) -> Vec<Notification> {
    match n {
        ExExNotification::ChainCommitted { new } => convert_chain(new)
            .chunks(MAX_BLOCKS_PER_COMMIT)
            .map(|c| Notification::committed(c.to_vec()))
            .collect(),
        ExExNotification::ChainReorged { old, new } => {
            vec![Notification::reorged(convert_chain(old), convert_chain(new))]
        }
        ExExNotification::ChainReverted { old } => vec![Notification::reverted(convert_chain(old))],
    }
}

async fn monmouth_exex<Node>(mut ctx: ExExContext<Node>, args: MonmouthArgs) -> eyre::Result<()>
where
    Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>,
{
    let (note_tx, note_rx) = tokio::sync::mpsc::channel::<Notification>(1);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<Option<BlockRef>>();
    let events = ctx.events.clone();
    let cfg = ServerConfig {
        endpoint: args.endpoint.clone(),
        chain_id: ctx.config.chain.chain_id(),
        node: format!("reth+monmouth-reth/{}", env!("CARGO_PKG_VERSION")),
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        ..ServerConfig::default()
    };
    let on_start: OnStart = Box::new(move |head| {
        head_tx.send(head).map_err(|_| SourceError::Closed("the ExEx task stopped".to_owned()))
    });
    let on_ack: OnAck = Box::new(move |a: &Acked| {
        // The chain head after the acknowledged notification: the new tip for a commit or reorg,
        // the fork point for a revert.
        if let Some(head) = a.resulting_head {
            events
                .send(ExExEvent::FinishedHeight(num_hash(head)))
                .map_err(|_| SourceError::Closed("Reth's ExEx manager stopped".to_owned()))?;
        }
        Ok(())
    });
    let node_head = Arc::new(AtomicU64::new(NODE_HEAD_UNKNOWN));
    let node_head_server = Arc::clone(&node_head);
    let provider = ctx.provider().clone();
    let refresh_node_head = move || {
        if let Ok(n) = provider.best_block_number() {
            node_head.store(n, Ordering::Relaxed);
        }
    };
    refresh_node_head();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = Arc::clone(&stop);
    let server = std::thread::Builder::new().name("monmouth-bridge".to_owned()).spawn(move || {
        let result = Server::bind(cfg).and_then(|mut server| {
            let mut source = ChannelSource::new(TokioInbox(note_rx), on_start, on_ack, Duration::from_millis(1))
                .with_node_head(node_head_server);
            server.run(&mut source, || stop_server.load(Ordering::Relaxed))
        });
        if let Err(e) = &result {
            error!(target: "monmouth", "bridge server stopped: {e}");
        }
        result
    })?;

    info!(target: "monmouth", endpoint = %args.endpoint, "waiting for the first sidecar hello");
    let head = head_rx.await.map_err(|_| eyre!("the Monmouth bridge stopped before any sidecar connected"))?;
    match head {
        Some(h) => {
            info!(target: "monmouth", head = %h, "resuming notifications after the sidecar's head");
            ctx.set_notifications_with_head(ExExHead { block: num_hash(h) });
        }
        None => {
            info!(target: "monmouth", "the sidecar database is empty; following from the node's head");
            ctx.set_notifications_without_head();
        }
    }

    while let Some(notification) = ctx.notifications.try_next().await? {
        refresh_node_head();
        for n in convert(&notification) {
            if note_tx.send(n).await.is_err() {
                stop.store(true, Ordering::Relaxed);
                let cause = match server.join() {
                    Ok(Err(e)) => e.to_string(),
                    _ => "it exited".to_owned(),
                };
                // Returning is fatal for the node: better than acknowledging blocks nobody has.
                return Err(eyre!("the Monmouth bridge server stopped ({cause}); un-acknowledged notifications will be re-delivered by Reth after restart"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

fn main() -> eyre::Result<()> {
    Cli::<EthereumChainSpecParser, MonmouthArgs>::parse().run(async move |builder, args| {
        let handle = builder
            .node(EthereumNode::default())
            .install_exex("monmouth", async move |ctx| Ok(monmouth_exex(ctx, args)))
            .launch()
            .await?;
        handle.wait_for_node_exit().await
    })
}
