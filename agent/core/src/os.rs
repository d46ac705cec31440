//! What the agent asks of the operating system beyond plain I/O: its host name, and
//! replacing a small file atomically and durably.

use std::io::{self, Write};
use std::path::Path;

/// This host's name: `BACKUP_AGENT_HOSTNAME` if set, else /etc/hostname, else "unknown".
pub fn hostname() -> String {
    std::env::var("BACKUP_AGENT_HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Replaces the file at `path` with `bytes`, atomically and durably: a temp file beside it
/// (named after the file and this process, so concurrent writers never share one), fsync,
/// rename over the path, fsync of the directory. Readers see the old content or the new,
/// never a mix; a failure removes the temp file and leaves the old content. The
/// directory is created if missing.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// The fault suite's seam: when `BACKUP_AGENT_TEST_KILL_AT` names this point, the process
/// SIGKILLs itself here (no destructor, no cleanup runs: a crash at exactly this instant).
/// Unset, it does nothing.
pub fn test_kill_point(point: &str) {
    if std::env::var_os("BACKUP_AGENT_TEST_KILL_AT").is_some_and(|v| v == point) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// The suite's seam for a race: when `BACKUP_AGENT_TEST_PAUSE_AT` is `<point>:<ms>` and
/// names this point, the calling thread sleeps that long here. Unset, it does nothing.
pub fn test_pause_point(point: &str) {
    let Some(v) = std::env::var_os("BACKUP_AGENT_TEST_PAUSE_AT") else {
        return;
    };
    let v = v.to_string_lossy();
    if let Some((p, ms)) = v.split_once(':') {
        if p == point {
            let ms: u64 = ms.parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
        // A directory where the file should be: the write fails and nothing is left.
        let q = d.path().join("dir");
        std::fs::create_dir_all(q.join("inner")).unwrap();
        assert!(atomic_write(&q, b"x").is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
