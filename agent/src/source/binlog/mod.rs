//! Point-in-time recovery, the reading side: the server's binary log streamed over a
//! replication connection, from a GTID position, and cut into segments. Each segment is a
//! valid binary log file (the magic, the server's format description event, then the
//! events exactly as the server sent them, CRC32 checksums included), so that stock
//! `mariadb-binlog` reads it; it is built in memory, bounded by its size limit, and is
//! never written to disk in plaintext (it goes to the sealing pipeline like a dump).
//!
//! MariaDB specifics, checked against the server: the connection first sets
//! `@mariadb_slave_capability=4` (else the server replaces GTID and annotate events by
//! dummies) and `@slave_connect_state` (the GTID position to start after), then asks for
//! the stream with an empty file name; the server starts with an artificial ROTATE, the
//! binary log's format description event and its GTID list, then the transactions after
//! that position.

use futures_util::StreamExt;
use mysql_async::binlog::events::Event;
use mysql_async::prelude::*;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};

pub mod segment;

pub use segment::{GtidPos, Segment, SegmentBuilder};

/// Event type codes this module looks at (MariaDB's numbering).
pub(crate) mod kind {
    pub const QUERY: u8 = 2;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const HEARTBEAT: u8 = 27;
    pub const GTID: u8 = 162;
}

/// `LOG_EVENT_ARTIFICIAL_F`: an event the server made up for the stream (not in the log).
const ARTIFICIAL: u16 = 0x20;

#[derive(Debug, thiserror::Error)]
pub enum BinlogError {
    #[error("starting the binary log stream from GTID {gtid}: {source}; the user needs REPLICATION SLAVE (and BINLOG MONITOR), and the server must still hold the binary logs from that position (binlog_expire_logs_seconds)")]
    Start {
        gtid: String,
        source: mysql_async::Error,
    },
    #[error("reading the binary log stream: {0}")]
    Read(mysql_async::Error),
    #[error("event at binlog position {log_pos} has a bad checksum; the stream is not trusted (start again from the last archived GTID)")]
    Checksum { log_pos: u32 },
    #[error("malformed {what} event at binlog position {log_pos}")]
    Malformed { what: &'static str, log_pos: u32 },
}

/// One event as received, with what the segmenter needs to know of it.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// The event as it is in the server's binary log: header, body, checksum.
    pub bytes: Vec<u8>,
    pub kind: u8,
    /// Seconds since the epoch, from the event header.
    pub timestamp: u32,
    pub server_id: u32,
    pub log_pos: u32,
    /// Made up by the server for the stream; not written to segments.
    pub artificial: bool,
    /// For a GTID event: `domain-server-sequence`, and whether the transaction is one
    /// standalone statement (DDL) that ends with its query event.
    pub gtid: Option<(String, bool)>,
}

impl RawEvent {
    fn of(e: &Event) -> Result<RawEvent, BinlogError> {
        let h = e.header();
        let kind = h.event_type_raw();
        // Checksums: the server's CRC32 over exactly these bytes; a mismatch means the
        // stream is damaged.
        if kind == kind::HEARTBEAT {
            // Made up for the connection, never stored: only its arrival counts.
        } else if let (Some(sum), Ok(Some(alg))) = (e.checksum(), e.footer().get_checksum_alg()) {
            if alg != mysql_async::binlog::BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_OFF
                && e.calc_checksum(alg) != u32::from_le_bytes(sum)
            {
                return Err(BinlogError::Checksum {
                    log_pos: h.log_pos(),
                });
            }
        }
        let mut bytes = Vec::with_capacity(h.event_size() as usize);
        e.write(mysql_async::binlog::BinlogVersion::Version4, &mut bytes)
            .map_err(|_| BinlogError::Malformed {
                what: "any",
                log_pos: h.log_pos(),
            })?;
        let gtid = if kind == kind::GTID {
            let d = e.data();
            if d.len() < 13 {
                return Err(BinlogError::Malformed {
                    what: "GTID",
                    log_pos: h.log_pos(),
                });
            }
            let seq = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
            let domain = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
            let standalone = d[12] & 1 != 0;
            Some((format!("{domain}-{}-{seq}", h.server_id()), standalone))
        } else {
            None
        };
        Ok(RawEvent {
            bytes,
            kind,
            timestamp: h.timestamp(),
            server_id: h.server_id(),
            log_pos: h.log_pos(),
            artificial: h.flags_raw() & ARTIFICIAL != 0,
            gtid,
        })
    }

    /// The statement text of a QUERY event (for `COMMIT` detection).
    pub(crate) fn query_text(&self) -> Option<&[u8]> {
        // header 19, post-header: thread id 4, exec time 4, db len 1, error 2, status
        // vars len 2; then status vars, db name + NUL, query (then the 4-byte checksum).
        let b = self.bytes.get(19..)?;
        let db_len = *b.get(8)? as usize;
        let vars_len = u16::from_le_bytes([*b.get(11)?, *b.get(12)?]) as usize;
        let start = 13 + vars_len + db_len + 1;
        let end = b.len().checked_sub(4)?;
        b.get(start..end)
    }
}

/// How often an idle server sends a heartbeat on a following stream.
pub const HEARTBEAT_SECS: u32 = 5;

impl BinlogError {
    /// The server no longer holds the binary log from the requested position (purged):
    /// a gap in the archive.
    pub fn is_purged(&self) -> bool {
        let e = match self {
            BinlogError::Start { source, .. } | BinlogError::Read(source) => source,
            _ => return false,
        };
        matches!(e, mysql_async::Error::Server(s) if s.code == 1236)
    }
}

/// An open binary log stream of one server.
pub struct Stream {
    inner: BinlogStream,
}

/// Asks `conn`'s server for its binary log after GTID position `after` (a GTID list,
/// e.g. `0-1-153`; empty: from the oldest binary log it has). `server_id` identifies this
/// reader to the server and must differ from every server's and replica's id.
/// `until_now`: end the stream at the current end of the log instead of waiting.
pub async fn open(
    mut conn: Conn,
    after: &str,
    server_id: u32,
    until_now: bool,
) -> Result<Stream, BinlogError> {
    let err = |source| BinlogError::Start {
        gtid: after.to_string(),
        source,
    };
    conn.query_drop("SET @mariadb_slave_capability=4")
        .await
        .map_err(err)?;
    conn.query_drop(format!(
        "SET @slave_connect_state={}",
        backup_core::format::quote_str(after)
    ))
    .await
    .map_err(err)?;
    conn.query_drop("SET @slave_gtid_strict_mode=1")
        .await
        .map_err(err)?;
    let mut req = BinlogStreamRequest::new(server_id)
        .with_filename(b"")
        .with_pos(4);
    if until_now {
        req = req.with_non_blocking();
    } else {
        // An idle server sends a heartbeat every HEARTBEAT_SECS: silence for longer means
        // a dead connection.
        conn.query_drop(format!(
            "SET @master_heartbeat_period = {}",
            u64::from(HEARTBEAT_SECS) * 1_000_000_000
        ))
        .await
        .map_err(err)?;
    }
    let inner = conn.get_binlog_stream(req).await.map_err(err)?;
    Ok(Stream { inner })
}

impl Stream {
    /// The next event (heartbeats included: they carry no data, the segmenter skips
    /// them), or None at the end of a non-blocking stream.
    pub async fn next(&mut self) -> Result<Option<RawEvent>, BinlogError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(BinlogError::Read(e)),
            Some(Ok(e)) => Ok(Some(RawEvent::of(&e)?)),
        }
    }

    pub async fn close(self) {
        let _ = self.inner.close().await;
    }
}
