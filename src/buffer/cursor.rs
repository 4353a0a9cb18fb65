//! Each sink's saved position in the log: a small file `<sink>.pos` with two
//! slots, written in turn. A slot holds a generation number, the position and
//! a CRC-32C of both; the valid slot with the higher generation wins, so a
//! write torn by a crash leaves the other slot, one save older, in force.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::Pos;
use super::storage::{LogFile, Storage};

const MAGIC: [u8; 4] = *b"KAFP";
const SLOT: usize = 32;
/// The second slot lies in another 512-byte sector than the first.
const SLOT_OFFSETS: [u64; 2] = [0, 512];

/// File name of `sink`'s position.
pub(crate) fn file_name(sink: &str) -> String {
    format!("{sink}.pos")
}

/// A sink's position file, open for saving.
pub(crate) struct Cursor {
    file: Arc<dyn LogFile>,
    generation: u64,
    saved: Pos,
}

impl Cursor {
    /// Creates the file for a new sink at `pos`, durably (file and directory).
    pub(crate) fn create(storage: &dyn Storage, sink: &str, pos: Pos) -> io::Result<Self> {
        let file = storage.create(&file_name(sink))?;
        let mut c = Self {
            file,
            generation: 0,
            saved: pos,
        };
        c.write(pos)?;
        storage.sync_dir()?;
        Ok(c)
    }

    /// Opens an existing file whose last valid save was `saved`.
    pub(crate) fn open(
        storage: &dyn Storage,
        sink: &str,
        generation: u64,
        saved: Pos,
    ) -> io::Result<Self> {
        Ok(Self {
            file: storage.open(&file_name(sink))?,
            generation,
            saved,
        })
    }

    /// The position last saved.
    pub(crate) fn saved(&self) -> Pos {
        self.saved
    }

    /// Saves `pos` durably (one `fdatasync`).
    pub(crate) fn save(&mut self, pos: Pos) -> io::Result<()> {
        if pos == self.saved {
            return Ok(());
        }
        self.write(pos)
    }

    fn write(&mut self, pos: Pos) -> io::Result<()> {
        let generation = self.generation + 1;
        let slot = encode(generation, pos);
        self.file
            .write_at(&slot, SLOT_OFFSETS[(generation % 2) as usize])?;
        self.file.sync_data()?;
        self.generation = generation;
        self.saved = pos;
        Ok(())
    }
}

fn encode(generation: u64, pos: Pos) -> [u8; SLOT] {
    let mut b = [0; SLOT];
    b[..4].copy_from_slice(&MAGIC);
    b[4..12].copy_from_slice(&generation.to_le_bytes());
    b[12..20].copy_from_slice(&pos.seg.to_le_bytes());
    b[20..28].copy_from_slice(&pos.off.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8; SLOT]) -> Option<(u64, Pos)> {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(b[28..32].try_into().unwrap_or_default());
    if b[..4] != MAGIC || crc32c::crc32c(&b[..28]) != crc {
        return None;
    }
    Some((
        u64_at(4),
        Pos {
            seg: u64_at(12),
            off: u64_at(20),
        },
    ))
}

/// Reads a position file: `Ok(Some((generation, pos)))`, or `Ok(None)` when
/// neither slot is valid (then the file is as good as missing).
pub(crate) fn read(path: &Path) -> io::Result<Option<(u64, Pos)>> {
    let file = std::fs::File::open(path)?;
    let mut best: Option<(u64, Pos)> = None;
    for off in SLOT_OFFSETS {
        let mut b = [0; SLOT];
        match file.read_exact_at(&mut b, off) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e),
        }
        if let Some((g, p)) = decode(&b)
            && best.is_none_or(|(bg, _)| g > bg)
        {
            best = Some((g, p));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::storage::Dir;

    #[test]
    fn a_torn_save_leaves_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Dir::new(dir.path());
        let mut c = Cursor::create(&storage, "s", Pos { seg: 1, off: 0 }).unwrap();
        c.save(Pos { seg: 1, off: 48 }).unwrap();
        c.save(Pos { seg: 9, off: 8 }).unwrap();
        let path = dir.path().join("s.pos");
        assert_eq!(read(&path).unwrap(), Some((3, Pos { seg: 9, off: 8 })));
        // Tear the newest slot (generation 3 is in slot 1).
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 7], 512 + 10).unwrap();
        assert_eq!(read(&path).unwrap(), Some((2, Pos { seg: 1, off: 48 })));
        f.set_len(0).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
