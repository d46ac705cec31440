//! The dumper: a consistent logical dump of a MariaDB server (mysql_async, text
//! protocol), written as SQL that the stock `mariadb` client loads.
//!
//! Consistency: REPEATABLE READ and START TRANSACTION WITH CONSISTENT SNAPSHOT give one
//! snapshot for every InnoDB table of every selected database, and MariaDB reports the
//! binlog position of exactly that snapshot (binlog_snapshot_file/position), so no FLUSH
//! TABLES WITH READ LOCK is ever needed. Large tables are read over more connections in
//! primary-key ranges (`dump_connections`); their snapshots start while commits are held
//! back (BACKUP STAGE BLOCK_COMMIT, for an instant), so every reader sees the same
//! transactions, and their binlog positions are compared to make sure. Non-transactional tables are read in the same
//! session but are not snapshot-consistent; the manifest says how many there were.
//!
//! Exactness: values are read with character_set_results=binary, i.e. as the bytes the
//! server stores, and written per column type as a literal that reproduces those bytes:
//! numbers as they are, BIT as b'..', binary strings and geometry as `_binary '..'`, text
//! in a UTF-8 family charset as an escaped string, text in a single-byte charset (latin1,
//! cp1251, ...) as `_charset '..'` (escaped, the bytes unconverted), text in a multi-byte
//! charset as `_charset X'..'`, temporal and other types as escaped strings.
//!
//! Order of the output, so that it loads whatever depends on what: per database the
//! database, its sequences, tables and data; then all routines; then all views in
//! dependency order; then triggers and events; then users and grants; then the trailer.

use std::collections::{HashMap, HashSet};

use mysql_async::prelude::*;
use mysql_async::Conn;

use backup_core::config::SourceConfig;
use backup_core::format::columns::{data_column, text, Column, COLUMNS_QUERY};
use backup_core::format::{self, quote_str, GRANTS_SECTION};
use backup_core::manifest::BinlogPosition;

mod accounts;
mod data;
mod output;
mod schema;
mod session;

pub use output::{SqlOutput, CHUNK};
pub(crate) use session::name_values;
pub use session::{connect, connect_as, Connector};

use accounts::{read_accounts, write_accounts, write_grants, Accounts, GrantObject, Scope};
use schema::{order_views, write_object, Found};
use session::fetch;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot connect to MariaDB at {endpoint} as user {user:?}: {source}; check the server is running and reachable, and the user and password file")]
    Connect {
        endpoint: String,
        user: String,
        source: mysql_async::Error,
    },
    #[error("{during}: {}", server_message(source))]
    Server {
        during: String,
        source: mysql_async::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the compression/encryption stage stopped before the dump finished")]
    OutputClosed,
}

/// What a failed statement means for the operator: a lost connection says so (the raw
/// text is "bytes remaining on stream" or similar) and what to do.
fn server_message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Io(_) => format!(
            "the connection to the server was lost ({e}): it was killed, the server restarted or went away, or a timeout ended it; check the server's error log; nothing of this backup was kept, the next run starts over"
        ),
        _ => e.to_string(),
    }
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

/// Runs a whole dump on `conn`, writing SQL to `out`.
/// `backup_id` goes into the header's identity line with the source and the databases.
pub async fn dump(
    conn: &mut Conn,
    source: &SourceConfig,
    backup_id: &str,
    description: &str,
    out: &mut SqlOutput,
    connector: Option<&Connector>,
) -> Result<DumpSummary, DumpError> {
    let mut summary = DumpSummary::default();
    let log_bin = session::set_up(conn, &mut summary).await?;
    let (databases, others) = selected_databases(conn, source).await?;
    let mut helpers = match connector {
        Some(c) => session::open_helpers(conn, c, &databases).await?,
        None => session::Helpers::default(),
    };
    let dumped = dump_in_snapshot(
        conn,
        &mut helpers,
        log_bin,
        source,
        backup_id,
        description,
        out,
        &mut summary,
        databases,
        others,
    )
    .await;
    helpers.close().await;
    dumped.map(|()| summary)
}

/// The dump proper, from the snapshot's start.
#[allow(clippy::too_many_arguments)]
async fn dump_in_snapshot(
    conn: &mut Conn,
    helpers: &mut session::Helpers,
    log_bin: bool,
    source: &SourceConfig,
    backup_id: &str,
    description: &str,
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
    databases: Vec<String>,
    others: Vec<String>,
) -> Result<(), DumpError> {
    session::open_snapshot(conn, helpers, log_bin, summary).await?;
    summary.databases = databases.clone();

    let accounts = if source.users_and_grants {
        let scope = if others.is_empty() {
            Scope::Server
        } else {
            Scope::Databases {
                dumped: databases.iter().cloned().collect(),
                others,
            }
        };
        Some(read_accounts(conn, &scope).await?)
    } else {
        None
    };
    let identity = format::Identity {
        backup_id: backup_id.to_string(),
        source: source.name.clone(),
        databases: databases.clone(),
    };
    out.write(format::header(description, &identity).as_bytes())
        .await?;
    if let Some(a) = &accounts {
        write_accounts(out, a).await?;
    }

    let mut found = Found::default();
    for db in &databases {
        dump_database(conn, helpers, source, db, out, summary, &mut found).await?;
    }
    write_after_tables(out, accounts.as_ref(), summary, &mut found).await?;

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

    write_trailer(out, &databases, found).await?;
    Ok(())
}

/// The databases the source selects, every included one present, and the server's other
/// databases (but the system ones and the Galera lease database), which decide whether the
/// dump is of the whole server.
async fn selected_databases(
    conn: &mut Conn,
    source: &SourceConfig,
) -> Result<(Vec<String>, Vec<String>), DumpError> {
    let dbs = fetch(conn, "SHOW DATABASES", "listing databases").await?;
    let (databases, others): (Vec<String>, Vec<String>) = dbs
        .iter()
        .map(|r| text(&r[0]))
        .filter(|d| source.selects(d) || !source.never_dumped(d))
        .partition(|d| source.selects(d));
    for inc in source
        .include
        .iter()
        .filter(|i| !backup_core::config::split::is_pattern(i))
    {
        if !databases.contains(inc) {
            return Err(DumpError::Invalid(format!(
                "source {}: database {inc:?} is in databases.include but does not exist on the server (or the dump user cannot see it)",
                source.name
            )));
        }
    }
    Ok((databases, others))
}

/// One database: its definition, sequences, tables with their rows; its routines, views,
/// triggers and events are collected into `found` for later.
async fn dump_database(
    conn: &mut Conn,
    helpers: &mut session::Helpers,
    source: &SourceConfig,
    db: &str,
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
    found: &mut Found,
) -> Result<(), DumpError> {
    let lit = quote_str(db);
    schema::write_database(conn, db, out).await?;
    let tables = schema::list_tables(conn, db, found).await?;
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
    schema::write_sequences(conn, db, &tables, out, found).await?;
    let readers = data::Readers {
        helpers: &mut helpers.readers,
        min_size: source.parallel_table_size,
    };
    data::dump_tables(conn, readers, db, &tables, &columns, out, summary, found).await?;
    schema::collect_routines(conn, db, summary, found).await?;
    schema::collect_views_triggers_events(conn, db, found).await?;
    Ok(())
}

/// Routines, grants, views (in an order that loads), grants on views, triggers, events.
async fn write_after_tables(
    out: &mut SqlOutput,
    accounts: Option<&Accounts>,
    summary: &mut DumpSummary,
    found: &mut Found,
) -> Result<(), DumpError> {
    if !found.routines.is_empty() {
        out.write(b"\n--\n-- Stored routines\n--\n").await?;
    }
    for o in &found.routines {
        write_object(out, o, true).await?;
    }
    found.views = order_views(std::mem::take(&mut found.views));
    // Grants before views (a view's definer needs e.g. EXECUTE on the functions it calls
    // when the view is created), except grants on the views themselves, which come after.
    let view_keys: HashSet<(String, String)> = found
        .views
        .iter()
        .map(|v| (v.db.clone(), v.name.clone()))
        .collect();
    let mut dropped = 0;
    if let Some(a) = accounts {
        dropped += write_grants(out, a, GRANTS_SECTION, &found.known_relations, &found.known_routines, |o| !matches!(o, GrantObject::Relation(d, n) if view_keys.contains(&(d.clone(), n.clone())))).await?;
    }
    if !found.views.is_empty() {
        out.write(b"\n--\n-- Views\n--\n").await?;
    }
    for o in &found.views {
        write_object(out, o, false).await?;
    }
    if let Some(a) = accounts {
        write_grants(out, a, "-- Grants on views", &found.known_relations, &found.known_routines, |o| matches!(o, GrantObject::Relation(d, n) if view_keys.contains(&(d.clone(), n.clone())))).await?;
    }
    if dropped > 0 {
        summary.warnings.push(format!(
            "{dropped} grant(s) on tables or routines that are not in this backup were left out (they would not load)"
        ));
    }
    if !found.triggers.is_empty() {
        out.write(b"\n--\n-- Triggers\n--\n").await?;
    }
    for o in &found.triggers {
        write_object(out, o, true).await?;
    }
    if !found.events.is_empty() {
        out.write(b"\n--\n-- Events\n--\n").await?;
    }
    for o in &found.events {
        write_object(out, o, true).await?;
    }
    Ok(())
}

/// Footer, trailer (databases, per-table digests, objects) and the completion line.
async fn write_trailer(
    out: &mut SqlOutput,
    databases: &[String],
    mut found: Found,
) -> Result<(), DumpError> {
    out.write(format::footer().as_bytes()).await?;
    let mut tr = format!("{}\n", format::TRAILER_START);
    for db in databases {
        tr.push_str(&format::database_trailer_line(db));
    }
    for t in &found.trailers {
        tr.push_str(&t.to_line());
    }
    for o in found
        .routines
        .iter()
        .chain(found.views.iter())
        .chain(found.triggers.iter())
        .chain(found.events.iter())
    {
        found.objects.push(format::ObjectTrailer {
            db: o.db.clone(),
            kind: o.kind.into(),
            name: o.name.clone(),
        });
    }
    for o in &found.objects {
        tr.push_str(&o.to_line());
    }
    tr.push_str(&format!(
        "{}{}\n",
        format::COMPLETION_PREFIX,
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    ));
    out.write(tr.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}
