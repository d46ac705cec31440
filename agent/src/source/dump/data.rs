//! Table data: rows read in the snapshot, written as multi-row INSERTs of bounded size,
//! digested as they pass, handed to the sealing stage at a bounded (and optionally
//! limited) rate.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::Conn;

use backup_core::digest::{definition_digest, TableDigest};
use backup_core::format::columns::{push_value, raw, select_rows_sql, Column};
use backup_core::format::{self, qualified, quote_ident, TableTrailer};

use super::output::SqlOutput;
use super::schema::{Found, TableInfo, NON_DATA_ENGINES, TRANSACTIONAL_ENGINES};
use super::session::{bytes, fetch};
use super::{server, DumpError, DumpSummary};

/// The base tables of a database: definition, rows, digest.
pub(super) async fn dump_tables(
    conn: &mut Conn,
    db: &str,
    tables: &[TableInfo],
    columns: &HashMap<String, Vec<Column>>,
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
    found: &mut Found,
) -> Result<(), DumpError> {
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
            dump_rows(conn, db, &t.name, cols, out, summary).await?
        };
        summary.tables += 1;
        summary.rows += digest.rows();
        found.trailers.push(TableTrailer {
            db: db.to_string(),
            table: t.name.clone(),
            rows: digest.rows(),
            content: digest.hex(),
            definition: definition_digest(&String::from_utf8_lossy(&create)),
        });
    }
    Ok(())
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
