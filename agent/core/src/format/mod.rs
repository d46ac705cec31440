//! The SQL dump format, shared by the writer (the dumper) and the readers (`restore`):
//! escaping of identifiers and values, the session header and footer, the trailer of
//! per-table digests, the completion line, and a streaming statement splitter that reads
//! what the stock `mariadb` client reads (quotes, comments, `DELIMITER`).

pub mod columns;
pub mod grants;

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};

/// First line of every dump: the guard current mariadb-dump writes, so that a client that
/// honours it refuses shell escapes (`\!`) hidden in a tampered file.
pub const SANDBOX_LINE: &str = "/*M!999999\\- enable the sandbox mode */";
/// Prefix of the last line; a stream without it is incomplete.
pub const COMPLETION_PREFIX: &str = "-- Dump completed ";
/// Prefix of a trailer line describing one table.
pub const TABLE_TRAILER_PREFIX: &str = "-- trailer table ";
/// Prefix of a trailer line naming one dumped database.
pub const DATABASE_TRAILER_PREFIX: &str = "-- trailer database ";
/// Prefix of a trailer line naming one view, routine, trigger, event or sequence.
pub const OBJECT_TRAILER_PREFIX: &str = "-- trailer object ";
/// The line that starts the trailer; trailer lines before it are not trailer lines.
pub const TRAILER_START: &str = "-- Trailer: backup-agent dump format 1";
/// Comment lines that open the accounts part of a dump: a `--database` restore skips
/// these sections.
pub const USERS_SECTION: &str = "-- Users and roles";
pub const GRANTS_SECTION: &str = "-- Grants";
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the header line that says what a dump is (JSON [`Identity`]). It is inside
/// the signed message, so a reader can check that the backup it holds is the one it was
/// asked for, whatever the file is called.
pub const IDENTITY_PREFIX: &str = "-- Backup identity: ";

/// What a dump is: its backup id, source and databases, as the agent that made it wrote
/// them in its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub backup_id: String,
    pub source: String,
    pub databases: Vec<String>,
}

impl Identity {
    pub fn to_line(&self) -> String {
        format!(
            "{IDENTITY_PREFIX}{}\n",
            serde_json::to_string(self).expect("serializable")
        )
    }
}

/// Largest INSERT the dumper writes, unless a single row is larger.
pub const MAX_INSERT_BYTES: usize = 1 << 20;

/// A size for people: bytes in binary units with one decimal ("1.4 GiB", "512 B").
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('`');
    for c in name.chars() {
        if c == '`' {
            s.push('`');
        }
        s.push(c);
    }
    s.push('`');
    s
}

/// `db`.`name`
pub fn qualified(db: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(db), quote_ident(name))
}

/// A string literal in single quotes, escaped like mysql_real_escape_string does for a
/// utf8mb4 connection.
pub fn quote_str(s: &str) -> String {
    let mut v = Vec::with_capacity(s.len() + 2);
    push_quoted(&mut v, s.as_bytes());
    String::from_utf8(v).expect("escaping keeps UTF-8 valid")
}

static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    t[0] = true;
    t[b'\'' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t[0x1a] = true;
    t
};

/// Appends `'...'` with the bytes escaped. Only the six bytes the server's lexer treats
/// specially are escaped; all others pass through.
///
/// The value is scanned a block at a time: a block without a special byte (most of any
/// text) is found so by a loop the compiler turns into a few vector compares, and only a
/// block that holds one is walked byte by byte (twice as fast as the byte walk alone on
/// prose-like text).
pub fn push_quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'\'');
    let mut start = 0;
    let mut at = 0;
    let mut blocks = s.chunks_exact(QUOTE_BLOCK);
    for block in &mut blocks {
        if any_needs_escape(block.try_into().expect("a whole block")) {
            escape_from(out, s, &mut start, at, block);
        }
        at += QUOTE_BLOCK;
    }
    escape_from(out, s, &mut start, at, blocks.remainder());
    out.extend_from_slice(&s[start..]);
    out.push(b'\'');
}

const QUOTE_BLOCK: usize = 32;

/// Whether a block holds a byte to escape; branch-free, so that it vectorizes.
#[inline]
fn any_needs_escape(block: &[u8; QUOTE_BLOCK]) -> bool {
    let mut hit = 0u8;
    for &b in block {
        hit |= ((b == 0) | (b == b'\'') | (b == b'\\') | (b == b'\n') | (b == b'\r') | (b == 0x1a))
            as u8;
    }
    hit != 0
}

/// Copies `s[*start..]` up to each byte of `part` (which is `s[at..at + part.len()]`)
/// that needs escaping, then its escape; `*start` ends after the last one.
#[inline]
fn escape_from(out: &mut Vec<u8>, s: &[u8], start: &mut usize, at: usize, part: &[u8]) {
    for (k, &b) in part.iter().enumerate() {
        if NEEDS_ESCAPE[b as usize] {
            out.extend_from_slice(&s[*start..at + k]);
            out.extend_from_slice(match b {
                0 => b"\\0",
                b'\'' => b"\\'",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                _ => b"\\Z",
            });
            *start = at + k + 1;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `X'..'`, a hex literal (exact for any bytes, also the empty string).
pub fn push_hex(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() * 2 + 3);
    out.extend_from_slice(b"X'");
    for &b in s {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out.push(b'\'');
}

/// Session settings at the top of a dump: exact values (UTC, utf8mb4), fast load
/// (no unique/foreign key/check constraint checks), zero dates and zero AUTO_INCREMENT
/// values accepted. Every setting is restored by [`footer`].
pub fn header(description: &str, identity: &Identity) -> String {
    let mut h = String::new();
    h.push_str(SANDBOX_LINE);
    h.push('\n');
    for line in description.lines() {
        h.push_str("-- ");
        h.push_str(line);
        h.push('\n');
    }
    h.push_str(&identity.to_line());
    h.push_str(
        "SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT, @OLD_CHARACTER_SET_RESULTS=@@CHARACTER_SET_RESULTS, @OLD_COLLATION_CONNECTION=@@COLLATION_CONNECTION;\n\
SET NAMES utf8mb4;\n\
SET @OLD_TIME_ZONE=@@TIME_ZONE, TIME_ZONE='+00:00';\n\
SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0;\n\
SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0;\n\
SET @OLD_CHECK_CONSTRAINT_CHECKS=@@CHECK_CONSTRAINT_CHECKS, CHECK_CONSTRAINT_CHECKS=0;\n\
SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO';\n\
SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0;\n\n",
    );
    h
}

pub fn footer() -> &'static str {
    "\nSET SQL_MODE=@OLD_SQL_MODE;\n\
SET CHECK_CONSTRAINT_CHECKS=@OLD_CHECK_CONSTRAINT_CHECKS;\n\
SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS;\n\
SET UNIQUE_CHECKS=@OLD_UNIQUE_CHECKS;\n\
SET TIME_ZONE=@OLD_TIME_ZONE;\n\
SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT, CHARACTER_SET_RESULTS=@OLD_CHARACTER_SET_RESULTS, COLLATION_CONNECTION=@OLD_COLLATION_CONNECTION;\n\
SET SQL_NOTES=@OLD_SQL_NOTES;\n\n"
}

/// One table's entry in the trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableTrailer {
    pub db: String,
    pub table: String,
    pub rows: u64,
    /// Order-independent digest of the values the server returned (see `digest`).
    pub content: String,
    /// sha256 of SHOW CREATE TABLE without the AUTO_INCREMENT counter.
    pub definition: String,
}

impl TableTrailer {
    pub fn to_line(&self) -> String {
        format!(
            "{}{}\n",
            TABLE_TRAILER_PREFIX,
            serde_json::to_string(self).expect("serializable")
        )
    }
}

/// One stored object in the trailer (not a base table: those have `TableTrailer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectTrailer {
    pub db: String,
    /// VIEW, PROCEDURE, FUNCTION, TRIGGER, EVENT or SEQUENCE.
    pub kind: String,
    pub name: String,
}

impl ObjectTrailer {
    pub fn to_line(&self) -> String {
        format!(
            "{}{}\n",
            OBJECT_TRAILER_PREFIX,
            serde_json::to_string(self).expect("serializable")
        )
    }
}

/// A parsed item of a dump stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A statement without its delimiter.
    Statement(Vec<u8>),
    /// A `-- ` or `#` comment line found between statements (without the newline).
    Comment(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("reading the dump: {0}")]
    Io(#[from] io::Error),
    #[error("the dump ends inside a statement (truncated stream): {0}")]
    Unterminated(String),
    /// A line or statement longer than the reader's limit: not what the dumper writes
    /// (or larger than the manifest says), and never buffered whole.
    #[error("a statement is longer than {limit} bytes, more than this backup's largest statement; the dump is not what the agent wrote (or, for a backup with rows that large, give its manifest or --max-statement)")]
    TooLong { limit: usize },
}

/// The longest statement a reader accepts when nothing says more (the dumper writes at
/// most 1 MiB per INSERT, or one row's size; the manifest records the largest).
pub const DEFAULT_MAX_STATEMENT: usize = 32 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Quote(u8),
    LineComment,
    BlockComment,
}

/// Splits a dump into statements and top-level comments the way the `mariadb` client
/// does: delimiters inside quotes, backtick identifiers and comments do not count,
/// backslash escapes inside quotes, `DELIMITER x` lines change the delimiter.
pub struct Splitter<R> {
    reader: R,
    line: Vec<u8>,
    stmt: Vec<u8>,
    delimiter: Vec<u8>,
    /// The bytes that may begin a quote, a comment or the delimiter outside quotes; runs
    /// of other bytes are copied as they are.
    special: [bool; 256],
    state: State,
    pending: std::collections::VecDeque<Item>,
    done: bool,
    /// Bytes consumed so far (for progress).
    pub bytes_read: u64,
    /// Longest line and statement accepted; memory stays within a few times this.
    limit: usize,
}

impl<R: BufRead> Splitter<R> {
    pub fn new(reader: R) -> Self {
        Splitter {
            reader,
            line: Vec::new(),
            stmt: Vec::new(),
            delimiter: b";".to_vec(),
            special: specials(b";"),
            state: State::Normal,
            pending: Default::default(),
            done: false,
            bytes_read: 0,
            limit: DEFAULT_MAX_STATEMENT,
        }
    }

    /// A splitter that refuses lines and statements longer than `limit` bytes.
    pub fn with_limit(reader: R, limit: usize) -> Self {
        Splitter {
            limit,
            ..Splitter::new(reader)
        }
    }

    /// The next item, or None at the end of the stream.
    pub fn next_item(&mut self) -> Result<Option<Item>, SplitError> {
        loop {
            if let Some(i) = self.pending.pop_front() {
                return Ok(Some(i));
            }
            if self.done {
                return Ok(None);
            }
            self.line.clear();
            // At most one byte over the limit: a longer line is refused, not buffered.
            let cap = self.limit as u64 + 2;
            let n = self
                .reader
                .by_ref()
                .take(cap)
                .read_until(b'\n', &mut self.line)?;
            self.bytes_read += n as u64;
            if n as u64 == cap && self.line.last() != Some(&b'\n') {
                return Err(SplitError::TooLong { limit: self.limit });
            }
            if n == 0 {
                self.done = true;
                if self.state == State::LineComment {
                    self.state = State::Normal;
                }
                if self.stmt.iter().any(|b| !b.is_ascii_whitespace()) {
                    let head =
                        String::from_utf8_lossy(&self.stmt[..self.stmt.len().min(80)]).into_owned();
                    return Err(SplitError::Unterminated(head));
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            self.process_line(&line);
            self.line = line;
            if self.stmt.len() > self.limit {
                return Err(SplitError::TooLong { limit: self.limit });
            }
        }
    }

    /// The reader, for checks after the last item.
    pub fn into_inner(self) -> R {
        self.reader
    }

    fn at_statement_start(&self) -> bool {
        self.state == State::Normal && self.stmt.iter().all(|b| b.is_ascii_whitespace())
    }

    fn process_line(&mut self, line: &[u8]) {
        if self.at_statement_start() {
            let trimmed = trim_ascii(line);
            if trimmed.is_empty() {
                return;
            }
            // The sandbox line is a client command, not SQL; the client consumes it.
            if trimmed.starts_with(b"--")
                && (trimmed.len() == 2 || trimmed[2].is_ascii_whitespace())
                || trimmed.starts_with(b"#")
                || trimmed == SANDBOX_LINE.as_bytes()
            {
                self.stmt.clear();
                self.pending
                    .push_back(Item::Comment(String::from_utf8_lossy(trimmed).into_owned()));
                return;
            }
            if trimmed.len() > 10 && trimmed[..10].eq_ignore_ascii_case(b"DELIMITER ") {
                self.stmt.clear();
                let d = trim_ascii(&trimmed[10..]);
                if !d.is_empty() {
                    self.delimiter = d.to_vec();
                    self.special = specials(d);
                }
                return;
            }
        }
        let mut i = 0;
        while i < line.len() {
            match self.state {
                State::Normal => {
                    if self.stmt.is_empty() {
                        // A statement's leading spaces are not part of it.
                        while i < line.len() && line[i].is_ascii_whitespace() {
                            i += 1;
                        }
                    }
                    // Copy up to the next byte that may begin a quote, a comment or the
                    // delimiter in one go.
                    let rest = &line[i..];
                    let stop = rest
                        .iter()
                        .position(|&c| self.special[c as usize])
                        .unwrap_or(rest.len());
                    self.stmt.extend_from_slice(&rest[..stop]);
                    i += stop;
                    if i >= line.len() {
                        break;
                    }
                    let b = line[i];
                    if line[i..].starts_with(&self.delimiter) {
                        self.end_statement();
                        i += self.delimiter.len();
                        // The rest of the line may hold another statement or comment.
                        continue;
                    }
                    match b {
                        b'\'' | b'"' | b'`' => self.state = State::Quote(b),
                        b'#' => {
                            self.state = State::LineComment;
                            i += 1;
                            continue;
                        }
                        b'-' if line[i..].starts_with(b"-- ")
                            || line[i..].starts_with(b"--\n")
                            || line[i..].starts_with(b"--\t")
                            || line[i..].starts_with(b"--\r") =>
                        {
                            self.state = State::LineComment;
                            i += 2;
                            continue;
                        }
                        b'/' if line.get(i + 1) == Some(&b'*') => {
                            // Executable comments (/*! ... */, /*M! ... */) are sent to
                            // the server as they are; it decides. The delimiter inside
                            // them still ends the statement in the stock client, but
                            // the dumper never writes one there.
                            self.stmt.extend_from_slice(b"/*");
                            i += 2;
                            self.state = State::BlockComment;
                            continue;
                        }
                        _ => {}
                    }
                    self.stmt.push(b);
                    i += 1;
                }
                State::Quote(q) => {
                    // Copy up to the next quote or backslash in one go.
                    let rest = &line[i..];
                    let stop = if q == b'`' {
                        memchr::memchr(q, rest)
                    } else {
                        memchr::memchr2(q, b'\\', rest)
                    }
                    .unwrap_or(rest.len());
                    self.stmt.extend_from_slice(&rest[..stop]);
                    i += stop;
                    if i >= line.len() {
                        break;
                    }
                    let c = line[i];
                    self.stmt.push(c);
                    i += 1;
                    if c == b'\\' {
                        if i < line.len() {
                            self.stmt.push(line[i]);
                            i += 1;
                        }
                    } else if line.get(i) == Some(&q) {
                        // A doubled quote stays inside the literal.
                        self.stmt.push(q);
                        i += 1;
                    } else {
                        self.state = State::Normal;
                    }
                }
                State::LineComment => {
                    // Comments inside statements are dropped, up to the newline.
                    let b = line[i];
                    if b == b'\n' {
                        self.state = State::Normal;
                        self.stmt.push(b'\n');
                    }
                    i += 1;
                }
                State::BlockComment => {
                    if line[i..].starts_with(b"*/") {
                        self.stmt.extend_from_slice(b"*/");
                        i += 2;
                        self.state = State::Normal;
                    } else {
                        self.stmt.push(line[i]);
                        i += 1;
                    }
                }
            }
        }
    }

    /// The statement read so far is complete: queued without its surrounding spaces
    /// (moved, not copied), unless it is empty.
    fn end_statement(&mut self) {
        // The next one is likely about as long: room for it up front, not grown by
        // doubling (which would also leave statements holding twice their size).
        let len = self.stmt.len();
        let room = (len + len / 8 + 4096).min(self.limit + 4096);
        let mut stmt = std::mem::replace(&mut self.stmt, Vec::with_capacity(room));
        if stmt.capacity() > len + len / 4 + 4096 {
            stmt.shrink_to_fit();
        }
        let Some(end) = stmt.iter().rposition(|b| !b.is_ascii_whitespace()) else {
            return;
        };
        stmt.truncate(end + 1);
        let start = stmt
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        if start > 0 {
            stmt.drain(..start);
        }
        self.pending.push_back(Item::Statement(stmt));
    }
}

/// The bytes at which the splitter looks closer outside quotes: quotes, comment starts and
/// the delimiter's first byte.
fn specials(delimiter: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    for b in [b'\'', b'"', b'`', b'#', b'-', b'/'] {
        t[b as usize] = true;
    }
    if let Some(&d) = delimiter.first() {
        t[d as usize] = true;
    }
    t
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|e| e + 1)
        .unwrap_or(start);
    &s[start..end.max(start)]
}

/// What a reader learns from the trailer of a complete dump.
/// A trailer line that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed {kind} trailer line: {source}")]
pub struct TrailerError {
    /// table, object, database or identity.
    pub kind: &'static str,
    pub source: serde_json::Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trailer {
    /// The header's identity line, when the dump has one.
    pub identity: Option<Identity>,
    pub started: bool,
    pub databases: Vec<String>,
    pub tables: Vec<TableTrailer>,
    pub objects: Vec<ObjectTrailer>,
    pub completed: Option<String>,
}

impl Trailer {
    /// Takes note of a top-level comment. Returns an error for a malformed trailer line.
    pub fn observe(&mut self, comment: &str) -> Result<(), TrailerError> {
        if comment == TRAILER_START {
            self.started = true;
            return Ok(());
        }
        if let Some(ts) = comment.strip_prefix(COMPLETION_PREFIX) {
            self.completed = Some(ts.trim().to_string());
            return Ok(());
        }
        if let Some(rest) = comment.strip_prefix(IDENTITY_PREFIX) {
            let id: Identity = serde_json::from_str(rest).map_err(|source| TrailerError {
                kind: "identity",
                source,
            })?;
            if self.identity.is_some() || self.started {
                return Err(TrailerError {
                    kind: "identity",
                    source: serde::de::Error::custom(
                        "a second identity line, or one after the trailer started",
                    ),
                });
            }
            self.identity = Some(id);
            return Ok(());
        }
        if !self.started {
            return Ok(());
        }
        if let Some(rest) = comment.strip_prefix(TABLE_TRAILER_PREFIX) {
            let t: TableTrailer = serde_json::from_str(rest).map_err(|source| TrailerError {
                kind: "table",
                source,
            })?;
            self.tables.push(t);
        } else if let Some(rest) = comment.strip_prefix(OBJECT_TRAILER_PREFIX) {
            let o: ObjectTrailer = serde_json::from_str(rest).map_err(|source| TrailerError {
                kind: "object",
                source,
            })?;
            self.objects.push(o);
        } else if let Some(rest) = comment.strip_prefix(DATABASE_TRAILER_PREFIX) {
            let d: String = serde_json::from_str(rest).map_err(|source| TrailerError {
                kind: "database",
                source,
            })?;
            self.databases.push(d);
        }
        Ok(())
    }
}

pub fn database_trailer_line(db: &str) -> String {
    format!(
        "{}{}\n",
        DATABASE_TRAILER_PREFIX,
        serde_json::to_string(db).expect("serializable")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `push_quoted` must give: each byte on its own.
    fn quoted_bytewise(s: &[u8]) -> Vec<u8> {
        let mut v = vec![b'\''];
        for &b in s {
            match b {
                0 => v.extend_from_slice(b"\\0"),
                b'\'' => v.extend_from_slice(b"\\'"),
                b'\\' => v.extend_from_slice(b"\\\\"),
                b'\n' => v.extend_from_slice(b"\\n"),
                b'\r' => v.extend_from_slice(b"\\r"),
                0x1a => v.extend_from_slice(b"\\Z"),
                _ => v.push(b),
            }
        }
        v.push(b'\'');
        v
    }

    proptest! {
        /// Any bytes, the special ones frequent, at every length around the block size
        /// and at every offset within a block.
        #[test]
        fn quoting_escapes_exactly_the_six_bytes(
            s in proptest::collection::vec(
                prop_oneof![
                    8 => any::<u8>(),
                    1 => proptest::sample::select(vec![0u8, b'\'', b'\\', b'\n', b'\r', 0x1a]),
                ],
                0..200,
            )
        ) {
            let mut out = b"prefix ".to_vec();
            push_quoted(&mut out, &s);
            prop_assert_eq!(&out[..7], b"prefix ");
            prop_assert_eq!(out[7..].to_vec(), quoted_bytewise(&s));
        }
    }

    #[test]
    fn quoting_every_byte_at_every_position_of_a_block() {
        for len in [1, 31, 32, 33, 63, 64, 65, 100] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[pos] = b;
                    let mut out = Vec::new();
                    push_quoted(&mut out, &s);
                    assert_eq!(out, quoted_bytewise(&s), "byte {b} at {pos} of {len}");
                }
            }
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(20586), "20.1 KiB");
        assert_eq!(human_size(380_900_000), "363.3 MiB");
        assert_eq!(human_size(1_256_000_000_000), "1.1 TiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    fn split(s: &str) -> Result<Vec<Item>, SplitError> {
        let mut sp = Splitter::new(s.as_bytes());
        let mut v = Vec::new();
        while let Some(i) = sp.next_item()? {
            v.push(i);
        }
        Ok(v)
    }
    fn st(s: &str) -> Item {
        Item::Statement(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_and_statements_longer_than_the_limit_are_refused_unbuffered() {
        let items = |text: &[u8], limit: usize| {
            let mut sp = Splitter::with_limit(text, limit);
            let mut n = 0;
            loop {
                match sp.next_item() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => return Ok(n),
                    Err(e) => return Err((e, sp.line.capacity())),
                }
            }
        };
        let ok = b"INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\n";
        assert_eq!(items(ok, 40).unwrap(), 2);
        // One long line: refused after reading limit + 2 bytes of it.
        let mut long = b"INSERT INTO t VALUES ('".to_vec();
        long.extend(std::iter::repeat_n(b'A', 1 << 20));
        long.extend_from_slice(b"');\n");
        let (e, cap) = items(&long, 4096).unwrap_err();
        assert!(matches!(e, SplitError::TooLong { limit: 4096 }), "{e}");
        assert!(cap < 64 * 1024, "the line buffer grew to {cap}");
        // A statement of many short lines.
        let many = b"SELECT '\n".repeat(1000);
        assert!(matches!(
            items(&many, 4096).unwrap_err().0,
            SplitError::TooLong { .. }
        ));
        assert_eq!(items(&long, 2 << 20).unwrap(), 1);
    }

    #[test]
    fn escaping_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = Vec::new();
        push_quoted(&mut out, &all);
        // Unescape like the server does and compare.
        let inner = &out[1..out.len() - 1];
        let mut back = Vec::new();
        let mut i = 0;
        while i < inner.len() {
            if inner[i] == b'\\' {
                back.push(match inner[i + 1] {
                    b'0' => 0,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b'Z' => 0x1a,
                    c => c,
                });
                i += 2;
            } else {
                assert_ne!(inner[i], b'\'');
                back.push(inner[i]);
                i += 1;
            }
        }
        assert_eq!(back, all);
        let mut h = Vec::new();
        push_hex(&mut h, &[0, 255, 16]);
        assert_eq!(h, b"X'00FF10'");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn splits_like_the_client() {
        let dump = "/*M!999999\\- enable the sandbox mode */\n-- hello\nSET a=1;\nINSERT INTO `t;x` VALUES ('a;\\';b',\"q;\"),(1);\n\
DELIMITER ;;\nCREATE PROCEDURE p() BEGIN SELECT 1; SELECT ';;'; END ;;\nDELIMITER ;\n# hash\nSELECT 2; -- tail\n/* c; */ SELECT 3;\n-- Dump completed x\n";
        let items = split(dump).unwrap();
        assert_eq!(items[0], Item::Comment(SANDBOX_LINE.into()));
        assert_eq!(items[1], Item::Comment("-- hello".into()));
        assert_eq!(items[2], st("SET a=1"));
        assert_eq!(
            items[3],
            st("INSERT INTO `t;x` VALUES ('a;\\';b',\"q;\"),(1)")
        );
        assert_eq!(
            items[4],
            st("CREATE PROCEDURE p() BEGIN SELECT 1; SELECT ';;'; END")
        );
        assert_eq!(items[5], Item::Comment("# hash".into()));
        assert_eq!(items[6], st("SELECT 2"));
        // A comment after a statement on the same line is dropped, as the client does.
        assert_eq!(items[7], st("/* c; */ SELECT 3"));
        assert_eq!(items[8], Item::Comment("-- Dump completed x".into()));
        assert_eq!(items.len(), 9);
        // Comments inside a statement are dropped, the statement survives.
        let items = split(
            "SELECT 1 -- c
, 2 # d
;
",
        )
        .unwrap();
        assert_eq!(items, vec![st("SELECT 1 \n, 2")]);
    }

    /// The splitter as it was before it copied runs: one byte at a time, the delimiter
    /// compared at every byte. The reference the fast one must match on any input.
    fn split_bytewise(text: &[u8]) -> Option<Vec<Item>> {
        let (mut out, mut stmt, mut delim, mut state) =
            (Vec::new(), Vec::<u8>::new(), b";".to_vec(), State::Normal);
        for line in text.split_inclusive(|&b| b == b'\n') {
            if state == State::Normal && stmt.iter().all(|b| b.is_ascii_whitespace()) {
                let t = trim_ascii(line);
                if t.is_empty() {
                    continue;
                }
                if t.starts_with(b"--") && (t.len() == 2 || t[2].is_ascii_whitespace())
                    || t.starts_with(b"#")
                    || t == SANDBOX_LINE.as_bytes()
                {
                    stmt.clear();
                    out.push(Item::Comment(String::from_utf8_lossy(t).into_owned()));
                    continue;
                }
                if t.len() > 10 && t[..10].eq_ignore_ascii_case(b"DELIMITER ") {
                    stmt.clear();
                    let d = trim_ascii(&t[10..]);
                    if !d.is_empty() {
                        delim = d.to_vec();
                    }
                    continue;
                }
            }
            let mut i = 0;
            while i < line.len() {
                let b = line[i];
                match state {
                    State::Normal => {
                        if line[i..].starts_with(&delim) {
                            if stmt.iter().any(|b| !b.is_ascii_whitespace()) {
                                out.push(Item::Statement(trim_ascii(&stmt).to_vec()));
                            }
                            stmt.clear();
                            i += delim.len();
                            continue;
                        }
                        match b {
                            b'\'' | b'"' | b'`' => state = State::Quote(b),
                            b'#' => {
                                state = State::LineComment;
                                i += 1;
                                continue;
                            }
                            b'-' if [&b"-- "[..], b"--\n", b"--\t", b"--\r"]
                                .iter()
                                .any(|p| line[i..].starts_with(p)) =>
                            {
                                state = State::LineComment;
                                i += 2;
                                continue;
                            }
                            b'/' if line.get(i + 1) == Some(&b'*') => {
                                stmt.extend_from_slice(b"/*");
                                i += 2;
                                state = State::BlockComment;
                                continue;
                            }
                            _ => {}
                        }
                        stmt.push(b);
                        i += 1;
                    }
                    State::Quote(q) => {
                        stmt.push(b);
                        i += 1;
                        if b == b'\\' && q != b'`' {
                            if i < line.len() {
                                stmt.push(line[i]);
                                i += 1;
                            }
                        } else if b == q {
                            if line.get(i) == Some(&q) {
                                stmt.push(q);
                                i += 1;
                            } else {
                                state = State::Normal;
                            }
                        }
                    }
                    State::LineComment => {
                        if b == b'\n' {
                            state = State::Normal;
                            stmt.push(b'\n');
                        }
                        i += 1;
                    }
                    State::BlockComment => {
                        if line[i..].starts_with(b"*/") {
                            stmt.extend_from_slice(b"*/");
                            i += 2;
                            state = State::Normal;
                        } else {
                            stmt.push(b);
                            i += 1;
                        }
                    }
                }
            }
        }
        if state == State::LineComment {
            state = State::Normal;
        }
        let _ = state;
        (!stmt.iter().any(|b| !b.is_ascii_whitespace())).then_some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Random dumps made of the pieces that matter (quotes, escapes, delimiters,
        /// comments of every kind, DELIMITER lines, spaces, newlines) split exactly as the
        /// byte-at-a-time splitter splits them.
        #[test]
        fn copying_runs_splits_exactly_like_the_bytewise_splitter(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "INSERT INTO t VALUES (1,-2,'a')", "x", "12", " ", "  ", "\t", "\n", "\r\n",
                    ";", ";;", "$$", "'", "\"", "`", "\\", "''", "-", "--", "-- ", "--\n", "#",
                    "/", "/*", "*/", "*", "/*!40101 SET a=1 */", "DELIMITER ;;\n",
                    "DELIMITER $$\n", "DELIMITER ;\n", "\nDELIMITER ;;\n", "\nDELIMITER ;\n",
                    "_latin1 'Stra\u{df}e'", "\u{e9}", "\0",
                ]),
                0..60,
            )
        ) {
            let text = pieces.concat();
            let fast = split(&text).ok();
            prop_assert_eq!(fast, split_bytewise(text.as_bytes()), "{:?}", text);
        }
    }

    #[test]
    fn truncated_statement_is_an_error() {
        assert!(matches!(
            split("SELECT 1;\nINSERT INTO t VALUES ('abc"),
            Err(SplitError::Unterminated(_))
        ));
        assert!(matches!(
            split("SELECT 1;\nINSERT INTO t VALUES (1)"),
            Err(SplitError::Unterminated(_))
        ));
        assert!(split("SELECT 1;\n-- end").is_ok());
    }

    #[test]
    fn trailer_lines_round_trip() {
        let t = TableTrailer {
            db: "d\n`x".into(),
            table: "t".into(),
            rows: 3,
            content: "ab".into(),
            definition: "cd".into(),
        };
        let line = t.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        let mut tr = Trailer::default();
        tr.observe(line.trim_end()).unwrap();
        assert!(
            tr.tables.is_empty(),
            "trailer lines count only after the trailer start"
        );
        tr.observe(TRAILER_START).unwrap();
        tr.observe(line.trim_end()).unwrap();
        tr.observe(database_trailer_line("d\n`x").trim_end())
            .unwrap();
        tr.observe("-- Dump completed 2026-01-01T00:00:00Z")
            .unwrap();
        assert_eq!(tr.tables, vec![t]);
        assert_eq!(tr.databases, vec!["d\n`x".to_string()]);
        assert!(tr.completed.is_some());
        assert!(tr.observe("-- trailer table {bad").is_err());
    }
}
