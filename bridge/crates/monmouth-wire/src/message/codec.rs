//! The msgpack helpers every message shares: the [`Frame`] trait a message implements, encoding with
//! the keys in spec order, decoding of a whole frame (no trailing bytes) or of only its `type` key, and
//! reading a msgpack unsigned integer in place.
//!
//! Names nothing else of the crate but its errors: the message modules build on it, never the reverse.

use std::fmt;
use std::io::Cursor;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::WireError;

/// One message of the protocol as a frame: its `type` string, its encoding and its decoding.
pub(crate) trait Frame: Sized {
    /// The `type` string.
    const TYPE: &'static str;

    /// The frame: one msgpack map, `type` first, then the fields in the order of the spec.
    ///
    /// # Errors
    /// [`WireError::Encode`] only if serialization itself fails.
    fn encode_frame(&self) -> Result<Vec<u8>, WireError>;

    /// The message of a frame whose `type` is [`Frame::TYPE`] (other keys in any order, unknown keys
    /// ignored).
    ///
    /// # Errors
    /// [`WireError::Malformed`] naming the field, or the message's own invariant error.
    fn decode_frame(frame: &[u8]) -> Result<Self, WireError>;
}

/// `rmp_serde::to_vec_named` of `value` (a struct declared in the spec's key order).
///
/// # Errors
/// [`WireError::Encode`] when serialization fails.
pub(crate) fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(value).map_err(|e| WireError::Encode(e.to_string()))
}

/// Reads only the `type` key of a top-level map (skipping every other value without building it).
pub(crate) struct Envelope(pub(crate) Option<String>);

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with a `type` key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut ty = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "type" && ty.is_none() {
                        ty = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Envelope(ty))
            }
        }
        d.deserialize_map(V)
    }
}

/// Like [`from_frame`] but borrowing from the frame (skipped `bin` values are not copied), and
/// without the trailing-bytes check.
///
/// # Errors
/// [`WireError::Malformed`] prefixed with `what`.
pub(crate) fn from_frame_ref<'a, T: Deserialize<'a>>(frame: &'a [u8], what: &str) -> Result<T, WireError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    let value = T::deserialize(&mut de).map_err(|e| WireError::Malformed(format!("{what}: {e}")))?;
    Ok(value)
}

/// Decode the whole of `frame` as a `T`.
///
/// # Errors
/// [`WireError::Malformed`] prefixed with `what`: the value does not decode, or bytes follow it.
pub(crate) fn from_frame<T: DeserializeOwned>(frame: &[u8], what: &str) -> Result<T, WireError> {
    let mut cursor = Cursor::new(frame);
    let value = {
        let mut de = rmp_serde::Deserializer::new(&mut cursor);
        T::deserialize(&mut de).map_err(|e| WireError::Malformed(format!("{what}: {e}")))?
    };
    let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if used != frame.len() {
        return Err(WireError::Malformed(format!(
            "{what}: {} trailing bytes after the message",
            frame.len().saturating_sub(used)
        )));
    }
    Ok(value)
}

/// Whether `byte` starts a msgpack map (fixmap, map 16, map 32).
pub(crate) fn is_map_marker(byte: u8) -> bool {
    (0x80..=0x8f).contains(&byte) || byte == 0xde || byte == 0xdf
}

/// The msgpack unsigned integer at the start of `b` (positive fixint, uint 8/16/32/64) and its
/// length in bytes; `None` when `b` does not start with one.
pub(crate) fn read_uint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let be = |n: usize| -> Option<u64> {
        let bytes = b.get(1..1 + n)?;
        Some(bytes.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    };
    match first {
        0x00..=0x7f => Some((u64::from(first), 1)),
        0xcc => Some((be(1)?, 2)),
        0xcd => Some((be(2)?, 3)),
        0xce => Some((be(4)?, 5)),
        0xcf => Some((be(8)?, 9)),
        _ => None,
    }
}
