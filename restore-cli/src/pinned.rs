//! Bytes proven identical to those verified. The checksum pass reads the backup file
//! once, hashing it whole (against its `.sha256` file and manifest) and each 1 MiB block
//! of it; every later pass (verification, replay, `--decrypt`) reads the file through a
//! [`Checker`], which serves a block only after its hash matches. A file changed in place
//! or replaced after the checksum pass is refused at the first changed block, before any
//! byte of it is decrypted: nothing unverified reaches a server or an output file.
//!
//! Memory: one block of buffer and 32 bytes per MiB of file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use backup_core::gzip::read_full;
use sha2::{Digest, Sha256};

pub const BLOCK: usize = 1 << 20;

/// The whole file's size and sha256, and the sha256 of each of its blocks.
#[derive(Debug, Clone)]
pub struct Pins {
    pub size: u64,
    pub sha256: String,
    blocks: Arc<Vec<[u8; 32]>>,
}

/// Reads `path` to its end, hashing it whole and block by block.
pub fn pin_file(path: &Path) -> io::Result<Pins> {
    let mut f = File::open(path)?;
    let mut whole = Sha256::new();
    let mut blocks = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        blocks.push(Sha256::digest(&buf[..n]).into());
        size += n as u64;
        crate::progress::add(n as u64);
        if n < BLOCK {
            break;
        }
    }
    Ok(Pins {
        size,
        sha256: hex::encode(whole.finalize()),
        blocks: Arc::new(blocks),
    })
}

/// Reads a pinned file, serving each block only once it matches its pin.
pub struct Checker {
    file: File,
    pins: Pins,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    next_block: usize,
    ended: bool,
}

impl Checker {
    pub fn open(path: &Path, pins: &Pins) -> io::Result<Checker> {
        Ok(Checker {
            file: File::open(path)?,
            pins: pins.clone(),
            buf: vec![0u8; BLOCK],
            pos: 0,
            len: 0,
            next_block: 0,
            ended: false,
        })
    }

    fn changed(&self, what: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the backup file changed after it was verified ({what}); nothing from that point on was used: take a fresh copy and restore again"),
        )
    }

    fn fill(&mut self) -> io::Result<()> {
        let n = read_full(&mut self.file, &mut self.buf)?;
        let i = self.next_block;
        let offset = i as u64 * BLOCK as u64;
        match self.pins.blocks.get(i) {
            None if n == 0 => {
                self.ended = true;
                self.len = 0;
            }
            None => return Err(self.changed(format!("it grew past {offset} bytes"))),
            Some(pin) => {
                let expected_len = (self.pins.size - offset).min(BLOCK as u64) as usize;
                if n != expected_len || Sha256::digest(&self.buf[..n]).as_slice() != pin {
                    return Err(self.changed(format!("block {i} at offset {offset} differs")));
                }
                self.len = n;
                self.next_block += 1;
            }
        }
        self.pos = 0;
        Ok(())
    }
}

impl Read for Checker {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            if self.ended {
                return Ok(0);
            }
            self.fill()?;
            if self.ended {
                return Ok(0);
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        crate::progress::add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn file_of(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 977) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        (d, p, data)
    }

    fn read_all(c: &mut Checker) -> (Vec<u8>, io::Result<()>) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 300_000];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[test]
    fn an_unchanged_file_reads_back_whole() {
        for len in [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 5] {
            let (_d, p, data) = file_of(len);
            let pins = pin_file(&p).unwrap();
            assert_eq!(pins.size, len as u64);
            assert_eq!(pins.sha256, hex::encode(Sha256::digest(&data)));
            let (got, r) = read_all(&mut Checker::open(&p, &pins).unwrap());
            r.unwrap();
            assert_eq!(got, data);
        }
    }

    #[test]
    fn a_change_in_place_stops_before_the_changed_block() {
        let (_d, p, data) = file_of(4 * BLOCK + 10);
        let pins = pin_file(&p).unwrap();
        // Same inode, one byte of block 2 changed.
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(2 * BLOCK as u64 + 17)).unwrap();
        f.write_all(&[data[2 * BLOCK + 17] ^ 1]).unwrap();
        drop(f);
        let (got, r) = read_all(&mut Checker::open(&p, &pins).unwrap());
        let e = r.unwrap_err();
        assert!(
            e.to_string().contains("block 2 at offset 2097152 differs"),
            "{e}"
        );
        assert_eq!(got, data[..2 * BLOCK], "only the verified blocks before it");
    }

    #[test]
    fn truncation_growth_and_replacement_are_refused() {
        let (_d, p, data) = file_of(2 * BLOCK + 3);
        let pins = pin_file(&p).unwrap();
        std::fs::write(&p, &data[..2 * BLOCK]).unwrap();
        assert!(read_all(&mut Checker::open(&p, &pins).unwrap()).1.is_err());
        let mut longer = data.clone();
        longer.extend_from_slice(&[0; BLOCK]);
        std::fs::write(&p, &longer).unwrap();
        let (got, r) = read_all(&mut Checker::open(&p, &pins).unwrap());
        assert!(r.unwrap_err().to_string().contains("block 2 at offset"));
        assert_eq!(got.len(), 2 * BLOCK);
        // Grown at a block boundary: every pinned block matches, then more bytes come.
        let (_d2, q, whole) = file_of(2 * BLOCK);
        let pins = pin_file(&q).unwrap();
        let mut grown = whole.clone();
        grown.push(0);
        std::fs::write(&q, &grown).unwrap();
        let (got, r) = read_all(&mut Checker::open(&q, &pins).unwrap());
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("grew past 2097152 bytes"));
        assert_eq!(got, whole);
        // Another file renamed over the path.
        let other = p.with_file_name("g");
        std::fs::write(&other, vec![1u8; 2 * BLOCK + 3]).unwrap();
        std::fs::rename(&other, &p).unwrap();
        let (got, r) = read_all(&mut Checker::open(&p, &pins).unwrap());
        assert!(r.is_err());
        assert!(got.is_empty());
    }
}
