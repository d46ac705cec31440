//! Point-in-time recovery, the writing side: a binary log segment sealed exactly like a
//! dump (gzip, OpenPGP to the DPO's keys, signed by the agent), stored with its `.sha256`,
//! the detached signature of its manifest and the manifest, written last, in every store.
//! Each copy is read back and hashed before its manifest is written; a store that fails
//! drops out and what it got of the segment is removed. A segment is bounded (its size
//! limit), so it is sealed in memory: no plaintext reaches a disk.

use std::io::{Read, Write};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::copies::inventory::OpenStore;
use crate::seal::crypto::{CryptoError, SealingKeys};
use crate::source::binlog::Segment;
use backup_core::checksum::{self, hash_stream};
use backup_core::config::{NodeConfig, SourceConfig};
use backup_core::layout::{
    self, MANIFEST_SUFFIX, SEGMENT_DATA_SUFFIX, SEGMENT_SHA256_SUFFIX, SIGNATURE_SUFFIX,
};
use backup_core::manifest::{DataObject, SegmentManifest, SEGMENT_MANIFEST_VERSION};
use backup_core::store::{put_bytes, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("source {source_name}: sealing segment {segment}: {err}")]
    Seal {
        source_name: String,
        segment: String,
        err: CryptoError,
    },
    #[error("source {source_name}: segment {segment} is in no store: {}", failures.iter().map(|(s, e)| format!("store {s}: {e}")).collect::<Vec<_>>().join("; "))]
    NoCopy {
        source_name: String,
        segment: String,
        failures: Vec<(String, String)>,
    },
}

/// Where a segment's events came from.
pub struct SegmentFrom<'a> {
    pub source: &'a SourceConfig,
    pub node: &'a NodeConfig,
}

/// A stored segment: its manifest, the stores that hold a verified copy, the ones that
/// failed.
#[derive(Debug)]
pub struct Archived {
    pub manifest: SegmentManifest,
    pub stores: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Gzip then OpenPGP (signed, encrypted to the DPO), in memory.
pub fn seal_bytes(keys: &SealingKeys, level: u32, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let io = |e: std::io::Error| CryptoError::Seal(e.to_string());
    let mut out = Vec::with_capacity(data.len() / 3 + 4096);
    {
        let sealer = keys.seal(&mut out)?;
        let mut gz = GzEncoder::new(sealer, Compression::new(level));
        gz.write_all(data).map_err(io)?;
        gz.finish().map_err(io)?.finish()?;
    }
    Ok(out)
}

fn utc(t: Option<u32>) -> String {
    chrono::DateTime::from_timestamp(i64::from(t.unwrap_or(0)), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Seals `seg` and stores it in every store that can take it.
pub fn archive_segment(
    stores: &[OpenStore],
    keys: &SealingKeys,
    level: u32,
    from: &SegmentFrom<'_>,
    seg: &Segment,
) -> Result<Archived, ArchiveError> {
    let sname = from.source.name.clone();
    let first = seg.first_gtid.clone().unwrap_or_default();
    let first_seq = first
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let first_time = chrono::DateTime::from_timestamp(i64::from(seg.first_time.unwrap_or(0)), 0)
        .unwrap_or_default();
    let id = layout::segment_id(first_time, first_seq);
    let seal_err = |err| ArchiveError::Seal {
        source_name: sname.clone(),
        segment: id.clone(),
        err,
    };
    let sealed = seal_bytes(keys, level, &seg.bytes).map_err(seal_err)?;
    let sum = hash_stream(&sealed[..]).expect("hashing memory");
    let manifest = SegmentManifest {
        format_version: SEGMENT_MANIFEST_VERSION,
        segment_id: id.clone(),
        source: sname.clone(),
        node: from.node.name.clone(),
        address: from.node.endpoint.to_string(),
        server_id: seg.server_id.unwrap_or(0),
        previous_gtid: seg.previous_position.clone(),
        first_gtid: first,
        last_gtid: seg.last_gtid.clone().unwrap_or_default(),
        first_event_at: utc(seg.first_time),
        last_event_at: utc(seg.last_time),
        transactions: seg.transactions,
        binlog_bytes: seg.bytes.len() as u64,
        data: DataObject {
            name: format!("{id}{SEGMENT_DATA_SUFFIX}"),
            size: sum.size,
            sha256: sum.sha256.clone(),
            compression: "gzip".into(),
            encryption: "openpgp-seipdv1-aes256".into(),
        },
        dpo_recipients: keys.recipient_fingerprints(),
        signer: keys.signer_fingerprint().to_string(),
        tool_version: format!("backup-agent {}", env!("CARGO_PKG_VERSION")),
        archived_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    let signature = keys.sign_detached(&bytes).map_err(seal_err)?;
    let mut out = Archived {
        manifest,
        stores: Vec::new(),
        failed: Vec::new(),
    };
    let prefix = &from.source.prefix;
    let sha_line = checksum::sha256_line(&sum.sha256, &out.manifest.data.name);
    for os in stores {
        let store = match &os.store {
            Ok(s) => s.as_ref(),
            Err(e) => {
                out.failed.push((os.cfg.name.clone(), e.to_string()));
                continue;
            }
        };
        let objects: [(&str, &[u8]); 4] = [
            (SEGMENT_DATA_SUFFIX, &sealed),
            (SEGMENT_SHA256_SUFFIX, sha_line.as_bytes()),
            (SIGNATURE_SUFFIX, &signature),
            (MANIFEST_SUFFIX, &bytes),
        ];
        let mut written = Vec::new();
        match store_one(store, prefix, &id, &objects, &sum.sha256, &mut written) {
            Ok(()) => out.stores.push(os.cfg.name.clone()),
            Err(e) => {
                // Only what this attempt wrote: an existing segment is never touched.
                for key in written.iter().rev() {
                    let _ = store.remove(key);
                }
                let removed = if written.is_empty() {
                    ""
                } else {
                    "; what was written of it was removed"
                };
                out.failed
                    .push((os.cfg.name.clone(), format!("{e}{removed}")));
            }
        }
    }
    if out.stores.is_empty() {
        return Err(ArchiveError::NoCopy {
            source_name: sname,
            segment: id,
            failures: out.failed,
        });
    }
    Ok(out)
}

/// Writes a segment's objects to one store in order, the data read back and hashed
/// before the rest; refuses to overwrite anything.
fn store_one(
    store: &dyn Store,
    prefix: &str,
    id: &str,
    objects: &[(&str, &[u8]); 4],
    sha256: &str,
    written: &mut Vec<String>,
) -> Result<(), StoreError> {
    let key = |suffix: &str| layout::segment_key(prefix, id, suffix);
    for (suffix, _) in objects {
        if store.exists(&key(suffix))? {
            return Err(StoreError::Exists {
                store: store.name().into(),
                key: key(suffix),
            });
        }
    }
    let (data_suffix, data) = objects[0];
    put_bytes(store, &key(data_suffix), data)?;
    written.push(key(data_suffix));
    let got = store.open(&key(data_suffix)).and_then(|r| {
        hash_stream(r.take(data.len() as u64 + 1)).map_err(|source| StoreError::Io {
            store: store.name().into(),
            action: "reading back",
            key: key(data_suffix),
            source,
        })
    })?;
    if got.sha256 != sha256 || got.size != data.len() as u64 {
        return Err(StoreError::Remote {
            store: store.name().into(),
            action: "reading back",
            key: key(data_suffix),
            message: format!(
                "the stored copy has {} bytes sha256 {}, not what was written",
                got.size, got.sha256
            ),
        });
    }
    for (suffix, bytes) in &objects[1..] {
        put_bytes(store, &key(suffix), bytes)?;
        written.push(key(suffix));
    }
    Ok(())
}
