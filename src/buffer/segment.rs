//! The log's files ("segments"): their names, and reading records from them,
//! with the repair rules: a damaged record is skipped and counted, and the
//! next record that validates is found by scanning forward, so that damage
//! never costs the valid records after it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use super::record::{HEADER, Header};

/// File name of the segment whose first record has sequence number `first`.
pub(crate) fn file_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// The first sequence number of a segment file name, `None` for other files.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The segments in `dir`, oldest first.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(first) = entry?.file_name().to_str().and_then(parse_name) {
            out.push(first);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub(crate) enum Found {
    /// A record that validates, and the offset after it.
    Record {
        header: Header,
        payload: Bytes,
        next: u64,
    },
    /// A record header whose payload was not read (header walks).
    Header { header: Header, next: u64 },
    /// Not a valid record.
    Damaged,
    /// The end of the readable part.
    End,
}

/// Reads the record at `off`, using at most the bytes before `end`.
/// Payloads over `max_payload` bytes count as damage (a garbled length must
/// not make an allocation of up to 4 GiB). With `verify` false only the
/// header is read.
pub(crate) fn read_at(
    file: &File,
    off: u64,
    end: u64,
    max_payload: u32,
    verify: bool,
) -> io::Result<Found> {
    if off >= end {
        return Ok(Found::End);
    }
    if off + HEADER as u64 > end {
        return Ok(Found::Damaged);
    }
    let mut raw = [0u8; HEADER];
    file.read_exact_at(&mut raw, off)?;
    let Some(header) = Header::parse(&raw) else {
        return Ok(Found::Damaged);
    };
    let next = off + header.size();
    if header.len > max_payload || next > end {
        return Ok(Found::Damaged);
    }
    if !verify {
        return Ok(Found::Header { header, next });
    }
    let mut payload = BytesMut::zeroed(header.len as usize);
    file.read_exact_at(&mut payload, off + HEADER as u64)?;
    if !header.verifies(&raw, &payload) {
        return Ok(Found::Damaged);
    }
    Ok(Found::Record {
        header,
        payload: payload.freeze(),
        next,
    })
}

/// The offset of the first record at or after `from` (8-byte aligned) that
/// validates and has a sequence number above `after_seq`; `None` when there
/// is none before `end`. Reads the file in windows of 1 MiB.
pub(crate) fn resync(
    file: &File,
    from: u64,
    end: u64,
    after_seq: u64,
    max_payload: u32,
) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let mut start = from.next_multiple_of(8);
    let mut buf = vec![0u8; WINDOW as usize];
    while start + HEADER as u64 <= end {
        let len = WINDOW.min(end - start) as usize;
        file.read_exact_at(&mut buf[..len], start)?;
        let mut i = 0;
        while i + 4 <= len {
            if &buf[i..i + 4] == b"KAFW" {
                let off = start + i as u64;
                if let Found::Record { header, .. } = read_at(file, off, end, max_payload, true)?
                    && header.seq > after_seq
                {
                    return Ok(Some(off));
                }
            }
            i += 8;
        }
        // The windows overlap by nothing: a magic always starts at a
        // multiple of 8 and windows are multiples of 8 long.
        start += len as u64;
    }
    Ok(None)
}

/// What a walk over a segment found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Walk {
    /// The offset after the last valid record.
    pub(crate) valid_end: u64,
    /// Records walked over.
    pub(crate) records: u64,
    /// Their events.
    pub(crate) events: u64,
    /// Sequence number of the last valid record (0: none).
    pub(crate) last_seq: u64,
    /// Checksum of the last valid record (the next one's `prev_crc`).
    pub(crate) last_crc: u32,
    /// Damaged stretches skipped (a torn end counts as one).
    pub(crate) damaged: u64,
    /// Where the first damage was, for the log.
    pub(crate) first_damage: Option<u64>,
}

/// Walks the records of `file` from `from` to `end`, skipping damage. With
/// `verify`, each payload is read and checked; without it only headers are
/// read (a damaged header still triggers a checked scan for the next record).
/// `chain` is the checksum the first record must name as its predecessor
/// (the file's seed when walking from its start): a record that validates on
/// its own but breaks the chain is a stale one and counts as damage.
/// Memory stays at one record (and one 1 MiB window), whatever the size.
pub(crate) fn walk(
    file: &File,
    from: u64,
    end: u64,
    max_payload: u32,
    verify: bool,
    mut chain: Option<u32>,
) -> io::Result<Walk> {
    let mut w = Walk {
        valid_end: from,
        ..Walk::default()
    };
    let mut off = from;
    loop {
        let found = match read_at(file, off, end, max_payload, verify)? {
            Found::Record { header, .. } | Found::Header { header, .. }
                if chain.is_some_and(|c| c != header.prev_crc) =>
            {
                Found::Damaged
            }
            found => found,
        };
        match found {
            Found::End => return Ok(w),
            Found::Record { header, next, .. } | Found::Header { header, next } => {
                chain = Some(header.crc);
                w.records += 1;
                w.events += u64::from(header.events);
                w.last_seq = header.seq;
                w.last_crc = header.crc;
                w.valid_end = next;
                off = next;
            }
            Found::Damaged => {
                w.damaged += 1;
                w.first_damage.get_or_insert(off);
                chain = None;
                match resync(file, off + 8, end, w.last_seq, max_payload)? {
                    Some(next) => off = next,
                    None => return Ok(w),
                }
            }
        }
    }
}
