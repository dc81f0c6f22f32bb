//! Two [`NotificationSource`]s: [`ChannelSource`] (fed by an async task, e.g. the Reth ExEx) and
//! [`ReplaySource`] (a replay file, for `bridge-replay`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::error::{ReplayError, SourceError};
use crate::replay::ReplayReader;
use crate::server::{Acked, Next, NotificationSource, Start};
use crate::types::{BlockRef, Notification};

/// Something that hands out notifications without blocking.
pub trait Inbox {
    /// The next notification if one is queued, `Ok(None)` if not yet.
    ///
    /// # Errors
    /// [`SourceError::Closed`] when the sending side is gone.
    fn try_next(&mut self) -> Result<Option<Notification>, SourceError>;
}

impl Inbox for Receiver<Notification> {
    fn try_next(&mut self) -> Result<Option<Notification>, SourceError> {
        match self.try_recv() {
            Ok(n) => Ok(Some(n)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(SourceError::Closed("the notification channel was closed".to_owned())),
        }
    }
}

/// Called with a sidecar's start (its head, or the block it wants first) whenever the server starts
/// the source: on the first `hello`, and again after the source refused ([`SourceError::Refused`]).
pub type OnStart = Box<dyn FnMut(Start) -> Result<(), SourceError> + Send>;
/// Called for every acknowledged notification.
pub type OnAck = Box<dyn FnMut(&Acked) -> Result<(), SourceError> + Send>;

/// A source fed through a channel by another task; start and ack are forwarded to callbacks.
///
/// This is how the Reth adapter plugs in: its async task waits for the start given to `on_start`,
/// configures Reth's notification stream with it, converts each notification and sends it into the
/// channel (a bounded channel gives backpressure); `on_ack` emits `FinishedHeight`. `on_start` may
/// refuse ([`SourceError::Refused`]), and so may the inbox, when the stream cannot go on.
pub struct ChannelSource<I: Inbox> {
    inbox: I,
    on_start: OnStart,
    on_ack: OnAck,
    poll_interval: Duration,
    node_head: Option<Arc<AtomicU64>>,
}

/// The value of a [`ChannelSource::with_node_head`] cell while the node's head is not known yet.
pub const NODE_HEAD_UNKNOWN: u64 = u64::MAX;

impl<I: Inbox> ChannelSource<I> {
    /// Build from an inbox and the two callbacks. `poll_interval` bounds how long the server waits
    /// before looking at the inbox again when it was empty.
    pub fn new(inbox: I, on_start: OnStart, on_ack: OnAck, poll_interval: Duration) -> Self {
        Self { inbox, on_start, on_ack, poll_interval, node_head: None }
    }

    /// Announce the node's newest block number from `cell`, which the adapter keeps current
    /// ([`NODE_HEAD_UNKNOWN`] until it knows it).
    pub fn with_node_head(mut self, cell: Arc<AtomicU64>) -> Self {
        self.node_head = Some(cell);
        self
    }
}

impl<I: Inbox> NotificationSource for ChannelSource<I> {
    fn start(&mut self, start: Start) -> Result<(), SourceError> {
        (self.on_start)(start)
    }

    fn poll_next(&mut self) -> Result<Next, SourceError> {
        Ok(match self.inbox.try_next()? {
            Some(n) => Next::Ready(n),
            None => Next::Pending(self.poll_interval),
        })
    }

    fn acked(&mut self, ack: &Acked) -> Result<(), SourceError> {
        (self.on_ack)(ack)
    }

    fn node_head(&self) -> Option<u64> {
        let n = self.node_head.as_ref()?.load(Ordering::Relaxed);
        (n != NODE_HEAD_UNKNOWN).then_some(n)
    }
}

/// Serves the notifications of a replay file, optionally paced.
///
/// On [`start`](NotificationSource::start) with a head, the file is scanned for the last
/// notification after which the chain head equals that head, and serving starts after it, the way
/// Reth's `set_notifications_with_head` resumes. When no notification matches (an empty database,
/// or a head the file does not know), serving starts at the first notification and the sidecar
/// skips what it already has.
///
/// A damaged frame ends the stream (everything before it is served); the error is kept in
/// [`ReplaySource::error`]. Started again (a sidecar that does not continue the stream), it serves
/// the file anew.
pub struct ReplaySource {
    path: PathBuf,
    reader: Option<ReplayReader<std::io::BufReader<std::fs::File>>>,
    interval: Option<Duration>,
    next_due: Option<Instant>,
    /// The first damaged frame met, if any.
    pub error: Option<ReplayError>,
    /// Index of the first notification served (after the resume scan).
    pub start_index: u64,
    /// Notifications read from the file so far.
    pub served: u64,
    acked: Vec<Acked>,
    keep_acks: bool,
    node_head: Option<u64>,
}

impl ReplaySource {
    /// Open `path` (header checked now). `rate` is notifications per second (`None`: as fast as the
    /// window allows).
    ///
    /// # Errors
    /// The file cannot be opened or has a bad header.
    pub fn open(path: PathBuf, rate: Option<f64>) -> Result<Self, ReplayError> {
        let reader = ReplayReader::open(&path)?;
        // At most one notification per day; a rate that gives no finite interval means "unpaced".
        let interval = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok())
            .map(|d| d.min(Duration::from_secs(86_400)));
        Ok(Self {
            path,
            reader: Some(reader),
            interval,
            next_due: None,
            error: None,
            start_index: 0,
            served: 0,
            acked: Vec::new(),
            keep_acks: false,
            node_head: None,
        })
    }

    /// Announce `head` as the node's newest block number (a replay has no node: by default none is
    /// announced). For tests of a sidecar's lag while it is served an older part of the chain.
    pub fn with_node_head(mut self, head: Option<u64>) -> Self {
        self.node_head = head;
        self
    }

    /// Keep every [`Acked`] (for tests).
    pub fn keep_acks(mut self) -> Self {
        self.keep_acks = true;
        self
    }

    /// The acks received, when [`keep_acks`](Self::keep_acks) was set.
    pub fn acks(&self) -> &[Acked] {
        &self.acked
    }

    fn resume_index(&self, head: BlockRef) -> Result<Option<u64>, ReplayError> {
        let mut reader = ReplayReader::open(&self.path)?;
        let mut found = None;
        while let Some(frame) = reader.next_frame()? {
            if frame.body.resulting_head() == Some(head) {
                found = Some(frame.index + 1);
            }
        }
        Ok(found)
    }
}

impl NotificationSource for ReplaySource {
    fn start(&mut self, start: Start) -> Result<(), SourceError> {
        // The server starts the source again for a sidecar that does not continue the stream: serve
        // the file from its beginning (or after the new head) again.
        if self.served > 0 || self.start_index > 0 || self.reader.is_none() {
            match ReplayReader::open(&self.path) {
                Ok(reader) => self.reader = Some(reader),
                Err(e) => {
                    error!("{e}");
                    self.error = Some(e);
                    self.reader = None;
                }
            }
            self.start_index = 0;
        }
        let Some(head) = start.head else { return Ok(()) };
        let skip = match self.resume_index(head) {
            Ok(Some(n)) => n,
            Ok(None) => {
                info!(head = %head, "sidecar head not found in the replay file; serving from the start");
                0
            }
            // The damage will be met and reported while serving.
            Err(_) => 0,
        };
        if skip > 0 {
            info!(head = %head, skip, "resuming after the sidecar's head");
        }
        if let Some(reader) = self.reader.as_mut() {
            for _ in 0..skip {
                match reader.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        error!("{e}");
                        self.error = Some(e);
                        self.reader = None;
                        break;
                    }
                }
            }
        }
        self.start_index = skip;
        Ok(())
    }

    fn poll_next(&mut self) -> Result<Next, SourceError> {
        if let (Some(interval), Some(due)) = (self.interval, self.next_due) {
            let now = Instant::now();
            if now < due {
                return Ok(Next::Pending(due - now));
            }
            // Catch up at most one interval after a stall (no burst), without underflowing Instant.
            let floor = now.checked_sub(interval).unwrap_or(now);
            self.next_due = Some(due.max(floor) + interval);
        } else if let Some(interval) = self.interval {
            self.next_due = Some(Instant::now() + interval);
        }
        let Some(reader) = self.reader.as_mut() else { return Ok(Next::End) };
        match reader.next_frame() {
            Ok(Some(frame)) => {
                self.served += 1;
                Ok(match frame.body {
                    crate::replay::FrameBody::Encoded(p) => Next::Encoded(p),
                    crate::replay::FrameBody::Decoded(n) => Next::Ready(n),
                })
            }
            Ok(None) => {
                self.reader = None;
                Ok(Next::End)
            }
            Err(e) => {
                error!("{e}; serving stops here");
                self.error = Some(e);
                self.reader = None;
                Ok(Next::End)
            }
        }
    }

    fn acked(&mut self, ack: &Acked) -> Result<(), SourceError> {
        if self.keep_acks {
            self.acked.push(ack.clone());
        }
        Ok(())
    }

    fn node_head(&self) -> Option<u64> {
        self.node_head
    }
}
