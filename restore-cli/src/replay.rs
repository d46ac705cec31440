//! Pass 2 for `--into` and the drill: replays a verified dump, reading it again through
//! its pins.
//!
//! Rows load over several connections at once. One connection (the first) runs every
//! statement that is not a row, in the dump's order: session settings, `CREATE DATABASE`,
//! `CREATE TABLE` (finished before any row of the table is sent), and, after waiting for
//! every row sent so far to be in, everything else (accounts, routines, grants, views,
//! triggers, events: a trigger never sees a restored row, a view never misses a table).
//! `INSERT` statements go to whichever row connection is free; each applies the session
//! settings and `USE` seen before its statement was read, so it runs in the same context
//! as on a single connection. A table's rows are independent statements (autocommit, no
//! row order in the format), so their order does not matter; a deadlock or a lock wait
//! timeout (InnoDB rolls the statement back) is retried.
//!
//! Nothing here runs before the verification pass has accepted the whole file; a change
//! of the file between the passes stops the reading thread (the pins), and the restore
//! fails.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::*;
use mysql_async::Conn;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::crypto::{DpoKey, Outcome, TrustedSigners};
use crate::keys;
use crate::pinned::Pins;
use crate::restore::{finish_sql, open_sql, Selection, Verified};
use backup_core::format::{Item, Splitter};

/// Row statements in flight per row connection (each at most the statement limit, 1 MiB
/// in the agent's dumps): bounds memory, keeps every connection busy.
const IN_FLIGHT_PER_CONNECTION: usize = 2;
/// How often a statement that hit a deadlock or a lock wait timeout is tried again.
const RETRIES: u32 = 5;
/// Tables with at least this many rows (the dump's trailer) get their plain secondary keys
/// after their rows (`keys`): below it, the index fits in memory while it grows and an
/// `ALTER TABLE` per table costs more than it saves.
pub const DEFER_KEYS_ROWS: u64 = 200_000;

/// What a statement asks of the replay.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Kind {
    /// Table rows: any row connection, in any order.
    Rows,
    /// Session state (`SET`, `USE`): the first connection now, every row connection before
    /// its next statement.
    Session,
    /// `CREATE DATABASE`, `CREATE TABLE`, `CREATE SEQUENCE`: the first connection, now,
    /// without waiting for rows of other tables.
    Create,
    /// Anything else: the first connection, after every row sent so far is in.
    After,
}

/// Classifies a statement by its first keywords (after spaces and `/*...*/` comments
/// that are not executable `/*!`/`/*M!` ones).
pub fn classify(stmt: &[u8]) -> Kind {
    let mut s = stmt;
    loop {
        s = s.trim_ascii_start();
        if s.starts_with(b"/*") && !s.starts_with(b"/*!") && !s.starts_with(b"/*M!") {
            match s.windows(2).position(|w| w == b"*/") {
                Some(i) => s = &s[i + 2..],
                None => return Kind::After,
            }
        } else {
            break;
        }
    }
    let head: Vec<u8> = s
        .iter()
        .take(24)
        .map(|b| {
            if b.is_ascii_whitespace() {
                b' '
            } else {
                b.to_ascii_uppercase()
            }
        })
        .collect();
    let starts = |kw: &[u8]| head.starts_with(kw);
    if starts(b"INSERT INTO ") {
        Kind::Rows
    } else if starts(b"SET DEFAULT ROLE ") || starts(b"SET PASSWORD ") {
        // Account changes, not session state.
        Kind::After
    } else if starts(b"SET ") || starts(b"USE ") {
        Kind::Session
    } else if starts(b"CREATE TABLE ") || starts(b"CREATE DATABASE ") || starts(b"CREATE SEQUENCE ")
    {
        Kind::Create
    } else {
        Kind::After
    }
}

enum Msg {
    /// A statement, and how many SQL bytes were read up to its end.
    Stmt(Vec<u8>, u64),
    Comment(String),
}

struct Job {
    stmt: Vec<u8>,
    /// The statement's number among those replayed (for the error message).
    ordinal: u64,
    /// How many session statements precede it.
    session: usize,
    _permit: OwnedSemaphorePermit,
}

/// What the row connections share.
struct Shared {
    /// Every `SET`/`USE` so far, in order.
    session: Mutex<Vec<Arc<Vec<u8>>>>,
    /// The first failure; once set, row connections drop what they get.
    failure: Mutex<Option<anyhow::Error>>,
}

impl Shared {
    fn failed(&self) -> bool {
        self.failure.lock().expect("not poisoned").is_some()
    }

    fn fail(&self, e: anyhow::Error) {
        let mut f = self.failure.lock().expect("not poisoned");
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn take_failure(&self) -> Option<anyhow::Error> {
        self.failure.lock().expect("not poisoned").take()
    }
}

fn refused(ordinal: u64, stmt: &[u8], e: &mysql_async::Error) -> anyhow::Error {
    let head = String::from_utf8_lossy(&stmt[..stmt.len().min(120)]).into_owned();
    anyhow!("the target server refused statement {ordinal} ({head}...): {e}")
}

fn retryable(e: &mysql_async::Error) -> bool {
    // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT: InnoDB rolled the statement back.
    matches!(e, mysql_async::Error::Server(s) if s.code == 1213 || s.code == 1205)
}

async fn row_connection(
    mut conn: Conn,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
) -> Conn {
    let mut applied = 0usize;
    loop {
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else { break };
        if shared.failed() {
            continue;
        }
        let pending: Vec<Arc<Vec<u8>>> =
            shared.session.lock().expect("not poisoned")[applied..job.session].to_vec();
        let mut ok = true;
        for s in pending {
            if let Err(e) = conn.query_drop(s.as_slice()).await {
                shared.fail(refused(job.ordinal, &s, &e).context("on a row connection"));
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        applied = job.session;
        let mut tries = 0;
        loop {
            match conn.query_drop(job.stmt.as_slice()).await {
                Ok(()) => break,
                Err(e) if retryable(&e) && tries < RETRIES => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 << tries)).await;
                }
                Err(e) => {
                    shared.fail(refused(job.ordinal, &job.stmt, &e));
                    break;
                }
            }
        }
    }
    conn
}

/// The plain secondary keys of large tables, held back until the table's rows are in
/// (`keys`).
struct DeferredKeys {
    /// (database in the dump, table) of the tables with at least `DEFER_KEYS_ROWS` rows.
    large: HashSet<(String, String)>,
    /// Off after a table with foreign keys: from then on every table is created whole.
    on: bool,
    /// The database of the statements read, as in the dump and as replayed (`--as`).
    dump_db: Option<String>,
    target_db: Option<String>,
    /// `ALTER TABLE ... ADD KEY ...` of the tables created without their keys whose rows
    /// are still being read.
    pending: Vec<Vec<u8>>,
    /// How many tables got their keys so.
    added: usize,
    /// The restoring user's grants (`SHOW GRANTS`), when read: a table's keys are held
    /// back only where they show `ALTER` on its database, so a user who may create and
    /// fill tables but not alter them still restores (with the keys during the load).
    grants: Option<Vec<String>>,
    /// Databases (as replayed) where the keys may not be held back.
    no_alter: HashSet<String>,
}

impl DeferredKeys {
    fn new(v: &Verified) -> Self {
        DeferredKeys {
            large: v
                .trailer
                .tables
                .iter()
                .filter(|t| t.rows >= DEFER_KEYS_ROWS)
                .map(|t| (t.db.clone(), t.table.clone()))
                .collect(),
            on: true,
            dump_db: None,
            target_db: None,
            pending: Vec::new(),
            added: 0,
            grants: None,
            no_alter: HashSet::new(),
        }
    }

    /// Whether the restoring user may `ALTER` tables of database `db` (false when the
    /// grants cannot tell).
    fn may_alter(&mut self, db: &str) -> bool {
        if self.no_alter.contains(db) {
            return false;
        }
        let ok = self.grants.as_ref().is_some_and(|g| {
            crate::target::lacking(g, &[db.to_string()], &["ALTER"]).is_some_and(|l| l.is_empty())
        });
        if !ok {
            self.no_alter.insert(db.to_string());
        }
        ok
    }

    /// The database a `USE` statement switches to.
    fn used(stmt: &[u8]) -> Option<String> {
        let head = stmt.get(..4)?;
        if !head.eq_ignore_ascii_case(b"USE ") {
            return None;
        }
        crate::restore::leading_ident(&String::from_utf8_lossy(&stmt[4..]))
    }

    /// The statement to run for a `CREATE TABLE` (`stmt` itself, or the table without its
    /// plain keys), and whether every key held back so far must be in first (a table with
    /// foreign keys follows: a parent's referenced index must exist).
    fn create(&mut self, stmt: Vec<u8>) -> (Vec<u8>, bool) {
        if !self.on || self.large.is_empty() {
            return (stmt, false);
        }
        match keys::split_keys(&stmt) {
            keys::Create::Defer {
                create,
                table,
                keys,
            } => {
                let name = crate::restore::leading_ident(&table).unwrap_or_default();
                let large = self
                    .dump_db
                    .clone()
                    .is_some_and(|d| self.large.contains(&(d, name)));
                match self.target_db.clone() {
                    Some(t) if large && self.may_alter(&t) => {
                        self.pending
                            .push(keys::alter(&t, &table, &keys).into_bytes());
                        self.added += 1;
                        (create, false)
                    }
                    _ => (stmt, false),
                }
            }
            keys::Create::Keep => (stmt, false),
            keys::Create::ForeignKeys => {
                self.on = false;
                (stmt, self.added > 0)
            }
        }
    }
}

/// Replays the verified file: statements that are not rows on `conn`, rows on `rows`
/// (or on `conn` too when `rows` is empty). Returns how many statements were replayed.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    path: &Path,
    pins: &Pins,
    limit: usize,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    conn: &mut Conn,
    rows: Vec<Conn>,
    mut sel: Selection,
    v: &Verified,
) -> Result<u64> {
    let total_sql_bytes = v.sql_bytes;
    let mut deferred = DeferredKeys::new(v);
    if !deferred.large.is_empty() {
        deferred.grants = conn.query("SHOW GRANTS").await.ok();
    }
    let reader = open_sql(path, pins, dpo, trusted)?;
    let (tx, mut rx) = mpsc::channel::<Msg>(16);
    let producer = tokio::task::spawn_blocking(move || -> Result<Outcome> {
        let mut sp = Splitter::with_limit(reader, limit);
        while let Some(item) = sp.next_item()? {
            let m = match item {
                Item::Statement(s) => Msg::Stmt(s, sp.bytes_read),
                Item::Comment(c) => Msg::Comment(c),
            };
            if tx.blocking_send(m).is_err() {
                bail!("replay stopped");
            }
        }
        finish_sql(sp.into_inner())
    });

    let n_rows = rows.len();
    let slots = (n_rows * IN_FLIGHT_PER_CONNECTION).max(1);
    let flight = InFlight::new(slots, n_rows.max(1));
    let shared = Arc::new(Shared {
        session: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
    });
    let (job_tx, job_rx) = mpsc::channel::<Job>(slots);
    let job_rx = Arc::new(tokio::sync::Mutex::new(job_rx));
    let workers: Vec<_> = rows
        .into_iter()
        .map(|c| tokio::spawn(row_connection(c, job_rx.clone(), shared.clone())))
        .collect();

    let mut progress = Progress::new(total_sql_bytes);
    let mut ordinal = 0u64;
    let mut failure = None;
    while let Some(m) = rx.recv().await {
        let (s, done) = match m {
            Msg::Comment(c) => {
                sel.comment(&c);
                continue;
            }
            Msg::Stmt(s, done) => (s, done),
        };
        progress.update(&s, done);
        if let Some(d) = DeferredKeys::used(&s) {
            deferred.dump_db = Some(d);
        }
        let Some(s) = sel.take(s) else {
            if let Some(e) = sel.refusal() {
                failure = Some(anyhow!("{e}"));
                break;
            }
            continue;
        };
        ordinal += 1;
        if shared.failed() {
            break;
        }
        let kind = classify(&s);
        if kind == Kind::Session {
            if let Some(d) = DeferredKeys::used(&s) {
                deferred.target_db = Some(d);
            }
        }
        let mut s = s;
        if (kind == Kind::Create || kind == Kind::After) && !deferred.pending.is_empty() {
            // The rows of the tables whose keys were held back are all read: once they are
            // in, their keys go to the row connections, and build while the next tables'
            // rows load on the others.
            flight.rows_in().await;
            if let Err(e) = add_keys(
                std::mem::take(&mut deferred.pending),
                ordinal,
                conn,
                &job_tx,
                &flight,
                &shared,
                n_rows,
            )
            .await
            {
                failure = Some(e);
                break;
            }
            if shared.failed() {
                break;
            }
        }
        if kind == Kind::Create && s.len() > 13 && s[..13].eq_ignore_ascii_case(b"CREATE TABLE ") {
            let (stmt, keys_first) = deferred.create(s);
            s = stmt;
            if keys_first {
                flight.all_in().await;
                if shared.failed() {
                    break;
                }
            }
        }
        if kind == Kind::Rows && n_rows > 0 {
            let permit = flight.row_slot().await;
            let session = shared.session.lock().expect("not poisoned").len();
            let job = Job {
                stmt: s,
                ordinal,
                session,
                _permit: permit,
            };
            if job_tx.send(job).await.is_err() {
                break;
            }
            continue;
        }
        if kind == Kind::After {
            flight.all_in().await;
            if shared.failed() {
                break;
            }
        }
        if let Err(e) = conn.query_drop(s.as_slice()).await {
            failure = Some(refused(ordinal, &s, &e));
            break;
        }
        if kind == Kind::Session {
            shared
                .session
                .lock()
                .expect("not poisoned")
                .push(Arc::new(s));
        }
    }
    if failure.is_none() && !shared.failed() && !deferred.pending.is_empty() {
        flight.rows_in().await;
        if let Err(e) = add_keys(
            std::mem::take(&mut deferred.pending),
            ordinal,
            conn,
            &job_tx,
            &flight,
            &shared,
            n_rows,
        )
        .await
        {
            failure = Some(e);
        }
    }
    drop(rx);
    drop(job_tx);
    progress.finish();
    let mut row_conns = Vec::with_capacity(workers.len());
    for w in workers {
        if let Ok(c) = w.await {
            row_conns.push(c);
        }
    }
    for c in row_conns {
        let _ = c.disconnect().await;
    }
    if let Some(f) = failure.or_else(|| shared.take_failure()) {
        let _ = producer.await;
        return Err(f);
    }
    producer
        .await
        .map_err(|e| anyhow!("the reading thread failed: {e}"))?
        .context(
            "the second pass over the file failed (was the file changed during the restore?)",
        )?;
    if deferred.added > 0 {
        eprintln!(
            "restore: added the secondary keys of {} large table(s) after their rows",
            deferred.added
        );
    }
    Ok(ordinal)
}

/// What the row connections have been given and not finished: row statements and
/// `ALTER TABLE ... ADD KEY` statements, each holding a permit of its own kind until done.
struct InFlight {
    rows: Arc<Semaphore>,
    row_slots: u32,
    keys: Arc<Semaphore>,
    key_slots: u32,
}

impl InFlight {
    fn new(row_slots: usize, key_slots: usize) -> Self {
        InFlight {
            rows: Arc::new(Semaphore::new(row_slots)),
            row_slots: row_slots as u32,
            keys: Arc::new(Semaphore::new(key_slots)),
            key_slots: key_slots as u32,
        }
    }

    async fn row_slot(&self) -> OwnedSemaphorePermit {
        self.rows
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    async fn key_slot(&self) -> OwnedSemaphorePermit {
        self.keys
            .clone()
            .acquire_owned()
            .await
            .expect("never closed")
    }

    /// Waits until every row statement sent so far is in.
    async fn rows_in(&self) {
        let _all = self
            .rows
            .acquire_many(self.row_slots)
            .await
            .expect("never closed");
    }

    /// Waits until every row statement and every key build sent so far is done.
    async fn all_in(&self) {
        self.rows_in().await;
        let _all = self
            .keys
            .acquire_many(self.key_slots)
            .await
            .expect("never closed");
    }
}

/// Runs the held-back `ALTER TABLE ... ADD KEY` statements: on the row connections (a free
/// one takes the next, so an index builds while other tables' rows load, at most one
/// build per connection), or on `conn` when there are none. A row connection's failure
/// is the replay's (`shared`).
async fn add_keys(
    alters: Vec<Vec<u8>>,
    ordinal: u64,
    conn: &mut Conn,
    job_tx: &mpsc::Sender<Job>,
    flight: &InFlight,
    shared: &Arc<Shared>,
    n_rows: usize,
) -> Result<()> {
    for stmt in alters {
        if n_rows == 0 {
            conn.query_drop(stmt.as_slice())
                .await
                .map_err(|e| refused(ordinal, &stmt, &e))?;
            continue;
        }
        let permit = flight.key_slot().await;
        let session = shared.session.lock().expect("not poisoned").len();
        let job = Job {
            stmt,
            ordinal,
            session,
            _permit: permit,
        };
        if job_tx.send(job).await.is_err() {
            bail!("the row connections stopped");
        }
    }
    Ok(())
}

/// Progress on a terminal: bytes, tables, rate, ETA (total from the verification pass).
struct Progress {
    total: u64,
    started: std::time::Instant,
    last: std::time::Instant,
    tables: u64,
    on: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Progress {
            total,
            started: now,
            last: now,
            tables: 0,
            on: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, stmt: &[u8], done: u64) {
        if stmt.starts_with(b"CREATE TABLE") {
            self.tables += 1;
        }
        if !self.on || self.last.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        self.last = std::time::Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        eprint!(
            "\rrestore: {:.0} / {:.0} MiB ({:.0}%), {} tables, {:.1} MiB/s, ETA {:.0}s   ",
            done as f64 / 1048576.0,
            self.total as f64 / 1048576.0,
            100.0 * done as f64 / self.total.max(1) as f64,
            self.tables,
            rate / 1048576.0,
            eta
        );
    }

    fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_by_their_first_keywords() {
        assert_eq!(classify(b"INSERT INTO `t` (`a`) VALUES (1)"), Kind::Rows);
        assert_eq!(classify(b"\n insert\tinto t VALUES (1)"), Kind::Rows);
        assert_eq!(classify(b"SET NAMES utf8mb4"), Kind::Session);
        assert_eq!(classify(b"USE `shop`"), Kind::Session);
        assert_eq!(classify(b"/* x */ SET @a=1"), Kind::Session);
        assert_eq!(classify(b"CREATE TABLE `t` (a int)"), Kind::Create);
        assert_eq!(
            classify(b"CREATE DATABASE `d` /*!40100 DEFAULT CHARACTER SET utf8mb4 */"),
            Kind::Create
        );
        assert_eq!(classify(b"CREATE SEQUENCE `s` start with 1"), Kind::Create);
        for after in [
            &b"CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a=1"[..],
            b"CREATE DEFINER=`root`@`localhost` VIEW v AS SELECT 1",
            b"CREATE USER IF NOT EXISTS `u`@`%`",
            b"GRANT SELECT ON `d`.* TO `u`@`%`",
            b"DO SETVAL(`s`, 5, 0)",
            b"/*!50003 CREATE TRIGGER x */",
            b"/* unterminated",
            b"ALTER TABLE t ADD KEY (a)",
            b"INSERT",
        ] {
            assert_eq!(
                classify(after),
                Kind::After,
                "{}",
                String::from_utf8_lossy(after)
            );
        }
    }
}
