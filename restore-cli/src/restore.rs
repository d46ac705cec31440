//! Verified restore: every check runs over the whole file before the first byte goes
//! anywhere. Pass 0 hashes the file against its `.sha256` file (and the manifest, when it
//! is beside it) and pins each of its blocks; pass 1 decrypts, checks MDC and the trusted
//! agent signature, gunzips and parses the whole SQL stream up to its completion line;
//! only then pass 2 decrypts again and replays (or writes the SQL out). Passes 1 and 2
//! read the file through the pins (see `pinned`), so they see exactly the bytes pass 0
//! hashed, or stop.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use backup_core::gzip::ParallelGunzip;

use crate::pinned::{pin_file, Checker, Pins};
use backup_core::format::grants::{created_account, definer, grantee, Account};
use backup_core::format::{Item, Splitter, Trailer, COMPLETION_PREFIX, DEFAULT_MAX_STATEMENT};
use backup_core::manifest::Manifest;
use std::collections::HashSet;

use crate::crypto::{self, DpoKey, Outcome, TrustedSigners};
use backup_core::checksum;
use backup_core::layout;

/// The files of one backup.
#[derive(Debug)]
pub struct Located {
    pub file_name: String,
    pub manifest: Option<Manifest>,
    pub expected_sha256: String,
    pub size: u64,
    /// The file as hashed: later passes read only these bytes.
    pub pins: Pins,
    /// The longest statement the passes accept (see [`statement_limit`]).
    pub max_statement: usize,
}

/// The longest statement a restore accepts: what the manifest records as the dump's
/// largest (but at least 16 MiB: routine and view bodies are not counted there), else the
/// default. Reading stops at a longer one, so memory stays bounded on any input.
pub fn statement_limit(manifest: Option<&Manifest>) -> usize {
    match manifest {
        Some(m) => usize::try_from(m.largest_statement_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(64 << 10)
            .max(16 << 20),
        None => DEFAULT_MAX_STATEMENT,
    }
}

/// The signed manifest beside a backup's data file, if its name is a backup id's and a
/// manifest is there (read again, and the data checked against it, by pass 0).
pub fn manifest_of(data: &Path, trusted: &TrustedSigners) -> Result<Option<Manifest>> {
    let Some(name) = data.file_name().map(|f| f.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    match layout::backup_id_of(&name) {
        Some(id) => read_manifest_beside(data, id, trusted),
        None => Ok(None),
    }
}

/// The manifest beside a backup's data file, if there is one: it counts only with a good
/// signature by a trusted agent key beside it, and only if it is the manifest of backup
/// `id` (the one the file's name says).
fn read_manifest_beside(
    data: &Path,
    id: &str,
    trusted: &TrustedSigners,
) -> Result<Option<Manifest>> {
    let mp = data.with_file_name(layout::object_name(id, layout::MANIFEST_SUFFIX));
    let bytes = match read_small(&mp, backup_core::catalog::MAX_MANIFEST_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read manifest {}", mp.display())),
    };
    let sp = data.with_file_name(layout::object_name(id, layout::SIGNATURE_SUFFIX));
    let sig = match read_small(&sp, backup_core::signature::MAX_SIGNATURE_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "manifest {} has no signature beside it ({} is missing); an unsigned manifest is not trusted: fetch the backup's objects again, or restore the data file alone",
            mp.display(),
            sp.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", sp.display())),
    };
    let signed = backup_core::catalog::check_signed(
        &mp.display().to_string(),
        id,
        bytes,
        sig,
        &trusted.trust(),
    )
    .map_err(|e| anyhow!("{e}; nothing was restored"))?;
    Ok(Some(signed.manifest))
}

/// Reads a small file, refusing one larger than `limit` bytes.
fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut b = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut b)?;
    if b.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {limit} bytes, not one of ours"
        )));
    }
    Ok(b)
}

/// Checks that the dump is the backup that was asked for: the identity in its signed
/// header must name the backup id of the file's name (when it has one), agree with the
/// signed manifest (id, source, databases), name `source` when one was asked for, and
/// list the databases its trailer lists. A renamed or substituted backup fails here,
/// before anything reaches a server.
pub fn check_identity(
    located: &Located,
    v: &Verified,
    source: Option<&str>,
) -> Result<backup_core::format::Identity> {
    let fail = |what: String| {
        anyhow!(
            "{} is not the backup it claims to be: {what}; nothing was restored (a renamed or substituted backup: fetch the right one)",
            located.file_name
        )
    };
    let id = v.trailer.identity.clone().ok_or_else(|| {
        fail("its dump names no backup identity in its header (not made by a backup-agent that signs its identity)".into())
    })?;
    if let Some(name_id) = layout::backup_id_of(&located.file_name) {
        if id.backup_id != name_id {
            return Err(fail(format!(
                "the file is named {name_id}, but the dump inside is backup {}",
                id.backup_id
            )));
        }
    }
    if let Some(m) = &located.manifest {
        if m.backup_id != id.backup_id || m.source != id.source || m.databases != id.databases {
            return Err(fail(format!(
                "its manifest says backup {} of source {} with databases [{}], the dump inside says backup {} of source {} with databases [{}]",
                m.backup_id, m.source, m.databases.join(", "), id.backup_id, id.source, id.databases.join(", ")
            )));
        }
    }
    if let Some(s) = source {
        if id.source != s {
            return Err(fail(format!(
                "source {s} was asked for, the dump is of source {}",
                id.source
            )));
        }
    }
    if v.trailer.databases != id.databases {
        return Err(fail(format!(
            "its header names databases [{}], its trailer [{}]",
            id.databases.join(", "),
            v.trailer.databases.join(", ")
        )));
    }
    Ok(id)
}

/// Pass 0: the data file, its `.sha256` file, and the manifest if present; hashes the data.
pub fn check_checksums(data: &Path, trusted: &TrustedSigners) -> Result<Located> {
    let file_name = data
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{} is not a file name", data.display()))?;
    let sha_path = PathBuf::from(format!("{}.sha256", data.display()));
    let sha_text = std::fs::read_to_string(&sha_path).with_context(|| {
        format!("cannot read the checksum file {} that belongs beside the backup; a backup is not trusted without it", sha_path.display())
    })?;
    let expected = checksum::parse_sha256_line(&sha_text, &file_name).ok_or_else(|| {
        anyhow!(
            "checksum file {} is malformed or names another file",
            sha_path.display()
        )
    })?;
    let manifest = match layout::backup_id_of(&file_name) {
        Some(id) => read_manifest_beside(data, id, trusted)?,
        None => None,
    };
    let total = std::fs::metadata(data).map(|m| m.len()).unwrap_or(0);
    let step = crate::progress::Step::start("checking the checksum", total);
    let got = pin_file(data).with_context(|| format!("cannot read backup {}", data.display()))?;
    drop(step);
    if got.sha256 != expected {
        bail!(
            "checksum mismatch: {} has sha256 {}, but {} says {}; the file is corrupt or was changed: fetch another copy",
            data.display(),
            got.sha256,
            sha_path.display(),
            expected
        );
    }
    if let Some(m) = &manifest {
        if m.data.sha256 != got.sha256 || m.data.size != got.size {
            bail!(
                "the manifest of {} records {} bytes sha256 {}, the file has {} bytes sha256 {}; fetch another copy",
                m.backup_id,
                m.data.size,
                m.data.sha256,
                got.size,
                got.sha256
            );
        }
    }
    Ok(Located {
        file_name,
        expected_sha256: expected,
        size: got.size,
        max_statement: statement_limit(manifest.as_ref()),
        pins: got,
        manifest,
    })
}

/// What pass 1 learned.
#[derive(Debug)]
pub struct Verified {
    pub trailer: Trailer,
    pub outcome: Outcome,
    pub statements: u64,
    pub largest_statement: usize,
    pub sql_bytes: u64,
    /// The accounts and roles the dump creates, in its order.
    pub accounts: Vec<Account>,
    /// The DEFINERs of its views, routines, triggers and events.
    pub definers: std::collections::BTreeSet<Account>,
    /// With `--as`: the objects that cannot be renamed, and why.
    pub rename_problems: Vec<String>,
}

/// The most accounts a dump may create: memory stays bounded on any input.
const MAX_ACCOUNTS: usize = 1_000_000;

type SqlReader = BufReader<ParallelGunzip<crypto::Opened>>;

pub(crate) fn open_sql(
    path: &Path,
    pins: &Pins,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
) -> Result<SqlReader> {
    let f = Checker::open(path, pins).with_context(|| format!("cannot open {}", path.display()))?;
    let opened = crypto::open(f, dpo, trusted)
        .with_context(|| format!("cannot decrypt {}", path.display()))?;
    Ok(BufReader::with_capacity(
        1 << 20,
        ParallelGunzip::new(opened, inflate_threads()),
    ))
}

/// Threads that inflate a dump's gzip members: the cores this process may use.
fn inflate_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

pub(crate) fn finish_sql(r: SqlReader) -> Result<Outcome> {
    r.into_inner().into_inner().finish()
}

/// Pass 1: decrypt, check, parse everything; nothing is written anywhere.
pub fn verify_pass(
    path: &Path,
    pins: &Pins,
    limit: usize,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    mut rename: Option<crate::rename::Rename>,
) -> Result<Verified> {
    let fail = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{} failed verification: {e}; nothing was restored",
            path.display()
        )
    };
    let _step = crate::progress::Step::start("verifying", pins.size);
    let mut sp = Splitter::with_limit(
        open_sql(path, pins, dpo, trusted).map_err(|e| fail(&format!("{e:#}")))?,
        limit,
    );
    let mut trailer = Trailer::default();
    let mut statements = 0u64;
    let mut largest = 0usize;
    let mut ends_complete = false;
    let mut accounts = Vec::new();
    let mut definers = std::collections::BTreeSet::new();
    let mut in_users = false;
    let mut rename_problems = Vec::new();
    while let Some(item) = sp.next_item().map_err(|e| fail(&e))? {
        match item {
            Item::Statement(s) => {
                if trailer.completed.is_some() {
                    return Err(fail(&"statements follow the completion line"));
                }
                if let Some(r) = rename.as_mut().filter(|_| !in_users) {
                    if let Err(e) = r.rewrite(&s) {
                        if rename_problems.len() < MAX_RENAME_PROBLEMS {
                            rename_problems.push(e);
                        }
                    }
                }
                let head = if in_users || s.trim_ascii_start().starts_with(b"CREATE ") {
                    String::from_utf8_lossy(&s[..s.len().min(4096)])
                } else {
                    std::borrow::Cow::Borrowed("")
                };
                if let Some(d) = definer(head.trim_start()) {
                    if definers.len() == MAX_ACCOUNTS {
                        return Err(fail(&format!(
                            "the dump names more than {MAX_ACCOUNTS} definers"
                        )));
                    }
                    definers.insert(d);
                }
                if in_users {
                    if let Some(a) = created_account(head.trim_start()) {
                        if accounts.len() == MAX_ACCOUNTS {
                            return Err(fail(&format!(
                                "the dump creates more than {MAX_ACCOUNTS} accounts"
                            )));
                        }
                        accounts.push(a);
                    }
                }
                statements += 1;
                largest = largest.max(s.len() + 1);
                ends_complete = false;
            }
            Item::Comment(c) => {
                if let Some(users) = accounts_section(&c) {
                    in_users = users;
                }
                trailer.observe(&c).map_err(|e| fail(&e))?;
                ends_complete = c.starts_with(COMPLETION_PREFIX);
            }
        }
    }
    let sql_bytes = sp.bytes_read;
    let outcome = finish_sql(sp.into_inner()).map_err(|e| fail(&e))?;
    if !ends_complete {
        return Err(fail(
            &"the dump has no completion line at its end (incomplete or truncated dump)",
        ));
    }
    Ok(Verified {
        trailer,
        outcome,
        statements,
        largest_statement: largest,
        sql_bytes,
        accounts,
        definers,
        rename_problems,
    })
}

/// Objects `--as` cannot rename that are named at most (the count says the rest).
const MAX_RENAME_PROBLEMS: usize = 20;

/// Pass 2 for `--decrypt`: writes the gzip stream or the SQL to `out` ("-" is stdout).
/// A file is written as a new temp file beside it (mode 0600, never through an existing
/// name or link), then linked to `out`, which must not exist: plaintext is readable by
/// this user alone and never lands in a file someone else prepared.
pub fn write_out(
    path: &Path,
    pins: &Pins,
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    out: &Path,
) -> Result<u64> {
    let gzip = out.extension().is_some_and(|e| e == "gz");
    let to_stdout = out.as_os_str() == "-";
    if !to_stdout && std::fs::symlink_metadata(out).is_ok() {
        bail!(
            "{} already exists; remove it or choose another name (restore never overwrites)",
            out.display()
        );
    }
    let f = Checker::open(path, pins)?;
    let mut opened = crypto::open(f, dpo, trusted)?;
    let tmp = if to_stdout {
        None
    } else {
        let name = out
            .file_name()
            .ok_or_else(|| anyhow!("-o needs a file name"))?
            .to_string_lossy()
            .into_owned();
        Some(out.with_file_name(format!(".{name}.partial.{}", std::process::id())))
    };
    let mut sink: Box<dyn Write> = match &tmp {
        None => Box::new(std::io::stdout().lock()),
        Some(t) => Box::new(private_new_file(t)?),
    };
    let result = (|| -> Result<u64> {
        let n = if gzip {
            let n = std::io::copy(&mut opened, &mut sink)?;
            opened.finish()?;
            n
        } else {
            let mut gz = ParallelGunzip::new(opened, inflate_threads());
            let n = std::io::copy(&mut gz, &mut sink)?;
            gz.into_inner().finish()?;
            n
        };
        sink.flush()?;
        Ok(n)
    })();
    drop(sink);
    match (result, tmp) {
        (Ok(n), Some(t)) => {
            let linked = std::fs::hard_link(&t, out);
            let _ = std::fs::remove_file(&t);
            linked.with_context(|| {
                format!(
                    "cannot put the output in place at {} (it must not exist)",
                    out.display()
                )
            })?;
            Ok(n)
        }
        (Ok(n), None) => Ok(n),
        (Err(e), t) => {
            if let Some(t) = t {
                let _ = std::fs::remove_file(t);
            }
            Err(e)
        }
    }
}

/// Creates a new file readable and writable by this user only; fails if anything is at
/// `path`, a symbolic link included (O_CREAT|O_EXCL never follows one).
fn private_new_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// What a restore does with the accounts of a dump (its users, roles and grants).
#[derive(Debug, Clone)]
pub enum AccountPolicy {
    /// Leaves them out: `restore --into` without `--accounts`.
    Skip,
    /// Creates the accounts the target does not have, with their grants. Those in
    /// `existing` are left as they are, or with `replace` given the backup's password and
    /// options (`ALTER USER`) and its grants (added to the privileges they hold).
    Create {
        existing: HashSet<Account>,
        replace: bool,
    },
}

/// Which statements a restore replays: `--database` selects databases, the account policy
/// the account statements.
pub struct Selection {
    only: Option<Vec<String>>,
    accounts: AccountPolicy,
    current: Option<String>,
    in_users: bool,
    /// `--as`: the selected database under its new name.
    rename: Option<crate::rename::Rename>,
    /// Why a statement could not be renamed (pass 1 checked them all, so never expected).
    refused: Option<String>,
}

/// Whether a comment line titles a section of the dump (true: an accounts section), or is
/// another comment (None).
pub fn accounts_section(c: &str) -> Option<bool> {
    if c == "--"
        || c.starts_with("-- trailer")
        || c.starts_with("-- Trailer")
        || c.starts_with("-- Dump completed")
    {
        return None;
    }
    Some(
        c.starts_with(backup_core::format::USERS_SECTION)
            || c.starts_with(backup_core::format::GRANTS_SECTION),
    )
}

/// A statement that creates or changes an account: what the account policy decides on.
fn is_account_statement(s: &str) -> bool {
    [
        "CREATE USER ",
        "CREATE ROLE ",
        "GRANT ",
        "SET DEFAULT ROLE ",
        "REVOKE ",
    ]
    .iter()
    .any(|k| s.starts_with(k))
}

impl Selection {
    pub fn new(only: Option<Vec<String>>, accounts: AccountPolicy) -> Self {
        Selection {
            only,
            accounts,
            current: None,
            in_users: false,
            rename: None,
            refused: None,
        }
    }

    /// Replays the selected database under another name (`--as`).
    pub fn with_rename(mut self, rename: Option<crate::rename::Rename>) -> Self {
        self.rename = rename;
        self
    }

    /// Why the last statement was refused, if it was.
    pub fn refusal(&mut self) -> Option<String> {
        self.refused.take()
    }

    /// Section titles (`-- Title` between `--` lines) switch the account sections on and off.
    pub fn comment(&mut self, c: &str) {
        if let Some(users) = accounts_section(c) {
            self.in_users = users;
        }
    }

    /// The statement to replay for `stmt`, if any: account statements of an existing
    /// account that is replaced become `ALTER USER`.
    pub fn take(&mut self, stmt: Vec<u8>) -> Option<Vec<u8>> {
        if self.in_users {
            let s = String::from_utf8_lossy(&stmt[..stmt.len().min(4096)]);
            let s = s.trim_start();
            if is_account_statement(s) {
                if self.only.is_some() {
                    return None;
                }
                let AccountPolicy::Create { existing, replace } = &self.accounts else {
                    return None;
                };
                if let Some(a) = created_account(s) {
                    if !existing.contains(&a) {
                        return Some(stmt);
                    }
                    if !*replace || a.host.is_none() {
                        return None;
                    }
                    // CREATE USER IF NOT EXISTS x <options> -> ALTER USER x <options>.
                    let head = stmt.len() - s.len() + "CREATE USER IF NOT EXISTS ".len();
                    return stmt
                        .get(head..)
                        .filter(|_| s.starts_with("CREATE USER IF NOT EXISTS "))
                        .map(|rest| [b"ALTER USER ".as_slice(), rest].concat());
                }
                return match grantee(s) {
                    Some(a) if existing.contains(&a) && !*replace => None,
                    _ => Some(stmt),
                };
            }
        }
        if !self.wants(&stmt) {
            return None;
        }
        match self.rename.as_mut().map(|r| r.rewrite(&stmt)) {
            None | Some(Ok(None)) => Some(stmt),
            Some(Ok(Some(renamed))) => Some(renamed),
            Some(Err(e)) => {
                self.refused = Some(format!("--as: {e}"));
                None
            }
        }
    }

    fn wants(&mut self, stmt: &[u8]) -> bool {
        let Some(only) = &self.only else { return true };
        let s = String::from_utf8_lossy(&stmt[..stmt.len().min(512)]);
        let upper = s.trim_start().to_ascii_uppercase();
        if let Some(rest) = strip_keyword(&s, &upper, "USE ") {
            self.current = leading_ident(rest);
            return self.current.as_ref().is_some_and(|d| only.contains(d));
        }
        if let Some(rest) = strip_keyword(&s, &upper, "CREATE DATABASE ") {
            return leading_ident(rest).is_some_and(|d| only.contains(&d));
        }
        if upper.starts_with("SET ") {
            return true;
        }
        !self.in_users && self.current.as_ref().is_some_and(|d| only.contains(d))
    }
}

fn strip_keyword<'a>(s: &'a str, upper: &str, kw: &str) -> Option<&'a str> {
    let t = s.trim_start();
    upper.starts_with(kw).then(|| &t[kw.len()..])
}

/// The first backtick-quoted identifier of `s`.
pub(crate) fn leading_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let rest = s.strip_prefix('`')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '`' {
            if chars.peek() == Some(&'`') {
                chars.next();
                out.push('`');
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_use_and_skips_users() {
        let mut s = Selection::new(Some(vec!["a`b".into()]), AccountPolicy::Skip);
        let wants = |s: &mut Selection, stmt: &[u8]| s.take(stmt.to_vec()).is_some();
        assert!(wants(&mut s, b"SET NAMES utf8mb4"));
        assert!(!wants(&mut s, b"CREATE DATABASE `other` /*!40100 x */"));
        assert!(!wants(&mut s, b"USE `other`"));
        assert!(!wants(&mut s, b"INSERT INTO t VALUES (1)"));
        assert!(wants(&mut s, b"CREATE DATABASE `a``b`"));
        assert!(wants(&mut s, b"USE `a``b`"));
        assert!(wants(&mut s, b"INSERT INTO t VALUES (1)"));
        s.comment("-- Grants");
        assert!(!wants(&mut s, b"GRANT SELECT ON `a``b`.* TO `x`@`%`"));
        assert!(!wants(&mut s, b"SET DEFAULT ROLE `r` FOR `x`@`%`"));
        assert!(wants(&mut s, b"SET SQL_MODE=@OLD_SQL_MODE"));
        s.comment("--");
        s.comment("-- Views");
        assert!(wants(&mut s, b"CREATE VIEW v AS SELECT 1"));
        s.comment("-- Users and roles");
        assert!(!wants(&mut s, b"CREATE USER IF NOT EXISTS `x`@`%`"));
        let mut all = Selection::new(None, AccountPolicy::Skip);
        assert!(wants(&mut all, b"anything"));
        assert_eq!(leading_ident(" `x``y` rest"), Some("x`y".into()));
    }

    #[test]
    fn accounts_are_replayed_only_as_the_policy_says() {
        let create = b"CREATE USER IF NOT EXISTS `old`@`%` IDENTIFIED BY PASSWORD '*AB' WITH MAX_QUERIES_PER_HOUR 5".to_vec();
        let statements: [&[u8]; 7] = [
            &create,
            b"CREATE USER IF NOT EXISTS `new`@`%` IDENTIFIED BY PASSWORD '*CD'",
            b"CREATE ROLE IF NOT EXISTS `r`",
            b"GRANT SELECT ON `d`.* TO `old`@`%`",
            b"GRANT `r` TO `new`@`%`",
            b"SET DEFAULT ROLE `r` FOR `old`@`%`",
            b"SET SQL_MODE=@OLD_SQL_MODE",
        ];
        let run = |policy: AccountPolicy| -> Vec<String> {
            let mut s = Selection::new(None, policy);
            s.comment("-- Users and roles");
            statements
                .iter()
                .filter_map(|st| s.take(st.to_vec()))
                .map(|b| String::from_utf8(b).unwrap())
                .collect()
        };
        assert_eq!(run(AccountPolicy::Skip), ["SET SQL_MODE=@OLD_SQL_MODE"]);
        let existing: HashSet<Account> = [
            Account {
                user: "old".into(),
                host: Some("%".into()),
            },
            Account {
                user: "r".into(),
                host: None,
            },
        ]
        .into();
        let kept = run(AccountPolicy::Create {
            existing: existing.clone(),
            replace: false,
        });
        assert_eq!(
            kept,
            [
                "CREATE USER IF NOT EXISTS `new`@`%` IDENTIFIED BY PASSWORD '*CD'",
                "GRANT `r` TO `new`@`%`",
                "SET SQL_MODE=@OLD_SQL_MODE"
            ]
        );
        let replaced = run(AccountPolicy::Create {
            existing,
            replace: true,
        });
        assert_eq!(
            replaced[0],
            "ALTER USER `old`@`%` IDENTIFIED BY PASSWORD '*AB' WITH MAX_QUERIES_PER_HOUR 5"
        );
        assert_eq!(replaced.len(), 6, "{replaced:?}");
        assert!(
            !replaced.iter().any(|s| s.starts_with("CREATE ROLE")),
            "{replaced:?}"
        );
    }
}
