//! The append-only log beside each collection's gallery file: every change is one record,
//! written and synced to disk before the change is acknowledged.
//!
//! Layout: the 8-byte magic [`MAGIC`], then records `[len: u32 LE][crc: u32 LE][payload: len
//! bytes]`, `crc` being the CRC-32 of the length's four bytes followed by the payload. Reading
//! stops at the first record that is cut short or fails its checksum (a write torn by a crash:
//! the change was never acknowledged), and [`Log::open`] cuts the file back to the last whole
//! record, so later appends follow good records.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first bytes of every log file.
pub const MAGIC: &[u8; 8] = b"SIAMLOG1";

/// The longest record accepted (a record adds at most a request's images).
pub const MAX_RECORD: usize = 256 << 20;

/// One record framed for the file.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What a log file holds.
#[derive(Debug, Default, PartialEq)]
pub struct Contents {
    /// The whole records' payloads, in order.
    pub records: Vec<Vec<u8>>,
    /// Bytes up to the end of the last whole record (the magic included).
    pub valid: u64,
    /// Bytes after it: a torn or corrupt tail, ignored.
    pub dropped: u64,
}

/// Reads the records of `bytes` (a whole log file).
pub fn parse(bytes: &[u8]) -> Contents {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A log torn while its magic was written holds no record.
        return Contents {
            records: Vec::new(),
            valid: 0,
            dropped: bytes.len() as u64,
        };
    }
    let mut at = MAGIC.len();
    let mut records = Vec::new();
    while bytes.len() - at >= 8 {
        let len_bytes = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&len_bytes);
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        records.push(payload.to_vec());
        at += 8 + len;
    }
    Contents {
        records,
        valid: at as u64,
        dropped: (bytes.len() - at) as u64,
    }
}

/// A log open for appending.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
    len: u64,
    /// A failed append could not be undone: refuse further appends (the next compaction or
    /// restart starts a clean log).
    broken: bool,
}

impl Log {
    /// Creates a new, empty log at `path` (the magic only, synced), replacing any file there.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        Ok(Log {
            path: path.to_path_buf(),
            file,
            len: MAGIC.len() as u64,
            broken: false,
        })
    }

    /// Opens the log at `path` and reads its records; a torn tail is cut off the file (and
    /// counted in [`Contents::dropped`]). A missing file is created empty.
    pub fn open(path: &Path) -> std::io::Result<(Self, Contents)> {
        if !path.exists() {
            return Ok((Self::create(path)?, Contents::default()));
        }
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let contents = parse(&bytes);
        if contents.valid < MAGIC.len() as u64 {
            return Ok((Self::create(path)?, contents));
        }
        if contents.dropped > 0 {
            file.set_len(contents.valid)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(contents.valid))?;
        Ok((
            Log {
                path: path.to_path_buf(),
                file,
                len: contents.valid,
                broken: false,
            },
            contents,
        ))
    }

    /// Appends one record and syncs it to disk: when this returns `Ok` the record survives a
    /// crash. On failure the file is cut back to where it was.
    pub fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other(
                "an earlier write to this log failed and could not be undone",
            ));
        }
        if payload.len() > MAX_RECORD {
            return Err(std::io::Error::other(format!(
                "a record of {} bytes is over the limit of {MAX_RECORD}",
                payload.len()
            )));
        }
        let framed = frame(payload);
        let result = self
            .file
            .write_all(&framed)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += framed.len() as u64;
                Ok(())
            }
            Err(e) => {
                let undo = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(|_| ()));
                if undo.is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cut_of_a_log_reads_as_a_prefix_of_its_records() {
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 3 + 7 * i as usize]).collect();
        let mut bytes = MAGIC.to_vec();
        let mut ends = vec![bytes.len()];
        for p in &payloads {
            bytes.extend(frame(p));
            ends.push(bytes.len());
        }
        for cut in 0..=bytes.len() {
            let c = parse(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count().saturating_sub(1);
            assert_eq!(c.records, payloads[..whole], "cut at {cut}");
            assert_eq!(c.valid + c.dropped, cut as u64);
        }
        // A flipped bit in a record ends the log there.
        let mut bad = bytes.clone();
        bad[ends[2] + 9] ^= 1;
        assert_eq!(parse(&bad).records, payloads[..2]);
    }

    #[test]
    fn opening_cuts_a_torn_tail_and_appends_after_the_good_records() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let mut log = Log::create(&path)?;
        log.append(b"one")?;
        log.append(b"two")?;
        drop(log);
        // A torn third record: its header and half its payload.
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(&frame(b"three, torn")[..12])?;
        drop(f);
        let (mut log, contents) = Log::open(&path)?;
        assert_eq!(contents.records, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(contents.dropped, 12);
        log.append(b"four")?;
        drop(log);
        let (_, contents) = Log::open(&path)?;
        assert_eq!(
            contents.records,
            [b"one".to_vec(), b"two".to_vec(), b"four".to_vec()]
        );
        assert_eq!(contents.dropped, 0);
        Ok(())
    }
}
