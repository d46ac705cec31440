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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::{StoreConfig, StoreKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: {action} {key}: {source}")]
    Io {
        store: String,
        action: &'static str,
        key: String,
        source: io::Error,
    },
    #[error("store {store}: {key} already exists; refusing to overwrite it")]
    Exists { store: String, key: String },
}

/// The writing end of one object.
pub trait ObjectWriter: Write + Send + Sync {
    /// Makes the object durable and visible under its final name.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

pub trait Store: Send + Sync {
    fn name(&self) -> &str;
    /// Starts writing a new object; fails if `key` exists.
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError>;
    /// Reads a whole object as a stream.
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError>;
    fn exists(&self, key: &str) -> Result<bool, StoreError>;
    /// Keys directly under `prefix` (file names only), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// The size of an object, or None if it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Removes an object; removing one that does not exist is not an error.
    fn remove(&self, key: &str) -> Result<(), StoreError>;
    /// Where an object lives, for messages.
    fn describe(&self, key: &str) -> String;
}

/// Builds the configured store.
pub fn open_store(cfg: &StoreConfig) -> Box<dyn Store> {
    match &cfg.kind {
        StoreKind::Local { path } => Box::new(LocalStore {
            name: cfg.name.clone(),
            root: path.path.clone(),
        }),
    }
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

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("open until commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("open until commit").flush()
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

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
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

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.path(key).exists())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.path(prefix);
        let mut v = Vec::new();
        match fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(self.io("listing", prefix))?;
                    v.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("listing", prefix)(e)),
        }
        v.sort();
        Ok(v)
    }

    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match fs::metadata(self.path(key)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("inspecting", key)(e)),
        }
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
