//! The dump's session: connections, the consistent snapshot, and where it stands in the
//! binlog and in the Galera cluster's history.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, Row};

use backup_core::config::{Endpoint, SourceConfig};
use backup_core::format::columns::{raw, text, RawRow};
use backup_core::format::quote_str;
use backup_core::manifest::BinlogPosition;
use backup_core::secret::Secret;

use super::{server, DumpError, DumpSummary, GaleraPosition};

/// Opens a connection to one of a source's servers.
pub async fn connect(
    src: &SourceConfig,
    endpoint: &Endpoint,
    password: &Secret,
) -> Result<Conn, DumpError> {
    connect_as(src, endpoint, &src.user, password).await
}

/// Opens a connection to a server as `user`, within the source's connect timeout.
pub async fn connect_as(
    src: &SourceConfig,
    endpoint: &Endpoint,
    user: &str,
    password: &Secret,
) -> Result<Conn, DumpError> {
    let mut b = OptsBuilder::default()
        .user(Some(user.to_string()))
        .pass(Some(password.expose().to_string()))
        .stmt_cache_size(0)
        .prefer_socket(false)
        .wait_timeout(Some(28800));
    match endpoint {
        Endpoint::Tcp { host, port } => b = b.ip_or_hostname(host.clone()).tcp_port(*port),
        Endpoint::Socket(p) => b = b.socket(Some(p.display().to_string())),
    }
    let timeout = std::time::Duration::from_secs(src.connect_timeout_secs.max(1));
    let conn = tokio::time::timeout(timeout, Conn::new(b)).await;
    let err = |source| DumpError::Connect {
        endpoint: endpoint.to_string(),
        user: user.to_string(),
        source,
    };
    match conn {
        Ok(r) => r.map_err(err),
        Err(_) => Err(DumpError::Connect {
            endpoint: endpoint.to_string(),
            user: user.to_string(),
            source: mysql_async::Error::Other(
                format!("no answer within {}s", timeout.as_secs()).into(),
            ),
        }),
    }
}

pub(super) async fn fetch(
    conn: &mut Conn,
    sql: &str,
    during: &str,
) -> Result<Vec<RawRow>, DumpError> {
    let rows: Vec<Row> = conn.query(sql).await.map_err(server(during))?;
    Ok(rows.into_iter().map(raw).collect())
}

pub(super) fn bytes(v: &Option<Vec<u8>>) -> Vec<u8> {
    v.clone().unwrap_or_default()
}

/// Runs a SHOW VARIABLES / SHOW STATUS statement and returns its rows as lower-cased
/// name -> value.
pub(crate) async fn name_values(
    conn: &mut Conn,
    sql: &str,
    during: &str,
) -> Result<HashMap<String, String>, DumpError> {
    Ok(fetch(conn, sql, during)
        .await?
        .iter()
        .map(|r| (text(&r[0]).to_ascii_lowercase(), text(&r[1])))
        .collect())
}

/// The Galera position right now, if the server is a Galera node (wsrep_on).
async fn galera_position(conn: &mut Conn) -> Result<Option<GaleraPosition>, DumpError> {
    let var = name_values(
        conn,
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_node_name')",
        "reading wsrep_on",
    )
    .await?;
    if var.get("wsrep_on").map(String::as_str) != Some("ON") {
        return Ok(None);
    }
    let st = name_values(
        conn,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_state_uuid', 'wsrep_last_committed', \
         'wsrep_cluster_conf_id', 'wsrep_cluster_size', 'wsrep_local_state_comment')",
        "reading the Galera position",
    )
    .await?;
    let stat = |n: &str| st.get(n).cloned().unwrap_or_default();
    Ok(Some(GaleraPosition {
        node_name: var.get("wsrep_node_name").cloned().unwrap_or_default(),
        cluster_state_uuid: stat("wsrep_cluster_state_uuid"),
        last_committed: stat("wsrep_last_committed").parse().unwrap_or(-1),
        cluster_conf_id: stat("wsrep_cluster_conf_id").parse().unwrap_or(-1),
        cluster_size: stat("wsrep_cluster_size").parse().unwrap_or(0),
        local_state: stat("wsrep_local_state_comment"),
    }))
}

/// Opens more connections to a source's server as the dump's user: the helpers that read
/// large tables beside the dump's own connection.
pub struct Connector {
    pub source: SourceConfig,
    pub endpoint: Endpoint,
    pub password: std::sync::Arc<Secret>,
    /// The server's connection budget; helpers and the lock only from what it has free.
    pub spare: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl Connector {
    async fn open(&self) -> Result<Conn, DumpError> {
        connect(&self.source, &self.endpoint, &self.password).await
    }
}

/// Connections that read large tables beside the dump's own, in its snapshot.
#[derive(Default)]
pub struct Helpers {
    source: String,
    pub readers: Vec<Conn>,
    /// Holds the commit lock (BACKUP STAGE BLOCK_COMMIT) while the snapshots start.
    lock: Option<Conn>,
    /// The budget's connections they take, given back when they close.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How long the commit lock may be waited for (a running DDL or commit holds it up);
/// past that the dump reads over its own connection alone.
const LOCK_WAIT_SECS: u32 = 10;

/// Session: exact values, full SHOW CREATE output, time in UTC, no timeouts while the
/// pipeline applies back-pressure, REPEATABLE READ.
async fn prepare(conn: &mut Conn) -> Result<(), DumpError> {
    conn.query_drop(
        "SET SESSION sql_mode='', time_zone='+00:00', net_write_timeout=3600, net_read_timeout=3600, \
         character_set_client=utf8mb4, collation_connection=utf8mb4_general_ci, character_set_results=binary",
    )
    .await
    .map_err(server("setting up the dump session"))?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(server("setting REPEATABLE READ"))
}

/// Sets up the dump's session and records the server in `summary`; returns whether the
/// binary log is on.
pub(super) async fn set_up(conn: &mut Conn, summary: &mut DumpSummary) -> Result<bool, DumpError> {
    prepare(conn).await?;
    let info = fetch(
        conn,
        "SELECT VERSION(), @@hostname, @@log_bin",
        "reading server version",
    )
    .await?;
    summary.server_version = text(&info[0][0]);
    summary.host = text(&info[0][1]);
    Ok(text(&info[0][2]) == "1")
}

/// The helpers for a dump of `databases`, when it has a table worth reading over several
/// connections (InnoDB, at least `parallel_table_size`). A helper or the lock connection
/// that cannot be opened leaves the dump with fewer readers (logged), never fails it.
pub(super) async fn open_helpers(
    conn: &mut Conn,
    connector: &Connector,
    databases: &[String],
) -> Result<Helpers, DumpError> {
    let src = &connector.source;
    if src.dump_connections < 2 || databases.is_empty() {
        return Ok(Helpers::default());
    }
    let list: Vec<String> = databases.iter().map(|d| quote_str(d)).collect();
    let large = fetch(
        conn,
        &format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({}) \
             AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') AND ENGINE='InnoDB' AND DATA_LENGTH >= {}",
            list.join(","),
            src.parallel_table_size
        ),
        "looking for large tables",
    )
    .await?;
    if large.first().map(|r| text(&r[0])).as_deref().unwrap_or("0") == "0" {
        return Ok(Helpers::default());
    }
    // n - 1 helpers and the lock's connection, from what the budget has free now: the
    // helpers never hold up another backup, nor wait for one.
    let mut helpers = src.dump_connections - 1;
    let mut permit = None;
    if let Some(spare) = &connector.spare {
        while helpers > 0 {
            if let Ok(p) = spare.clone().try_acquire_many_owned(helpers as u32 + 1) {
                permit = Some(p);
                break;
            }
            helpers -= 1;
        }
        if helpers == 0 {
            tracing::info!(event = "dump_single_connection", source = %src.name, "the connection budget of this server (max_connections_per_server) has no room for helpers now; reading over one connection");
            return Ok(Helpers::default());
        }
    }
    let mut h = Helpers {
        source: src.name.clone(),
        permit,
        ..Helpers::default()
    };
    let opened = async {
        for _ in 0..helpers {
            let mut c = connector.open().await?;
            prepare(&mut c).await?;
            h.readers.push(c);
        }
        let mut lock = connector.open().await?;
        lock.query_drop(format!("SET SESSION lock_wait_timeout={LOCK_WAIT_SECS}"))
            .await
            .map_err(server("setting up the lock connection"))?;
        h.lock = Some(lock);
        Ok::<(), DumpError>(())
    }
    .await;
    if let Err(e) = opened {
        tracing::warn!(event = "dump_single_connection", source = %src.name, error = %e, "could not open the dump's extra connections; reading over one connection");
        h.close().await;
    }
    Ok(h)
}

impl Helpers {
    pub(super) async fn close(&mut self) {
        for c in self.readers.drain(..).chain(self.lock.take()) {
            let _ = c.disconnect().await;
        }
        self.permit = None;
    }
}

/// Starts the consistent snapshot on `conn` and, in the very same snapshot, on every
/// helper: commits are held back (BACKUP STAGE BLOCK_COMMIT, on the lock connection) from
/// before the first snapshot starts until the last one has, so each sees exactly the same
/// transactions. If the lock cannot be had (no RELOAD privilege, a DDL holding it up past
/// the wait, a server before 10.4) the helpers go and the dump reads over `conn` alone.
/// Records the Galera position and the snapshot's binlog and GTID position in `summary`.
pub(super) async fn open_snapshot(
    conn: &mut Conn,
    helpers: &mut Helpers,
    log_bin: bool,
    summary: &mut DumpSummary,
) -> Result<(), DumpError> {
    let mut locked = None;
    if let Some(mut lock) = helpers.lock.take() {
        let got = async {
            lock.query_drop("BACKUP STAGE START").await?;
            lock.query_drop("BACKUP STAGE BLOCK_COMMIT").await
        }
        .await;
        match got {
            Ok(()) => locked = Some(lock),
            Err(e) => {
                tracing::warn!(event = "dump_single_connection", source = %helpers.source, error = %e, "could not hold commits for the instant the readers' snapshots start (the dump user needs RELOAD; a DDL may hold the lock up); reading over one connection");
                let _ = lock.disconnect().await;
                helpers.close().await;
            }
        }
    }
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(server("starting the consistent snapshot"))?;
    backup_core::os::test_pause_point("snapshot-started");
    for h in &mut helpers.readers {
        h.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(server(
                "starting the consistent snapshot on a helper connection",
            ))?;
    }
    if let Some(mut lock) = locked {
        lock.query_drop("BACKUP STAGE END")
            .await
            .map_err(server("releasing the commit lock"))?;
        let _ = lock.disconnect().await;
    }
    summary.galera = galera_position(conn).await?;

    if log_bin {
        let (file, pos) = snapshot_position(conn).await?;
        // With the lock held they cannot differ; if they do, the helpers are not trusted.
        for h in &mut helpers.readers {
            if snapshot_position(h).await? != (file.clone(), pos) {
                tracing::warn!(event = "dump_single_connection", source = %helpers.source, "a helper connection's snapshot is not the dump's; reading over one connection");
                helpers.close().await;
                break;
            }
        }
        if !file.is_empty() {
            let g = fetch(
                conn,
                &format!("SELECT BINLOG_GTID_POS({}, {pos})", quote_str(&file)),
                "reading the snapshot's GTID position",
            )
            .await?;
            let gtid = g
                .first()
                .and_then(|r| r[0].as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned());
            summary.binlog = Some(BinlogPosition {
                file,
                position: pos,
                gtid,
            });
        }
    }
    Ok(())
}

/// The binlog file and position of the connection's snapshot.
async fn snapshot_position(conn: &mut Conn) -> Result<(String, u64), DumpError> {
    let st = fetch(
        conn,
        "SHOW STATUS LIKE 'binlog_snapshot_%'",
        "reading the snapshot's binlog position",
    )
    .await?;
    let mut file = String::new();
    let mut pos = 0u64;
    for r in &st {
        match text(&r[0]).as_str() {
            "Binlog_snapshot_file" => file = text(&r[1]),
            "Binlog_snapshot_position" => pos = text(&r[1]).parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok((file, pos))
}
