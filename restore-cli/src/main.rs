//! `restore`: verifies, decrypts and replays backups made by backup-agent. Runs where the
//! DPO secret key is (the DPO's workstation, or a one-shot drill container).

mod crypto;
mod drill;
mod into;
mod keys;
mod list;
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

use anyhow::{anyhow, Result};
use clap::{ArgGroup, Parser};

use backup_core::config::Config;
use backup_core::secret::{read_secret_file, Secret};

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
        return list::list(&cli, cfg.as_ref());
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
        return drill::command::verify(&cli, cfg.as_ref()).await;
    }
    let until =
        pitr::parse_until(cli.until.as_deref(), cli.until_gtid.as_deref()).map_err(usage)?;
    if let Some(until) = until {
        return into::restore_until(&cli, cfg.as_ref(), until).await;
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
        Some(t) => Some(into::preflight(&cli, cfg.as_ref(), t, &file, &keys).await?),
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
    let (only, wanted) = into::selection(&cli, &v)?;
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
        into::prepare_target(&cli, early.expect("--into given"), &target, &wanted, &v).await?;
    test_pause_before_pass_2();
    // Pass 2: replay.
    let sel = restore::Selection::new(only, policy).with_rename(into::renaming(&cli));
    let n = into::replay_dump(
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
        into::renaming(cli),
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
