//! Forwarding Reth's notifications to the bridge server: the ExEx task's two states, [`idle`] (no sidecar is
//! served: Reth's stream is drained) and [`serve`] (a plan is served: Reth's stream is resumed where the sidecar
//! is, converted and fed to the server through a channel of capacity 1), the feed channel's server end
//! ([`FeedInbox`]), and the [`Nudger`] that wakes Reth's ExEx manager while it holds notifications back.
//!
//! Invariants: nothing is reported finished here (only the server's ack callback sends `FinishedHeight` for an
//! acknowledgement; the nudger repeats the last one, or the genesis block, which claims nothing); a slow sidecar
//! slows this task, which then stops polling Reth (Reth buffers in its ExEx WAL); every await is raced against
//! the next [`Directive`], so a new plan (another sidecar) is taken at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use monmouth_wire::{BlockRef, Inbox, Notification, SourceError};
use reth_ethereum::exex::{ExExContext, ExExEvent, ExExNotification};
use reth_ethereum::node::api::{FullNodeComponents, NodeTypes};
use reth_ethereum::provider::BlockNumReader;
use reth_ethereum::EthPrimitives;
use tracing::{debug, info};

use crate::convert::{convert, exex_head, resulting_tip};
use crate::head::NodeHead;
use crate::plan::{not_on_this_chain, Plan};

/// What the ExEx task hands the bridge server.
pub(crate) enum Feed {
    /// The next notification, in order.
    Note(Notification),
    /// The stream cannot go on from where the sidecar started it: refuse the session with this reason.
    Refuse(String),
}

/// A [`Feed`] item for the plan of one generation (see [`FeedInbox`]).
pub(crate) struct Fed {
    pub(crate) generation: u64,
    pub(crate) feed: Feed,
}

/// What the server's `on_start` tells the ExEx task: serve `plan` as generation `generation`, or
/// (`plan: None`) the start was refused and no sidecar is being served.
pub(crate) struct Directive {
    pub(crate) generation: u64,
    pub(crate) plan: Option<Plan>,
}

/// The bridge server's end of the feed channel as its inbox. Items of an older generation than
/// the current plan's (sent for a sidecar the server has since restarted the stream for) are
/// dropped unseen.
pub(crate) struct FeedInbox {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Fed>,
    pub(crate) generation: Arc<AtomicU64>,
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

/// Wakes Reth's ExEx manager while it holds notifications back.
///
/// The manager (reth-exex 2.5.1, `ExExManager::poll`) hands an ExEx at most one buffered notification per wake-up
/// of its task, and is not woken when the ExEx frees its channel, so a residue left by a burst of blocks (or by a
/// backfill that covered what the manager still buffers, whose entries it then skips one per wake-up) trails
/// behind until as many new blocks arrive. Every `FinishedHeight` event wakes it, so while the node's head is
/// ahead of the last notification seen, the ExEx repeats its last `FinishedHeight` every [`NUDGE_EVERY`]: the
/// height the current sidecar acknowledged, or, before it acknowledged anything (or while none is served), the
/// genesis block, which claims nothing.
pub(crate) struct Nudger<P> {
    pub(crate) events: tokio::sync::mpsc::UnboundedSender<ExExEvent>,
    /// The node's head reader (the one the bridge announces from).
    pub(crate) node_head: NodeHead<P>,
    /// The last `FinishedHeight` sent for an acknowledgement, and the plan generation it was for.
    pub(crate) finished: Arc<std::sync::Mutex<Option<(u64, BlockRef)>>>,
    pub(crate) genesis: BlockRef,
}

/// How often [`Nudger`] wakes Reth's ExEx manager while notifications are held back.
const NUDGE_EVERY: Duration = Duration::from_millis(10);

impl<P: BlockNumReader> Nudger<P> {
    /// Whether the node's head is ahead of `seen`, the tip of the last notification taken from Reth (one read of
    /// the node's head, which the bridge then reports).
    fn behind(&self, seen: u64) -> bool {
        self.node_head.refresh().is_some_and(|best| best > seen)
    }

    /// Repeat the last `FinishedHeight` of plan `generation` (the genesis block when there is none).
    fn nudge(&self, generation: u64) {
        let acked = *self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let height = acked.filter(|(g, _)| *g == generation).map_or(self.genesis, |(_, h)| h);
        let _ = self.events.send(ExExEvent::FinishedHeight(exex_head(height).block));
    }
}

/// How [`serve`] ended.
pub(crate) enum Served {
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
pub(crate) enum Woken {
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
pub(crate) async fn idle<Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>>(
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
pub(crate) async fn serve<Node: FullNodeComponents<Types: NodeTypes<Primitives = EthPrimitives>>>(
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
                send_or_replan!(Feed::Note(Notification::committed(vec![*g])));
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
