//! The inventory of a source: every backup across every store, each copy's verification
//! state (from the ledger in the agent's state), lock, and the 3-2-1 verdict. `list`,
//! the daemon's freshness timer, repair, scrub and prune all start from it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use backup_core::config::{Config, SourceConfig, StoreConfig};
use backup_core::layout;
use backup_core::layout::{DATA_SUFFIX, MANIFEST_SUFFIX, SHA256_SUFFIX};
use backup_core::manifest::{Manifest, SignedManifest};
use backup_core::policy::{self, CopyFact, Verdict};
use backup_core::state::{CopyMark, State};
use backup_core::store::{open_store, Store, StoreError, TEMP_PREFIX};

/// A configured store, opened (or why it could not be).
pub struct OpenStore {
    pub cfg: StoreConfig,
    pub store: Result<Box<dyn Store>, StoreError>,
}

pub fn open_all(cfg: &Config) -> Vec<OpenStore> {
    cfg.stores
        .iter()
        .map(|c| OpenStore {
            cfg: c.clone(),
            store: open_store(c),
        })
        .collect()
}

/// A name and when it was last modified.
pub type Timed = (String, Option<DateTime<Utc>>);
/// A store index and the lock date of the copy there.
/// A store index, the lock date of the copy there, and why the copy is broken (its data
/// object missing or of another size than the manifest records, or no `.sha256`).
type Located = (usize, Option<DateTime<Utc>>, Option<String>);

#[derive(Debug, Clone, Serialize)]
pub struct CopyRow {
    pub store: String,
    /// "verified", "unchecked" (present, not yet checked by this agent), "failed".
    pub status: String,
    pub checked_at: Option<DateTime<Utc>>,
    pub lock_until: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    pub id: String,
    pub finished_at: DateTime<Utc>,
    pub size: u64,
    #[serde(skip)]
    pub manifest: Manifest,
    /// The manifest as stored and checked (its bytes and signature), for repair and scrub.
    #[serde(skip)]
    pub signed: SignedManifest,
    /// One entry per store that holds a complete copy.
    pub copies: Vec<CopyRow>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub source: String,
    /// Oldest first.
    pub backups: Vec<BackupRow>,
    /// Stores that could not be listed, with the reason.
    pub store_errors: BTreeMap<String, String>,
    /// Things found that are not complete backups: reported, never touched by retention.
    pub notes: Vec<String>,
    /// Per store, names under the prefix that are not ours.
    pub foreign: BTreeMap<String, Vec<String>>,
    /// Per store, our data/.sha256 objects without a manifest: (name, modified).
    #[serde(skip)]
    pub orphans: BTreeMap<String, Vec<Timed>>,
    /// The archived binary log (point-in-time recovery), when there is one: filled by
    /// `list` (see `copies::segments::summary`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binlog: Option<serde_json::Value>,
}

impl Inventory {
    pub fn newest(&self) -> Option<&BackupRow> {
        self.backups.last()
    }
    pub fn newest_compliant(&self) -> Option<&BackupRow> {
        self.backups.iter().rev().find(|b| b.verdict.compliant)
    }
}

pub fn ledger_key(prefix: &str, id: &str) -> String {
    layout::backup_key(prefix, id)
}

pub fn mark<'a>(state: &'a State, store: &str, prefix: &str, id: &str) -> Option<&'a CopyMark> {
    state.copies.get(store)?.get(&ledger_key(prefix, id))
}

/// Builds the inventory of one source.
pub fn build(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &State,
    now: DateTime<Utc>,
) -> Inventory {
    let prefix = &src.prefix;
    let trust = crate::seal::crypto::manifest_trust(cfg.encryption.as_ref())
        .map_err(|e| format!("cannot check manifest signatures: {e}"));
    let mut manifests: BTreeMap<String, SignedManifest> = BTreeMap::new();
    // id -> store -> (mark, lock)
    // id -> (store index, lock until)
    let mut present: BTreeMap<String, Vec<Located>> = BTreeMap::new();
    let mut inv = Inventory {
        source: src.name.clone(),
        backups: Vec::new(),
        store_errors: BTreeMap::new(),
        notes: Vec::new(),
        foreign: BTreeMap::new(),
        orphans: BTreeMap::new(),
        binlog: None,
    };
    for (i, os) in stores.iter().enumerate() {
        let store = match &os.store {
            Ok(s) => s.as_ref(),
            Err(e) => {
                inv.store_errors.insert(os.cfg.name.clone(), e.to_string());
                continue;
            }
        };
        let entries = match store.list_entries(prefix) {
            Ok(e) => e,
            Err(e) => {
                inv.store_errors.insert(os.cfg.name.clone(), e.to_string());
                continue;
            }
        };
        let names: BTreeMap<&str, &backup_core::store::Entry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        for e in &entries {
            let n = e.name.as_str();
            if n.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Some(id) = layout::backup_id_of(n) else {
                inv.foreign
                    .entry(os.cfg.name.clone())
                    .or_default()
                    .push(n.to_string());
                continue;
            };
            if !n.ends_with(MANIFEST_SUFFIX) {
                if !names.contains_key(layout::object_name(id, MANIFEST_SUFFIX).as_str()) {
                    inv.orphans
                        .entry(os.cfg.name.clone())
                        .or_default()
                        .push((n.to_string(), e.modified));
                }
                continue;
            }
            let signed = match trust.as_ref().map_err(|e| e.clone()).and_then(|t| {
                backup_core::catalog::read_signed_manifest(store, prefix, id, t)
                    .map_err(|e| e.to_string())
            }) {
                Ok(m) if m.manifest.source != src.name => Err(format!(
                    "{prefix}/{n} is a backup of source {}, not {}; a substituted backup",
                    m.manifest.source, src.name
                )),
                other => other,
            };
            // A copy whose manifest is not trusted, or whose data object is gone or
            // changed size, is a failed copy, never one that silently drops out of the
            // count.
            let (m, broken) = match signed {
                Ok(m) => {
                    let broken = broken_objects(&names, id, &m.manifest);
                    (Some(m), broken)
                }
                Err(e) => (None, Some(e)),
            };
            let lock = if store.immutable() {
                store
                    .stat(&layout::object_key(prefix, id, DATA_SUFFIX))
                    .ok()
                    .flatten()
                    .and_then(|i| i.lock_until)
            } else {
                None
            };
            present
                .entry(id.to_string())
                .or_default()
                .push((i, lock, broken));
            if let Some(m) = m {
                manifests.entry(id.to_string()).or_insert(m);
            }
        }
    }
    for (id, located) in &present {
        if !manifests.contains_key(id) {
            let why: Vec<String> = located
                .iter()
                .map(|(i, _, b)| {
                    format!(
                        "store {}: {}",
                        stores[*i].cfg.name,
                        b.clone().unwrap_or_default()
                    )
                })
                .collect();
            inv.notes.push(format!(
                "backup {id} has no trusted manifest in any store, so it is not counted: {}",
                why.join("; ")
            ));
        }
    }
    for (id, signed) in manifests {
        let m = signed.manifest.clone();
        let mut copies = Vec::new();
        let mut facts = Vec::new();
        for (i, lock, broken) in &present[&id] {
            let os = &stores[*i];
            let mk = mark(state, &os.cfg.name, prefix, &id);
            let (status, verified) = match mk {
                _ if broken.is_some() => ("failed", false),
                Some(k) if k.verified && k.size == m.data.size => ("verified", true),
                Some(k) if !k.verified => ("failed", false),
                _ => ("unchecked", false),
            };
            copies.push(CopyRow {
                store: os.cfg.name.clone(),
                status: status.into(),
                checked_at: mk.map(|k| k.checked_at),
                lock_until: *lock,
                error: broken.clone().or_else(|| mk.and_then(|k| k.error.clone())),
            });
            facts.push(CopyFact {
                store: os.cfg.name.clone(),
                media: os.cfg.media.clone(),
                site: os.cfg.site.clone(),
                verified,
                lock_until: *lock,
            });
        }
        let verdict = policy::evaluate(&cfg.policy, &cfg.agent.site, &facts, now);
        let finished_at = backup_core::catalog::finished_at(&m)
            .or_else(|| layout::id_time(&id))
            .unwrap_or(now);
        inv.backups.push(BackupRow {
            id,
            finished_at,
            size: m.data.size,
            manifest: m,
            signed,
            copies,
            verdict,
        });
    }
    inv.backups.sort_by(|a, b| a.id.cmp(&b.id));
    inv
}

/// Why a copy whose manifest is trusted is still broken: its data object missing or of
/// another size than the manifest records, or its `.sha256` file missing.
fn broken_objects(
    names: &BTreeMap<&str, &backup_core::store::Entry>,
    id: &str,
    m: &Manifest,
) -> Option<String> {
    match names.get(m.data.name.as_str()) {
        None => Some(format!("{} is missing", m.data.name)),
        Some(d) if d.size != m.data.size => Some(format!(
            "{} has {} bytes, the manifest records {}",
            m.data.name, d.size, m.data.size
        )),
        Some(_) if !names.contains_key(layout::object_name(id, SHA256_SUFFIX).as_str()) => Some(
            format!("{} is missing", layout::object_name(id, SHA256_SUFFIX)),
        ),
        Some(_) => None,
    }
}
