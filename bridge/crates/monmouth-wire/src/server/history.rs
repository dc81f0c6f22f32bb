//! `history` requests within a session: handed to the [`HistoryService`](crate::history::HistoryService) (read
//! on its thread), and its answers sent back to the peer that asked, beside the notification stream (no `seq`,
//! no credit, never acknowledged).

use tracing::debug;

use super::Server;
use crate::error::{BridgeError, ErrorCode};
use crate::history::{error_frame, HistoryService};
use crate::message::HistoryRequest;

impl Server {
    /// Serve `history` requests with `service` (announced in `welcome.history`).
    pub fn with_history(mut self, service: HistoryService) -> Self {
        self.history = Some(service);
        self
    }

    pub(super) fn on_history(&mut self, identity: &[u8], req: HistoryRequest) -> Result<(), BridgeError> {
        if !self.is_session(identity) {
            let text = format!("no session: send hello before history request {}", req.id);
            return self.send_error(identity, ErrorCode::Unexpected, text);
        }
        self.touch(identity);
        debug!(id = req.id, from = req.from, to = req.to, "history request");
        let id = req.id;
        let refused = match self.history.as_mut() {
            Some(service) => service.submit(identity, req).err(),
            None => Some(error_frame(id, format!("history request {id}: this bridge serves no history"))),
        };
        match refused {
            Some(frame) => self.send_to(identity, &frame).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Send every finished history answer to its peer, if that peer is still the session.
    pub(super) fn send_history_answers(&mut self) -> Result<(), BridgeError> {
        while let Some(answer) = self.history.as_mut().and_then(HistoryService::try_answer) {
            if self.is_session(&answer.peer) {
                self.send_to(&answer.peer, &answer.frame)?;
            } else {
                debug!(id = answer.id, "history answer dropped: its session is gone");
            }
        }
        Ok(())
    }
}
