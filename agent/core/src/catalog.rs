//! What the stores hold: the complete backups of a source. A backup is complete when its
//! manifest exists, parses, and its data object exists with the recorded size.

use std::io::Read;

use chrono::{DateTime, Utc};

use crate::layout;
use crate::layout::MANIFEST_SUFFIX;
use crate::manifest::Manifest;
use crate::store::{Store, StoreError};

/// Complete backups of `prefix` in `store`, oldest first.
pub fn complete_backups(store: &dyn Store, prefix: &str) -> Result<Vec<Manifest>, StoreError> {
    let names = store.list(prefix)?;
    let mut out = Vec::new();
    for n in &names {
        let Some(id) = n.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        if !layout::is_backup_id(id) {
            continue;
        }
        let Ok(m) = read_manifest(store, &layout::key(prefix, n)) else {
            continue;
        };
        if m.backup_id != id || !names.contains(&m.data.name) {
            continue;
        }
        if store.size(&layout::key(prefix, &m.data.name))? != Some(m.data.size) {
            continue;
        }
        out.push(m);
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(out)
}

/// A manifest larger than this is not one of ours (they are a few KiB); reading stops.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {key}: {source}")]
    Read { key: String, source: std::io::Error },
    #[error("{key}: larger than {MAX_MANIFEST_BYTES} bytes, not a manifest")]
    TooLarge { key: String },
    #[error("{key}: not a valid manifest: {source}")]
    Invalid {
        key: String,
        source: serde_json::Error,
    },
}

/// Reads and parses the manifest at `key` (at most [`MAX_MANIFEST_BYTES`]).
pub fn read_manifest(store: &dyn Store, key: &str) -> Result<Manifest, ManifestError> {
    let mut text = Vec::new();
    store
        .open(key)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| ManifestError::Read {
            key: key.into(),
            source,
        })?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { key: key.into() });
    }
    serde_json::from_slice(&text).map_err(|source| ManifestError::Invalid {
        key: key.into(),
        source,
    })
}

/// When a backup finished, from its manifest.
pub fn finished_at(m: &Manifest) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&m.finished_at)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}
