//! Point-in-time recovery on the cluster: the archiver reads one node and goes on from
//! another by GTID when that node dies (no gap, no duplicate), one archiver across two
//! agents (the cluster lease), a purged range on the new node is a gap, and nodes whose
//! GTIDs are not the cluster's are refused.

use super::*;
use common::pitr::*;

/// The writer's two tables on the cluster, seeded.
fn pitr_cluster_db(c: &Cluster) -> String {
    let db = unique("gpitr");
    let n = c.node(1);
    n.drop_db(&db);
    target().drop_db(&db);
    n.sql(&format!("CREATE DATABASE `{db}`"));
    n.sql_db(
        &db,
        "CREATE TABLE t1 (id INT PRIMARY KEY, v VARCHAR(200), n INT) ENGINE=InnoDB;\
         CREATE TABLE t2 (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT, amount DECIMAL(10,2)) ENGINE=InnoDB;\
         INSERT INTO t1 SELECT seq, CONCAT('seed-', seq), seq FROM seq_1_to_50",
    );
    db
}

const BINLOG: &str = "schedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n[source.binlog]\nsegment_max_age = \"2s\"\nsegment_max_size = \"16KiB\"\nmax_lag = \"60s\"";

/// The sequence number of a GTID (`domain-server-seq`).
fn seq(g: &str) -> u64 {
    g.rsplit('-').next().unwrap().parse().unwrap()
}

/// Whether the chain in `store` reaches GTID `g` (in its domain).
fn chain_reaches(store: &std::path::Path, g: &str) -> bool {
    let domain = g.split('-').next().unwrap();
    chain(store).last().is_some_and(|(_, m)| {
        m["end_position"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|p| p.starts_with(&format!("{domain}-")) && seq(p) >= seq(g))
    })
}

/// Every segment of `store` is in one chain, and the chain holds every transaction
/// between its start and its end exactly once (per domain: the transactions counted in
/// the manifests equal the sequence numbers covered).
fn assert_one_whole_chain(store: &std::path::Path) -> Vec<serde_json::Value> {
    let c = chain(store);
    let (objects, manifests) = segment_objects(store);
    assert!(!c.is_empty(), "no segment in {}", store.display());
    assert_eq!(c.len(), manifests, "every segment is in one chain");
    assert_eq!(objects, 4 * manifests, "no objects without a manifest");
    let pos = |s: &str| -> std::collections::BTreeMap<String, u64> {
        s.split(',')
            .filter(|g| !g.is_empty())
            .map(|g| (g.split('-').next().unwrap().to_string(), seq(g)))
            .collect()
    };
    let first = pos(c[0].1["previous_gtid"].as_str().unwrap());
    let last = pos(c.last().unwrap().1["end_position"].as_str().unwrap());
    let covered: u64 = last
        .iter()
        .map(|(d, s)| s - first.get(d).copied().unwrap_or(0))
        .sum();
    let counted: u64 = c
        .iter()
        .map(|(_, m)| m["transactions"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted, covered,
        "transactions archived vs. sequence numbers covered from {first:?} to {last:?}"
    );
    c.into_iter().map(|(_, m)| m).collect()
}

/// A daemon killed when the test ends, also when it fails (a leftover one would hold the
/// archiver's lease for the next test).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(wait_child(&mut self.0, Duration::from_secs(60)).success());
    }
}

fn agent_config(s: &mut Setup, http: u16) {
    s.agent_extra.push_str(&format!(
        "http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n"
    ));
}

#[test]
fn the_archiver_goes_on_from_another_node_when_its_node_dies_and_restores_exactly() {
    let c = cluster();
    let db = pitr_cluster_db(&c);
    let mut s = n1_setup(&c, &db, BINLOG, "lease_ttl = \"4s\"");
    s.stores = "[store.retention]\nkeep_last = 10\n".into();
    grant_streaming(c.node(1), &s);
    agent_config(&mut s, free_port());
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup");
    assert_eq!(node.as_deref(), Some("n1"));
    let b1 = manifests(&s.store())[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut d = Running(spawn_agent(&s, &c, &["run"], "daemon"));

    let g1 = write_some(c.node(1), &db, 1, 8);
    wait_for(
        "node 1's transactions archived",
        Duration::from_secs(40),
        || chain_reaches(&s.store(), &g1),
    );
    assert!(
        chain(&s.store()).iter().all(|(_, m)| m["node"] == "n1"),
        "read from the agent's own site first"
    );

    // Node 1 dies mid-stream; the cluster goes on (n2, n3) and so must the archive.
    c.signal(1, "KILL");
    let g2 = write_some(c.node(2), &db, 2, 8);
    let want = fingerprint(c.node(2), &db);
    // A second boundary for --until TIME (the log's resolution is one second).
    let t2 = server_now(c.node(2));
    while server_now(c.node(2)) <= t2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let g3 = write_some(c.node(2), &db, 3, 6);
    let t0 = Instant::now();
    while !chain_reaches(&s.store(), &g3) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the transactions written after node 1 died were not archived:\n{}",
            read_log(&s, "daemon")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = read_log(&s, "daemon");
    assert!(!log.contains("binlog_gap"), "no gap at the switch:\n{log}");
    let ms = assert_one_whole_chain(&s.store());
    let nodes: std::collections::BTreeSet<&str> =
        ms.iter().map(|m| m["node"].as_str().unwrap()).collect();
    assert!(
        nodes.contains("n1") && (nodes.contains("n2") || nodes.contains("n3")),
        "segments from n1, then another node: {nodes:?}"
    );
    // Every segment after the switch came from a live node, and chains by GTID alone.
    let after: Vec<&serde_json::Value> = ms.iter().filter(|m| m["node"] != "n1").collect();
    assert!(!after.is_empty());
    d.stop();

    // A point after the switch: exactly the rows of that moment, by GTID and by time.
    let dst = target();
    let o = restore(&restore_args(&s, c.node(2), &dst, &["--until-gtid", &g2]));
    ok(&o, "restore --until-gtid after the node switch");
    assert_same(&want, &fingerprint(&dst, &db));
    dst.drop_db(&db);
    let o = restore(&restore_args(
        &s,
        c.node(2),
        &dst,
        &["--until", &rfc3339(t2)],
    ));
    ok(&o, "restore --until after the node switch");
    assert_same(&want, &fingerprint(&dst, &db));
    dst.drop_db(&db);

    // Retention over the switch: a backup from another node (its GTID position names its
    // own domains), and every segment is kept for the backup that needs it.
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup after the switch");
    assert_ne!(node.as_deref(), Some("n1"));
    let o = s.agent(c.node(2), &["prune", "--dry-run"]);
    ok(&o, "prune --dry-run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let listed = kept_segments_listed(&out, "mariadb_");
    assert_eq!(
        listed,
        segments(&s.store()).len(),
        "every segment kept:\n{out}"
    );
    assert!(
        out.contains(&format!("needed from backup {b1}")),
        "the switch's segments serve the first backup:\n{out}"
    );
    assert!(!out.contains("drop binlog_"), "{out}");
    c.node(2).drop_db(&db);
}

#[test]
fn a_range_purged_on_the_node_the_archiver_moves_to_is_a_gap() {
    let c = cluster();
    let db = pitr_cluster_db(&c);
    let mut s = n1_setup(&c, &db, BINLOG, "lease_ttl = \"4s\"");
    grant_streaming(c.node(1), &s);
    agent_config(&mut s, free_port());
    ok(&backup(&s, &c, &[]).0, "backup");
    let o = s.agent(c.node(1), &["archive-binlog"]);
    ok(&o, "archive-binlog");
    // Transactions the archive has not fetched yet; then the surviving nodes purge them
    // and the node that still had them dies.
    let lost = write_some(c.node(1), &db, 1, 6);
    for n in [2, 3] {
        c.node(n).sql("FLUSH BINARY LOGS");
        let newest = c.node(n).sql("SHOW BINARY LOGS");
        let newest = newest.lines().last().unwrap().split('\t').next().unwrap();
        c.node(n).sql(&format!("PURGE BINARY LOGS TO '{newest}'"));
    }
    c.signal(1, "KILL");
    let after = write_some(c.node(2), &db, 2, 4);
    let o = s.agent(c.node(2), &["archive-binlog"]);
    let out = text(&o);
    assert!(!o.status.success(), "a gap is not papered over:\n{out}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("state/state.json")).unwrap()).unwrap();
    let gap = &state["sources"]["main"]["binlog"]["gap"];
    assert!(gap.is_object(), "the gap is in the state: {state}\n{out}");
    assert!(
        seq(gap["after_gtid"]
            .as_str()
            .unwrap()
            .split(',')
            .find(|g| g.starts_with("1-"))
            .unwrap())
            < seq(&lost),
        "the gap starts before the purged transactions: {gap}"
    );
    // Archiving goes on after the gap, and the restore refuses to cross it.
    ok(
        &s.agent(c.node(2), &["archive-binlog"]),
        "archive-binlog after the gap",
    );
    assert!(
        chain_reaches(&s.store(), &after)
            || segments(&s.store()).iter().any(|(_, m)| {
                m["last_gtid"]
                    .as_str()
                    .is_some_and(|g| seq(g) >= seq(&after))
            })
    );
    let dst = target();
    let o = restore(&restore_args(
        &s,
        c.node(2),
        &dst,
        &["--until-gtid", &after],
    ));
    assert!(!o.status.success(), "restore across the gap must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("gap"), "{err}");
    dst.drop_db(&db);
    c.node(2).drop_db(&db);
}

/// Puts `wsrep_gtid_mode` back on every node, also when the test fails.
struct GtidModeBack<'a>(&'a Cluster);

impl Drop for GtidModeBack<'_> {
    fn drop(&mut self) {
        for n in 1..=3 {
            let _ = self
                .0
                .node(n)
                .client()
                .args(["-e", "SET GLOBAL wsrep_gtid_mode=ON"])
                .output();
        }
    }
}

#[test]
fn nodes_without_the_clusters_gtids_are_refused_with_the_fix() {
    let c = cluster();
    let db = pitr_cluster_db(&c);
    let s = n1_setup(&c, &db, BINLOG, "");
    grant_streaming(c.node(1), &s);
    let _back = GtidModeBack(&c);
    for n in 1..=3 {
        c.node(n).sql("SET GLOBAL wsrep_gtid_mode=OFF");
    }
    let o = s.agent(c.node(1), &["archive-binlog"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("wsrep_gtid_mode is OFF") && out.contains("set wsrep_gtid_mode=ON"),
        "{out}"
    );
    assert!(segments(&s.store()).is_empty(), "nothing archived");
    let o = s.agent(c.node(1), &["check-config"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("wsrep_gtid_mode is OFF"), "{out}");
    c.node(1).drop_db(&db);
}

/// The archiver's lease row: holder and state.
fn archiver_row(c: &Cluster) -> Option<(String, String)> {
    let out = c.node(2).sql(
        "SELECT holder, state FROM backup_agent.lease WHERE source = 'main' AND slot = 'binlog-archiver'",
    );
    let line = out.lines().next()?;
    let (h, s) = line.split_once('\t')?;
    Some((h.to_string(), s.to_string()))
}

#[test]
fn two_agents_archive_through_one_and_the_other_takes_over_when_it_dies() {
    let c = cluster();
    let db = pitr_cluster_db(&c);
    let (mut a, mut b, shared) = two_agents(&c, &db, BINLOG, "lease_ttl = \"4s\"");
    grant_streaming(c.node(1), &a);
    let (pa, pb) = (free_port(), free_port());
    agent_config(&mut a, pa);
    agent_config(&mut b, pb);
    ok(&backup(&a, &c, &[]).0, "backup");
    // Whoever held the slot before (an earlier test) released it.
    let da = Running(spawn_agent(&a, &c, &["run"], "daemon"));
    let db_ = Running(spawn_agent(&b, &c, &["run"], "daemon"));
    let (an, bn) = (a_name(&a), a_name(&b));
    wait_for(
        "one agent to hold the archiver lease",
        Duration::from_secs(30),
        || archiver_row(&c).is_some_and(|(h, s)| s == "running" && (h == an || h == bn)),
    );
    let g1 = write_some(c.node(1), &db, 1, 6);
    wait_for("the holder to archive", Duration::from_secs(40), || {
        chain_reaches(&shared, &g1)
    });
    let (holder, _) = archiver_row(&c).unwrap();
    let (mut dead, mut live, dead_s, live_s, live_port) = if holder == an {
        (da, db_, &a, &b, pb)
    } else {
        (db_, da, &b, &a, pa)
    };
    // The standby says so, and reports no lag of its own.
    let standby = |port: u16| {
        common::daemon::metric(
            &common::daemon::metrics(port),
            "backup_binlog_archiver_standby{source=\"main\"}",
        )
    };
    assert_eq!(standby(live_port), 1.0);
    assert_eq!(standby(if live_port == pa { pb } else { pa }), 0.0);
    let (code, line) = common::daemon::healthcheck(live_s, c.node(1));
    assert!(line.contains("(this agent on standby)"), "{line}");
    assert!(!line.contains("binary log archive is"), "{code} {line}");
    // Exactly one archives: the standby never opened a replication stream.
    assert!(
        read_log(dead_s, "daemon").contains("binlog_follow"),
        "{}",
        read_log(dead_s, "daemon")
    );
    assert!(
        !read_log(live_s, "daemon").contains("binlog_follow"),
        "the standby must not archive: {}",
        read_log(live_s, "daemon")
    );

    // The holder dies (no release): the other agent takes over once the lease expires.
    dead.0.kill().unwrap();
    let _ = dead.0.wait();
    let killed = Instant::now();
    let g2 = write_some(c.node(2), &db, 2, 6);
    let want = fingerprint(c.node(2), &db);
    let other = a_name(live_s);
    wait_for(
        "the other agent to take the archiver over",
        Duration::from_secs(30),
        || archiver_row(&c).is_some_and(|(h, s)| h == other && s == "running"),
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(4 + 6),
        "taken over {took:?} after the holder died (TTL 4 s)"
    );
    wait_for("the new holder to archive", Duration::from_secs(40), || {
        chain_reaches(&shared, &g2)
    });
    let log = read_log(live_s, "daemon");
    assert!(
        log.contains("archiver_lease_held") && !log.contains("binlog_gap"),
        "{log}"
    );
    assert_one_whole_chain(&shared);

    // The agent that died comes back as the standby: it copies to its own disk the
    // segments archived while it was away (as it does with backups), and archives nothing.
    let mut back = Running(spawn_agent(dead_s, &c, &["run"], "back"));
    let all: std::collections::BTreeSet<String> = segments(&shared)
        .iter()
        .map(|(_, m)| m["segment_id"].as_str().unwrap().to_string())
        .collect();
    wait_for(
        "the standby's disk to hold every segment",
        Duration::from_secs(30),
        || {
            let mine: std::collections::BTreeSet<String> = segments(&dead_s.store())
                .iter()
                .map(|(_, m)| m["segment_id"].as_str().unwrap().to_string())
                .collect();
            all.is_subset(&mine)
        },
    );
    assert!(!read_log(dead_s, "back").contains("binlog_follow"));
    back.stop();
    live.stop();
    assert_eq!(
        archiver_row(&c).map(|(_, s)| s),
        Some("released".to_string()),
        "released at shutdown"
    );

    let dst = target();
    let o = restore(&restore_args(
        live_s,
        c.node(1),
        &dst,
        &["--until-gtid", &g2],
    ));
    ok(&o, "restore --until-gtid after the takeover");
    assert_same(&want, &fingerprint(&dst, &db));
    dst.drop_db(&db);
    c.node(1).drop_db(&db);
}
