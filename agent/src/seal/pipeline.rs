//! The sealing pipeline: SQL chunks -> gzip -> OpenPGP (signed, encrypted) -> sha256 ->
//! store object, on a blocking thread fed by a bounded channel. The stream is complete
//! only when the dump sent its end marker (an empty chunk), gzip and OpenPGP were
//! finalized, and the store committed the object; anything else drops the object
//! uncommitted, which leaves nothing visible.

use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::seal::crypto::SealingKeys;
use backup_core::checksum::ObjectSum;
use backup_core::store::{ObjectWriter, StoreError};

/// Chunks in flight between the dumper and the sealer (each up to ~1 MiB).
pub const CHANNEL_CHUNKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the dump stopped before its end; the partial object was discarded")]
    Aborted,
    #[error("writing {target}: {source}; check free space and permissions there")]
    Write { target: String, source: io::Error },
    #[error(transparent)]
    Crypto(#[from] crate::seal::crypto::CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the sealing thread failed: {0}")]
    Thread(String),
}

struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Input per gzip member when compressing in parallel: 512 KiB costs nothing in size
/// against 1 MiB (the window is 32 KiB) and halves the buffers in flight.
const MEMBER_BYTES: usize = 512 << 10;

/// Room past MEMBER_BYTES for the last chunk a member's input takes (the dump sends
/// chunks of at most `SqlOutput`'s CHUNK).
const CHUNK_SLACK: usize = crate::source::dump::CHUNK;

/// Compresses what `rx` brings with `threads` threads, as gzip members of ~1 MiB of
/// input each (each carrying its length, see `backup_core::gzip`), and writes them to
/// `out` in order. At most `threads + 1` members are in flight, and their buffers are
/// reused (memory bounded and flat). Returns false when the stream ended without its end
/// marker.
fn compress_parallel(
    rx: &mut mpsc::Receiver<Vec<u8>>,
    out: &mut dyn Write,
    level: u32,
    threads: usize,
) -> io::Result<bool> {
    use backup_core::gzip::MemberCompressor;
    use std::sync::mpsc as smpsc;
    /// Input, the buffer for the member, where to send both back.
    type Done = io::Result<(Vec<u8>, Vec<u8>)>;
    type Job = (Vec<u8>, Vec<u8>, smpsc::SyncSender<Done>);
    MemberCompressor::new(level)?;
    std::thread::scope(|scope| {
        // Dropped when this closure returns, on every path: the workers then stop.
        let (job_tx, job_rx) = smpsc::sync_channel::<Job>(threads);
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            scope.spawn(move || {
                let Ok(mut c) = MemberCompressor::new(level) else {
                    return;
                };
                loop {
                    let job = job_rx.lock().expect("job queue").recv();
                    let Ok((data, mut member, back)) = job else {
                        return;
                    };
                    let r = c.member(&data, &mut member).map(|()| (data, member));
                    let _ = back.send(r);
                }
            });
        }
        let mut pending: std::collections::VecDeque<smpsc::Receiver<Done>> = Default::default();
        let mut free: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut members = 0u64;
        let mut write_next = |pending: &mut std::collections::VecDeque<smpsc::Receiver<Done>>,
                              free: &mut Vec<(Vec<u8>, Vec<u8>)>|
         -> io::Result<()> {
            let r = pending.pop_front().expect("a member in flight");
            let (data, member) = r
                .recv()
                .map_err(|_| io::Error::other("a compression thread died"))??;
            out.write_all(&member)?;
            free.push((data, member));
            Ok(())
        };
        let fresh = || Vec::with_capacity(MEMBER_BYTES + CHUNK_SLACK);
        let mut buf: Vec<u8> = fresh();
        let mut ended = false;
        loop {
            let chunk = rx.blocking_recv();
            let last = match &chunk {
                None => break,
                Some(c) if c.is_empty() => {
                    ended = true;
                    true
                }
                Some(_) => false,
            };
            if let Some(c) = chunk {
                buf.extend_from_slice(&c);
            }
            if buf.len() >= MEMBER_BYTES || (last && (!buf.is_empty() || members == 0)) {
                while pending.len() > threads {
                    write_next(&mut pending, &mut free)?;
                }
                let (mut next, member) = free.pop().unwrap_or_else(|| (fresh(), Vec::new()));
                next.clear();
                let data = std::mem::replace(&mut buf, next);
                let (back_tx, back_rx) = smpsc::sync_channel(1);
                job_tx
                    .send((data, member, back_tx))
                    .map_err(|_| io::Error::other("the compression threads stopped"))?;
                pending.push_back(back_rx);
                members += 1;
            }
            if last {
                break;
            }
        }
        if !ended {
            return Ok(false);
        }
        while !pending.is_empty() {
            write_next(&mut pending, &mut free)?;
        }
        Ok(true)
    })
}

/// Starts the sealing thread writing into `object`. Send SQL chunks on the returned
/// sender, then an empty chunk to finish; dropping the sender without it aborts. With
/// `threads` > 1 the SQL is compressed by that many threads, as independent gzip members
/// written in order.
pub fn spawn_sealer(
    keys: Arc<SealingKeys>,
    source: String,
    level: u32,
    threads: usize,
    object: Box<dyn ObjectWriter>,
    target: String,
) -> (
    mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<Result<ObjectSum, PipelineError>>,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    let handle = tokio::task::spawn_blocking(move || -> Result<ObjectSum, PipelineError> {
        let werr = |source: io::Error| PipelineError::Write {
            target: target.clone(),
            source,
        };
        let mut sink = Hashing {
            inner: BufWriter::with_capacity(1 << 20, object),
            hasher: Sha256::new(),
            bytes: 0,
        };
        if threads > 1 {
            let mut sealer = keys.seal_for(&mut sink, Some(&source))?;
            if !compress_parallel(&mut rx, &mut sealer, level, threads).map_err(werr)? {
                return Err(PipelineError::Aborted);
            }
            sealer.finish()?;
        } else {
            let sealer = keys.seal_for(&mut sink, Some(&source))?;
            let mut gz = GzEncoder::new(sealer, Compression::new(level));
            let mut ended = false;
            while let Some(chunk) = rx.blocking_recv() {
                if chunk.is_empty() {
                    ended = true;
                    break;
                }
                gz.write_all(&chunk).map_err(werr)?;
            }
            if !ended {
                return Err(PipelineError::Aborted);
            }
            let sealer = gz.finish().map_err(werr)?;
            sealer.finish()?;
        }
        sink.flush().map_err(werr)?;
        let Hashing {
            inner,
            hasher,
            bytes,
        } = sink;
        let object = inner.into_inner().map_err(|e| werr(e.into_error()))?;
        object.commit()?;
        Ok(ObjectSum {
            size: bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    });
    (tx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: Vec<Vec<u8>>, end: bool, threads: usize) -> (bool, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
        let feeder = std::thread::spawn(move || {
            for c in chunks {
                tx.blocking_send(c).unwrap();
            }
            if end {
                tx.blocking_send(Vec::new()).unwrap();
            }
        });
        let mut out = Vec::new();
        let ok = compress_parallel(&mut rx, &mut out, 6, threads).unwrap();
        feeder.join().unwrap();
        (ok, out)
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(b), &mut v).unwrap();
        v
    }

    #[test]
    fn parallel_members_decode_in_order_to_the_input() {
        // Chunks of uneven sizes, several MiB in all: many members, in flight at once.
        let mut input = Vec::new();
        let mut chunks = Vec::new();
        for i in 0..300u32 {
            let c: Vec<u8> = format!("INSERT INTO t VALUES ({i}, 'row {i}');\n")
                .repeat(1 + (i as usize * 37) % 900)
                .into_bytes();
            input.extend_from_slice(&c);
            chunks.push(c);
        }
        assert!(input.len() > 4 * MEMBER_BYTES);
        for threads in [2, 3, 8] {
            let (ok, out) = run(chunks.clone(), true, threads);
            assert!(ok);
            assert_eq!(gunzip(&out), input, "{threads} threads");
        }
        // Nothing at all is still one valid (empty) gzip member.
        let (ok, out) = run(Vec::new(), true, 2);
        assert!(ok && !out.is_empty() && gunzip(&out).is_empty());
        // A stream that stops without its end marker is not complete.
        let (ok, _) = run(vec![b"partial".to_vec()], false, 2);
        assert!(!ok);
    }
}
