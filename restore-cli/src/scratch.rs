//! The drill's scratch server: an ephemeral MariaDB of its own, in a private (0700)
//! directory, reachable by socket only, removed on drop; and the removal of ones a killed
//! drill left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;

use crate::target::Target;

/// An ephemeral MariaDB: its own datadir in a temp dir, a socket, no TCP; removed on drop
/// (also after a failure or an interrupt).
pub struct Ephemeral {
    dir: PathBuf,
    child: Option<Child>,
}

impl Ephemeral {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    pub fn start() -> Result<Ephemeral> {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        clean_stale(&base);
        let dir = base.join(format!(
            "restore-drill-{}-{}",
            std::process::id(),
            Utc::now().timestamp_millis()
        ));
        // 0700 and new: restored production data and the server's socket are reachable by
        // this user (and mysql, which runs the server when we are root) alone; a path
        // someone planted beforehand is refused, never reused.
        {
            use std::os::unix::fs::DirBuilderExt;
            let mut b = std::fs::DirBuilder::new();
            b.mode(0o700);
            b.create(&dir)
                .and_then(|()| b.create(dir.join("data")))
                .with_context(|| {
                    format!("cannot create the private directory {}", dir.display())
                })?;
        }
        let mut eph = Ephemeral {
            dir: dir.clone(),
            child: None,
        };
        let as_root = is_root();
        if as_root {
            let st = Command::new("chown")
                .args(["-R", "mysql:mysql"])
                .arg(&dir)
                .status()?;
            if !st.success() {
                bail!("cannot hand {} to the mysql user", dir.display());
            }
        }
        let find = |name: &str| -> Result<PathBuf> {
            for d in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
                let p = Path::new(d).join(name);
                if p.exists() {
                    return Ok(p);
                }
            }
            bail!("{name} is not installed; the drill's scratch server needs MariaDB (apt-get install mariadb-server), or give --scratch URL")
        };
        let mut install = Command::new(find("mariadb-install-db")?);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if as_root {
            install.arg("--user=mysql");
        }
        // mariadbd writes temp files to TMPDIR: its own directory, which it owns.
        install.env("TMPDIR", &dir);
        let o = install
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running mariadb-install-db")?;
        if !o.status.success() {
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let mut server = Command::new(find("mariadbd")?);
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", eph.socket().display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .args([
                "--skip-networking",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=128M",
                "--innodb-log-file-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-allowed-packet=1G",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--event-scheduler=OFF",
                "--skip-name-resolve",
            ]);
        if as_root {
            server.arg("--user=mysql");
        }
        eph.child = Some(
            server
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting mariadbd")?,
        );
        let t0 = Instant::now();
        while !eph.socket().exists() {
            if let Some(Ok(Some(st))) = eph.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!(
                    "the scratch MariaDB exited ({st}): {}; if it cannot reach {} (as the mysql user), set TMPDIR to a directory it can reach, or give --scratch URL",
                    log.lines().rev().take(3).collect::<Vec<_>>().join(" | "),
                    dir.display()
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the scratch MariaDB did not start within 60s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(eph)
    }

    pub fn target(&self) -> Target {
        Target {
            user: "root".into(),
            host: "localhost".into(),
            port: 0,
            socket: Some(self.socket()),
        }
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Removes scratch servers of drills that were killed (their process is gone).
fn clean_stale(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("restore-drill-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(p) = std::fs::read_to_string(e.path().join("mysqld.pid")) {
            let _ = Command::new("kill").args(["-KILL", p.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}
