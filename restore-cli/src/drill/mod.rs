//! `restore --verify`: the monthly drill. Picks a backup, runs every check of a restore
//! (checksum, decryption, MDC, signature, completeness) before any byte reaches a server,
//! replays into a scratch server (an ephemeral socket-only MariaDB that it starts and
//! removes, or `--scratch URL`), recomputes every table's row count, content digest and
//! definition digest there and compares them with the dump's trailer, checks every view,
//! routine, trigger, event and sequence exists, and records the result: a JSON report,
//! drill.json in the agent's state dir, a copy beside the backups in the store, and the
//! drill_succeeded / drill_failed alert.

mod chain;
mod choose;
pub(crate) mod command;

pub(crate) use choose::{choose, Chosen};

pub use chain::run as run_pitr;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use mysql_async::prelude::*;
use serde::Serialize;

use backup_core::catalog;
use backup_core::config::{Config, Endpoint};
use backup_core::digest::definition_digest;
use backup_core::digest::table::table_digest;
use backup_core::format::{qualified, quote_str, Trailer};
use backup_core::layout;
use backup_core::store::{open_store, put_bytes};

use crate::crypto::{DpoKey, TrustedSigners};
use crate::pinned::Pins;
use crate::restore;
use crate::scratch::Ephemeral;
use crate::target;

#[derive(Debug, Serialize, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize, Default)]
pub struct DrillReport {
    pub success: bool,
    /// The log drill (`--pitr`): `backup_id` is the backup reached, `base_backup_id` the
    /// one restored, then the archived binary log between them applied.
    pub pitr: bool,
    pub backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<usize>,
    pub source: Option<String>,
    pub store: Option<String>,
    pub file: Option<String>,
    pub backup_finished_at: Option<String>,
    pub backup_age_seconds: Option<i64>,
    pub data_bytes: Option<u64>,
    pub sql_bytes: Option<u64>,
    pub scratch: String,
    pub checks: Vec<Check>,
    pub tables_compared: usize,
    pub objects_checked: usize,
    pub mismatches: Vec<String>,
    /// Replay time: the measured RTO for this size.
    pub restore_seconds: Option<f64>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
}

impl DrillReport {
    fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        });
    }
}

pub struct DrillArgs<'a> {
    pub source: Option<&'a str>,
    pub backup: Option<&'a str>,
    pub store: Option<&'a str>,
    pub scratch: Option<&'a str>,
    pub scratch_password: Option<backup_core::secret::Secret>,
    /// Row connections of the replay (`--jobs`).
    pub jobs: u16,
}

/// Compares the restored databases on `conn` with the trailer.
async fn compare(
    conn: &mut mysql_async::Conn,
    trailer: &Trailer,
    report: &mut DrillReport,
) -> Result<()> {
    conn.query_drop("SET SESSION sql_mode='', time_zone='+00:00', character_set_client=utf8mb4, collation_connection=utf8mb4_general_ci, character_set_results=binary")
        .await?;
    for t in &trailer.tables {
        let name = format!("{}.{}", t.db, t.table);
        let d = match table_digest(conn, &t.db, &t.table).await {
            Ok(d) => d,
            Err(e) => {
                report.mismatches.push(format!(
                    "table {name}: cannot be read on the scratch server: {e}"
                ));
                continue;
            }
        };
        if d.rows() != t.rows {
            report.mismatches.push(format!(
                "table {name}: {} rows restored, {} dumped",
                d.rows(),
                t.rows
            ));
        } else if d.hex() != t.content {
            report.mismatches.push(format!(
                "table {name}: content digest differs from the dump's ({} rows)",
                t.rows
            ));
        }
        let rows: Vec<mysql_async::Row> = conn
            .query(format!("SHOW CREATE TABLE {}", qualified(&t.db, &t.table)))
            .await?;
        let def = rows
            .into_iter()
            .next()
            .and_then(|mut r| r.take::<Vec<u8>, _>(1))
            .unwrap_or_default();
        if definition_digest(&String::from_utf8_lossy(&def)) != t.definition {
            report
                .mismatches
                .push(format!("table {name}: definition differs from the dump's"));
        }
        report.tables_compared += 1;
    }
    for o in &trailer.objects {
        let (db, n) = (quote_str(&o.db), quote_str(&o.name));
        let q = match o.kind.as_str() {
            "VIEW" => format!("SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA={db} AND TABLE_NAME={n}"),
            "PROCEDURE" | "FUNCTION" => format!(
                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA={db} AND ROUTINE_NAME={n} AND ROUTINE_TYPE={}",
                quote_str(&o.kind)
            ),
            "TRIGGER" => format!("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA={db} AND TRIGGER_NAME={n}"),
            "EVENT" => format!("SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA={db} AND EVENT_NAME={n}"),
            "SEQUENCE" => format!("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA={db} AND TABLE_NAME={n} AND TABLE_TYPE='SEQUENCE'"),
            other => {
                report.mismatches.push(format!("unknown object kind {other} in the trailer"));
                continue;
            }
        };
        let n: Option<Vec<u8>> = conn.query_first(q).await?;
        let n: u64 = n
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if n != 1 {
            report.mismatches.push(format!(
                "{} {}.{}: missing on the scratch server",
                o.kind.to_lowercase(),
                o.db,
                o.name
            ));
        }
        report.objects_checked += 1;
    }
    Ok(())
}

/// Runs the drill; every outcome is in the report (Err only for usage problems).
pub async fn run(
    cfg: Option<&Config>,
    a: &DrillArgs<'_>,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    report: &mut DrillReport,
) -> Result<()> {
    let chosen = choose(cfg, a, trusted)?;
    report.file = Some(chosen.file.display().to_string());
    report.store = chosen.store.clone();
    report.source = chosen.source.clone();
    report.backup_id = layout::backup_id_of(
        &chosen
            .file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
    )
    .map(String::from);
    if let Some(m) = &chosen.manifest {
        report.backup_finished_at = Some(m.finished_at.clone());
        report.backup_age_seconds = catalog::finished_at(m).map(|t| (Utc::now() - t).num_seconds());
        report.data_bytes = Some(m.data.size);
    }
    let _ = &chosen.prefix;

    // Every check before any byte reaches any server.
    let (v, pins, limit) = verify_chosen(&chosen, dpo, trusted, report)?;

    let mut scratch = Scratch::open(cfg, a, report, &v.trailer.databases).await?;
    let t0 = Instant::now();
    let n = scratch
        .replay(&chosen, &pins, limit, &v, dpo, trusted, report)
        .await?;
    report.restore_seconds = Some(t0.elapsed().as_secs_f64());
    report.check(
        "replay",
        true,
        format!("{n} statements in {:.1}s", t0.elapsed().as_secs_f64()),
    );
    scratch.compare(&v.trailer, report, "").await?;
    scratch.close().await;
    Ok(())
}

/// The scratch server a drill replays into: an ephemeral one it starts (and removes when
/// dropped), or the given `--scratch` one, refused when it is a configured production
/// server, a Galera node, or already holds one of `databases`.
pub(crate) struct Scratch {
    pub(crate) conn: mysql_async::Conn,
    /// The replay's row connections (taken by the first replay).
    rows: Vec<mysql_async::Conn>,
    databases: Vec<String>,
    given: bool,
    target: target::Target,
    _ephemeral: Option<Ephemeral>,
}

impl Scratch {
    async fn open(
        cfg: Option<&Config>,
        a: &DrillArgs<'_>,
        report: &mut DrillReport,
        databases: &[String],
    ) -> Result<Scratch> {
        let mut eph = None;
        let (tgt, password) = match a.scratch {
            None => {
                let e = Ephemeral::start()?;
                report.scratch = "ephemeral MariaDB (socket only, removed afterwards)".into();
                let t = e.target();
                eph = Some(e);
                (t, None)
            }
            Some(url) => {
                let t = target::parse(url)?;
                refuse_production(cfg, &t)?;
                report.scratch = t.to_string();
                (t, a.scratch_password.as_ref())
            }
        };
        let mut conn = target::connect(&tgt, password).await?;
        // Opened before the ephemeral server's root password is locked away.
        let rows = target::connect_rows(&tgt, password, a.jobs).await?;
        if a.scratch.is_none() {
            lock_down(&mut conn).await?;
        }
        check_scratch(&mut conn, &tgt, databases).await?;
        Ok(Scratch {
            conn,
            rows,
            databases: databases.to_vec(),
            given: a.scratch.is_some(),
            target: tgt,
            _ephemeral: eph,
        })
    }

    /// On the ephemeral server: the DEFINERs of the backup's views, routines, triggers and
    /// events that the backup does not create (a tenant's backup holds only the tenant's
    /// accounts; a DBA may have defined its objects) are stood in for by locked accounts
    /// with privileges on the restored databases only, so that the objects load and run
    /// as on the source. The server and the accounts go away with the drill.
    async fn stand_in_definers(
        &mut self,
        v: &restore::Verified,
        report: &mut DrillReport,
    ) -> Result<()> {
        let created: std::collections::BTreeSet<_> = v.accounts.iter().collect();
        let wanted: Vec<_> = v
            .definers
            .iter()
            .filter(|d| !created.contains(d))
            .cloned()
            .collect();
        let existing = target::existing_accounts(&mut self.conn, &self.target, &wanted).await?;
        let missing: Vec<_> = wanted.iter().filter(|d| !existing.contains(d)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        for d in &missing {
            let create = match d.host {
                Some(_) => format!("CREATE USER IF NOT EXISTS {d} ACCOUNT LOCK"),
                None => format!("CREATE ROLE IF NOT EXISTS {d}"),
            };
            self.conn.query_drop(&create).await.with_context(|| {
                format!("creating a stand-in for definer {d} on the scratch server")
            })?;
            for db in &self.databases {
                self.conn
                    .query_drop(format!(
                        "GRANT ALL PRIVILEGES ON {}.* TO {d}",
                        backup_core::format::quote_ident(
                            &db.replace('_', "\\_").replace('%', "\\%")
                        )
                    ))
                    .await
                    .with_context(|| {
                        format!("granting the stand-in for definer {d} privileges on {db}")
                    })?;
            }
        }
        report.check(
            "definers",
            true,
            format!(
                "{} definer(s) the backup does not hold stood in for by locked accounts with privileges on the restored databases: {}",
                missing.len(),
                missing.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            ),
        );
        Ok(())
    }

    /// Replays a verified backup (the pass that reads it again through its pins).
    #[allow(clippy::too_many_arguments)]
    async fn replay(
        &mut self,
        chosen: &Chosen,
        pins: &Pins,
        limit: usize,
        v: &restore::Verified,
        dpo: &DpoKey,
        trusted: &TrustedSigners,
        report: &mut DrillReport,
    ) -> Result<u64> {
        crate::test_pause_before_pass_2();
        // The backup's accounts are created too (a drill proves the whole backup loads),
        // but an account a given scratch server already has is never changed.
        let existing = if self.given {
            crate::target::existing_accounts(&mut self.conn, &self.target, &v.accounts).await?
        } else {
            self.stand_in_definers(v, report).await?;
            Default::default()
        };
        let sel = restore::Selection::new(
            None,
            restore::AccountPolicy::Create {
                existing,
                replace: false,
            },
        );
        crate::replay::replay(
            &chosen.file,
            pins,
            limit,
            dpo,
            trusted,
            &mut self.conn,
            std::mem::take(&mut self.rows),
            sel,
            v,
        )
        .await
    }

    /// Compares every table and object with `trailer` and notes the verdict (`what`:
    /// what was compared with what, before the counts).
    async fn compare(
        &mut self,
        trailer: &Trailer,
        report: &mut DrillReport,
        what: &str,
    ) -> Result<()> {
        compare(&mut self.conn, trailer, report).await?;
        let ok = report.mismatches.is_empty();
        report.check(
            "tables and objects",
            ok,
            if ok {
                format!(
                    "{what}{} tables identical (rows, content, definition), {} objects present",
                    report.tables_compared, report.objects_checked
                )
            } else {
                report.mismatches.join("; ")
            },
        );
        Ok(())
    }

    /// Drops what the drill created on a given scratch server, and disconnects (an
    /// ephemeral one goes whole when dropped).
    async fn close(mut self) {
        if self.given {
            for d in &self.databases {
                let _ = self
                    .conn
                    .query_drop(format!(
                        "DROP DATABASE IF EXISTS {}",
                        backup_core::format::quote_ident(d)
                    ))
                    .await;
            }
        }
        for c in std::mem::take(&mut self.rows) {
            let _ = c.disconnect().await;
        }
        let _ = self.conn.disconnect().await;
    }
}

/// Checks the sha256 (against the .sha256 file and the manifest), then decrypts and
/// verifies the whole file (MDC, signature, completeness), noting each check.
fn verify_chosen(
    chosen: &Chosen,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    report: &mut DrillReport,
) -> Result<(restore::Verified, Pins, usize)> {
    let file = chosen.file.as_path();
    let located = match restore::check_checksums(file, trusted) {
        Ok(l) => {
            report.check(
                "sha256",
                true,
                format!(
                    "{} ({} bytes) matches its .sha256 file{}",
                    l.expected_sha256,
                    l.size,
                    if l.manifest.is_some() {
                        " and the manifest"
                    } else {
                        ""
                    }
                ),
            );
            l
        }
        Err(e) => {
            report.check("sha256", false, format!("{e:#}"));
            bail!("{e:#}");
        }
    };
    report.data_bytes = Some(located.size);
    if report.source.is_none() {
        report.source = located.manifest.as_ref().map(|m| m.source.clone());
    }
    let v = match restore::verify_pass(
        file,
        &located.pins,
        located.max_statement,
        dpo,
        trusted,
        None,
    ) {
        Ok(v) => v,
        Err(e) => {
            report.check(
                "decrypt, MDC, signature, completeness",
                false,
                format!("{e:#}"),
            );
            bail!("{e:#}");
        }
    };
    report.check(
        "decryption and MDC",
        true,
        format!(
            "{} with DPO subkey {}",
            v.outcome.sym_algo.clone().unwrap_or_default(),
            v.outcome.decrypted_with.clone().unwrap_or_default()
        ),
    );
    report.check(
        "signature",
        true,
        format!(
            "good signature by trusted agent key {}",
            v.outcome.signer.clone().unwrap_or_default()
        ),
    );
    report.check(
        "completeness",
        true,
        format!(
            "{} statements, completion line {}",
            v.statements,
            v.trailer.completed.clone().unwrap_or_default()
        ),
    );
    match restore::check_identity(&located, &v, chosen.source.as_deref()) {
        Ok(id) => report.check(
            "identity",
            true,
            format!(
                "the signed dump is backup {} of source {}, as its name and signed manifest say",
                id.backup_id, id.source
            ),
        ),
        Err(e) => {
            report.check("identity", false, format!("{e:#}"));
            bail!("{e:#}");
        }
    }
    report.sql_bytes = Some(v.sql_bytes);
    Ok((v, located.pins, located.max_statement))
}

/// Gives the ephemeral server's root a random password that only this process holds
/// (this session stays open), so that even a user who reached the socket could not log
/// in; the socket's directory is 0700 and the server listens on no TCP port.
async fn lock_down(conn: &mut mysql_async::Conn) -> Result<()> {
    let mut raw = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let pw = zeroize::Zeroizing::new(hex::encode(raw));
    conn.query_drop(format!(
        "ALTER USER root@localhost IDENTIFIED BY {}",
        quote_str(&pw)
    ))
    .await
    .context("locking the scratch server's root account")?;
    Ok(())
}

/// Refuses a scratch server that is one of the configured production servers.
fn refuse_production(cfg: Option<&Config>, t: &target::Target) -> Result<()> {
    let Some(cfg) = cfg else { return Ok(()) };
    for s in &cfg.sources {
        let same = s.nodes.iter().any(|n| match (&n.endpoint, &t.socket) {
            (Endpoint::Tcp { host, port }, None) => *host == t.host && *port == t.port,
            (Endpoint::Socket(p), Some(q)) => p == q,
            _ => false,
        });
        if same {
            bail!("--scratch {t} is the production server of source {}; the drill never replays into it", s.name);
        }
    }
    Ok(())
}

/// Refuses a scratch server that is a Galera node or already holds a dumped database.
async fn check_scratch(
    conn: &mut mysql_async::Conn,
    tgt: &target::Target,
    databases: &[String],
) -> Result<()> {
    let wsrep: Option<String> = conn
        .query_first("SELECT @@GLOBAL.wsrep_on")
        .await
        .unwrap_or(None);
    if wsrep.as_deref() == Some("1") {
        bail!("the scratch server {tgt} is a Galera node (wsrep_on=ON): replayed data would replicate to the cluster; use a standalone server");
    }
    let existing: Vec<String> = conn.query("SHOW DATABASES").await?;
    let clash: Vec<&String> = databases.iter().filter(|d| existing.contains(d)).collect();
    if !clash.is_empty() {
        bail!(
            "the scratch server {tgt} already holds {}; a drill needs a server without the dumped databases",
            clash.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Writes the drill record where the agents read it: drill.json in the state dir, and a
/// copy beside the backups in the store.
pub fn record(cfg: Option<&Config>, report: &DrillReport) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(cfg) = cfg else { return notes };
    let rec = backup_core::state::DrillRecord {
        finished_at: Utc::now(),
        success: report.success,
        backup_id: report.backup_id.clone(),
        source: report.source.clone(),
        message: report
            .error
            .clone()
            .or_else(|| report.mismatches.first().cloned()),
        pitr: report.pitr,
        restore_seconds: report.restore_seconds,
    };
    let state = backup_core::state::StateStore::new(&cfg.agent.state_dir);
    match state.record_drill(&rec, false) {
        Ok(_) => notes.push(format!(
            "drill record written to {}",
            state.drill_path_of(report.pitr).display()
        )),
        Err(e) => notes.push(format!("could not write the drill record: {e}")),
    }
    if let (Some(store_name), Some(src)) = (&report.store, &report.source) {
        if let (Some(st), Some(s)) = (
            cfg.stores.iter().find(|s| &s.name == store_name),
            cfg.sources.iter().find(|s| &s.name == src),
        ) {
            let store = match open_store(st) {
                Ok(s) => s,
                Err(e) => {
                    notes.push(format!("could not store the drill report: {e}"));
                    return notes;
                }
            };
            let key = layout::new_drill_key(&s.prefix, Utc::now(), report.pitr);
            let full = serde_json::to_vec_pretty(report).expect("serializable");
            match put_bytes(store.as_ref(), &key, &full) {
                Ok(()) => notes.push(format!("drill report stored as {}", store.describe(&key))),
                Err(e) => notes.push(format!("could not store the drill report: {e}")),
            }
        }
    }
    notes
}
