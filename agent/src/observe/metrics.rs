//! `/metrics`: Prometheus text exposition format, from the state and the health facts.

use std::fmt::Write;

use crate::observe::health::{Facts, SourceFacts};
use backup_core::state::State;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
    }
    /// A family with one sample per source.
    fn per_source(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        sources: &[SourceFacts],
        value: impl Fn(&SourceFacts) -> f64,
    ) {
        self.family(name, kind, help);
        for s in sources {
            self.sample(name, &[("source", &s.name)], value(s));
        }
    }
}

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> f64 {
    t.map(|t| t.timestamp_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

pub fn render(state: &State, facts: &Facts, verdict_code: u8) -> String {
    let mut o = Out(String::new());
    let src_state = |name: &str| state.sources.get(name).cloned().unwrap_or_default();

    o.per_source(
        "backup_last_success_timestamp_seconds",
        "gauge",
        "Finish time of the newest complete backup (any agent), Unix seconds; 0 if none.",
        &facts.sources,
        |s| ts(s.newest.as_ref().map(|(_, t)| *t)),
    );
    o.per_source(
        "backup_last_attempt_timestamp_seconds",
        "gauge",
        "Start time of this agent's last backup attempt, Unix seconds.",
        &facts.sources,
        |s| ts(src_state(&s.name).last_attempt),
    );
    o.per_source(
        "backup_last_duration_seconds",
        "gauge",
        "Duration of this agent's last successful backup.",
        &facts.sources,
        |s| src_state(&s.name).last_duration_secs.unwrap_or(0.0),
    );
    o.per_source(
        "backup_last_size_bytes",
        "gauge",
        "Size of the data object of this agent's last successful backup.",
        &facts.sources,
        |s| src_state(&s.name).last_size_bytes.unwrap_or(0) as f64,
    );
    o.per_source(
        "backup_failures_total",
        "counter",
        "Failed backup attempts of this agent.",
        &facts.sources,
        |s| src_state(&s.name).failures_total as f64,
    );
    o.per_source(
        "backup_last_run_failed",
        "gauge",
        "1 if this agent's last backup attempt of the source failed (until one succeeds).",
        &facts.sources,
        |s| if s.last_run_failed { 1.0 } else { 0.0 },
    );
    // A split source whose databases could not be listed: its run failed as a whole.
    for (name, _) in &facts.split_errors {
        o.sample("backup_last_run_failed", &[("source", name)], 1.0);
    }
    let galera: Vec<SourceFacts> = facts
        .sources
        .iter()
        .filter(|s| s.desync_stuck.is_some())
        .cloned()
        .collect();
    o.per_source(
        "backup_galera_desync_stuck",
        "gauge",
        "Galera nodes this agent desynced for a dump and could not turn back (wsrep_desync still ON).",
        &galera,
        |s| s.desync_stuck.unwrap_or(0) as f64,
    );
    o.family(
        "backup_store_copies",
        "gauge",
        "Verified copies of the newest backup on each store (0 or 1).",
    );
    let verified_of = |s: &crate::observe::health::SourceFacts| -> Option<Vec<String>> {
        let p = s.policy.as_ref()?;
        (s.newest.as_ref()?.0 == p.backup_id).then(|| p.verified_stores.clone())
    };
    for s in &facts.sources {
        let verified = verified_of(s).unwrap_or_default();
        for st in &facts.all_stores {
            let n = if verified.contains(st) { 1.0 } else { 0.0 };
            o.sample(
                "backup_store_copies",
                &[("source", &s.name), ("store", st)],
                n,
            );
        }
    }
    o.family(
        "backup_policy_compliant",
        "gauge",
        "1 if the newest backup meets the 3-2-1 policy ([policy]: verified copies, media, offsite, immutable).",
    );
    for s in &facts.sources {
        let ok = s.newest.is_some()
            && s.policy.as_ref().is_some_and(|p| {
                p.compliant && s.newest.as_ref().is_some_and(|(id, _)| *id == p.backup_id)
            });
        o.sample(
            "backup_policy_compliant",
            &[("source", &s.name)],
            if ok { 1.0 } else { 0.0 },
        );
    }
    o.per_source(
        "backup_stale",
        "gauge",
        "1 if the newest complete backup is older than the source's max age (or missing).",
        &facts.sources,
        |s| {
            if crate::observe::health::is_stale(s, facts.now) {
                1.0
            } else {
                0.0
            }
        },
    );
    let dropped: Vec<SourceFacts> = facts
        .sources
        .iter()
        .filter(|s| s.dropped.is_some())
        .cloned()
        .collect();
    o.per_source(
        "backup_database_dropped_timestamp_seconds",
        "gauge",
        "When the database of a split source's unit was found gone, Unix seconds (its backups are kept; it is no longer expected to be fresh).",
        &dropped,
        |s| ts(s.dropped),
    );
    // Point-in-time recovery, for the sources that archive their binary log.
    let archived: Vec<SourceFacts> = facts
        .sources
        .iter()
        .filter(|s| s.binlog.is_some())
        .cloned()
        .collect();
    let bl = |s: &SourceFacts| s.binlog.clone().expect("filtered");
    o.per_source(
        "backup_binlog_last_event_timestamp_seconds",
        "gauge",
        "Time of the newest archived binary log event, Unix seconds; 0 if none.",
        &archived,
        |s| ts(bl(s).last_event_at),
    );
    o.per_source(
        "backup_binlog_lag_seconds",
        "gauge",
        "How far behind the server the binary log archive is (now minus the instant up to which everything is archived); -1 if nothing is archived yet.",
        &archived,
        |s| bl(s).lag.map_or(-1.0, |l| l.as_secs_f64()),
    );
    o.per_source(
        "backup_binlog_gaps_total",
        "counter",
        "Gaps found in the archived binary log (logs purged before they were archived).",
        &archived,
        |s| bl(s).gaps_total as f64,
    );
    o.per_source(
        "backup_binlog_archiver_standby",
        "gauge",
        "1 while another agent of the cluster holds the archiver lease (its own metrics report the archive; this agent's lag is not the archive's).",
        &archived,
        |s| if bl(s).standby.is_some() { 1.0 } else { 0.0 },
    );
    o.per_source(
        "backup_binlog_gap_open",
        "gauge",
        "1 while a gap has no backup after it (point-in-time recovery ends at the gap).",
        &archived,
        |s| if bl(s).open_gap.is_some() { 1.0 } else { 0.0 },
    );
    o.per_source(
        "backup_recoverable_until_timestamp_seconds",
        "gauge",
        "The latest instant a point-in-time restore can reach, Unix seconds; 0 if none.",
        &archived,
        |s| ts(bl(s).recoverable_until),
    );
    o.family(
        "backup_restore_drill_last_success_timestamp_seconds",
        "gauge",
        "Finish time of the last successful restore drill; 0 if none.",
    );
    let good = facts.drill.as_ref().filter(|d| d.success);
    let drill_source = facts
        .drill
        .as_ref()
        .and_then(|d| d.source.clone())
        .unwrap_or_default();
    o.sample(
        "backup_restore_drill_last_success_timestamp_seconds",
        &[("source", &drill_source)],
        ts(good.map(|d| d.finished_at)),
    );
    o.family(
        "backup_restore_drill_last_restore_seconds",
        "gauge",
        "How long the replay of the last successful restore drill took (the RTO it measured); 0 if none.",
    );
    o.sample(
        "backup_restore_drill_last_restore_seconds",
        &[("source", &drill_source)],
        good.and_then(|d| d.restore_seconds).unwrap_or(0.0),
    );
    o.family(
        "backup_restore_drill_last_failed",
        "gauge",
        "1 if the last restore drill on record failed.",
    );
    o.sample(
        "backup_restore_drill_last_failed",
        &[("source", &drill_source)],
        if facts.drill.as_ref().is_some_and(|d| !d.success) {
            1.0
        } else {
            0.0
        },
    );
    if let Some(p) = &facts.pitr_drill {
        o.family(
            "backup_pitr_drill_last_success_timestamp_seconds",
            "gauge",
            "Finish time of the last successful log drill (restore --verify --pitr); 0 if none.",
        );
        let t = p.as_ref().filter(|d| d.success).map(|d| d.finished_at);
        o.sample(
            "backup_pitr_drill_last_success_timestamp_seconds",
            &[],
            ts(t),
        );
    }
    o.family(
        "backup_dpo_certificate_expiry_timestamp_seconds",
        "gauge",
        "Expiry of each DPO certificate; 0 if it never expires.",
    );
    for (fpr, exp) in facts.dpo.iter().flatten() {
        o.sample(
            "backup_dpo_certificate_expiry_timestamp_seconds",
            &[("fingerprint", fpr)],
            ts(*exp),
        );
    }
    o.family(
        "backup_alerts_failed_total",
        "counter",
        "Alert deliveries that failed, by channel.",
    );
    for ch in ["webhook", "mail"] {
        o.sample(
            "backup_alerts_failed_total",
            &[("channel", ch)],
            *state.alert_failures.get(ch).unwrap_or(&0) as f64,
        );
    }
    o.family(
        "backup_warnings_total",
        "counter",
        "Warnings since the agent started, per source and kind (a repeated one is logged once).",
    );
    // Every source's counters exist from the start (at 0), as Prometheus counters should.
    let mut counts: std::collections::BTreeMap<(String, String), u64> = facts
        .sources
        .iter()
        .flat_map(|s| {
            crate::observe::warnings::KINDS
                .iter()
                .map(|k| ((s.name.clone(), k.to_string()), 0))
        })
        .collect();
    counts.extend(crate::observe::warnings::counts());
    for ((source, event), n) in counts {
        o.sample(
            "backup_warnings_total",
            &[("source", &source), ("event", &event)],
            n as f64,
        );
    }
    o.family(
        "backup_agent_build_info",
        "gauge",
        "Always 1; the agent's version in a label.",
    );
    o.sample(
        "backup_agent_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    process_metrics(&mut o);
    o.family(
        "backup_health_status",
        "gauge",
        "The healthcheck verdict: 0 OK, 1 CRITICAL, 2 no backup.",
    );
    o.sample("backup_health_status", &[], f64::from(verdict_code));
    // Samples without labels print as name{} value; Prometheus accepts that, but strip it.
    o.0.replace("{} ", " ")
}

/// The standard process metrics (as the Prometheus client libraries export them), read
/// from /proc/self; a value that cannot be read is left out.
fn process_metrics(o: &mut Out) {
    let page = rustix::param::page_size() as f64;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), which ends with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        o.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        o.sample("process_cpu_seconds_total", &[], (utime + stime) / ticks);
    }
    if let Some(rss) = field(24) {
        o.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        o.sample("process_resident_memory_bytes", &[], rss * page);
    }
    if let Some(vsize) = field(23) {
        o.family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        o.sample("process_virtual_memory_bytes", &[], vsize);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(start), Some(boot)) = (field(22), boot) {
        o.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        o.sample("process_start_time_seconds", &[], boot + start / ticks);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        o.family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        o.sample("process_open_fds", &[], fds.count() as f64);
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .and_then(|x| x.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    if let Some(m) = max_fds {
        o.family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        o.sample("process_max_fds", &[], m);
    }
}
