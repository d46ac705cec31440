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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use flate2::read::MultiGzDecoder;
use mysql_async::prelude::*;

use backup_core::binlog::{names_database, FileError, GtidPos, Transaction, TransactionReader};
use backup_core::catalog;
use backup_core::config::{Config, StoreKind};
use backup_core::layout::{self, SEGMENT_DATA_SUFFIX, SEGMENT_SHA256_SUFFIX};
use backup_core::manifest::{Manifest, SegmentManifest};
use backup_core::store::open_store;

use crate::crypto::{self, DpoKey, TrustedSigners};
use crate::pinned::{pin_file, Checker, Pins};

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

fn rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn fmt_time(t: u32) -> String {
    DateTime::from_timestamp(i64::from(t), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One segment of the chain, where its bytes are.
pub struct SegFile {
    pub manifest: SegmentManifest,
    pub store: String,
    pub path: PathBuf,
    pins: Option<Pins>,
    /// Transactions pass 1 decided to apply (pass 2 must find the same).
    applied: u64,
}

/// What will be restored: a backup and the segments after it.
pub struct Plan {
    pub backup: Manifest,
    pub backup_gtid: GtidPos,
    pub until: Until,
    pub segments: Vec<SegFile>,
    /// Whether the chain goes on after the last segment taken (the target is inside it).
    continues: bool,
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

/// The chain of segments that continues a backup at GTID position `bpos`: the segment
/// holding the first transaction after it, then each one that starts exactly where the
/// previous one ended, up to the end of the archive or the first gap.
pub fn chain_after<'a>(all: &[&'a SegmentManifest], bpos: &GtidPos) -> Vec<&'a SegmentManifest> {
    let pos_of = |s: &str| GtidPos::parse(s).unwrap_or_default();
    let first = all.iter().find(|m| {
        let prev = pos_of(&m.previous_gtid);
        let end = pos_of(&m.end_position);
        prev.le(bpos) && bpos.le(&end) && end != *bpos
    });
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

fn private_temp_dir() -> Result<tempfile::TempDir> {
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("restore-fetch-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temp dir in {} for the download", base.display()))
}

/// What to do with one transaction.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Already in the dump.
    InDump,
    Apply,
    /// Of databases not restored.
    Other,
    /// The target is reached: this and everything after it is not applied.
    Stop,
}

/// What the walk over the chain found.
#[derive(Debug, Default)]
pub struct Summary {
    pub applied: u64,
    pub in_dump: u64,
    pub other: BTreeMap<String, u64>,
    /// Statements without a default database that name no restored database, skipped.
    pub unattributed_skipped: Vec<String>,
    pub last_applied: Option<(String, u32)>,
    pub stopped_before: Option<(String, u32)>,
}

/// Decides transaction by transaction, in log order.
#[derive(Clone)]
struct Walker {
    dump: GtidPos,
    until: Until,
    selected: Vec<String>,
    /// The position after the transactions seen so far.
    position: GtidPos,
    stopped: bool,
}

impl Walker {
    fn decide(&mut self, t: &Transaction, s: &mut Summary) -> Result<Decision> {
        if self.dump.covers(t.gtid) {
            if let Until::Time(u) = &self.until {
                if i64::from(t.timestamp) > u.timestamp() {
                    bail!(
                        "backup's snapshot already holds transaction {} of {}, after the target {}; give an older backup with --backup ID",
                        t.gtid,
                        fmt_time(t.timestamp),
                        self.until
                    );
                }
            }
            s.in_dump += 1;
            self.position.advance_to(t.gtid);
            return Ok(Decision::InDump);
        }
        if !self.stopped {
            self.stopped = match &self.until {
                Until::Time(u) => i64::from(t.timestamp) > u.timestamp(),
                Until::Gtid(g) => {
                    g.le(&self.position)
                        || g.domains()
                            .any(|d| d.domain == t.gtid.domain && t.gtid.seq > d.seq)
                }
            };
            if self.stopped {
                s.stopped_before = Some((t.gtid.to_string(), t.timestamp));
            }
        }
        if self.stopped {
            return Ok(Decision::Stop);
        }
        self.position.advance_to(t.gtid);
        let mut mine: Vec<&str> = Vec::new();
        let mut others: Vec<&str> = Vec::new();
        for d in &t.databases {
            if self.selected.iter().any(|x| x == d) {
                mine.push(d);
            } else {
                others.push(d);
            }
        }
        let mut loose = Vec::new();
        for q in &t.unattributed {
            match self.selected.iter().find(|d| names_database(q, d)) {
                Some(d) => mine.push(d),
                None => loose.push(q),
            }
        }
        if mine.is_empty() {
            for d in others {
                *s.other.entry(d.to_string()).or_default() += 1;
            }
            for q in loose {
                if s.unattributed_skipped.len() < 5 {
                    s.unattributed_skipped.push(q.chars().take(80).collect());
                }
            }
            return Ok(Decision::Other);
        }
        if !others.is_empty() || !loose.is_empty() {
            bail!(
                "transaction {} of {} changes the restored database(s) {} and also {}; it cannot be split safely: restore --until before it ({} or earlier), or restore a backup of all the databases it touches",
                t.gtid,
                fmt_time(t.timestamp),
                mine.join(", "),
                if others.is_empty() {
                    format!("runs a statement without a default database ({})", loose[0].chars().take(80).collect::<String>())
                } else {
                    others.join(", ")
                },
                fmt_time(t.timestamp.saturating_sub(1))
            );
        }
        s.applied += 1;
        s.last_applied = Some((t.gtid.to_string(), t.timestamp));
        Ok(Decision::Apply)
    }
}

/// Bounds for reading a segment: its binary log as recorded in its (signed) manifest.
fn max_transaction(m: &SegmentManifest) -> usize {
    usize::try_from(m.binlog_bytes)
        .unwrap_or(usize::MAX)
        .clamp(1 << 20, 4 << 30)
}

type SegReader = MultiGzDecoder<crypto::Opened>;

fn open_segment(f: &SegFile, dpo: &DpoKey, trusted: &TrustedSigners) -> Result<SegReader> {
    let pins = f.pins.as_ref().expect("pinned in pass 0");
    let c = Checker::open(&f.path, pins)
        .with_context(|| format!("cannot open {}", f.path.display()))?;
    let opened = crypto::open(c, dpo, trusted)
        .with_context(|| format!("cannot decrypt segment {}", f.manifest.segment_id))?;
    Ok(MultiGzDecoder::new(opened))
}

/// Walks one segment, calling `sink` with each transaction and its decision; checks the
/// transactions against the manifest (first, last, count, end position) and, at the end,
/// the OpenPGP message (MDC, trusted signature).
fn walk_segment(
    f: &SegFile,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    w: &mut Walker,
    s: &mut Summary,
    mut sink: impl FnMut(Option<&[u8]>, &Transaction, &Decision) -> Result<()>,
) -> Result<()> {
    let m = &f.manifest;
    let name = &m.segment_id;
    let mut gz = open_segment(f, dpo, trusted)?;
    let fail = |e: FileError| anyhow!("segment {name}: {e}");
    let mut tr = TransactionReader::new(&mut gz, max_transaction(m)).map_err(fail)?;
    let mut pos = GtidPos::parse(&m.previous_gtid).unwrap_or_default();
    let (mut first, mut last, mut count) = (None, None, 0u64);
    let mut fde_sent = false;
    while let Some(t) = tr.next_transaction().map_err(fail)? {
        count += 1;
        first.get_or_insert(t.gtid.to_string());
        last = Some(t.gtid.to_string());
        // Continuity inside the segment: each transaction follows the previous one of
        // its domain.
        if let Some(have) = pos.seq(t.gtid.domain) {
            if t.gtid.seq != have + 1 {
                bail!(
                    "segment {name}: transaction {} does not follow {have} in domain {} (transactions are missing or repeated); nothing was restored",
                    t.gtid,
                    t.gtid.domain
                );
            }
        }
        pos.advance_to(t.gtid);
        let d = w.decide(&t, s)?;
        let fde = if !fde_sent && d == Decision::Apply {
            fde_sent = true;
            tr.format_description().map(|e| e.bytes.as_slice())
        } else {
            None
        };
        sink(fde, &t, &d)?;
    }
    drop(tr);
    let wrong = |what: String| {
        anyhow!("segment {name} does not hold what its signed manifest says: {what}; nothing was restored (fetch another copy)")
    };
    if first.as_deref() != Some(m.first_gtid.as_str())
        || last.as_deref() != Some(m.last_gtid.as_str())
    {
        return Err(wrong(format!(
            "it runs from {} to {}, the manifest says {} to {}",
            first.unwrap_or_default(),
            last.unwrap_or_default(),
            m.first_gtid,
            m.last_gtid
        )));
    }
    if count != m.transactions || pos.to_string() != m.end_position {
        return Err(wrong(format!(
            "{count} transactions ending at {pos}, the manifest says {} ending at {}",
            m.transactions, m.end_position
        )));
    }
    gz.into_inner()
        .finish()
        .with_context(|| format!("segment {name} failed verification"))?;
    Ok(())
}

/// Pass 0 and 1 over every segment of the plan: checksums and pins, then decryption,
/// signature, events and transactions, and the decisions; nothing is applied.
pub fn verify(
    plan: &mut Plan,
    selected: &[String],
    dpo: &DpoKey,
    trusted: &TrustedSigners,
) -> Result<Summary> {
    for f in plan.segments.iter_mut() {
        let m = &f.manifest;
        let sha_path = PathBuf::from(format!("{}.sha256", f.path.display()));
        let sha_text = std::fs::read_to_string(&sha_path).with_context(|| {
            format!(
                "cannot read the checksum file {} of segment {}",
                sha_path.display(),
                m.segment_id
            )
        })?;
        let data_name = layout::object_name(&m.segment_id, SEGMENT_DATA_SUFFIX);
        let expected =
            backup_core::checksum::parse_sha256_line(&sha_text, &data_name).ok_or_else(|| {
                anyhow!(
                    "checksum file {} is malformed or names another file",
                    sha_path.display()
                )
            })?;
        let pins = pin_file(&f.path)
            .with_context(|| format!("cannot read segment {}", f.path.display()))?;
        if pins.sha256 != expected || pins.sha256 != m.data.sha256 || pins.size != m.data.size {
            bail!(
                "checksum mismatch: segment {} (store {}) has {} bytes sha256 {}, its .sha256 file says {} and its signed manifest {} bytes sha256 {}; the copy is corrupt or was changed: nothing was restored (scrub and repair the store)",
                m.segment_id, f.store, pins.size, pins.sha256, expected, m.data.size, m.data.sha256
            );
        }
        f.pins = Some(pins);
    }
    let mut s = Summary::default();
    let mut w = Walker {
        dump: plan.backup_gtid.clone(),
        until: plan.until.clone(),
        selected: selected.to_vec(),
        position: plan.backup_gtid.clone(),
        stopped: false,
    };
    for i in 0..plan.segments.len() {
        let mut applied = 0u64;
        walk_segment(
            &plan.segments[i],
            dpo,
            trusted,
            &mut w,
            &mut s,
            |_, _, d| {
                if *d == Decision::Apply {
                    applied += 1;
                }
                Ok(())
            },
        )?;
        plan.segments[i].applied = applied;
    }
    if let Until::Gtid(g) = &plan.until {
        if !g.le(&w.position) && !w.stopped {
            bail!(
                "GTID {g} is not in the archived chain (it reaches {}); nothing was restored",
                w.position
            );
        }
    }
    if let (Until::Time(t), false) = (&plan.until, w.stopped || plan.continues) {
        let last = plan
            .segments
            .last()
            .map(|f| f.manifest.last_event_at.clone())
            .unwrap_or_default();
        if rfc3339(&last).is_none_or(|l| l < *t) {
            bail!(
                "{} is after the newest archived event ({last}); nothing was restored",
                plan.until
            );
        }
    }
    Ok(s)
}

/// Pass 2: reads each segment again through its pins and applies the chosen transactions
/// on `conn`, through `mariadb-binlog` (events on its standard input, SQL from its
/// standard output).
pub async fn apply(
    plan: &Plan,
    selected: &[String],
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    conn: &mut mysql_async::Conn,
) -> Result<u64> {
    // mariadb-binlog may spill a large event to a temp file: a private directory in
    // memory (/dev/shm) when the machine has one, else in TMPDIR; removed afterwards.
    let tmp = match tempfile::Builder::new()
        .prefix("restore-binlog-")
        .tempdir_in("/dev/shm")
    {
        Ok(d) => d,
        Err(_) => private_temp_dir()?,
    };
    let mut executed = 0u64;
    let mut w = Walker {
        dump: plan.backup_gtid.clone(),
        until: plan.until.clone(),
        selected: selected.to_vec(),
        position: plan.backup_gtid.clone(),
        stopped: false,
    };
    for f in &plan.segments {
        if f.applied == 0 {
            // Walk it anyway: the decisions of the next segments depend on its position.
            let mut s = Summary::default();
            walk_segment(f, dpo, trusted, &mut w, &mut s, |_, _, _| Ok(()))?;
            continue;
        }
        let mut child = Command::new("mariadb-binlog")
            .args(["--no-defaults", "-"])
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run mariadb-binlog (Debian package mariadb-client)")?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            e
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let reader = std::thread::spawn(move || split_statements(BufReader::new(stdout), tx));
        // The walk runs in a thread of its own: it decrypts and writes events.
        let seg = SegFile {
            manifest: f.manifest.clone(),
            store: f.store.clone(),
            path: f.path.clone(),
            pins: f.pins.clone(),
            applied: f.applied,
        };
        let (dpo2, trusted2) = (dpo.clone(), trusted.clone());
        let mut w2 = w.clone();
        let walker = std::thread::spawn(move || {
            let mut s = Summary::default();
            let mut n = 0u64;
            let r = walk_segment(&seg, &dpo2, &trusted2, &mut w2, &mut s, |fde, t, d| {
                if let Some(fde) = fde {
                    stdin.write_all(&backup_core::binlog::MAGIC)?;
                    stdin.write_all(fde)?;
                }
                if *d == Decision::Apply {
                    n += 1;
                    for e in &t.events {
                        stdin.write_all(&e.bytes)?;
                    }
                }
                Ok(())
            });
            drop(stdin);
            let r = r.and_then(|()| {
                if n != seg.applied {
                    bail!(
                        "segment {} changed between the passes ({} transactions to apply, then {n})",
                        seg.manifest.segment_id,
                        seg.applied
                    );
                }
                Ok(())
            });
            (r, w2)
        });
        // Execute while the walk feeds mariadb-binlog.
        let mut exec = Ok(());
        while let Some(stmt) = rx.recv().await {
            if let Err(e) = conn.query_drop(stmt.as_slice()).await {
                let head = String::from_utf8_lossy(&stmt[..stmt.len().min(160)]).into_owned();
                exec = Err(anyhow!(
                    "the target server refused a statement of segment {} ({head}...): {e}",
                    f.manifest.segment_id
                ));
                break;
            }
            executed += 1;
        }
        drop(rx);
        if exec.is_err() {
            let _ = child.kill();
        }
        let (walk_result, w_after) = tokio::task::spawn_blocking(move || walker.join())
            .await
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|_| anyhow!("the segment reader failed"))?;
        let status = child.wait().context("waiting for mariadb-binlog")?;
        let split = reader.join().expect("reader thread");
        let errs = err_thread.join().unwrap_or_default();
        exec?;
        walk_result?;
        split.context("reading mariadb-binlog's output")?;
        if !status.success() {
            bail!(
                "mariadb-binlog failed on segment {}: {}",
                f.manifest.segment_id,
                errs.trim()
            );
        }
        w = w_after;
    }
    Ok(executed)
}

/// Whether a statement sets the source's GTID or server id for the events that follow.
/// They are left out: the target writes the restored changes as its own (with its own
/// GTIDs), which never clash with its binary log and need no replication privileges.
fn source_identity(stmt: &[u8]) -> bool {
    [
        &b"/*M!100001 SET @@session.gtid_domain_id="[..],
        b"/*M!100001 SET @@session.server_id=",
        b"/*M!100001 SET @@session.gtid_seq_no=",
    ]
    .iter()
    .any(|p| stmt.starts_with(p))
}

/// Splits `mariadb-binlog`'s output into statements as the `mariadb` client would:
/// `# ...` comment lines between statements, `DELIMITER x` lines, statements ending with
/// the current delimiter at the end of a line; the client-only `/*!\C charset */`
/// command is dropped (the `SET @@session.character_set_client` after it does the work).
fn split_statements(mut r: impl BufRead, tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> Result<()> {
    let mut delim: Vec<u8> = b";".to_vec();
    let mut buf: Vec<u8> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if buf.is_empty() {
            let t = line.trim_ascii();
            if t.is_empty() || t.starts_with(b"#") {
                continue;
            }
            if let Some(d) = t.strip_prefix(b"DELIMITER ") {
                delim = d.trim_ascii().to_vec();
                continue;
            }
        }
        buf.extend_from_slice(&line);
        let t = buf.trim_ascii_end();
        if t.ends_with(&delim) {
            let stmt = t[..t.len() - delim.len()].trim_ascii().to_vec();
            buf.clear();
            if stmt.is_empty() || stmt.starts_with(b"/*!\\C ") || source_identity(&stmt) {
                continue;
            }
            if tx.blocking_send(stmt).is_err() {
                bail!("applying stopped");
            }
        }
    }
    if !buf.trim_ascii().is_empty() {
        bail!("mariadb-binlog's output ends inside a statement");
    }
    Ok(())
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

    #[test]
    fn output_splits_like_the_client() {
        let out = b"/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;\nDELIMITER /*!*/;\n# at 4\nROLLBACK/*!*/;\n/*M!100001 SET @@session.gtid_domain_id=0*//*!*/;\n/*M!100001 SET @@session.server_id=1*//*!*/;\n/*M!100001 SET @@session.gtid_seq_no=7*//*!*/;\nBINLOG '\nAAAA\nBBBB\n'/*!*/;\n/*!\\C utf8mb3 *//*!*/;\nINSERT INTO t VALUES ('a;\n# not a comment')\n/*!*/;\nDELIMITER ;\n# End of log file\nROLLBACK /* added by mysqlbinlog */;\n";
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        split_statements(&out[..], tx).unwrap();
        let mut got = Vec::new();
        while let Ok(s) = rx.try_recv() {
            got.push(String::from_utf8(s).unwrap());
        }
        assert_eq!(
            got,
            vec![
                "/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/",
                "ROLLBACK",
                "BINLOG '\nAAAA\nBBBB\n'",
                "INSERT INTO t VALUES ('a;\n# not a comment')",
                "ROLLBACK /* added by mysqlbinlog */",
            ]
        );
    }
}
