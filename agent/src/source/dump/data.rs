//! Table data: rows read in the snapshot, written as multi-row INSERTs of bounded size,
//! digested as they pass, handed to the sealing stage at a bounded (and optionally
//! limited) rate.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use tokio::sync::mpsc;

use backup_core::digest::{definition_digest, TableDigest};
use backup_core::format::columns::{push_value, raw, select_rows_sql, Column};
use backup_core::format::{self, qualified, quote_ident, TableTrailer};

use super::schema::{Found, TableInfo, NON_DATA_ENGINES, TRANSACTIONAL_ENGINES};
use super::session::{bytes, fetch};
use super::{server, DumpError, DumpSummary};

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
}
