//! Freshness and health: the verdict behind `backup-agent healthcheck`, `/healthz` and the
//! stale alert, as a pure function of facts gathered from the state, the stores, the DPO
//! certificates and the drill record. Codes are the ones operators already use:
//! 0 OK, 1 CRITICAL, 2 no complete backup found.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::seal::crypto;
use backup_core::catalog;
use backup_core::config::Config;
use backup_core::state::{load_drill_of, DrillRecord, State, StateStore};
use backup_core::store::open_store;

pub const OK: u8 = 0;
pub const CRITICAL: u8 = 1;
pub const NONE: u8 = 2;

#[derive(Debug, Clone)]
pub struct SourceFacts {
    pub name: String,
    pub max_age: Duration,
    /// Newest complete backup: id and finish time.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Which configured stores hold the newest backup.
    pub stores_with_newest: Vec<String>,
    /// The 3-2-1 verdict of the newest backup, as last cached.
    pub policy: Option<backup_core::state::PolicyMark>,
    /// How long a newest backup may stay non-compliant.
    pub policy_grace: Duration,
    /// Binary log archiving, when configured.
    pub binlog: Option<BinlogFacts>,
    /// Galera sources: how many nodes this agent desynced could not be turned back.
    pub desync_stuck: Option<usize>,
    /// This agent's last attempt failed (its error stands until a success).
    pub last_run_failed: bool,
    /// A split source's unit whose database is gone: its backups are kept, it is not
    /// expected to be fresh.
    pub dropped: Option<DateTime<Utc>>,
}

/// Point-in-time recovery's state for one source.
#[derive(Debug, Clone)]
pub struct BinlogFacts {
    pub max_lag: Duration,
    /// Time of the newest archived event.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Everything the server logged up to this instant is archived (None: nothing yet);
    /// with an open gap, the newest event before it.
    pub recoverable_until: Option<DateTime<Utc>>,
    /// How far behind the archive is (now - recoverable_until, without a gap).
    pub lag: Option<Duration>,
    pub gaps_total: u64,
    /// A gap no backup has been taken after yet.
    pub open_gap: Option<backup_core::state::BinlogGap>,
    pub error: Option<String>,
    /// Another agent of the cluster holds the archiver's lease (this one waits to take
    /// over): the archive's lag is the holder's to report.
    pub standby: Option<String>,
}

impl BinlogFacts {
    /// Whether this agent's archive is behind more than `max_lag` (never on standby, nor
    /// with an open gap, which is its own alert).
    pub fn lagging(&self, since_start: Duration) -> bool {
        self.standby.is_none()
            && self.open_gap.is_none()
            && match self.lag {
                Some(l) => l > self.max_lag,
                None => since_start > self.max_lag,
            }
    }
}

impl BinlogFacts {
    fn of(
        cfg: &backup_core::config::BinlogConfig,
        st: Option<&backup_core::state::SourceState>,
        newest: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> BinlogFacts {
        let b = st.map(|s| s.binlog.clone()).unwrap_or_default();
        let caught_up = match (b.synced_at, b.last_event_at) {
            (Some(a), Some(e)) => Some(a.max(e)),
            (a, e) => a.or(e),
        };
        let open_gap = b
            .gap
            .clone()
            .filter(|g| newest.is_none_or(|n| n < g.found_at));
        let recoverable_until = match &open_gap {
            Some(g) => g.window_end,
            None => caught_up,
        };
        BinlogFacts {
            max_lag: cfg.max_lag,
            last_event_at: b.last_event_at,
            lag: caught_up.map(|t| age(now, t)),
            recoverable_until,
            gaps_total: b.gaps_total,
            open_gap,
            error: b.error,
            standby: b.standby,
        }
    }
}

/// A DPO certificate's fingerprint and expiry, or why it is unusable.
pub type DpoFact = Result<(String, Option<DateTime<Utc>>), String>;

#[derive(Debug, Clone)]
pub struct Facts {
    pub now: DateTime<Utc>,
    pub sources: Vec<SourceFacts>,
    pub all_stores: Vec<String>,
    /// Per DPO certificate: fingerprint and expiry, or the reason it is unusable.
    pub dpo: Vec<DpoFact>,
    pub dpo_warning_days: u32,
    pub drill: Option<DrillRecord>,
    /// The newest log drill (`restore --verify --pitr`), when a source archives its binary
    /// log (None: none archives; Some(None): none on record).
    pub pitr_drill: Option<Option<DrillRecord>>,
    pub drill_max_age: Option<Duration>,
    /// Why the state file could not be read, when it could not.
    pub state_error: Option<String>,
    /// Split sources whose databases could not be listed at their last run, and why.
    pub split_errors: Vec<(String, String)>,
    /// Split sources with no database found yet.
    pub split_empty: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub code: u8,
    /// One short line, whatever the number of sources: the status and at most
    /// [`SHOWN_CLAUSES`] clauses (supervision tools truncate long plugin output).
    pub line: String,
    /// Every clause: the problems first, then what is fine.
    pub details: Vec<String>,
}

/// Clauses the one-line verdict shows; the rest are counted (`--verbose` lists them).
pub const SHOWN_CLAUSES: usize = 3;

/// `STATUS: a; b; c`, or with more clauses than shown, the count and the first ones.
fn short_line(status: &str, clauses: &[String], what: &str) -> String {
    if clauses.len() <= SHOWN_CLAUSES {
        return format!("{status}: {}", clauses.join("; "));
    }
    format!(
        "{status}: {} {what}: {}; and {} more (healthcheck --verbose lists them)",
        clauses.len(),
        clauses[..SHOWN_CLAUSES].join("; "),
        clauses.len() - SHOWN_CLAUSES
    )
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or_default()
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Whether a source is stale: no complete backup, or the newest is older than max age.
pub fn is_stale(s: &SourceFacts, now: DateTime<Utc>) -> bool {
    if s.dropped.is_some() {
        return false;
    }
    match &s.newest {
        None => true,
        Some((_, t)) => age(now, *t) > s.max_age,
    }
}

pub fn verdict(f: &Facts) -> Verdict {
    let mut critical = Vec::new();
    let mut none = Vec::new();
    let mut ok = Vec::new();
    for s in &f.sources {
        if let Some(t) = s.dropped {
            ok.push(format!(
                "{}: database dropped {}, its backups kept{}",
                s.name,
                t.format("%Y-%m-%d %H:%M UTC"),
                s.newest
                    .as_ref()
                    .map(|(id, _)| format!(" (newest {id})"))
                    .unwrap_or_default()
            ));
            continue;
        }
        match &s.newest {
            None => none.push(format!("no complete backup of source {}", s.name)),
            Some((id, t)) if age(f.now, *t) > s.max_age => critical.push(format!(
                "source {}: newest backup {id} is {} old (max age {})",
                s.name,
                human(age(f.now, *t)),
                human(s.max_age)
            )),
            Some((id, t)) => match &s.policy {
                Some(p)
                    if !p.compliant && p.backup_id == *id && age(f.now, *t) > s.policy_grace =>
                {
                    critical.push(format!(
                        "source {}: newest backup {id} does not meet the 3-2-1 policy: {}",
                        s.name,
                        p.reasons.join("; ")
                    ))
                }
                _ => ok.push(format!("{}: {id} ({} old)", s.name, human(age(f.now, *t)))),
            },
        }
    }
    for s in &f.sources {
        let Some(b) = &s.binlog else { continue };
        if let Some(g) = &b.open_gap {
            critical.push(format!(
                "source {}: gap in the archived binary log after GTID {} (found {}); point-in-time recovery ends at {} until the next backup: take one now",
                s.name,
                g.after_gtid,
                g.found_at.to_rfc3339(),
                g.window_end.map(|t| t.to_rfc3339()).unwrap_or_else(|| "?".into())
            ));
        } else if let Some(holder) = &b.standby {
            ok.push(format!(
                "{}: binary log archived by {holder} (this agent on standby)",
                s.name
            ));
        } else {
            match b.lag {
                None => critical.push(format!(
                    "source {}: binary log archiving has stored nothing yet{}",
                    s.name,
                    b.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )),
                Some(l) if l > b.max_lag => critical.push(format!(
                    "source {}: binary log archive is {} behind (max_lag {}){}",
                    s.name,
                    human(l),
                    human(b.max_lag),
                    b.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
                Some(_) => {}
            }
        }
    }
    for d in &f.dpo {
        match d {
            Err(e) => critical.push(format!("DPO certificate unusable: {e}")),
            Ok((fpr, Some(exp))) => {
                let left = (*exp - f.now).num_seconds();
                if left < i64::from(f.dpo_warning_days) * 86400 {
                    critical.push(format!(
                        "DPO certificate {fpr} expires {} ({} days); ask the DPO for a renewed certificate",
                        exp.format("%Y-%m-%d"),
                        left.max(0) / 86400
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    if let Some(max) = f.drill_max_age {
        let mut kinds = vec![("restore drill", "restore --verify", &f.drill)];
        if let Some(p) = &f.pitr_drill {
            kinds.push(("log drill (PITR)", "restore --verify --pitr", p));
        }
        for (what, run, drill) in kinds {
            match drill {
                None => critical.push(format!("no {what} on record; run {run}")),
                Some(d) if age(f.now, d.finished_at) > max => critical.push(format!(
                    "last {what} was {} ago (max {}); run {run}",
                    human(age(f.now, d.finished_at)),
                    human(max)
                )),
                Some(d) if !d.success => critical.push(format!("the last {what} failed")),
                Some(_) => {}
            }
        }
    }
    if let Some(e) = &f.state_error {
        critical.push(e.clone());
    }
    // The message names the source ("source erp: cannot list the databases ...").
    critical.extend(f.split_errors.iter().map(|(_, e)| e.clone()));
    for s in &f.split_empty {
        none.push(format!(
            "no complete backup of source {s} (no database of it listed yet)"
        ));
    }
    let details: Vec<String> = critical
        .iter()
        .chain(none.iter())
        .chain(ok.iter())
        .cloned()
        .collect();
    let (code, line) = if !critical.is_empty() {
        (CRITICAL, short_line("CRITICAL", &critical, "problems"))
    } else if !none.is_empty() {
        (
            NONE,
            short_line("NONE", &none, "sources without a complete backup"),
        )
    } else if f.sources.len() <= SHOWN_CLAUSES {
        (OK, format!("OK: {}", ok.join("; ")))
    } else {
        // Many sources, all fresh: how many, and the one whose newest backup is oldest.
        let oldest = f
            .sources
            .iter()
            .filter_map(|s| s.newest.as_ref().map(|(_, t)| (t, &s.name)))
            .min();
        (
            OK,
            match oldest {
                Some((t, name)) => format!(
                    "OK: {} sources fresh, oldest {name} {}",
                    f.sources.len(),
                    human(age(f.now, *t))
                ),
                None => format!("OK: {} sources fresh", f.sources.len()),
            },
        )
    };
    Verdict {
        code,
        line,
        details,
    }
}

/// `healthcheck --json`: the verdict, every clause, and each source's freshness.
pub fn to_json(v: &Verdict, f: &Facts) -> serde_json::Value {
    let status = match v.code {
        OK => "OK",
        NONE => "NONE",
        _ => "CRITICAL",
    };
    let sources: Vec<serde_json::Value> = f
        .sources
        .iter()
        .map(|s| {
            serde_json::json!({
                "source": s.name,
                "newest": s.newest.as_ref().map(|(id, _)| id),
                "finished_at": s.newest.as_ref().map(|(_, t)| t.to_rfc3339()),
                "age_seconds": s.newest.as_ref().map(|(_, t)| age(f.now, *t).as_secs()),
                "max_age_seconds": s.max_age.as_secs(),
                "stale": is_stale(s, f.now),
                "dropped_at": s.dropped.map(|t| t.to_rfc3339()),
                "policy_compliant": s.policy.as_ref().filter(|p| s.newest.as_ref().is_some_and(|(id, _)| *id == p.backup_id)).map(|p| p.compliant),
                "stores_with_newest": s.stores_with_newest,
            })
        })
        .collect();
    serde_json::json!({
        "status": status,
        "code": v.code,
        "line": v.line,
        "details": v.details,
        "sources": sources,
    })
}

/// Gathers the facts: the state (including what the daemon cached from the stores), a
/// fresh listing of the local stores, the DPO certificates, the drill record.
pub fn gather(cfg: &Config, state: &State, now: DateTime<Utc>) -> Facts {
    // Local stores are listed fresh; remote ones (S3) through what the daemon cached,
    // so that the healthcheck stays fast.
    let stores: Vec<_> = cfg
        .stores
        .iter()
        .filter(|c| matches!(c.kind, backup_core::config::StoreKind::Local { .. }))
        .filter_map(|c| open_store(c).ok())
        .collect();
    let trust = crate::seal::crypto::manifest_trust(cfg.encryption.as_ref()).unwrap_or_default();
    let mut sources = Vec::new();
    for src in &cfg.sources {
        let mut newest: Option<(String, DateTime<Utc>)> = None;
        let mut with = Vec::new();
        let mut per_store = Vec::new();
        for st in &stores {
            if let Ok(list) = catalog::complete_backups(st.as_ref(), &src.prefix, &trust) {
                if let Some(m) = list.backups.last() {
                    per_store.push((st.name().to_string(), m.backup_id.clone()));
                    if let Some(t) = catalog::finished_at(m) {
                        if newest.as_ref().is_none_or(|(id, _)| m.backup_id > *id) {
                            newest = Some((m.backup_id.clone(), t));
                        }
                    }
                }
            }
        }
        // Backups another agent made, as the daemon's listing cached them.
        if let Some(nb) = state
            .sources
            .get(&src.name)
            .and_then(|s| s.newest_backup.as_ref())
        {
            if newest.as_ref().is_none_or(|(id, _)| nb.id > *id) {
                newest = Some((nb.id.clone(), nb.finished_at));
            }
        }
        if let Some((id, _)) = &newest {
            with = per_store
                .iter()
                .filter(|(_, b)| b == id)
                .map(|(s, _)| s.clone())
                .collect();
        }
        let policy = state.sources.get(&src.name).and_then(|s| s.policy.clone());
        if let Some(p) = &policy {
            if newest.as_ref().is_some_and(|(id, _)| *id == p.backup_id) {
                for st in &p.verified_stores {
                    if !with.contains(st) {
                        with.push(st.clone());
                    }
                }
            }
        }
        let binlog = src.binlog.as_ref().map(|bl| {
            BinlogFacts::of(
                bl,
                state.sources.get(&src.name),
                newest.as_ref().map(|(_, t)| *t),
                now,
            )
        });
        sources.push(SourceFacts {
            binlog,
            desync_stuck: src
                .galera
                .as_ref()
                .map(|_| crate::source::galera::stuck_desyncs(&cfg.agent.state_dir, src).len()),
            last_run_failed: state
                .sources
                .get(&src.name)
                .is_some_and(|s| s.last_error.is_some()),
            dropped: src.unit_of.as_ref().and_then(|u| u.dropped),
            name: src.name.clone(),
            max_age: src.max_age,
            newest,
            stores_with_newest: with,
            policy,
            policy_grace: cfg.policy.grace,
        });
    }
    let dpo = match &cfg.encryption {
        Some(enc) => enc
            .dpo_certificates
            .iter()
            .flat_map(|cp| match crypto::check_dpo_certificates(cp) {
                Ok(certs) => certs
                    .into_iter()
                    .map(|(_, i)| Ok((i.fingerprint, i.expires_at.map(DateTime::<Utc>::from))))
                    .collect(),
                Err(e) => vec![Err(e.to_string())],
            })
            .collect(),
        None => Vec::new(),
    };
    // The newest drill record of each kind: the local one (drill.json, pitr-drill.json)
    // or one the drill wrote into a store beside the backups (that is how agents on other
    // hosts learn of it).
    let newest_drill = |pitr: bool| {
        let mut drill = load_drill_of(&cfg.agent.state_dir, pitr);
        for src in &cfg.sources {
            for st in &stores {
                if let Some(r) = newest_drill_in_store(st.as_ref(), &src.prefix, pitr) {
                    if drill.as_ref().is_none_or(|d| r.finished_at > d.finished_at) {
                        drill = Some(r);
                    }
                }
            }
        }
        drill
    };
    let drill = newest_drill(false);
    let pitr_drill = cfg
        .sources
        .iter()
        .any(|s| s.binlog.is_some())
        .then(|| newest_drill(true));
    Facts {
        now,
        sources,
        all_stores: cfg.stores.iter().map(|s| s.name.clone()).collect(),
        dpo,
        dpo_warning_days: cfg.agent.dpo_expiry_warning_days,
        drill,
        pitr_drill,
        drill_max_age: cfg.agent.drill_max_age,
        state_error: None,
        split_errors: cfg
            .splits
            .iter()
            .filter_map(|p| {
                let e = state.sources.get(&p.name)?.last_error.as_ref()?;
                Some((p.name.clone(), e.clone()))
            })
            .collect(),
        split_empty: cfg
            .splits
            .iter()
            .filter(|p| {
                !cfg.sources
                    .iter()
                    .any(|u| u.unit_of.as_ref().is_some_and(|x| x.parent == p.name))
            })
            .map(|p| p.name.clone())
            .collect(),
    }
}

/// Caches in the state dir (drill.json) the newest drill record found in any store,
/// remote ones included, when it is newer than the one there: the daemon calls this on
/// its listing timer, so that the fast healthcheck learns of drills run elsewhere.
pub fn cache_remote_drill(cfg: &Config, stores: &[crate::copies::inventory::OpenStore]) {
    for pitr in [false, true] {
        let mut best = load_drill_of(&cfg.agent.state_dir, pitr);
        let mut changed = false;
        for src in &cfg.sources {
            for os in stores {
                let Ok(st) = &os.store else { continue };
                if let Some(r) = newest_drill_in_store(st.as_ref(), &src.prefix, pitr) {
                    if best.as_ref().is_none_or(|d| r.finished_at > d.finished_at) {
                        best = Some(r);
                        changed = true;
                    }
                }
            }
        }
        if let (true, Some(b)) = (changed, best) {
            if let Err(e) = StateStore::new(&cfg.agent.state_dir).record_drill(&b, true) {
                tracing::warn!(event = "drill_cache_failed", error = %e);
            }
        }
    }
}

/// The newest `drills/drill_*.json` report under a source's prefix in a store.
fn newest_drill_in_store(
    store: &dyn backup_core::store::Store,
    prefix: &str,
    pitr: bool,
) -> Option<DrillRecord> {
    let dir = backup_core::layout::drills_prefix(prefix);
    let name = store
        .list(&dir)
        .ok()?
        .into_iter()
        .filter(|n| backup_core::layout::is_drill_record(n, pitr))
        .max()?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut store
            .open(&backup_core::layout::drill_key(prefix, &name))
            .ok()?,
        &mut text,
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let finished_at = DateTime::parse_from_rfc3339(v["finished_at"].as_str()?)
        .ok()?
        .with_timezone(&Utc);
    Some(DrillRecord {
        finished_at,
        success: v["success"].as_bool()?,
        backup_id: v["backup_id"].as_str().map(String::from),
        source: v["source"].as_str().map(String::from),
        message: v["error"].as_str().map(String::from),
        pitr,
        restore_seconds: v["restore_seconds"].as_f64(),
    })
}

/// The whole healthcheck: state + stores + certificates -> verdict.
pub fn check(cfg: &Config) -> (Verdict, Facts, State) {
    let (state, state_error) = match StateStore::new(&cfg.agent.state_dir).load() {
        Ok(s) => (s, None),
        Err(e) => (State::default(), Some(e.to_string())),
    };
    let cfg = cfg.expanded(&state.split);
    let mut facts = gather(&cfg, &state, Utc::now());
    facts.state_error = state_error;
    (verdict(&facts), facts, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn facts(newest: Option<&str>) -> Facts {
        Facts {
            now: at("2026-11-21T12:00:00Z"),
            sources: vec![SourceFacts {
                name: "main".into(),
                max_age: Duration::from_secs(26 * 3600),
                newest: newest.map(|t| ("mariadb_x".to_string(), at(t))),
                stores_with_newest: vec![],
                policy: None,
                policy_grace: Duration::from_secs(7200),
                binlog: None,
                desync_stuck: None,
                last_run_failed: false,
                dropped: None,
            }],
            all_stores: vec![],
            dpo: vec![Ok(("FPR".into(), None))],
            dpo_warning_days: 30,
            drill: None,
            pitr_drill: None,
            drill_max_age: None,
            state_error: None,
            split_errors: vec![],
            split_empty: vec![],
        }
    }

    #[test]
    fn the_line_stays_short_with_many_sources() {
        let mut f = facts(Some("2026-11-21T02:00:00Z"));
        let one = f.sources[0].clone();
        f.sources = (0..80)
            .map(|i| SourceFacts {
                name: format!("t{i:02}"),
                newest: Some((format!("mariadb_{i}"), at("2026-11-21T11:59:30Z"))),
                ..one.clone()
            })
            .collect();
        f.sources[17].newest = Some(("mariadb_17".into(), at("2026-11-21T11:58:58Z")));
        let v = verdict(&f);
        assert_eq!(
            (v.code, v.line.as_str()),
            (OK, "OK: 80 sources fresh, oldest t17 62s")
        );
        assert_eq!(v.details.len(), 80);
        for i in [3, 40, 41] {
            f.sources[i].newest = Some(("old".into(), at("2026-11-19T00:00:00Z")));
        }
        f.sources[50].newest = None;
        f.sources[60].newest = Some(("old".into(), at("2026-11-18T00:00:00Z")));
        let v = verdict(&f);
        assert_eq!(v.code, CRITICAL);
        assert!(
            v.line
                .starts_with("CRITICAL: 4 problems: source t03: newest backup old is 2d old")
                && v.line
                    .ends_with("; and 1 more (healthcheck --verbose lists them)")
                && !v.line.contains("t60")
                && v.line.len() < 300,
            "{}",
            v.line
        );
        assert!(
            v.details[3].contains("t60") && v.details[4].contains("t50"),
            "{:?}",
            v.details
        );
        assert_eq!(v.details.len(), 80);
    }

    #[test]
    fn codes() {
        assert_eq!(verdict(&facts(None)).code, NONE);
        assert_eq!(verdict(&facts(Some("2026-11-21T02:00:00Z"))).code, OK);
        let v = verdict(&facts(Some("2026-11-19T02:00:00Z")));
        assert_eq!(v.code, CRITICAL);
        assert!(
            v.line.contains("source main") && v.line.contains("2d old"),
            "{}",
            v.line
        );
    }

    #[test]
    fn expiring_certificate_and_old_drill_are_critical() {
        let mut f = facts(Some("2026-11-21T02:00:00Z"));
        f.dpo = vec![Ok(("FPR".into(), Some(at("2026-12-01T00:00:00Z"))))];
        let v = verdict(&f);
        assert_eq!(v.code, CRITICAL);
        assert!(v.line.contains("expires 2026-12-01"), "{}", v.line);
        f.dpo = vec![Ok(("FPR".into(), Some(at("2027-06-01T00:00:00Z"))))];
        assert_eq!(verdict(&f).code, OK);
        f.drill_max_age = Some(Duration::from_secs(35 * 86400));
        assert_eq!(verdict(&f).code, CRITICAL);
        f.drill = Some(DrillRecord {
            finished_at: at("2026-11-01T00:00:00Z"),
            success: true,
            backup_id: None,
            source: None,
            message: None,
            pitr: false,
            restore_seconds: None,
        });
        assert_eq!(verdict(&f).code, OK);
        f.drill = Some(DrillRecord {
            finished_at: at("2026-10-01T00:00:00Z"),
            success: true,
            backup_id: None,
            source: None,
            message: None,
            pitr: false,
            restore_seconds: None,
        });
        assert_eq!(verdict(&f).code, CRITICAL);
    }

    #[test]
    fn the_log_drill_is_asked_for_like_the_plain_drill_when_the_log_is_archived() {
        let mut f = facts(Some("2026-11-21T02:00:00Z"));
        f.drill_max_age = Some(Duration::from_secs(35 * 86400));
        let rec = |t: &str, ok: bool| DrillRecord {
            finished_at: at(t),
            success: ok,
            backup_id: None,
            source: None,
            message: None,
            pitr: true,
            restore_seconds: None,
        };
        f.drill = Some(DrillRecord {
            pitr: false,
            ..rec("2026-11-01T00:00:00Z", true)
        });
        assert_eq!(verdict(&f).code, OK, "no source archives its log");
        f.pitr_drill = Some(None);
        let v = verdict(&f);
        assert!(
            v.code == CRITICAL
                && v.line
                    .contains("no log drill (PITR) on record; run restore --verify --pitr"),
            "{}",
            v.line
        );
        f.pitr_drill = Some(Some(rec("2026-10-01T00:00:00Z", true)));
        let v = verdict(&f);
        assert!(
            v.code == CRITICAL && v.line.contains("last log drill (PITR) was"),
            "{}",
            v.line
        );
        f.pitr_drill = Some(Some(rec("2026-11-02T00:00:00Z", false)));
        assert!(verdict(&f)
            .line
            .contains("the last log drill (PITR) failed"));
        f.pitr_drill = Some(Some(rec("2026-11-02T00:00:00Z", true)));
        assert_eq!(verdict(&f).code, OK);
    }
}
