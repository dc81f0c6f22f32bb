//! The history service: answers a sidecar's `history` requests (the canonical blocks of a range, for a plugin
//! that joined late) beside the notification stream, on its own thread.
//!
//! Invariants:
//!
//! 1. **The live stream never waits for history.** Blocks are read and encoded on the service's thread; the
//!    server only hands requests over and sends finished frames, so a slow read of old blocks delays no
//!    notification, and history answers take no `seq` (they are never acknowledged, and never drive
//!    `FinishedHeight`).
//! 2. **Bounded.** At most [`MAX_OUTSTANDING`] requests wait at a time (more are answered with an error at once),
//!    an answer holds at most [`HistoryReader::max_blocks`] blocks, and one whose frame would exceed the frame
//!    limit is cut in half until it fits: fewer blocks than asked means "ask again for the rest", which is the
//!    flow control (the sidecar asks for the next batch when it has applied one).
//! 3. **Errors name the block.** Whatever the reader cannot serve (beyond the node's head, pruned, not on the
//!    sidecar's chain) comes back as a `history_blocks` with `error`, a sentence naming the block number; the
//!    session goes on.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};

use tracing::warn;

use crate::message::{encode, HistoryBlocks, HistoryRequest, Message};
use crate::types::Block;

/// Most `history` requests queued at once (per bridge); one more is refused with an error answer.
pub const MAX_OUTSTANDING: usize = 4;

/// Where history comes from: the node's database (Reth's provider) in production.
pub trait HistoryReader: Send + 'static {
    /// Most blocks in one answer (announced in `welcome.history`).
    fn max_blocks(&self) -> u64;

    /// The canonical blocks `req.from..=last` with senders and receipts, oldest first, where `last` is
    /// `req.to` capped at `req.from + max_blocks() - 1` (the caller has checked `from <= to`).
    ///
    /// # Errors
    /// A sentence naming the block number that cannot be served: beyond the node's head, pruned (no block
    /// or no receipts), or `req.head` not on the node's chain.
    fn read(&self, req: &HistoryRequest, last: u64) -> Result<Vec<Block>, String>;
}

/// An encoded answer for a peer (a ZeroMQ identity).
#[derive(Debug)]
pub struct Answer {
    /// The requesting peer.
    pub peer: Vec<u8>,
    /// The request's `id`.
    pub id: u64,
    /// The encoded `history_blocks` frame.
    pub frame: Vec<u8>,
}

struct Job {
    peer: Vec<u8>,
    req: HistoryRequest,
}

/// The service: a worker thread reading history, with a bounded queue in and a queue of answers out.
pub struct HistoryService {
    jobs: SyncSender<Job>,
    answers: Receiver<Answer>,
    max_blocks: u64,
    outstanding: usize,
}

impl HistoryService {
    /// Start the worker thread over `reader`; answers are kept below `max_frame_bytes`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn<R: HistoryReader>(reader: R, max_frame_bytes: usize) -> std::io::Result<Self> {
        let (jobs, rx) = sync_channel::<Job>(MAX_OUTSTANDING);
        let (tx, answers) = sync_channel::<Answer>(MAX_OUTSTANDING);
        let max_blocks = reader.max_blocks().max(1);
        std::thread::Builder::new().name("monmouth-history".to_owned()).spawn(move || {
            while let Ok(job) = rx.recv() {
                let frame = answer(&reader, &job.req, max_frame_bytes);
                if tx.send(Answer { peer: job.peer, id: job.req.id, frame }).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { jobs, answers, max_blocks, outstanding: 0 })
    }

    /// Most blocks per answer.
    pub fn max_blocks(&self) -> u64 {
        self.max_blocks
    }

    /// Whether requests are being read (the server then polls for answers often).
    pub fn busy(&self) -> bool {
        self.outstanding > 0
    }

    /// Queue `req` from `peer`.
    ///
    /// # Errors
    /// The answer to send at once, encoded, when the queue is full or the worker is gone.
    pub fn submit(&mut self, peer: &[u8], req: HistoryRequest) -> Result<(), Vec<u8>> {
        let id = req.id;
        match self.jobs.try_send(Job { peer: peer.to_vec(), req }) {
            Ok(()) => {
                self.outstanding += 1;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(error_frame(
                id,
                format!("history request {id}: {MAX_OUTSTANDING} requests are already being read; ask again when one is answered"),
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(error_frame(id, format!("history request {id}: the bridge's history reader stopped")))
            }
        }
    }

    /// The next finished answer, if any.
    pub fn try_answer(&mut self) -> Option<Answer> {
        match self.answers.try_recv() {
            Ok(a) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                Some(a)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }
}

/// An encoded `history_blocks` with `error`.
pub fn error_frame(id: u64, error: String) -> Vec<u8> {
    let msg = Message::HistoryBlocks(HistoryBlocks { id, blocks: None, error: Some(error) });
    // A message of a number and a string always encodes.
    encode(&msg).unwrap_or_default()
}

/// Read and encode the answer to `req`, halving the batch until its frame fits `max_frame_bytes`.
fn answer<R: HistoryReader>(reader: &R, req: &HistoryRequest, max_frame_bytes: usize) -> Vec<u8> {
    let id = req.id;
    if req.from > req.to {
        return error_frame(id, format!("history request {id}: from block {} is after to block {}", req.from, req.to));
    }
    if let Some(head) = req.head.filter(|h| req.to > h.number) {
        return error_frame(
            id,
            format!("history request {id}: to block {} is beyond the sidecar's head {head}", req.to),
        );
    }
    let last = req.to.min(req.from.saturating_add(reader.max_blocks().max(1) - 1));
    let mut blocks = match reader.read(req, last) {
        Ok(blocks) => blocks,
        Err(e) => return error_frame(id, format!("history request {id}: {e}")),
    };
    loop {
        let msg = Message::HistoryBlocks(HistoryBlocks { id, blocks: Some(blocks), error: None });
        let frame = match encode(&msg) {
            Ok(f) => f,
            Err(e) => return error_frame(id, format!("history request {id}: {e}")),
        };
        let Message::HistoryBlocks(HistoryBlocks { blocks: Some(b), .. }) = msg else { return frame };
        blocks = b;
        if frame.len() <= max_frame_bytes {
            return frame;
        }
        if blocks.len() <= 1 {
            let n = blocks.first().map_or(req.from, |b| b.number);
            warn!(block = n, size = frame.len(), "a history block exceeds the frame limit");
            return error_frame(
                id,
                format!("history request {id}: block {n} alone is {} bytes, over the frame limit of {max_frame_bytes} bytes", frame.len()),
            );
        }
        blocks.truncate(blocks.len() / 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode, MAX_FRAME_BYTES};
    use crate::sample::sample_chain;
    use crate::types::BlockRef;

    /// Blocks 1..=head of a sample chain, with 3 transactions each.
    struct Chain {
        head: u64,
    }

    impl HistoryReader for Chain {
        fn max_blocks(&self) -> u64 {
            8
        }
        fn read(&self, req: &HistoryRequest, last: u64) -> Result<Vec<Block>, String> {
            if last > self.head {
                return Err(format!("block {last} is beyond the node's head, block {}", self.head));
            }
            Ok(sample_chain(req.from, last - req.from + 1, 3, 0))
        }
    }

    fn blocks(frame: &[u8]) -> Result<Vec<Block>, String> {
        match decode(frame, MAX_FRAME_BYTES) {
            Ok(Message::HistoryBlocks(HistoryBlocks { blocks: Some(b), error: None, .. })) => Ok(b),
            Ok(Message::HistoryBlocks(HistoryBlocks { error: Some(e), .. })) => Err(e),
            other => panic!("not a history answer: {other:?}"),
        }
    }

    fn req(from: u64, to: u64) -> HistoryRequest {
        HistoryRequest { id: 7, from, to, head: None }
    }

    #[test]
    fn batches_are_bounded_by_count_and_by_frame_size() {
        let chain = Chain { head: 100 };
        let got = blocks(&answer(&chain, &req(3, 50), MAX_FRAME_BYTES)).expect("blocks");
        assert_eq!(got.iter().map(|b| b.number).collect::<Vec<_>>(), (3..=10).collect::<Vec<_>>());
        let one = blocks(&answer(&chain, &req(3, 3), MAX_FRAME_BYTES)).expect("blocks");
        let limit = encode(&Message::HistoryBlocks(HistoryBlocks { id: 7, blocks: Some(one.clone()), error: None }))
            .expect("encode")
            .len();
        // Room for two blocks and a half: 8 -> 4 -> 2.
        let got = blocks(&answer(&chain, &req(3, 50), limit * 5 / 2)).expect("blocks");
        assert_eq!(got.len(), 2);
        let e = blocks(&answer(&chain, &req(3, 50), limit / 2)).expect_err("too large");
        assert!(e.contains("block 3 alone"), "{e}");
    }

    #[test]
    fn bad_ranges_are_answered_with_an_error_naming_the_block() {
        let chain = Chain { head: 20 };
        let e = blocks(&answer(&chain, &req(9, 4), MAX_FRAME_BYTES)).expect_err("reversed");
        assert!(e.contains("from block 9 is after to block 4"), "{e}");
        let e = blocks(&answer(&chain, &req(18, 30), MAX_FRAME_BYTES)).expect_err("beyond");
        assert!(e.contains("block 25 is beyond the node's head, block 20"), "{e}");
        let head = BlockRef { number: 5, hash: crate::types::B256::ZERO };
        let r = HistoryRequest { id: 7, from: 1, to: 6, head: Some(head) };
        let e = blocks(&answer(&chain, &r, MAX_FRAME_BYTES)).expect_err("past head");
        assert!(e.contains("to block 6 is beyond the sidecar's head #5"), "{e}");
    }

    #[test]
    fn the_service_answers_on_its_thread_and_refuses_a_full_queue() {
        struct Slow(std::sync::mpsc::Receiver<()>);
        impl HistoryReader for Slow {
            fn max_blocks(&self) -> u64 {
                4
            }
            fn read(&self, req: &HistoryRequest, last: u64) -> Result<Vec<Block>, String> {
                let _ = self.0.recv();
                Ok(sample_chain(req.from, last - req.from + 1, 1, 0))
            }
        }
        let (go, wait) = std::sync::mpsc::channel();
        let mut svc = HistoryService::spawn(Slow(wait), MAX_FRAME_BYTES).expect("spawn");
        assert_eq!(svc.max_blocks(), 4);
        // One is taken by the worker (blocked), MAX_OUTSTANDING wait in the queue, the next is refused.
        let mut accepted = 0;
        let mut refused = None;
        for i in 0..(MAX_OUTSTANDING as u64 + 3) {
            match svc.submit(b"peer", HistoryRequest { id: i, from: 1, to: 9, head: None }) {
                Ok(()) => accepted += 1,
                Err(frame) => {
                    refused = Some(blocks(&frame).expect_err("refused"));
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(refused.expect("a full queue refuses").contains("already being read"));
        assert!(svc.busy());
        for _ in 0..accepted {
            go.send(()).expect("go");
        }
        let mut ids = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ids.len() < accepted && std::time::Instant::now() < deadline {
            match svc.try_answer() {
                Some(a) => {
                    assert_eq!(a.peer, b"peer");
                    assert_eq!(blocks(&a.frame).expect("blocks").len(), 4);
                    ids.push(a.id);
                }
                None => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        assert_eq!(ids, (0..accepted as u64).collect::<Vec<_>>());
        assert!(!svc.busy());
    }
}
