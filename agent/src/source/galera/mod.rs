//! Galera: which node to dump, desyncing it for the dump, and the cluster lease that lets
//! the agents of several datacenters produce exactly one backup per schedule slot.
//!
//! Node choice: every configured node is asked (in parallel, within the source's connect
//! timeout) for wsrep_ready, wsrep_connected, wsrep_cluster_status, wsrep_local_state_comment
//! and its cluster configuration. A node is eligible when it is ready, connected, in the
//! Primary component, Synced (or Donor/Desynced because this agent desynced it) and not
//! stale: a node that was frozen still reports its old configuration for a few seconds after
//! it wakes, so a node whose configuration id is behind another Primary node's is skipped.
//! Among the eligible, the agent's own site comes first, then the least loaded (receive
//! queue, then running threads), then the configured order.
//!
//! Desync: `SET GLOBAL wsrep_desync=ON` with the admin credential, after a marker file in
//! the state dir names the node; OFF on every exit path (the guard's drop does it when the
//! run is cancelled), and at the next start for markers a killed agent left behind.
//!
//! Lease: one row per (source, slot) in `<lease_database>.lease` on the cluster itself.
//! Claiming is an INSERT: of two concurrent claims on different nodes Galera certification
//! lets one commit (the other gets a deadlock or, once the winner replicated, a duplicate
//! key). The holder renews `expires_at` every third of the TTL and marks the row done or
//! failed at the end; another agent takes over a row whose holder stopped renewing (expired)
//! or failed, a bounded number of times. All times are the cluster's (UTC_TIMESTAMP).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::source::dump::{self, name_values, DumpError};
use backup_core::config::{GaleraConfig, NodeConfig, SourceConfig};
use backup_core::format::quote_ident;
use backup_core::secret::{read_secret_file, Secret};

/// What a node said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub wsrep_on: bool,
    pub ready: bool,
    pub connected: bool,
    pub cluster_status: String,
    pub local_state: String,
    pub cluster_state_uuid: String,
    pub conf_id: i64,
    pub cluster_size: i64,
    pub last_committed: i64,
    pub recv_queue: i64,
    pub threads_running: i64,
}

/// One node's probe result.
#[derive(Debug, Clone)]
pub struct Probe {
    pub node: NodeConfig,
    pub status: Result<NodeStatus, String>,
}

impl Probe {
    /// One line for messages: name, address, site, what it said.
    pub fn describe(&self, verdict: &Result<(), String>) -> String {
        let site = self.node.site.as_deref().unwrap_or("no site");
        let head = format!("{} ({}, {site})", self.node.name, self.node.endpoint);
        let said = match &self.status {
            Err(e) => return format!("{head}: unreachable: {e}"),
            Ok(s) if !s.wsrep_on => "standalone server (wsrep_on=OFF)".to_string(),
            Ok(s) => format!(
                "{}, {}, ready={}, connected={}, cluster size {}, configuration {}, seqno {}",
                s.local_state,
                s.cluster_status,
                on_off(s.ready),
                on_off(s.connected),
                s.cluster_size,
                s.conf_id,
                s.last_committed
            ),
        };
        match verdict {
            Ok(()) => format!("{head}: {said}"),
            Err(why) => format!("{head}: {said} -> not eligible: {why}"),
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "ON"
    } else {
        "OFF"
    }
}

/// Asks one node for its state.
pub async fn probe(src: &SourceConfig, node: &NodeConfig, password: &Secret) -> Probe {
    let t = Duration::from_secs(src.connect_timeout_secs.max(1));
    let status = match tokio::time::timeout(t, probe_inner(src, node, password)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}s (stopped or overloaded?)",
            t.as_secs()
        )),
    };
    Probe {
        node: node.clone(),
        status,
    }
}

async fn probe_inner(
    src: &SourceConfig,
    node: &NodeConfig,
    password: &Secret,
) -> Result<NodeStatus, DumpError> {
    let mut conn = dump::connect(src, &node.endpoint, password).await?;
    let vars = name_values(
        &mut conn,
        "SHOW GLOBAL VARIABLES WHERE Variable_name = 'wsrep_on'",
        "reading wsrep_on",
    )
    .await?;
    let wsrep_on = vars.get("wsrep_on").map(String::as_str) == Some("ON");
    let st = name_values(
        &mut conn,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_connected', \
         'wsrep_cluster_status', 'wsrep_local_state_comment', 'wsrep_cluster_state_uuid', \
         'wsrep_cluster_conf_id', 'wsrep_cluster_size', 'wsrep_last_committed', \
         'wsrep_local_recv_queue', 'Threads_running')",
        "reading the node's wsrep status",
    )
    .await?;
    let _ = conn.disconnect().await;
    let get = |n: &str| st.get(&n.to_ascii_lowercase()).cloned().unwrap_or_default();
    let num = |n: &str| get(n).parse::<i64>().unwrap_or(-1);
    Ok(NodeStatus {
        wsrep_on,
        ready: get("wsrep_ready") == "ON",
        connected: get("wsrep_connected") == "ON",
        cluster_status: get("wsrep_cluster_status"),
        local_state: get("wsrep_local_state_comment"),
        cluster_state_uuid: get("wsrep_cluster_state_uuid"),
        conf_id: num("wsrep_cluster_conf_id"),
        cluster_size: num("wsrep_cluster_size"),
        last_committed: num("wsrep_last_committed"),
        recv_queue: num("wsrep_local_recv_queue").max(0),
        threads_running: num("Threads_running").max(0),
    })
}

/// Asks every node at once.
pub async fn probe_all(src: &SourceConfig, password: &Secret) -> Vec<Probe> {
    let futs = src.nodes.iter().map(|n| probe(src, n, password));
    futures_util::future::join_all(futs).await
}

/// Why the backup found no node to dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEligibleNode {
    /// No reachable node is in a Primary component: the cluster lost quorum.
    pub quorum_lost: bool,
    /// One line per node.
    pub nodes: Vec<String>,
}

impl std::fmt::Display for NoEligibleNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.quorum_lost {
            write!(f, "no node is in a Primary component: the cluster has lost quorum (or every node is down), so nobody can take a consistent dump until it is restored; this is not something another agent can take over (a Galera arbitrator, garbd, on a third site keeps quorum when one datacenter is lost). Nodes: ")?;
        } else {
            write!(f, "no node is eligible for a dump. Nodes: ")?;
        }
        write!(f, "{}", self.nodes.join("; "))
    }
}

/// Why each node is or is not eligible (pure).
pub fn eligibility(probes: &[Probe], own_desync: &[String]) -> Vec<Result<(), String>> {
    let newest_conf = probes
        .iter()
        .filter_map(|p| p.status.as_ref().ok())
        .filter(|s| s.wsrep_on && s.cluster_status == "Primary")
        .map(|s| s.conf_id)
        .max();
    probes
        .iter()
        .map(|p| {
            let s = p.status.as_ref().map_err(|_| "unreachable".to_string())?;
            if !s.wsrep_on {
                return Ok(());
            }
            if s.cluster_status != "Primary" {
                return Err(format!(
                    "not in the Primary component (wsrep_cluster_status={})",
                    s.cluster_status
                ));
            }
            if !s.connected {
                return Err("not connected to the cluster (wsrep_connected=OFF)".into());
            }
            if !s.ready {
                return Err("not ready (wsrep_ready=OFF)".into());
            }
            let ours = own_desync.iter().any(|n| n == &p.node.name);
            match s.local_state.as_str() {
                "Synced" => {}
                "Donor/Desynced" if ours => {}
                "Donor/Desynced" => {
                    return Err(
                        "Donor/Desynced: a state transfer donor or desynced by someone else".into(),
                    )
                }
                other => return Err(format!("state {other}, not Synced")),
            }
            if let Some(n) = newest_conf {
                if s.conf_id < n {
                    return Err(format!(
                        "stale: it reports cluster configuration {} while another node is in {n} (it was cut off and has not noticed yet)",
                        s.conf_id
                    ));
                }
            }
            Ok(())
        })
        .collect()
}

/// Picks the node to dump: eligible, own site first, then least loaded, then config order.
pub fn choose(
    probes: &[Probe],
    own_site: &str,
    own_desync: &[String],
) -> Result<usize, NoEligibleNode> {
    let verdicts = eligibility(probes, own_desync);
    let best = (0..probes.len())
        .filter(|&i| verdicts[i].is_ok())
        .min_by_key(|&i| {
            let s = probes[i].status.as_ref().expect("eligible means reachable");
            let other_site = probes[i].node.site.as_deref() != Some(own_site);
            (other_site, s.recv_queue, s.threads_running, i)
        });
    best.ok_or_else(|| NoEligibleNode {
        quorum_lost: !probes.iter().any(|p| {
            p.status
                .as_ref()
                .is_ok_and(|s| !s.wsrep_on || s.cluster_status == "Primary")
        }),
        nodes: probes
            .iter()
            .zip(&verdicts)
            .map(|(p, v)| p.describe(v))
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------
// Desync

/// A desync in progress, as recorded before it was switched on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesyncMarker {
    pub source: String,
    pub node: String,
    pub endpoint: String,
    pub since: chrono::DateTime<chrono::Utc>,
    pub pid: u32,
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
    marker_dir(state_dir).join(format!("{source}--{safe}.json"))
}

fn admin_secret(src: &SourceConfig, g: &GaleraConfig) -> Result<(String, Secret), String> {
    let (Some(user), Some(pf)) = (&g.admin_user, &g.admin_password_file) else {
        return Err(format!(
            "source {}: desync needs [source.galera] admin_user and admin_password_file",
            src.name
        ));
    };
    let pw = read_secret_file(&pf.path, &pf.key).map_err(|e| e.to_string())?;
    Ok((user.clone(), pw))
}

async fn set_desync(
    src: &SourceConfig,
    node: &NodeConfig,
    user: &str,
    pw: &Secret,
    on: bool,
) -> Result<(), String> {
    let mut conn = dump::connect_as(src, &node.endpoint, user, pw)
        .await
        .map_err(|e| e.to_string())?;
    let sql = format!("SET GLOBAL wsrep_desync={}", if on { "ON" } else { "OFF" });
    let r = conn.query_drop(&sql).await;
    let _ = conn.disconnect().await;
    r.map_err(|e| {
        format!(
            "{sql} on node {} ({}) as {user:?} failed: {e}{}",
            node.name,
            node.endpoint,
            if matches!(&e, mysql_async::Error::Server(s) if s.code == 1227) {
                "; the admin account needs SUPER"
            } else {
                ""
            }
        )
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
        let r = match admin_secret(src, g) {
            Ok((user, pw)) => set_desync(src, node, &user, &pw, false).await,
            Err(e) => Err(e),
        };
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
    ) -> Result<DesyncGuard, String> {
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
        write_synced(&marker, &serde_json::to_vec_pretty(&m).expect("json"))
            .map_err(|e| format!("cannot write the desync marker {}: {e}", marker.display()))?;
        if let Err(e) = set_desync(src, node, &user, &pw, true).await {
            let _ = std::fs::remove_file(&marker);
            return Err(e);
        }
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
    pub async fn release(mut self) -> Result<(), String> {
        let pw = self.pw.take().expect("not yet released");
        let r = set_desync(&self.src, &self.node, &self.user, &pw, false).await;
        self.finish(&r);
        r
    }

    fn finish(&self, r: &Result<(), String>) {
        match r {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
                tracing::info!(event = "desync_off", source = %self.src.name, node = %self.node.name);
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
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(src.connect_timeout_secs.max(1) + 5),
                    set_desync(&src, &node, &user, &pw, false),
                )
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
            })
        });
        let r = worker
            .join()
            .unwrap_or_else(|_| Err("the helper thread panicked".into()));
        self.finish(&r);
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Lease

/// How many agents may try one slot (the first claim plus takeovers).
pub const MAX_ATTEMPTS: i64 = 3;

/// The lease table, as the documentation gives it.
pub fn lease_ddl(database: &str) -> String {
    let db = quote_ident(database);
    format!(
        "CREATE DATABASE IF NOT EXISTS {db};\n\
         CREATE TABLE IF NOT EXISTS {db}.`lease` (\n  \
           `source` VARCHAR(64) NOT NULL,\n  \
           `slot` VARCHAR(64) NOT NULL,\n  \
           `holder` VARCHAR(200) NOT NULL,\n  \
           `state` VARCHAR(16) NOT NULL,\n  \
           `attempts` INT NOT NULL DEFAULT 1,\n  \
           `claimed_at` DATETIME(3) NOT NULL,\n  \
           `expires_at` DATETIME(3) NOT NULL,\n  \
           `finished_at` DATETIME(3) NULL,\n  \
           `backup_id` VARCHAR(64) NULL,\n  \
           `history` TEXT NULL,\n  \
           PRIMARY KEY (`source`, `slot`)\n\
         ) ENGINE=InnoDB"
    )
}

/// What claiming a slot gave.
#[derive(Debug)]
pub enum Claim {
    /// This agent holds the slot: it dumps, repairs and prunes.
    Held(Lease),
    /// Another agent already produced this slot's backup.
    Done {
        holder: String,
        backup_id: Option<String>,
    },
    /// Every attempt allowed for this slot failed; nobody tries again.
    GaveUp { holder: String, attempts: i64 },
}

/// How a held slot ended: success, the backup id, the error.
type Outcome = (bool, Option<String>, Option<String>);

/// A held lease; renewed in the background until finished.
#[derive(Debug)]
pub struct Lease {
    pub slot: String,
    pub holder: String,
    pub takeover_from: Option<String>,
    finished: Option<tokio::sync::oneshot::Sender<Outcome>>,
    lost: tokio::sync::watch::Receiver<Option<String>>,
    renewer: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

struct LeaseCtx {
    src: SourceConfig,
    db: String,
    ttl: Duration,
    holder: String,
    slot: String,
    pw: Secret,
    own_site: String,
}

impl LeaseCtx {
    fn table(&self) -> String {
        format!("{}.`lease`", quote_ident(&self.db))
    }

    fn ttl_us(&self) -> u128 {
        self.ttl.as_micros()
    }

    /// A connection to a node in the Primary component: own site first.
    async fn connect(&self) -> Result<Conn, String> {
        let mut nodes: Vec<&NodeConfig> = self.src.nodes.iter().collect();
        nodes.sort_by_key(|n| n.site.as_deref() != Some(self.own_site.as_str()));
        let mut errs = Vec::new();
        for n in nodes {
            match dump::connect(&self.src, &n.endpoint, &self.pw).await {
                Ok(mut c) => {
                    let st: Option<(String, String)> = c
                        .query_first(
                            "SELECT MAX(IF(VARIABLE_NAME='WSREP_CLUSTER_STATUS', VARIABLE_VALUE, NULL)), \
                             MAX(IF(VARIABLE_NAME='WSREP_READY', VARIABLE_VALUE, NULL)) \
                             FROM information_schema.GLOBAL_STATUS \
                             WHERE VARIABLE_NAME IN ('WSREP_CLUSTER_STATUS', 'WSREP_READY')",
                        )
                        .await
                        .ok()
                        .flatten();
                    match st {
                        Some((p, r)) if p == "Primary" && r == "ON" => return Ok(c),
                        other => {
                            let _ = c.disconnect().await;
                            errs.push(format!("{}: not usable for the lease ({other:?})", n.name));
                        }
                    }
                }
                Err(e) => errs.push(format!("{}: {e}", n.name)),
            }
        }
        Err(format!(
            "no node in the Primary component accepts the lease: {}",
            errs.join("; ")
        ))
    }

    async fn ensure_table(&self, c: &mut Conn) -> Result<(), String> {
        let probe = c
            .query_drop(format!("SELECT 1 FROM {} LIMIT 0", self.table()))
            .await;
        match probe {
            Ok(()) => Ok(()),
            Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => {
                let ddl = lease_ddl(&self.db);
                for stmt in ddl.split(";\n") {
                    if let Err(e) = c.query_drop(stmt).await {
                        return Err(format!(
                            "the lease table {} does not exist and user {:?} cannot create it ({e}); create it once as an administrator:\n{ddl};\nGRANT SELECT, INSERT, UPDATE, DELETE ON {} TO <the dump user>;",
                            self.table(),
                            self.src.user,
                            self.table()
                        ));
                    }
                }
                Ok(())
            }
            Err(e) => Err(lease_privilege_hint(&e, &self.table(), &self.src.user)),
        }
    }

    async fn try_insert(&self, c: &mut Conn) -> Result<bool, String> {
        let sql = format!(
            "INSERT INTO {} (source, slot, holder, state, attempts, claimed_at, expires_at) \
             VALUES (?, ?, ?, 'running', 1, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3) + INTERVAL {} MICROSECOND)",
            self.table(),
            self.ttl_us()
        );
        match c
            .exec_drop(sql, (&self.src.name, &self.slot, &self.holder))
            .await
        {
            Ok(()) => Ok(true),
            Err(mysql_async::Error::Server(e)) if e.code == 1062 || e.code == 1213 => Ok(false),
            Err(e) => Err(lease_privilege_hint(&e, &self.table(), &self.src.user)),
        }
    }

    async fn renew(&self, c: &mut Conn) -> Result<bool, String> {
        let sql = format!(
            "UPDATE {} SET expires_at = UTC_TIMESTAMP(3) + INTERVAL {} MICROSECOND \
             WHERE source = ? AND slot = ? AND holder = ? AND state = 'running'",
            self.table(),
            self.ttl_us()
        );
        c.exec_drop(sql, (&self.src.name, &self.slot, &self.holder))
            .await
            .map_err(|e| e.to_string())?;
        Ok(c.affected_rows() == 1)
    }
}

fn lease_privilege_hint(e: &mysql_async::Error, table: &str, user: &str) -> String {
    match e {
        mysql_async::Error::Server(s) if s.code == 1142 || s.code == 1143 || s.code == 1044 => {
            format!("user {user:?} may not use the lease table {table} ({e}); grant it: GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO <the dump user>")
        }
        _ => format!("lease table {table}: {e}"),
    }
}

/// The lease row as read.
#[derive(Debug, Clone)]
struct Row {
    holder: String,
    state: String,
    attempts: i64,
    expired: bool,
    claimed_at: String,
    backup_id: Option<String>,
}

/// Claims `slot` of `src` for `holder`, waiting while another live agent holds it.
/// `cancel` resolves when the caller gives up waiting (shutdown).
pub async fn acquire(
    src: &SourceConfig,
    own_site: &str,
    holder: &str,
    slot: &str,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Claim, String> {
    let g = src.galera.as_ref().expect("galera source");
    let pw = read_secret_file(&src.password_file.path, &src.password_file.key)
        .map_err(|e| e.to_string())?;
    let ctx = LeaseCtx {
        src: src.clone(),
        db: g.lease_database.clone(),
        ttl: g.lease_ttl,
        holder: holder.to_string(),
        slot: slot.to_string(),
        pw,
        own_site: own_site.to_string(),
    };
    let poll = (g.lease_ttl / 5).clamp(Duration::from_millis(300), Duration::from_secs(10));
    tokio::pin!(cancel);
    let mut waited_for: Option<String> = None;
    loop {
        let step = claim_step(&ctx).await;
        match step {
            Ok(Step::Claimed(takeover_from)) => {
                let lease = start_renewer(ctx, takeover_from);
                return Ok(Claim::Held(lease));
            }
            Ok(Step::Final(c)) => return Ok(c),
            Ok(Step::Wait(h)) => {
                if waited_for.as_deref() != Some(h.as_str()) {
                    tracing::info!(event = "lease_wait", source = %src.name, slot = %slot, holder = %h, "another agent holds this slot; waiting for it to finish or expire");
                    waited_for = Some(h);
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = &mut cancel => return Err("shutting down while waiting for the lease".into()),
        }
    }
}

enum Step {
    Claimed(Option<String>),
    Final(Claim),
    Wait(String),
}

async fn claim_step(ctx: &LeaseCtx) -> Result<Step, String> {
    let mut c = ctx.connect().await?;
    let r = claim_on(ctx, &mut c).await;
    let _ = c.disconnect().await;
    r
}

async fn claim_on(ctx: &LeaseCtx, c: &mut Conn) -> Result<Step, String> {
    ctx.ensure_table(c).await?;
    if ctx.try_insert(c).await? {
        // Old rows go after a year (the row is the record of who produced each slot).
        let _ = c
            .exec_drop(
                format!(
                    "DELETE FROM {} WHERE source = ? AND claimed_at < UTC_TIMESTAMP() - INTERVAL 400 DAY",
                    ctx.table()
                ),
                (&ctx.src.name,),
            )
            .await;
        return Ok(Step::Claimed(None));
    }
    let row: Option<(String, String, i64, i64, String, Option<String>)> = c
        .exec_first(
            format!(
                "SELECT holder, state, attempts, expires_at < UTC_TIMESTAMP(3), \
                 DATE_FORMAT(claimed_at, '%Y-%m-%d %H:%i:%s.%f'), backup_id \
                 FROM {} WHERE source = ? AND slot = ?",
                ctx.table()
            ),
            (&ctx.src.name, &ctx.slot),
        )
        .await
        .map_err(|e| lease_privilege_hint(&e, &ctx.table(), &ctx.src.user))?;
    let Some((holder, state, attempts, expired, claimed_at, backup_id)) = row else {
        // The winner's row is not visible here yet: look again.
        return Ok(Step::Wait("another agent".into()));
    };
    let row = Row {
        holder,
        state,
        attempts,
        expired: expired != 0,
        claimed_at,
        backup_id,
    };
    match row.state.as_str() {
        "done" => {
            return Ok(Step::Final(Claim::Done {
                holder: row.holder,
                backup_id: row.backup_id,
            }))
        }
        "running" if !row.expired && row.holder != ctx.holder => return Ok(Step::Wait(row.holder)),
        _ => {}
    }
    // Expired, failed, or our own row from a run that died: take it over if allowed.
    if row.attempts >= MAX_ATTEMPTS {
        return Ok(Step::Final(Claim::GaveUp {
            holder: row.holder,
            attempts: row.attempts,
        }));
    }
    // Assignments are evaluated left to right: history reads the old holder and state.
    let sql = format!(
        "UPDATE {} SET \
         history = CONCAT_WS('; ', history, CONCAT(holder, ' ', state, IF(state = 'running', ' (expired)', ''), ' from ', DATE_FORMAT(claimed_at, '%Y-%m-%dT%H:%i:%sZ'))), \
         holder = ?, state = 'running', attempts = attempts + 1, \
         claimed_at = UTC_TIMESTAMP(3), expires_at = UTC_TIMESTAMP(3) + INTERVAL {} MICROSECOND, \
         finished_at = NULL, backup_id = NULL \
         WHERE source = ? AND slot = ? AND holder = ? AND state = ? \
         AND DATE_FORMAT(claimed_at, '%Y-%m-%d %H:%i:%s.%f') = ? \
         AND (state <> 'running' OR expires_at < UTC_TIMESTAMP(3) OR holder = ?)",
        ctx.table(),
        ctx.ttl_us()
    );
    let r = c
        .exec_drop(
            sql,
            (
                &ctx.holder,
                &ctx.src.name,
                &ctx.slot,
                &row.holder,
                &row.state,
                &row.claimed_at,
                &ctx.holder,
            ),
        )
        .await;
    match r {
        Ok(()) if c.affected_rows() == 1 => {
            tracing::warn!(event = "lease_takeover", source = %ctx.src.name, slot = %ctx.slot, from = %row.holder, state = %row.state, "taking over the slot");
            Ok(Step::Claimed(Some(row.holder)))
        }
        Ok(()) => Ok(Step::Wait(row.holder)),
        Err(mysql_async::Error::Server(e)) if e.code == 1213 => Ok(Step::Wait(row.holder)),
        Err(e) => Err(lease_privilege_hint(&e, &ctx.table(), &ctx.src.user)),
    }
}

fn start_renewer(ctx: LeaseCtx, takeover_from: Option<String>) -> Lease {
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<Outcome>();
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(None);
    let slot = ctx.slot.clone();
    let holder = ctx.holder.clone();
    let renewer = tokio::spawn(async move {
        let every = ctx.ttl / 3;
        let mut conn: Option<Conn> = None;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                fin = &mut done_rx => {
                    let Ok((ok, backup_id, error)) = fin else {
                        // Dropped without finishing (the run was cancelled): mark it failed,
                        // so that another agent may take the slot over at once.
                        return finish(&ctx, &mut conn, false, None, Some("cancelled".into())).await;
                    };
                    return finish(&ctx, &mut conn, ok, backup_id, error).await;
                }
                _ = tokio::time::sleep(every) => {}
            }
            if conn.is_none() {
                conn = ctx.connect().await.ok();
            }
            let renewed = match conn.as_mut() {
                Some(c) => ctx.renew(c).await,
                None => Err("no node reachable".into()),
            };
            match renewed {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    let _ = lost_tx.send(Some(format!(
                        "the lease of slot {} was taken over by another agent (this agent did not renew it in time)",
                        ctx.slot
                    )));
                    return Ok(());
                }
                Err(e) => {
                    conn = None;
                    tracing::warn!(event = "lease_renew_failed", source = %ctx.src.name, error = %e);
                    if last_ok.elapsed() >= ctx.ttl {
                        let _ = lost_tx.send(Some(format!(
                            "could not renew the lease of slot {} within its TTL ({e}); another agent may take over",
                            ctx.slot
                        )));
                    }
                }
            }
        }
    });
    Lease {
        slot,
        holder,
        takeover_from,
        finished: Some(done_tx),
        lost: lost_rx,
        renewer: Some(renewer),
    }
}

async fn finish(
    ctx: &LeaseCtx,
    conn: &mut Option<Conn>,
    ok: bool,
    backup_id: Option<String>,
    error: Option<String>,
) -> Result<(), String> {
    let sql = format!(
        "UPDATE {} SET state = ?, backup_id = ?, finished_at = UTC_TIMESTAMP(3), expires_at = UTC_TIMESTAMP(3), \
         history = IF(? IS NULL, history, CONCAT_WS('; ', history, CONCAT('failed: ', LEFT(?, 400)))) \
         WHERE source = ? AND slot = ? AND holder = ?",
        ctx.table()
    );
    let state = if ok { "done" } else { "failed" };
    let mut last = String::new();
    for _ in 0..3 {
        if conn.is_none() {
            match ctx.connect().await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        match c
            .exec_drop(
                &sql,
                (
                    state,
                    &backup_id,
                    &error,
                    &error,
                    &ctx.src.name,
                    &ctx.slot,
                    &ctx.holder,
                ),
            )
            .await
        {
            Ok(()) => {
                if let Some(c) = conn.take() {
                    let _ = c.disconnect().await;
                }
                return Ok(());
            }
            Err(e) => {
                last = e.to_string();
                *conn = None;
            }
        }
    }
    Err(format!(
        "could not mark slot {} {state} in the lease table: {last}",
        ctx.slot
    ))
}

impl Lease {
    /// Resolves with the reason when the lease is lost (taken over, or not renewable).
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(r) = self.lost.borrow().clone() {
                return r;
            }
            if self.lost.changed().await.is_err() {
                // The renewer ended without a loss: never resolves.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records the slot's outcome in the lease row and stops renewing.
    pub async fn finish(mut self, ok: bool, backup_id: Option<String>, error: Option<String>) {
        if let Some(tx) = self.finished.take() {
            let _ = tx.send((ok, backup_id, error));
        }
        if let Some(h) = self.renewer.take() {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(event = "lease_finish_failed", slot = %self.slot, error = %e)
                }
                Err(e) => {
                    tracing::error!(event = "lease_finish_failed", slot = %self.slot, error = %e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::config::Endpoint;

    fn node(name: &str, site: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 1,
            },
            site: Some(site.into()),
        }
    }

    fn synced(conf: i64, queue: i64) -> NodeStatus {
        NodeStatus {
            wsrep_on: true,
            ready: true,
            connected: true,
            cluster_status: "Primary".into(),
            local_state: "Synced".into(),
            cluster_state_uuid: "u".into(),
            conf_id: conf,
            cluster_size: 3,
            last_committed: 10,
            recv_queue: queue,
            threads_running: 1,
        }
    }

    fn probes(list: Vec<(NodeConfig, Result<NodeStatus, String>)>) -> Vec<Probe> {
        list.into_iter()
            .map(|(node, status)| Probe { node, status })
            .collect()
    }

    #[test]
    fn prefers_own_site_then_least_loaded() {
        let p = probes(vec![
            (node("a", "dc1"), Ok(synced(4, 5))),
            (node("b", "dc1"), Ok(synced(4, 0))),
            (node("c", "dc2"), Ok(synced(4, 0))),
        ]);
        assert_eq!(choose(&p, "dc1", &[]), Ok(1));
        assert_eq!(choose(&p, "dc2", &[]), Ok(2));
        assert_eq!(choose(&p, "dc9", &[]), Ok(1));
    }

    #[test]
    fn skips_desynced_stale_and_non_primary() {
        let mut desynced = synced(4, 0);
        desynced.local_state = "Donor/Desynced".into();
        let stale = synced(3, 0);
        let mut np = synced(5, 0);
        np.cluster_status = "non-Primary".into();
        let p = probes(vec![
            (node("a", "dc1"), Ok(desynced.clone())),
            (node("b", "dc1"), Ok(stale)),
            (node("c", "dc2"), Ok(synced(4, 9))),
            (node("d", "dc1"), Ok(np)),
            (node("e", "dc1"), Err("refused".into())),
        ]);
        assert_eq!(choose(&p, "dc1", &[]), Ok(2));
        // A node this agent desynced itself stays eligible.
        assert_eq!(choose(&p, "dc1", &["a".into()]), Ok(0));
        let v = eligibility(&p, &[]);
        assert!(v[1].as_ref().unwrap_err().contains("stale"));
        assert!(v[3].as_ref().unwrap_err().contains("Primary"));
    }

    #[test]
    fn quorum_loss_is_named_and_every_node_listed() {
        let mut np = synced(5, 0);
        np.cluster_status = "non-Primary".into();
        let p = probes(vec![
            (node("a", "dc1"), Ok(np)),
            (node("b", "dc1"), Err("no answer within 3s".into())),
        ]);
        let e = choose(&p, "dc1", &[]).unwrap_err();
        assert!(e.quorum_lost);
        let msg = e.to_string();
        assert!(
            msg.contains("lost quorum") && msg.contains("garbd"),
            "{msg}"
        );
        assert!(msg.contains("a (127.0.0.1:1, dc1)") && msg.contains("no answer within 3s"));
        // Primary but desynced by someone else: no quorum problem, still nothing eligible.
        let mut d = synced(4, 0);
        d.local_state = "Donor/Desynced".into();
        let p = probes(vec![(node("a", "dc1"), Ok(d))]);
        let e = choose(&p, "dc1", &[]).unwrap_err();
        assert!(!e.quorum_lost);
        assert!(e.to_string().contains("desynced by someone else"));
    }

    #[test]
    fn standalone_server_is_eligible() {
        let s = NodeStatus {
            wsrep_on: false,
            ..Default::default()
        };
        let p = probes(vec![(node("a", "dc1"), Ok(s))]);
        assert_eq!(choose(&p, "dc1", &[]), Ok(0));
    }
}
