//! The session messages of `docs/wire.md` (six, plus the history request and its answer) and their encoding.
//!
//! Encoding is `rmp_serde::to_vec_named` of a struct whose first field is `type`, so every frame is
//! one msgpack map with the keys in the order of the spec. Decoding first reads only the `type` key,
//! then the message's own fields; unknown keys are ignored, keys may come in any order.
//!
//! One module per concern, each message with its wire structs: `session` (`hello`, `welcome`,
//! `heartbeat`, `error`), `stream` (`notification`, `ack`, [`PreEncoded`]), `history` (`history`,
//! `history_blocks`), on the shared msgpack helpers of `codec`. This module holds [`Message`] and
//! dispatches [`encode`] and [`decode`] to them; they never name it back.

mod codec;
mod history;
mod session;
mod stream;

use codec::{from_frame, is_map_marker, Envelope, Frame};
use crate::error::WireError;

pub use history::{HistoryBlocks, HistoryRequest};
pub use session::{ErrorMsg, Heartbeat, Hello, Welcome, WINDOW_RANGE};
pub use stream::{encode_notification, Ack, NotificationMsg, PreEncoded};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest frame accepted by default (bytes): 64 MiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Any protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`NotificationMsg`].
    Notification(NotificationMsg),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`ErrorMsg`].
    Error(ErrorMsg),
    /// See [`HistoryRequest`].
    History(HistoryRequest),
    /// See [`HistoryBlocks`].
    HistoryBlocks(HistoryBlocks),
}

impl Message {
    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Hello(_) => Hello::TYPE,
            Self::Welcome(_) => Welcome::TYPE,
            Self::Notification(_) => NotificationMsg::TYPE,
            Self::Ack(_) => Ack::TYPE,
            Self::Heartbeat(_) => Heartbeat::TYPE,
            Self::Error(_) => ErrorMsg::TYPE,
            Self::History(_) => HistoryRequest::TYPE,
            Self::HistoryBlocks(_) => HistoryBlocks::TYPE,
        }
    }
}

/// Encode one message into a frame.
///
/// # Errors
/// [`WireError::Encode`] only if serialization itself fails (it does not for well-formed values).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    match msg {
        Message::Hello(m) => m.encode_frame(),
        Message::Welcome(m) => m.encode_frame(),
        Message::History(m) => m.encode_frame(),
        Message::HistoryBlocks(m) => m.encode_frame(),
        Message::Notification(m) => m.encode_frame(),
        Message::Ack(m) => m.encode_frame(),
        Message::Heartbeat(m) => m.encode_frame(),
        Message::Error(m) => m.encode_frame(),
    }
}

/// Decode one frame.
///
/// # Errors
/// * [`WireError::FrameTooLarge`] when `frame` exceeds `max_bytes`;
/// * [`WireError::Malformed`] when it is not one msgpack map with a string `type` and the fields of
///   that message (the text names the field);
/// * [`WireError::UnknownType`] when `type` names no message of this version;
/// * [`WireError::InvalidNotification`] when a notification's chains break an invariant.
pub fn decode(frame: &[u8], max_bytes: usize) -> Result<Message, WireError> {
    if frame.len() > max_bytes {
        return Err(WireError::FrameTooLarge { size: frame.len(), limit: max_bytes });
    }
    match frame.first() {
        None => return Err(WireError::Malformed("empty frame".to_owned())),
        Some(b) if !is_map_marker(*b) => {
            return Err(WireError::Malformed(format!("frame is not a msgpack map (first byte 0x{b:02x})")));
        }
        Some(_) => {}
    }
    let Envelope(ty) = from_frame::<Envelope>(frame, "message")?;
    let ty = ty.ok_or_else(|| WireError::Malformed("message has no `type` key".to_owned()))?;
    Ok(match ty.as_str() {
        Hello::TYPE => Message::Hello(Hello::decode_frame(frame)?),
        Welcome::TYPE => Message::Welcome(Welcome::decode_frame(frame)?),
        HistoryRequest::TYPE => Message::History(HistoryRequest::decode_frame(frame)?),
        HistoryBlocks::TYPE => Message::HistoryBlocks(HistoryBlocks::decode_frame(frame)?),
        NotificationMsg::TYPE => Message::Notification(NotificationMsg::decode_frame(frame)?),
        Ack::TYPE => Message::Ack(Ack::decode_frame(frame)?),
        Heartbeat::TYPE => Message::Heartbeat(Heartbeat::decode_frame(frame)?),
        ErrorMsg::TYPE => Message::Error(ErrorMsg::decode_frame(frame)?),
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(WireError::UnknownType(shown));
        }
    })
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::error::ErrorCode;
    use crate::types::{BlockRef, FixedBytes, Notification, B256};

    fn roundtrip(msg: Message) {
        let frame = encode(&msg).expect("encode");
        assert_eq!(decode(&frame, MAX_FRAME_BYTES).expect("decode"), msg);
    }

    #[test]
    fn session_messages_roundtrip() {
        let head = BlockRef { number: 7, hash: FixedBytes([9u8; 32]) };
        roundtrip(Message::Hello(Hello { version: 1, head: Some(head), window: 64, client: "t".into(), start_block: None }));
        roundtrip(Message::Hello(Hello { version: 1, head: None, window: 1, client: String::new(), start_block: None }));
        roundtrip(Message::Hello(Hello { version: 1, head: None, window: 8, client: "s".into(), start_block: Some(0) }));
        roundtrip(Message::Hello(Hello { version: 1, head: None, window: 8, client: "s".into(), start_block: Some(1 << 40) }));
        for node_head in [None, Some(21_000_000)] {
            roundtrip(Message::Welcome(Welcome { version: 1, chain_id: 1, node: "n".into(), heartbeat_ms: 1000, epoch: 5, node_head, history: None }));
            roundtrip(Message::Welcome(Welcome { version: 1, chain_id: 1, node: "n".into(), heartbeat_ms: 1000, epoch: 5, node_head, history: Some(64) }));
        }
        roundtrip(Message::Ack(Ack { seq: u64::MAX, head: Some(head) }));
        roundtrip(Message::Ack(Ack { seq: 1, head: None }));
        roundtrip(Message::Heartbeat(Heartbeat { ts_ms: 1_700_000_000_000, node_head: None }));
        roundtrip(Message::Heartbeat(Heartbeat { ts_ms: 1_700_000_000_000, node_head: Some(0) }));
        roundtrip(Message::Error(ErrorMsg::new(ErrorCode::Gap, "seq 3 after 1")));
        roundtrip(Message::History(HistoryRequest { id: 1, from: 1, to: 64, head: Some(head) }));
        roundtrip(Message::History(HistoryRequest { id: u64::MAX, from: 0, to: 0, head: None }));
        let chain = crate::sample::sample_chain(5, 3, 2, 0);
        roundtrip(Message::HistoryBlocks(HistoryBlocks { id: 2, blocks: Some(chain), error: None }));
        roundtrip(Message::HistoryBlocks(HistoryBlocks { id: 2, blocks: Some(Vec::new()), error: None }));
        roundtrip(Message::HistoryBlocks(HistoryBlocks { id: 3, blocks: None, error: Some("block 9 is beyond".into()) }));
    }

    #[test]
    fn refuses_inconsistent_history_answers() {
        let both = HistoryBlocks { id: 1, blocks: Some(Vec::new()), error: Some("x".into()) };
        let frame = encode(&Message::HistoryBlocks(both)).expect("encode");
        assert!(matches!(decode(&frame, MAX_FRAME_BYTES), Err(WireError::Malformed(m)) if m.contains("exactly one")));
        let mut chain = crate::sample::sample_chain(5, 3, 1, 0);
        chain.remove(1);
        let gap = HistoryBlocks { id: 4, blocks: Some(chain), error: None };
        let frame = encode(&Message::HistoryBlocks(gap)).expect("encode");
        assert!(matches!(decode(&frame, MAX_FRAME_BYTES), Err(WireError::InvalidNotification(m)) if m.contains("history_blocks 4")));
    }

    #[test]
    fn key_order_is_the_spec_order() {
        let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: 5, node_head: None })).expect("encode");
        // fixmap(2) "type" "heartbeat" "ts_ms" 5
        let mut want = vec![0x82, 0xa4];
        want.extend(b"type");
        want.push(0xa9);
        want.extend(b"heartbeat");
        want.push(0xa5);
        want.extend(b"ts_ms");
        want.push(5);
        assert_eq!(frame, want);
        // An optional key comes last, and only when present: fixmap(3) ... "node_head" 7
        let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: 5, node_head: Some(7) })).expect("encode");
        want[0] = 0x83;
        want.push(0xa9);
        want.extend(b"node_head");
        want.push(7);
        assert_eq!(frame, want);
    }

    #[test]
    fn pre_encoded_frames_equal_fresh_encodings() {
        let chain = crate::sample::sample_chain(5, 3, 3, 0);
        let fork = crate::sample::sample_chain(6, 2, 1, 1);
        for n in [
            Notification::committed(chain.clone()),
            Notification::reorged(chain[1..].to_vec(), fork.clone()),
            Notification::reverted(chain[1..].to_vec()),
        ] {
            let frame = encode_notification(7, &n).expect("encode");
            let (seq, pre) = PreEncoded::from_frame(&frame).expect("canonical");
            assert_eq!(seq, 7);
            assert_eq!(pre.kind, n.kind);
            assert_eq!(pre.committed_tip, n.committed_tip());
            assert_eq!(pre.resulting_head, n.resulting_head());
            for s in [0, 1, 127, 128, 255, 256, 65_535, 65_536, u64::from(u32::MAX) + 1, u64::MAX] {
                assert_eq!(pre.frame(s), encode_notification(s, &n).expect("encode"), "seq {s}");
            }
        }
        assert!(PreEncoded::from_frame(&encode(&Message::Heartbeat(Heartbeat { ts_ms: 1, node_head: None })).expect("e")).is_err());
    }

    #[test]
    fn refuses_bad_frames() {
        assert!(matches!(decode(&[], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0x93, 1, 2, 3], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0x80], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[0x81, 0xa1], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        let frame = encode(&Message::Heartbeat(Heartbeat { ts_ms: 5, node_head: None })).expect("encode");
        assert!(matches!(decode(&frame[..frame.len() - 1], MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        let mut trailing = frame.clone();
        trailing.push(0xc0);
        assert!(matches!(decode(&trailing, MAX_FRAME_BYTES), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&frame, 3), Err(WireError::FrameTooLarge { .. })));
        #[derive(Serialize)]
        struct Bogus {
            #[serde(rename = "type")]
            ty: &'static str,
            ts_ms: u64,
        }
        let unknown = rmp_serde::to_vec_named(&Bogus { ty: "bogus", ts_ms: 1 }).expect("encode");
        assert!(matches!(decode(&unknown, MAX_FRAME_BYTES), Err(WireError::UnknownType(t)) if t == "bogus"));
    }

    #[test]
    fn ignores_unknown_keys_and_any_order() {
        #[derive(Serialize)]
        struct Reordered {
            extra: u8,
            seq: u64,
            head: Option<BlockRef>,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        let head = Some(BlockRef { number: 3, hash: B256::ZERO });
        let frame = rmp_serde::to_vec_named(&Reordered { extra: 1, seq: 4, head, ty: "ack" }).expect("encode");
        assert_eq!(decode(&frame, MAX_FRAME_BYTES).expect("decode"), Message::Ack(Ack { seq: 4, head }));
    }
}
