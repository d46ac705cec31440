//! Galera: node choice, desync, the cluster lease between two agents, a consistent dump
//! under load, a node killed mid-dump, restore into the cluster. Against the real 3-node
//! cluster that scripts/test-services.sh starts on loopback. The tests here run one at a
//! time (nextest test group `galera`, and a lock for plain `cargo test`) because they stop,
//! freeze and kill nodes; each one heals the cluster when it ends, even when it fails.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::receivers::{free_port, Mode, Receiver};
use common::*;

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

#[test]
fn node_choice_skips_desynced_stopped_frozen_and_stale_nodes_and_names_each_state() {
    let c = cluster();
    let db = filler_db(&c, 100);
    let hook = Receiver::start(Mode::Ok);
    let mut s = galera_setup(&c, &db, "dc1", ["dc1", "dc1", "dc2"], "", "lease = false");
    webhook(&mut s, &hook);

    // Healthy: a node of the agent's own site.
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup from a healthy cluster");
    let node = node.expect("a manifest");
    assert!(
        node == "n1" || node == "n2",
        "own site dc1 first, got {node}"
    );
    let m = manifests(&s.store()).pop().unwrap();
    let g = &m["galera"];
    assert_eq!(g["cluster_size"], 3, "{g}");
    assert!(g["last_committed"].as_i64().unwrap() > 0, "{g}");
    assert_eq!(g["cluster_state_uuid"].as_str().unwrap().len(), 36, "{g}");
    assert_eq!(g["desynced"], false);
    assert_eq!(g["site"], "dc1");

    // n1 desynced by someone else (an operator, a donor): the other dc1 node.
    c.desync_by_hand(1);
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup with n1 desynced");
    assert_eq!(node.as_deref(), Some("n2"), "{}", text(&o));

    // n2 stopped as well: the other site's node.
    c.stop(2);
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup with n1 desynced and n2 stopped");
    assert_eq!(node.as_deref(), Some("n3"), "{}", text(&o));
    assert!(text(&o).contains("n2 (127.0.0.1:"), "{}", text(&o));

    // n2 back, then frozen (SIGSTOP): it does not answer; the cluster evicts it.
    c.heal();
    c.desync_by_hand(1);
    c.signal(2, "STOP");
    c.wait_status(1, "wsrep_cluster_size", "2", Duration::from_secs(30));
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup with n2 frozen");
    assert_eq!(node.as_deref(), Some("n3"), "{}", text(&o));
    assert!(text(&o).contains("no answer within 3s"), "{}", text(&o));
    // Woken up, n2 still believes it is in the old configuration for a few seconds:
    // stale, never dumped.
    c.signal(2, "CONT");
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup right after n2 woke up");
    assert_eq!(node.as_deref(), Some("n3"), "{}", text(&o));
    assert!(
        text(&o).contains("stale"),
        "n2 should be reported stale: {}",
        text(&o)
    );

    // Every node desynced by someone else: no backup, each node's state named, an alert.
    c.heal();
    for i in 1..=3 {
        c.desync_by_hand(i);
    }
    let before = manifests(&s.store()).len();
    let (o, _) = backup(&s, &c, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("no node is eligible"), "{err}");
    for n in ["n1 (127.0.0.1:", "n2 (127.0.0.1:", "n3 (127.0.0.1:"] {
        assert!(err.contains(n), "{n} missing: {err}");
    }
    assert!(err.matches("Donor/Desynced").count() >= 3, "{err}");
    assert_eq!(manifests(&s.store()).len(), before);
    let a = hook.wait_event("backup_failed", Duration::from_secs(5));
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("no node is eligible"),
        "{a}"
    );

    // Quorum lost: two of three nodes killed; the last one is non-Primary. Nobody can dump.
    c.heal();
    c.signal(2, "KILL");
    c.signal(3, "KILL");
    c.wait_status(
        1,
        "wsrep_cluster_status",
        "non-Primary",
        Duration::from_secs(30),
    );
    let (o, _) = backup(&s, &c, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("lost quorum") && err.contains("garbd"),
        "{err}"
    );
    assert!(err.contains("non-Primary"), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("backup-agent: backup failed"), "{err}");
    assert_eq!(last.matches("unreachable").count(), 2, "{err}");
    assert_eq!(manifests(&s.store()).len(), before);
    wait_for("the quorum alert", Duration::from_secs(5), || {
        hook.bodies().iter().any(|b| {
            b["event"] == "backup_failed"
                && b["message"].as_str().unwrap_or("").contains("lost quorum")
        })
    });
}

/// Moves money between accounts on node `port` until `stop`; counts commits.
fn writer(port: u16, password: String, db: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    use mysql_async::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(ADMIN_USER))
            .pass(Some(password))
            .db_name(Some(db));
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        let mut i: u64 = port as u64;
        while !stop.load(Ordering::SeqCst) {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b, x) = ((i >> 20) % 50 + 1, (i >> 40) % 50 + 1, (i >> 8) % 97 + 1);
            if a == b {
                continue;
            }
            let r: Result<(), mysql_async::Error> = async {
                let mut tx = conn.start_transaction(Default::default()).await?;
                tx.exec_drop(
                    "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                    (x, a),
                )
                .await?;
                tx.exec_drop(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                    (x, b),
                )
                .await?;
                tx.exec_drop(
                    "INSERT INTO transfers (src, dst, amount) VALUES (?, ?, ?)",
                    (a, b, x),
                )
                .await?;
                tx.commit().await
            }
            .await;
            if r.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
}

#[test]
fn a_dump_under_load_restores_to_a_consistent_state() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    c.node(1).sql_db(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL); \
         INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_50; \
         CREATE TABLE transfers (id BIGINT AUTO_INCREMENT PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount INT NOT NULL)",
    );
    // Only n1 is in the agent's site: the dump comes from n1 while n2 and n3 take writes.
    let s = n1_setup(&c, &db, "rate_limit = \"256KiB\"", "lease = false");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = [2usize, 3]
        .iter()
        .map(|&i| {
            let (port, pw, db, stop, done) = (
                c.node(i).port,
                c.node(i).password.clone(),
                db.clone(),
                stop.clone(),
                done.clone(),
            );
            std::thread::spawn(move || writer(port, pw, db, stop, done))
        })
        .collect();
    wait_for("the writers", Duration::from_secs(20), || {
        done.load(Ordering::SeqCst) >= 50
    });
    let before = done.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let (o, node) = backup(&s, &c, &[]);
    let took = t0.elapsed();
    let during = done.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    ok(&o, "backup under load");
    assert_eq!(node.as_deref(), Some("n1"));
    assert!(
        during >= 20,
        "the writers committed only {during} transfers during the {took:?} dump"
    );
    let total_end: u64 = c
        .node(1)
        .sql_db(&db, "SELECT COUNT(*) FROM transfers")
        .trim()
        .parse()
        .unwrap();

    // Restore into the standalone target server and check the invariants.
    let t = target();
    t.drop_db(&db);
    let r = restore(&into_args(&t, &s.only_backup(), &s.path("t.pw")));
    ok(&r, "restore");
    let total = t.sql_db(&db, "SELECT SUM(balance) FROM accounts");
    assert_eq!(
        total.trim(),
        "50000",
        "money was created or lost: the dump is not one snapshot"
    );
    let mismatched = t.sql_db(
        &db,
        "SELECT COUNT(*) FROM accounts a WHERE a.balance <> 1000 \
           - (SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE src = a.id) \
           + (SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE dst = a.id)",
    );
    assert_eq!(
        mismatched.trim(),
        "0",
        "balances and transfer rows disagree"
    );
    let restored: u64 = t
        .sql_db(&db, "SELECT COUNT(*) FROM transfers")
        .trim()
        .parse()
        .unwrap();
    assert!(
        restored >= before && restored < total_end,
        "restored {restored} transfers; {before} existed when the backup started, {total_end} at the end"
    );
    t.drop_db(&db);
    c.node(1).drop_db(&db);
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

#[test]
fn desync_is_on_for_the_dump_and_off_after_success_failure_and_sigkill() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let mut s = n1_setup(&c, &db, "rate_limit = \"256KiB\"", "");
    let (admin, admin_pw) = desync_admin(&c, &s);
    // The dump account itself cannot desync: SUPER is missing, and the message says so.
    s.extra = s.extra.replace(
        "[source.galera]\n",
        &format!("[source.galera]\ndesync = true\nlease = false\nadmin_user = \"{}\"\nadmin_password_file = {:?}\n", s.dump_user, s.path("db.password")),
    );
    let (o, _) = backup(&s, &c, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("SUPER"), "{}", stderr(&o));
    assert_eq!(c.desync_flag(1), "0");
    assert!(markers(&s).is_empty(), "{:?}", markers(&s));
    s.extra = s.extra.replace(
        &format!("admin_user = \"{}\"", s.dump_user),
        &format!("admin_user = \"{admin}\""),
    );
    s.extra = s.extra.replace(
        &format!("{:?}", s.path("db.password")),
        &format!("{admin_pw:?}"),
    );

    // Success: Donor/Desynced during the dump (with a marker), OFF right after.
    let mut child = spawn_agent(&s, &c, &["backup"], "ok");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    assert_eq!(c.desync_flag(1), "1");
    assert_eq!(markers(&s).len(), 1, "a marker while desynced");
    // The other nodes stay Synced and take writes.
    assert_eq!(c.status(2, "wsrep_local_state_comment"), "Synced");
    c.node(2).sql_db(
        &db,
        "INSERT INTO filler VALUES (999999, 'written while n1 was desynced')",
    );
    let st = wait_child(&mut child, Duration::from_secs(60));
    assert!(st.success(), "{}", read_log(&s, "ok"));
    assert_eq!(c.desync_flag(1), "0", "desync left on after success");
    assert!(markers(&s).is_empty());
    let m = manifests(&s.store()).pop().unwrap();
    assert_eq!(m["galera"]["desynced"], true);
    assert_eq!(m["galera"]["node"], "n1");

    // Failure: the dump's connection is killed on the server mid-dump.
    let before = manifests(&s.store()).len();
    let mut child = spawn_agent(&s, &c, &["backup"], "fail");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_millis(500));
    let ids = c.node(1).sql(&format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{}'",
        s.dump_user
    ));
    assert!(!ids.trim().is_empty(), "the dump connection");
    for id in ids.lines() {
        let _ = c
            .node(1)
            .client()
            .arg("-e")
            .arg(format!("KILL {id}"))
            .output();
    }
    let st = wait_child(&mut child, Duration::from_secs(60));
    assert_eq!(st.code(), Some(1), "{}", read_log(&s, "fail"));
    assert!(
        read_log(&s, "fail").contains("the dump from node n1"),
        "{}",
        read_log(&s, "fail")
    );
    assert_eq!(c.desync_flag(1), "0", "desync left on after a failed dump");
    assert!(markers(&s).is_empty());
    assert_eq!(manifests(&s.store()).len(), before);

    // SIGKILL mid-dump: the desync stays (nobody could turn it off), the marker says where.
    let mut child = spawn_agent(&s, &c, &["backup"], "killed");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(c.desync_flag(1), "1");
    assert_eq!(markers(&s).len(), 1);
    // The next start turns it off first.
    let http = free_port();
    s.agent_extra
        .push_str(&format!("http_bind = \"127.0.0.1:{http}\"\n"));
    s.extra = s.extra.replacen(
        "connect_timeout_secs",
        "schedule = \"0 0 1 1 *\"\nconnect_timeout_secs",
        1,
    );
    let mut daemon = spawn_agent(&s, &c, &["run"], "daemon");
    wait_for(
        "the restarted agent to turn the desync off",
        Duration::from_secs(20),
        || c.desync_flag(1) == "0",
    );
    wait_for("the marker to go", Duration::from_secs(5), || {
        markers(&s).is_empty()
    });
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    wait_child(&mut daemon, Duration::from_secs(20));
    assert!(
        read_log(&s, "daemon").contains("desync_cleared_at_start"),
        "{}",
        read_log(&s, "daemon")
    );
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Synced",
        Duration::from_secs(10),
    );
    c.node(1).drop_db(&db);
}

#[test]
fn the_node_being_dumped_is_killed_the_backup_fails_cleanly_and_the_next_run_uses_another() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let s = n1_setup(&c, &db, "rate_limit = \"256KiB\"", "lease = false");
    let mut child = spawn_agent(&s, &c, &["backup"], "killed-node");
    wait_dump_started(&c, &s);
    std::thread::sleep(Duration::from_secs(1));
    c.signal(1, "KILL");
    let st = wait_child(&mut child, Duration::from_secs(60));
    let log = read_log(&s, "killed-node");
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("the dump from node n1") && log.contains("nothing was kept"),
        "{log}"
    );
    assert!(
        s.store_files().is_empty(),
        "partial artifact: {:?}",
        s.store_files()
    );
    // The next run: n1 is gone, so another node.
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "the next backup");
    assert!(matches!(node.as_deref(), Some("n2" | "n3")), "{node:?}");
    assert!(
        text(&o).contains("n1 (127.0.0.1:"),
        "n1's state is reported: {}",
        text(&o)
    );
    c.heal();
    c.node(1).drop_db(&db);
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

#[test]
fn two_agents_on_the_same_schedule_make_exactly_one_backup_per_slot() {
    let c = cluster();
    let db = filler_db(&c, 200);
    let (mut a, mut b, shared) = two_agents(
        &c,
        &db,
        "schedule = \"*/3 * * * * *\"",
        "lease_ttl = \"6s\"",
    );
    for s in [&mut a, &mut b] {
        s.agent_extra.push_str(&format!(
            "http_bind = \"127.0.0.1:{}\"\ncheck_interval = \"1h\"\n",
            free_port()
        ));
    }
    let started = chrono::Utc::now();
    let mut da = spawn_agent(&a, &c, &["run"], "daemon");
    let mut db_ = spawn_agent(&b, &c, &["run"], "daemon");
    std::thread::sleep(Duration::from_secs(25));
    for d in [&da, &db_] {
        Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status()
            .unwrap();
    }
    wait_child(&mut da, Duration::from_secs(60));
    wait_child(&mut db_, Duration::from_secs(60));
    let (la, lb) = (read_log(&a, "daemon"), read_log(&b, "daemon"));

    let rows: Vec<Vec<String>> = lease_rows(&c, "")
        .into_iter()
        .filter(|r| r[1] == a_name(&a) || r[1] == a_name(&b))
        .collect();
    assert!(
        rows.iter()
            .all(|r| chrono::DateTime::parse_from_rfc3339(&r[0])
                .is_ok_and(|t| t >= started - chrono::Duration::seconds(3))),
        "{rows:?}"
    );
    assert!(
        rows.len() >= 5,
        "slots in 25 s at */3: {rows:?}\n{la}\n{lb}"
    );
    let shared_m = manifests(&shared);
    let mut by_slot = std::collections::BTreeMap::<String, Vec<String>>::new();
    for m in &shared_m {
        let slot = m["galera"]["lease"]["slot"]
            .as_str()
            .expect("lease in the manifest")
            .to_string();
        by_slot
            .entry(slot)
            .or_default()
            .push(m["backup_id"].as_str().unwrap().to_string());
    }
    for (i, r) in rows.iter().enumerate() {
        let last = i + 1 == rows.len();
        if r[2] == "running" {
            continue; // the last slot, cut off by the shutdown
        }
        assert_eq!(r[2], "done", "slot {r:?}");
        let ids = by_slot.get(&r[0]).cloned().unwrap_or_default();
        assert_eq!(
            ids,
            vec![r[4].clone()],
            "slot {} must have exactly the lease holder's backup",
            r[0]
        );
        // The manifest names the holder; both sites' disks end up with a copy (the standby
        // copies the slot it confirmed).
        let m = shared_m
            .iter()
            .find(|m| m["backup_id"] == r[4].as_str())
            .unwrap();
        assert_eq!(m["galera"]["lease"]["holder"], r[1].as_str());
        let has = |s: &Setup| {
            manifests(&s.store())
                .iter()
                .any(|m| m["backup_id"] == r[4].as_str())
        };
        // (The standby may have been stopped before it copied the last slot.)
        let (holder, other) = if r[1] == a_name(&a) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(has(holder), "slot {}: holder {}", r[0], r[1]);
        assert!(has(other) || last, "slot {}: the standby's disk", r[0]);
    }
    assert!(by_slot.values().all(|v| v.len() == 1), "{by_slot:?}");
    let done = rows.iter().filter(|r| r[2] == "done").count();
    assert_eq!(shared_m.len(), done, "one backup per produced slot");
    assert!(
        la.contains("slot_done_elsewhere") || lb.contains("slot_done_elsewhere"),
        "the standby saw the slot done"
    );
    assert!(
        la.contains("slot_confirmed") || lb.contains("slot_confirmed"),
        "the standby verified the slot's backup"
    );
    assert!(!la.contains("slot_not_visible") && !lb.contains("slot_not_visible"));
    c.node(1).drop_db(&db);
}

fn a_name(s: &Setup) -> String {
    s.agent_extra
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap()
}

#[test]
fn two_agents_started_together_many_times_and_a_killed_holder_is_taken_over() {
    let c = cluster();
    let db = filler_db(&c, 100);
    let (a, b, shared) = two_agents(&c, &db, "", "lease_ttl = \"3s\"");
    // The same slot, both agents at the same moment, ten times.
    // Slots of their own for this run (slot rows stay in the cluster).
    let base = fresh_slot_base(2100);
    for i in 0..10 {
        let slot = daemon_slot(base + chrono::Duration::seconds(i));
        // Backup ids have one-second resolution.
        std::thread::sleep(Duration::from_millis(1000));
        let pa = spawn_agent(&a, &c, &["backup", "--slot", &slot], &format!("a{i}"));
        let pb = spawn_agent(&b, &c, &["backup", "--slot", &slot], &format!("b{i}"));
        for (mut p, s, n) in [(pa, &a, format!("a{i}")), (pb, &b, format!("b{i}"))] {
            let st = wait_child(&mut p, Duration::from_secs(60));
            assert!(st.success(), "{}", read_log(s, &n));
        }
        let (la, lb) = (
            read_log(&a, &format!("a{i}")),
            read_log(&b, &format!("b{i}")),
        );
        let made = [
            la.contains("verified copies on"),
            lb.contains("verified copies on"),
        ];
        assert_eq!(
            made.iter().filter(|x| **x).count(),
            1,
            "slot {slot}: exactly one agent dumps\n{la}\n{lb}"
        );
        let standby = if made[0] { &lb } else { &la };
        assert!(standby.contains("produced by agent"), "{standby}");
        // The standby found the backup in the shared store, verified it there and copied
        // it to its own site's disk.
        assert!(
            standby.contains("in this agent's stores: 2 verified copies"),
            "{standby}"
        );
        let rows = lease_rows(&c, &slot);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let holder = if made[0] { a_name(&a) } else { a_name(&b) };
        assert_eq!(
            rows[0][1], holder,
            "the lease row names the agent that dumped"
        );
        assert_eq!(rows[0][2], "done");
    }
    assert_eq!(manifests(&shared).len(), 10);

    // The holder is killed mid-dump; the other agent takes over once the lease expired.
    let slow = |s: &Setup| {
        let mut s2 = clone_setup(s);
        s2.extra = s2.extra.replacen(
            "connect_timeout_secs",
            "rate_limit = \"64KiB\"\nconnect_timeout_secs",
            1,
        );
        s2
    };
    let (a2, b2) = (slow(&a), slow(&b));
    let filler = c.node(1).sql_db(&db, "SELECT COUNT(*) FROM filler");
    assert_eq!(filler.trim(), "100");
    c.node(1).sql_db(
        &db,
        "INSERT INTO filler SELECT seq, REPEAT(SHA2(seq, 256), 8) FROM seq_101_to_1500",
    );
    let slot = daemon_slot(base + chrono::Duration::seconds(100));
    let mut pa = spawn_agent(&a2, &c, &["backup", "--slot", &slot], "holder");
    wait_for("agent A to hold the slot", Duration::from_secs(15), || {
        lease_rows(&c, &slot)
            .first()
            .is_some_and(|r| r[1] == a_name(&a) && r[2] == "running")
    });
    let mut pb = spawn_agent(&b2, &c, &["backup", "--slot", &slot], "standby");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pb.try_wait().unwrap().is_none(),
        "B waits while A renews: {}",
        read_log(&b2, "standby")
    );
    pa.kill().unwrap();
    pa.wait().unwrap();
    let t0 = Instant::now();
    let st = wait_child(&mut pb, Duration::from_secs(120));
    let lb = read_log(&b2, "standby");
    assert!(st.success(), "{lb}");
    assert!(lb.contains("lease_takeover"), "{lb}");
    let rows = lease_rows(&c, &slot);
    assert_eq!(rows[0][1], a_name(&b), "{rows:?}");
    assert_eq!(rows[0][2], "done");
    assert_eq!(rows[0][3], "2", "{rows:?}");
    assert!(
        rows[0][5].contains(&format!("{} running (expired)", a_name(&a))),
        "{rows:?}"
    );
    let m = manifests(&shared);
    let last = m
        .iter()
        .find(|m| m["backup_id"] == rows[0][4].as_str())
        .expect("B's backup in the shared store");
    assert_eq!(
        last["galera"]["lease"]["takeover_from"],
        a_name(&a).as_str()
    );
    assert!(t0.elapsed() < Duration::from_secs(100));
    // A slot whose holder failed (its only store is gone) is taken over by the other agent.
    let mut a3 = clone_setup(&a);
    a3.stores = String::new();
    std::fs::write(a3.store(), "a file where the store directory should be").unwrap();
    let slot3 = daemon_slot(base + chrono::Duration::seconds(200));
    std::thread::sleep(Duration::from_millis(1000));
    let o = a3.agent(c.node(1), &["backup", "--slot", &slot3]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(lease_rows(&c, &slot3)[0][2], "failed");
    std::thread::sleep(Duration::from_millis(1000));
    let o = b.agent(c.node(1), &["backup", "--slot", &slot3]);
    ok(&o, "the other agent takes over a failed slot");
    let rows = lease_rows(&c, &slot3);
    assert_eq!(
        (rows[0][1].as_str(), rows[0][2].as_str()),
        (a_name(&b).as_str(), "done")
    );
    assert!(
        rows[0][5].contains("failed: ") && rows[0][5].contains(&format!("{} failed", a_name(&a))),
        "{rows:?}"
    );

    // A, killed, left no backup of that slot (only debris a later start cleans up).
    assert!(manifests(&a2.store()).is_empty(), "{:?}", a2.store_files());
    c.node(1).drop_db(&db);
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
    Setup {
        dir: tempfile::Builder::new()
            .prefix("ba-test")
            .tempdir()
            .unwrap(),
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

#[test]
fn a_backup_restores_into_the_galera_cluster_within_its_writeset_limit() {
    let c = cluster();
    let db = filler_db(&c, 500);
    c.node(1).sql_db(&db, "CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB); INSERT INTO big VALUES (1, REPEAT('x', 300000))");
    let s = n1_setup(&c, &db, "", "lease = false");
    let (o, _) = backup(&s, &c, &[]);
    ok(&o, "backup");
    let want = fingerprint(c.node(1), &db);
    let data = s.only_backup();
    let m = manifests(&s.store()).pop().unwrap();
    let largest = m["largest_statement_bytes"].as_u64().unwrap();
    assert!(largest > 300_000, "{largest}");
    c.node(1).drop_db(&db);

    // n2's writeset limit is below the largest statement: refused before anything is written.
    let n2 = c.node(2);
    n2.sql("SET GLOBAL wsrep_max_ws_size = 200000");
    let r = restore(&into_args(n2, &data, &s.path("n2.pw")));
    n2.sql("SET GLOBAL wsrep_max_ws_size = DEFAULT");
    assert!(!r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("wsrep_max_ws_size"), "{}", stderr(&r));
    assert!(
        !c.node(3).databases().contains(&db),
        "nothing may be written"
    );

    // Within the limit: restored through n2, replicated to n1 and n3.
    let r = restore(&into_args(n2, &data, &s.path("n2.pw")));
    ok(&r, "restore into the cluster");
    for i in [1, 3] {
        let got = fingerprint(c.node(i), &db);
        assert_same(&want, &got);
    }
    c.node(1).drop_db(&db);
}

#[test]
fn replicated_ddl_that_aborts_the_snapshot_makes_the_dump_start_over() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    c.node(1).sql_db(
        &db,
        "CREATE TABLE a_first (id INT PRIMARY KEY, v INT); INSERT INTO a_first VALUES (1, 1)",
    );
    let s = n1_setup(
        &c,
        &db,
        "rate_limit = \"256KiB\"",
        "lease = false\ndump_retries = 2",
    );
    let mut child = spawn_agent(&s, &c, &["backup"], "ddl");
    // Once the dump has read a_first (tables go in name order) and is reading filler, an
    // ALTER of a_first on another node conflicts with the snapshot's metadata lock.
    wait_dump_started(&c, &s);
    std::thread::sleep(Duration::from_secs(2));
    c.node(2)
        .sql_db(&db, "ALTER TABLE a_first ADD COLUMN w INT DEFAULT 7");
    let st = wait_child(&mut child, Duration::from_secs(120));
    let log = read_log(&s, "ddl");
    assert!(st.success(), "{log}");
    assert!(
        log.contains("dump_retry"),
        "the dump should have been aborted and retried: {log}"
    );
    let m = manifests(&s.store()).pop().unwrap();
    assert_eq!(m["galera"]["attempts"], 2, "{m}");
    // The retried dump has the new column.
    let t = target();
    t.drop_db(&db);
    ok(
        &restore(&into_args(&t, &s.only_backup(), &s.path("t.pw"))),
        "restore",
    );
    assert_eq!(t.sql_db(&db, "SELECT w FROM a_first").trim(), "7");
    t.drop_db(&db);
    c.node(1).drop_db(&db);
}

/// compose/config/agent-dc1.toml and agent-dc2.toml, as mounted by compose/dc1.yml and
/// dc2.yml, with only secret paths, directories, node addresses and the object stores
/// mapped to this machine (both sites' object stores are locked moto buckets).
#[test]
fn the_compose_configs_of_both_sites_share_slots_through_the_lease() {
    let c = cluster();
    let db = filler_db(&c, 300);
    let base = galera_setup(&c, &db, "dc1", ["dc1", "dc1", "dc2"], "", "");
    let (admin, admin_pw) = desync_admin(&c, &base);
    let dir = base.dir.path();
    let vaults: Vec<common::s3::S3Server> = ["dc1", "dc2"]
        .iter()
        .map(|dc| {
            common::s3::moto(
                dir,
                &unique(&format!("vault-{dc}")).replace('_', "-"),
                true,
                false,
            )
        })
        .collect();
    let mut cfgs = Vec::new();
    for dc in ["dc1", "dc2"] {
        let d = dir.join(dc);
        for sub in ["secrets", "etc", "state", "backups"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("secrets/db_backup_password"), &base.dump_password).unwrap();
        std::fs::copy(&admin_pw, d.join("secrets/db_desync_password")).unwrap();
        std::fs::copy(
            testdata("agent.sec.asc"),
            d.join("secrets/agent_signing_key"),
        )
        .unwrap();
        std::fs::copy(testdata("dpo.pub.asc"), d.join("etc/dpo.asc")).unwrap();
        std::fs::write(d.join("secrets/webhook_url"), "http://127.0.0.1:9/unused").unwrap();
        std::fs::write(d.join("secrets/smtp_password"), "unused").unwrap();
        for v in ["dc1", "dc2"] {
            std::fs::copy(
                &vaults[0].key_id_file,
                d.join(format!("secrets/s3_{v}_access_key_id")),
            )
            .unwrap();
            std::fs::copy(
                &vaults[0].secret_file,
                d.join(format!("secrets/s3_{v}_secret_access_key")),
            )
            .unwrap();
        }
        let text =
            std::fs::read_to_string(repo_root().join(format!("compose/config/agent-{dc}.toml")))
                .unwrap();
        let mut mapped = text
            .replacen("\"mariadb-backups\"", &format!("{:?}", vaults[0].bucket), 1)
            .replacen("\"mariadb-backups\"", &format!("{:?}", vaults[1].bucket), 1)
            .replace(
                "\"https://s3.dc1.example.org\"",
                &format!("{:?}", vaults[0].url),
            )
            .replace(
                "\"https://s3.dc2.example.org\"",
                &format!("{:?}", vaults[1].url),
            )
            .replace("region = \"dc1\"", "region = \"us-east-1\"")
            .replace("region = \"dc2\"", "region = \"us-east-1\"")
            .replace("/run/secrets/", &format!("{}/secrets/", d.display()))
            .replace("/etc/backup-agent/", &format!("{}/etc/", d.display()))
            .replace(
                "\"/var/lib/backup-agent\"",
                &format!("{:?}", d.join("state")),
            )
            .replace(
                "\"/var/backups/mariadb\"",
                &format!("{:?}", d.join("backups")),
            )
            .replace(
                "admin_user = \"backup_desync\"",
                &format!("admin_user = \"{admin}\""),
            )
            .replace(
                "user = \"backup\"",
                &format!(
                    "user = \"{}\"\ndatabases = {{ include = [\"{db}\"] }}",
                    base.dump_user
                ),
            );
        for (i, host) in [(1, "galera1"), (2, "galera2"), (3, "galera3")] {
            for h in [
                host.to_string(),
                format!("{host}.dc1.internal"),
                format!("{host}.dc2.internal"),
            ] {
                mapped = mapped.replace(
                    &format!("host = \"{h}\", port = 3306"),
                    &format!("host = \"127.0.0.1\", port = {}", c.node(i).port),
                );
            }
        }
        assert!(
            !mapped.contains("port = 3306"),
            "every node mapped: {mapped}"
        );
        let cfg = d.join(format!("agent-{dc}.toml"));
        std::fs::write(&cfg, mapped).unwrap();
        cfgs.push(cfg);
    }
    let agent = |i: usize, args: &[&str]| {
        Command::new(agent_bin())
            .arg("--config")
            .arg(&cfgs[i])
            .args(args)
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for i in 0..2 {
        let o = agent(i, &["check-config"]).wait_with_output().unwrap();
        ok(&o, "check-config of the compose config");
        assert!(String::from_utf8_lossy(&o.stdout)
            .contains("desync on; cluster lease in backup_agent.lease"));
    }
    // Both sidecars fire on the same slot.
    let slot = daemon_slot(fresh_slot_base(2200));
    let (p1, p2) = (
        agent(0, &["backup", "--slot", &slot]),
        agent(1, &["backup", "--slot", &slot]),
    );
    let outs = [
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    ];
    for o in &outs {
        ok(o, "backup with the compose config");
    }
    let texts: Vec<String> = outs.iter().map(text).collect();
    let holder = texts
        .iter()
        .position(|t| t.contains("verified copies on"))
        .expect("one agent dumps");
    let standby = 1 - holder;
    assert!(
        texts[holder].contains("policy: compliant"),
        "{}",
        texts[holder]
    );
    assert!(
        texts[standby].contains(&format!("produced by agent agent-dc{}", holder + 1)),
        "{}",
        texts[standby]
    );
    // The standby sees the backup in both object stores and copies it to its own disk:
    // it meets copies 2, media 2, offsite 1, immutable 1 on its own.
    assert!(
        texts[standby].contains("3 verified copies, policy compliant"),
        "{}",
        texts[standby]
    );
    for v in &vaults {
        assert_eq!(v.keys("galera/").len(), 3, "one backup in {}", v.bucket);
    }
    let row = c.node(1).sql(&format!(
        "SELECT holder, state FROM backup_agent.lease WHERE source = 'galera' AND slot = '{slot}'"
    ));
    assert_eq!(row.trim(), format!("agent-dc{}\tdone", holder + 1));
    // Both healthchecks: fresh, but no drill on record yet (drill_max_age is set).
    for i in 0..2 {
        let o = agent(i, &["healthcheck"]).wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("no restore drill on record"),
            "{}",
            text(&o)
        );
    }
    assert_eq!(c.desync_flag(1), "0");
    c.node(1).drop_db(&db);
}

#[test]
fn a_holder_frozen_past_its_lease_loses_the_slot_and_keeps_nothing() {
    let c = cluster();
    let db = filler_db(&c, 1500);
    let (a, b, shared) = two_agents(&c, &db, "rate_limit = \"64KiB\"", "lease_ttl = \"3s\"");
    let slot = daemon_slot(fresh_slot_base(2300));
    let mut pa = spawn_agent(&a, &c, &["backup", "--slot", &slot], "frozen");
    wait_for("agent A to hold the slot", Duration::from_secs(15), || {
        lease_rows(&c, &slot)
            .first()
            .is_some_and(|r| r[1] == a_name(&a) && r[2] == "running")
    });
    wait_dump_started(&c, &a);
    // A freezes (a paused VM, a stopped container) for longer than the lease TTL.
    Command::new("kill")
        .args(["-STOP", &pa.id().to_string()])
        .status()
        .unwrap();
    let o = b.agent(c.node(1), &["backup", "--slot", &slot]);
    let lb = text(&o);
    Command::new("kill")
        .args(["-CONT", &pa.id().to_string()])
        .status()
        .unwrap();
    ok(&o, "B takes over the expired slot");
    assert!(lb.contains("lease_takeover"), "{lb}");
    // A wakes up, finds the lease gone at its next renewal and cancels its own run.
    let st = wait_child(&mut pa, Duration::from_secs(60));
    let la = read_log(&a, "frozen");
    assert_eq!(st.code(), Some(1), "{la}");
    assert!(la.contains("taken over by another agent"), "{la}");
    assert!(!la.contains("backup_succeeded"), "{la}");
    let rows = lease_rows(&c, &slot);
    assert_eq!(
        (rows[0][1].as_str(), rows[0][2].as_str()),
        (a_name(&b).as_str(), "done")
    );
    // Exactly B's backup for this slot; nothing of A's run anywhere.
    let m = manifests(&shared);
    assert_eq!(m.len(), 1, "{:?}", m);
    assert_eq!(m[0]["galera"]["lease"]["holder"], a_name(&b).as_str());
    assert!(
        a.store_files().is_empty(),
        "A kept something: {:?}",
        a.store_files()
    );
    let shared_files: Vec<String> = std::fs::read_dir(shared.join("main"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        shared_files.len(),
        3,
        "only B's three objects: {shared_files:?}"
    );
    c.node(1).drop_db(&db);
}

#[test]
fn a_cancelled_run_turns_the_desync_off() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let (mut s, _) = n1_desync_setup(
        &c,
        &db,
        "rate_limit = \"128KiB\"\nschedule = \"*/2 * * * * *\"",
    );
    s.agent_extra
        .push_str(&format!("http_bind = \"127.0.0.1:{}\"\n", free_port()));
    let mut d = spawn_agent(&s, &c, &["run", "--shutdown-timeout", "1h"], "daemon");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(20),
    );
    // First signal: drain (the running backup may finish); second: cancel it now.
    for _ in 0..2 {
        Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = wait_child(&mut d, Duration::from_secs(30));
    let log = read_log(&s, "daemon");
    assert!(st.success(), "{log}");
    assert!(log.contains("backup_cancelled"), "{log}");
    assert_eq!(
        c.desync_flag(1),
        "0",
        "desync left on by a cancelled run: {log}"
    );
    assert!(markers(&s).is_empty());
    assert!(manifests(&s.store()).is_empty(), "{:?}", s.store_files());
    c.node(1).drop_db(&db);
}

/// The admin account stops working during the dump (its password changed on the server):
/// the backup itself is good, but wsrep_desync stays ON. The agent says so (`desync_stuck`
/// naming the node, the marker kept), and once the account works again the next run turns
/// it off at its start and sends `recovered`.
#[test]
fn a_desync_that_cannot_be_turned_off_alerts_until_a_later_run_clears_it() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let hook = Receiver::start(Mode::Ok);
    let (mut s, admin) = n1_desync_setup(&c, &db, "rate_limit = \"256KiB\"");
    webhook(&mut s, &hook);
    let set_admin_password = |pw: &str| {
        for host in ["127.0.0.1", "localhost"] {
            c.node(1).sql(&format!(
                "ALTER USER '{admin}'@'{host}' IDENTIFIED BY '{pw}'"
            ));
        }
    };

    let mut child = spawn_agent(&s, &c, &["backup"], "stuck");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    set_admin_password("changed-meanwhile");
    let st = wait_child(&mut child, Duration::from_secs(60));
    let log = read_log(&s, "stuck");
    // The backup is complete and verified: it counts as made.
    assert!(st.success(), "{log}");
    assert_eq!(manifests(&s.store()).len(), 1, "{log}");
    assert!(log.contains("desync_off_failed"), "{log}");
    assert_eq!(c.desync_flag(1), "1", "the OFF should have failed: {log}");
    assert_eq!(markers(&s).len(), 1, "the marker stays: {log}");
    let a = hook.wait_event("desync_stuck", Duration::from_secs(5));
    assert_eq!(a["status"], "error", "{a}");
    let msg = a["message"].as_str().unwrap();
    assert!(
        msg.contains("wsrep_desync is still ON on n1 (127.0.0.1:")
            && msg.contains("SET GLOBAL wsrep_desync=OFF"),
        "{a}"
    );
    assert_eq!(a["details"]["nodes"][0]["node"], "n1", "{a}");
    assert!(
        !hook.bodies().iter().any(|b| b["event"] == "backup_failed"),
        "the backup itself did not fail: {:?}",
        hook.bodies()
    );

    // The account works again: the next run turns the desync off before anything else,
    // backs up, and the condition clears.
    set_admin_password("adm-pw");
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup after the admin account was fixed");
    assert!(node.is_some(), "{}", text(&o));
    assert!(text(&o).contains("desync_cleared"), "{}", text(&o));
    assert_eq!(c.desync_flag(1), "0");
    assert!(markers(&s).is_empty(), "{:?}", markers(&s));
    wait_for("the recovered alert", Duration::from_secs(5), || {
        hook.bodies().iter().any(|b| {
            b["event"] == "recovered" && b["message"].as_str().unwrap_or("").contains("desync")
        })
    });
    assert_eq!(
        hook.bodies()
            .iter()
            .filter(|b| b["event"] == "desync_stuck")
            .count(),
        1,
        "{:?}",
        hook.bodies()
    );
    c.node(1).drop_db(&db);
}

#[test]
fn a_missing_or_ungranted_lease_table_fails_the_slot_with_the_sql_to_fix_it() {
    let c = cluster();
    let db = filler_db(&c, 50);
    let lease_db = unique("nolease");
    let hook = Receiver::start(Mode::Ok);
    let mut s = n1_setup(&c, &db, "", &format!("lease_database = \"{lease_db}\""));
    webhook(&mut s, &hook);
    // No table, and the dump account may not create one.
    let (o, _) = backup(&s, &c, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("cluster lease for slot manual"), "{err}");
    assert!(
        err.contains(&format!("CREATE TABLE IF NOT EXISTS `{lease_db}`.`lease`")),
        "{err}"
    );
    assert!(
        err.contains("GRANT SELECT, INSERT, UPDATE, DELETE"),
        "{err}"
    );
    assert!(manifests(&s.store()).is_empty());
    hook.wait_event("backup_failed", Duration::from_secs(5));
    // The table exists but the account has no grant on it.
    for stmt in backup_agent::source::galera::lease_ddl(&lease_db).split(";\n") {
        c.node(1).sql(stmt);
    }
    let (o, _) = backup(&s, &c, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("may not use the lease table") && err.contains("GRANT"),
        "{err}"
    );
    assert!(manifests(&s.store()).is_empty());
    // Granted: it works.
    for host in ["127.0.0.1", "localhost"] {
        c.node(1).sql(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON `{lease_db}`.lease TO '{}'@'{host}'",
            s.dump_user
        ));
    }
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup once the lease table is granted");
    assert_eq!(node.as_deref(), Some("n1"));
    c.node(1).drop_db(&lease_db);
    c.node(1).drop_db(&db);
}
