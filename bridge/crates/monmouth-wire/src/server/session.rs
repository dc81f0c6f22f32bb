//! The session's lifecycle: a `hello` starts, continues or restarts the stream (see the parent
//! module's doc for when a `hello` continues it), and a refused or superseded session ends.

use std::time::Instant;

use tracing::{info, warn};

use super::{NotificationSource, Server, Session, Start};
use crate::error::{BridgeError, ErrorCode, SourceError};
use crate::message::{encode, Hello, Message, Welcome, PROTOCOL_VERSION, WINDOW_RANGE};

impl Server {
    pub(super) fn touch(&mut self, identity: &[u8]) {
        if let Some(s) = self.session.as_mut().filter(|s| s.identity == identity) {
            s.last_heard = Instant::now();
        }
    }

    pub(super) fn is_session(&self, identity: &[u8]) -> bool {
        self.session.as_ref().is_some_and(|s| s.identity == identity)
    }

    pub(super) fn on_hello<S: NotificationSource>(&mut self, identity: &[u8], h: Hello, source: &mut S) -> Result<(), BridgeError> {
        if h.version != PROTOCOL_VERSION {
            if self.is_session(identity) {
                self.session = None;
            }
            let text = format!(
                "protocol version {} is not supported; this bridge speaks version {PROTOCOL_VERSION}",
                h.version
            );
            warn!(client = %h.client, "{text}");
            return self.send_error(identity, ErrorCode::UnsupportedVersion, text);
        }
        if !WINDOW_RANGE.contains(&h.window) {
            let text = format!("window {} is outside {}..={}", h.window, WINDOW_RANGE.start(), WINDOW_RANGE.end());
            return self.bad_frame(identity, ErrorCode::Malformed, text);
        }
        if let Some(old) = self.session.take() {
            if old.identity != identity {
                info!("a new sidecar session replaces the current one");
                self.send_error(&old.identity, ErrorCode::Unexpected, "session superseded by a newer hello".to_owned())?;
            }
        }
        let start = Start { head: h.head, start_block: h.start_block };
        if self.started && !self.continues(&start) {
            info!(
                client = %h.client,
                head = ?h.head.map(|r| r.to_string()),
                start_block = ?h.start_block,
                dropped = self.buffer.len(),
                "the sidecar is not where the stream left off (another database?); restarting the source from its hello"
            );
            self.drop_stream();
        }
        if !self.started {
            match source.start(start) {
                Ok(()) => {
                    self.started = true;
                    self.resume_point = start;
                }
                Err(SourceError::Refused(text)) => {
                    warn!(client = %h.client, "refused the sidecar's start: {text}");
                    self.stats.refusals += 1;
                    return self.send_error(identity, ErrorCode::Refused, text);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let now = Instant::now();
        let resend_from = self.acked + 1;
        info!(
            client = %h.client,
            head = ?h.head.map(|r| r.to_string()),
            window = h.window,
            resend = self.next_seq.saturating_sub(resend_from),
            "sidecar session opened"
        );
        self.session = Some(Session {
            identity: identity.to_vec(),
            window: h.window,
            next_send: resend_from,
            last_heard: now,
            last_beat: now,
        });
        self.window_limit = h.window;
        self.stats.sessions += 1;
        let welcome = Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            chain_id: self.cfg.chain_id,
            node: self.cfg.node.clone(),
            heartbeat_ms: u64::try_from(self.cfg.heartbeat.as_millis()).unwrap_or(u64::MAX),
            epoch: self.epoch,
            node_head: source.node_head(),
            history: self.history.as_ref().map(crate::history::HistoryService::max_blocks),
        });
        let frame = encode(&welcome)?;
        self.send_to(identity, &frame)?;
        Ok(())
    }

    /// The source cannot go on from where this session started it: tell the sidecar, forget what was
    /// not acknowledged (the source is started again, from the sidecar's next `hello`), keep serving.
    pub(super) fn refuse_session(&mut self, text: String) -> Result<(), BridgeError> {
        warn!(dropped = self.buffer.len(), "the source refused the session: {text}");
        self.stats.refusals += 1;
        self.drop_stream();
        match self.session.take() {
            Some(s) => self.send_error(&s.identity, ErrorCode::Refused, text),
            None => Ok(()),
        }
    }

    /// Whether a sidecar at `start` continues the stream (see the module doc).
    pub(super) fn continues(&self, start: &Start) -> bool {
        let at_resume_point = start.head == self.resume_point.head
            && (start.head.is_some() || start.start_block == self.resume_point.start_block);
        at_resume_point
            || start.head.is_some() && self.buffer.iter().any(|p| p.last_sent.is_some() && p.resulting_head == start.head)
    }

    /// Forget the stream: the source is started again on the next `hello`, and nothing buffered is sent.
    pub(super) fn drop_stream(&mut self) {
        self.started = false;
        self.source_done = false;
        self.retry_at = None;
        self.buffer.clear();
        // Seqs stay unique within the epoch: the dropped ones are never sent again, and a late ack of
        // one of them is ignored as a duplicate.
        self.acked = self.next_seq - 1;
    }
}
