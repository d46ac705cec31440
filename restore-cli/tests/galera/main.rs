//! Galera: node choice, desync, the cluster lease between two agents, a consistent dump
//! under load, a node killed mid-dump, restore into the cluster. Against the real 3-node
//! cluster that scripts/test-services.sh starts on loopback. The tests here run one at a
//! time (nextest test group `galera`, and a lock for plain `cargo test`) because they stop,
//! freeze and kill nodes; each one heals the cluster when it ends, even when it fails.

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::receivers::{free_port, Mode, Receiver};
use common::transfers::{Mover, Transfers};
use common::*;

mod desync;
mod lease;
mod node;
mod pitr;

static LOCK: Mutex<()> = Mutex::new(());

/// The test cluster; healed (all three nodes running and Synced) when created and dropped.
struct Cluster {
    nodes: Vec<Server>,
    dir: PathBuf,
    services: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

fn cluster() -> Cluster {
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let e = env_file();
    let base: u16 = e
        .get("BA_GALERA_BASE")
        .and_then(|b| b.parse().ok())
        .expect("BA_GALERA_BASE in the test services' env file: run `scripts/test-services.sh up`");
    let password = e
        .get("BA_ADMIN_PASSWORD")
        .cloned()
        .unwrap_or_else(|| "test".into());
    let c = Cluster {
        nodes: (1..=3)
            .map(|i| Server {
                port: base + i,
                password: password.clone(),
            })
            .collect(),
        dir: PathBuf::from(&e["BA_GALERA_DIR"]),
        services: PathBuf::from(&e["BA_SERVICES"]),
        _lock: lock,
    };
    c.heal();
    c
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed already: heal for the next test, but report a failure to heal
            // instead of panicking again (which would abort and hide the first failure).
            if let Err(e) = self.try_heal() {
                eprintln!("{e}");
            }
        } else {
            self.heal();
        }
    }
}

impl Cluster {
    fn node(&self, i: usize) -> &Server {
        &self.nodes[i - 1]
    }

    fn heal(&self) {
        if let Err(e) = self.try_heal() {
            panic!("{e}");
        }
    }

    fn try_heal(&self) -> Result<(), String> {
        let o = Command::new(&self.services)
            .arg("galera-up")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", self.services.display()))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "healing the Galera cluster failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    }

    /// Drops `db` through n1 and waits until every node has applied it: a DDL returns on
    /// the node that ran it while the others may apply it a moment later.
    fn drop_everywhere(&self, db: &str) {
        self.node(1).drop_db(db);
        for i in 1..=self.nodes.len() {
            wait_for(
                &format!("n{i} to drop {db}"),
                Duration::from_secs(30),
                || !self.node(i).databases().iter().any(|d| d == db),
            );
        }
    }

    fn pid(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{i}/mysqld.pid")))
            .unwrap()
            .trim()
            .to_string()
    }

    fn signal(&self, i: usize, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid(i)])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} node {i}");
    }

    /// Stops node `i` cleanly (it leaves the cluster).
    fn stop(&self, i: usize) {
        let st = Command::new("start-stop-daemon")
            .args(["--stop", "--retry", "30", "--pidfile"])
            .arg(self.dir.join(format!("node{i}/mysqld.pid")))
            .args(["--exec", "/usr/sbin/mariadbd"])
            .status()
            .unwrap();
        assert!(st.success(), "stopping node {i}");
    }

    /// A global status value of node `i`, or "down".
    fn status(&self, i: usize, var: &str) -> String {
        let o = self
            .node(i)
            .client()
            .args(["--connect-timeout=2", "-e"])
            .arg(format!(
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='{var}'"
            ))
            .output()
            .unwrap();
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        } else {
            "down".into()
        }
    }

    fn wait_status(&self, i: usize, var: &str, want: &str, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let v = self.status(i, var);
            if v == want {
                return;
            }
            assert!(
                t0.elapsed() < timeout,
                "node {i}: {var} is {v:?}, waited {timeout:?} for {want:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Desyncs node `i` as an operator would (Galera may refuse for a moment right after
    /// a node rejoined: retried).
    fn desync_by_hand(&self, i: usize) {
        for _ in 0..40 {
            let o = self
                .node(i)
                .client()
                .arg("-e")
                .arg("SET GLOBAL wsrep_desync=ON")
                .output()
                .unwrap();
            if o.status.success() {
                self.wait_status(
                    i,
                    "wsrep_local_state_comment",
                    "Donor/Desynced",
                    Duration::from_secs(10),
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("node {i} refuses wsrep_desync=ON");
    }

    fn desync_flag(&self, i: usize) -> String {
        self.node(i)
            .sql("SELECT @@GLOBAL.wsrep_desync")
            .trim()
            .to_string()
    }

    /// The `nodes = [...]` line with the given sites for n1, n2, n3.
    fn nodes_toml(&self, sites: [&str; 3]) -> String {
        let list: Vec<String> = (1..=3)
            .map(|i| {
                format!(
                    "{{ name = \"n{i}\", host = \"127.0.0.1\", port = {}, site = \"{}\" }}",
                    self.node(i).port,
                    sites[i - 1]
                )
            })
            .collect();
        format!("nodes = [{}]", list.join(", "))
    }
}

/// A database with `rows` rows of ~500 bytes (so a rate-limited dump takes a while).
fn filler_db(c: &Cluster, rows: u32) -> String {
    let db = unique("gal");
    let n = c.node(1);
    n.drop_db(&db);
    n.sql(&format!("CREATE DATABASE `{db}`"));
    n.sql_db(
        &db,
        &format!(
            "CREATE TABLE filler (id INT PRIMARY KEY, pad VARCHAR(600)); \
             INSERT INTO filler SELECT seq, REPEAT(SHA2(seq, 256), 8) FROM seq_1_to_{rows}"
        ),
    );
    db
}

/// A config where only n1 is in the agent's site (dc1): the dump comes from n1.
fn n1_setup(c: &Cluster, db: &str, source_extra: &str, galera: &str) -> Setup {
    galera_setup(c, db, "dc1", ["dc1", "dc2", "dc2"], source_extra, galera)
}

/// A config for the cluster: nodes with sites, the agent at `site`, `[source.galera]` with
/// `galera` lines; the dump user may use the lease table.
fn galera_setup(
    c: &Cluster,
    db: &str,
    site: &str,
    sites: [&str; 3],
    source_extra: &str,
    galera: &str,
) -> Setup {
    let n1 = c.node(1);
    n1.sql(&backup_agent::source::galera::lease_ddl("backup_agent"));
    let mut s = Setup::new(n1, db);
    for host in ["127.0.0.1", "localhost"] {
        n1.sql(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON backup_agent.lease TO '{}'@'{host}'",
            s.dump_user
        ));
    }
    s.site = site.into();
    s.agent_extra = format!("name = \"agent-{site}-{}\"\n", unique("a"));
    s.source_addr = Some(c.nodes_toml(sites));
    s.extra = format!("connect_timeout_secs = 3\n{source_extra}\n[source.galera]\n{galera}\n");
    s
}

fn manifests(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir.join("main"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.to_string_lossy().ends_with(".manifest.json") {
            v.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
        }
    }
    v.sort_by_key(|m: &serde_json::Value| m["backup_id"].as_str().unwrap_or("").to_string());
    v
}

/// Runs a backup; returns the output and the node of the newest manifest (if it made one).
fn backup(s: &Setup, c: &Cluster, args: &[&str]) -> (Output, Option<String>) {
    // Backup ids have one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    let before = manifests(&s.store()).len();
    let mut a = vec!["backup"];
    a.extend_from_slice(args);
    let o = s.agent(c.node(1), &a);
    let m = manifests(&s.store());
    let node = if m.len() > before {
        m.last().unwrap()["galera"]["node"]
            .as_str()
            .map(String::from)
    } else {
        None
    };
    (o, node)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn spawn_agent(s: &Setup, c: &Cluster, args: &[&str], log: &str) -> Child {
    let cfg = s.config(c.node(1));
    Command::new(agent_bin())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("TMPDIR", s.path("state"))
        .env("BACKUP_AGENT_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(s.path(&format!("{log}.out"))).unwrap())
        .stderr(std::fs::File::create(s.path(&format!("{log}.err"))).unwrap())
        .spawn()
        .unwrap()
}

fn read_log(s: &Setup, log: &str) -> String {
    format!(
        "{}{}",
        std::fs::read_to_string(s.path(&format!("{log}.out"))).unwrap_or_default(),
        std::fs::read_to_string(s.path(&format!("{log}.err"))).unwrap_or_default()
    )
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!("the agent did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the dump account has a connection on n1.
fn wait_dump_started(c: &Cluster, s: &Setup) {
    wait_for("the dump to start on n1", Duration::from_secs(15), || {
        let n = c.node(1).sql(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{}'",
            s.dump_user
        ));
        n.trim() != "0"
    });
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn webhook(s: &mut Setup, hook: &Receiver) {
    std::fs::write(
        s.path("webhook.url"),
        format!("http://127.0.0.1:{}/hook\n", hook.port),
    )
    .unwrap();
    s.tail = format!(
        "[alerts]\nrepeat_interval = \"1s\"\n[alerts.webhook]\nurl_file = {:?}\ntimeout = \"2s\"\nretries = 0\n",
        s.path("webhook.url")
    );
}

/// An admin account with SUPER only, for desync; returns (user, password file).
fn desync_admin(c: &Cluster, s: &Setup) -> (String, PathBuf) {
    let user = unique("desync");
    for host in ["127.0.0.1", "localhost"] {
        c.node(1).sql(&format!(
            "CREATE OR REPLACE USER '{user}'@'{host}' IDENTIFIED BY 'adm-pw'; GRANT SUPER ON *.* TO '{user}'@'{host}'"
        ));
    }
    std::fs::write(s.path("admin.pw"), "adm-pw\n").unwrap();
    (user, s.path("admin.pw"))
}

/// `n1_setup` without the lease, with desync by a SUPER-only admin account; returns the
/// setup and the admin user.
fn n1_desync_setup(c: &Cluster, db: &str, source_extra: &str) -> (Setup, String) {
    let mut s = n1_setup(c, db, source_extra, "lease = false\ndesync = true");
    let (admin, admin_pw) = desync_admin(c, &s);
    s.extra.push_str(&format!(
        "admin_user = \"{admin}\"\nadmin_password_file = {admin_pw:?}\n"
    ));
    (s, admin)
}

fn markers(s: &Setup) -> Vec<String> {
    std::fs::read_dir(s.path("state").join("desync"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn lease_rows(c: &Cluster, slot_prefix: &str) -> Vec<Vec<String>> {
    c.node(1)
        .sql(&format!(
            "SELECT slot, holder, state, attempts, IFNULL(backup_id, ''), IFNULL(history, '') FROM backup_agent.lease \
             WHERE source = 'main' AND slot LIKE '{slot_prefix}%' ORDER BY slot"
        ))
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

/// Two agents (dc1 and dc2), each with its own state and local store, both also writing to
/// a shared store; the same cluster lease.
fn two_agents(c: &Cluster, db: &str, source_extra: &str, galera: &str) -> (Setup, Setup, PathBuf) {
    let a = galera_setup(c, db, "dc1", ["dc1", "dc1", "dc2"], source_extra, galera);
    let mut b = galera_setup(c, db, "dc2", ["dc1", "dc1", "dc2"], source_extra, galera);
    // Same dump account for both (one cluster, one source).
    b.dump_user = a.dump_user.clone();
    b.dump_password = a.dump_password.clone();
    let shared = a.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let store = format!("[[store]]\nname = \"shared\"\nkind = \"local\"\npath = {shared:?}\nmedia = \"object\"\nsite = \"dc3\"\n");
    let mut a = a;
    a.stores = store.clone();
    b.stores = store;
    (a, b, shared)
}

fn a_name(s: &Setup) -> String {
    s.agent_extra
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap()
}

/// A slot time in `year` no earlier run used (lease rows stay in the cluster), with room
/// for 100 slots after it.
fn fresh_slot_base(year: i32) -> chrono::DateTime<chrono::Utc> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    chrono::DateTime::parse_from_rfc3339(&format!("{year}-01-01T00:00:00Z"))
        .unwrap()
        .with_timezone(&chrono::Utc)
        + chrono::Duration::seconds(((nanos / 1000) % 1_000_000) as i64 * 300)
}

fn daemon_slot(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn clone_setup(s: &Setup) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("ba-test")
        .tempdir()
        .unwrap();
    // As Setup::new: the store directory must exist (backup never creates it).
    for sub in ["store", "state"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    Setup {
        dir,
        db: s.db.clone(),
        dump_user: s.dump_user.clone(),
        dump_password: s.dump_password.clone(),
        dpo_certs: s.dpo_certs.clone(),
        signing_key: s.signing_key.clone(),
        signing_passphrase: s.signing_passphrase.clone(),
        extra: s.extra.clone(),
        agent_extra: s.agent_extra.clone(),
        tail: s.tail.clone(),
        stores: s.stores.clone(),
        policy: s.policy.clone(),
        source_addr: s.source_addr.clone(),
        site: s.site.clone(),
    }
}
