//! Binary log files as the archive holds them (point-in-time recovery): GTID positions,
//! and a reader that walks a segment's events and groups them into transactions, with
//! the databases each transaction touches. The agent writes segments (its `source::binlog`
//! streams them from the server); `restore` reads them back here, after the sealed bytes
//! were verified, to choose exactly the transactions up to a target.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

/// The magic number that starts every binary log file.
pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];

/// The size of an event header (binlog format version 4).
pub const HEADER_LEN: usize = 19;

/// Event type codes this crate looks at (MariaDB's numbering).
pub mod kind {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const HEARTBEAT: u8 = 27;
    pub const BINLOG_CHECKPOINT: u8 = 161;
    pub const GTID: u8 = 162;
    pub const GTID_LIST: u8 = 163;
    pub const START_ENCRYPTION: u8 = 164;
}

/// One transaction's id: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl Gtid {
    pub fn parse(s: &str) -> Option<Gtid> {
        let mut p = s.trim().split('-');
        let g = Gtid {
            domain: p.next()?.parse().ok()?,
            server: p.next()?.parse().ok()?,
            seq: p.next()?.parse().ok()?,
        };
        p.next().is_none().then_some(g)
    }
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A GTID position: per replication domain, the last transaction's server id and
/// sequence number (`0-1-153,7-1-20`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, (u32, u64)>);

impl GtidPos {
    /// Parses a GTID list as `@@gtid_binlog_pos` gives it ("" is the empty position).
    pub fn parse(s: &str) -> Option<GtidPos> {
        let mut m = BTreeMap::new();
        for g in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let g = Gtid::parse(g)?;
            m.insert(g.domain, (g.server, g.seq));
        }
        Some(GtidPos(m))
    }

    /// Moves the position past transaction `gtid` (`domain-server-seq`).
    pub fn advance(&mut self, gtid: &str) {
        if let Some(GtidPos(one)) = GtidPos::parse(gtid) {
            self.0.extend(one);
        }
    }

    /// Moves the position past `g`.
    pub fn advance_to(&mut self, g: Gtid) {
        self.0.insert(g.domain, (g.server, g.seq));
    }

    /// Whether transaction `g` is at or before this position (in its domain).
    pub fn covers(&self, g: Gtid) -> bool {
        self.0.get(&g.domain).is_some_and(|&(_, seq)| g.seq <= seq)
    }

    /// Whether every domain of `self` is at or before `other`'s position in it.
    pub fn le(&self, other: &GtidPos) -> bool {
        self.0
            .iter()
            .all(|(d, &(_, seq))| other.0.get(d).is_some_and(|&(_, s)| seq <= s))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last sequence number of `domain`, if the position has the domain.
    pub fn seq(&self, domain: u32) -> Option<u64> {
        self.0.get(&domain).map(|&(_, s)| s)
    }

    /// This position without the domains `keep` rejects (the start position asked of a
    /// Galera node: a node refuses a domain its binary log never had, such as another
    /// node's local domain).
    pub fn only(&self, keep: impl Fn(u32) -> bool) -> GtidPos {
        GtidPos(
            self.0
                .iter()
                .filter(|(d, _)| keep(**d))
                .map(|(d, v)| (*d, *v))
                .collect(),
        )
    }

    /// Whether a stretch of the log from `prev` to `end` holds the transaction after this
    /// position: it starts at or before it and ends past it. Only the domains both sides
    /// know are compared: a domain one side never saw (a Galera node's local domain,
    /// absent from a backup or an archive read from another node) has nothing in common to
    /// replay.
    pub fn continued_by(&self, prev: &GtidPos, end: &GtidPos) -> bool {
        prev.le_shared(self) && self.le_shared(end) && !end.le(self)
    }

    /// Whether every domain both positions have is at or before `other`'s (a domain only
    /// one side has, such as a Galera node's local one, is left out).
    pub fn le_shared(&self, other: &GtidPos) -> bool {
        self.0
            .iter()
            .all(|(d, &(_, seq))| other.0.get(d).is_none_or(|&(_, s)| seq <= s))
    }

    /// Per domain, the later of the two positions (a domain only one has, as it is).
    pub fn later(&self, other: &GtidPos) -> GtidPos {
        let mut m = self.0.clone();
        for (d, &(server, seq)) in &other.0 {
            let e = m.entry(*d).or_insert((server, seq));
            if seq > e.1 {
                *e = (server, seq);
            }
        }
        GtidPos(m)
    }

    /// The domains and their last sequence numbers.
    pub fn domains(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.0.iter().map(|(&domain, &(server, seq))| Gtid {
            domain,
            server,
            seq,
        })
    }
}

impl std::fmt::Display for GtidPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(d, (s, q))| format!("{d}-{s}-{q}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// What is wrong with a binary log file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading the binary log: {0}")]
    Io(#[from] io::Error),
    #[error("not a binary log file (no magic number)")]
    NoMagic,
    #[error("event at offset {offset}: {what}")]
    Malformed { offset: u64, what: String },
}

/// One event of a binary log file, as it is in the file.
#[derive(Debug, Clone)]
pub struct FileEvent {
    pub bytes: Vec<u8>,
    pub kind: u8,
    pub timestamp: u32,
    pub server_id: u32,
    /// Where the event starts in the file.
    pub offset: u64,
}

/// Reads a binary log file's events one by one; an event larger than `max_event` bytes is
/// refused (memory stays bounded on any input). Checksums (CRC32) are verified when the
/// format description event says the file has them.
pub struct EventReader<R> {
    r: R,
    offset: u64,
    checksums: bool,
    max_event: usize,
}

impl<R: Read> EventReader<R> {
    pub fn new(mut r: R, max_event: usize) -> Result<EventReader<R>, FileError> {
        let mut m = [0u8; 4];
        match r.read_exact(&mut m) {
            Ok(()) if m == MAGIC => {}
            Ok(()) => return Err(FileError::NoMagic),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FileError::NoMagic),
            Err(e) => return Err(e.into()),
        }
        Ok(EventReader {
            r,
            offset: 4,
            checksums: false,
            max_event,
        })
    }

    /// Whether the file's events carry CRC32 checksums (known after its FDE).
    pub fn checksums(&self) -> bool {
        self.checksums
    }

    pub fn next_event(&mut self) -> Result<Option<FileEvent>, FileError> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.r.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(self.bad("the file ends inside an event header".into()));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let size = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        if size < HEADER_LEN || size > self.max_event {
            return Err(self.bad(format!(
                "event size {size} is outside 19..={} bytes",
                self.max_event
            )));
        }
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&head);
        bytes.resize(size, 0);
        let offset = self.offset;
        self.r.read_exact(&mut bytes[HEADER_LEN..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                FileError::Malformed {
                    offset,
                    what: "the file ends inside an event".into(),
                }
            } else {
                FileError::Io(e)
            }
        })?;
        let kind = head[4];
        if kind == kind::FORMAT_DESCRIPTION {
            // The checksum algorithm is the byte before the FDE's own 4-byte checksum.
            self.checksums = size >= HEADER_LEN + 57 + 5 && bytes[size - 5] == 1;
        }
        if self.checksums {
            if size < HEADER_LEN + 4 {
                return Err(self.bad("too short for its checksum".into()));
            }
            let want = u32::from_le_bytes(bytes[size - 4..].try_into().expect("4 bytes"));
            if crc32fast::hash(&bytes[..size - 4]) != want {
                return Err(self.bad("bad CRC32 checksum".into()));
            }
        }
        let e = FileEvent {
            kind,
            timestamp: u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")),
            server_id: u32::from_le_bytes(head[5..9].try_into().expect("4 bytes")),
            offset: self.offset,
            bytes,
        };
        self.offset += size as u64;
        Ok(Some(e))
    }

    fn bad(&self, what: String) -> FileError {
        FileError::Malformed {
            offset: self.offset,
            what,
        }
    }
}

impl FileEvent {
    /// The body without the header and (when the file has them) the checksum.
    fn body(&self, checksums: bool) -> &[u8] {
        let end = self.bytes.len() - if checksums { 4 } else { 0 };
        self.bytes.get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// A GTID event's transaction id.
    pub fn gtid(&self) -> Option<Gtid> {
        if self.kind != kind::GTID {
            return None;
        }
        let d = self.bytes.get(HEADER_LEN..HEADER_LEN + 12)?;
        Some(Gtid {
            seq: u64::from_le_bytes(d[0..8].try_into().ok()?),
            domain: u32::from_le_bytes(d[8..12].try_into().ok()?),
            server: self.server_id,
        })
    }

    /// A QUERY event's default database and statement.
    pub fn query(&self, checksums: bool) -> Option<(&[u8], &[u8])> {
        if self.kind != kind::QUERY {
            return None;
        }
        // Post-header: thread id 4, exec time 4, db len 1, error 2, status vars len 2;
        // then the status vars, the db name and a NUL, then the statement.
        let b = self.body(checksums);
        let db_len = *b.get(8)? as usize;
        let vars_len = u16::from_le_bytes([*b.get(11)?, *b.get(12)?]) as usize;
        let db_start = 13 + vars_len;
        let db = b.get(db_start..db_start + db_len)?;
        let q = b.get(db_start + db_len + 1..)?;
        Some((db, q))
    }

    /// A TABLE_MAP event's database.
    pub fn table_map_database(&self, checksums: bool) -> Option<&[u8]> {
        if self.kind != kind::TABLE_MAP {
            return None;
        }
        // Post-header: table id 6, flags 2; then db len 1, db, NUL, ...
        let b = self.body(checksums);
        let len = *b.get(8)? as usize;
        b.get(9..9 + len)
    }
}

/// Whether an event of this type stands outside transactions (file-level bookkeeping).
fn outside_transactions(k: u8) -> bool {
    matches!(
        k,
        kind::FORMAT_DESCRIPTION
            | kind::ROTATE
            | kind::STOP
            | kind::HEARTBEAT
            | kind::BINLOG_CHECKPOINT
            | kind::GTID_LIST
            | kind::START_ENCRYPTION
    )
}

/// One transaction of a binary log file: its GTID event and every event up to the next
/// transaction, with the databases it touches.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub gtid: Gtid,
    /// The GTID event's time (seconds since the epoch).
    pub timestamp: u32,
    pub events: Vec<FileEvent>,
    /// Databases named by its row changes (table maps) and as the default database of
    /// its statements.
    pub databases: BTreeSet<String>,
    /// Statements run without a default database (their first 200 bytes).
    pub unattributed: Vec<String>,
}

impl Transaction {
    /// Bytes of its events.
    pub fn len(&self) -> usize {
        self.events.iter().map(|e| e.bytes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

fn is_control_statement(q: &[u8]) -> bool {
    let s = String::from_utf8_lossy(&q[..q.len().min(32)]).to_ascii_uppercase();
    let s = s.trim_start();
    [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "XA ",
        "SAVEPOINT",
        "RELEASE SAVEPOINT",
    ]
    .iter()
    .any(|k| s.starts_with(k))
}

/// Reads a binary log file as its format description event and its transactions.
pub struct TransactionReader<R> {
    events: EventReader<R>,
    fde: Option<FileEvent>,
    pending: Option<FileEvent>,
    /// Bytes the transactions held so far; a transaction larger than the limit is refused.
    max_transaction: usize,
}

impl<R: Read> TransactionReader<R> {
    pub fn new(r: R, max_transaction: usize) -> Result<TransactionReader<R>, FileError> {
        Ok(TransactionReader {
            events: EventReader::new(r, max_transaction)?,
            fde: None,
            pending: None,
            max_transaction,
        })
    }

    /// The file's format description event, once read (before the first transaction).
    pub fn format_description(&self) -> Option<&FileEvent> {
        self.fde.as_ref()
    }

    fn next_raw(&mut self) -> Result<Option<FileEvent>, FileError> {
        if let Some(e) = self.pending.take() {
            return Ok(Some(e));
        }
        self.events.next_event()
    }

    pub fn next_transaction(&mut self) -> Result<Option<Transaction>, FileError> {
        // Up to the next GTID event (remembering the FDE, dropping other file-level events).
        let start = loop {
            let Some(e) = self.next_raw()? else {
                return Ok(None);
            };
            if e.kind == kind::FORMAT_DESCRIPTION {
                self.fde = Some(e);
            } else if let Some(g) = e.gtid() {
                if self.fde.is_none() {
                    return Err(FileError::Malformed {
                        offset: e.offset,
                        what: "a transaction before the format description event".into(),
                    });
                }
                break (g, e);
            } else if !outside_transactions(e.kind) {
                return Err(FileError::Malformed {
                    offset: e.offset,
                    what: format!("event of type {} outside a transaction", e.kind),
                });
            }
        };
        let checksums = self.events.checksums();
        let (gtid, ev) = start;
        let mut t = Transaction {
            gtid,
            timestamp: ev.timestamp,
            events: vec![ev],
            databases: BTreeSet::new(),
            unattributed: Vec::new(),
        };
        let mut size = t.events[0].bytes.len();
        while let Some(e) = self.next_raw()? {
            if e.kind == kind::GTID || outside_transactions(e.kind) {
                self.pending = Some(e);
                break;
            }
            if let Some((db, q)) = e.query(checksums) {
                if !is_control_statement(q) {
                    if db.is_empty() {
                        t.unattributed
                            .push(String::from_utf8_lossy(&q[..q.len().min(200)]).into_owned());
                    } else {
                        t.databases.insert(String::from_utf8_lossy(db).into_owned());
                    }
                }
            } else if let Some(db) = e.table_map_database(checksums) {
                t.databases.insert(String::from_utf8_lossy(db).into_owned());
            }
            size += e.bytes.len();
            if size > self.max_transaction {
                return Err(FileError::Malformed {
                    offset: e.offset,
                    what: format!(
                        "transaction {gtid} is larger than {} bytes",
                        self.max_transaction
                    ),
                });
            }
            t.events.push(e);
        }
        Ok(Some(t))
    }
}

/// Whether statement text `q` names database `db` as an identifier (`db`.x, `db`, db.x).
pub fn names_database(q: &str, db: &str) -> bool {
    let quoted = format!("`{}`", db.replace('`', "``"));
    if q.contains(&quoted) {
        return true;
    }
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut from = 0;
    while let Some(i) = q[from..].find(db) {
        let at = from + i;
        let before = q[..at].chars().next_back();
        let after = q[at + db.len()..].chars().next();
        if !before.is_some_and(is_ident) && after == Some('.') {
            return true;
        }
        from = at + db.len().max(1);
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn continuation_across_galera_nodes() {
        use super::GtidPos;
        let p = |s: &str| GtidPos::parse(s).unwrap();
        // The backup (node 3) has its local domain 13; the archive (node 1) has 11.
        let bpos = p("1-101-50,13-101-2");
        assert!(bpos.continued_by(&p("1-101-40,11-101-1"), &p("1-101-60,11-101-1")));
        assert!(!bpos.continued_by(&p("1-101-51"), &p("1-101-60")));
        assert!(!bpos.continued_by(&p("1-101-30"), &p("1-101-50")));
        assert!(p("1-101-50").continued_by(&p("1-101-50"), &p("1-101-51")));
        assert_eq!(
            p("1-101-5,11-101-1,12-101-3").only(|d| d != 11).to_string(),
            "1-101-5,12-101-3"
        );
    }

    use super::*;

    #[test]
    fn positions_compare_per_domain() {
        let p = GtidPos::parse("0-1-10,7-2-5").unwrap();
        assert!(p.covers(Gtid::parse("0-1-10").unwrap()));
        assert!(p.covers(Gtid::parse("7-9-4").unwrap()));
        assert!(!p.covers(Gtid::parse("0-1-11").unwrap()));
        assert!(!p.covers(Gtid::parse("8-1-1").unwrap()));
        let q = GtidPos::parse("0-1-12,7-2-5,9-1-1").unwrap();
        assert!(p.le(&q));
        assert!(!q.le(&p));
        assert_eq!(p.to_string(), "0-1-10,7-2-5");
        assert!(GtidPos::parse("0-1").is_none());
        assert!(GtidPos::parse("").unwrap().is_empty());
    }

    #[test]
    fn database_names_are_found_as_identifiers() {
        assert!(names_database("CREATE TABLE shop.t (a int)", "shop"));
        assert!(names_database("DROP DATABASE `shop`", "shop"));
        assert!(!names_database("CREATE DATABASE shop_old", "shop"));
        assert!(!names_database("INSERT INTO t VALUES ('myshop.x')", "shop"));
        assert!(names_database("ALTER TABLE `a``b`.t ADD c int", "a`b"));
    }

    #[test]
    fn a_file_without_magic_or_cut_short_is_refused() {
        assert!(matches!(
            EventReader::new(&b"nope"[..], 1 << 20),
            Err(FileError::NoMagic)
        ));
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&[0u8; 10]);
        let mut r = EventReader::new(&f[..], 1 << 20).unwrap();
        assert!(r.next_event().is_err());
        let mut f = MAGIC.to_vec();
        let mut head = [0u8; 19];
        head[9..13].copy_from_slice(&(1u32 << 30).to_le_bytes());
        f.extend_from_slice(&head);
        let mut r = EventReader::new(&f[..], 1 << 20).unwrap();
        assert!(matches!(r.next_event(), Err(FileError::Malformed { .. })));
    }
}
