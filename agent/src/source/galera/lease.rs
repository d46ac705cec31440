//! The cluster lease: one backup per schedule slot across the agents of several sites.

use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::GaleraError;
use crate::source::dump;
use backup_core::config::{NodeConfig, SourceConfig};
use backup_core::format::quote_ident;
use backup_core::secret::{read_secret_file, Secret};

/// How many agents may try one slot (the first claim plus takeovers).
pub const MAX_ATTEMPTS: i64 = 3;

/// The lease slot of a source's binary log archiver: held for as long as an agent
/// archives, taken over (any number of times) when its holder stops renewing it.
pub const ARCHIVER_SLOT: &str = "binlog-archiver";

/// The lease table, as the documentation gives it.
pub fn lease_ddl(database: &str) -> String {
    let db = quote_ident(database);
    format!(
        "CREATE DATABASE IF NOT EXISTS {db};\n\
         CREATE TABLE IF NOT EXISTS {db}.`lease` (\n  \
           `source` VARCHAR(64) NOT NULL,\n  \
           `slot` VARCHAR(64) NOT NULL,\n  \
           `holder` VARCHAR(200) NOT NULL,\n  \
           `state` VARCHAR(16) NOT NULL,\n  \
           `attempts` INT NOT NULL DEFAULT 1,\n  \
           `claimed_at` DATETIME(3) NOT NULL,\n  \
           `expires_at` DATETIME(3) NOT NULL,\n  \
           `finished_at` DATETIME(3) NULL,\n  \
           `backup_id` VARCHAR(64) NULL,\n  \
           `history` TEXT NULL,\n  \
           PRIMARY KEY (`source`, `slot`)\n\
         ) ENGINE=InnoDB"
    )
}

/// A source's key in the lease table (`source VARCHAR(64)`): its name, or for a longer
/// one (a split source's unit, `<source>/<database>`) its first 47 characters, `#` and 16
/// hex digits of its SHA-256, so that two names never share a row.
pub fn lease_key(name: &str) -> String {
    if name.len() <= 64 {
        return name.to_string();
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let mut cut = 47;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}#{}", &name[..cut], &digest[..16])
}

/// What claiming a slot gave.
#[derive(Debug)]
pub enum Claim {
    /// This agent holds the slot: it dumps, repairs and prunes.
    Held(Lease),
    /// Another agent already produced this slot's backup.
    Done {
        holder: String,
        backup_id: Option<String>,
    },
    /// Every attempt allowed for this slot failed; nobody tries again.
    GaveUp { holder: String, attempts: i64 },
}

/// How a held slot ended: success, the backup id, the error.
type Outcome = (&'static str, Option<String>, Option<String>);

/// A held lease; renewed in the background until finished.
#[derive(Debug)]
pub struct Lease {
    pub slot: String,
    pub holder: String,
    pub takeover_from: Option<String>,
    finished: Option<tokio::sync::oneshot::Sender<Outcome>>,
    lost: tokio::sync::watch::Receiver<Option<String>>,
    renewer: Option<tokio::task::JoinHandle<Result<(), GaleraError>>>,
}

struct LeaseCtx {
    src: SourceConfig,
    /// The source's key in the lease table (see [`lease_key`]).
    key: String,
    db: String,
    ttl: Duration,
    holder: String,
    slot: String,
    pw: Secret,
    own_site: String,
    /// None: takeovers are never refused (the archiver's slot).
    max_attempts: Option<i64>,
}

impl LeaseCtx {
    fn table(&self) -> String {
        format!("{}.`lease`", quote_ident(&self.db))
    }

    fn ttl_us(&self) -> u128 {
        self.ttl.as_micros()
    }

    /// A connection to a node in the Primary component: own site first.
    async fn connect(&self) -> Result<Conn, GaleraError> {
        let mut nodes: Vec<&NodeConfig> = self.src.nodes.iter().collect();
        nodes.sort_by_key(|n| n.site.as_deref() != Some(self.own_site.as_str()));
        let mut errs = Vec::new();
        for n in nodes {
            match dump::connect(&self.src, &n.endpoint, &self.pw).await {
                Ok(mut c) => {
                    let st: Option<(String, String)> = c
                        .query_first(
                            "SELECT MAX(IF(VARIABLE_NAME='WSREP_CLUSTER_STATUS', VARIABLE_VALUE, NULL)), \
                             MAX(IF(VARIABLE_NAME='WSREP_READY', VARIABLE_VALUE, NULL)) \
                             FROM information_schema.GLOBAL_STATUS \
                             WHERE VARIABLE_NAME IN ('WSREP_CLUSTER_STATUS', 'WSREP_READY')",
                        )
                        .await
                        .ok()
                        .flatten();
                    match st {
                        Some((p, r)) if p == "Primary" && r == "ON" => return Ok(c),
                        other => {
                            let _ = c.disconnect().await;
                            errs.push(format!("{}: not usable for the lease ({other:?})", n.name));
                        }
                    }
                }
                Err(e) => errs.push(format!("{}: {e}", n.name)),
            }
        }
        Err(GaleraError::NoLeaseNode {
            tried: errs.join("; "),
        })
    }

    async fn ensure_table(&self, c: &mut Conn) -> Result<(), GaleraError> {
        let probe = c
            .query_drop(format!("SELECT 1 FROM {} LIMIT 0", self.table()))
            .await;
        match probe {
            Ok(()) => Ok(()),
            Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => {
                let ddl = lease_ddl(&self.db);
                for stmt in ddl.split(";\n") {
                    if let Err(source) = c.query_drop(stmt).await {
                        return Err(GaleraError::LeaseTableMissing {
                            table: self.table(),
                            user: self.src.user.clone(),
                            ddl,
                            source: Box::new(source),
                        });
                    }
                }
                Ok(())
            }
            Err(e) => Err(lease_error(e, &self.table(), &self.src.user)),
        }
    }

    async fn try_insert(&self, c: &mut Conn) -> Result<bool, GaleraError> {
        let sql = format!(
            "INSERT INTO {} (source, slot, holder, state, attempts, claimed_at, expires_at) \
             VALUES (?, ?, ?, 'running', 1, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3) + INTERVAL {} MICROSECOND)",
            self.table(),
            self.ttl_us()
        );
        match c
            .exec_drop(sql, (&self.key, &self.slot, &self.holder))
            .await
        {
            Ok(()) => Ok(true),
            Err(mysql_async::Error::Server(e)) if e.code == 1062 || e.code == 1213 => Ok(false),
            Err(e) => Err(lease_error(e, &self.table(), &self.src.user)),
        }
    }

    async fn renew(&self, c: &mut Conn) -> Result<bool, GaleraError> {
        let sql = format!(
            "UPDATE {} SET expires_at = UTC_TIMESTAMP(3) + INTERVAL {} MICROSECOND \
             WHERE source = ? AND slot = ? AND holder = ? AND state = 'running'",
            self.table(),
            self.ttl_us()
        );
        c.exec_drop(sql, (&self.key, &self.slot, &self.holder))
            .await?;
        Ok(c.affected_rows() == 1)
    }
}

/// A failed statement on the lease table, with the grant to give when it was refused.
fn lease_error(source: mysql_async::Error, table: &str, user: &str) -> GaleraError {
    match &source {
        mysql_async::Error::Server(s) if s.code == 1142 || s.code == 1143 || s.code == 1044 => {
            GaleraError::LeaseDenied {
                user: user.to_string(),
                table: table.to_string(),
                source: Box::new(source),
            }
        }
        _ => GaleraError::LeaseTable {
            table: table.to_string(),
            source: Box::new(source),
        },
    }
}

/// The lease row as read.
#[derive(Debug, Clone)]
struct Row {
    holder: String,
    state: String,
    attempts: i64,
    expired: bool,
    claimed_at: String,
    backup_id: Option<String>,
}

/// Claims `slot` of `src` for `holder`, waiting while another live agent holds it.
/// `cancel` resolves when the caller gives up waiting (shutdown). The archiver's slot
/// ([`ARCHIVER_SLOT`]) is never done and never given up: a released or expired holder is
/// taken over, whatever the number of takeovers before.
pub async fn acquire(
    src: &SourceConfig,
    own_site: &str,
    holder: &str,
    slot: &str,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Claim, GaleraError> {
    let g = src.galera.as_ref().expect("galera source");
    let pw = read_secret_file(&src.password_file.path, &src.password_file.key)?;
    let ctx = LeaseCtx {
        key: lease_key(&src.name),
        src: src.clone(),
        db: g.lease_database.clone(),
        ttl: g.lease_ttl,
        holder: holder.to_string(),
        slot: slot.to_string(),
        pw,
        own_site: own_site.to_string(),
        max_attempts: (slot != ARCHIVER_SLOT).then_some(MAX_ATTEMPTS),
    };
    let poll = (g.lease_ttl / 5).clamp(Duration::from_millis(300), Duration::from_secs(10));
    tokio::pin!(cancel);
    let mut waited_for: Option<String> = None;
    loop {
        let step = claim_step(&ctx).await;
        match step {
            Ok(Step::Claimed(takeover_from)) => {
                let lease = start_renewer(ctx, takeover_from);
                return Ok(Claim::Held(lease));
            }
            Ok(Step::Final(c)) => return Ok(c),
            Ok(Step::Wait(h)) => {
                if waited_for.as_deref() != Some(h.as_str()) {
                    tracing::info!(event = "lease_wait", source = %src.name, slot = %slot, holder = %h, "another agent holds this slot; waiting for it to finish or expire");
                    waited_for = Some(h);
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = &mut cancel => return Err(GaleraError::ShuttingDown),
        }
    }
}

enum Step {
    Claimed(Option<String>),
    Final(Claim),
    Wait(String),
}

async fn claim_step(ctx: &LeaseCtx) -> Result<Step, GaleraError> {
    let mut c = ctx.connect().await?;
    let r = claim_on(ctx, &mut c).await;
    let _ = c.disconnect().await;
    r
}

async fn claim_on(ctx: &LeaseCtx, c: &mut Conn) -> Result<Step, GaleraError> {
    ctx.ensure_table(c).await?;
    if ctx.try_insert(c).await? {
        // Old rows go after a year (the row is the record of who produced each slot).
        let _ = c
            .exec_drop(
                format!(
                    "DELETE FROM {} WHERE source = ? AND claimed_at < UTC_TIMESTAMP() - INTERVAL 400 DAY",
                    ctx.table()
                ),
                (&ctx.key,),
            )
            .await;
        return Ok(Step::Claimed(None));
    }
    let row: Option<(String, String, i64, i64, String, Option<String>)> = c
        .exec_first(
            format!(
                "SELECT holder, state, attempts, expires_at < UTC_TIMESTAMP(3), \
                 DATE_FORMAT(claimed_at, '%Y-%m-%d %H:%i:%s.%f'), backup_id \
                 FROM {} WHERE source = ? AND slot = ?",
                ctx.table()
            ),
            (&ctx.key, &ctx.slot),
        )
        .await
        .map_err(|e| lease_error(e, &ctx.table(), &ctx.src.user))?;
    let Some((holder, state, attempts, expired, claimed_at, backup_id)) = row else {
        // The winner's row is not visible here yet: look again.
        return Ok(Step::Wait("another agent".into()));
    };
    let row = Row {
        holder,
        state,
        attempts,
        expired: expired != 0,
        claimed_at,
        backup_id,
    };
    match row.state.as_str() {
        "done" => {
            return Ok(Step::Final(Claim::Done {
                holder: row.holder,
                backup_id: row.backup_id,
            }))
        }
        "running" if !row.expired && row.holder != ctx.holder => return Ok(Step::Wait(row.holder)),
        _ => {}
    }
    // Expired, failed, or our own row from a run that died: take it over if allowed.
    if ctx.max_attempts.is_some_and(|m| row.attempts >= m) {
        return Ok(Step::Final(Claim::GaveUp {
            holder: row.holder,
            attempts: row.attempts,
        }));
    }
    // Assignments are evaluated left to right: history reads the old holder and state.
    let sql = format!(
        "UPDATE {} SET \
         history = RIGHT(CONCAT_WS('; ', history, CONCAT(holder, ' ', state, IF(state = 'running', ' (expired)', ''), ' from ', DATE_FORMAT(claimed_at, '%Y-%m-%dT%H:%i:%sZ'))), 8000), \
         holder = ?, state = 'running', attempts = attempts + 1, \
         claimed_at = UTC_TIMESTAMP(3), expires_at = UTC_TIMESTAMP(3) + INTERVAL {} MICROSECOND, \
         finished_at = NULL, backup_id = NULL \
         WHERE source = ? AND slot = ? AND holder = ? AND state = ? \
         AND DATE_FORMAT(claimed_at, '%Y-%m-%d %H:%i:%s.%f') = ? \
         AND (state <> 'running' OR expires_at < UTC_TIMESTAMP(3) OR holder = ?)",
        ctx.table(),
        ctx.ttl_us()
    );
    let r = c
        .exec_drop(
            sql,
            (
                &ctx.holder,
                &ctx.key,
                &ctx.slot,
                &row.holder,
                &row.state,
                &row.claimed_at,
                &ctx.holder,
            ),
        )
        .await;
    match r {
        Ok(()) if c.affected_rows() == 1 => {
            tracing::warn!(event = "lease_takeover", source = %ctx.src.name, slot = %ctx.slot, from = %row.holder, state = %row.state, "taking over the slot");
            Ok(Step::Claimed(Some(row.holder)))
        }
        Ok(()) => Ok(Step::Wait(row.holder)),
        Err(mysql_async::Error::Server(e)) if e.code == 1213 => Ok(Step::Wait(row.holder)),
        Err(e) => Err(lease_error(e, &ctx.table(), &ctx.src.user)),
    }
}

fn start_renewer(ctx: LeaseCtx, takeover_from: Option<String>) -> Lease {
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<Outcome>();
    let (lost_tx, lost_rx) = tokio::sync::watch::channel(None);
    let slot = ctx.slot.clone();
    let holder = ctx.holder.clone();
    let renewer = tokio::spawn(async move {
        let every = ctx.ttl / 3;
        let mut conn: Option<Conn> = None;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                fin = &mut done_rx => {
                    let Ok((state, backup_id, error)) = fin else {
                        // Dropped without finishing (the run was cancelled): mark it failed,
                        // so that another agent may take the slot over at once.
                        return finish(&ctx, &mut conn, "failed", None, Some("cancelled".into())).await;
                    };
                    return finish(&ctx, &mut conn, state, backup_id, error).await;
                }
                _ = tokio::time::sleep(every) => {}
            }
            if conn.is_none() {
                conn = ctx.connect().await.ok();
            }
            let renewed = match conn.as_mut() {
                Some(c) => ctx.renew(c).await,
                None => Err(GaleraError::Unreachable),
            };
            match renewed {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    let _ = lost_tx.send(Some(format!(
                        "the lease of slot {} was taken over by another agent (this agent did not renew it in time)",
                        ctx.slot
                    )));
                    return Ok(());
                }
                Err(e) => {
                    conn = None;
                    tracing::warn!(event = "lease_renew_failed", source = %ctx.src.name, error = %e);
                    if last_ok.elapsed() >= ctx.ttl {
                        let _ = lost_tx.send(Some(format!(
                            "could not renew the lease of slot {} within its TTL ({e}); another agent may take over",
                            ctx.slot
                        )));
                    }
                }
            }
        }
    });
    Lease {
        slot,
        holder,
        takeover_from,
        finished: Some(done_tx),
        lost: lost_rx,
        renewer: Some(renewer),
    }
}

async fn finish(
    ctx: &LeaseCtx,
    conn: &mut Option<Conn>,
    state: &'static str,
    backup_id: Option<String>,
    error: Option<String>,
) -> Result<(), GaleraError> {
    let sql = format!(
        "UPDATE {} SET state = ?, backup_id = ?, finished_at = UTC_TIMESTAMP(3), expires_at = UTC_TIMESTAMP(3), \
         history = IF(? IS NULL, history, RIGHT(CONCAT_WS('; ', history, CONCAT(?, ': ', LEFT(?, 400))), 8000)) \
         WHERE source = ? AND slot = ? AND holder = ?",
        ctx.table()
    );
    let mut last = None;
    for _ in 0..3 {
        if conn.is_none() {
            match ctx.connect().await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        match c
            .exec_drop(
                &sql,
                (
                    state,
                    &backup_id,
                    &error,
                    state,
                    &error,
                    &ctx.key,
                    &ctx.slot,
                    &ctx.holder,
                ),
            )
            .await
        {
            Ok(()) => {
                if let Some(c) = conn.take() {
                    let _ = c.disconnect().await;
                }
                return Ok(());
            }
            Err(e) => {
                last = Some(GaleraError::from(e));
                *conn = None;
            }
        }
    }
    Err(GaleraError::LeaseFinish {
        slot: ctx.slot.clone(),
        state,
        last: Box::new(last.expect("three attempts, each failed")),
    })
}

impl Lease {
    /// Resolves with the reason when the lease is lost (taken over, or not renewable).
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(r) = self.lost.borrow().clone() {
                return r;
            }
            if self.lost.changed().await.is_err() {
                // The renewer ended without a loss: never resolves.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records the slot's outcome in the lease row and stops renewing.
    pub async fn finish(self, ok: bool, backup_id: Option<String>, error: Option<String>) {
        self.end(if ok { "done" } else { "failed" }, backup_id, error)
            .await
    }

    /// Gives the lease up without an outcome (the archiver's slot at shutdown or after a
    /// failure): state `released`, which another agent takes over at once.
    pub async fn release(self, why: String) {
        self.end("released", None, Some(why)).await
    }

    async fn end(mut self, state: &'static str, backup_id: Option<String>, error: Option<String>) {
        if let Some(tx) = self.finished.take() {
            let _ = tx.send((state, backup_id, error));
        }
        if let Some(h) = self.renewer.take() {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(event = "lease_finish_failed", slot = %self.slot, error = %e)
                }
                Err(e) => {
                    tracing::error!(event = "lease_finish_failed", slot = %self.slot, error = %e)
                }
            }
        }
    }
}
