//! The framing of one record of the disk buffer's log, and what a record
//! holds: one accepted webhook request.
//!
//! A record is a 40-byte header, then the payload, then zero padding to the
//! next multiple of 8 bytes (all integers little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `KAFW` |
//! | 4 | 4 | payload length in bytes |
//! | 8 | 8 | sequence number (grows by at least one per record, across files) |
//! | 16 | 8 | when the request was accepted, milliseconds since the Unix epoch |
//! | 24 | 4 | events in the request |
//! | 28 | 4 | the previous record's checksum (the file's seed for its first record) |
//! | 32 | 4 | CRC-32C (Castagnoli, RFC 3720 §B.4) of bytes 0..32 and the payload |
//! | 36 | 4 | zero |
//!
//! Each checksum covers the one before it, so the records of a file form a
//! chain: a stale record can never pass for the next one. Because each
//! record's checksum also stands on its own, a damaged record is skipped and
//! the chain picked up again at the next record that validates.
//!
//! The payload is a request as the pass-through sinks relay it: a version
//! byte (1), a flags byte (bit 0: the body is the gzip wire body; bit 1: the
//! request came in on the HTTPS listener), the length of the request's path
//! and query (u16) and its bytes, then the body.
//! Decoding the body again gives each sink exactly the events it would have
//! had from memory.

use bytes::{BufMut, Bytes, BytesMut};

use crate::pipeline::{Batch, Listener, Origin};

/// Bytes of a record header.
pub(crate) const HEADER: usize = 40;
const MAGIC: [u8; 4] = *b"KAFW";
const VERSION: u8 = 1;
const GZIP: u8 = 1;
/// Flag: the request came in on the HTTPS listener.
const HTTPS: u8 = 2;

/// A record header, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) seq: u64,
    pub(crate) time_ms: u64,
    pub(crate) events: u32,
    pub(crate) prev_crc: u32,
    pub(crate) crc: u32,
}

impl Header {
    /// Bytes the record takes in the file, header and padding included.
    pub(crate) fn size(&self) -> u64 {
        record_size(self.len as usize) as u64
    }

    /// Parses a header; `None` when the magic or the reserved word is wrong
    /// (not a record start).
    pub(crate) fn parse(b: &[u8; HEADER]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        if b[..4] != MAGIC || u32_at(36) != 0 {
            return None;
        }
        Some(Self {
            len: u32_at(4),
            seq: u64_at(8),
            time_ms: u64_at(16),
            events: u32_at(24),
            prev_crc: u32_at(28),
            crc: u32_at(32),
        })
    }

    /// Whether `payload` is the one this header was written with.
    pub(crate) fn verifies(&self, raw: &[u8; HEADER], payload: &[u8]) -> bool {
        payload.len() == self.len as usize
            && crc32c::crc32c_append(crc32c::crc32c(&raw[..32]), payload) == self.crc
    }
}

/// Bytes a record with a payload of `len` bytes takes.
pub(crate) fn record_size(len: usize) -> usize {
    (HEADER + len).next_multiple_of(8)
}

/// The payload of `batch` in two parts, the short prefix (version, flags,
/// path) and the body, so that the body is written from where it lies.
pub(crate) fn payload(batch: &Batch) -> [Bytes; 2] {
    let (mut flags, body) = match &batch.origin.gzip_wire {
        Some(wire) => (GZIP, wire),
        None => (0, &batch.body),
    };
    if batch.origin.listener == Listener::Https {
        flags |= HTTPS;
    }
    let path = batch.origin.path_and_query.as_bytes();
    let path = &path[..path.len().min(usize::from(u16::MAX))];
    let mut prefix = BytesMut::with_capacity(4 + path.len());
    prefix.put_u8(VERSION);
    prefix.put_u8(flags);
    prefix.put_u16_le(path.len() as u16);
    prefix.put_slice(path);
    [prefix.freeze(), body.clone()]
}

/// A payload taken apart: the body to decode, whether it is gzip, and the
/// request's origin (its `gzip_wire` filled in when it is).
pub(crate) fn parse_payload(p: Bytes) -> Option<(Bytes, bool, Origin)> {
    if p.len() < 4 || p[0] != VERSION {
        return None;
    }
    let gzip = p[1] & GZIP != 0;
    let path_len = usize::from(u16::from_le_bytes([p[2], p[3]]));
    let path = p.get(4..4 + path_len)?;
    let path_and_query = String::from_utf8_lossy(path).into_owned();
    let body = p.slice(4 + path_len..);
    let origin = Origin {
        path_and_query,
        gzip_wire: gzip.then(|| body.clone()),
        listener: match p[1] & HTTPS {
            0 => Listener::Http,
            _ => Listener::Https,
        },
    };
    Some((body, gzip, origin))
}

/// Writes the header of the record whose payload is the concatenation of
/// `parts` into `out` (cleared first) and returns its checksum, the next
/// record's `prev_crc`. The record is the header, the parts, then
/// [`padding`] zero bytes.
pub(crate) fn encode_header(
    out: &mut Vec<u8>,
    seq: u64,
    time_ms: u64,
    events: u32,
    prev_crc: u32,
    parts: &[&[u8]],
) -> u32 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(&prev_crc.to_le_bytes());
    let crc = parts.iter().fold(crc32c::crc32c(&out[..32]), |c, p| {
        crc32c::crc32c_append(c, p)
    });
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    crc
}

/// Zero bytes after a payload of `len` bytes, to the next multiple of 8.
pub(crate) fn padding(len: usize) -> usize {
    record_size(len) - HEADER - len
}

/// The chain's seed for the file whose first record is `first_seq`.
pub(crate) fn seed(first_seq: u64) -> u32 {
    crc32c::crc32c(&first_seq.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_flipped_bit_is_caught() {
        let mut out = Vec::new();
        let crc = encode_header(&mut out, 7, 1_700_000_000_000, 3, 99, &[b"hel", b"lo"]);
        out.extend_from_slice(b"hello");
        out.resize(out.len() + padding(5), 0);
        assert_eq!(out.len(), 48);
        let raw: [u8; HEADER] = out[..HEADER].try_into().unwrap();
        let h = Header::parse(&raw).unwrap();
        assert_eq!(
            (h.len, h.seq, h.events, h.prev_crc, h.crc),
            (5, 7, 3, 99, crc)
        );
        assert!(h.verifies(&raw, b"hello"));
        for bit in 0..(HEADER + 5) * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let raw: [u8; HEADER] = bad[..HEADER].try_into().unwrap();
            let ok = Header::parse(&raw)
                .is_some_and(|h| h.len == 5 && h.verifies(&raw, &bad[HEADER..HEADER + 5]));
            assert!(!ok, "bit {bit} flipped went unnoticed");
        }
    }

    #[test]
    fn payload_keeps_origin_and_body() {
        let body = Bytes::from_static(b"{\"items\":[]}");
        let batch = Batch::with_origin(
            body.clone(),
            Vec::new(),
            Origin {
                path_and_query: "/post?timeout=30s".into(),
                gzip_wire: None,
                listener: Listener::Https,
            },
        );
        let [prefix, rest] = payload(&batch);
        let joined = Bytes::from([prefix, rest].concat());
        let (b, gzip, origin) = parse_payload(joined).unwrap();
        assert_eq!((b, gzip), (body, false));
        assert_eq!(origin.path_and_query, "/post?timeout=30s");
        assert_eq!(origin.listener, Listener::Https);
        assert!(parse_payload(Bytes::from_static(b"\x02\x00\x00\x00")).is_none());
    }
}
