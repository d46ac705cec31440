//! What the stores hold: the complete backups of a source. A backup is complete when its
//! manifest exists, carries a good signature by a trusted agent key, names the backup its
//! object name says, and its data object exists with the recorded size.

use std::io::Read;

use chrono::{DateTime, Utc};

use crate::layout;
use crate::layout::{DATA_SUFFIX, MANIFEST_SUFFIX, SIGNATURE_SUFFIX};
use crate::manifest::{Manifest, SegmentManifest, SignedManifest};
use crate::signature::{SignatureError, Trust, MAX_SIGNATURE_BYTES};
use crate::store::{Store, StoreError};

/// The complete backups of a source in one store, and why the others are not.
#[derive(Debug, Default)]
pub struct Listing {
    /// Oldest first.
    pub backups: Vec<Manifest>,
    /// (backup id, what is wrong): a manifest that is not trusted, or a data object that
    /// is missing or of another size.
    pub problems: Vec<(String, String)>,
}

/// Complete backups of `prefix` in `store`, oldest first, with the problems found.
pub fn complete_backups(
    store: &dyn Store,
    prefix: &str,
    trust: &Trust,
) -> Result<Listing, StoreError> {
    let names = store.list(prefix)?;
    let mut out = Listing::default();
    for n in &names {
        let Some(id) = n.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        if !layout::is_backup_id(id) {
            continue;
        }
        let m = match read_signed_manifest(store, prefix, id, trust) {
            Ok(m) => m.manifest,
            Err(e) => {
                out.problems.push((id.to_string(), e.to_string()));
                continue;
            }
        };
        let data = layout::key(prefix, &m.data.name);
        match store.size(&data)? {
            Some(s) if s == m.data.size => out.backups.push(m),
            Some(s) => out.problems.push((
                id.to_string(),
                format!("{data} has {s} bytes, the manifest records {}", m.data.size),
            )),
            None => out
                .problems
                .push((id.to_string(), format!("{data} is missing"))),
        }
    }
    out.backups.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(out)
}

/// A manifest larger than this is not one of ours (they are a few KiB); reading stops.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Why a manifest could not be read or is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {key}: {source}")]
    Read { key: String, source: std::io::Error },
    #[error("{key}: larger than {limit} bytes, not one of ours")]
    TooLarge { key: String, limit: u64 },
    #[error("{key}: not a valid manifest: {source}")]
    Invalid {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: the agent's signature {key}.sig is missing; an unsigned manifest is not trusted (another store's copy, or a repair, replaces it)")]
    Unsigned { key: String },
    #[error("{key}: bad signature: {source}; the manifest was changed or is not from a trusted agent (add the other agent's certificate to the trusted ones if it is yours)")]
    BadSignature { key: String, source: SignatureError },
    #[error("{key}: {what}; a renamed or substituted backup is refused")]
    Substituted { key: String, what: String },
}

fn read_capped(store: &dyn Store, key: &str, limit: u64) -> Result<Vec<u8>, ManifestError> {
    let mut text = Vec::new();
    store
        .open(key)?
        .take(limit + 1)
        .read_to_end(&mut text)
        .map_err(|source| ManifestError::Read {
            key: key.into(),
            source,
        })?;
    if text.len() as u64 > limit {
        return Err(ManifestError::TooLarge {
            key: key.into(),
            limit,
        });
    }
    Ok(text)
}

/// Reads the manifest of backup `id` under `prefix` and its signature, and checks them
/// (see [`check_signed`]).
pub fn read_signed_manifest(
    store: &dyn Store,
    prefix: &str,
    id: &str,
    trust: &Trust,
) -> Result<SignedManifest, ManifestError> {
    let key = layout::object_key(prefix, id, MANIFEST_SUFFIX);
    let sig_key = layout::object_key(prefix, id, SIGNATURE_SUFFIX);
    let (bytes, signature) = read_with_signature(store, &key, &sig_key)?;
    check_signed(&key, id, bytes, signature, trust)
}

/// A manifest's bytes and its detached signature's, both bounded; no signature object is
/// [`ManifestError::Unsigned`].
fn read_with_signature(
    store: &dyn Store,
    key: &str,
    sig_key: &str,
) -> Result<(Vec<u8>, Vec<u8>), ManifestError> {
    let bytes = read_capped(store, key, MAX_MANIFEST_BYTES)?;
    match read_capped(store, sig_key, MAX_SIGNATURE_BYTES) {
        Ok(s) => Ok((bytes, s)),
        Err(ManifestError::Store(e)) if e.is_not_found() => {
            Err(ManifestError::Unsigned { key: key.into() })
        }
        Err(e) => Err(e),
    }
}

/// Checks a manifest's bytes against its detached signature (a trusted agent key), parses
/// them, and checks that the manifest is the one of backup `id` (its id, its data object's
/// name) and that its `signer` is the key that signed it.
pub fn check_signed(
    key: &str,
    id: &str,
    bytes: Vec<u8>,
    signature: Vec<u8>,
    trust: &Trust,
) -> Result<SignedManifest, ManifestError> {
    let signed_by = trust
        .verify_detached(&bytes, &signature)
        .map_err(|source| ManifestError::BadSignature {
            key: key.into(),
            source,
        })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Invalid {
            key: key.into(),
            source,
        })?;
    let what = if manifest.backup_id != id {
        Some(format!(
            "it is the manifest of backup {}",
            manifest.backup_id
        ))
    } else if manifest.data.name != layout::object_name(id, DATA_SUFFIX) {
        Some(format!("it names the data object {}", manifest.data.name))
    } else if manifest.signer != signed_by {
        Some(format!(
            "it says the data was signed by {}, but {signed_by} signed the manifest",
            manifest.signer
        ))
    } else {
        None
    };
    if let Some(what) = what {
        return Err(ManifestError::Substituted {
            key: key.into(),
            what,
        });
    }
    Ok(SignedManifest {
        manifest,
        bytes,
        signature,
        signed_by,
    })
}

/// The binary log segments of a source in one store whose manifests are trusted, and
/// why the others are not.
#[derive(Debug, Default)]
pub struct SegmentListing {
    /// By segment id (roughly by time; the chain's order is the positions').
    pub segments: Vec<SegmentManifest>,
    /// (segment id, what is wrong).
    pub problems: Vec<(String, String)>,
}

/// Whether a name listed under a binlog prefix is a segment id.
fn is_segment_id(id: &str) -> bool {
    id.starts_with("binlog_") && !id.contains('/')
}

/// The segments of `prefix` in `store` (under `layout::binlog_prefix`) whose manifest is
/// signed by a trusted key, names the segment its object name says, and whose data object
/// exists with the recorded size.
pub fn complete_segments(
    store: &dyn Store,
    prefix: &str,
    trust: &Trust,
) -> Result<SegmentListing, StoreError> {
    let dir = layout::binlog_prefix(prefix);
    let names = store.list(&dir)?;
    let mut out = SegmentListing::default();
    for n in &names {
        let Some(id) = n.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        if !is_segment_id(id) {
            continue;
        }
        let m = match read_signed_segment(store, prefix, id, trust) {
            Ok(m) => m,
            Err(e) => {
                out.problems.push((id.to_string(), e.to_string()));
                continue;
            }
        };
        let data = layout::segment_key(prefix, id, layout::SEGMENT_DATA_SUFFIX);
        match store.size(&data)? {
            Some(s) if s == m.data.size => out.segments.push(m),
            Some(s) => out.problems.push((
                id.to_string(),
                format!("{data} has {s} bytes, the manifest records {}", m.data.size),
            )),
            None => out
                .problems
                .push((id.to_string(), format!("{data} is missing"))),
        }
    }
    out.segments.sort_by(|a, b| a.segment_id.cmp(&b.segment_id));
    Ok(out)
}

/// Reads segment `id`'s manifest and signature and checks them like a backup's.
pub fn read_signed_segment(
    store: &dyn Store,
    prefix: &str,
    id: &str,
    trust: &Trust,
) -> Result<SegmentManifest, ManifestError> {
    let key = layout::segment_key(prefix, id, MANIFEST_SUFFIX);
    let sig_key = layout::segment_key(prefix, id, SIGNATURE_SUFFIX);
    let (bytes, signature) = read_with_signature(store, &key, &sig_key)?;
    check_signed_segment(&key, id, &bytes, &signature, trust)
}

/// Checks a segment manifest against its detached signature and its name.
pub fn check_signed_segment(
    key: &str,
    id: &str,
    bytes: &[u8],
    signature: &[u8],
    trust: &Trust,
) -> Result<SegmentManifest, ManifestError> {
    let signed_by =
        trust
            .verify_detached(bytes, signature)
            .map_err(|source| ManifestError::BadSignature {
                key: key.into(),
                source,
            })?;
    let m: SegmentManifest =
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Invalid {
            key: key.into(),
            source,
        })?;
    let what = if m.segment_id != id {
        Some(format!("it is the manifest of segment {}", m.segment_id))
    } else if m.data.name != layout::object_name(id, layout::SEGMENT_DATA_SUFFIX) {
        Some(format!("it names the data object {}", m.data.name))
    } else if m.signer != signed_by {
        Some(format!(
            "it says the data was signed by {}, but {signed_by} signed the manifest",
            m.signer
        ))
    } else {
        None
    };
    match what {
        Some(what) => Err(ManifestError::Substituted {
            key: key.into(),
            what,
        }),
        None => Ok(m),
    }
}

/// The chain of segments that continues a position `from` (a backup's snapshot GTID, or
/// where archiving stands): the segment holding the first transaction after it, then
/// each one that starts exactly where the previous one ended, up to the end of the
/// archive or the first gap. Segments read from different Galera nodes chain alike: only
/// GTIDs count, never file names or positions.
pub fn chain_after<'a>(
    all: &[&'a SegmentManifest],
    from: &crate::binlog::GtidPos,
) -> Vec<&'a SegmentManifest> {
    use crate::binlog::GtidPos;
    let pos_of = |s: &str| GtidPos::parse(s).unwrap_or_default();
    let first = all
        .iter()
        .find(|m| from.continued_by(&pos_of(&m.previous_gtid), &pos_of(&m.end_position)));
    let mut chain = Vec::new();
    let Some(mut cur) = first.copied() else {
        return chain;
    };
    loop {
        chain.push(cur);
        let end = pos_of(&cur.end_position);
        match all.iter().find(|m| pos_of(&m.previous_gtid) == end) {
            // A crafted cycle cannot make this endless.
            Some(n) if chain.len() <= all.len() => cur = n,
            _ => return chain,
        }
    }
}

/// When a backup finished, from its manifest.
pub fn finished_at(m: &Manifest) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&m.finished_at)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}
