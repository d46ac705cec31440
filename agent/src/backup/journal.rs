//! The run journal of a source on this host: `<state_dir>/locks/<source>.run`, the ids of
//! the backups the running process started, written under the source's lock before any
//! object of them is. A run that ends, well or badly, clears it (its own objects are
//! removed or published by then); a run that was killed leaves it behind. The next run of
//! the source holds the lock, so it knows that writer is dead: whatever those ids left
//! in the stores that is not a complete backup (data, `.sha256` or signature without a
//! manifest, temp files, pending uploads) is its debris and goes at once, instead of
//! after the grace period that debris of unknown origin gets.

use std::io::Write;
use std::path::{Path, PathBuf};

pub fn path(state_dir: &Path, source: &str) -> PathBuf {
    let stem = backup_core::config::split::file_stem(source);
    state_dir.join("locks").join(format!("{stem}.run"))
}

/// Notes that this run starts backup `id` (appended and synced before the first object).
pub fn record(path: &Path, id: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()
}

/// The ids a dead run left, valid backup ids only (a damaged journal is ignored).
pub fn read(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| backup_core::layout::is_backup_id(l))
        .map(String::from)
        .collect()
}

/// Clears the journal when dropped: the run ended in this process.
pub struct Clear(pub PathBuf);

impl Drop for Clear {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
