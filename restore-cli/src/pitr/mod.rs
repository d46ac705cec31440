//! Point-in-time restore: the newest backup at or before the target, then the archived
//! binary log segments from that backup's snapshot GTID up to the target.
//!
//! Everything is verified before the first byte reaches the server: the chain of segment
//! manifests (signed by a trusted agent key, each segment starting exactly where the
//! previous one ended), then each segment's bytes (sha256 against its `.sha256` file and
//! manifest, pinned block by block; OpenPGP decryption, MDC and the agent's signature;
//! every event's CRC32; its transactions against its manifest). Only then the dump is
//! replayed, and the segments are read a second time through the pins and applied.
//!
//! What is applied: transactions after the dump's snapshot, in log order, up to the first
//! transaction after the target (`--until TIME`: the first one timestamped later than
//! TIME, at the log's one-second resolution; `--until-gtid`: the one that reaches the
//! given position), and of those only the ones of the restored databases (row changes by
//! their table's database, statements by their default database, as `mariadb-binlog
//! --database` and replication filters do). A transaction that touches a restored
//! database and another one is refused, naming it: it cannot be split safely.
//!
//! The chosen events are turned into SQL by the stock `mariadb-binlog`, fed on its
//! standard input (never a plaintext file), whose output is executed on the target
//! connection.

mod apply;
mod walk;

pub use apply::apply;
pub use walk::verify;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};

use backup_core::binlog::GtidPos;
use backup_core::catalog;
use backup_core::config::{Config, StoreKind};
use backup_core::layout::{self, SEGMENT_DATA_SUFFIX, SEGMENT_SHA256_SUFFIX};
use backup_core::manifest::{Manifest, SegmentManifest};
use backup_core::store::open_store;

use crate::crypto::TrustedSigners;
use crate::pinned::Pins;

/// Where a point-in-time restore stops.
#[derive(Debug, Clone)]
pub enum Until {
    Time(DateTime<Utc>),
    Gtid(GtidPos),
}

impl std::fmt::Display for Until {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Until::Time(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Until::Gtid(g) => write!(f, "GTID {g}"),
        }
    }
}

/// Parses `--until` (RFC 3339 with a zone: `2026-12-02T10:15:00Z`, `...+01:00`) or
/// `--until-gtid` (a GTID list).
pub fn parse_until(time: Option<&str>, gtid: Option<&str>) -> Result<Option<Until>, String> {
    match (time, gtid) {
        (Some(_), Some(_)) => Err("give --until or --until-gtid, not both".into()),
        (Some(t), None) => {
            let norm = t.trim().replacen(' ', "T", 1);
            match DateTime::parse_from_rfc3339(&norm) {
                Ok(d) => Ok(Some(Until::Time(d.with_timezone(&Utc)))),
                Err(_) if chrono::NaiveDateTime::parse_from_str(&norm, "%Y-%m-%dT%H:%M:%S").is_ok()
                    || chrono::NaiveDateTime::parse_from_str(&norm, "%Y-%m-%dT%H:%M:%S%.f").is_ok() =>
                {
                    Err(format!(
                        "--until {t:?} has no time zone; give Z or an offset, e.g. {norm}Z for UTC or {norm}+01:00"
                    ))
                }
                Err(_) => Err(format!(
                    "--until {t:?} is not a time; write e.g. 2026-12-02T10:15:00Z"
                )),
            }
        }
        (None, Some(g)) => match GtidPos::parse(g) {
            Some(p) if !p.is_empty() => Ok(Some(Until::Gtid(p))),
            _ => Err(format!(
                "--until-gtid {g:?} is not a GTID (domain-server-sequence, e.g. 0-1-12345)"
            )),
        },
        (None, None) => Ok(None),
    }
}

pub(super) fn rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

pub(super) fn fmt_time(t: u32) -> String {
    DateTime::from_timestamp(i64::from(t), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One segment of the chain, where its bytes are.
pub struct SegFile {
    pub manifest: SegmentManifest,
    pub store: String,
    pub path: PathBuf,
    pub(super) pins: Option<Pins>,
    /// Transactions pass 1 decided to apply (pass 2 must find the same).
    pub(super) applied: u64,
}

/// What will be restored: a backup and the segments after it.
pub struct Plan {
    pub backup: Manifest,
    pub backup_gtid: GtidPos,
    pub until: Until,
    pub segments: Vec<SegFile>,
    /// Whether the chain goes on after the last segment taken (the target is inside it).
    pub(super) continues: bool,
    /// Temp dirs holding segments fetched from remote stores (encrypted), removed on drop.
    _fetched: Vec<tempfile::TempDir>,
}

/// Chooses the backup and the segments for `until` from the configured stores; fails,
/// naming the recoverable window, when the target is outside it.
pub fn plan(
    cfg: &Config,
    source: &str,
    store_name: Option<&str>,
    backup_id: Option<&str>,
    until: &Until,
    trusted: &TrustedSigners,
) -> Result<Plan> {
    let src = cfg
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| anyhow!("no source named {source:?} in {}", cfg.file.display()))?;
    let trust = trusted.trust();
    let mut backups: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut segs: BTreeMap<String, (SegmentManifest, String)> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let stores: Vec<_> = cfg
        .stores
        .iter()
        .filter(|s| store_name.is_none_or(|n| s.name == n))
        .collect();
    if stores.is_empty() {
        bail!(
            "no store named {:?} in {}",
            store_name.unwrap_or(""),
            cfg.file.display()
        );
    }
    for st in &stores {
        let store = match open_store(st) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("restore: skipping store {}: {e}", st.name);
                continue;
            }
        };
        match catalog::complete_backups(store.as_ref(), &src.prefix, &trust) {
            Ok(l) => {
                for m in l.backups {
                    backups.entry(m.backup_id.clone()).or_insert(m);
                }
            }
            Err(e) => eprintln!("restore: store {}: cannot list backups: {e}", st.name),
        }
        match catalog::complete_segments(store.as_ref(), &src.prefix, &trust) {
            Ok(l) => {
                for m in l.segments {
                    segs.entry(m.segment_id.clone())
                        .or_insert_with(|| (m, st.name.clone()));
                }
                for (id, p) in l.problems {
                    problems.push(format!("store {}: segment {id}: {p}", st.name));
                }
            }
            Err(e) => eprintln!("restore: store {}: cannot list segments: {e}", st.name),
        }
    }
    let usable = |m: &Manifest| -> Option<GtidPos> {
        let pos = GtidPos::parse(m.binlog.as_ref()?.gtid.as_deref()?)?;
        let ok = match until {
            Until::Time(t) => rfc3339(&m.started_at).is_some_and(|s| s <= *t),
            Until::Gtid(g) => g.domains().all(|d| {
                // The backup must not be past the target in the target's domains.
                pos.domains()
                    .filter(|b| b.domain == d.domain)
                    .all(|b| b.seq <= d.seq)
            }),
        };
        ok.then_some(pos)
    };
    let chosen = match backup_id {
        Some(id) if id != "latest" => {
            let m = backups.get(id).ok_or_else(|| {
                anyhow!("no complete, trusted backup {id} of source {source} in the stores")
            })?;
            let pos = usable(m).ok_or_else(|| {
                anyhow!("backup {id} started at {} (GTID {}), after the target {until}; choose an older one", m.started_at, m.binlog.as_ref().and_then(|b| b.gtid.clone()).unwrap_or_default())
            })?;
            (m.clone(), pos)
        }
        _ => backups
            .values()
            .rev()
            .find_map(|m| usable(m).map(|p| (m.clone(), p)))
            .ok_or_else(|| {
                anyhow!(
                    "no backup of source {source} with a GTID position starts at or before {until}; {}",
                    match backups.values().next() {
                        Some(m) => format!("the oldest is {} ({})", m.backup_id, m.started_at),
                        None => "there is none".into(),
                    }
                )
            })?,
    };
    let (backup, bpos) = chosen;
    // The chain: the segment that continues the backup's position, then each one that
    // starts where the previous one ended.
    let all: Vec<&SegmentManifest> = segs.values().map(|(m, _)| m).collect();
    let window_end = |last: Option<&SegmentManifest>| match last {
        Some(m) => format!("{} (GTID {})", m.last_event_at, m.last_gtid),
        None => format!("the backup's snapshot ({}, GTID {bpos})", backup.started_at),
    };
    let whole = chain_after(&all, &bpos);
    let mut chain: Vec<&SegmentManifest> = Vec::new();
    let mut continues = false;
    for cur in whole.iter().copied() {
        let starts_after = match until {
            Until::Time(t) => rfc3339(&cur.first_event_at).is_some_and(|s| s > *t),
            Until::Gtid(_) => false,
        };
        if starts_after && !chain.is_empty() {
            continues = true;
            break;
        }
        chain.push(cur);
        if let Until::Gtid(g) = until {
            if g.le(&GtidPos::parse(&cur.end_position).unwrap_or_default()) {
                continues = true;
                break;
            }
        }
    }
    let reached = continues
        || match (until, chain.last()) {
            (Until::Time(t), Some(last)) => rfc3339(&last.last_event_at).is_some_and(|l| l >= *t),
            _ => false,
        };
    if !reached {
        let mut msg = format!(
            "{until} is outside the recoverable window of source {source}: from backup {} the archived binary log reaches {}",
            backup.backup_id,
            window_end(chain.last().copied())
        );
        if let Some(last) = chain.last() {
            msg.push_str(&format!(
                " and no archived segment starts at GTID position {} (a gap, or archiving has not got further yet)",
                last.end_position
            ));
        } else if whole.is_empty() {
            msg.push_str(&format!(
                "; no archived segment continues from the backup's position {bpos}"
            ));
        }
        if !problems.is_empty() {
            msg.push_str(&format!("; segments not trusted: {}", problems.join("; ")));
        }
        msg.push_str("; nothing was restored (choose a target inside the window)");
        bail!(msg);
    }
    // Where each segment's bytes are: local stores in place, remote ones fetched
    // (encrypted) into a private temp dir.
    let mut fetched = Vec::new();
    let mut files = Vec::new();
    for m in chain {
        let (_, store_name) = &segs[&m.segment_id];
        let st = cfg
            .stores
            .iter()
            .find(|s| &s.name == store_name)
            .expect("listed store");
        let path = match &st.kind {
            StoreKind::Local { path } => path.path.join(layout::segment_key(
                &src.prefix,
                &m.segment_id,
                SEGMENT_DATA_SUFFIX,
            )),
            StoreKind::S3(_) => {
                let store = open_store(st).map_err(|e| anyhow!("{e}"))?;
                if fetched.is_empty() {
                    fetched.push(private_temp_dir()?);
                }
                let dir = fetched[0].path();
                for suffix in [SEGMENT_DATA_SUFFIX, SEGMENT_SHA256_SUFFIX] {
                    let key = layout::segment_key(&src.prefix, &m.segment_id, suffix);
                    let to = dir.join(layout::object_name(&m.segment_id, suffix));
                    let mut r = store.open(&key).map_err(|e| anyhow!("{e}"))?;
                    let mut f = std::fs::File::create(&to)
                        .with_context(|| format!("creating {}", to.display()))?;
                    std::io::copy(&mut r, &mut f).with_context(|| {
                        format!(
                            "downloading {} to {}; check free space in TMPDIR",
                            store.describe(&key),
                            to.display()
                        )
                    })?;
                }
                dir.join(layout::object_name(&m.segment_id, SEGMENT_DATA_SUFFIX))
            }
        };
        files.push(SegFile {
            manifest: m.clone(),
            store: store_name.clone(),
            path,
            pins: None,
            applied: 0,
        });
    }
    Ok(Plan {
        backup,
        backup_gtid: bpos,
        until: until.clone(),
        segments: files,
        continues,
        _fetched: fetched,
    })
}

pub use backup_core::catalog::chain_after;

pub(super) fn private_temp_dir() -> Result<tempfile::TempDir> {
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("restore-fetch-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temp dir in {} for the download", base.display()))
}

/// The plan in words, for standard error.
pub fn describe(plan: &Plan) -> String {
    let segs = &plan.segments;
    format!(
        "backup {} (snapshot GTID {}), then {} archived segment(s){}",
        plan.backup.backup_id,
        plan.backup_gtid,
        segs.len(),
        match (segs.first(), segs.last()) {
            (Some(a), Some(b)) => format!(" {} .. {}", a.manifest.first_gtid, b.manifest.last_gtid),
            _ => String::new(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_needs_a_zone() {
        assert!(matches!(
            parse_until(Some("2026-12-02T10:15:00Z"), None),
            Ok(Some(Until::Time(_)))
        ));
        assert!(matches!(
            parse_until(Some("2026-12-02 10:15:00+01:00"), None),
            Ok(Some(Until::Time(t))) if t.to_rfc3339() == "2026-12-02T09:15:00+00:00"
        ));
        let e = parse_until(Some("2026-12-02T10:15:00"), None).unwrap_err();
        assert!(e.contains("no time zone"), "{e}");
        assert!(parse_until(Some("yesterday"), None).is_err());
        assert!(matches!(
            parse_until(None, Some("0-1-12345")),
            Ok(Some(Until::Gtid(_)))
        ));
        assert!(parse_until(None, Some("0-1")).is_err());
        assert!(parse_until(Some("2026-12-02T10:15:00Z"), Some("0-1-2")).is_err());
    }
}
