//! Session server tests over real ZeroMQ sockets (loopback TCP), with a DEALER client in the test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use monmouth_wire::sample::sample_chain;
use monmouth_wire::{
    decode, encode, Ack, Acked, Block, BlockRef, ChannelSource, Hello, HistoryBlocks, HistoryReader, HistoryRequest,
    HistoryService, Message, Next, Notification, NotificationSource, RunEnd, Server, ServerConfig, SourceError, Start,
    MAX_FRAME_BYTES, NODE_HEAD_UNKNOWN,
};

#[derive(Default)]
struct Log {
    start: Option<Option<BlockRef>>,
    acks: Vec<Acked>,
}

struct VecSource {
    items: std::vec::IntoIter<Notification>,
    log: Arc<Mutex<Log>>,
}

impl NotificationSource for VecSource {
    fn start(&mut self, start: Start) -> Result<(), SourceError> {
        self.log.lock().unwrap().start = Some(start.head);
        Ok(())
    }
    fn poll_next(&mut self) -> Result<Next, SourceError> {
        Ok(self.items.next().map_or(Next::End, Next::Ready))
    }
    fn acked(&mut self, ack: &Acked) -> Result<(), SourceError> {
        self.log.lock().unwrap().acks.push(ack.clone());
        Ok(())
    }
}

fn commits(n: u64) -> Vec<Notification> {
    sample_chain(1, n, 2, 0).into_iter().map(|b| Notification::committed(vec![b])).collect()
}

struct Bridge {
    endpoint: String,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<RunEnd>>,
    log: Arc<Mutex<Log>>,
}

impl Bridge {
    fn start(items: Vec<Notification>, heartbeat_ms: u64, exit_when_drained: bool) -> Self {
        Self::start_with(items, heartbeat_ms, exit_when_drained, None)
    }

    fn start_with(items: Vec<Notification>, heartbeat_ms: u64, exit_when_drained: bool, history: Option<HistoryService>) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        let handle = thread::spawn(move || {
            let cfg = ServerConfig {
                endpoint: "tcp://127.0.0.1:*".into(),
                heartbeat: Duration::from_millis(heartbeat_ms),
                exit_when_drained,
                ..ServerConfig::default()
            };
            let mut server = Server::bind(cfg).unwrap();
            if let Some(h) = history {
                server = server.with_history(h);
            }
            tx.send(server.endpoint().to_owned()).unwrap();
            let mut src = VecSource { items: items.into_iter(), log: log2 };
            server.run(&mut src, || stop2.load(Ordering::Relaxed)).unwrap()
        });
        let endpoint = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self { endpoint, stop, handle: Some(handle), log }
    }

    fn join(mut self) -> RunEnd {
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Client {
    _ctx: zmq::Context,
    sock: zmq::Socket,
}

impl Client {
    fn connect(endpoint: &str) -> Self {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::DEALER).unwrap();
        sock.set_linger(0).unwrap();
        sock.connect(endpoint).unwrap();
        Self { _ctx: ctx, sock }
    }
    fn send(&self, m: &Message) {
        self.sock.send(encode(m).unwrap(), 0).unwrap();
    }
    fn send_raw(&self, b: &[u8]) {
        self.sock.send(b, 0).unwrap();
    }
    fn hello(&self, head: Option<BlockRef>, window: u64) {
        self.hello_from(head, None, window);
    }
    fn hello_from(&self, head: Option<BlockRef>, start_block: Option<u64>, window: u64) {
        self.send(&Message::Hello(Hello { version: 1, head, window, client: "test".into(), start_block }));
    }
    /// Next message that is not a heartbeat, or None after `ms`.
    fn recv(&self, ms: i64) -> Option<Message> {
        let deadline = Instant::now() + Duration::from_millis(ms as u64);
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_millis() as i64;
            if self.sock.poll(zmq::POLLIN, left).unwrap() == 0 {
                return None;
            }
            let frame = self.sock.recv_bytes(0).unwrap();
            let m = decode(&frame, MAX_FRAME_BYTES).unwrap();
            if !matches!(m, Message::Heartbeat(_)) {
                return Some(m);
            }
        }
    }
    fn expect_seq(&self, ms: i64) -> (u64, Notification) {
        match self.recv(ms) {
            Some(Message::Notification(n)) => (n.seq, n.notification),
            other => panic!("expected a notification, got {other:?}"),
        }
    }
    fn ack(&self, seq: u64, n: &Notification) {
        self.send(&Message::Ack(Ack { seq, head: n.resulting_head() }));
    }
}

#[test]
fn window_limits_in_flight_and_acks_release_more() {
    let items = commits(5);
    let bridge = Bridge::start(items.clone(), 1000, true);
    let c = Client::connect(&bridge.endpoint);
    c.hello(None, 2);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(w)) if w.version == 1 && w.chain_id == 1));
    let (s1, n1) = c.expect_seq(2000);
    let (s2, _) = c.expect_seq(2000);
    assert_eq!((s1, s2), (1, 2));
    assert_eq!(n1, items[0]);
    assert!(c.recv(200).is_none(), "window of 2 exceeded");
    c.ack(1, &items[0]);
    assert_eq!(c.expect_seq(2000).0, 3);
    assert!(c.recv(200).is_none());
    // Cumulative ack of 2 and 3.
    c.ack(3, &items[2]);
    assert_eq!(c.expect_seq(2000).0, 4);
    assert_eq!(c.expect_seq(2000).0, 5);
    c.ack(5, &items[4]);
    let log = Arc::clone(&bridge.log);
    assert_eq!(bridge.join(), RunEnd::Drained);
    let log = log.lock().unwrap();
    assert_eq!(log.start, Some(None));
    let seqs: Vec<u64> = log.acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![1, 3, 5]);
    assert_eq!(log.acks[2].committed_tip, items[4].committed_tip());
}

#[test]
fn reconnect_resends_every_unacked_notification() {
    let items = commits(4);
    let bridge = Bridge::start(items.clone(), 1000, false);
    let c = Client::connect(&bridge.endpoint);
    let head = BlockRef { number: 0, hash: items[0].new.as_ref().unwrap()[0].parent_hash };
    c.hello(Some(head), 64);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    for want in 1..=4 {
        assert_eq!(c.expect_seq(2000).0, want);
    }
    c.ack(2, &items[1]);
    // A new sidecar process (new identity) takes over; the old one is told it was superseded.
    let c2 = Client::connect(&bridge.endpoint);
    c2.hello(Some(items[1].resulting_head().unwrap()), 1);
    assert!(matches!(c2.recv(2000), Some(Message::Welcome(_))));
    assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == "unexpected"));
    let (seq, n) = c2.expect_seq(2000);
    assert_eq!((seq, &n), (3, &items[2]));
    assert!(c2.recv(200).is_none(), "window of 1 exceeded");
    c2.ack(3, &items[2]);
    assert_eq!(c2.expect_seq(2000).0, 4);
    // The old identity is no longer a session.
    c.ack(4, &items[3]);
    assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == "unexpected"));
    assert_eq!(bridge.log.lock().unwrap().start, Some(Some(head)), "start is called once, with the first head");
}

#[test]
fn refuses_bad_input_and_keeps_the_session() {
    let items = commits(2);
    let bridge = Bridge::start(items.clone(), 1000, false);
    let c = Client::connect(&bridge.endpoint);
    // Newer version refused.
    c.send(&Message::Hello(Hello { version: 2, head: None, window: 8, client: "future".into(), start_block: None }));
    assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == "unsupported_version"));
    // No session yet.
    c.send(&Message::Ack(Ack { seq: 1, head: items[0].resulting_head() }));
    assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == "unexpected"));
    // Window out of range.
    c.hello(None, 0);
    assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == "malformed"));
    c.hello(None, 1);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    assert_eq!(c.expect_seq(2000).0, 1);
    for (garbage, code) in [
        (&[0xc1u8, 0x00][..], "malformed"),
        (&[0x81, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'f', b'o', b'o'][..], "unknown_type"),
        (&[0x82, 0xa4][..], "malformed"),
    ] {
        c.send_raw(garbage);
        assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == code), "{garbage:?}");
    }
    // Ack of something never sent.
    c.send(&Message::Ack(Ack { seq: 2, head: items[1].resulting_head() }));
    assert!(matches!(c.recv(2000), Some(Message::Error(e)) if e.code == "unexpected"));
    // The session is intact.
    c.ack(1, &items[0]);
    assert_eq!(c.expect_seq(2000).0, 2);
}

#[test]
fn silent_sidecar_loses_its_session_and_gets_everything_again() {
    let items = commits(2);
    let bridge = Bridge::start(items.clone(), 100, false);
    let c = Client::connect(&bridge.endpoint);
    c.hello(None, 4);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    assert_eq!(c.expect_seq(2000).0, 1);
    assert_eq!(c.expect_seq(2000).0, 2);
    // Heartbeats arrive while we stay silent, then stop after 3 intervals.
    thread::sleep(Duration::from_millis(600));
    c.sock.set_rcvtimeo(0).unwrap();
    while c.sock.recv_bytes(zmq::DONTWAIT).is_ok() {}
    assert!(c.sock.poll(zmq::POLLIN, 300).unwrap() == 0, "bridge still talks to a lost session");
    c.hello(None, 4);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    assert_eq!(c.expect_seq(2000).0, 1);
    assert_eq!(c.expect_seq(2000).0, 2);
}

#[test]
fn channel_source_forwards_start_and_acks() {
    let (tx, rx) = mpsc::sync_channel::<Notification>(1);
    let (head_tx, head_rx) = mpsc::channel();
    let (ack_tx, ack_rx) = mpsc::channel();
    let mut src = ChannelSource::new(
        rx,
        Box::new(move |h| head_tx.send(h).map_err(|e| SourceError::Other(e.to_string()))),
        Box::new(move |a| ack_tx.send(a.clone()).map_err(|e| SourceError::Other(e.to_string()))),
        Duration::from_millis(1),
    );
    assert!(matches!(src.poll_next(), Ok(Next::Pending(_))));
    let items = commits(1);
    tx.send(items[0].clone()).unwrap();
    assert!(matches!(src.poll_next(), Ok(Next::Ready(n)) if n == items[0]));
    src.start(Start::default()).unwrap();
    assert_eq!(head_rx.recv().unwrap(), Start::default());
    let head = items[0].resulting_head().unwrap();
    let ack = Acked { seq: 1, kind: items[0].kind, committed_tip: Some(head), resulting_head: Some(head), sidecar_head: Some(head) };
    src.acked(&ack).unwrap();
    assert_eq!(ack_rx.recv().unwrap(), ack);
    // The node's head is announced only once the adapter knows it.
    assert_eq!(src.node_head(), None);
    let cell = Arc::new(AtomicU64::new(NODE_HEAD_UNKNOWN));
    let mut src = src.with_node_head(Arc::clone(&cell));
    assert_eq!(src.node_head(), None);
    cell.store(21_000_000, Ordering::Relaxed);
    assert_eq!(src.node_head(), Some(21_000_000));
    drop(tx);
    assert!(matches!(src.poll_next(), Err(SourceError::Closed(_))));
}

/// A source that refuses a start block above `newest` (as Reth refuses a start in the future) and,
/// once, refuses the session from its stream after `fail_after` notifications.
struct PickySource {
    newest: u64,
    items: Vec<Notification>,
    next: usize,
    fail_after: Option<usize>,
    starts: Arc<Mutex<Vec<Start>>>,
}

impl NotificationSource for PickySource {
    fn start(&mut self, start: Start) -> Result<(), SourceError> {
        self.starts.lock().unwrap().push(start);
        if let Some(n) = start.start_block.filter(|n| *n > self.newest) {
            return Err(SourceError::Refused(format!("start block {n} is in the future: the node's head is {}", self.newest)));
        }
        self.next = 0;
        Ok(())
    }
    fn poll_next(&mut self) -> Result<Next, SourceError> {
        if self.fail_after == Some(self.next) {
            self.fail_after = None;
            return Err(SourceError::Refused("the stream failed".into()));
        }
        let n = self.items.get(self.next).cloned();
        self.next += 1;
        Ok(n.map_or(Next::Pending(Duration::from_millis(5)), Next::Ready))
    }
    fn acked(&mut self, _: &Acked) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A server on a free loopback port serving a [`PickySource`] of 3 commits (the newest block it can start from is
/// 10) on its own thread: its endpoint, its stop flag, the starts it was given, and its thread, which returns how
/// the run ended and how many refusals it counted.
#[allow(clippy::type_complexity)]
fn picky_bridge(
    fail_after: Option<usize>,
) -> (String, Arc<AtomicBool>, Arc<Mutex<Vec<Start>>>, thread::JoinHandle<(RunEnd, u64)>) {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (starts2, stop2) = (Arc::clone(&starts), Arc::clone(&stop));
    let handle = thread::spawn(move || {
        let cfg = ServerConfig { endpoint: "tcp://127.0.0.1:*".into(), ..ServerConfig::default() };
        let mut server = Server::bind(cfg).unwrap();
        tx.send(server.endpoint().to_owned()).unwrap();
        let mut src = PickySource { newest: 10, items: commits(3), next: 0, fail_after, starts: starts2 };
        let end = server.run(&mut src, || stop2.load(Ordering::Relaxed));
        (end.unwrap(), server.stats().refusals)
    });
    (rx.recv_timeout(Duration::from_secs(5)).unwrap(), stop, starts, handle)
}

#[test]
fn refused_start_and_refused_stream_keep_the_server_running() {
    let (endpoint, stop, starts, handle) = picky_bridge(Some(2));
    let c = Client::connect(&endpoint);
    // A start in the future: refused with a sentence, no session, and the server goes on.
    c.hello_from(None, Some(11), 8);
    match c.recv(2000) {
        Some(Message::Error(e)) => {
            assert_eq!(e.code, "refused");
            assert!(e.message.contains("start block 11 is in the future"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A start the source accepts; the stream refuses the session after two notifications (the server
    // pulls before it sends, so they were buffered, never sent).
    c.hello_from(None, Some(1), 8);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    match c.recv(2000) {
        Some(Message::Error(e)) => assert_eq!((e.code.as_str(), e.message.as_str()), ("refused", "the stream failed")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The sidecar says hello again: the source is started again and serves with fresh seqs (the two
    // dropped ones are never sent, nor reported acknowledged).
    c.hello_from(None, Some(1), 8);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    let (seq, n) = c.expect_seq(2000);
    assert_eq!((seq, &n), (3, &commits(3)[0]));
    assert_eq!(c.expect_seq(2000).0, 4);
    stop.store(true, Ordering::Relaxed);
    let (end, refusals) = handle.join().unwrap();
    assert_eq!(end, RunEnd::Stopped);
    assert_eq!(refusals, 2);
    let starts = starts.lock().unwrap();
    assert_eq!(starts.iter().map(|s| s.start_block).collect::<Vec<_>>(), vec![Some(11), Some(1), Some(1)]);
}

#[test]
fn binding_an_endpoint_in_use_says_so() {
    let first = Server::bind(ServerConfig { endpoint: "tcp://127.0.0.1:*".into(), ..ServerConfig::default() }).unwrap();
    let err = Server::bind(ServerConfig { endpoint: first.endpoint().to_owned(), ..ServerConfig::default() })
        .err()
        .expect("the endpoint is taken");
    assert!(err.is_address_in_use(), "{err}");
    assert!(err.to_string().contains(first.endpoint()), "{err}");
    let bad = Server::bind(ServerConfig { endpoint: "nonsense://x".into(), ..ServerConfig::default() }).err().unwrap();
    assert!(!bad.is_address_in_use());
}

#[test]
fn a_hello_that_does_not_continue_the_stream_restarts_the_source() {
    let (endpoint, stop, starts, handle) = picky_bridge(None);
    let items = commits(3);
    let c = Client::connect(&endpoint);
    c.hello_from(None, Some(1), 8);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(_))));
    for want in 1..=3 {
        assert_eq!(c.expect_seq(2000).0, want);
    }
    c.ack(2, &items[1]);
    // The same database, restarted (a new identity) at the head it acknowledged: it continues the
    // stream, so the unacknowledged notification is re-sent and the source is not started again.
    let c2 = Client::connect(&endpoint);
    c2.hello(items[1].resulting_head(), 8);
    assert!(matches!(c2.recv(2000), Some(Message::Welcome(_))));
    assert_eq!(c2.expect_seq(2000), (3, items[2].clone()));
    // It committed seq 3 but the ack was lost: a hello at that head continues the stream too.
    let c3 = Client::connect(&endpoint);
    c3.hello(items[2].resulting_head(), 8);
    assert!(matches!(c3.recv(2000), Some(Message::Welcome(_))));
    assert_eq!(c3.expect_seq(2000).0, 3);
    // Another database (an older head, e.g. a restored backup): the source is started again from
    // it, and nothing of the old stream is sent (fresh seqs).
    let c4 = Client::connect(&endpoint);
    c4.hello(items[0].resulting_head(), 8);
    assert!(matches!(c4.recv(2000), Some(Message::Welcome(_))));
    assert_eq!(c4.expect_seq(2000), (4, items[0].clone()));
    // An emptied database: started again.
    let c5 = Client::connect(&endpoint);
    c5.hello(None, 8);
    assert!(matches!(c5.recv(2000), Some(Message::Welcome(_))));
    let (seq, n) = c5.expect_seq(2000);
    assert!(seq > 4 && n == items[0], "{seq} {n:?}");
    stop.store(true, Ordering::Relaxed);
    assert_eq!(handle.join().unwrap().0, RunEnd::Stopped);
    let starts = starts.lock().unwrap().clone();
    assert_eq!(
        starts,
        vec![
            Start { head: None, start_block: Some(1) },
            Start { head: items[0].resulting_head(), start_block: None },
            Start::default(),
        ]
    );
}

/// The sample chain's blocks 1..=`head`, read slowly (`delay`), as a node's database would serve them.
struct SampleHistory {
    head: u64,
    delay: Duration,
}

impl HistoryReader for SampleHistory {
    fn max_blocks(&self) -> u64 {
        8
    }
    fn read(&self, req: &HistoryRequest, last: u64) -> Result<Vec<Block>, String> {
        thread::sleep(self.delay);
        if last > self.head {
            return Err(format!("block {last} is beyond the node's head, block {}", self.head));
        }
        Ok(sample_chain(1, self.head, 2, 0).into_iter().filter(|b| (req.from..=last).contains(&b.number)).collect())
    }
}

#[test]
fn history_is_answered_beside_the_live_stream_which_it_never_holds_up() {
    let items = commits(30);
    let reader = SampleHistory { head: 30, delay: Duration::from_millis(400) };
    let bridge = Bridge::start_with(items.clone(), 1000, false, Some(HistoryService::spawn(reader, MAX_FRAME_BYTES).unwrap()));
    // Without a session: refused, naming the request.
    let stranger = Client::connect(&bridge.endpoint);
    stranger.send(&Message::History(HistoryRequest { id: 9, from: 1, to: 4, head: None }));
    assert!(matches!(stranger.recv(2000), Some(Message::Error(e)) if e.code == "unexpected" && e.message.contains("history request 9")));

    let c = Client::connect(&bridge.endpoint);
    c.hello(None, 1);
    assert!(matches!(c.recv(2000), Some(Message::Welcome(w)) if w.history == Some(8)));
    assert_eq!(c.expect_seq(2000).0, 1);
    let head = items[19].resulting_head();
    c.send(&Message::History(HistoryRequest { id: 1, from: 3, to: 20, head }));
    // The read takes 400 ms: meanwhile the stream goes on, in order, one notification per ack.
    let started = Instant::now();
    let mut seqs = Vec::new();
    let mut answer = None;
    for _ in 0..3 {
        c.ack(seqs.last().map_or(1, |s: &u64| *s), &items[usize::try_from(seqs.last().map_or(1, |s| *s)).unwrap() - 1]);
        match c.recv(2000) {
            Some(Message::Notification(n)) => seqs.push(n.seq),
            Some(Message::HistoryBlocks(h)) => answer = Some((h, started.elapsed())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, vec![2, 3, 4], "the live stream went on while history was read");
    assert!(answer.is_none(), "the answer came before the read finished");
    let answer = match c.recv(2000) {
        Some(Message::HistoryBlocks(h)) => h,
        Some(Message::Notification(_)) => panic!("no notification beyond the window of 1"),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(answer.id, 1);
    assert!(answer.error.is_none());
    let blocks = answer.blocks.unwrap();
    assert_eq!(blocks.iter().map(|b| b.number).collect::<Vec<_>>(), (3..=10).collect::<Vec<_>>(), "bounded to 8 blocks");
    assert_eq!(blocks[0], items[2].new.as_ref().unwrap()[0], "the blocks as the stream carries them");
    // Errors name the block; the session goes on.
    c.send(&Message::History(HistoryRequest { id: 2, from: 25, to: 40, head: None }));
    match c.recv(3000) {
        Some(Message::HistoryBlocks(HistoryBlocks { id: 2, blocks: None, error: Some(e) })) => {
            assert!(e.contains("block 32 is beyond the node's head, block 30"), "{e}");
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
    c.send(&Message::History(HistoryRequest { id: 3, from: 5, to: 12, head }));
    c.send(&Message::History(HistoryRequest { id: 4, from: 5, to: 25, head }));
    let mut errors = Vec::new();
    for _ in 0..2 {
        match c.recv(3000) {
            Some(Message::HistoryBlocks(h)) => errors.push((h.id, h.error)),
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    errors.sort();
    assert!(errors[0] == (3, None));
    assert!(errors[1].1.as_deref().unwrap().contains("to block 25 is beyond the sidecar's head #20"), "{errors:?}");
    c.ack(4, &items[3]);
    assert_eq!(c.expect_seq(2000).0, 5);
}
