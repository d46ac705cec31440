//! What the stores hold: the complete backups of a source. A backup is complete when its
//! manifest exists, parses, and its data object exists with the recorded size.

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
        let mut text = Vec::new();
        if store
            .open(&layout::key(prefix, n))
            .and_then(|mut r| {
                std::io::Read::read_to_end(&mut r, &mut text).map_err(|source| StoreError::Io {
                    store: store.name().into(),
                    action: "reading",
                    key: n.clone(),
                    source,
                })
            })
            .is_err()
        {
            continue;
        }
        let Ok(m) = serde_json::from_slice::<Manifest>(&text) else {
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

/// When a backup finished, from its manifest.
pub fn finished_at(m: &Manifest) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&m.finished_at)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}
