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
use backup_core::format::{Item, Splitter, Trailer, COMPLETION_PREFIX, DEFAULT_MAX_STATEMENT};
use backup_core::manifest::Manifest;

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
    let got = pin_file(data).with_context(|| format!("cannot read backup {}", data.display()))?;
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
}

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
) -> Result<Verified> {
    let fail = |e: &dyn std::fmt::Display| {
        anyhow!(
            "{} failed verification: {e}; nothing was restored",
            path.display()
        )
    };
    let mut sp = Splitter::with_limit(
        open_sql(path, pins, dpo, trusted).map_err(|e| fail(&format!("{e:#}")))?,
        limit,
    );
    let mut trailer = Trailer::default();
    let mut statements = 0u64;
    let mut largest = 0usize;
    let mut ends_complete = false;
    while let Some(item) = sp.next_item().map_err(|e| fail(&e))? {
        match item {
            Item::Statement(s) => {
                if trailer.completed.is_some() {
                    return Err(fail(&"statements follow the completion line"));
                }
                statements += 1;
                largest = largest.max(s.len() + 1);
                ends_complete = false;
            }
            Item::Comment(c) => {
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
    })
}

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

/// Which statements a `--database` selection replays.
pub struct Selection {
    only: Option<Vec<String>>,
    current: Option<String>,
    in_users: bool,
}

impl Selection {
    pub fn new(only: Option<Vec<String>>) -> Self {
        Selection {
            only,
            current: None,
            in_users: false,
        }
    }

    /// Section titles (`-- Title` between `--` lines) switch the account sections on and off.
    pub fn comment(&mut self, c: &str) {
        if c == "--"
            || c.starts_with("-- trailer")
            || c.starts_with("-- Trailer")
            || c.starts_with("-- Dump completed")
        {
            return;
        }
        self.in_users = c.starts_with(backup_core::format::USERS_SECTION)
            || c.starts_with(backup_core::format::GRANTS_SECTION);
    }

    pub fn wants(&mut self, stmt: &[u8]) -> bool {
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
fn leading_ident(s: &str) -> Option<String> {
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
        let mut s = Selection::new(Some(vec!["a`b".into()]));
        assert!(s.wants(b"SET NAMES utf8mb4"));
        assert!(!s.wants(b"CREATE DATABASE `other` /*!40100 x */"));
        assert!(!s.wants(b"USE `other`"));
        assert!(!s.wants(b"INSERT INTO t VALUES (1)"));
        assert!(s.wants(b"CREATE DATABASE `a``b`"));
        assert!(s.wants(b"USE `a``b`"));
        assert!(s.wants(b"INSERT INTO t VALUES (1)"));
        s.comment("-- Grants");
        assert!(!s.wants(b"GRANT SELECT ON `a``b`.* TO `x`@`%`"));
        assert!(s.wants(b"SET SQL_MODE=@OLD_SQL_MODE"));
        s.comment("--");
        s.comment("-- Views");
        assert!(s.wants(b"CREATE VIEW v AS SELECT 1"));
        s.comment("-- Users and roles");
        assert!(!s.wants(b"CREATE USER IF NOT EXISTS `x`@`%`"));
        let mut all = Selection::new(None);
        assert!(all.wants(b"anything"));
        assert_eq!(leading_ident(" `x``y` rest"), Some("x`y".into()));
    }
}
