//! A table's digest recomputed from a live server, reading exactly the columns the dumper
//! reads (see `format::columns`).

use mysql_async::prelude::*;
use mysql_async::{Conn, Row};

use super::TableDigest;
use crate::format::columns::{
    bytes_of, data_column, raw, select_rows_sql, values, Column, COLUMNS_QUERY,
};
use crate::format::quote_str;

/// Reading a table for its digest failed.
#[derive(Debug, thiserror::Error)]
#[error("{during}: {source}")]
pub struct DigestError {
    pub during: String,
    #[source]
    pub source: mysql_async::Error,
}

fn server(during: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> DigestError {
    let during = during.into();
    move |source| DigestError { during, source }
}

/// Reads the rows of one table and digests them the way the dumper does; used by the
/// restore drill to recompute a table's digest on a scratch server.
pub async fn table_digest(
    conn: &mut Conn,
    db: &str,
    table: &str,
) -> Result<TableDigest, DigestError> {
    let sql = format!(
        "{COLUMNS_QUERY}{} AND TABLE_NAME={} ORDER BY ORDINAL_POSITION",
        quote_str(db),
        quote_str(table)
    );
    let rows: Vec<Row> = conn.query(sql).await.map_err(server("reading columns"))?;
    let cols: Vec<Column> = rows
        .into_iter()
        .map(raw)
        .collect::<Vec<_>>()
        .iter()
        .filter_map(data_column)
        .map(|(_, c)| c)
        .collect();
    let mut d = TableDigest::new();
    if cols.is_empty() {
        return Ok(d);
    }
    let during = format!("reading {db}.{table}");
    let mut result = conn
        .query_iter(select_rows_sql(db, table, &cols))
        .await
        .map_err(server(during.clone()))?;
    while let Some(row) = result.next().await.map_err(server(during.clone()))? {
        let v = values(row);
        d.add_row(v.iter().map(bytes_of));
    }
    Ok(d)
}
