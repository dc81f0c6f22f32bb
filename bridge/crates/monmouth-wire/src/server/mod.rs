//! The ROUTER session server: hello/welcome, credit window, re-send buffer, heartbeats, acks.
//!
//! One sidecar session is served at a time (the *consumer*): a `hello` from a new ZeroMQ identity
//! replaces the current session, because a restarted sidecar reconnects with a new identity and
//! `FinishedHeight` only makes sense for a single consumer. The superseded peer is told so with an
//! `error` (`unexpected`).
//!
//! A `hello` *continues* the stream when it says the sidecar is where the stream left it: its head is
//! the head it reported in its last ack (before any ack: the start it was served from), or the
//! resulting head of a notification sent and not yet acknowledged (committed, ack lost). The server
//! then re-sends every unacknowledged notification. Any other `hello` (another database, a restored
//! backup, an emptied one) *restarts* the source from that `hello`, after dropping what was buffered:
//! a stream is never served to a sidecar it does not continue.
//!
//! State machine, per loop iteration ([`Server::step`]):
//! 1. wait on the socket (at most until the next heartbeat or the source's retry hint);
//! 2. handle every incoming frame (decode errors are answered with `error`, never fatal);
//! 3. pull from the [`NotificationSource`] while fewer than `window` notifications are buffered
//!    (so a slow sidecar slows the source; nothing is dropped);
//! 4. send buffered notifications while fewer than `window` are in flight;
//! 5. send a heartbeat when due; drop the session after 3 silent heartbeat intervals.
//!
//! Beside the stream, `history` requests are handed to a [`crate::history::HistoryService`] (step 2) and its
//! answers sent when ready (after step 4); they take no `seq` and no credit.
//!
//! This module holds the server, its loop and its frames; `session` a session's lifecycle (steps 1–2
//! for `hello`), `stream` the credit window, sends, acks and heartbeats (steps 3–5), `history` the history
//! requests.

mod history;
mod session;
mod stream;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::error::{BridgeError, ErrorCode, SourceError};
use crate::message::{decode, encode, now_ms, ErrorMsg, Message, MAX_FRAME_BYTES};
use crate::types::{BlockRef, Notification, NotificationKind};

/// What a source has for the server right now.
#[derive(Debug)]
pub enum Next {
    /// The next notification, in order.
    Ready(Notification),
    /// The next notification, already encoded (see [`crate::message::PreEncoded`]); the server only
    /// writes its `seq`. Replay files use this to avoid decoding and re-encoding every block.
    Encoded(crate::message::PreEncoded),
    /// Nothing yet; ask again after at most this long.
    Pending(Duration),
    /// The source is finished (a replay file's end). Live sources never return this.
    End,
}

/// Where the sidecar asked to be served from, as handed to [`NotificationSource::start`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Start {
    /// The sidecar's durable head; `None` on an empty database.
    pub head: Option<BlockRef>,
    /// With no head: the first block the sidecar wants (`None`: from the node's head on).
    pub start_block: Option<u64>,
}

/// An acknowledged notification, as handed to [`NotificationSource::acked`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The acknowledged sequence number (acks are cumulative).
    pub seq: u64,
    /// The notification's variant.
    pub kind: NotificationKind,
    /// Tip of the notification's committed chain, if it has one.
    pub committed_tip: Option<BlockRef>,
    /// The chain head after the notification (the committed tip, or the fork point of a revert).
    pub resulting_head: Option<BlockRef>,
    /// The head the sidecar reported in its `ack` (`None`: its database is empty).
    pub sidecar_head: Option<BlockRef>,
}

/// Where notifications come from: Reth's ExEx stream in production, a replay file in tests.
///
/// The server calls [`start`](Self::start) on the first valid `hello` (and again on a `hello` that
/// does not continue the stream, see the module doc), then [`poll_next`](Self::poll_next) only while it has credit, and [`acked`](Self::acked) for every
/// acknowledged notification (in `seq` order, once each).
///
/// A source may refuse ([`SourceError::Refused`]) from `start` or from `poll_next`: the server then
/// answers the session with `error` code `refused`, drops what it buffered and not yet had
/// acknowledged, and calls `start` again on the next `hello`. Nothing is acknowledged that the sidecar
/// did not commit, and the server keeps running.
pub trait NotificationSource {
    /// A sidecar said hello with `start` (its durable head, or the block it wants first).
    /// A Reth adapter resumes Reth's notification stream from it.
    ///
    /// # Errors
    /// [`SourceError::Refused`] when the source cannot serve from there (the sidecar is told why);
    /// any other error stops the server.
    fn start(&mut self, start: Start) -> Result<(), SourceError>;

    /// The next notification, without blocking.
    ///
    /// # Errors
    /// [`SourceError::Refused`] when the stream cannot go on from where the sidecar started it (the
    /// session is refused and the source re-started on the next `hello`); any other error stops the
    /// server.
    fn poll_next(&mut self) -> Result<Next, SourceError>;

    /// The sidecar durably committed the notification described by `ack`.
    ///
    /// # Errors
    /// A failure that should stop the server.
    fn acked(&mut self, ack: &Acked) -> Result<(), SourceError>;

    /// The newest block number the node has, if known: announced in `welcome` and in every heartbeat, so
    /// that a sidecar measures its lag against the node rather than against the newest notification it got
    /// (they differ while Reth backfills the sidecar from its head).
    fn node_head(&self) -> Option<u64> {
        None
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// ZeroMQ endpoint to bind, e.g. `tcp://127.0.0.1:5555` or `ipc:///tmp/monmouth.sock`.
    pub endpoint: String,
    /// EIP-155 chain id announced in `welcome`.
    pub chain_id: u64,
    /// Node name and version announced in `welcome`.
    pub node: String,
    /// Heartbeat interval of both sides.
    pub heartbeat: Duration,
    /// Largest frame accepted or sent (bytes).
    pub max_frame_bytes: usize,
    /// End [`Server::run`] once the source is finished and every notification is acked.
    pub exit_when_drained: bool,
    /// Test aid: before every `n`-th new notification, send a garbage frame (0 = never).
    pub garbage_every: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "tcp://127.0.0.1:5555".to_owned(),
            chain_id: 1,
            node: format!("monmouth-bridge/{}", env!("CARGO_PKG_VERSION")),
            heartbeat: Duration::from_secs(1),
            max_frame_bytes: MAX_FRAME_BYTES,
            exit_when_drained: false,
            garbage_every: 0,
        }
    }
}

/// Counters, for logs and the replay binary's summary.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Distinct notifications sent at least once.
    pub sent: u64,
    /// Re-sends (after a new `hello`).
    pub resent: u64,
    /// Notifications acknowledged.
    pub acked: u64,
    /// Payload bytes of distinct notifications sent.
    pub bytes_sent: u64,
    /// Sessions opened (valid `hello`s).
    pub sessions: u64,
    /// Sessions lost to heartbeat timeout or an unreachable peer.
    pub sessions_lost: u64,
    /// `error` messages received from sidecars.
    pub errors_received: u64,
    /// Starts or sessions the source refused (each answered with `error` code `refused`).
    pub refusals: u64,
    /// Bad frames received (each answered with `error`).
    pub bad_frames: u64,
    /// Garbage frames sent (test aid).
    pub garbage_sent: u64,
    /// Time from the last send of a notification to its ack (microseconds), capped at 1,000,000
    /// samples.
    pub ack_latency_us: Vec<u64>,
    /// First notification sent.
    pub first_send: Option<Instant>,
    /// Last ack received.
    pub last_ack: Option<Instant>,
}

/// How [`Server::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop flag was set.
    Stopped,
    /// `exit_when_drained` and everything was acked.
    Drained,
}

/// Longest heartbeat interval accepted (keeps every deadline computation far from overflow).
const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// How often the server looks for history answers while requests are being read.
const HISTORY_POLL: Duration = Duration::from_millis(2);
/// Longest a source's [`Next::Pending`] hint is honoured before asking again.
const MAX_RETRY: Duration = Duration::from_secs(1);

struct Pending {
    seq: u64,
    frame: Vec<u8>,
    kind: NotificationKind,
    committed_tip: Option<BlockRef>,
    resulting_head: Option<BlockRef>,
    last_sent: Option<Instant>,
}

struct Session {
    identity: Vec<u8>,
    window: u64,
    /// Next seq to send to this session.
    next_send: u64,
    last_heard: Instant,
    last_beat: Instant,
}

/// The session server. Owns one ROUTER socket.
pub struct Server {
    cfg: ServerConfig,
    socket: zmq::Socket,
    _ctx: zmq::Context,
    endpoint: String,
    session: Option<Session>,
    buffer: VecDeque<Pending>,
    /// Seq to assign to the next notification pulled from the source.
    next_seq: u64,
    /// Highest acknowledged seq (0 = none).
    acked: u64,
    /// Window of the last session, bounding the buffer while no session is connected.
    window_limit: u64,
    started: bool,
    /// Where a `hello` must say the sidecar is to continue the stream (see the module doc).
    resume_point: Start,
    source_done: bool,
    retry_at: Option<Instant>,
    epoch: u64,
    stats: Stats,
    history: Option<crate::history::HistoryService>,
}

fn zerr(op: impl Into<String>) -> impl FnOnce(zmq::Error) -> BridgeError {
    let op = op.into();
    move |source| BridgeError::Zmq { op, source }
}

impl Server {
    /// Create the ROUTER socket and bind it.
    ///
    /// # Errors
    /// [`BridgeError::Config`] for a zero heartbeat, [`BridgeError::Zmq`] when binding fails.
    pub fn bind(cfg: ServerConfig) -> Result<Self, BridgeError> {
        if cfg.heartbeat.is_zero() || cfg.heartbeat > MAX_HEARTBEAT {
            return Err(BridgeError::Config(format!(
                "heartbeat interval must be between 1 ms and {} s",
                MAX_HEARTBEAT.as_secs()
            )));
        }
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::ROUTER).map_err(zerr("create ROUTER socket"))?;
        socket.set_router_mandatory(true).map_err(zerr("set ROUTER_MANDATORY"))?;
        socket.set_linger(0).map_err(zerr("set LINGER"))?;
        socket.set_sndhwm(0).map_err(zerr("set SNDHWM"))?;
        let max = i64::try_from(cfg.max_frame_bytes).unwrap_or(i64::MAX).saturating_add(1024);
        socket.set_maxmsgsize(max).map_err(zerr("set MAXMSGSIZE"))?;
        socket.bind(&cfg.endpoint).map_err(zerr(format!("bind {}", cfg.endpoint)))?;
        let endpoint = match socket.get_last_endpoint() {
            Ok(Ok(s)) => s,
            _ => cfg.endpoint.clone(),
        };
        info!(endpoint = %endpoint, "bridge listening");
        Ok(Self {
            cfg,
            socket,
            _ctx: ctx,
            endpoint,
            session: None,
            buffer: VecDeque::new(),
            next_seq: 1,
            acked: 0,
            window_limit: 1,
            started: false,
            resume_point: Start::default(),
            source_done: false,
            retry_at: None,
            epoch: random_epoch(),
            stats: Stats::default(),
            history: None,
        })
    }

    /// The bound endpoint (with the actual port when bound to `:*` or `:0`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// This run's epoch (announced in `welcome`).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Highest acknowledged sequence number (0 = none).
    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// Notifications buffered and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.buffer.len()
    }

    /// Whether a sidecar session is live.
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Serve until `stop` returns true or, with `exit_when_drained`, until the source is finished
    /// and everything is acknowledged.
    ///
    /// # Errors
    /// Source failures, socket failures other than a vanished peer, an unencodable notification.
    pub fn run<S: NotificationSource>(
        &mut self,
        source: &mut S,
        mut stop: impl FnMut() -> bool,
    ) -> Result<RunEnd, BridgeError> {
        loop {
            if stop() {
                return Ok(RunEnd::Stopped);
            }
            if let Some(end) = self.step(source, Duration::from_millis(50))? {
                return Ok(end);
            }
        }
    }

    /// One loop iteration, waiting on the socket at most `max_wait`.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn step<S: NotificationSource>(
        &mut self,
        source: &mut S,
        max_wait: Duration,
    ) -> Result<Option<RunEnd>, BridgeError> {
        let now = Instant::now();
        let wait = self.wait_time(now, max_wait);
        let ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let ready = match self.socket.poll(zmq::POLLIN, ms) {
            Ok(n) => n,
            // A signal (e.g. SIGTERM, whose handler sets the stop flag) interrupted the wait.
            Err(zmq::Error::EINTR) => return Ok(None),
            Err(e) => return Err(BridgeError::Zmq { op: "poll".to_owned(), source: e }),
        };
        if ready > 0 {
            self.drain_incoming(source)?;
        }
        self.pull(source)?;
        self.send_pending()?;
        self.send_history_answers()?;
        self.housekeeping(source)?;
        if self.cfg.exit_when_drained && self.source_done && self.buffer.is_empty() {
            info!(acked = self.acked, "source finished and every notification acknowledged");
            return Ok(Some(RunEnd::Drained));
        }
        Ok(None)
    }

    fn wait_time(&self, now: Instant, max_wait: Duration) -> Duration {
        if self.can_send() {
            return Duration::ZERO;
        }
        let mut wait = max_wait;
        if self.can_pull() {
            match self.retry_at {
                Some(at) => wait = wait.min(at.saturating_duration_since(now)),
                None => return Duration::ZERO,
            }
        }
        if let Some(s) = &self.session {
            wait = wait.min((s.last_beat + self.cfg.heartbeat).saturating_duration_since(now));
        }
        if self.history.as_ref().is_some_and(crate::history::HistoryService::busy) {
            wait = wait.min(HISTORY_POLL);
        }
        wait
    }

    // ------------------------------------------------------------------ incoming

    fn drain_incoming<S: NotificationSource>(&mut self, source: &mut S) -> Result<(), BridgeError> {
        // Bounded so that a flood of frames cannot starve sending.
        for _ in 0..4096 {
            let parts = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(p) => p,
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(BridgeError::Zmq { op: "recv".to_owned(), source: e }),
            };
            let mut parts = parts.into_iter();
            let Some(identity) = parts.next() else { continue };
            let Some(frame) = parts.next() else {
                self.bad_frame(&identity, ErrorCode::Malformed, "message has no payload frame".to_owned())?;
                continue;
            };
            if parts.next().is_some() {
                self.bad_frame(&identity, ErrorCode::Malformed, "message has more than one payload frame".to_owned())?;
                continue;
            }
            match decode(&frame, self.cfg.max_frame_bytes) {
                Ok(msg) => self.handle(&identity, msg, source)?,
                Err(e) => self.bad_frame(&identity, e.code(), e.to_string())?,
            }
        }
        Ok(())
    }

    fn bad_frame(&mut self, identity: &[u8], code: ErrorCode, message: String) -> Result<(), BridgeError> {
        self.stats.bad_frames += 1;
        warn!(peer = %crate::types::hex_string(identity), %code, %message, "refused a frame from a sidecar");
        self.touch(identity);
        self.send_error(identity, code, message)
    }

    fn handle<S: NotificationSource>(&mut self, identity: &[u8], msg: Message, source: &mut S) -> Result<(), BridgeError> {
        match msg {
            Message::Hello(h) => self.on_hello(identity, h, source),
            Message::Ack(a) => {
                if !self.is_session(identity) {
                    return self.send_error(identity, ErrorCode::Unexpected, "no session: send hello first".to_owned());
                }
                self.touch(identity);
                if !self.was_sent(a.seq) {
                    let msg = format!("ack for seq {} which was not sent", a.seq);
                    return self.bad_frame(identity, ErrorCode::Unexpected, msg);
                }
                self.on_ack(a.seq, a.head, source)?;
                if let Some(s) = self.session.as_mut() {
                    s.next_send = s.next_send.max(self.acked + 1);
                }
                Ok(())
            }
            Message::Heartbeat(_) => {
                if !self.is_session(identity) {
                    return self.send_error(identity, ErrorCode::Unexpected, "no session: send hello first".to_owned());
                }
                self.touch(identity);
                Ok(())
            }
            Message::Error(e) => {
                self.stats.errors_received += 1;
                self.touch(identity);
                warn!(code = %e.code, message = %e.message, "sidecar reported an error");
                Ok(())
            }
            Message::History(req) => self.on_history(identity, req),
            Message::Welcome(_) | Message::Notification(_) | Message::HistoryBlocks(_) => {
                let text = format!("a sidecar may not send {:?}", msg.type_name());
                self.bad_frame(identity, ErrorCode::Unexpected, text)
            }
        }
    }

    fn send_error(&mut self, identity: &[u8], code: ErrorCode, message: String) -> Result<(), BridgeError> {
        let frame = encode(&Message::Error(ErrorMsg::new(code, message)))?;
        self.send_to(identity, &frame).map(|_| ())
    }

    /// Send one payload to a peer. `Ok(false)` when the peer is gone or not writable (the session,
    /// if it was this peer, is dropped when gone).
    fn send_to(&mut self, identity: &[u8], frame: &[u8]) -> Result<bool, BridgeError> {
        let result = send_raw(&self.socket, identity, frame);
        self.sent_or_gone(identity, result)
    }

    fn sent_or_gone(&mut self, identity: &[u8], result: Result<(), zmq::Error>) -> Result<bool, BridgeError> {
        match result {
            Ok(()) => Ok(true),
            Err(zmq::Error::EHOSTUNREACH) => {
                if self.is_session(identity) {
                    warn!("sidecar unreachable; session lost");
                    self.session = None;
                    self.stats.sessions_lost += 1;
                }
                Ok(false)
            }
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(false),
            Err(e) => Err(BridgeError::Zmq { op: "send".to_owned(), source: e }),
        }
    }
}

fn send_raw(socket: &zmq::Socket, identity: &[u8], frame: &[u8]) -> Result<(), zmq::Error> {
    socket.send(identity, zmq::SNDMORE | zmq::DONTWAIT)?;
    socket.send(frame, zmq::DONTWAIT)
}

/// A frame that is not a valid message, cycling through the kinds of damage a sidecar must refuse.
fn garbage_frame(seq: u64, real: &[u8]) -> Vec<u8> {
    match seq % 4 {
        // Never-used msgpack marker.
        0 => vec![0xc1, 0xc1, 0xc1],
        // A truncated copy of the real notification.
        1 => real[..real.len() / 2].to_vec(),
        // A map with an unknown type.
        2 => {
            let mut v = vec![0x82, 0xa4];
            v.extend(b"type");
            v.push(0xa5);
            v.extend(b"bogus");
            v.push(0xa3);
            v.extend(b"seq");
            v.push(0x00);
            v
        }
        // A notification missing everything but its type.
        _ => {
            let mut v = vec![0x81, 0xa4];
            v.extend(b"type");
            v.push(0xac);
            v.extend(b"notification");
            v
        }
    }
}

/// A random u64 for `welcome.epoch` (std's per-process random hash keys, mixed with the clock).
fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    h.finish()
}

/// Percentile (0–100) of unsorted samples, by nearest rank; `None` when empty.
pub fn percentile(samples: &[u64], pct: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}
