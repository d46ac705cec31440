//! The walk over the chain: each segment's transactions decided one by one (already in
//! the dump, applied, of another database, after the target), with every check of the
//! segment's bytes on the way. Pass 1 (`verify`) only decides; pass 2 (`apply`) walks again
//! and feeds the applied transactions on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use flate2::read::MultiGzDecoder;

use backup_core::binlog::{names_database, FileError, GtidPos, Transaction, TransactionReader};
use backup_core::layout::{self, SEGMENT_DATA_SUFFIX};
use backup_core::manifest::SegmentManifest;

use super::{fmt_time, rfc3339, Plan, SegFile, Until};
use crate::crypto::{self, DpoKey, TrustedSigners};
use crate::pinned::{pin_file, Checker};

/// What to do with one transaction.
#[derive(Debug, PartialEq)]
pub(super) enum Decision {
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
pub(super) struct Walker {
    dump: GtidPos,
    until: Until,
    selected: Vec<String>,
    /// The position after the transactions seen so far.
    position: GtidPos,
    stopped: bool,
}

impl Walker {
    /// At the plan's backup, before its first segment.
    pub(super) fn start(plan: &Plan, selected: &[String]) -> Walker {
        Walker {
            dump: plan.backup_gtid.clone(),
            until: plan.until.clone(),
            selected: selected.to_vec(),
            position: plan.backup_gtid.clone(),
            stopped: false,
        }
    }

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
pub(super) fn walk_segment(
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
    let mut w = Walker::start(plan, selected);
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
