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
//! 1. a [`monmouth_wire::Server`] runs on its own thread with a [`monmouth_wire::ChannelSource`];
//! 2. on a sidecar's `hello` the server calls [`plan_start`] (on its thread, with a provider clone):
//!    a head resumes Reth's stream after it (`catch_up_notifications_with_head`: Reth reverts an
//!    orphaned head from its WAL and backfills up to the node's *current* head, not the head at
//!    launch); an empty database with `start_block` N backfills from block N (Reth's ExEx backfill
//!    re-executes the blocks; block 0, genesis, is sent first as a block without transactions, as
//!    the `rpc` source indexes it); an empty database without one follows from the node's head;
//! 3. each `ExExNotification` is converted to wire types, a committed chain in slices of
//!    [`MAX_BLOCKS_PER_COMMIT`] blocks;
//! 4. the node's best block number is announced as `node_head` in `welcome` and heartbeats, so that
//!    the sidecar's lag and backfill progress count the blocks Reth has yet to deliver;
//! 5. while no sidecar is served, Reth's stream is drained (a sidecar is always resumed from Reth's
//!    database and WAL), and a `hello` that does not continue the stream re-plans it (the wire server
//!    restarts its source; what was fed for the old plan is dropped by generation);
//! 6. while the node's head is ahead of the last notification taken, Reth's ExEx manager is woken
//!    with a repeated `FinishedHeight` ([`Nudger`]): it hands over one buffered notification per
//!    wake-up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use eyre::eyre;
use futures::StreamExt;
use monmouth_wire::sources::{OnAck, OnStart};
use monmouth_wire::{
    Acked, BlockRef, ChannelSource, FixedBytes, Inbox, Notification, Server, ServerConfig, SourceError, Start, U256,
    NODE_HEAD_UNKNOWN,
};
use reth_ethereum::chainspec::EthChainSpec;
use reth_ethereum::cli::chainspec::EthereumChainSpecParser;
use reth_ethereum::cli::interface::Cli;
use reth_ethereum::exex::{ExExContext, ExExEvent, ExExHead, ExExNotification};
use reth_ethereum::node::api::{FullNodeComponents, NodeTypes};
use reth_ethereum::node::EthereumNode;
use reth_ethereum::primitives::{BlockHeader, NodePrimitives, Receipt, SignedTransaction};
use reth_ethereum::provider::{BlockHashReader, BlockNumReader, Chain, HeaderProvider, StateProviderFactory};
use reth_ethereum::EthPrimitives;
use tracing::{debug, error, info, warn};

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

/// What the ExEx task hands the bridge server.
enum Feed {
    /// The next notification, in order.
    Note(Notification),
    /// The stream cannot go on from where the sidecar started it: refuse the session with this reason.
    Refuse(String),
}

/// A [`Feed`] item for the plan of one generation (see [`FeedInbox`]).
struct Fed {
    generation: u64,
    feed: Feed,
}

/// Where to resume Reth's notification stream for a sidecar, decided by [`plan_start`].
#[derive(Debug)]
enum Plan {
    /// Follow from the node's head (empty database, no start block).
    Live,
    /// Resume after the sidecar's durable head.
    Resume(BlockRef),
    /// Backfill from block `head.number + 1`; `genesis` is sent first when the start is block 0.
    Backfill { head: BlockRef, genesis: Option<monmouth_wire::Block> },
}

impl Plan {
    /// The block the first notification must connect to (its parent), if the plan has one.
    fn anchor(&self) -> Option<BlockRef> {
        match self {
            Self::Live => None,
            Self::Resume(h) | Self::Backfill { head: h, .. } => Some(*h),
        }
    }
}

/// What the server's `on_start` tells the ExEx task: serve `plan` as generation `generation`, or
/// (`plan: None`) the start was refused and no sidecar is being served.
struct Directive {
    generation: u64,
    plan: Option<Plan>,
}

/// Wakes Reth's ExEx manager while it holds notifications back.
///
/// The manager (reth-exex 2.5.1, `ExExManager::poll`) hands an ExEx at most one buffered notification per wake-up
/// of its task, and is not woken when the ExEx frees its channel, so a residue left by a burst of blocks (or by a
/// backfill that covered what the manager still buffers, whose entries it then skips one per wake-up) trails
/// behind until as many new blocks arrive. Every `FinishedHeight` event wakes it, so while the node's head is
/// ahead of the last notification seen, the ExEx repeats its last `FinishedHeight` every [`NUDGE_EVERY`]: the
/// height the current sidecar acknowledged, or, before it acknowledged anything (or while none is served), the
/// genesis block, which claims nothing.
struct Nudger<P> {
    events: tokio::sync::mpsc::UnboundedSender<ExExEvent>,
    provider: P,
    /// The last `FinishedHeight` sent for an acknowledgement, and the plan generation it was for.
    finished: Arc<std::sync::Mutex<Option<(u64, BlockRef)>>>,
    genesis: BlockRef,
    /// The node's head as last read, which the bridge reports to the sidecar (`welcome`, heartbeats).
    node_head: Arc<AtomicU64>,
}

/// How often [`Nudger`] wakes Reth's ExEx manager while notifications are held back.
const NUDGE_EVERY: Duration = Duration::from_millis(10);

impl<P: BlockNumReader> Nudger<P> {
    /// Whether the node's head is ahead of `seen`, the tip of the last notification taken from Reth. The head
    /// read is also recorded as the node's head the bridge reports (one read of it per notification).
    fn behind(&self, seen: u64) -> bool {
        self.provider.best_block_number().is_ok_and(|best| {
            self.node_head.store(best, Ordering::Relaxed);
            best > seen
        })
    }

    /// Repeat the last `FinishedHeight` of plan `generation` (the genesis block when there is none).
    fn nudge(&self, generation: u64) {
        let acked = *self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let height = acked.filter(|(g, _)| *g == generation).map_or(self.genesis, |(_, h)| h);
        let _ = self.events.send(ExExEvent::FinishedHeight(exex_head(height).block));
    }
}

/// The tip a notification leaves the chain at: the committed tip, or the fork point of a revert.
fn resulting_tip<N: NodePrimitives>(n: &ExExNotification<N>) -> u64 {
    match n {
        ExExNotification::ChainReverted { old } => old.range().start().saturating_sub(1),
        _ => n.committed_chain().map_or(0, |c| *c.range().end()),
    }
}

/// The bridge server's end of the feed channel as its inbox. Items of an older generation than
/// the current plan's (sent for a sidecar the server has since restarted the stream for) are
/// dropped unseen.
struct FeedInbox {
    rx: tokio::sync::mpsc::Receiver<Fed>,
    generation: Arc<AtomicU64>,
}

impl Inbox for FeedInbox {
    fn try_next(&mut self) -> Result<Option<Notification>, SourceError> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            match self.rx.try_recv() {
                Ok(fed) if fed.generation < self.generation.load(Ordering::SeqCst) => {}
                Ok(Fed { feed: Feed::Note(n), .. }) => return Ok(Some(n)),
                Ok(Fed { feed: Feed::Refuse(reason), .. }) => return Err(SourceError::Refused(reason)),
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(SourceError::Closed("the ExEx task stopped".to_owned())),
            }
        }
    }
}

fn b256(h: impl Into<[u8; 32]>) -> monmouth_wire::B256 {
    FixedBytes(h.into())
}

fn addr(a: impl Into<[u8; 20]>) -> monmouth_wire::Address {
    FixedBytes(a.into())
}

/// Reth's head type for a wire block reference.
fn exex_head(r: BlockRef) -> ExExHead {
    let mut head = ExExHead { block: Default::default() };
    head.block.number = r.number;
    head.block.hash = r.hash.0.into();
    head
}

/// A wire block with the header's fields and no transactions (receipts are added by the caller).
fn convert_header<H: BlockHeader>(header: &H, hash: monmouth_wire::B256) -> monmouth_wire::Block {
    monmouth_wire::Block {
        number: header.number(),
        hash,
        parent_hash: b256(header.parent_hash()),
        timestamp: header.timestamp(),
        beneficiary: addr(header.beneficiary()),
        gas_limit: header.gas_limit(),
        gas_used: header.gas_used(),
        base_fee_per_gas: header.base_fee_per_gas().map(U256::from),
        transactions: Vec::new(),
        receipts: Vec::new(),
    }
}

fn convert_tx<T: SignedTransaction>(sender: [u8; 20], tx: &T) -> monmouth_wire::Transaction {
    let dynamic = tx.is_dynamic_fee();
    monmouth_wire::Transaction {
        hash: b256(*tx.tx_hash()),
        tx_type: u64::from(tx.ty()),
        sender: FixedBytes(sender),
        to: tx.to().map(addr),
        value: U256(tx.value().to_be_bytes::<32>()),
        input: tx.input().to_vec(),
        nonce: tx.nonce(),
        gas_limit: tx.gas_limit(),
        gas_price: if dynamic { None } else { tx.gas_price().map(U256::from) },
        max_fee_per_gas: dynamic.then(|| U256::from(tx.max_fee_per_gas())),
        max_priority_fee_per_gas: if dynamic { tx.max_priority_fee_per_gas().map(U256::from) } else { None },
        chain_id: tx.chain_id(),
    }
}

/// Whether `tx` creates a contract, and its nonce (the created address is `sender.create(nonce)`).
fn creation<T: SignedTransaction>(tx: &T) -> (bool, u64) {
    (tx.to().is_none(), tx.nonce())
}

fn convert_receipt<R: Receipt>(contract_address: Option<monmouth_wire::Address>, r: &R) -> monmouth_wire::Receipt {
    monmouth_wire::Receipt {
        status: Some(u64::from(r.status())),
        cumulative_gas_used: r.cumulative_gas_used(),
        logs: r
            .logs()
            .iter()
            .map(|l| monmouth_wire::Log {
                address: addr(l.address),
                topics: l.data.topics().iter().map(|t| b256(*t)).collect(),
                data: l.data.data.to_vec(),
            })
            .collect(),
        contract_address,
    }
}

/// One of Reth's chains (blocks with senders, and receipts) as wire blocks, oldest first.
fn convert_chain<N: NodePrimitives>(chain: &Chain<N>) -> impl Iterator<Item = monmouth_wire::Block> + '_ {
    chain.blocks_and_receipts().map(|(block, receipts)| {
        let mut out = convert_header(block.header(), b256(block.hash()));
        out.transactions.reserve(receipts.len());
        out.receipts.reserve(receipts.len());
        for ((sender, tx), receipt) in block.transactions_with_sender().zip(receipts.iter()) {
            let (creates, nonce) = creation(tx);
            let created = creates.then(|| addr(sender.create(nonce)));
            out.transactions.push(convert_tx((*sender).into(), tx));
            out.receipts.push(convert_receipt(created, receipt));
        }
        out
    })
}

/// One Reth notification as wire notifications, produced lazily: a long committed chain (backfill)
/// becomes `ChainCommitted`s of at most [`MAX_BLOCKS_PER_COMMIT`] blocks, converted one at a time.
fn convert<N: NodePrimitives>(n: &ExExNotification<N>) -> Box<dyn Iterator<Item = Notification> + Send + '_> {
    match n {
        ExExNotification::ChainCommitted { new } => {
            let mut blocks = convert_chain(new).peekable();
            Box::new(std::iter::from_fn(move || {
                blocks.peek()?;
                Some(Notification::committed(blocks.by_ref().take(MAX_BLOCKS_PER_COMMIT).collect()))
            }))
        }
        ExExNotification::ChainReorged { old, new } => Box::new(std::iter::once(Notification::reorged(
            convert_chain(old).collect(),
            convert_chain(new).collect(),
        ))),
        ExExNotification::ChainReverted { old } => {
            Box::new(std::iter::once(Notification::reverted(convert_chain(old).collect())))
        }
    }
}

/// Decide where to serve a sidecar from, or refuse with a sentence naming the reason.
///
/// # Errors
/// [`SourceError::Refused`]: a `start_block` beyond the node's head + 1, below the earliest block it
/// holds, or whose parent state it no longer has (pruned history); a provider failure.
fn plan_start<P>(provider: &P, start: Start) -> Result<Plan, SourceError>
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
        return Ok(Plan::Backfill { head: BlockRef { number: 0, hash }, genesis: Some(block) });
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
                if attempt % 12 == 0 {
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

/// How [`serve`] ended.
enum Served {
    /// The server started the stream again for a sidecar's `hello` (`None`: it refused that start).
    Replanned(Option<Directive>),
    /// The stream cannot go on for this sidecar: refuse the session with this reason.
    Refuse(String),
    /// Reth's notification stream ended (node shutdown).
    NodeStopped,
    /// The bridge server is gone (its channels are closed).
    BridgeGone,
}

/// What [`idle`] saw first.
enum Woken {
    Plan(u64, Plan),
    NodeStopped,
    BridgeGone,
}

/// No sidecar is being served: keep Reth's notification stream drained until a plan arrives.
///
/// What is drained is not lost: a plan resumes from the sidecar's head out of Reth's database and
/// ExEx WAL. Draining keeps Reth's ExEx manager from piling up a backlog: that manager hands a
/// buffered notification to an ExEx only when polled, one per poll, and skips (without being polled
/// again) those at or below the ExEx's `FinishedHeight`, so after a backfill that covered a backlog,
/// live notifications would wait behind it for as many wake-ups as it held.
async fn idle<Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>>(
    ctx: &mut ExExContext<Node>,
    plans: &mut tokio::sync::mpsc::UnboundedReceiver<Directive>,
    nudger: &Nudger<Node::Provider>,
    seen: &mut u64,
) -> Woken {
    ctx.set_notifications_without_head();
    let mut drained = 0_u64;
    loop {
        let behind = nudger.behind(*seen);
        tokio::select! {
            directive = plans.recv() => match directive {
                Some(Directive { generation, plan: Some(plan) }) => {
                    if drained > 0 {
                        info!(target: "monmouth", drained, "notifications passed while no sidecar was served");
                    }
                    return Woken::Plan(generation, plan);
                }
                Some(Directive { plan: None, .. }) => {}
                None => return Woken::BridgeGone,
            },
            item = ctx.notifications.next() => match item {
                Some(n) => {
                    drained += 1;
                    if let Ok(n) = &n {
                        *seen = resulting_tip(n);
                    }
                }
                None => return Woken::NodeStopped,
            },
            () = tokio::time::sleep(NUDGE_EVERY), if behind => nudger.nudge(0),
        }
    }
}

/// Serve `plan` to the bridge server until the stream ends, fails, or the server re-plans.
///
/// Every await is raced against the next [`Directive`], so a new plan (another sidecar) is taken
/// at once; what this generation had in flight is then dropped by the [`FeedInbox`].
async fn serve<Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>>(
    ctx: &mut ExExContext<Node>,
    generation: u64,
    plan: Plan,
    feed: &tokio::sync::mpsc::Sender<Fed>,
    plans: &mut tokio::sync::mpsc::UnboundedReceiver<Directive>,
    nudger: &Nudger<Node::Provider>,
    seen: &mut u64,
) -> Served {
    macro_rules! send_or_replan {
        ($item:expr) => {
            tokio::select! {
                directive = plans.recv() => return Served::Replanned(directive),
                sent = feed.send(Fed { generation, feed: $item }) => if sent.is_err() { return Served::BridgeGone },
            }
        };
    }
    let anchor = plan.anchor();
    let resumed_from = match &plan {
        Plan::Resume(h) => Some(*h),
        _ => None,
    };
    let configured = match plan {
        Plan::Live => {
            info!(target: "monmouth", "the sidecar database is empty and has no start block; following from the node's head");
            ctx.set_notifications_without_head();
            Ok(())
        }
        Plan::Resume(h) => {
            info!(target: "monmouth", head = %h, "resuming notifications after the sidecar's head");
            ctx.catch_up_notifications_with_head(exex_head(h))
        }
        Plan::Backfill { head, genesis } => {
            info!(target: "monmouth", from = head.number + u64::from(genesis.is_none()), "backfilling the sidecar");
            if let Some(g) = genesis {
                send_or_replan!(Feed::Note(Notification::committed(vec![g])));
            }
            ctx.catch_up_notifications_with_head(exex_head(head))
        }
    };
    if let Err(e) = configured {
        return Served::Refuse(format!("Reth could not resume its notification stream: {e:#}"));
    }
    // Highest block number sent in this plan: Reth re-sends, after a backfill, notifications of
    // blocks the backfill covered (its own filter knows only the plan's start), and those are skipped.
    let mut sent_up_to = anchor.map(|a| a.number);
    let mut delivered = false;
    let mut behind = nudger.behind(*seen);
    loop {
        let item = tokio::select! {
            directive = plans.recv() => return Served::Replanned(directive),
            item = ctx.notifications.next() => item,
            () = tokio::time::sleep(NUDGE_EVERY), if behind => {
                nudger.nudge(generation);
                behind = nudger.behind(*seen);
                continue;
            }
        };
        let notification = match item {
            None => return Served::NodeStopped,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                return Served::Refuse(match resumed_from.filter(|_| !delivered) {
                    Some(h) => not_on_this_chain(h, &format!("{e:#}")),
                    None => format!("Reth's ExEx notification stream failed: {e:#}; resuming from the sidecar's head"),
                })
            }
        };
        *seen = resulting_tip(&notification);
        // One read of the node's head per notification: whether to nudge, and the head the bridge reports
        // (at least this notification's tip) while it is forwarded.
        behind = nudger.behind(*seen);
        if let (ExExNotification::ChainCommitted { .. }, Some(up_to)) = (&notification, sent_up_to) {
            if *seen <= up_to {
                debug!(target: "monmouth", tip = *seen, up_to, "skipping a notification of blocks already sent");
                continue;
            }
        }
        for n in convert(&notification) {
            if !delivered {
                // The first notification must connect to where the sidecar is. Reth resumes a head
                // it no longer has (a `--dev` node killed before persisting its newest blocks mines
                // others at those heights) as if it were canonical or ahead of it; the sidecar would
                // then refuse every notification as an unknown fork.
                if let (Some(a), Some(first)) = (anchor, n.new.as_ref().and_then(|b| b.first())) {
                    if n.old.is_none() && (first.number != a.number + 1 || first.parent_hash != a.hash) {
                        return Served::Refuse(not_on_this_chain(
                            a,
                            &format!("Reth resumed with block {} whose parent is {}", first.number, first.parent_hash),
                        ));
                    }
                }
                delivered = true;
            }
            send_or_replan!(Feed::Note(n));
        }
        sent_up_to = Some(*seen);
    }
}

/// The refusal for a sidecar whose head is on neither the node's chain nor its ExEx WAL.
fn not_on_this_chain(head: BlockRef, detail: &str) -> String {
    format!(
        "Reth cannot resume from the sidecar's head {head}: {detail}. That block is on neither this node's chain nor \
         its ExEx WAL (a database from another chain, or blocks the node lost before persisting them): point the \
         sidecar at the node it indexed, restore it from a checkpoint below block {}, or start it on an empty database",
        head.number
    )
}

async fn monmouth_exex<Node>(mut ctx: ExExContext<Node>, args: MonmouthArgs) -> eyre::Result<()>
where
    Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>,
{
    let (feed_tx, feed_rx) = tokio::sync::mpsc::channel::<Fed>(1);
    let (plan_tx, mut plan_rx) = tokio::sync::mpsc::unbounded_channel::<Directive>();
    let generation = Arc::new(AtomicU64::new(0));
    let events = ctx.events.clone();
    let finished = Arc::new(std::sync::Mutex::new(None));
    let node_head = Arc::new(AtomicU64::new(NODE_HEAD_UNKNOWN));
    let nudger = Nudger {
        events: ctx.events.clone(),
        provider: ctx.provider().clone(),
        finished: Arc::clone(&finished),
        genesis: BlockRef { number: 0, hash: b256(ctx.config.chain.genesis_hash()) },
        node_head: Arc::clone(&node_head),
    };
    let cfg = ServerConfig {
        endpoint: args.endpoint.clone(),
        chain_id: ctx.config.chain.chain_id(),
        node: format!("monmouth-reth/{} (reth v2.5.1)", env!("CARGO_PKG_VERSION")),
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        ..ServerConfig::default()
    };
    let refresh_node_head: Arc<dyn Fn() + Send + Sync> = {
        let (provider, cell) = (ctx.provider().clone(), Arc::clone(&node_head));
        Arc::new(move || {
            if let Ok(n) = provider.best_block_number() {
                cell.store(n, Ordering::Relaxed);
            }
        })
    };
    let planner = ctx.provider().clone();
    let planner_generation = Arc::clone(&generation);
    let planner_refresh = Arc::clone(&refresh_node_head);
    let on_start: OnStart = Box::new(move |start: Start| {
        // Whatever was fed for an earlier plan is stale from here on.
        let generation = planner_generation.fetch_add(1, Ordering::SeqCst) + 1;
        // The `welcome` that follows announces the node's head as of now: the sidecar measures its backfill
        // progress against it (heartbeats are not sent while notifications flow).
        planner_refresh();
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
    refresh_node_head();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = Arc::clone(&stop);
    let inbox = FeedInbox { rx: feed_rx, generation };
    let server = std::thread::Builder::new().name("monmouth-bridge".to_owned()).spawn(move || {
        let mut source = ChannelSource::new(inbox, on_start, on_ack, Duration::from_millis(1)).with_node_head(node_head);
        let result = bind_until_free(&cfg, &stop_server)
            .and_then(|mut server| server.run(&mut source, || stop_server.load(Ordering::Relaxed)));
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
