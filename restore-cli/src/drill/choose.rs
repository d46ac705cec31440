//! Which backup a drill (or `--into --backup ID|latest`) uses: a file, or the newest (or
//! named) complete backup of a source across the configured stores, fetched encrypted
//! into a private temp dir when the store is remote.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use backup_core::catalog;
use backup_core::config::{Config, StoreKind};
use backup_core::layout::{self, DATA_SUFFIX};
use backup_core::manifest::Manifest;
use backup_core::store::open_store;

use super::DrillArgs;
use crate::crypto::TrustedSigners;

/// Where the backup to drill is.
pub(crate) struct Chosen {
    pub(crate) file: PathBuf,
    pub(super) store: Option<String>,
    pub(super) source: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) manifest: Option<Manifest>,
    /// Where a copy fetched from a remote store (S3) was put; removed on drop.
    _fetched: Option<tempfile::TempDir>,
}

/// Downloads a backup's data, `.sha256` and manifest objects from a remote store into a
/// temp dir (the data is the encrypted message: nothing in plaintext reaches the disk).
fn fetch(
    store: &dyn backup_core::store::Store,
    prefix: &str,
    m: &Manifest,
) -> Result<(tempfile::TempDir, PathBuf)> {
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dir = tempfile::Builder::new()
        .prefix("restore-fetch-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temp dir in {} for the download", base.display()))?;
    for name in [
        m.data.name.clone(),
        layout::object_name(&m.backup_id, layout::SHA256_SUFFIX),
        layout::object_name(&m.backup_id, layout::SIGNATURE_SUFFIX),
        layout::object_name(&m.backup_id, layout::MANIFEST_SUFFIX),
    ] {
        let key = layout::key(prefix, &name);
        let r = store.open(&key).map_err(|e| anyhow!("{e}"))?;
        let _step = (name == m.data.name)
            .then(|| crate::progress::Step::start(&format!("downloading {name}"), m.data.size));
        let mut r = Counted(r);
        let path = dir.path().join(&name);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        std::io::copy(&mut r, &mut f).with_context(|| {
            format!(
                "downloading {} to {}; check free space in TMPDIR",
                store.describe(&key),
                path.display()
            )
        })?;
        f.sync_all()?;
    }
    let file = dir.path().join(&m.data.name);
    Ok((dir, file))
}

/// A reader that counts what it reads as the current step's progress.
struct Counted<R>(R);

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        crate::progress::add(n as u64);
        Ok(n)
    }
}

pub(crate) fn choose(
    cfg: Option<&Config>,
    a: &DrillArgs,
    trusted: &TrustedSigners,
) -> Result<Chosen> {
    if let Some(b) = a.backup {
        let p = Path::new(b);
        if p.is_file() {
            return Ok(Chosen {
                file: p.to_path_buf(),
                store: None,
                source: None,
                prefix: None,
                manifest: None,
                _fetched: None,
            });
        }
    }
    let cfg = cfg.ok_or_else(|| anyhow!("give --config (stores and sources) or --backup FILE"))?;
    let sources: Vec<_> = match a.source {
        Some(n) => vec![cfg
            .sources
            .iter()
            .find(|s| s.name == n)
            .ok_or_else(|| anyhow!("no source named {n:?} in {}", cfg.file.display()))?],
        None if cfg.sources.len() == 1 => vec![&cfg.sources[0]],
        None => bail!("several sources are configured; choose one with --source NAME"),
    };
    let src = sources[0];
    let stores: Vec<_> = cfg
        .stores
        .iter()
        .filter(|s| a.store.is_none_or(|n| s.name == n))
        .collect();
    if stores.is_empty() {
        bail!(
            "no store named {:?} in {}",
            a.store.unwrap_or(""),
            cfg.file.display()
        );
    }
    let want = a.backup.filter(|b| *b != "latest");
    let trust = trusted.trust();
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut candidate = None;
    for st in stores {
        let store = match open_store(st) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("restore: skipping store {}: {e}", st.name);
                continue;
            }
        };
        let list = match catalog::complete_backups(store.as_ref(), &src.prefix, &trust) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("restore: skipping store {}: {e}", st.name);
                continue;
            }
        };
        for (id, problem) in list.problems {
            problems.push((
                id.clone(),
                format!("store {}: backup {id}: {problem}", st.name),
            ));
        }
        let pick = match want {
            Some(id) => list.backups.into_iter().find(|m| m.backup_id == id),
            None => list.backups.into_iter().last(),
        };
        if let Some(m) = pick {
            if candidate
                .as_ref()
                .is_none_or(|(_, _, c): &(_, _, Manifest)| m.backup_id > c.backup_id)
            {
                candidate = Some((st, store, m));
            }
        }
    }
    // A backup that is asked for, or newer than the one found, but not trusted on some
    // store is reported; the drill never runs on an older backup in its place.
    let newer_bad: Vec<&String> = problems
        .iter()
        .filter(|(id, _)| match (want, &candidate) {
            (Some(w), None) => id == w,
            (Some(_), Some(_)) => false,
            (None, Some((_, _, m))) => *id > m.backup_id,
            (None, None) => true,
        })
        .map(|(_, p)| p)
        .collect();
    if !newer_bad.is_empty() {
        bail!(
            "{}; the drill refuses to run on another backup instead (scrub and repair replace a bad copy, or name an older backup with --backup ID)",
            newer_bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
        );
    }
    for (id, p) in &problems {
        if candidate
            .as_ref()
            .is_some_and(|(_, _, m)| m.backup_id == *id)
        {
            eprintln!("restore: warning: {p} (another store's copy is used)");
        }
    }
    if let Some((st, store, m)) = candidate {
        let (file, fetched) = match &st.kind {
            StoreKind::Local { path } => (
                path.path
                    .join(&src.prefix)
                    .join(format!("{}{DATA_SUFFIX}", m.backup_id)),
                None,
            ),
            StoreKind::S3(_) => {
                let (dir, file) = fetch(store.as_ref(), &src.prefix, &m)?;
                (file, Some(dir))
            }
        };
        return Ok(Chosen {
            file,
            store: Some(st.name.clone()),
            source: Some(src.name.clone()),
            prefix: Some(src.prefix.clone()),
            manifest: Some(m),
            _fetched: fetched,
        });
    }
    bail!(
        "no complete backup {}of source {} in the configured stores",
        want.map(|w| format!("{w} ")).unwrap_or_default(),
        src.name
    )
}
