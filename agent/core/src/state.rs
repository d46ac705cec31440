//! The agent's state: one JSON file in the state dir, read by the healthcheck and
//! `/metrics`, written by backups (CLI or daemon) and the daemon's timers. Updates take an
//! exclusive lock and replace the file atomically (temp file, fsync, rename), so readers
//! never see half a file and two processes never lose each other's updates.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::os::atomic_write;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    #[serde(default)]
    pub sources: BTreeMap<String, SourceState>,
    /// Alert conditions by key (`<source>/<condition>`).
    #[serde(default)]
    pub alerts: BTreeMap<String, AlertMark>,
    /// Alert deliveries that failed, by channel.
    #[serde(default)]
    pub alert_failures: BTreeMap<String, u64>,
    /// Verification ledger: per store, per `<prefix>/<backup id>`, the last check of that
    /// copy (after upload, by the scrub, by a repair).
    #[serde(default)]
    pub copies: BTreeMap<String, BTreeMap<String, CopyMark>>,
    /// Per split source (`split = "database"`), the databases it has backed up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split: BTreeMap<String, SplitState>,
}

/// The databases a split source has found on its server, present and dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitState {
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseMark>,
    /// When the server's databases were last listed.
    pub listed_at: Option<DateTime<Utc>>,
}

/// One database of a split source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseMark {
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// When it was found gone; cleared if it comes back. Its backups stay under retention.
    #[serde(default)]
    pub dropped_at: Option<DateTime<Utc>>,
}

/// What one listing of a split source's databases changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitChanges {
    /// Databases seen for the first time (or back after being dropped).
    pub found: Vec<String>,
    /// Databases gone since the last listing (reported once).
    pub dropped: Vec<String>,
}

impl SplitState {
    /// Records the databases one listing found; returns what changed.
    pub fn record(&mut self, present: &[String], now: DateTime<Utc>) -> SplitChanges {
        let mut ch = SplitChanges::default();
        for db in present {
            match self.databases.get_mut(db) {
                Some(m) => {
                    if m.dropped_at.take().is_some() {
                        ch.found.push(db.clone());
                    }
                    m.last_seen = now;
                }
                None => {
                    self.databases.insert(
                        db.clone(),
                        DatabaseMark {
                            first_seen: now,
                            last_seen: now,
                            dropped_at: None,
                        },
                    );
                    ch.found.push(db.clone());
                }
            }
        }
        for (db, m) in self.databases.iter_mut() {
            if m.dropped_at.is_none() && !present.contains(db) {
                m.dropped_at = Some(now);
                ch.dropped.push(db.clone());
            }
        }
        self.listed_at = Some(now);
        ch
    }
}

/// The last verification of one stored copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyMark {
    pub verified: bool,
    pub checked_at: DateTime<Utc>,
    /// "read-back" or "head".
    pub method: String,
    pub size: u64,
    /// The object's ETag when it was verified (HEAD-only checks compare it).
    pub etag: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceState {
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_duration_secs: Option<f64>,
    pub last_size_bytes: Option<u64>,
    #[serde(default)]
    pub failures_total: u64,
    pub last_error: Option<String>,
    pub last_backup_id: Option<String>,
    /// The newest complete backup found in the stores (by any agent), cached by the
    /// daemon's listing timer.
    pub newest_backup: Option<NewestBackup>,
    /// The schedule slot the last scheduled run belonged to (for catching up once).
    pub last_slot: Option<DateTime<Utc>>,
    /// Stores that failed during the last run (no pruning there until a good run).
    #[serde(default)]
    pub failed_stores: Vec<String>,
    /// The 3-2-1 verdict of the newest backup, as the last listing found it.
    pub policy: Option<PolicyMark>,
    /// The GTID position the binary log is archived up to (the last stored segment's end).
    #[serde(default)]
    pub binlog_position: Option<String>,
    /// Binary log archiving's progress and health (the daemon's archiver).
    #[serde(default)]
    pub binlog: BinlogState,
}

/// What the binary log archiver knows of its progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BinlogState {
    /// Time of the newest archived event.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Everything the server had logged up to this instant is archived (the stream was
    /// caught up with nothing waiting): the recoverable window's end.
    pub synced_at: Option<DateTime<Utc>>,
    /// A gap in the chain: what was lost and when it was found. The window closes at it
    /// until a backup taken after it starts a new one.
    pub gap: Option<BinlogGap>,
    #[serde(default)]
    pub gaps_total: u64,
    /// The last archiving error (cleared by the next stored segment or sync).
    pub error: Option<String>,
    pub error_since: Option<DateTime<Utc>>,
    /// Set while another agent of the cluster holds the archiver's lease (this agent
    /// waits to take over): the archive's lag is the holder's to report.
    #[serde(default)]
    pub standby: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BinlogGap {
    /// The archived chain ends here...
    pub after_gtid: String,
    /// ...and archiving went on from here.
    pub resumed_at_gtid: String,
    pub found_at: DateTime<Utc>,
    pub reason: String,
    /// The newest archived event before the gap: where the window ends.
    pub window_end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyMark {
    pub backup_id: String,
    pub compliant: bool,
    pub reasons: Vec<String>,
    /// Verified copies of that backup, by store.
    pub verified_stores: Vec<String>,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewestBackup {
    pub id: String,
    pub finished_at: DateTime<Utc>,
    pub size: u64,
    pub stores: Vec<String>,
}

/// An alert condition: when it began, when it was last sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AlertMark {
    pub active_since: Option<DateTime<Utc>>,
    pub last_sent: Option<DateTime<Utc>>,
    /// The event the condition alerted with ("recovered" names it).
    #[serde(default)]
    pub event: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state file {path}: {source}; check the state_dir exists and is writable by the agent"
    )]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Emptied, truncated or garbled. The next update sets it aside and starts afresh;
    /// what it held is rebuilt from the stores.
    #[error("state file {path} is unreadable ({source}); the agent sets it aside at its next update and starts afresh: run `backup-agent scrub --all` to re-verify every copy and rebuild the verification ledger")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

/// The state file of a state dir.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn err(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path().display().to_string(),
            source,
        }
    }

    /// Reads the state; a missing file is the empty state. Never blocks on the lock:
    /// the file is only ever replaced whole.
    pub fn load(&self) -> Result<State, StateError> {
        match fs::read(self.path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StateError::Corrupt {
                path: self.path().display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Runs `f` under the state dir's exclusive lock.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.err(e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("state.lock"))
            .map_err(|e| self.err(e))?;
        lock.lock().map_err(|e| self.err(e))?;
        let out = f();
        drop(lock);
        out
    }

    /// Applies `f` to the state under an exclusive lock and writes the result.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StateError> {
        self.locked(|| {
            let mut st = match self.load() {
                Ok(st) => st,
                Err(e @ StateError::Corrupt { .. }) => {
                    let aside = self.set_aside()?;
                    tracing::error!(event = "state_corrupt", error = %e, saved_as = %aside.display(), "starting from an empty state; run `backup-agent scrub --all` to re-verify every copy");
                    State::default()
                }
                Err(e) => return Err(e),
            };
            let out = f(&mut st);
            let json = serde_json::to_vec_pretty(&st).expect("serializable");
            atomic_write(&self.path(), &json).map_err(|e| self.err(e))?;
            Ok(out)
        })
    }

    /// Moves an unreadable state file to `state.json.corrupt-<time>` (kept for a look).
    fn set_aside(&self) -> Result<PathBuf, StateError> {
        let aside = self.dir.join(format!(
            "state.json.corrupt-{}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        fs::rename(self.path(), &aside).map_err(|e| self.err(e))?;
        Ok(aside)
    }

    /// drill.json in the state dir: the newest drill this agent knows of.
    pub fn drill_path(&self) -> PathBuf {
        self.dir.join(drill_file(false))
    }

    /// pitr-drill.json or drill.json: where a drill of this kind is recorded.
    pub fn drill_path_of(&self, pitr: bool) -> PathBuf {
        self.dir.join(drill_file(pitr))
    }

    /// Records a drill in drill.json (the log drill in pitr-drill.json), under the state
    /// lock (the one writer of that file). With `only_if_newer`, only when it finished
    /// after the recorded one (the daemon caching drills it found in the stores). Returns
    /// whether it was written.
    pub fn record_drill(&self, rec: &DrillRecord, only_if_newer: bool) -> Result<bool, StateError> {
        self.locked(|| {
            if only_if_newer
                && load_drill_of(&self.dir, rec.pitr)
                    .is_some_and(|d| d.finished_at >= rec.finished_at)
            {
                return Ok(false);
            }
            let json = serde_json::to_vec_pretty(rec).expect("serializable");
            let path = self.drill_path_of(rec.pitr);
            atomic_write(&path, &json).map_err(|e| StateError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            Ok(true)
        })
    }
}

/// A restore drill's record, as `restore --verify` writes it (drill.json in the state dir).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillRecord {
    pub finished_at: DateTime<Utc>,
    pub success: bool,
    pub backup_id: Option<String>,
    pub source: Option<String>,
    pub message: Option<String>,
    /// The log drill (`restore --verify --pitr`): a backup plus the archived binary log
    /// replayed to the next backup's data.
    #[serde(default)]
    pub pitr: bool,
    /// How long the drill's restore took (replay; with --pitr also the log): the RTO it
    /// measured.
    #[serde(default)]
    pub restore_seconds: Option<f64>,
}

fn drill_file(pitr: bool) -> &'static str {
    if pitr {
        "pitr-drill.json"
    } else {
        "drill.json"
    }
}

pub fn load_drill(dir: &Path) -> Option<DrillRecord> {
    load_drill_of(dir, false)
}

/// The recorded drill of one kind (the plain drill, or the log drill).
pub fn load_drill_of(dir: &Path, pitr: bool) -> Option<DrillRecord> {
    let b = fs::read(dir.join(drill_file(pitr))).ok()?;
    serde_json::from_slice(&b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_state_is_named_then_set_aside_at_the_next_update() {
        for garbage in [&b""[..], b"{\"sources\": {\"a\"", b"\x00\xff garbage"] {
            let d = tempfile::tempdir().unwrap();
            let s = StateStore::new(d.path());
            std::fs::write(s.path(), garbage).unwrap();
            let e = s.load().unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(&s.path().display().to_string()));
            assert!(e.to_string().contains("scrub --all"));
            s.update(|st| st.sources.entry("a".into()).or_default().failures_total = 1)
                .unwrap();
            assert_eq!(s.load().unwrap().sources["a"].failures_total, 1);
            let aside: Vec<_> = std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("state.json.corrupt-")
                })
                .collect();
            assert_eq!(aside.len(), 1);
            assert_eq!(std::fs::read(aside[0].path()).unwrap(), garbage);
        }
    }

    #[test]
    fn update_round_trips_and_survives_concurrency() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::new(d.path());
        assert_eq!(s.load().unwrap(), State::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        s.update(|st| {
                            st.sources.entry("a".into()).or_default().failures_total += 1
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.load().unwrap().sources["a"].failures_total, 160);
    }
}
