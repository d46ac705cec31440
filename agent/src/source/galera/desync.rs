//! Desyncing the dumped node: a marker file first, `wsrep_desync=ON`, and OFF on every
//! exit path (and at the next start for markers a killed agent left behind).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};

use super::GaleraError;
use crate::source::dump;
use backup_core::config::{GaleraConfig, NodeConfig, SourceConfig};
use backup_core::secret::{read_secret_file, Secret};

/// A desync in progress, as recorded before it was switched on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesyncMarker {
    pub source: String,
    pub node: String,
    pub endpoint: String,
    pub since: chrono::DateTime<chrono::Utc>,
    pub pid: u32,
}

/// The nodes this process holds desynced, by endpoint, with how many of its running
/// backups dump from each: the units of a split source may dump from one node at once,
/// and the node goes back into flow control only when the last of them is done. The
/// lock is held across the `SET GLOBAL wsrep_desync` itself, so that an ON and an OFF
/// for one node never cross.
static HELD: std::sync::LazyLock<tokio::sync::Mutex<HashMap<String, usize>>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(HashMap::new()));

/// The nodes of `src` that a running backup of this process holds desynced: they stay
/// eligible for another backup here (that desync is not someone else's).
pub async fn desynced_here(src: &SourceConfig) -> Vec<String> {
    let held = HELD.lock().await;
    src.nodes
        .iter()
        .filter(|n| held.get(&n.endpoint.to_string()).is_some_and(|c| *c > 0))
        .map(|n| n.name.clone())
        .collect()
}

fn marker_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("desync")
}

fn marker_path(state_dir: &Path, source: &str, node: &str) -> PathBuf {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let source = backup_core::config::split::file_stem(source);
    marker_dir(state_dir).join(format!("{source}--{safe}.json"))
}

fn admin_secret(src: &SourceConfig, g: &GaleraConfig) -> Result<(String, Secret), GaleraError> {
    let (Some(user), Some(pf)) = (&g.admin_user, &g.admin_password_file) else {
        return Err(GaleraError::NoAdmin {
            source_name: src.name.clone(),
        });
    };
    let pw = read_secret_file(&pf.path, &pf.key)?;
    Ok((user.clone(), pw))
}

async fn set_desync(
    src: &SourceConfig,
    node: &NodeConfig,
    user: &str,
    pw: &Secret,
    on: bool,
) -> Result<(), GaleraError> {
    let mut conn = dump::connect_as(src, &node.endpoint, user, pw).await?;
    let sql = format!("SET GLOBAL wsrep_desync={}", if on { "ON" } else { "OFF" });
    let r = conn.query_drop(&sql).await;
    let _ = conn.disconnect().await;
    r.map_err(|e| GaleraError::Desync {
        hint: if matches!(&e, mysql_async::Error::Server(s) if s.code == 1227) {
            "; the admin account needs SUPER"
        } else {
            ""
        },
        statement: sql,
        node: node.name.clone(),
        endpoint: node.endpoint.to_string(),
        user: user.to_string(),
        source: Box::new(e),
    })
}

/// Whether the marker belongs to a run that is going on right now in another backup-agent
/// process (e.g. `backup-agent backup` by hand next to the daemon on the same state dir).
/// A marker of this very process is never "in progress elsewhere": runs of one source
/// are serialized within a process, and after a container restart the new agent may well
/// have the pid of the one that was killed.
fn in_progress_elsewhere(m: &DesyncMarker) -> bool {
    if m.pid == std::process::id() {
        return false;
    }
    std::fs::read(format!("/proc/{}/cmdline", m.pid))
        .map(|c| String::from_utf8_lossy(&c).contains("backup-agent"))
        .unwrap_or(false)
}

fn read_markers(state_dir: &Path, src: &str) -> Vec<(PathBuf, DesyncMarker)> {
    let Ok(rd) = std::fs::read_dir(marker_dir(state_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, DesyncMarker)> = rd
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                return None;
            }
            let m = serde_json::from_slice::<DesyncMarker>(&std::fs::read(&p).ok()?).ok()?;
            (m.source == src).then_some((p, m))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Desyncs of `src` this agent switched on and could not switch off yet (their markers
/// remain), leaving out runs in progress in another process. Each one is a node that
/// stays out of flow control and may fall behind until someone turns it off.
pub fn stuck_desyncs(state_dir: &Path, src: &SourceConfig) -> Vec<(PathBuf, DesyncMarker)> {
    read_markers(state_dir, &src.name)
        .into_iter()
        .filter(|(_, m)| !in_progress_elsewhere(m))
        .collect()
}

/// Turns off every desync a previous run of this agent left on (killed mid-dump), for
/// `src`. Returns the nodes it turned off; markers whose node cannot be reached stay for
/// the next attempt (and are reported).
pub async fn clear_leftover_desync(
    state_dir: &Path,
    src: &SourceConfig,
) -> (Vec<String>, Vec<String>) {
    let mut cleared = Vec::new();
    let mut errors = Vec::new();
    let Some(g) = &src.galera else {
        return (cleared, errors);
    };
    for (p, m) in stuck_desyncs(state_dir, src) {
        let Some(node) = src.nodes.iter().find(|n| n.name == m.node) else {
            errors.push(format!(
                "desync marker {} names node {:?}, which is no longer configured; turn wsrep_desync OFF on it by hand and delete the file",
                p.display(),
                m.node
            ));
            continue;
        };
        let held = HELD.lock().await;
        let r = if held.get(&node.endpoint.to_string()).is_some_and(|c| *c > 0) {
            // Another backup of this process dumps from that node now, desynced: it turns
            // the desync off when it is done.
            Ok(())
        } else {
            match admin_secret(src, g) {
                Ok((user, pw)) => set_desync(src, node, &user, &pw, false).await,
                Err(e) => Err(e),
            }
        };
        drop(held);
        match r {
            Ok(()) => {
                let _ = std::fs::remove_file(&p);
                tracing::warn!(event = "desync_cleared", source = %src.name, node = %m.node, since = %m.since, "turned off a desync left by an interrupted run");
                cleared.push(m.node);
            }
            Err(e) => errors.push(format!(
                "a run of {} left wsrep_desync=ON on node {}; turning it off failed: {e}",
                m.since, m.node
            )),
        }
    }
    (cleared, errors)
}

/// wsrep_desync=ON on one node for as long as it lives. `release` turns it off; dropping
/// it unreleased (cancellation, panic) turns it off synchronously on a helper thread.
pub struct DesyncGuard {
    src: SourceConfig,
    node: NodeConfig,
    user: String,
    pw: Option<Secret>,
    marker: PathBuf,
}

impl DesyncGuard {
    /// Records the marker, then desyncs `node`.
    pub async fn engage(
        state_dir: &Path,
        src: &SourceConfig,
        node: &NodeConfig,
    ) -> Result<DesyncGuard, GaleraError> {
        let g = src.galera.as_ref().expect("galera source");
        let (user, pw) = admin_secret(src, g)?;
        let marker = marker_path(state_dir, &src.name, &node.name);
        let m = DesyncMarker {
            source: src.name.clone(),
            node: node.name.clone(),
            endpoint: node.endpoint.to_string(),
            since: chrono::Utc::now(),
            pid: std::process::id(),
        };
        backup_core::os::atomic_write(&marker, &serde_json::to_vec_pretty(&m).expect("json"))
            .map_err(|source| GaleraError::Marker {
                path: marker.display().to_string(),
                source,
            })?;
        let mut held = HELD.lock().await;
        let count = held.entry(node.endpoint.to_string()).or_insert(0);
        if *count == 0 {
            if let Err(e) = set_desync(src, node, &user, &pw, true).await {
                let _ = std::fs::remove_file(&marker);
                return Err(e);
            }
        }
        *count += 1;
        drop(held);
        tracing::info!(event = "desync_on", source = %src.name, node = %node.name);
        Ok(DesyncGuard {
            src: src.clone(),
            node: node.clone(),
            user,
            pw: Some(pw),
            marker,
        })
    }

    /// Turns the desync off and removes the marker (kept if that fails).
    pub async fn release(mut self) -> Result<(), GaleraError> {
        let pw = self.pw.take().expect("not yet released");
        let r = release_held(&self.src, &self.node, &self.user, &pw).await;
        self.finish(&r);
        r.map(|_| ())
    }

    fn finish(&self, r: &Result<bool, GaleraError>) {
        match r {
            Ok(off) => {
                let _ = std::fs::remove_file(&self.marker);
                if *off {
                    tracing::info!(event = "desync_off", source = %self.src.name, node = %self.node.name);
                }
            }
            Err(e) => {
                tracing::error!(event = "desync_off_failed", source = %self.src.name, node = %self.node.name, error = %e, "the marker stays; the next run turns it off")
            }
        }
    }
}

impl Drop for DesyncGuard {
    fn drop(&mut self) {
        let Some(pw) = self.pw.take() else { return };
        let (src, node, user) = (self.src.clone(), self.node.clone(), self.user.clone());
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|_| {
                    GaleraError::Cleanup("cannot start a runtime to turn the desync off")
                })?;
            rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(src.connect_timeout_secs.max(1) + 5),
                    release_held(&src, &node, &user, &pw),
                )
                .await
                .unwrap_or(Err(GaleraError::Cleanup("timed out")))
            })
        });
        let r = worker
            .join()
            .unwrap_or(Err(GaleraError::Cleanup("the helper thread panicked")));
        self.finish(&r);
    }
}

/// One backup of this process is done with its desync of `node`: the node goes back into
/// flow control (true) when no other backup here still dumps from it.
async fn release_held(
    src: &SourceConfig,
    node: &NodeConfig,
    user: &str,
    pw: &Secret,
) -> Result<bool, GaleraError> {
    let mut held = HELD.lock().await;
    let key = node.endpoint.to_string();
    let left = match held.get_mut(&key) {
        Some(c) => {
            *c = c.saturating_sub(1);
            *c
        }
        None => 0,
    };
    if left > 0 {
        tracing::info!(event = "desync_kept", source = %src.name, node = %node.name, backups = left, "another backup of this agent still dumps from this node");
        return Ok(false);
    }
    held.remove(&key);
    set_desync(src, node, user, pw, false).await.map(|()| true)
}
