//! A split source's databases, found anew at every run: list the server's databases,
//! keep those the selection matches, and record in the state what appeared and what went
//! away (a dropped database is reported once; its backups stay under retention).

use chrono::{DateTime, Utc};
use mysql_async::prelude::Queryable;

use backup_core::config::SourceConfig;
use backup_core::secret::read_secret_file;
use backup_core::state::{SplitChanges, StateStore};

/// The databases of split source `src` its selection matches, from the first of its
/// servers that answers (sorted). The error names the servers tried and the fix.
pub async fn list(src: &SourceConfig) -> Result<Vec<String>, String> {
    let pw = read_secret_file(&src.password_file.path, &src.password_file.key)
        .map_err(|e| format!("source {}: {e}", src.name))?;
    let mut errors = Vec::new();
    for node in &src.nodes {
        let mut conn = match super::dump::connect(src, &node.endpoint, &pw).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let dbs: Result<Vec<String>, _> = conn.query("SHOW DATABASES").await;
        let _ = conn.disconnect().await;
        match dbs {
            Ok(dbs) => {
                let mut v: Vec<String> = dbs.into_iter().filter(|d| src.selects(d)).collect();
                v.sort();
                return Ok(v);
            }
            Err(e) => errors.push(format!("listing databases on {}: {e}", node.endpoint)),
        }
    }
    Err(format!(
        "source {}: cannot list the databases to back up one by one: {}",
        src.name,
        errors.join("; ")
    ))
}

/// Records one listing of split source `src` in the state and logs what changed; returns
/// the changes (the caller alerts on dropped databases).
pub fn record(
    state: &StateStore,
    src: &SourceConfig,
    present: &[String],
    now: DateTime<Utc>,
) -> Result<SplitChanges, String> {
    let mut changes = SplitChanges::default();
    state
        .update(|s| {
            changes = s
                .split
                .entry(src.name.clone())
                .or_default()
                .record(present, now);
        })
        .map_err(|e| e.to_string())?;
    for db in &changes.found {
        tracing::info!(event = "database_found", source = %src.name, database = %db, "a database to back up on its own");
    }
    for db in &changes.dropped {
        tracing::warn!(event = "database_dropped", source = %src.name, database = %db, "the database is gone from the server; its backups are kept under retention");
    }
    if present.is_empty() {
        tracing::warn!(event = "split_empty", source = %src.name, "no database on the server matches databases.include/exclude");
    }
    Ok(changes)
}
