//! What one run backs up, and how many connections it may hold to each server.
//!
//! A split source (`split = "database"`) is listed on its server at every run and backed
//! up as one unit per database (see `backup_core::config::split`); a database that
//! appeared is picked up, one that went away is reported once (log, alert
//! `database_dropped`) and its backups stay. The connection budget
//! (`agent.max_connections_per_server`) bounds the connections all running backups hold
//! to one server, whatever the number of units.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use backup_core::alert::{Alert, Alerter};
use backup_core::config::{Config, SourceConfig};
use backup_core::state::{DatabaseMark, StateStore};

/// Connections per server, shared by every backup of one process.
pub struct Budget {
    per_server: usize,
    servers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Budget {
    pub fn new(cfg: &Config) -> Budget {
        Budget {
            per_server: cfg.agent.max_connections_per_server.max(1),
            servers: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a backup of `src` may open its connections to its server.
    pub async fn take(&self, src: &SourceConfig) -> OwnedSemaphorePermit {
        let sem = self
            .servers
            .lock()
            .expect("budget lock")
            .entry(src.server_key())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_server)))
            .clone();
        let n = src.connections_per_backup().min(self.per_server);
        sem.acquire_many_owned(n as u32)
            .await
            .expect("budget semaphore open")
    }
}

/// The sources of one run, split sources replaced by their units.
pub struct Expansion {
    /// What to back up: plain sources and the units of the databases present now.
    pub units: Vec<SourceConfig>,
    /// Split sources whose databases could not be listed, with the error.
    pub failed: Vec<(SourceConfig, String)>,
}

/// Lists every split source among `sources` on its server, records what changed in the
/// state and alerts on dropped databases; a unit named directly (`<source>/<database>`)
/// is recorded as present.
pub async fn expand(
    sources: &[&SourceConfig],
    state: &StateStore,
    alerter: &Alerter,
    now: DateTime<Utc>,
) -> Expansion {
    let mut out = Expansion {
        units: Vec::new(),
        failed: Vec::new(),
    };
    for src in sources {
        if src.split.is_none() {
            if let Some(u) = &src.unit_of {
                let _ = state.update(|s| {
                    let m = s
                        .split
                        .entry(u.parent.clone())
                        .or_default()
                        .databases
                        .entry(u.database.clone())
                        .or_insert(DatabaseMark {
                            first_seen: now,
                            last_seen: now,
                            dropped_at: None,
                        });
                    m.last_seen = now;
                });
            }
            out.units.push((*src).clone());
            continue;
        }
        let listed = crate::source::split::list(src).await;
        let cond = format!("{}/failed", src.name);
        match listed
            .and_then(|dbs| crate::source::split::record(state, src, &dbs, now).map(|ch| (dbs, ch)))
        {
            Ok((dbs, changes)) => {
                let _ = state.update(|s| {
                    if let Some(e) = s.sources.get_mut(&src.name) {
                        e.last_error = None;
                    }
                });
                alerter.clear(&cond, &src.name).await;
                for db in &changes.dropped {
                    let unit = src.unit(db, Some(now));
                    let a = Alert::new(
                        "database_dropped",
                        &unit.name,
                        false,
                        format!(
                            "source {}: database {db:?} is gone from the server; no more backups of it are taken, and the {} kept are pruned under retention as before",
                            src.name,
                            unit.prefix
                        ),
                    );
                    alerter.send(&a).await;
                }
                out.units.extend(dbs.iter().map(|db| src.unit(db, None)));
            }
            Err(e) => {
                tracing::error!(event = "backup_failed", source = %src.name, error = %e);
                let _ = state.update(|s| {
                    let st = s.sources.entry(src.name.clone()).or_default();
                    st.last_attempt = Some(now);
                    st.failures_total += 1;
                    st.last_error = Some(e.clone());
                });
                let msg = e.clone();
                alerter
                    .condition(
                        &cond,
                        true,
                        || {
                            let mut a = Alert::new(
                                "backup_failed",
                                &src.name,
                                false,
                                format!("backup of source {} failed: {msg}", src.name),
                            );
                            a.details = serde_json::json!({"error": msg});
                            a
                        },
                        &src.name,
                    )
                    .await;
                out.failed.push(((*src).clone(), e));
            }
        }
    }
    out
}
