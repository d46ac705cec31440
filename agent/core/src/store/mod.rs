//! Where backups are kept.
//!
//! The contract every store keeps:
//! - An object becomes visible under its final name only when it is complete: the writer
//!   commits it after the last byte is durable (fsync for files).
//! - A failed or abandoned write leaves nothing visible: dropping a writer without
//!   committing removes whatever it wrote.
//! - Objects are never overwritten: committing a name that already exists fails and leaves
//!   the existing object untouched.
//! - Keys are relative paths with `/` separators (`<prefix>/<file name>`).
//! - Removing an object removes every version of it (on a versioned bucket, by version
//!   id: a plain delete would only add a delete marker and free nothing). Callers check
//!   `stat().lock_until` first: a store never tries to delete under an object lock.
//! - All methods block: call them from blocking threads (`spawn_blocking`), never from
//!   an async task directly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::{StoreConfig, StoreKind};

pub mod s3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: {action} {key}: {source}")]
    Io {
        store: String,
        action: &'static str,
        key: String,
        source: io::Error,
    },
    #[error("store {store}: directory {path} does not exist; create it, or mount the store there (a missing mount point is never replaced by a directory on the root disk)")]
    Missing { store: String, path: String },
    #[error("store {store}: {key} already exists; refusing to overwrite it")]
    Exists { store: String, key: String },
    #[error("store {store}: {action} {key}: {message}")]
    Remote {
        store: String,
        action: &'static str,
        key: String,
        message: String,
    },
}

impl StoreError {
    /// Whether the failure is the object's absence.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What a store knows about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The sha256 the store keeps with the object (S3 metadata), when it has one.
    pub sha256: Option<String>,
    /// An identifier that changes when the object is replaced (S3 ETag, or None).
    pub etag: Option<String>,
    pub modified: Option<DateTime<Utc>>,
    /// Object lock: no deletion before this time.
    pub lock_until: Option<DateTime<Utc>>,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// The writing end of one object.
pub trait ObjectWriter: Write + Send + Sync {
    /// Makes the object durable and visible under its final name.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

pub trait Store: Send + Sync {
    fn name(&self) -> &str;
    /// Starts writing a new object; fails if `key` exists. `sha256` is the content's
    /// digest when the caller knows it up front (a copy from another store): the store
    /// keeps it with the object and may have the server check it.
    fn create_with(
        &self,
        key: &str,
        sha256: Option<&str>,
    ) -> Result<Box<dyn ObjectWriter>, StoreError>;
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        self.create_with(key, None)
    }
    /// Reads a whole object as a stream.
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError>;
    /// What the store knows of an object, or None if it does not exist.
    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.stat(key)?.is_some())
    }
    /// The size of an object, or None if it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.stat(key)?.map(|i| i.size))
    }
    /// Entries directly under `prefix` (file names only, our temp files included), sorted.
    fn list_entries(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Names directly under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_entries(prefix)?
            .into_iter()
            .map(|e| e.name)
            .collect())
    }
    /// Removes an object (every version of it); removing one that does not exist is not
    /// an error.
    fn remove(&self, key: &str) -> Result<(), StoreError>;
    /// Where an object lives, for messages.
    fn describe(&self, key: &str) -> String;
    /// Whether what this store writes is under object lock (an immutable copy).
    fn immutable(&self) -> bool {
        false
    }
    /// Removes our own debris under `prefix` older than `grace`: temp files of writers
    /// that are gone, pending multipart uploads of objects whose name (the part after
    /// the prefix) `ours` accepts. Returns what was removed.
    fn clean_debris(
        &self,
        prefix: &str,
        grace: std::time::Duration,
        ours: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, StoreError>;
}

/// Builds the configured store. Building an S3 client reads its credential files.
pub fn open_store(cfg: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    Ok(match &cfg.kind {
        StoreKind::Local { path } => {
            if !path.path.is_dir() {
                return Err(StoreError::Missing {
                    store: cfg.name.clone(),
                    path: path.path.display().to_string(),
                });
            }
            Box::new(LocalStore {
                name: cfg.name.clone(),
                root: path.path.clone(),
            })
        }
        StoreKind::S3(s3) => Box::new(crate::store::s3::S3Store::new(&cfg.name, s3)?),
    })
}

/// A directory on local disk. Objects are written to a hidden temp file in the target
/// directory, fsynced, then hard-linked to the final name (which fails if the name exists,
/// unlike rename) and the temp name removed; the directory is fsynced after.
pub struct LocalStore {
    name: String,
    root: PathBuf,
}

impl LocalStore {
    pub fn new(name: &str, root: &Path) -> LocalStore {
        LocalStore {
            name: name.into(),
            root: root.to_path_buf(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(&self, action: &'static str, key: &str) -> impl FnOnce(io::Error) -> StoreError {
        let (store, key) = (self.name.clone(), key.to_string());
        move |source| StoreError::Io {
            store,
            action,
            key,
            source,
        }
    }
}

/// Prefix of temp files; anything starting with it is our debris.
pub const TEMP_PREFIX: &str = ".tmp-";

struct LocalWriter {
    store: String,
    key: String,
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl LocalWriter {
    /// The error with where it happened (a full disk names the file and its directory).
    fn located(&self, e: io::Error) -> io::Error {
        let hint = if e.raw_os_error() == Some(28) {
            "; free space on that file system (nothing partial is kept)"
        } else {
            ""
        };
        io::Error::new(
            e.kind(),
            format!(
                "writing {} ({}): {e}{hint}",
                self.dest.display(),
                self.tmp.display()
            ),
        )
    }
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.file.as_mut().expect("open until commit").write(buf);
        r.map_err(|e| self.located(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.file.as_mut().expect("open until commit").flush();
        r.map_err(|e| self.located(e))
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let io = |action: &'static str, key: &str| {
            let (store, key) = (self.store.clone(), key.to_string());
            move |source| StoreError::Io {
                store,
                action,
                key,
                source,
            }
        };
        let file = self.file.take().expect("open until commit");
        file.sync_all().map_err(io("syncing", &self.key))?;
        drop(file);
        match fs::hard_link(&self.tmp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Exists {
                    store: self.store.clone(),
                    key: self.key.clone(),
                })
            }
            Err(e) => return Err(io("publishing", &self.key)(e)),
        }
        let _ = fs::remove_file(&self.tmp);
        if let Some(dir) = self.dest.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing directory of", &self.key))?;
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Not committed (or commit failed): the temp file must not stay.
        self.file.take();
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Store for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn create_with(
        &self,
        key: &str,
        _sha256: Option<&str>,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let dest = self.path(key);
        if dest.exists() {
            return Err(StoreError::Exists {
                store: self.name.clone(),
                key: key.into(),
            });
        }
        let dir = dest.parent().expect("keys have a file name").to_path_buf();
        fs::create_dir_all(&dir).map_err(self.io("creating directory for", key))?;
        let fname = dest
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!("{TEMP_PREFIX}{fname}.{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(self.io("creating temp file for", key))?;
        Ok(Box::new(LocalWriter {
            store: self.name.clone(),
            key: key.into(),
            tmp,
            dest,
            file: Some(file),
        }))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        Ok(Box::new(
            File::open(self.path(key)).map_err(self.io("opening", key))?,
        ))
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                size: m.len(),
                modified: m.modified().ok().map(DateTime::<Utc>::from),
                ..ObjectInfo::default()
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("inspecting", key)(e)),
        }
    }

    fn list_entries(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let dir = self.path(prefix);
        let mut v = Vec::new();
        match fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(self.io("listing", prefix))?;
                    let Ok(m) = e.metadata() else { continue };
                    if !m.is_file() {
                        continue;
                    }
                    v.push(Entry {
                        name: e.file_name().to_string_lossy().into_owned(),
                        size: m.len(),
                        modified: m.modified().ok().map(DateTime::<Utc>::from),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("listing", prefix)(e)),
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn clean_debris(
        &self,
        prefix: &str,
        grace: std::time::Duration,
        ours: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut removed = Vec::new();
        let now = Utc::now();
        for e in self.list_entries(prefix)? {
            let Some(rest) = e.name.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            // `.tmp-<name>.<pid>`: only temp files of names the caller owns.
            if !rest.rsplit_once('.').is_some_and(|(name, _)| ours(name)) {
                continue;
            }
            let pid = rest.rsplit('.').next().and_then(|p| p.parse::<u32>().ok());
            let writer_gone = pid.is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            });
            let old = e
                .modified
                .is_some_and(|m| (now - m).to_std().unwrap_or_default() > grace);
            if writer_gone || (old && pid != Some(std::process::id())) {
                let key = format!("{prefix}/{}", e.name);
                self.remove(&key)?;
                removed.push(key);
            }
        }
        Ok(removed)
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io("removing", key)(e)),
            _ => Ok(()),
        }
    }

    fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }
}

/// Removes temp files of writers whose process is gone (debris of a crash or kill -9).
pub fn clean_local_debris(root: &Path) -> usize {
    let mut removed = 0;
    let Ok(dirs) = fs::read_dir(root) else {
        return 0;
    };
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    todo.extend(dirs.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    for dir in todo {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.rsplit('.').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
                && fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// Writes a small object in one go.
pub fn put_bytes(store: &dyn Store, key: &str, data: &[u8]) -> Result<(), StoreError> {
    let mut w = store.create(key)?;
    w.write_all(data).map_err(|source| StoreError::Io {
        store: store.name().into(),
        action: "writing",
        key: key.into(),
        source,
    })?;
    w.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_only_after_commit_and_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::new("t", d.path());
        let mut w = s.create("p/a").unwrap();
        w.write_all(b"hello").unwrap();
        assert!(!s.exists("p/a").unwrap());
        w.commit().unwrap();
        assert!(s.exists("p/a").unwrap());
        assert!(matches!(s.create("p/a"), Err(StoreError::Exists { .. })));
        let mut r = String::new();
        s.open("p/a").unwrap().read_to_string(&mut r).unwrap();
        assert_eq!(r, "hello");
        // An abandoned write leaves nothing.
        let mut w = s.create("p/b").unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(s.list("p").unwrap(), vec!["a".to_string()]);
    }
}
