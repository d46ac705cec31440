//! Table data: rows read in the snapshot, written as multi-row INSERTs of bounded size,
//! digested as they pass, handed to the sealing stage at a bounded (and optionally
//! limited) rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mysql_async::prelude::*;
use mysql_async::Conn;
use tokio::sync::mpsc;

use backup_core::digest::{definition_digest, TableDigest};
use backup_core::format::columns::{
    bytes_of, push_value, raw, select_rows_sql, text, values, Column,
};
use backup_core::format::{self, qualified, quote_ident, TableTrailer};

use super::output::SqlOutput;
use super::schema::{Found, TableInfo, NON_DATA_ENGINES, TRANSACTIONAL_ENGINES};
use super::session::bytes;
use super::{server, DumpError, DumpSummary};

/// Connections that may read a large table beside the dump's own, in its snapshot.
pub(super) struct Readers<'a> {
    pub(super) helpers: &'a mut Vec<Conn>,
    /// Tables at least this large (estimated) are read over all of them.
    pub(super) min_size: u64,
}

/// The base tables of a database: definition, rows, digest.
#[allow(clippy::too_many_arguments)]
pub(super) async fn dump_tables(
    conn: &mut Conn,
    mut readers: Readers<'_>,
    db: &str,
    tables: &[TableInfo],
    columns: &HashMap<String, Vec<Column>>,
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
    found: &mut Found,
) -> Result<(), DumpError> {
    let base: Vec<&TableInfo> = tables
        .iter()
        .filter(|t| t.kind == "BASE TABLE" || t.kind == "SYSTEM VERSIONED")
        .collect();
    // The definitions, a batch of tables per round trip: a database of 400 small tables
    // behind a link of 1 ms costs 0.4 s less.
    for batch in base.chunks(DEFINITIONS_PER_QUERY) {
        let creates = show_create_tables(conn, db, batch).await?;
        for (t, create) in batch.iter().zip(creates) {
            dump_table(
                conn,
                &mut readers,
                db,
                t,
                create,
                columns,
                out,
                summary,
                found,
            )
            .await?;
        }
    }
    Ok(())
}

/// Tables whose `SHOW CREATE TABLE` goes in one query (one round trip).
const DEFINITIONS_PER_QUERY: usize = 100;

/// `SHOW CREATE TABLE` of each table, in one multi-statement query, in order.
async fn show_create_tables(
    conn: &mut Conn,
    db: &str,
    batch: &[&TableInfo],
) -> Result<Vec<Vec<u8>>, DumpError> {
    let sql: Vec<String> = batch
        .iter()
        .map(|t| format!("SHOW CREATE TABLE {}", qualified(db, &t.name)))
        .collect();
    let during = format!("reading the table definitions of {db}");
    let mut result = conn
        .query_iter(sql.join(";"))
        .await
        .map_err(server(during.clone()))?;
    let mut out = Vec::with_capacity(batch.len());
    while !result.is_empty() {
        let rows: Vec<mysql_async::Row> = result.collect().await.map_err(server(during.clone()))?;
        if let Some(row) = rows.into_iter().next() {
            let v = raw(row);
            out.push(bytes(&v[1]));
        }
    }
    drop(result);
    if out.len() != batch.len() {
        return Err(DumpError::Invalid(format!(
            "{during}: {} definitions for {} tables",
            out.len(),
            batch.len()
        )));
    }
    Ok(out)
}

/// One base table: its definition, rows and digest.
#[allow(clippy::too_many_arguments)]
async fn dump_table(
    conn: &mut Conn,
    readers: &mut Readers<'_>,
    db: &str,
    t: &TableInfo,
    create: Vec<u8>,
    columns: &HashMap<String, Vec<Column>>,
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
    found: &mut Found,
) -> Result<(), DumpError> {
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
    } else if let Some(plan) = range_plan(
        conn,
        readers.helpers.len() + 1,
        readers.min_size,
        db,
        t,
        cols,
    )
    .await?
    {
        dump_ranges(conn, readers.helpers, db, &t.name, cols, plan, out, summary).await?
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
    Ok(())
}

/// Multi-row INSERT statements of one table, built in place: a row is appended to the
/// statement so far and, when that makes it too long, moved to the next statement.
struct Inserts<'a> {
    prefix: &'a [u8],
    cols: &'a [Column],
    stmt: Vec<u8>,
    /// The buffer the next statement is built in.
    spare: Vec<u8>,
}

impl<'a> Inserts<'a> {
    fn new(prefix: &'a [u8], cols: &'a [Column]) -> Self {
        Inserts {
            prefix,
            cols,
            stmt: Vec::with_capacity(STATEMENT_CAPACITY),
            spare: Vec::new(),
        }
    }

    /// Adds a row; returns the statement it completed (ending in ";\n"), if it did.
    fn add_row(&mut self, values: &[Option<mysql_async::Value>]) -> Option<Vec<u8>> {
        let stmt = &mut self.stmt;
        let before = stmt.len();
        if before == 0 {
            stmt.extend_from_slice(self.prefix);
        } else {
            stmt.push(b',');
        }
        let row_at = stmt.len();
        stmt.push(b'(');
        for (i, (v, c)) in values.iter().zip(self.cols).enumerate() {
            if i > 0 {
                stmt.push(b',');
            }
            match bytes_of(v) {
                None => stmt.extend_from_slice(b"NULL"),
                Some(b) => push_value(stmt, &c.kind, b),
            }
        }
        stmt.push(b')');
        if before == 0 || stmt.len() + 2 <= format::MAX_INSERT_BYTES {
            return None;
        }
        let mut next = std::mem::take(&mut self.spare);
        if next.capacity() == 0 {
            next.reserve(STATEMENT_CAPACITY);
        }
        next.extend_from_slice(self.prefix);
        next.extend_from_slice(&self.stmt[row_at..]);
        let mut done = std::mem::replace(&mut self.stmt, next);
        done.truncate(before);
        done.extend_from_slice(b";\n");
        Some(done)
    }

    /// A buffer for the next statement (a written one, handed back).
    fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.spare = buf;
    }

    /// The last statement, if any rows are left.
    fn finish(mut self) -> Option<Vec<u8>> {
        if self.stmt.is_empty() {
            return None;
        }
        self.stmt.extend_from_slice(b";\n");
        Some(self.stmt)
    }
}

const STATEMENT_CAPACITY: usize = format::MAX_INSERT_BYTES + 64 * 1024;

fn insert_prefix(table: &str, cols: &[Column]) -> Vec<u8> {
    let list: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ",
        quote_ident(table),
        list.join(",")
    )
    .into_bytes()
}

async fn dump_rows(
    conn: &mut Conn,
    db: &str,
    table: &str,
    cols: &[Column],
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
) -> Result<TableDigest, DumpError> {
    let sql = select_rows_sql(db, table, cols);
    let prefix = insert_prefix(table, cols);
    let during = format!("reading rows of {db}.{table}");
    let mut digest = TableDigest::new();
    let mut ins = Inserts::new(&prefix, cols);
    let mut result = conn.query_iter(sql).await.map_err(server(during.clone()))?;
    while let Some(row) = result.next().await.map_err(server(during.clone()))? {
        let values = values(row);
        digest.add_row(values.iter().map(bytes_of));
        if let Some(stmt) = ins.add_row(&values) {
            summary.largest_statement = summary.largest_statement.max(stmt.len() - 1);
            out.write(&stmt).await?;
            ins.recycle(stmt);
        }
    }
    if let Some(stmt) = ins.finish() {
        summary.largest_statement = summary.largest_statement.max(stmt.len() - 1);
        out.write(&stmt).await?;
    }
    Ok(digest)
}

/// A large table read in key ranges over several connections, all in the dump's snapshot.
struct RangePlan {
    /// The SELECT of each range, in key order.
    ranges: Vec<String>,
}

/// About this much of a table's data per range: small enough that the readers finish
/// together, large enough that the ranges' round trips cost nothing.
const RANGE_BYTES: u64 = 16 << 20;

/// How `t` is read over several connections, if it is: an InnoDB table at least
/// `min_size` large whose primary key starts with an integer column, split on that column
/// between its smallest and largest value in the snapshot.
async fn range_plan(
    conn: &mut Conn,
    readers: usize,
    min_size: u64,
    db: &str,
    t: &TableInfo,
    cols: &[Column],
) -> Result<Option<RangePlan>, DumpError> {
    if readers < 2 || t.size < min_size || !t.engine.eq_ignore_ascii_case("InnoDB") {
        return Ok(None);
    }
    let during = format!("reading the primary key of {db}.{}", t.name);
    let key: Vec<mysql_async::Row> = conn
        .query(format!(
            "SELECT k.COLUMN_NAME, c.DATA_TYPE FROM information_schema.STATISTICS k JOIN information_schema.COLUMNS c \
             ON c.TABLE_SCHEMA=k.TABLE_SCHEMA AND c.TABLE_NAME=k.TABLE_NAME AND c.COLUMN_NAME=k.COLUMN_NAME \
             WHERE k.TABLE_SCHEMA={} AND k.TABLE_NAME={} AND k.INDEX_NAME='PRIMARY' AND k.SEQ_IN_INDEX=1",
            format::quote_str(db),
            format::quote_str(&t.name)
        ))
        .await
        .map_err(server(during.clone()))?;
    let Some(key) = key.into_iter().next().map(raw) else {
        return Ok(None);
    };
    let (column, kind) = (text(&key[0]), text(&key[1]).to_ascii_lowercase());
    if !["tinyint", "smallint", "mediumint", "int", "bigint"].contains(&kind.as_str()) {
        return Ok(None);
    }
    let qcol = quote_ident(&column);
    let bounds: Vec<mysql_async::Row> = conn
        .query(format!(
            "SELECT MIN({qcol}), MAX({qcol}) FROM {}",
            qualified(db, &t.name)
        ))
        .await
        .map_err(server(during))?;
    let Some(b) = bounds.into_iter().next().map(raw) else {
        return Ok(None);
    };
    let parse = |v: &Option<Vec<u8>>| {
        v.as_ref()
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i128>().ok())
    };
    let (Some(lo), Some(hi)) = (parse(&b[0]), parse(&b[1])) else {
        return Ok(None);
    };
    let wanted = (t.size / RANGE_BYTES).clamp(4 * readers as u64, 1024);
    let select = select_rows_sql(db, &t.name, cols);
    let ranges = range_bounds(lo, hi, wanted)
        .into_iter()
        .map(|r| match r {
            (None, None) => select.clone(),
            (None, Some(u)) => format!("{select} WHERE {qcol} < {u}"),
            (Some(l), Some(u)) => format!("{select} WHERE {qcol} >= {l} AND {qcol} < {u}"),
            (Some(l), None) => format!("{select} WHERE {qcol} >= {l}"),
        })
        .collect();
    Ok(Some(RangePlan { ranges }))
}

/// `wanted` ranges (fewer if there are fewer values) of about equal width covering the
/// keys from `lo` to `hi`, as (from, below) bounds; the first has no lower bound and the
/// last no upper one, so every row is in exactly one whatever its key.
fn range_bounds(lo: i128, hi: i128, wanted: u64) -> Vec<(Option<i128>, Option<i128>)> {
    // span is at most 2^64 (a BIGINT's whole range): i128 holds it and span * n.
    let span = hi - lo + 1;
    let n = (wanted.max(1) as i128).min(span);
    let cut = |k: i128| lo + span * k / n;
    (0..n)
        .map(|k| ((k > 0).then(|| cut(k)), (k < n - 1).then(|| cut(k + 1))))
        .collect()
}

/// What the readers of one table share: the ranges left, and whether to stop.
struct RangeJob {
    ranges: Vec<String>,
    next: AtomicUsize,
    stop: AtomicBool,
    prefix: Vec<u8>,
    cols: Vec<Column>,
    during: String,
    /// Statement buffers handed back after writing.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// Reads ranges until none is left, sending each finished statement to `tx`.
async fn read_ranges(
    conn: &mut Conn,
    job: &RangeJob,
    tx: mpsc::Sender<Vec<u8>>,
) -> Result<TableDigest, DumpError> {
    let r = read_ranges_inner(conn, job, &tx).await;
    if r.is_err() {
        job.stop.store(true, Ordering::Relaxed);
    }
    r
}

async fn read_ranges_inner(
    conn: &mut Conn,
    job: &RangeJob,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<TableDigest, DumpError> {
    let mut digest = TableDigest::new();
    let mut ins = Inserts::new(&job.prefix, &job.cols);
    loop {
        let k = job.next.fetch_add(1, Ordering::Relaxed);
        let Some(sql) = job.ranges.get(k) else { break };
        let mut result = conn
            .query_iter(sql.as_str())
            .await
            .map_err(server(job.during.clone()))?;
        while let Some(row) = result.next().await.map_err(server(job.during.clone()))? {
            let values = values(row);
            digest.add_row(values.iter().map(bytes_of));
            if let Some(stmt) = ins.add_row(&values) {
                if job.stop.load(Ordering::Relaxed) {
                    return Err(DumpError::OutputClosed);
                }
                tx.send(stmt).await.map_err(|_| DumpError::OutputClosed)?;
                let spare = job.spare.lock().expect("spare buffers").pop();
                ins.recycle(spare.unwrap_or_default());
            }
        }
    }
    if let Some(stmt) = ins.finish() {
        tx.send(stmt).await.map_err(|_| DumpError::OutputClosed)?;
    }
    Ok(digest)
}

/// Reads a table in ranges over `conn` and the helpers at once. The statements go out
/// as they are finished, whichever reader finished them (one table's INSERTs load in any
/// order), through a bounded channel: memory stays a few statements per reader. The
/// digests of the ranges add up to the table's.
#[allow(clippy::too_many_arguments)]
async fn dump_ranges(
    conn: &mut Conn,
    helpers: &mut Vec<Conn>,
    db: &str,
    table: &str,
    cols: &[Column],
    plan: RangePlan,
    out: &mut SqlOutput,
    summary: &mut DumpSummary,
) -> Result<TableDigest, DumpError> {
    let job = Arc::new(RangeJob {
        ranges: plan.ranges,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        prefix: insert_prefix(table, cols),
        cols: cols.to_vec(),
        during: format!("reading rows of {db}.{table}"),
        spare: Mutex::new(Vec::new()),
    });
    // One finished statement waits at most; each reader builds its next meanwhile.
    tracing::info!(
        event = "table_in_ranges",
        table = %format!("{db}.{table}"),
        ranges = job.ranges.len(),
        readers = helpers.len() + 1,
    );
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    // Each helper reads on a task of its own: a thread of its own for the row decoding,
    // escaping and digesting.
    let tasks: Vec<_> = helpers
        .drain(..)
        .map(|mut h| {
            let (job, tx) = (job.clone(), tx.clone());
            tokio::spawn(async move {
                let r = read_ranges(&mut h, &job, tx).await;
                (h, r)
            })
        })
        .collect();
    let own = read_ranges(conn, &job, tx);
    let drain = async {
        while let Some(stmt) = rx.recv().await {
            summary.largest_statement = summary.largest_statement.max(stmt.len() - 1);
            if let Err(e) = out.write(&stmt).await {
                job.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let mut spare = job.spare.lock().expect("spare buffers");
            if spare.is_empty() {
                spare.push(stmt);
            }
        }
        Ok(())
    };
    let (own, drained) = tokio::join!(own, drain);
    let mut results = vec![own];
    for t in tasks {
        match t.await {
            Ok((h, r)) => {
                helpers.push(h);
                results.push(r);
            }
            Err(e) => results.push(Err(DumpError::Invalid(format!(
                "reading rows of {db}.{table}: a reader stopped: {e}"
            )))),
        }
    }
    // The cause first: a reader's own failure, then the output's.
    let mut digest = TableDigest::new();
    let mut closed = drained.err();
    for r in results {
        match r {
            Ok(d) => digest.merge(&d),
            Err(DumpError::OutputClosed) => {
                closed.get_or_insert(DumpError::OutputClosed);
            }
            Err(e) => return Err(e),
        }
    }
    match closed {
        Some(e) => Err(e),
        None => Ok(digest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_key_once() {
        let u64max = u64::MAX as i128;
        let (i64min, i64max) = (i64::MIN as i128, i64::MAX as i128);
        for (lo, hi, wanted) in [
            (0, u64max, 8),
            (i64min, i64max, 8),
            (i64min, i64max, 1024),
            (-128, 127, 8),
            (42, 42, 8),
            (5, 7, 8),
            (0, 1_000_000, 1),
            (-5, 3, 0),
        ] {
            let r = range_bounds(lo, hi, wanted);
            let n = (wanted.max(1) as i128).min(hi - lo + 1) as usize;
            assert_eq!(r.len(), n, "{lo}..={hi} in {wanted}");
            assert_eq!(r[0].0, None);
            assert_eq!(r[n - 1].1, None);
            for w in r.windows(2) {
                assert_eq!(w[0].1, w[1].0, "{lo}..={hi}: contiguous");
            }
            // Every range holds at least one possible key.
            let mut prev = lo;
            for (from, below) in &r {
                let from = from.unwrap_or(lo);
                let below = below.unwrap_or(hi + 1);
                assert!(from >= prev && from < below, "{lo}..={hi}: {r:?}");
                prev = below;
            }
        }
    }
}
