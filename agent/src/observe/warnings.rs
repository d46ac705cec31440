//! Repeated warnings: the same warning about the same thing (a MyISAM table that every
//! nightly dump reads without snapshot consistency, for 80 tenants) is logged once per
//! agent start and counted, so the log says it once and `/metrics` says how often.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// The kinds of repeated warnings (the `event` label of `backup_warnings_total`).
pub const KINDS: &[&str] = &["non_transactional_table"];

/// (source, event, subject) already logged since the agent started.
static LOGGED: Mutex<BTreeSet<(String, String, String)>> = Mutex::new(BTreeSet::new());
/// Occurrences per (source, event) since the agent started.
static COUNTS: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// Counts one occurrence of warning `event` about `subject` of `source`; true the first
/// time since the agent started (log it then), false afterwards.
pub fn first(source: &str, event: &str, subject: &str) -> bool {
    *COUNTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((source.to_string(), event.to_string()))
        .or_default() += 1;
    LOGGED.lock().unwrap_or_else(|p| p.into_inner()).insert((
        source.to_string(),
        event.to_string(),
        subject.to_string(),
    ))
}

/// Occurrences per (source, event) since the agent started.
pub fn counts() -> Vec<((String, String), u64)> {
    COUNTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn once_per_subject_and_counted() {
        assert!(super::first("s-w", "e", "db.t1"));
        assert!(!super::first("s-w", "e", "db.t1"));
        assert!(super::first("s-w", "e", "db.t2"));
        assert!(!super::first("s-w", "e", "db.t1"));
        let c = super::counts();
        assert!(c.contains(&(("s-w".into(), "e".into()), 4)), "{c:?}");
    }
}
