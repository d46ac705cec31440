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

/// Starts the sealing thread writing into `object`. Send SQL chunks on the returned
/// sender, then an empty chunk to finish; dropping the sender without it aborts.
pub fn spawn_sealer(
    keys: Arc<SealingKeys>,
    level: u32,
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
        {
            let sealer = keys.seal(&mut sink)?;
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
