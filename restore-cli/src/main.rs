//! `restore`: verifies, decrypts and replays backups made by backup-agent. Runs where the
//! DPO secret key is (the DPO's workstation, or a one-shot drill container).

mod crypto;
mod drill;
mod pinned;
mod pitr;
mod progress;
mod rename;
mod replay;
mod restore;
mod scratch;
mod target;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgGroup, Parser};
use mysql_async::prelude::*;

use backup_core::config::Config;
use backup_core::format::grants::Account;
use backup_core::secret::{read_secret_file, Secret};
use restore::AccountPolicy;

/// Row connections of a replay when `--jobs` is not given: measured best on 2 cores
/// against the test server (docs/benchmarks.md).
const DEFAULT_JOBS: u16 = 2;

#[derive(Parser)]
#[command(
    name = "restore",
    version,
    about = "Verify, decrypt and replay backup-agent backups"
)]
#[command(group(ArgGroup::new("mode").required(true).args(["decrypt", "into", "verify", "list", "completions", "man"])))]
struct Cli {
    /// Configuration file (the agent's TOML format; its [restore] section is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Verify and decrypt FILE to SQL (or to gzip, if -o ends in .gz).
    #[arg(long, value_name = "FILE")]
    decrypt: Option<PathBuf>,
    /// Output of --decrypt; "-" (the default) is standard output.
    #[arg(short = 'o', long, value_name = "OUT", requires = "decrypt")]
    output: Option<PathBuf>,
    /// Restore into this server: mysql://user@host:port/ or mysql://user@localhost/?socket=PATH
    #[arg(long, value_name = "URL")]
    into: Option<String>,
    /// With --into and --config: restore to this point in time (RFC 3339 with a zone,
    /// e.g. 2026-12-02T10:15:00Z): the newest backup before it, then the archived binary
    /// log up to it (every transaction timestamped at or before it, at the log's
    /// one-second resolution).
    #[arg(
        long,
        value_name = "TIME",
        requires = "into",
        conflicts_with = "until_gtid"
    )]
    until: Option<String>,
    /// With --into and --config: restore up to and including this GTID (e.g. 0-1-12345).
    #[arg(long, value_name = "GTID", requires = "into")]
    until_gtid: Option<String>,
    /// The drill: verify the newest (or the given) backup by restoring it into a scratch
    /// server and comparing every table with the dump's digests.
    #[arg(long)]
    verify: bool,
    /// With --verify and --config: the log drill. Restores the second-newest backup, applies
    /// the archived binary log up to the newest backup's snapshot, and compares every table
    /// with the newest backup's digests (proves the log between two backups).
    #[arg(long, requires = "verify")]
    pitr: bool,
    /// List the complete backups in the configured stores.
    #[arg(long)]
    list: bool,
    /// The backup: a .sql.gz.gpg file (its .sha256 file beside it), or with --config
    /// (--into, --verify, --until) also a backup id or "latest", from the stores.
    #[arg(long, value_name = "FILE|ID")]
    backup: Option<PathBuf>,
    /// With --config (--into, --verify, --until, --list): the source.
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
    /// With --config (--into, --verify, --until): only this store.
    #[arg(long, value_name = "NAME")]
    store: Option<String>,
    /// With --verify: replay into this server instead of an ephemeral one; it must not hold
    /// any of the dumped databases.
    #[arg(long, value_name = "URL")]
    scratch: Option<String>,
    /// Password file for --scratch.
    #[arg(long, value_name = "FILE")]
    scratch_password_file: Option<PathBuf>,
    /// Machine-readable output (--verify, --list).
    #[arg(long)]
    json: bool,
    /// Restore only this database (repeatable).
    #[arg(long = "database", value_name = "NAME")]
    databases: Vec<String>,
    /// With --into and one --database: restore it under this name, beside the original.
    /// Every reference of its views, routines, triggers, events and column defaults to
    /// the database moves to the new name; what cannot be rewritten safely is refused
    /// (naming the object) before anything is restored.
    #[arg(long = "as", value_name = "NEW_NAME")]
    as_name: Option<String>,
    /// Drop and replace databases that already exist on the target; with --accounts, also
    /// give existing accounts the backup's password, options and grants.
    #[arg(long)]
    force: bool,
    /// With --into: also create the backup's accounts and roles with their grants. Accounts
    /// the target already has are left as they are (unless --force). Without it, no
    /// account of the target is created or changed.
    #[arg(long)]
    accounts: bool,
    /// File with the target user's password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Connect without a password (e.g. unix_socket authentication), never prompt.
    #[arg(long)]
    no_password: bool,
    /// The DPO's secret key file.
    #[arg(long, value_name = "FILE")]
    dpo_key: Option<PathBuf>,
    /// File with the DPO key's passphrase (otherwise asked on a terminal).
    #[arg(long, value_name = "FILE")]
    dpo_passphrase_file: Option<PathBuf>,
    /// A trusted agent certificate (repeatable).
    #[arg(long = "agent-cert", value_name = "FILE")]
    agent_certs: Vec<PathBuf>,
    /// Pin: accept signatures only from this agent certificate fingerprint (repeatable).
    #[arg(long = "agent-fingerprint", value_name = "FPR")]
    agent_fingerprints: Vec<String>,
    /// Connections that load table rows at once (--into, --until, --verify); 1 replays
    /// everything over one connection. Tables, views, routines, triggers, events and
    /// accounts are created over one more connection, in the dump's order.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_JOBS, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[arg(long, value_name = "SHELL", value_enum)]
    completions: Option<clap_complete::Shell>,
    /// Print the manual page (roff) to stdout, e.g. `restore --man > restore.1`.
    #[arg(long)]
    man: bool,
    /// The longest SQL statement to accept (e.g. "256MiB"); by default the manifest's
    /// largest statement (at least 16MiB), or 32MiB without a manifest.
    #[arg(long, value_name = "SIZE")]
    max_statement: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the CLI definitions.
    if let Some(shell) = cli.completions {
        let mut script = Vec::new();
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "restore",
            &mut script,
        );
        return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("restore: cannot write the completion script: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.man {
        return match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("restore: cannot write the manual page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    backup_core::logging::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("restore: {e:#}");
            ExitCode::from(if e.is::<UsageError>() { 2 } else { 1 })
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

struct Keys {
    dpo: crypto::DpoKey,
    trusted: crypto::TrustedSigners,
}

fn load_keys(cli: &Cli, cfg: Option<&Config>) -> Result<Keys> {
    let rc = cfg.map(|c| &c.restore);
    let key = cli
        .dpo_key
        .clone()
        .or_else(|| rc.and_then(|r| r.dpo_secret_key_file.as_ref().map(|p| p.path.clone())))
        .ok_or_else(|| {
            usage(
                "no DPO secret key: give --dpo-key FILE or restore.dpo_secret_key_file in --config",
            )
        })?;
    let pass = cli
        .dpo_passphrase_file
        .clone()
        .or_else(|| rc.and_then(|r| r.dpo_passphrase_file.as_ref().map(|p| p.path.clone())));
    let trusted = load_trusted(cli, cfg)?;
    let dpo = crypto::load_dpo_key(&key, pass.as_deref())?;
    Ok(Keys { dpo, trusted })
}

/// The trusted agent certificates (pinned), from the flags and the config.
fn load_trusted(cli: &Cli, cfg: Option<&Config>) -> Result<crypto::TrustedSigners> {
    let rc = cfg.map(|c| &c.restore);
    let mut certs: Vec<PathBuf> = cli.agent_certs.clone();
    if let Some(r) = rc {
        certs.extend(r.agent_certificates.iter().map(|p| p.path.clone()));
    }
    let mut pins: Vec<String> = cli
        .agent_fingerprints
        .iter()
        .map(|f| {
            f.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_uppercase()
        })
        .collect();
    if let Some(r) = rc {
        pins.extend(r.agent_fingerprints.iter().cloned());
    }
    let cert_refs: Vec<&Path> = certs.iter().map(|p| p.as_path()).collect();
    crypto::TrustedSigners::load(&cert_refs, &pins).map_err(|e| usage(format!("{e:#}")))
}

fn target_password(
    cli: &Cli,
    cfg: Option<&Config>,
    target: &target::Target,
) -> Result<Option<Secret>> {
    if let Some(f) = &cli.password_file {
        return Ok(Some(read_secret_file(f, "--password-file")?));
    }
    if let Some(p) = cfg.and_then(|c| c.restore.target_password_file.as_ref()) {
        return Ok(Some(read_secret_file(&p.path, &p.key)?));
    }
    if cli.no_password || !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let p = rpassword::prompt_password(format!("Password for {target}: "))?;
    Ok(if p.is_empty() {
        None
    } else {
        Some(Secret::new(p))
    })
}

async fn run(cli: Cli) -> Result<()> {
    let mut cfg = match &cli.config {
        Some(p) => Some(Config::load(p).map_err(|e| usage(e.to_string()))?),
        None => None,
    };
    // `--source <split source>/<database>`: that database's backups, under its own prefix.
    if let (Some(c), Some(name)) = (cfg.as_mut(), cli.source.as_deref()) {
        c.add_unit(name).map_err(usage)?;
    }
    if cli.list {
        return list(&cli, cfg.as_ref());
    }
    if cli.accounts && !cli.databases.is_empty() {
        return Err(usage(
            "--accounts restores the backup's accounts with their grants on all of its databases; it cannot be combined with --database",
        ));
    }

    if let Some(new) = &cli.as_name {
        if cli.into.is_none() || cli.verify || cli.decrypt.is_some() {
            return Err(usage("--as restores one database under another name: use it with --into URL and --database NAME"));
        }
        if cli.databases.len() != 1 {
            return Err(usage(
                "--as renames one database: give exactly one --database NAME",
            ));
        }
        if cli.until.is_some() || cli.until_gtid.is_some() {
            return Err(usage("--as cannot be combined with --until or --until-gtid yet: the archived binary log names the original database; restore to the point in time into a scratch server, then copy"));
        }
        if new.is_empty() || new.chars().count() > 64 || new.ends_with(' ') {
            return Err(usage(format!("--as {new:?}: a database name has 1 to 64 characters and does not end with a space")));
        }
        if *new == cli.databases[0] {
            return Err(usage(
                "--as names the database it restores to: give a name other than the --database one",
            ));
        }
    }
    if cli.verify {
        return verify(&cli, cfg.as_ref()).await;
    }
    let until =
        pitr::parse_until(cli.until.as_deref(), cli.until_gtid.as_deref()).map_err(usage)?;
    if let Some(until) = until {
        return restore_until(&cli, cfg.as_ref(), until).await;
    }
    let file = cli
        .decrypt
        .clone()
        .or_else(|| cli.backup.clone())
        .ok_or_else(|| {
            usage("--into needs --backup FILE (or --until/--until-gtid with --config)")
        })?;
    let target = match &cli.into {
        Some(u) => Some(target::parse(u).map_err(|e| usage(format!("{e:#}")))?),
        None => None,
    };
    let keys = load_keys(&cli, cfg.as_ref())?;
    let t0 = Instant::now();

    // --into --backup latest|ID with --config: the backup from the configured stores (an
    // S3 copy is fetched, encrypted, into a private temp dir removed afterwards).
    let mut _fetched = None;
    let file = if cli.into.is_some() && !file.is_file() {
        let Some(c) = cfg.as_ref() else {
            return Err(usage(format!(
                "{} is not a file; with --config, --backup also takes a backup id or \"latest\"",
                file.display()
            )));
        };
        let b = file.display().to_string();
        let args = drill::DrillArgs {
            source: cli.source.as_deref(),
            backup: Some(&b),
            store: cli.store.as_deref(),
            scratch: None,
            scratch_password: None,
            jobs: cli.jobs,
        };
        let chosen = drill::choose(Some(c), &args, &keys.trusted)?;
        eprintln!("restore: backup {b} is {}", chosen.file.display());
        let f = chosen.file.clone();
        _fetched = Some(chosen);
        f
    } else {
        file
    };

    // Fail fast: the target's password, connection, name clashes, max_allowed_packet and
    // account listing are checked against the signed manifest before the long passes.
    let early = match &target {
        Some(t) => Some(preflight(&cli, cfg.as_ref(), t, &file, &keys).await?),
        None => None,
    };

    let (located, v) = verify_file(&cli, &file, &keys)?;

    if cli.decrypt.is_some() {
        let out = cli.output.clone().unwrap_or_else(|| PathBuf::from("-"));
        let n = restore::write_out(&file, &located.pins, &keys.dpo, &keys.trusted, &out)?;
        eprintln!(
            "restore: wrote {} ({n} bytes) to {}",
            backup_core::format::human_size(n),
            out.display()
        );
        return Ok(());
    }

    let target = target.expect("--into given");
    let (only, wanted) = selection(&cli, &v)?;
    if !v.rename_problems.is_empty() {
        return Err(anyhow!(
            "--as {}: {} object(s) cannot be renamed safely: {}; nothing was restored",
            cli.as_name.as_deref().unwrap_or(""),
            v.rename_problems.len(),
            v.rename_problems.join("; ")
        ));
    }
    // The names the restore creates on the target.
    let wanted = match &cli.as_name {
        Some(new) => vec![new.clone()],
        None => wanted,
    };
    let (mut conn, rows, policy) =
        prepare_target(&cli, early.expect("--into given"), &target, &wanted, &v).await?;
    test_pause_before_pass_2();
    // Pass 2: replay.
    let sel = restore::Selection::new(only, policy).with_rename(renaming(&cli));
    let n = replay_dump(
        &file, &located, &v, &keys, &mut conn, rows, sel, &target, &wanted,
    )
    .await?;
    let _ = conn.disconnect().await;
    eprintln!(
        "restore: restored {} into {target}: {n} statements in {:.1}s",
        wanted.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--as NEW` of the one `--database`.
fn renaming(cli: &Cli) -> Option<rename::Rename> {
    let new = cli.as_name.as_ref()?;
    Some(rename::Rename::new(cli.databases.first()?, new))
}

/// The databases to restore: `--database` (each must be in the backup) or all of them.
fn selection(cli: &Cli, v: &restore::Verified) -> Result<(Option<Vec<String>>, Vec<String>)> {
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
struct Early {
    conn: mysql_async::Conn,
    password: Option<Secret>,
}

/// Before the passes over the backup (which take as long as the restore itself on a large
/// one): the target's password and connection, and what the signed manifest beside the
/// backup tells about it: the databases that would clash, the largest statement against
/// max_allowed_packet, and with --accounts the target's account list. Everything is
/// checked again after the verification pass, against the dump itself.
async fn preflight(
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
async fn prepare_target(
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
async fn warn_missing_definers(
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
fn some_names(names: &[String]) -> String {
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
async fn account_policy(
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
async fn replay_dump(
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
        v.sql_bytes,
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
async fn restore_until(cli: &Cli, cfg: Option<&Config>, until: pitr::Until) -> Result<()> {
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

/// Pass 0 (checksums, pins) and pass 1 (decrypt, signature, MDC, completeness), with what
/// each found on standard error.
fn verify_file(
    cli: &Cli,
    file: &Path,
    keys: &Keys,
) -> Result<(restore::Located, restore::Verified)> {
    // Pass 0: checksums.
    let mut located = restore::check_checksums(file, &keys.trusted)?;
    if let Some(m) = &cli.max_statement {
        located.max_statement = backup_core::config::parse_size(m)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                usage(format!(
                    "--max-statement {m:?} is not a size; write e.g. \"256MiB\""
                ))
            })?;
    }
    eprintln!(
        "restore: checksum ok: {} ({}, {} bytes, sha256 {})",
        located.file_name,
        backup_core::format::human_size(located.size),
        located.size,
        located.expected_sha256
    );
    if let Some(m) = &located.manifest {
        eprintln!(
            "restore: manifest ok: backup {} of source {} from {} ({}), {} tables",
            m.backup_id, m.source, m.host, m.server_version, m.tables
        );
    }
    // Pass 1: decrypt, signature, MDC, completeness (and with --as, what can be renamed).
    let v = restore::verify_pass(
        file,
        &located.pins,
        located.max_statement,
        &keys.dpo,
        &keys.trusted,
        renaming(cli),
    )?;
    eprintln!(
        "restore: verified: decrypted with DPO key {} (subkey {}), {} {}, signed by trusted agent key {}, dump complete ({} statements, {} tables, {} SQL bytes, completed {})",
        keys.dpo.fingerprint,
        v.outcome.decrypted_with.as_deref().unwrap_or("?"),
        v.outcome.sym_algo.as_deref().unwrap_or("?"),
        if v.outcome.aead { "AEAD" } else { "SEIPDv1+MDC" },
        v.outcome.signer.as_deref().unwrap_or("?"),
        v.statements,
        v.trailer.tables.len(),
        v.sql_bytes,
        v.trailer.completed.as_deref().unwrap_or("?"),
    );
    let id = restore::check_identity(&located, &v, cli.source.as_deref())?;
    eprintln!(
        "restore: identity ok: the signed dump is backup {} of source {} (databases: {})",
        id.backup_id,
        id.source,
        id.databases.join(", ")
    );
    Ok((located, v))
}

/// Refuses a target that cannot take this backup's largest statement: max_allowed_packet,
/// and on a Galera node wsrep_max_ws_size (each statement is one writeset).
async fn check_target_fits(conn: &mut mysql_async::Conn, largest: usize) -> Result<()> {
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

fn list(cli: &Cli, cfg: Option<&Config>) -> Result<()> {
    let cfg = cfg.ok_or_else(|| usage("--list needs --config (the stores and sources)"))?;
    let trust = load_trusted(cli, Some(cfg))?.trust();
    let mut rows = Vec::new();
    let mut table: Vec<backup_core::listing::Row> = Vec::new();
    for src in cfg
        .sources
        .iter()
        .filter(|s| cli.source.as_ref().is_none_or(|n| &s.name == n))
    {
        if src.split.is_some() {
            // Its backups are per database, under <prefix>/<database>.
            eprintln!(
                "restore: source {} keeps one backup per database: list one with --source {}/<database> (backup-agent list shows every database it has backed up)",
                src.name, src.name
            );
            continue;
        }
        // The archived binary log of the source, from every store: how far a
        // point-in-time restore from each backup reaches.
        let mut segs: std::collections::BTreeMap<String, backup_core::manifest::SegmentManifest> =
            std::collections::BTreeMap::new();
        let mut per_store = Vec::new();
        for st in &cfg.stores {
            let store = backup_core::store::open_store(st).map_err(|e| anyhow!("{e}"))?;
            let list = backup_core::catalog::complete_backups(store.as_ref(), &src.prefix, &trust)
                .map_err(|e| anyhow!("{e}"))?;
            for (id, problem) in &list.problems {
                eprintln!(
                    "restore: store {}: backup {id} is not listed: {problem}",
                    st.name
                );
            }
            if let Ok(l) =
                backup_core::catalog::complete_segments(store.as_ref(), &src.prefix, &trust)
            {
                for (id, problem) in &l.problems {
                    eprintln!(
                        "restore: store {}: segment {id} is not used: {problem}",
                        st.name
                    );
                }
                for m in l.segments {
                    segs.entry(m.segment_id.clone()).or_insert(m);
                }
            }
            per_store.push((st, store, list.backups));
        }
        let all: Vec<&backup_core::manifest::SegmentManifest> = segs.values().collect();
        let first_row = table.len();
        for (st, store, backups) in per_store {
            for m in backups {
                let reach = backup_core::listing::reach(&m, &all);
                // One row per backup, its copies on every store.
                match table[first_row..]
                    .iter_mut()
                    .find(|r| r.backup == m.backup_id)
                {
                    Some(r) => r.copies.push((st.name.clone(), "listed".into())),
                    None => table.push(backup_core::listing::Row {
                        source: src.name.clone(),
                        backup: m.backup_id.clone(),
                        finished: m.finished_at.clone(),
                        size: m.data.size,
                        copies: vec![(st.name.clone(), "listed".into())],
                        verdict: None,
                        until: reach.as_ref().map(|r| r.0.clone()),
                    }),
                }
                rows.push(serde_json::json!({
                    "source": src.name, "store": st.name, "backup_id": m.backup_id, "finished_at": m.finished_at,
                    "size": m.data.size, "sha256": m.data.sha256, "databases": m.databases,
                    "file": store.describe(&backup_core::layout::key(&src.prefix, &m.data.name)),
                    "recoverable_until": reach.as_ref().map(|r| r.0.clone()),
                    "recoverable_until_gtid": reach.as_ref().map(|r| r.1.clone()),
                }));
            }
        }
        table[first_row..].sort_by(|a, b| a.backup.cmp(&b.backup));
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        // The listing's one text format (backup-agent list prints the same table, with
        // each copy's verification and the 3-2-1 verdict, which only the agent knows).
        for r in &mut table {
            r.copies.sort();
        }
        print!("{}", backup_core::listing::render(&table));
    }
    Ok(())
}

async fn verify(cli: &Cli, cfg: Option<&Config>) -> Result<()> {
    let started = chrono::Utc::now();
    let mut report = drill::DrillReport {
        started_at: started.to_rfc3339(),
        ..Default::default()
    };
    let keys = load_keys(cli, cfg)?;
    let scratch_password = match &cli.scratch_password_file {
        Some(f) => Some(read_secret_file(f, "--scratch-password-file")?),
        None => None,
    };
    let backup = cli.backup.as_ref().map(|b| b.display().to_string());
    let args = drill::DrillArgs {
        source: cli.source.as_deref(),
        backup: backup.as_deref(),
        store: cli.store.as_deref(),
        scratch: cli.scratch.as_deref(),
        scratch_password,
        jobs: cli.jobs,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = async {
            if cli.pitr {
                drill::run_pitr(cfg, &args, &keys.dpo, &keys.trusted, &mut report).await
            } else {
                drill::run(cfg, &args, &keys.dpo, &keys.trusted, &mut report).await
            }
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; the scratch server was removed")),
        _ = term.recv() => Err(anyhow!("terminated; the scratch server was removed")),
    };
    if let Err(e) = &outcome {
        report.error = Some(format!("{e:#}"));
    }
    report.success =
        outcome.is_ok() && report.mismatches.is_empty() && report.checks.iter().all(|c| c.ok);
    report.finished_at = Some(chrono::Utc::now().to_rfc3339());
    let notes = drill::record(cfg, &report);
    if let Some(cfg) = cfg {
        let alerter = backup_core::alert::Alerter::new(
            cfg.alerts.clone(),
            backup_core::state::StateStore::new(&cfg.agent.state_dir),
        );
        let src = report.source.clone().unwrap_or_else(|| "-".into());
        let (event, msg) = if report.success {
            (
                "drill_succeeded",
                format!(
                    "{} passed: {} tables identical",
                    drill_name(&report),
                    report.tables_compared
                ),
            )
        } else {
            (
                "drill_failed",
                format!(
                    "{} FAILED: {}",
                    drill_name(&report),
                    report
                        .error
                        .clone()
                        .unwrap_or_else(|| report.mismatches.join("; "))
                ),
            )
        };
        let mut a = backup_core::alert::Alert::new(event, &src, report.success, msg);
        a.backup = report.backup_id.clone();
        a.details = serde_json::json!({"pitr": report.pitr, "base_backup_id": report.base_backup_id, "tables_compared": report.tables_compared, "restore_seconds": report.restore_seconds, "mismatches": report.mismatches});
        alerter.send(&a).await;
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} (source {}, store {})",
            drill_name(&report),
            report.source.as_deref().unwrap_or("?"),
            report.store.as_deref().unwrap_or("-")
        );
        if let Some(age) = report.backup_age_seconds {
            println!(
                "  backup finished {} ({}h old), {} bytes",
                report.backup_finished_at.as_deref().unwrap_or("?"),
                age / 3600,
                report.data_bytes.unwrap_or(0)
            );
        }
        println!("  scratch: {}", report.scratch);
        for c in &report.checks {
            println!(
                "  [{}] {}: {}",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            );
        }
        if let Some(t) = report.restore_seconds {
            println!("  time to restore (RTO for this size): {t:.1}s");
        }
        for n in &notes {
            println!("  {n}");
        }
        println!(
            "{}",
            if report.success {
                "DRILL PASSED"
            } else {
                "DRILL FAILED"
            }
        );
    }
    if report.success {
        Ok(())
    } else {
        Err(anyhow!(
            "the drill failed: {}",
            report
                .error
                .clone()
                .unwrap_or_else(|| report.mismatches.join("; "))
        ))
    }
}

/// "restore drill of ID", or for the log drill "log drill (PITR): OLD + archived log = NEW".
fn drill_name(r: &drill::DrillReport) -> String {
    let id = r.backup_id.as_deref().unwrap_or("?");
    match (&r.base_backup_id, r.pitr) {
        (Some(base), true) => {
            format!("log drill (PITR): backup {base} + archived binary log = backup {id}")
        }
        (None, true) => format!("log drill (PITR) to backup {id}"),
        _ => format!("restore drill of {id}"),
    }
}

/// A seam for the fault tests: with `BACKUP_RESTORE_TEST_PAUSE=PATH`, restore creates
/// PATH once the file is verified and waits (at most two minutes) until PATH is removed
/// before it reads the file again, so that a test can change the file in between.
pub(crate) fn test_pause_before_pass_2() {
    let Some(p) = std::env::var_os("BACKUP_RESTORE_TEST_PAUSE") else {
        return;
    };
    let p = PathBuf::from(p);
    if std::fs::write(&p, b"verified\n").is_err() {
        return;
    }
    let t0 = Instant::now();
    while p.exists() && t0.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod cli_tests {
    use clap::CommandFactory;

    /// Every flag says what it does in `--help`.
    #[test]
    fn every_flag_has_a_help_text() {
        let c = super::Cli::command();
        let missing: Vec<String> = c
            .get_arguments()
            .filter(|a| {
                !a.is_hide_set()
                    && !matches!(a.get_id().as_str(), "help" | "version")
                    && a.get_help().is_none()
            })
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
