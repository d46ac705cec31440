//! A MariaDB of a test's own (binary log on), for what a shared server must not suffer:
//! purged binary logs, a SIGKILLed server. Started like the test services (same options),
//! on a free loopback port, with the tests' admin account; removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

pub struct PrivateServer {
    pub server: Server,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl std::ops::Deref for PrivateServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl PrivateServer {
    /// A new server with the binary log on (ROW, GTIDs), server id `server_id`.
    pub fn start(server_id: u32) -> PrivateServer {
        let dir = tempfile::Builder::new()
            .prefix("ba-private-db")
            .tempdir_in("/var/tmp")
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        Command::new("chown")
            .args(["-R", "mysql:mysql"])
            .arg(dir.path())
            .status()
            .unwrap();
        let o = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db"])
            .arg("--auth-root-authentication-method=socket")
            .arg(format!("--datadir={}", data.display()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let port = receivers::free_port();
        let mut s = PrivateServer {
            server: Server {
                port,
                // The shared servers' admin password: a restore that carries accounts
                // across changes nothing there.
                password: env_file()
                    .get("BA_ADMIN_PASSWORD")
                    .cloned()
                    .unwrap_or_else(|| "test".into()),
            },
            dir,
            child: None,
        };
        s.run(server_id);
        let root = |sql: &str| {
            let o = Command::new("mariadb")
                .arg(format!("--socket={}", s.socket().display()))
                .args(["-uroot", "-e", sql])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        for host in ["127.0.0.1", "localhost"] {
            root(&format!(
                "CREATE USER '{ADMIN_USER}'@'{host}' IDENTIFIED BY '{}'; GRANT ALL ON *.* TO '{ADMIN_USER}'@'{host}' WITH GRANT OPTION",
                s.server.password
            ));
        }
        s
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn run(&mut self, server_id: u32) {
        let d = self.dir.path();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg("--user=mysql")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.server.port))
            .arg(format!("--server-id={server_id}"))
            .arg(format!(
                "--log-bin={}",
                d.join("data/mariadb-bin").display()
            ))
            .args([
                "--bind-address=127.0.0.1",
                "--binlog-format=ROW",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=1",
                "--sync-binlog=1",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--skip-name-resolve",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            let up = Command::new("mariadb-admin")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "ping"])
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the private MariaDB did not start: {}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the server dies at once (what a power cut does to it).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
