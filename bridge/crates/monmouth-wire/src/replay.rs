//! Replay files (`docs/wire.md`, "Replay files"): a 6-byte header `MNMRP` + version `0x01`, then
//! frames of `u32` BE payload length, `u32` BE CRC-32 (IEEE) of the payload, and the payload, one
//! `notification` message.
//!
//! The reader reports a bad header, a truncated frame, a CRC mismatch or an undecodable message with
//! the frame index and byte offset, and yields nothing from that frame on.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::Path;

use crate::error::{ReplayError, WireError};
use crate::message::{decode, encode_notification, Message, MAX_FRAME_BYTES};
use crate::types::Notification;

/// The 5 magic bytes at the start of a replay file.
pub const MAGIC: &[u8; 5] = b"MNMRP";
/// The file format version this crate reads and writes.
pub const FORMAT_VERSION: u8 = 1;

/// One frame read from a replay file.
#[derive(Clone, Debug)]
pub struct ReplayFrame {
    /// Frame index (0-based).
    pub index: u64,
    /// Byte offset of the frame's length prefix.
    pub offset: u64,
    /// The `seq` stored in the file (the bridge assigns its own).
    pub seq: u64,
    /// The notification, decoded, or pre-encoded when the frame was canonical (the common case).
    pub body: FrameBody,
    /// Payload size (bytes).
    pub size: usize,
}

/// A replay frame's notification.
#[derive(Clone, Debug)]
pub enum FrameBody {
    /// Canonically encoded: kept as bytes, only block identities read (and validated).
    Encoded(crate::message::PreEncoded),
    /// Decoded in full (a frame with keys in another order).
    Decoded(Notification),
}

impl FrameBody {
    /// The chain head after this notification.
    pub fn resulting_head(&self) -> Option<crate::types::BlockRef> {
        match self {
            Self::Encoded(p) => p.resulting_head,
            Self::Decoded(n) => n.resulting_head(),
        }
    }
}

/// Streaming reader of a replay file.
pub struct ReplayReader<R: Read> {
    path: String,
    inner: R,
    index: u64,
    offset: u64,
    failed: bool,
}

impl ReplayReader<BufReader<File>> {
    /// Open a file and check its header.
    ///
    /// # Errors
    /// [`ReplayError::Io`] or [`ReplayError::BadHeader`].
    pub fn open(path: &Path) -> Result<Self, ReplayError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| ReplayError::Io { path: shown.clone(), source })?;
        Self::new(shown, BufReader::with_capacity(1 << 20, file))
    }
}

impl<R: Read> ReplayReader<R> {
    /// Wrap any reader; `path` is only used in error messages.
    ///
    /// # Errors
    /// [`ReplayError::Io`] or [`ReplayError::BadHeader`].
    pub fn new(path: String, mut inner: R) -> Result<Self, ReplayError> {
        let mut header = [0u8; 6];
        let got = read_full(&mut inner, &mut header).map_err(|source| ReplayError::Io { path: path.clone(), source })?;
        if got < header.len() {
            return Err(ReplayError::BadHeader { path, detail: format!("file is {got} bytes, shorter than the header") });
        }
        if &header[..5] != MAGIC {
            return Err(ReplayError::BadHeader { path, detail: format!("magic is {:?}, expected \"MNMRP\"", &header[..5]) });
        }
        if header[5] != FORMAT_VERSION {
            return Err(ReplayError::BadHeader {
                path,
                detail: format!("format version {} is not supported (this reader knows {FORMAT_VERSION})", header[5]),
            });
        }
        Ok(Self { path, inner, index: 0, offset: 6, failed: false })
    }

    /// The next frame; `Ok(None)` at a clean end of file.
    ///
    /// # Errors
    /// Truncation, CRC mismatch or an undecodable payload, naming frame index and offset. After an
    /// error the reader yields nothing more.
    pub fn next_frame(&mut self) -> Result<Option<ReplayFrame>, ReplayError> {
        if self.failed {
            return Ok(None);
        }
        let result = self.read_one();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn read_one(&mut self) -> Result<Option<ReplayFrame>, ReplayError> {
        let (index, offset) = (self.index, self.offset);
        let io = |source| ReplayError::Io { path: self.path.clone(), source };
        let mut prefix = [0u8; 8];
        let got = read_full(&mut self.inner, &mut prefix).map_err(io)?;
        if got == 0 {
            return Ok(None);
        }
        let truncated = |detail: String| ReplayError::Truncated { path: self.path.clone(), index, offset, detail };
        if got < prefix.len() {
            return Err(truncated(format!("{got} of 8 prefix bytes")));
        }
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let stored = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if len > MAX_FRAME_BYTES {
            return Err(ReplayError::Decode {
                path: self.path.clone(),
                index,
                offset,
                source: WireError::FrameTooLarge { size: len, limit: MAX_FRAME_BYTES },
            });
        }
        let mut payload = vec![0u8; len];
        let got = read_full(&mut self.inner, &mut payload).map_err(|source| ReplayError::Io { path: self.path.clone(), source })?;
        if got < len {
            return Err(truncated(format!("{got} of {len} payload bytes")));
        }
        let computed = crc32fast::hash(&payload);
        if computed != stored {
            return Err(ReplayError::Crc { path: self.path.clone(), index, offset, stored, computed });
        }
        if let Ok((seq, pre)) = crate::message::PreEncoded::from_frame(&payload) {
            self.index += 1;
            self.offset += 8 + len as u64;
            return Ok(Some(ReplayFrame { index, offset, seq, body: FrameBody::Encoded(pre), size: len }));
        }
        let msg = decode(&payload, MAX_FRAME_BYTES).map_err(|source| ReplayError::Decode {
            path: self.path.clone(),
            index,
            offset,
            source,
        })?;
        let Message::Notification(n) = msg else {
            return Err(ReplayError::NotANotification {
                path: self.path.clone(),
                index,
                offset,
                got: msg.type_name().to_owned(),
            });
        };
        self.index += 1;
        self.offset += 8 + len as u64;
        Ok(Some(ReplayFrame { index, offset, seq: n.seq, body: FrameBody::Decoded(n.notification), size: len }))
    }
}

/// Read until `buf` is full or end of file; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes replay files.
pub struct ReplayWriter<W: Write> {
    inner: W,
    seq: u64,
}

impl ReplayWriter<BufWriter<File>> {
    /// Create (truncate) a file and write the header.
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::new(BufWriter::new(File::create(path)?))
    }
}

impl<W: Write> ReplayWriter<W> {
    /// Write the header to `inner`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn new(mut inner: W) -> std::io::Result<Self> {
        inner.write_all(MAGIC)?;
        inner.write_all(&[FORMAT_VERSION])?;
        Ok(Self { inner, seq: 0 })
    }

    /// Append one notification (with the next `seq`, from 1).
    ///
    /// # Errors
    /// I/O errors, or an encoding failure as `InvalidData`.
    pub fn write(&mut self, n: &Notification) -> std::io::Result<()> {
        self.seq += 1;
        let payload = encode_notification(self.seq, n).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
        self.write_payload(&payload)
    }

    /// Append one already-encoded payload.
    ///
    /// # Errors
    /// I/O errors; a payload over 4 GiB as `InvalidInput`.
    pub fn write_payload(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "payload over 4 GiB"))?;
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(&crc32fast::hash(payload).to_be_bytes())?;
        self.inner.write_all(payload)
    }

    /// Flush and return the inner writer.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::sample_chain;

    fn file_with(ns: &[Notification]) -> Vec<u8> {
        let mut w = ReplayWriter::new(Vec::new()).expect("header");
        for n in ns {
            w.write(n).expect("write");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn roundtrip() {
        let chain = sample_chain(1, 3, 2, 0);
        let ns = vec![Notification::committed(chain[..2].to_vec()), Notification::committed(chain[2..].to_vec())];
        let bytes = file_with(&ns);
        let mut r = ReplayReader::new("mem".into(), bytes.as_slice()).expect("open");
        let a = r.next_frame().expect("frame").expect("some");
        assert_eq!((a.index, a.offset, a.seq), (0, 6, 1));
        let FrameBody::Encoded(pa) = &a.body else { panic!("canonical frame not pre-encoded") };
        assert_eq!(pa.frame(1), encode_notification(1, &ns[0]).unwrap());
        let b = r.next_frame().expect("frame").expect("some");
        assert_eq!(b.body.resulting_head(), ns[1].resulting_head());
        assert!(r.next_frame().expect("eof").is_none());
    }

    #[test]
    fn reports_damage_with_index_and_offset() {
        let chain = sample_chain(1, 2, 1, 0);
        let bytes = file_with(&[Notification::committed(chain[..1].to_vec()), Notification::committed(chain[1..].to_vec())]);
        // Bad header.
        assert!(matches!(ReplayReader::new("m".into(), &b"MNMRX\x01"[..]), Err(ReplayError::BadHeader { .. })));
        assert!(matches!(ReplayReader::new("m".into(), &b"MNMRP\x02"[..]), Err(ReplayError::BadHeader { .. })));
        // Truncated second frame.
        let mut r = ReplayReader::new("m".into(), &bytes[..bytes.len() - 3]).expect("open");
        assert!(r.next_frame().expect("first").is_some());
        let err = r.next_frame().expect_err("truncated");
        assert!(matches!(err, ReplayError::Truncated { index: 1, .. }), "{err}");
        assert!(r.next_frame().expect("stops").is_none());
        // CRC mismatch in the first frame.
        let mut bad = bytes.clone();
        let last = 20;
        bad[last] ^= 0xff;
        let mut r = ReplayReader::new("m".into(), bad.as_slice()).expect("open");
        assert!(matches!(r.next_frame(), Err(ReplayError::Crc { index: 0, offset: 6, .. })));
    }
}
