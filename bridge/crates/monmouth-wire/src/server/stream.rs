//! The stream within a session: pulling from the source under the credit window, sending and
//! re-sending buffered notifications, cumulative acks (which alone drive `FinishedHeight`), and
//! heartbeats and silence.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::{garbage_frame, send_raw, Acked, Next, NotificationSource, Pending, Server, Start, MAX_RETRY};
use crate::error::{BridgeError, SourceError};
use crate::message::{encode, encode_notification, now_ms, Heartbeat, Message};
use crate::types::BlockRef;

impl Server {
    pub(super) fn can_pull(&self) -> bool {
        self.started && !self.source_done && (self.buffer.len() as u64) < self.window_limit
    }

    pub(super) fn can_send(&self) -> bool {
        match &self.session {
            Some(s) => s.next_send < self.next_seq && s.next_send.saturating_sub(self.acked + 1) < s.window,
            None => false,
        }
    }

    /// Whether `seq` was sent at least once (in any session) or is already acknowledged.
    pub(super) fn was_sent(&self, seq: u64) -> bool {
        if seq <= self.acked {
            return true;
        }
        let idx = usize::try_from(seq - self.acked - 1).unwrap_or(usize::MAX);
        self.buffer.get(idx).is_some_and(|p| p.last_sent.is_some())
    }

    pub(super) fn on_ack<S: NotificationSource>(&mut self, seq: u64, head: Option<BlockRef>, source: &mut S) -> Result<(), BridgeError> {
        if seq <= self.acked {
            debug!(seq, "duplicate ack ignored");
            return Ok(());
        }
        let now = Instant::now();
        let mut last = None;
        while let Some(front) = self.buffer.front() {
            if front.seq > seq {
                break;
            }
            let Some(p) = self.buffer.pop_front() else { break };
            if let Some(sent) = p.last_sent {
                if self.stats.ack_latency_us.len() < 1_000_000 {
                    let us = u64::try_from(now.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    debug!(seq = p.seq, latency_us = us, "acknowledged");
                    self.stats.ack_latency_us.push(us);
                }
            }
            self.stats.acked += 1;
            last = Some(p);
        }
        self.acked = seq;
        self.stats.last_ack = Some(now);
        if let Some(p) = &last {
            self.resume_point = Start { head: head.or(p.resulting_head), start_block: None };
        }
        if let Some(p) = last {
            source.acked(&Acked {
                seq: p.seq,
                kind: p.kind,
                committed_tip: p.committed_tip,
                resulting_head: p.resulting_head,
                sidecar_head: head,
            })?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ outgoing

    pub(super) fn pull<S: NotificationSource>(&mut self, source: &mut S) -> Result<(), BridgeError> {
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return Ok(());
            }
            self.retry_at = None;
        }
        while self.can_pull() {
            let next = match source.poll_next() {
                Ok(next) => next,
                Err(SourceError::Refused(text)) => return self.refuse_session(text),
                Err(e) => return Err(e.into()),
            };
            match next {
                Next::Ready(n) => {
                    let seq = self.next_seq;
                    let frame = encode_notification(seq, &n)?;
                    if frame.len() > self.cfg.max_frame_bytes {
                        return Err(BridgeError::Wire(crate::error::WireError::FrameTooLarge {
                            size: frame.len(),
                            limit: self.cfg.max_frame_bytes,
                        }));
                    }
                    self.buffer.push_back(Pending {
                        seq,
                        frame,
                        kind: n.kind,
                        committed_tip: n.committed_tip(),
                        resulting_head: n.resulting_head(),
                        last_sent: None,
                    });
                    self.next_seq += 1;
                }
                Next::Encoded(p) => {
                    let seq = self.next_seq;
                    let frame = p.frame(seq);
                    if frame.len() > self.cfg.max_frame_bytes {
                        return Err(BridgeError::Wire(crate::error::WireError::FrameTooLarge {
                            size: frame.len(),
                            limit: self.cfg.max_frame_bytes,
                        }));
                    }
                    self.buffer.push_back(Pending {
                        seq,
                        frame,
                        kind: p.kind,
                        committed_tip: p.committed_tip,
                        resulting_head: p.resulting_head,
                        last_sent: None,
                    });
                    self.next_seq += 1;
                }
                Next::Pending(after) => {
                    self.retry_at = Some(Instant::now() + after.min(MAX_RETRY));
                    break;
                }
                Next::End => {
                    info!(last_seq = self.next_seq - 1, "source finished");
                    self.source_done = true;
                }
            }
        }
        Ok(())
    }

    pub(super) fn send_pending(&mut self) -> Result<(), BridgeError> {
        while self.can_send() {
            let Some(session) = self.session.as_ref() else { return Ok(()) };
            let seq = session.next_send;
            let identity = session.identity.clone();
            let idx = usize::try_from(seq.saturating_sub(self.acked + 1)).unwrap_or(usize::MAX);
            let garbage_every = self.cfg.garbage_every;
            let Some(p) = self.buffer.get(idx) else { return Ok(()) };
            let first_time = p.last_sent.is_none();
            if first_time && garbage_every > 0 && seq % garbage_every == 0 {
                let garbage = garbage_frame(seq, &p.frame);
                self.stats.garbage_sent += 1;
                if !self.send_to(&identity, &garbage)? {
                    return Ok(());
                }
            }
            let Some(p) = self.buffer.get(idx) else { return Ok(()) };
            let len = p.frame.len() as u64;
            // Taken before the send: a thread preempted right after it must not shorten the latency.
            let sent_at = Instant::now();
            let outcome = send_raw(&self.socket, &identity, &p.frame);
            if !self.sent_or_gone(&identity, outcome)? {
                return Ok(());
            }
            if first_time {
                self.stats.sent += 1;
                self.stats.bytes_sent += len;
                self.stats.first_send.get_or_insert(sent_at);
            } else {
                self.stats.resent += 1;
            }
            if let Some(p) = self.buffer.get_mut(idx) {
                p.last_sent = Some(sent_at);
            }
            debug!(seq, "sent");
            if let Some(s) = self.session.as_mut() {
                s.next_send = seq + 1;
            }
        }
        Ok(())
    }

    pub(super) fn housekeeping<S: NotificationSource>(&mut self, source: &S) -> Result<(), BridgeError> {
        let now = Instant::now();
        let hb = self.cfg.heartbeat;
        let Some(s) = self.session.as_ref() else { return Ok(()) };
        if now.saturating_duration_since(s.last_heard) > hb * 3 {
            warn!(unacked = self.buffer.len(), "sidecar silent for 3 heartbeat intervals; session lost");
            self.session = None;
            self.stats.sessions_lost += 1;
            return Ok(());
        }
        if now.saturating_duration_since(s.last_beat) >= hb {
            let identity = s.identity.clone();
            let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: now_ms(), node_head: source.node_head() }))?;
            self.send_to(&identity, &frame)?;
            if let Some(s) = self.session.as_mut() {
                s.last_beat = now;
            }
        }
        Ok(())
    }
}
