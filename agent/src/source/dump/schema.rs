//! The schema objects of a dump: databases, sequences, the stored objects written after
//! all tables (routines, views in an order that loads, triggers, events).

use std::collections::HashSet;

use mysql_async::Conn;

use backup_core::format::columns::text;
use backup_core::format::{self, qualified, quote_ident, quote_str, TableTrailer};

use super::output::SqlOutput;
use super::session::{bytes, fetch};
use super::{DumpError, DumpSummary};

pub(super) struct TableInfo {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) engine: String,
    /// The server's estimate of its data's size (DATA_LENGTH).
    pub(super) size: u64,
}

/// One SHOW CREATE result for a stored object, with the session settings it was made in.
pub(super) struct Object {
    pub(super) db: String,
    /// VIEW, PROCEDURE, FUNCTION, TRIGGER or EVENT.
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) create: Vec<u8>,
    pub(super) sql_mode: Option<String>,
    pub(super) charset_client: Option<String>,
    pub(super) collation_connection: Option<String>,
    pub(super) time_zone: Option<String>,
}

pub(super) const NON_DATA_ENGINES: &[&str] = &["BLACKHOLE", "FEDERATED", "SPIDER", "CONNECT"];
pub(super) const TRANSACTIONAL_ENGINES: &[&str] = &["InnoDB", "ROCKSDB", "TokuDB"];

/// What the pass over the databases found, for what is written after all tables.
#[derive(Default)]
pub(super) struct Found {
    pub(super) trailers: Vec<TableTrailer>,
    pub(super) objects: Vec<format::ObjectTrailer>,
    /// Objects in this dump that grants may name: (db, name) of tables, views, sequences,
    /// and (db, name) of routines.
    pub(super) known_relations: HashSet<(String, String)>,
    pub(super) known_routines: HashSet<(String, String)>,
    pub(super) routines: Vec<Object>,
    pub(super) views: Vec<Object>,
    pub(super) triggers: Vec<Object>,
    pub(super) events: Vec<Object>,
}

/// CREATE DATABASE and USE.
pub(super) async fn write_database(
    conn: &mut Conn,
    db: &str,
    out: &mut SqlOutput,
) -> Result<(), DumpError> {
    let qdb = quote_ident(db);
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
    Ok(())
}

/// The tables, views and sequences of a database.
pub(super) async fn list_tables(
    conn: &mut Conn,
    db: &str,
    found: &mut Found,
) -> Result<Vec<TableInfo>, DumpError> {
    let lit = quote_str(db);
    let tables = fetch(
        conn,
        &format!("SELECT TABLE_NAME, TABLE_TYPE, ENGINE, COALESCE(DATA_LENGTH, 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA={lit} ORDER BY TABLE_NAME"),
        &format!("listing tables of {db}"),
    )
    .await?;
    let tables: Vec<TableInfo> = tables
        .iter()
        .map(|r| TableInfo {
            name: text(&r[0]),
            kind: text(&r[1]),
            engine: text(&r[2]),
            size: text(&r[3]).parse().unwrap_or(0),
        })
        .filter(|t| t.kind != "TEMPORARY")
        .collect();
    for t in &tables {
        found
            .known_relations
            .insert((db.to_string(), t.name.clone()));
    }
    Ok(tables)
}

/// Sequences first: a table may take its DEFAULT from one.
pub(super) async fn write_sequences(
    conn: &mut Conn,
    db: &str,
    tables: &[TableInfo],
    out: &mut SqlOutput,
    found: &mut Found,
) -> Result<(), DumpError> {
    for t in tables.iter().filter(|t| t.kind == "SEQUENCE") {
        found.objects.push(format::ObjectTrailer {
            db: db.to_string(),
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
    Ok(())
}

/// Routines of a database: collected now, written after all tables.
pub(super) async fn collect_routines(
    conn: &mut Conn,
    db: &str,
    summary: &mut DumpSummary,
    found: &mut Found,
) -> Result<(), DumpError> {
    let lit = quote_str(db);
    let rs = fetch(
        conn,
        &format!("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA={lit} ORDER BY ROUTINE_TYPE, ROUTINE_NAME"),
        &format!("listing routines of {db}"),
    )
    .await?;
    for r in &rs {
        let (name, kind) = (text(&r[0]), text(&r[1]));
        found.known_routines.insert((db.to_string(), name.clone()));
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
        found.routines.push(Object {
            kind: if kind == "PROCEDURE" {
                "PROCEDURE"
            } else {
                "FUNCTION"
            },
            db: db.to_string(),
            name,
            create,
            sql_mode: Some(text(&c[0][1])),
            charset_client: Some(text(&c[0][3])),
            collation_connection: Some(text(&c[0][4])),
            time_zone: None,
        });
    }
    Ok(())
}

/// Views, triggers and events of a database: collected now, written after all tables.
pub(super) async fn collect_views_triggers_events(
    conn: &mut Conn,
    db: &str,
    found: &mut Found,
) -> Result<(), DumpError> {
    let lit = quote_str(db);
    // SHOW CREATE VIEW: View, Create View, character_set_client, collation_connection.
    found.views.extend(
        collect_objects(
            conn,
            db,
            "VIEW",
            &format!("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA={lit} ORDER BY TABLE_NAME"),
            CreateColumns { create: 1, sql_mode: None, charset_client: 2, collation_connection: 3, time_zone: None },
        )
        .await?,
    );
    // SHOW CREATE TRIGGER: Trigger, sql_mode, SQL Original Statement,
    // character_set_client, collation_connection, ...
    found.triggers.extend(
        collect_objects(
            conn,
            db,
            "TRIGGER",
            &format!("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA={lit} ORDER BY EVENT_OBJECT_TABLE, ACTION_ORDER"),
            CreateColumns { create: 2, sql_mode: Some(1), charset_client: 3, collation_connection: 4, time_zone: None },
        )
        .await?,
    );
    // SHOW CREATE EVENT: Event, sql_mode, time_zone, Create Event, character_set_client,
    // collation_connection, ...
    found.events.extend(
        collect_objects(
            conn,
            db,
            "EVENT",
            &format!("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA={lit} ORDER BY EVENT_NAME"),
            CreateColumns { create: 3, sql_mode: Some(1), charset_client: 4, collation_connection: 5, time_zone: Some(2) },
        )
        .await?,
    );
    Ok(())
}

/// Where a SHOW CREATE result holds what an [`Object`] keeps.
struct CreateColumns {
    create: usize,
    sql_mode: Option<usize>,
    charset_client: usize,
    collation_connection: usize,
    time_zone: Option<usize>,
}

/// The objects of one kind that `list_sql` names (first column), each with its SHOW
/// CREATE result.
async fn collect_objects(
    conn: &mut Conn,
    db: &str,
    kind: &'static str,
    list_sql: &str,
    cols: CreateColumns,
) -> Result<Vec<Object>, DumpError> {
    let what = kind.to_ascii_lowercase();
    let rows = fetch(conn, list_sql, &format!("listing {what}s of {db}")).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let name = text(&r[0]);
        let c = fetch(
            conn,
            &format!("SHOW CREATE {kind} {}", qualified(db, &name)),
            &format!("reading {what} {db}.{name}"),
        )
        .await?;
        let row = &c[0];
        out.push(Object {
            kind,
            db: db.to_string(),
            name,
            create: bytes(&row[cols.create]),
            sql_mode: cols.sql_mode.map(|i| text(&row[i])),
            charset_client: Some(text(&row[cols.charset_client])),
            collation_connection: Some(text(&row[cols.collation_connection])),
            time_zone: cols.time_zone.map(|i| text(&row[i])),
        });
    }
    Ok(out)
}

pub(super) async fn write_object(
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
pub(super) fn order_views(views: Vec<Object>) -> Vec<Object> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
