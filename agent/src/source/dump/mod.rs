//! The dumper: a consistent logical dump of a MariaDB server over one connection
//! (mysql_async, text protocol), written as SQL that the stock `mariadb` client loads.
//!
//! Consistency: REPEATABLE READ and START TRANSACTION WITH CONSISTENT SNAPSHOT give one
//! snapshot for every InnoDB table of every selected database, and MariaDB reports the
//! binlog position of exactly that snapshot (binlog_snapshot_file/position), so no FLUSH
//! TABLES WITH READ LOCK is ever needed. Non-transactional tables are read in the same
//! session but are not snapshot-consistent; the manifest says how many there were.
//!
//! Exactness: values are read with character_set_results=binary, i.e. as the bytes the
//! server stores, and written per column type as a literal that reproduces those bytes:
//! numbers as they are, BIT as b'..', binary strings and geometry as X'..', text in a
//! UTF-8 family charset as an escaped string, text in any other charset as
//! `_charset X'..'`, temporal and other types as escaped strings.
//!
//! Order of the output, so that it loads whatever depends on what: per database the
//! database, its sequences, tables and data; then all routines; then all views in
//! dependency order; then triggers and events; then users and grants; then the trailer.

use std::collections::{HashMap, HashSet};

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, Row};
use tokio::sync::mpsc;

use backup_core::config::{Endpoint, SourceConfig};
use backup_core::digest::{definition_digest, TableDigest};
use backup_core::format::columns::{
    data_column, push_value, raw, select_rows_sql, text, Column, RawRow, COLUMNS_QUERY,
};
use backup_core::format::{
    self, qualified, quote_ident, quote_str, TableTrailer, GRANTS_SECTION, USERS_SECTION,
};
use backup_core::manifest::BinlogPosition;
use backup_core::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot connect to MariaDB at {endpoint} as user {user:?}: {source}; check the server is running and reachable, and the user and password file")]
    Connect {
        endpoint: String,
        user: String,
        source: mysql_async::Error,
    },
    #[error("{during}: {source}")]
    Server {
        during: String,
        source: mysql_async::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the compression/encryption stage stopped before the dump finished")]
    OutputClosed,
}

fn server(during: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> DumpError {
    let during = during.into();
    move |source| DumpError::Server { during, source }
}

/// Where in the cluster's history a dump of a Galera node stands: read on the dump's own
/// connection right after its snapshot started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GaleraPosition {
    pub node_name: String,
    pub cluster_state_uuid: String,
    pub last_committed: i64,
    pub cluster_conf_id: i64,
    pub cluster_size: i64,
    pub local_state: String,
}

/// What the dump found, for the manifest and the log.
#[derive(Debug, Clone, Default)]
pub struct DumpSummary {
    pub server_version: String,
    pub host: String,
    pub databases: Vec<String>,
    pub binlog: Option<BinlogPosition>,
    pub tables: usize,
    pub rows: u64,
    pub largest_statement: usize,
    /// Galera position of the snapshot, when the server is a Galera node.
    pub galera: Option<GaleraPosition>,
    /// Tables that are not snapshot-consistent (names go to the log, not the manifest).
    pub non_transactional: Vec<String>,
    pub warnings: Vec<String>,
}

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

/// Buffers SQL text and hands it to the compression stage in chunks over a bounded
/// channel: when that stage is slower, the dump waits instead of filling memory.
pub struct SqlOutput {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    /// Bytes per second at most, and when the next bytes may go.
    rate: Option<(u64, tokio::time::Instant)>,
}

const CHUNK: usize = 256 * 1024;

impl SqlOutput {
    pub fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        SqlOutput {
            tx,
            buf: Vec::with_capacity(CHUNK * 2),
            rate: None,
        }
    }

    /// Limits the dump to `bytes_per_sec` of SQL: the reader waits when it is ahead.
    pub fn with_rate_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.rate = bytes_per_sec.map(|r| (r.max(1), tokio::time::Instant::now()));
        self
    }

    async fn pace(&mut self, n: usize) {
        if let Some((rate, next)) = &mut self.rate {
            *next = pace_after(*next, tokio::time::Instant::now(), n as u64, *rate);
            tokio::time::sleep_until(*next).await;
        }
    }

    pub async fn write(&mut self, b: &[u8]) -> Result<(), DumpError> {
        if self.buf.is_empty() && b.len() >= CHUNK {
            self.pace(b.len()).await;
            return self
                .tx
                .send(b.to_vec())
                .await
                .map_err(|_| DumpError::OutputClosed);
        }
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), DumpError> {
        if !self.buf.is_empty() {
            self.pace(self.buf.len()).await;
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK * 2));
            self.tx
                .send(chunk)
                .await
                .map_err(|_| DumpError::OutputClosed)?;
        }
        Ok(())
    }
}

/// When `n` more bytes at `rate` bytes/s may have gone, given that the previous ones were
/// due at `next`. Time lost behind (a slow consumer, a frozen process) is credited for one
/// second at most, so the dump never bursts above its limit to catch up.
fn pace_after(
    next: tokio::time::Instant,
    now: tokio::time::Instant,
    n: u64,
    rate: u64,
) -> tokio::time::Instant {
    let credit = std::time::Duration::from_secs(1);
    let from = next.max(now.checked_sub(credit).unwrap_or(now));
    from + std::time::Duration::from_secs_f64(n as f64 / rate.max(1) as f64)
}

async fn fetch(conn: &mut Conn, sql: &str, during: &str) -> Result<Vec<RawRow>, DumpError> {
    let rows: Vec<Row> = conn.query(sql).await.map_err(server(during))?;
    Ok(rows.into_iter().map(raw).collect())
}

fn bytes(v: &Option<Vec<u8>>) -> Vec<u8> {
    v.clone().unwrap_or_default()
}

struct TableInfo {
    name: String,
    kind: String,
    engine: String,
}

/// One SHOW CREATE result for a stored object, with the session settings it was made in.
struct Object {
    db: String,
    /// VIEW, PROCEDURE, FUNCTION, TRIGGER or EVENT.
    kind: &'static str,
    name: String,
    create: Vec<u8>,
    sql_mode: Option<String>,
    charset_client: Option<String>,
    collation_connection: Option<String>,
    time_zone: Option<String>,
}

const NON_DATA_ENGINES: &[&str] = &["BLACKHOLE", "FEDERATED", "SPIDER", "CONNECT"];
const TRANSACTIONAL_ENGINES: &[&str] = &["InnoDB", "ROCKSDB", "TokuDB"];

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

/// Runs a whole dump on `conn`, writing SQL to `out`.
pub async fn dump(
    conn: &mut Conn,
    source: &SourceConfig,
    description: &str,
    out: &mut SqlOutput,
) -> Result<DumpSummary, DumpError> {
    let mut summary = DumpSummary::default();
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

    let dbs = fetch(conn, "SHOW DATABASES", "listing databases").await?;
    let databases: Vec<String> = dbs
        .iter()
        .map(|r| text(&r[0]))
        .filter(|d| source.selects(d))
        .collect();
    for inc in &source.include {
        if !databases.contains(inc) {
            return Err(DumpError::Invalid(format!(
                "source {}: database {inc:?} is in databases.include but does not exist on the server (or the dump user cannot see it)",
                source.name
            )));
        }
    }
    summary.databases = databases.clone();

    let accounts = if source.users_and_grants {
        Some(read_accounts(conn).await?)
    } else {
        None
    };
    out.write(format::header(description).as_bytes()).await?;
    if let Some(a) = &accounts {
        write_accounts(out, a).await?;
    }

    let mut trailers: Vec<TableTrailer> = Vec::new();
    let mut objects: Vec<format::ObjectTrailer> = Vec::new();
    // Objects in this dump that grants may name: (db, name) of tables, views, sequences,
    // and (db, name) of routines.
    let mut known_relations: HashSet<(String, String)> = HashSet::new();
    let mut known_routines: HashSet<(String, String)> = HashSet::new();
    let mut routines: Vec<Object> = Vec::new();
    let mut views: Vec<Object> = Vec::new();
    let mut triggers: Vec<Object> = Vec::new();
    let mut events: Vec<Object> = Vec::new();

    for db in &databases {
        let qdb = quote_ident(db);
        let lit = quote_str(db);
        let cdb = fetch(
            conn,
            &format!("SHOW CREATE DATABASE {qdb}"),
            &format!("reading database {db}"),
        )
        .await?;
        let mut create_db = bytes(&cdb[0][1]);
        out.write(format!("\n--\n-- Database {qdb}\n--\n").as_bytes())
            .await?;
        create_db.extend_from_slice(b";\n");
        out.write(&create_db).await?;
        out.write(format!("USE {qdb};\n").as_bytes()).await?;

        let tables = fetch(
            conn,
            &format!("SELECT TABLE_NAME, TABLE_TYPE, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA={lit} ORDER BY TABLE_NAME"),
            &format!("listing tables of {db}"),
        )
        .await?;
        let tables: Vec<TableInfo> = tables
            .iter()
            .map(|r| TableInfo {
                name: text(&r[0]),
                kind: text(&r[1]),
                engine: text(&r[2]),
            })
            .filter(|t| t.kind != "TEMPORARY")
            .collect();
        for t in &tables {
            known_relations.insert((db.clone(), t.name.clone()));
        }

        let cols = fetch(
            conn,
            &format!("{COLUMNS_QUERY}{lit} ORDER BY TABLE_NAME, ORDINAL_POSITION"),
            &format!("reading columns of {db}"),
        )
        .await?;
        let mut columns: HashMap<String, Vec<Column>> = HashMap::new();
        for (table, col) in cols.iter().filter_map(data_column) {
            columns.entry(table).or_default().push(col);
        }

        // Sequences first: a table may take its DEFAULT from one.
        for t in tables.iter().filter(|t| t.kind == "SEQUENCE") {
            objects.push(format::ObjectTrailer {
                db: db.clone(),
                kind: "SEQUENCE".into(),
                name: t.name.clone(),
            });
            let q = qualified(db, &t.name);
            let c = fetch(
                conn,
                &format!("SHOW CREATE SEQUENCE {q}"),
                &format!("reading sequence {db}.{}", t.name),
            )
            .await?;
            let mut s = bytes(&c[0][1]);
            s.extend_from_slice(b";\n");
            out.write(&s).await?;
            let v = fetch(
                conn,
                &format!("SELECT next_not_cached_value FROM {q}"),
                &format!("reading sequence {db}.{}", t.name),
            )
            .await?;
            out.write(
                format!(
                    "DO SETVAL({}, {}, 0);\n",
                    quote_ident(&t.name),
                    text(&v[0][0])
                )
                .as_bytes(),
            )
            .await?;
        }

        for t in tables
            .iter()
            .filter(|t| t.kind == "BASE TABLE" || t.kind == "SYSTEM VERSIONED")
        {
            let q = qualified(db, &t.name);
            let c = fetch(
                conn,
                &format!("SHOW CREATE TABLE {q}"),
                &format!("reading the definition of {db}.{}", t.name),
            )
            .await?;
            let create = bytes(&c[0][1]);
            out.write(format!("\n--\n-- Table {}\n--\n", quote_ident(&t.name)).as_bytes())
                .await?;
            let mut s = create.clone();
            s.extend_from_slice(b";\n");
            out.write(&s).await?;
            if !TRANSACTIONAL_ENGINES
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&t.engine))
            {
                summary.non_transactional.push(format!("{db}.{}", t.name));
            }
            let cols = columns.get(&t.name).map(|v| v.as_slice()).unwrap_or(&[]);
            let digest = if NON_DATA_ENGINES
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&t.engine))
                || cols.is_empty()
            {
                TableDigest::new()
            } else {
                dump_rows(conn, db, &t.name, cols, out, &mut summary).await?
            };
            summary.tables += 1;
            summary.rows += digest.rows();
            trailers.push(TableTrailer {
                db: db.clone(),
                table: t.name.clone(),
                rows: digest.rows(),
                content: digest.hex(),
                definition: definition_digest(&String::from_utf8_lossy(&create)),
            });
        }

        // Routines, views, triggers, events: collected now, written after all tables.
        let rs = fetch(
            conn,
            &format!("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA={lit} ORDER BY ROUTINE_TYPE, ROUTINE_NAME"),
            &format!("listing routines of {db}"),
        )
        .await?;
        for r in &rs {
            let (name, kind) = (text(&r[0]), text(&r[1]));
            known_routines.insert((db.clone(), name.clone()));
            if kind != "PROCEDURE" && kind != "FUNCTION" {
                summary.warnings.push(format!(
                    "a stored {} was not dumped (not supported)",
                    kind.to_lowercase()
                ));
                continue;
            }
            let c = fetch(
                conn,
                &format!("SHOW CREATE {kind} {}", qualified(db, &name)),
                &format!("reading {kind} {db}.{name}"),
            )
            .await?;
            // Procedure, sql_mode, Create Procedure, character_set_client, collation_connection, ...
            let create = c[0][2].clone().ok_or_else(|| {
                DumpError::Invalid(format!(
                    "the dump user cannot read the body of {kind} {db}.{name}; grant it SELECT on mysql.proc (or global SELECT)"
                ))
            })?;
            routines.push(Object {
                kind: if kind == "PROCEDURE" {
                    "PROCEDURE"
                } else {
                    "FUNCTION"
                },
                db: db.clone(),
                name,
                create,
                sql_mode: Some(text(&c[0][1])),
                charset_client: Some(text(&c[0][3])),
                collation_connection: Some(text(&c[0][4])),
                time_zone: None,
            });
        }
        let vs = fetch(
            conn,
            &format!("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA={lit} ORDER BY TABLE_NAME"),
            &format!("listing views of {db}"),
        )
        .await?;
        for r in &vs {
            let name = text(&r[0]);
            let c = fetch(
                conn,
                &format!("SHOW CREATE VIEW {}", qualified(db, &name)),
                &format!("reading view {db}.{name}"),
            )
            .await?;
            views.push(Object {
                kind: "VIEW",
                db: db.clone(),
                name,
                create: bytes(&c[0][1]),
                sql_mode: None,
                charset_client: Some(text(&c[0][2])),
                collation_connection: Some(text(&c[0][3])),
                time_zone: None,
            });
        }
        let ts = fetch(
            conn,
            &format!("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA={lit} ORDER BY EVENT_OBJECT_TABLE, ACTION_ORDER"),
            &format!("listing triggers of {db}"),
        )
        .await?;
        for r in &ts {
            let name = text(&r[0]);
            let c = fetch(
                conn,
                &format!("SHOW CREATE TRIGGER {}", qualified(db, &name)),
                &format!("reading trigger {db}.{name}"),
            )
            .await?;
            triggers.push(Object {
                kind: "TRIGGER",
                db: db.clone(),
                name,
                create: bytes(&c[0][2]),
                sql_mode: Some(text(&c[0][1])),
                charset_client: Some(text(&c[0][3])),
                collation_connection: Some(text(&c[0][4])),
                time_zone: None,
            });
        }
        let es = fetch(
            conn,
            &format!("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA={lit} ORDER BY EVENT_NAME"),
            &format!("listing events of {db}"),
        )
        .await?;
        for r in &es {
            let name = text(&r[0]);
            let c = fetch(
                conn,
                &format!("SHOW CREATE EVENT {}", qualified(db, &name)),
                &format!("reading event {db}.{name}"),
            )
            .await?;
            events.push(Object {
                kind: "EVENT",
                db: db.clone(),
                name,
                create: bytes(&c[0][3]),
                sql_mode: Some(text(&c[0][1])),
                charset_client: Some(text(&c[0][4])),
                collation_connection: Some(text(&c[0][5])),
                time_zone: Some(text(&c[0][2])),
            });
        }
    }

    if !routines.is_empty() {
        out.write(b"\n--\n-- Stored routines\n--\n").await?;
    }
    for o in &routines {
        write_object(out, o, true).await?;
    }
    let views = order_views(views);
    // Grants before views (a view's definer needs e.g. EXECUTE on the functions it calls
    // when the view is created), except grants on the views themselves, which come after.
    let view_keys: HashSet<(String, String)> = views
        .iter()
        .map(|v| (v.db.clone(), v.name.clone()))
        .collect();
    let mut dropped = 0;
    if let Some(a) = &accounts {
        dropped += write_grants(out, a, GRANTS_SECTION, &known_relations, &known_routines, |o| !matches!(o, GrantObject::Relation(d, n) if view_keys.contains(&(d.clone(), n.clone())))).await?;
    }
    if !views.is_empty() {
        out.write(b"\n--\n-- Views\n--\n").await?;
    }
    for o in &views {
        write_object(out, o, false).await?;
    }
    if let Some(a) = &accounts {
        write_grants(out, a, "-- Grants on views", &known_relations, &known_routines, |o| matches!(o, GrantObject::Relation(d, n) if view_keys.contains(&(d.clone(), n.clone())))).await?;
    }
    if dropped > 0 {
        summary.warnings.push(format!(
            "{dropped} grant(s) on tables or routines that are not in this backup were left out (they would not load)"
        ));
    }
    if !triggers.is_empty() {
        out.write(b"\n--\n-- Triggers\n--\n").await?;
    }
    for o in &triggers {
        write_object(out, o, true).await?;
    }
    if !events.is_empty() {
        out.write(b"\n--\n-- Events\n--\n").await?;
    }
    for o in &events {
        write_object(out, o, true).await?;
    }

    // The snapshot ends here; nothing after this reads data.
    conn.query_drop("COMMIT")
        .await
        .map_err(server("ending the snapshot transaction"))?;

    if !summary.non_transactional.is_empty() {
        summary.warnings.push(format!(
            "{} non-transactional table(s) (MyISAM, Aria, MEMORY, ...) were dumped without snapshot consistency",
            summary.non_transactional.len()
        ));
    }

    out.write(format::footer().as_bytes()).await?;
    let mut tr = format!("{}\n", format::TRAILER_START);
    for db in &databases {
        tr.push_str(&format::database_trailer_line(db));
    }
    for t in &trailers {
        tr.push_str(&t.to_line());
    }
    for o in routines
        .iter()
        .chain(views.iter())
        .chain(triggers.iter())
        .chain(events.iter())
    {
        objects.push(format::ObjectTrailer {
            db: o.db.clone(),
            kind: o.kind.into(),
            name: o.name.clone(),
        });
    }
    for o in &objects {
        tr.push_str(&o.to_line());
    }
    tr.push_str(&format!(
        "{}{}\n",
        format::COMPLETION_PREFIX,
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    ));
    out.write(tr.as_bytes()).await?;
    out.flush().await?;
    Ok(summary)
}

async fn dump_rows(
    conn: &mut Conn,
    db: &str,
    table: &str,
    cols: &[Column],
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
) -> Result<TableDigest, DumpError> {
    let list: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let list = list.join(",");
    let sql = select_rows_sql(db, table, cols);
    let prefix = format!("INSERT INTO {} ({list}) VALUES ", quote_ident(table)).into_bytes();
    let during = format!("reading rows of {db}.{table}");
    let mut digest = TableDigest::new();
    let mut stmt: Vec<u8> = Vec::with_capacity(format::MAX_INSERT_BYTES + 64 * 1024);
    let mut rowbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut result = conn.query_iter(sql).await.map_err(server(during.clone()))?;
    while let Some(row) = result.next().await.map_err(server(during.clone()))? {
        let values = raw(row);
        digest.add_row(values.iter().map(|v| v.as_deref()));
        rowbuf.clear();
        rowbuf.push(b'(');
        for (i, (v, c)) in values.iter().zip(cols).enumerate() {
            if i > 0 {
                rowbuf.push(b',');
            }
            match v {
                None => rowbuf.extend_from_slice(b"NULL"),
                Some(b) => push_value(&mut rowbuf, &c.kind, b),
            }
        }
        rowbuf.push(b')');
        if !stmt.is_empty() && stmt.len() + 1 + rowbuf.len() + 2 > format::MAX_INSERT_BYTES {
            stmt.extend_from_slice(b";\n");
            summary.largest_statement = summary.largest_statement.max(stmt.len() - 1);
            out.write(&stmt).await?;
            stmt.clear();
        }
        if stmt.is_empty() {
            stmt.extend_from_slice(&prefix);
        } else {
            stmt.push(b',');
        }
        stmt.extend_from_slice(&rowbuf);
    }
    if !stmt.is_empty() {
        stmt.extend_from_slice(b";\n");
        summary.largest_statement = summary.largest_statement.max(stmt.len() - 1);
        out.write(&stmt).await?;
    }
    Ok(digest)
}

async fn write_object(
    out: &mut SqlOutput,
    o: &Object,
    needs_delimiter: bool,
) -> Result<(), DumpError> {
    let mut s = Vec::new();
    s.extend_from_slice(format!("USE {};\n", quote_ident(&o.db)).as_bytes());
    let mut saved = vec![
        "@saved_cs_client=@@CHARACTER_SET_CLIENT",
        "@saved_col_connection=@@COLLATION_CONNECTION",
    ];
    if o.sql_mode.is_some() {
        saved.push("@saved_sql_mode=@@SQL_MODE");
    }
    if o.time_zone.is_some() {
        saved.push("@saved_time_zone=@@TIME_ZONE");
    }
    s.extend_from_slice(format!("SET {};\n", saved.join(", ")).as_bytes());
    let mut set = Vec::new();
    if let Some(cs) = o.charset_client.as_deref().filter(|c| !c.is_empty()) {
        set.push(format!("CHARACTER_SET_CLIENT={}", quote_str(cs)));
    }
    if let Some(c) = o.collation_connection.as_deref().filter(|c| !c.is_empty()) {
        set.push(format!("COLLATION_CONNECTION={}", quote_str(c)));
    }
    if let Some(m) = &o.sql_mode {
        set.push(format!("SQL_MODE={}", quote_str(m)));
    }
    if let Some(tz) = &o.time_zone {
        set.push(format!("TIME_ZONE={}", quote_str(tz)));
    }
    if !set.is_empty() {
        s.extend_from_slice(format!("SET {};\n", set.join(", ")).as_bytes());
    }
    if needs_delimiter {
        s.extend_from_slice(b"DELIMITER ;;\n");
        s.extend_from_slice(&o.create);
        s.extend_from_slice(b" ;;\nDELIMITER ;\n");
    } else {
        s.extend_from_slice(&o.create);
        s.extend_from_slice(b";\n");
    }
    let mut restore = vec![
        "CHARACTER_SET_CLIENT=@saved_cs_client",
        "COLLATION_CONNECTION=@saved_col_connection",
    ];
    if o.sql_mode.is_some() {
        restore.push("SQL_MODE=@saved_sql_mode");
    }
    if o.time_zone.is_some() {
        restore.push("TIME_ZONE=@saved_time_zone");
    }
    s.extend_from_slice(format!("SET {};\n", restore.join(", ")).as_bytes());
    out.write(&s).await
}

/// Views in an order that loads: a view comes after every view it names. MariaDB stores
/// view definitions with fully qualified, backtick-quoted names, so a reference to view
/// `d`.`v` appears literally in the text of a view that uses it.
fn order_views(views: Vec<Object>) -> Vec<Object> {
    let keys: Vec<Vec<u8>> = views
        .iter()
        .map(|v| qualified(&v.db, &v.name).into_bytes())
        .collect();
    let deps: Vec<Vec<usize>> = views
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (0..views.len())
                .filter(|&j| j != i && contains(&v.create, &keys[j]))
                .collect()
        })
        .collect();
    let mut order = Vec::with_capacity(views.len());
    let mut state = vec![0u8; views.len()]; // 0 new, 1 visiting, 2 done
    fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], order: &mut Vec<usize>) {
        if state[i] != 0 {
            return; // done, or a cycle (impossible for real views): keep going
        }
        state[i] = 1;
        for &d in &deps[i] {
            visit(d, deps, state, order);
        }
        state[i] = 2;
        order.push(i);
    }
    for i in 0..views.len() {
        visit(i, &deps, &mut state, &mut order);
    }
    let mut slots: Vec<Option<Object>> = views.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Accounts that belong to the server, not to the data: never dumped.
fn is_system_account(user: &str, host: &str) -> bool {
    matches!(user, "root" | "mariadb.sys" | "mysql" | "PUBLIC" | "")
        || (user == "mariadb.sys" && host == "localhost")
}

/// What a GRANT statement from SHOW GRANTS applies to.
#[derive(Debug, PartialEq, Eq)]
enum GrantObject {
    /// `*.*`, `db`.*, roles, proxies: loads whatever exists.
    Unconditional,
    /// A table, view or column grant: needs the relation.
    Relation(String, String),
    /// A routine grant: needs the routine.
    Routine(String, String),
}

/// Reads the object of a GRANT statement: the part after the first ` ON ` outside quotes.
fn grant_object(stmt: &str) -> GrantObject {
    let b = stmt.as_bytes();
    let mut quote: Option<u8> = None;
    let mut on = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if matches!(b[i], b'`' | b'\'' | b'"') => quote = Some(b[i]),
            None if stmt[i..].starts_with(" ON ") => {
                on = Some(i + 4);
                break;
            }
            None => {}
        }
        i += 1;
    }
    let Some(start) = on else {
        return GrantObject::Unconditional;
    };
    let mut rest = &stmt[start..];
    let mut routine = false;
    for kw in ["PROCEDURE ", "FUNCTION ", "PACKAGE BODY ", "PACKAGE "] {
        if let Some(r) = rest.strip_prefix(kw) {
            rest = r;
            routine = true;
            break;
        }
    }
    let Some((db, after)) = take_ident(rest) else {
        return GrantObject::Unconditional;
    };
    let Some(after) = after.strip_prefix('.') else {
        return GrantObject::Unconditional;
    };
    match take_ident(after) {
        Some((name, _)) if routine => GrantObject::Routine(db, name),
        Some((name, _)) => GrantObject::Relation(db, name),
        None => GrantObject::Unconditional,
    }
}

/// A backtick-quoted identifier at the start of `s`, and what follows it.
fn take_ident(s: &str) -> Option<(String, &str)> {
    let rest = s.strip_prefix('`')?;
    let mut out = String::new();
    let mut it = rest.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == '`' {
            if let Some((_, '`')) = it.peek() {
                it.next();
                out.push('`');
            } else {
                return Some((out, &rest[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// Accounts and roles of the server, read before the databases are dumped.
struct Accounts {
    /// CREATE USER / CREATE ROLE statements: written first, so that every DEFINER exists
    /// before the views, routines, triggers and events that name it are created.
    creates: Vec<Vec<u8>>,
    /// SHOW GRANTS output: written last, once the objects they name exist.
    grants: Vec<Vec<u8>>,
}

/// Server errors that mean an account disappeared while the dump read it.
fn account_vanished(e: &DumpError) -> bool {
    // 1133 no such user, 1141 no such grant, 1449 definer does not exist, 1959 invalid role.
    matches!(e, DumpError::Server { source: mysql_async::Error::Server(se), .. } if matches!(se.code, 1133 | 1141 | 1449 | 1959))
}

/// Accounts are not transactional: one created or dropped while the dump reads them must
/// not fail the backup or produce statements that do not load. An account that vanished
/// between the listing and its SHOW statements is skipped; a role grant naming a role that
/// is not in the listing is left out (and counted).
async fn read_accounts(conn: &mut Conn) -> Result<Accounts, DumpError> {
    let users = fetch(
        conn,
        "SELECT User, Host, is_role FROM mysql.user ORDER BY User, Host",
        "listing users (grant the dump user SELECT on mysql.user, or set users_and_grants = false)",
    )
    .await?;
    let roles: HashSet<String> = users
        .iter()
        .filter(|u| text(&u[2]) == "Y")
        .map(|u| text(&u[0]))
        .collect();
    let mut creates = Vec::new();
    let mut grants = Vec::new();
    let mut seen = HashSet::new();
    for u in &users {
        let (user, host, is_role) = (text(&u[0]), text(&u[1]), text(&u[2]) == "Y");
        if is_system_account(&user, &host) || !seen.insert((user.clone(), host.clone())) {
            continue;
        }
        let account = if is_role {
            quote_ident(&user)
        } else {
            format!("{}@{}", quote_ident(&user), quote_ident(&host))
        };
        let create = if is_role {
            format!("CREATE ROLE IF NOT EXISTS {account};\n").into_bytes()
        } else {
            match fetch(
                conn,
                &format!("SHOW CREATE USER {account}"),
                &format!("reading account {user}@{host}"),
            )
            .await
            {
                Ok(c) => {
                    let stmt = bytes(&c[0][0]);
                    let mut s = match stmt.strip_prefix(b"CREATE USER ") {
                        Some(rest) => [b"CREATE USER IF NOT EXISTS ".as_slice(), rest].concat(),
                        None => stmt,
                    };
                    s.extend_from_slice(b";\n");
                    s
                }
                Err(e) if account_vanished(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        let g = match fetch(
            conn,
            &format!("SHOW GRANTS FOR {account}"),
            &format!("reading grants of {user}@{host}"),
        )
        .await
        {
            Ok(g) => g,
            Err(e) if account_vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        creates.push(create);
        for r in &g {
            let stmt = bytes(&r[0]);
            if let Some(role) = granted_role(&String::from_utf8_lossy(&stmt)) {
                if !roles.contains(&role) {
                    continue;
                }
            }
            grants.push(stmt);
        }
    }
    Ok(Accounts { creates, grants })
}

/// The role of a `GRANT `role` TO ...` statement (a grant with no ON clause).
fn granted_role(stmt: &str) -> Option<String> {
    let rest = stmt.strip_prefix("GRANT ")?;
    if grant_object(stmt) != GrantObject::Unconditional || stmt.contains(" ON ") {
        return None;
    }
    let (role, after) = take_ident(rest)?;
    after.trim_start().starts_with("TO ").then_some(role)
}

async fn write_accounts(out: &mut SqlOutput, a: &Accounts) -> Result<(), DumpError> {
    if a.creates.is_empty() {
        return Ok(());
    }
    out.write(format!("\n--\n{USERS_SECTION}\n--\n").as_bytes())
        .await?;
    for s in &a.creates {
        out.write(s).await?;
    }
    Ok(())
}

/// Writes the grants whose objects are in this dump; returns how many were left out.
async fn write_grants(
    out: &mut SqlOutput,
    a: &Accounts,
    title: &str,
    relations: &HashSet<(String, String)>,
    routines: &HashSet<(String, String)>,
    select: impl Fn(&GrantObject) -> bool,
) -> Result<usize, DumpError> {
    let mut dropped = 0;
    let mut keep = Vec::new();
    for g in &a.grants {
        let obj = grant_object(&String::from_utf8_lossy(g));
        if !select(&obj) {
            continue;
        }
        let ok = match obj {
            GrantObject::Unconditional => true,
            GrantObject::Relation(d, n) => relations.contains(&(d, n)),
            GrantObject::Routine(d, n) => routines.contains(&(d, n)),
        };
        if ok {
            keep.push(g);
        } else {
            dropped += 1;
        }
    }
    if !keep.is_empty() {
        out.write(format!("\n--\n{title}\n--\n").as_bytes()).await?;
        for g in keep {
            let mut s = g.clone();
            s.extend_from_slice(b";\n");
            out.write(&s).await?;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_paces_and_never_bursts_to_catch_up() {
        use std::time::Duration;
        let t0 = tokio::time::Instant::now();
        // On pace: 100 KiB at 100 KiB/s are due one second after the previous bytes.
        let next = pace_after(t0, t0, 102_400, 102_400);
        assert_eq!(next - t0, Duration::from_secs(1));
        let next = pace_after(next, t0 + Duration::from_millis(300), 51_200, 102_400);
        assert_eq!(next - t0, Duration::from_millis(1500));
        // Ten seconds behind (the process was frozen): only one second is credited, so
        // the next ten seconds' worth of bytes take nine seconds, not zero.
        let now = t0 + Duration::from_secs(20);
        let mut next = pace_after(next, now, 102_400, 102_400);
        assert_eq!(next, now);
        for _ in 0..9 {
            next = pace_after(next, now, 102_400, 102_400);
        }
        assert_eq!(next - now, Duration::from_secs(9));
    }

    fn obj(db: &str, name: &str, body: &str) -> Object {
        Object {
            db: db.into(),
            kind: "VIEW",
            name: name.into(),
            create: body.as_bytes().to_vec(),
            sql_mode: None,
            charset_client: None,
            collation_connection: None,
            time_zone: None,
        }
    }

    #[test]
    fn grant_objects() {
        use GrantObject::*;
        assert_eq!(
            grant_object("GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'"),
            Unconditional
        );
        assert_eq!(
            grant_object("GRANT SELECT ON `d`.* TO `u`@`%`"),
            Unconditional
        );
        assert_eq!(grant_object("GRANT `role` TO `u`@`%`"), Unconditional);
        assert_eq!(
            grant_object("GRANT PROXY ON ''@'%' TO 'u'@'%'"),
            Unconditional
        );
        assert_eq!(
            grant_object("GRANT SELECT (`a ON b`), UPDATE (`x`) ON `d`.`t``1` TO `u`@`%`"),
            Relation("d".into(), "t`1".into())
        );
        assert_eq!(
            grant_object("GRANT EXECUTE ON PROCEDURE `d`.`p` TO `u`@`%`"),
            Routine("d".into(), "p".into())
        );
        assert_eq!(
            grant_object("GRANT EXECUTE ON FUNCTION `d`.`f` TO `u`@`%`"),
            Routine("d".into(), "f".into())
        );
        assert_eq!(
            granted_role("GRANT `r``1` TO `u`@`%` WITH ADMIN OPTION"),
            Some("r`1".into())
        );
        assert_eq!(granted_role("GRANT SELECT ON `d`.* TO `u`@`%`"), None);
        assert_eq!(granted_role("GRANT USAGE ON *.* TO `u`@`%`"), None);
    }

    #[test]
    fn views_come_after_what_they_use() {
        let v = vec![
            obj("a", "top", "select * from `b`.`mid` join `a`.`base`"),
            obj("b", "mid", "select * from `a`.`base`"),
            obj("a", "base", "select 1"),
            obj("a", "alone", "select 2"),
        ];
        let names: Vec<String> = order_views(v).into_iter().map(|o| o.name).collect();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("base") < pos("mid") && pos("mid") < pos("top"));
        assert_eq!(names.len(), 4);
    }
}
