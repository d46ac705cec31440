//! `--into URL`: the databases chosen, the target checked before the long passes and
//! again after them, the accounts' fate decided, the verified dump replayed; with
//! `--until`, the archived binary log applied after it.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::*;

use backup_core::config::Config;
use backup_core::format::grants::Account;
use backup_core::secret::Secret;

use crate::restore::{self, AccountPolicy};
use crate::{
    drill, load_keys, pitr, rename, replay, target, target_password, test_pause_before_pass_2,
    usage, verify_file, Cli, Keys,
};

/// `--as NEW` of the one `--database`.
pub(crate) fn renaming(cli: &Cli) -> Option<rename::Rename> {
    let new = cli.as_name.as_ref()?;
    Some(rename::Rename::new(cli.databases.first()?, new))
}

/// The databases to restore: `--database` (each must be in the backup) or all of them.
pub(crate) fn selection(
    cli: &Cli,
    v: &restore::Verified,
) -> Result<(Option<Vec<String>>, Vec<String>)> {
    let dumped: Vec<String> = v.trailer.databases.clone();
    let only = if cli.databases.is_empty() {
        None
    } else {
        for d in &cli.databases {
            if !dumped.contains(d) {
                return Err(usage(format!(
                    "database {d:?} is not in this backup; it has: {}",
                    dumped.join(", ")
                )));
            }
        }
        Some(cli.databases.clone())
    };
    let wanted = only.clone().unwrap_or(dumped);
    Ok((only, wanted))
}

/// What the early checks of the target leave for the replay.
pub(crate) struct Early {
    conn: mysql_async::Conn,
    password: Option<Secret>,
}

/// Before the passes over the backup (which take as long as the restore itself on a large
/// one): the target's password and connection, and what the signed manifest beside the
/// backup tells about it: the databases that would clash, the largest statement against
/// max_allowed_packet, and with --accounts the target's account list. Everything is
/// checked again after the verification pass, against the dump itself.
pub(crate) async fn preflight(
    cli: &Cli,
    cfg: Option<&Config>,
    target: &target::Target,
    file: &Path,
    keys: &Keys,
) -> Result<Early> {
    let password = target_password(cli, cfg, target)?;
    let mut conn = target::connect(target, password.as_ref()).await?;
    if let Some(m) = restore::manifest_of(file, &keys.trusted)? {
        let wanted: Vec<String> = match (&cli.as_name, cli.databases.is_empty()) {
            (Some(new), _) => vec![new.clone()],
            (None, true) => m.databases.clone(),
            (None, false) => cli.databases.clone(),
        };
        if !cli.force {
            let existing: Vec<String> = conn
                .query("SHOW DATABASES")
                .await
                .context("listing databases on the target")?;
            let clash: Vec<&String> = wanted.iter().filter(|d| existing.contains(d)).collect();
            if !clash.is_empty() {
                bail!(
                    "refusing to overwrite existing database(s) on {target}: {}; restore into another server, drop them, or pass --force to replace them (nothing was read or restored)",
                    clash.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        check_target_fits(
            &mut conn,
            usize::try_from(m.largest_statement_bytes).unwrap_or(usize::MAX),
        )
        .await?;
        // Every restore creates the databases and their tables and loads rows; --force
        // drops what is there.
        let mut needed = vec!["CREATE", "INSERT"];
        if cli.force {
            needed.push("DROP");
        }
        target::check_privileges(
            &mut conn,
            target,
            &wanted,
            &needed,
            "nothing was read or restored",
        )
        .await?;
    }
    if cli.accounts {
        // The account listing --accounts needs (its privilege), now rather than later.
        target::accounts_on(&mut conn, target).await?;
    }
    Ok(Early { conn, password })
}

/// Refuses to overwrite databases without --force (drops them with it), checks that the
/// largest statement fits, and decides what happens to the backup's accounts.
pub(crate) async fn prepare_target(
    cli: &Cli,
    early: Early,
    target: &target::Target,
    wanted: &[String],
    v: &restore::Verified,
) -> Result<(mysql_async::Conn, Vec<mysql_async::Conn>, AccountPolicy)> {
    let largest = v.largest_statement;
    let Early { mut conn, password } = early;
    let rows = target::connect_rows(target, password.as_ref(), cli.jobs).await?;
    drop(password);
    let existing: Vec<String> = conn
        .query("SHOW DATABASES")
        .await
        .context("listing databases on the target")?;
    let clash: Vec<&String> = wanted.iter().filter(|d| existing.contains(d)).collect();
    if !clash.is_empty() && !cli.force {
        bail!(
                "refusing to overwrite existing database(s) on {target}: {}; restore into another server, drop them, or pass --force to replace them",
                clash.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
    }
    check_target_fits(&mut conn, largest).await?;
    // What the backup's objects need, now that pass 1 has read them all.
    let restored = |db: &str| match &cli.as_name {
        Some(_) => cli.databases.first().is_some_and(|d| d == db),
        None => wanted.iter().any(|w| w == db),
    };
    let mut needed = vec!["CREATE", "INSERT"];
    for o in v.trailer.objects.iter().filter(|o| restored(&o.db)) {
        let p = match o.kind.as_str() {
            "VIEW" => "CREATE VIEW",
            "PROCEDURE" | "FUNCTION" | "PACKAGE" | "PACKAGE BODY" => "CREATE ROUTINE",
            "TRIGGER" => "TRIGGER",
            "EVENT" => "EVENT",
            _ => continue,
        };
        if !needed.contains(&p) {
            needed.push(p);
        }
    }
    if cli.force && !clash.is_empty() {
        needed.push("DROP");
    }
    target::check_privileges(&mut conn, target, wanted, &needed, "nothing was restored").await?;
    let policy = account_policy(cli, &mut conn, target, &v.accounts).await?;
    warn_missing_definers(cli, &mut conn, target, v).await;
    for d in &clash {
        eprintln!("restore: --force: dropping database {d} on {target}");
        conn.query_drop(format!(
            "DROP DATABASE {}",
            backup_core::format::quote_ident(d)
        ))
        .await?;
    }
    Ok((conn, rows, policy))
}

/// Says which DEFINERs of the backup's views, routines, triggers and events the target
/// lacks (and the restore does not create): a view or routine that runs as a missing
/// account fails to load or to run. A backup of some databases holds only the accounts
/// with privileges on them, so a DBA who defined its objects is not in it.
pub(crate) async fn warn_missing_definers(
    cli: &Cli,
    conn: &mut mysql_async::Conn,
    target: &target::Target,
    v: &restore::Verified,
) {
    let created: std::collections::BTreeSet<&Account> = if cli.accounts {
        v.accounts.iter().collect()
    } else {
        Default::default()
    };
    let wanted: Vec<Account> = v
        .definers
        .iter()
        .filter(|d| !created.contains(d))
        .cloned()
        .collect();
    if wanted.is_empty() {
        return;
    }
    let missing: Vec<String> = match target::existing_accounts(conn, target, &wanted).await {
        Ok(e) => wanted
            .iter()
            .filter(|d| !e.contains(d))
            .map(|d| d.to_string())
            .collect(),
        Err(_) => {
            eprintln!("restore: cannot check that the definers of the backup's objects exist on {target} (no SELECT on mysql.user); a view or routine whose definer is missing fails");
            return;
        }
    };
    if !missing.is_empty() {
        let hint = if !cli.accounts
            && missing
                .iter()
                .any(|m| v.accounts.iter().any(|a| a.to_string() == *m))
        {
            "restore with --accounts, or create them first"
        } else {
            "create them first (e.g. CREATE USER ... ACCOUNT LOCK, with the privileges the objects need)"
        };
        eprintln!(
            "restore: warning: the backup's views, routines, triggers or events are defined by {} account(s) that {target} lacks: {}; those that run as them fail to load or to run: {hint}",
            missing.len(),
            some_names(&missing)
        );
    }
}

/// A few names of a list, for a message.
pub(crate) fn some_names(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// What the restore does with the backup's accounts, said on standard error: nothing
/// without --accounts; with it, creates the missing ones and leaves the existing ones
/// alone (or, with --force, gives them the backup's definition and grants).
pub(crate) async fn account_policy(
    cli: &Cli,
    conn: &mut mysql_async::Conn,
    target: &target::Target,
    dumped: &[Account],
) -> Result<AccountPolicy> {
    let names = |a: &mut dyn Iterator<Item = &Account>| -> String {
        some_names(&a.map(|a| a.to_string()).collect::<Vec<_>>())
    };
    if !cli.accounts {
        if !dumped.is_empty() {
            eprintln!(
                "restore: not restoring the backup's {} account(s) and role(s) nor their grants ({}); pass --accounts to create them",
                dumped.len(),
                names(&mut dumped.iter())
            );
        }
        return Ok(AccountPolicy::Skip);
    }
    let existing = target::existing_accounts(conn, target, dumped).await?;
    let new = dumped.len() - existing.len();
    if !existing.is_empty() {
        let mut e: Vec<&Account> = existing.iter().collect();
        e.sort();
        if cli.force {
            eprintln!(
                "restore: --accounts --force: giving {} existing account(s) on {target} the backup's password, options and grants: {}",
                e.len(),
                names(&mut e.into_iter())
            );
        } else {
            eprintln!(
                "restore: --accounts: leaving {} existing account(s) on {target} as they are, with their grants: {}; pass --force to give them the backup's password and grants",
                e.len(),
                names(&mut e.into_iter())
            );
        }
    }
    if new > 0 {
        eprintln!("restore: --accounts: creating {new} account(s) and role(s) with their grants");
    }
    Ok(AccountPolicy::Create {
        existing,
        replace: cli.force,
    })
}

/// Pass 2 of a dump: replays the verified file (through its pins) on `conn`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn replay_dump(
    file: &Path,
    located: &restore::Located,
    v: &restore::Verified,
    keys: &Keys,
    conn: &mut mysql_async::Conn,
    rows: Vec<mysql_async::Conn>,
    sel: restore::Selection,
    target: &target::Target,
    wanted: &[String],
) -> Result<u64> {
    replay::replay(
        file,
        &located.pins,
        located.max_statement,
        &keys.dpo,
        &keys.trusted,
        conn,
        rows,
        sel,
        v,
    )
    .await
    .map_err(|e| {
        anyhow!(
            "restore into {target} failed: {e:#}; the target may hold a partial restore of: {}",
            wanted.join(", ")
        )
    })
}

/// `--into URL --until TIME|--until-gtid GTID`: a backup and the archived binary log up
/// to the target, everything verified before anything is replayed.
pub(crate) async fn restore_until(
    cli: &Cli,
    cfg: Option<&Config>,
    until: pitr::Until,
) -> Result<()> {
    let cfg = cfg.ok_or_else(|| {
        usage("--until and --until-gtid need --config (the stores that hold the backups and the archived binary log)")
    })?;
    let source = match &cli.source {
        Some(s) => s.clone(),
        None if cfg.sources.len() == 1 => cfg.sources[0].name.clone(),
        None => {
            return Err(usage(
                "several sources are configured; choose one with --source NAME",
            ))
        }
    };
    let target = target::parse(cli.into.as_deref().expect("clap requires --into"))
        .map_err(|e| usage(format!("{e:#}")))?;
    let keys = load_keys(cli, Some(cfg))?;
    let t0 = Instant::now();
    let backup = cli.backup.as_ref().map(|b| b.display().to_string());
    let mut plan = pitr::plan(
        cfg,
        &source,
        cli.store.as_deref(),
        backup.as_deref(),
        &until,
        &keys.trusted,
    )?;
    eprintln!("restore: to {until}: {}", pitr::describe(&plan));
    let args = drill::DrillArgs {
        source: Some(&source),
        backup: Some(&plan.backup.backup_id),
        store: cli.store.as_deref(),
        scratch: None,
        scratch_password: None,
        jobs: cli.jobs,
    };
    let chosen = drill::choose(Some(cfg), &args, &keys.trusted)?;
    let early = preflight(cli, Some(cfg), &target, &chosen.file, &keys).await?;
    let (located, v) = verify_file(cli, &chosen.file, &keys)?;
    let (only, wanted) = selection(cli, &v)?;
    let summary = pitr::verify(&mut plan, &wanted, &keys.dpo, &keys.trusted)?;
    eprintln!(
        "restore: binary log verified: {} segment(s), checksums, decryption, MDC, trusted signatures and every event; {} transaction(s) to apply{}{}",
        plan.segments.len(),
        summary.applied,
        match &summary.last_applied {
            Some((g, t)) => format!(" (the last {g} at {})", chrono::DateTime::from_timestamp(i64::from(*t), 0).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            None => String::new(),
        },
        match &summary.stopped_before {
            Some((g, t)) => format!(", stopping before {g} at {}", chrono::DateTime::from_timestamp(i64::from(*t), 0).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            None => String::new(),
        }
    );
    if !summary.other.is_empty() {
        eprintln!(
            "restore: skipping transactions of databases not restored: {}",
            summary
                .other
                .iter()
                .map(|(d, n)| format!("{d} ({n})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for q in &summary.unattributed_skipped {
        eprintln!("restore: skipping a statement without a default database that names no restored database: {q}");
    }
    let (mut conn, rows, policy) = prepare_target(cli, early, &target, &wanted, &v).await?;
    test_pause_before_pass_2();
    let n = replay_dump(
        &chosen.file,
        &located,
        &v,
        &keys,
        &mut conn,
        rows,
        restore::Selection::new(only, policy),
        &target,
        &wanted,
    )
    .await?;
    eprintln!(
        "restore: backup {} replayed: {n} statements",
        plan.backup.backup_id
    );
    let m = pitr::apply(&plan, &wanted, &keys.dpo, &keys.trusted, &mut conn)
        .await
        .map_err(|e| anyhow!("applying the binary log on {target} failed: {e:#}; the target holds the backup and part of the log: drop {} and restore again", wanted.join(", ")))?;
    let _ = conn.disconnect().await;
    eprintln!(
        "restore: restored {} into {target} as of {until}: backup {} and {} transaction(s) of the binary log ({m} statements) in {:.1}s",
        wanted.join(", "),
        plan.backup.backup_id,
        summary.applied,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuses a target that cannot take this backup's largest statement: max_allowed_packet,
/// and on a Galera node wsrep_max_ws_size (each statement is one writeset).
pub(crate) async fn check_target_fits(conn: &mut mysql_async::Conn, largest: usize) -> Result<()> {
    // On a Galera target each statement is one writeset (autocommit, at most 1 MiB unless a
    // single row is larger): it must fit wsrep_max_ws_size, or the cluster refuses it midway.
    let wsrep: Option<(String, u64)> = conn
        .query_first("SELECT @@GLOBAL.wsrep_on, @@GLOBAL.wsrep_max_ws_size")
        .await
        .unwrap_or(None);
    if let Some((on, ws)) = wsrep {
        if on == "1" && (ws as usize) < largest {
            bail!(
                "the target is a Galera node whose wsrep_max_ws_size is {ws} bytes, but the largest statement in this backup is {} bytes; raise wsrep_max_ws_size and retry",
                largest
            );
        }
    }
    let map: u64 = conn
        .query_first("SELECT @@max_allowed_packet")
        .await?
        .unwrap_or(0);
    if (map as usize) < largest + 1024 {
        bail!(
            "the target's max_allowed_packet is {map} bytes but the largest statement in this backup is {} bytes; raise it (SET GLOBAL max_allowed_packet={}) and retry",
            largest,
            (largest + 1024).next_power_of_two()
        );
    }
    Ok(())
}
