//! Upkeep of the archived binary log segments of a source, like the backups': every
//! segment with the stores that hold a good copy of it (its manifest signed by a trusted
//! key and identical to the other stores' bytes, its data hashing to what the manifest
//! records, its `.sha256` naming the same digest), its 3-2-1 verdict, and repair (a
//! missing or broken copy replaced byte for byte from a good one, never re-signed).
//! Everything here blocks.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::copies::inventory::OpenStore;
use backup_core::checksum::{self, hash_stream};
use backup_core::config::{Config, SourceConfig};
use backup_core::layout::{
    self, MANIFEST_SUFFIX, SEGMENT_DATA_SUFFIX, SEGMENT_SHA256_SUFFIX, SIGNATURE_SUFFIX,
};
use backup_core::manifest::SegmentManifest;
use backup_core::policy::{self, CopyFact, Verdict};
use backup_core::signature::MAX_SIGNATURE_BYTES;
use backup_core::store::{put_bytes, Store};

/// One store's copy of a segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegCopy {
    pub store: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// One segment, as every store holds it.
#[derive(Debug, Clone, Serialize)]
pub struct SegRow {
    pub id: String,
    #[serde(skip)]
    pub manifest: SegmentManifest,
    /// The manifest's bytes and signature, as stored (copied unchanged by repair).
    #[serde(skip)]
    bytes: Vec<u8>,
    #[serde(skip)]
    signature: Vec<u8>,
    pub copies: Vec<SegCopy>,
    pub verdict: Verdict,
}

fn read_capped(store: &dyn Store, key: &str, limit: u64) -> Result<Vec<u8>, String> {
    let mut b = Vec::new();
    store
        .open(key)
        .map_err(|e| e.to_string())?
        .take(limit + 1)
        .read_to_end(&mut b)
        .map_err(|e| format!("reading {key}: {e}"))?;
    if b.len() as u64 > limit {
        return Err(format!("{key}: larger than {limit} bytes, not one of ours"));
    }
    Ok(b)
}

/// Checks one copy's data and `.sha256` against the manifest (reads the data when
/// `hash`, else only its size).
fn check_data(
    store: &dyn Store,
    prefix: &str,
    m: &SegmentManifest,
    hash: bool,
) -> Result<(), String> {
    let key = layout::segment_key(prefix, &m.segment_id, SEGMENT_DATA_SUFFIX);
    if !hash {
        return match store.size(&key).map_err(|e| e.to_string())? {
            Some(s) if s == m.data.size => Ok(()),
            Some(s) => Err(format!(
                "{key} has {s} bytes, the manifest records {}",
                m.data.size
            )),
            None => Err(format!("{key} is missing")),
        };
    }
    let got = store.open(&key).map_err(|e| e.to_string()).and_then(|r| {
        hash_stream(r.take(m.data.size + 1)).map_err(|e| format!("reading {key}: {e}"))
    })?;
    if got.sha256 != m.data.sha256 || got.size != m.data.size {
        return Err(format!(
            "{key} has {} bytes sha256 {}, the manifest records {} bytes sha256 {}",
            got.size, got.sha256, m.data.size, m.data.sha256
        ));
    }
    let sha_key = layout::segment_key(prefix, &m.segment_id, SEGMENT_SHA256_SUFFIX);
    let text = read_capped(store, &sha_key, 4096)?;
    let name = layout::object_name(&m.segment_id, SEGMENT_DATA_SUFFIX);
    match checksum::parse_sha256_line(&String::from_utf8_lossy(&text), &name) {
        Some(d) if d == m.data.sha256 => Ok(()),
        _ => Err(format!(
            "{sha_key} does not name the digest the manifest records"
        )),
    }
}

/// A store's manifest of a segment (parsed, its bytes, its signature), or why not.
type Found = Result<(SegmentManifest, Vec<u8>, Vec<u8>), String>;

/// Every segment of `src` in any store, with its copies checked (hashed when `hash`).
/// Problems that are not tied to a segment a good copy exists of are returned apart.
pub fn inventory(
    cfg: &Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    hash: bool,
    now: DateTime<Utc>,
) -> (Vec<SegRow>, Vec<String>) {
    let Ok(trust) = crate::seal::crypto::manifest_trust(cfg.encryption.as_ref()) else {
        return (
            Vec::new(),
            vec!["cannot load the trusted certificates".into()],
        );
    };
    // Per id: per store, the manifest bytes and signature, or why there is none.
    let mut found: BTreeMap<String, Vec<(String, Found)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for os in stores {
        let Ok(store) = os.store.as_ref() else {
            continue;
        };
        let names = match store.list(&layout::binlog_prefix(&src.prefix)) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("store {}: listing segments: {e}", os.cfg.name));
                continue;
            }
        };
        for n in names {
            let Some(id) = n.strip_suffix(MANIFEST_SUFFIX) else {
                continue;
            };
            if !id.starts_with("binlog_") {
                continue;
            }
            let key = layout::segment_key(&src.prefix, id, MANIFEST_SUFFIX);
            let got = read_capped(
                store.as_ref(),
                &key,
                backup_core::catalog::MAX_MANIFEST_BYTES,
            )
            .and_then(|bytes| {
                let sig = read_capped(
                    store.as_ref(),
                    &layout::segment_key(&src.prefix, id, SIGNATURE_SUFFIX),
                    MAX_SIGNATURE_BYTES,
                )?;
                let m = backup_core::catalog::check_signed_segment(&key, id, &bytes, &sig, &trust)
                    .map_err(|e| e.to_string())?;
                Ok((m, bytes, sig))
            });
            found
                .entry(id.to_string())
                .or_default()
                .push((os.cfg.name.clone(), got));
        }
    }
    let mut rows = Vec::new();
    for (id, per_store) in found {
        let Some((m, bytes, sig)) = per_store.iter().find_map(|(_, r)| r.as_ref().ok()).cloned()
        else {
            for (st, r) in &per_store {
                if let Err(e) = r {
                    problems.push(format!("store {st}: segment {id}: {e}"));
                }
            }
            continue;
        };
        let mut copies = Vec::new();
        let mut facts = Vec::new();
        for os in stores {
            let here = per_store.iter().find(|(s, _)| *s == os.cfg.name);
            let result = match (here, os.store.as_ref()) {
                (None, _) => continue,
                (Some(_), Err(e)) => Err(e.to_string()),
                (Some((_, Err(e))), _) => Err(e.clone()),
                (Some((_, Ok((_, b, _)))), _) if *b != bytes => {
                    Err("its manifest differs from the other stores' copy".into())
                }
                (Some(_), Ok(store)) => check_data(store.as_ref(), &src.prefix, &m, hash),
            };
            facts.push(CopyFact {
                store: os.cfg.name.clone(),
                media: os.cfg.media.clone(),
                site: os.cfg.site.clone(),
                verified: result.is_ok(),
                lock_until: None,
            });
            copies.push(SegCopy {
                store: os.cfg.name.clone(),
                ok: result.is_ok(),
                error: result.err(),
            });
        }
        let verdict = policy::evaluate(&cfg.policy, &cfg.agent.site, &facts, now);
        rows.push(SegRow {
            id,
            manifest: m,
            bytes,
            signature: sig,
            copies,
            verdict,
        });
    }
    (rows, problems)
}

/// Copies each segment that has a good copy to every store that lacks one (a broken copy
/// is removed first). Returns (copied, failed) lines.
pub fn repair(
    src: &SourceConfig,
    stores: &[OpenStore],
    rows: &[SegRow],
) -> (Vec<String>, Vec<String>) {
    copy_where(src, stores, rows, |_, _| true)
}

/// The daemon's share of the cluster's archive: segments another agent (`agent` in the
/// manifest, not `me`) archived are copied to this agent's stores that have no object of
/// them at all, as its backups are. A broken or missing copy of its own is left to
/// `repair` (and alerted).
pub fn copy_from_peers(
    src: &SourceConfig,
    stores: &[OpenStore],
    rows: &[SegRow],
    me: &str,
) -> (Vec<String>, Vec<String>) {
    copy_where(src, stores, rows, |r, store| {
        r.manifest.agent.as_deref().is_some_and(|a| a != me)
            && !r.copies.iter().any(|c| c.store == store)
    })
}

fn copy_where(
    src: &SourceConfig,
    stores: &[OpenStore],
    rows: &[SegRow],
    wanted: impl Fn(&SegRow, &str) -> bool,
) -> (Vec<String>, Vec<String>) {
    let (mut copied, mut failed) = (Vec::new(), Vec::new());
    for r in rows {
        let Some(from) = r
            .copies
            .iter()
            .filter(|c| c.ok)
            .find_map(|c| stores.iter().find(|s| s.cfg.name == c.store))
            .and_then(|s| s.store.as_ref().ok())
        else {
            continue;
        };
        for os in stores {
            let Ok(to) = os.store.as_ref() else { continue };
            if r.copies.iter().any(|c| c.store == os.cfg.name && c.ok) || !wanted(r, &os.cfg.name) {
                continue;
            }
            match copy_segment(from.as_ref(), to.as_ref(), &src.prefix, r) {
                Ok(()) => {
                    tracing::info!(event = "segment_repaired", source = %src.name, segment = %r.id, from = %from.name(), to = %os.cfg.name);
                    copied.push(format!(
                        "segment {} -> {} (from {})",
                        r.id,
                        os.cfg.name,
                        from.name()
                    ));
                }
                Err(e) => failed.push(format!("segment {} -> {}: {e}", r.id, os.cfg.name)),
            }
        }
    }
    (copied, failed)
}

fn copy_segment(from: &dyn Store, to: &dyn Store, prefix: &str, r: &SegRow) -> Result<(), String> {
    let m = &r.manifest;
    let key = |suffix: &str| layout::segment_key(prefix, &r.id, suffix);
    // A broken copy goes, manifest first.
    for suffix in layout::SEGMENT_SUFFIXES.iter().rev() {
        if to.exists(&key(suffix)).map_err(|e| e.to_string())? {
            to.remove(&key(suffix)).map_err(|e| e.to_string())?;
        }
    }
    let mut data = Vec::new();
    from.open(&key(SEGMENT_DATA_SUFFIX))
        .map_err(|e| e.to_string())?
        .take(m.data.size + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading {}: {e}", key(SEGMENT_DATA_SUFFIX)))?;
    let sum = hash_stream(&data[..]).map_err(|e| e.to_string())?;
    if sum.sha256 != m.data.sha256 || sum.size != m.data.size {
        return Err(format!(
            "the source copy on {} changed since it was checked",
            from.name()
        ));
    }
    put_bytes(to, &key(SEGMENT_DATA_SUFFIX), &data).map_err(|e| e.to_string())?;
    check_data(to, prefix, m, true).or_else(|e| {
        // The .sha256 is not written yet: only the data must match here.
        if e.contains(SEGMENT_SHA256_SUFFIX) {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    let line = checksum::sha256_line(&m.data.sha256, &m.data.name);
    put_bytes(to, &key(SEGMENT_SHA256_SUFFIX), line.as_bytes()).map_err(|e| e.to_string())?;
    put_bytes(to, &key(SIGNATURE_SUFFIX), &r.signature).map_err(|e| e.to_string())?;
    put_bytes(to, &key(MANIFEST_SUFFIX), &r.bytes).map_err(|e| e.to_string())?;
    check_data(to, prefix, m, true)
}

/// What `list` shows of a source's archived binary log: how many segments, the first and
/// last archived events, the copies that are missing or broken (sizes only), the segments
/// below the policy, and the gap the state records, if any. None without segments or a
/// gap. `rows` and `problems` are what [`inventory`] found (without hashing).
pub fn summary(
    src: &SourceConfig,
    rows: &[SegRow],
    problems: Vec<String>,
    state: &backup_core::state::State,
) -> Option<serde_json::Value> {
    let gap = state
        .sources
        .get(&src.name)
        .and_then(|s| s.binlog.gap.clone());
    if rows.is_empty() && gap.is_none() && problems.is_empty() {
        return None;
    }
    let first = rows
        .iter()
        .min_by(|a, b| a.manifest.first_event_at.cmp(&b.manifest.first_event_at));
    let last = rows
        .iter()
        .max_by(|a, b| a.manifest.last_event_at.cmp(&b.manifest.last_event_at));
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.copies.iter().filter(|c| !c.ok).map(move |c| {
                format!(
                    "{} on {}: {}",
                    r.id,
                    c.store,
                    c.error.clone().unwrap_or_default()
                )
            })
        })
        .chain(problems)
        .collect();
    Some(serde_json::json!({
        "segments": rows.len(),
        "first_event_at": first.map(|r| r.manifest.first_event_at.clone()),
        "last_event_at": last.map(|r| r.manifest.last_event_at.clone()),
        "last_gtid": last.map(|r| r.manifest.last_gtid.clone()),
        "failed_copies": failed,
        "below_policy": rows.iter().filter(|r| !r.verdict.compliant).map(|r| r.id.clone()).collect::<Vec<_>>(),
        "gap": gap,
    }))
}
