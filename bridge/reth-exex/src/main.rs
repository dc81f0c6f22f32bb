//! `monmouth-reth`: the `reth` node (v2.5.1) with the Monmouth bridge installed as an Execution
//! Extension.
//!
//! The ExEx is deliberately thin; the protocol lives in `monmouth-wire` (tested in the bridge
//! workspace). Every Reth and alloy type and trait is reached through `reth-ethereum`'s re-exports
//! (or inferred), never from an alloy crate named in our manifest, so that this crate cannot disagree
//! with Reth about which alloy it uses.
//!
//! Invariants:
//!
//! 1. **Nothing is reported finished before a sidecar committed it.** `FinishedHeight` is sent only
//!    from the server's ack callback, with the chain head after the acknowledged notification.
//! 2. **Reth keeps running.** A sidecar that cannot be served from where it asked (a start block in the
//!    future or below the node's pruned history, a head on neither the node's chain nor its ExEx WAL),
//!    or a notification stream that fails, is answered with `error` code `refused` naming the reason,
//!    and the bridge waits for the next `hello`. The ExEx future returns only when Reth's notification
//!    stream ends (node shutdown) or when the bridge thread died, the one case where going on would
//!    lose notifications; Reth treats a returned ExEx as fatal, which is then the intended outcome.
//! 3. **Backpressure, not loss.** Notifications go into a channel of capacity 1 that the server pulls
//!    from only while the sidecar has credit; a slow sidecar slows this task, which then stops
//!    polling Reth (Reth buffers in its ExEx WAL).
//!
//! Flow:
//!
//! 1. a [`monmouth_wire::Server`] runs on its own thread with a [`monmouth_wire::ChannelSource`], and a
//!    [`monmouth_wire::HistoryService`] over [`history::ProviderHistory`] answers `history` requests (the
//!    blocks a plugin that joined late needs) from Reth's provider on a thread of its own;
//! 2. on a sidecar's `hello` the server calls [`plan::plan_start`] (on its thread, with a provider clone):
//!    a head resumes Reth's stream after it (`catch_up_notifications_with_head`: Reth reverts an
//!    orphaned head from its WAL and backfills up to the node's *current* head, not the head at
//!    launch); an empty database with `start_block` N backfills from block N (Reth's ExEx backfill
//!    re-executes the blocks; block 0, genesis, is sent first as a block without transactions, as
//!    the `rpc` source indexes it); an empty database without one follows from the node's head;
//! 3. each `ExExNotification` is converted to wire types, a committed chain in slices of
//!    [`convert::MAX_BLOCKS_PER_COMMIT`] blocks;
//! 4. the node's best block number is announced as `node_head` in `welcome` and heartbeats, so that
//!    the sidecar's lag and backfill progress count the blocks Reth has yet to deliver;
//! 5. while no sidecar is served, Reth's stream is drained (a sidecar is always resumed from Reth's
//!    database and WAL), and a `hello` that does not continue the stream re-plans it (the wire server
//!    restarts its source; what was fed for the old plan is dropped by generation);
//! 6. while the node's head is ahead of the last notification taken, Reth's ExEx manager is woken
//!    with a repeated `FinishedHeight` ([`forward::Nudger`]): it hands over one buffered notification per
//!    wake-up.
//!
//! Modules, by concern: [`forward`] (Reth's stream to the server: idle, serve, nudge), [`plan`] (where a
//! sidecar is served from), [`history`] (history requests from the provider), [`head`] (the one reader of the
//! node's head), [`convert`] (Reth's types as wire types); this file: the CLI, the launch, and the wiring.

mod convert;
mod forward;
mod head;
mod history;
mod plan;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use eyre::eyre;
use monmouth_wire::sources::{OnAck, OnStart};
use monmouth_wire::{Acked, BlockRef, ChannelSource, HistoryService, Server, ServerConfig, SourceError, Start};
use reth_ethereum::chainspec::EthChainSpec;
use reth_ethereum::cli::chainspec::EthereumChainSpecParser;
use reth_ethereum::cli::interface::Cli;
use reth_ethereum::exex::{ExExContext, ExExEvent};
use reth_ethereum::node::api::{FullNodeComponents, NodeTypes};
use reth_ethereum::node::EthereumNode;
use reth_ethereum::EthPrimitives;
use tracing::{error, info, warn};

use crate::convert::{b256, exex_head};
use crate::forward::{idle, serve, Directive, Fed, Feed, FeedInbox, Nudger, Served, Woken};
use crate::head::NodeHead;
use crate::history::ProviderHistory;
use crate::plan::{plan_start, Plan};

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

/// Bind the bridge's endpoint, retrying every [`BIND_RETRY`] while it is in use (another process, or a
/// previous node not yet gone): Reth keeps running and buffers notifications meanwhile.
///
/// # Errors
/// Any other bind failure (a malformed endpoint, an invalid configuration).
fn bind_until_free(cfg: &ServerConfig, stop: &AtomicBool) -> Result<Server, monmouth_wire::BridgeError> {
    let mut attempt = 0_u64;
    loop {
        match Server::bind(cfg.clone()) {
            Err(e) if e.is_address_in_use() => {
                if attempt.is_multiple_of(12) {
                    warn!(target: "monmouth", "{e}: the bridge endpoint {} is in use, so no sidecar can connect until \
                        it is free (retrying every {} s; Reth keeps running and keeps the notifications)",
                        cfg.endpoint, BIND_RETRY.as_secs());
                }
                attempt += 1;
                if stop.load(Ordering::Relaxed) {
                    return Err(monmouth_wire::BridgeError::Config("stopped before the endpoint was free".to_owned()));
                }
                std::thread::sleep(BIND_RETRY);
            }
            other => return other,
        }
    }
}

/// How long [`bind_until_free`] waits between attempts.
const BIND_RETRY: Duration = Duration::from_secs(5);

async fn monmouth_exex<Node>(mut ctx: ExExContext<Node>, args: MonmouthArgs) -> eyre::Result<()>
where
    Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>,
{
    let (feed_tx, feed_rx) = tokio::sync::mpsc::channel::<Fed>(1);
    let (plan_tx, mut plan_rx) = tokio::sync::mpsc::unbounded_channel::<Directive>();
    let generation = Arc::new(AtomicU64::new(0));
    let events = ctx.events.clone();
    let finished = Arc::new(std::sync::Mutex::new(None));
    let node_head = NodeHead::new(ctx.provider().clone());
    let nudger = Nudger {
        events: ctx.events.clone(),
        node_head: node_head.clone(),
        finished: Arc::clone(&finished),
        genesis: BlockRef { number: 0, hash: b256(ctx.config.chain.genesis_hash()) },
    };
    let cfg = ServerConfig {
        endpoint: args.endpoint.clone(),
        chain_id: ctx.config.chain.chain_id(),
        node: format!("monmouth-reth/{} (reth v2.5.1)", env!("CARGO_PKG_VERSION")),
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        ..ServerConfig::default()
    };
    let planner = ctx.provider().clone();
    let planner_generation = Arc::clone(&generation);
    let planner_head = node_head.clone();
    let on_start: OnStart = Box::new(move |start: Start| {
        // Whatever was fed for an earlier plan is stale from here on.
        let generation = planner_generation.fetch_add(1, Ordering::SeqCst) + 1;
        // The `welcome` that follows announces the node's head as of now: the sidecar measures its backfill
        // progress against it (heartbeats are not sent while notifications flow).
        planner_head.refresh();
        let (plan, refused) = match plan_start(&planner, start) {
            Ok(plan) => (Some(plan), None),
            Err(e) => (None, Some(e)),
        };
        plan_tx
            .send(Directive { generation, plan })
            .map_err(|_| SourceError::Closed("the ExEx task stopped".to_owned()))?;
        refused.map_or(Ok(()), Err)
    });
    let acked_generation = Arc::clone(&generation);
    let on_ack: OnAck = Box::new(move |a: &Acked| {
        // The chain head after the acknowledged notification: the new tip for a commit or reorg,
        // the fork point for a revert.
        if let Some(head) = a.resulting_head {
            *finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((acked_generation.load(Ordering::SeqCst), head));
            events
                .send(ExExEvent::FinishedHeight(exex_head(head).block))
                .map_err(|_| SourceError::Closed("Reth's ExEx manager stopped".to_owned()))?;
        }
        Ok(())
    });
    node_head.refresh();
    let history = ProviderHistory::<EthPrimitives, _>::new(ctx.provider().clone(), node_head.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = Arc::clone(&stop);
    let inbox = FeedInbox { rx: feed_rx, generation };
    let server = std::thread::Builder::new().name("monmouth-bridge".to_owned()).spawn(move || {
        let mut source =
            ChannelSource::new(inbox, on_start, on_ack, Duration::from_millis(1)).with_node_head(node_head.cell());
        let result = bind_until_free(&cfg, &stop_server).and_then(|server| {
            let history = HistoryService::spawn(history, cfg.max_frame_bytes)
                .map_err(|e| monmouth_wire::BridgeError::Config(format!("cannot start the history reader: {e}")))?;
            let mut server = server.with_history(history);
            server.run(&mut source, || stop_server.load(Ordering::Relaxed))
        });
        if let Err(e) = &result {
            error!(target: "monmouth", "bridge server stopped: {e}");
        }
        result
    })?;
    let bridge_gone = |server: std::thread::JoinHandle<_>, stop: &AtomicBool| {
        stop.store(true, Ordering::Relaxed);
        let cause = match server.join() {
            Ok(Err(e)) => format!("{e}"),
            _ => "it exited".to_owned(),
        };
        // Returning is fatal for the node: better than acknowledging blocks nobody has.
        eyre!("the Monmouth bridge server stopped ({cause}); un-acknowledged notifications will be re-delivered by Reth after restart")
    };

    info!(target: "monmouth", endpoint = %args.endpoint, "waiting for a sidecar hello");
    let mut next: Option<(u64, Plan)> = None;
    // The tip of the last notification taken from Reth (see [`Nudger`]).
    let mut seen = ctx.head.number;
    loop {
        let (generation, plan) = match next.take() {
            Some(planned) => planned,
            None => match idle(&mut ctx, &mut plan_rx, &nudger, &mut seen).await {
                Woken::Plan(generation, plan) => (generation, plan),
                Woken::NodeStopped => break,
                Woken::BridgeGone => return Err(bridge_gone(server, &stop)),
            },
        };
        match serve(&mut ctx, generation, plan, &feed_tx, &mut plan_rx, &nudger, &mut seen)
            .await
        {
            Served::Replanned(Some(Directive { generation, plan })) => next = plan.map(|p| (generation, p)),
            Served::Replanned(None) | Served::BridgeGone => return Err(bridge_gone(server, &stop)),
            Served::NodeStopped => break,
            Served::Refuse(reason) => {
                warn!(target: "monmouth", "{reason}");
                if feed_tx.send(Fed { generation, feed: Feed::Refuse(reason) }).await.is_err() {
                    return Err(bridge_gone(server, &stop));
                }
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
            // Not `launch()`: only this starts the `--dev` miner (as Reth's own `reth` binary does).
            .launch_with_debug_capabilities()
            .await?;
        handle.wait_for_node_exit().await
    })
}
