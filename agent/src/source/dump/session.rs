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

/// Sets up the session (exact values, UTC, no timeouts under back-pressure), starts the
/// consistent snapshot, and records the server, its Galera position and the snapshot's
/// binlog and GTID position in `summary`.
pub(super) async fn open_snapshot(
    conn: &mut Conn,
    summary: &mut DumpSummary,
) -> Result<(), DumpError> {
    // Session: exact values, full SHOW CREATE output, time in UTC, no timeouts while the
    // pipeline applies back-pressure.
    conn.query_drop(
        "SET SESSION sql_mode='', time_zone='+00:00', net_write_timeout=3600, net_read_timeout=3600, \
         character_set_client=utf8mb4, collation_connection=utf8mb4_general_ci, character_set_results=binary",
    )
    .await
    .map_err(server("setting up the dump session"))?;
    let info = fetch(
        conn,
        "SELECT VERSION(), @@hostname, @@log_bin",
        "reading server version",
    )
    .await?;
    summary.server_version = text(&info[0][0]);
    summary.host = text(&info[0][1]);
    let log_bin = text(&info[0][2]) == "1";

    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(server("setting REPEATABLE READ"))?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(server("starting the consistent snapshot"))?;
    summary.galera = galera_position(conn).await?;

    if log_bin {
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
