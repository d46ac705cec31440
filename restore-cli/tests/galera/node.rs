//! Node choice, a dump under load, a node killed mid-dump, replicated DDL, restore into the cluster.

use super::*;

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
    // Every table read over two connections, in one snapshot held across them by the
    // commit lock on a Galera node.
    let s = n1_setup(
        &c,
        &db,
        "rate_limit = \"256KiB\"\nparallel_table_size = \"0\"",
        "lease = false",
    );
    let w = Transfers::start(
        [2usize, 3]
            .iter()
            .map(|&i| Mover {
                port: c.node(i).port,
                password: c.node(i).password.clone(),
                db: db.clone(),
                from: (1, 50),
                to: (1, 50),
                log: true,
            })
            .collect(),
    );
    w.wait_for(50, Duration::from_secs(20));
    let before = w.committed();
    let t0 = Instant::now();
    let (o, node) = backup(&s, &c, &[]);
    let took = t0.elapsed();
    let during = w.committed() - before;
    w.stop();
    ok(&o, "backup under load");
    assert_eq!(node.as_deref(), Some("n1"));
    assert!(
        stderr(&o).contains(&format!("\"table\":\"{db}.transfers\",\"ranges\"")),
        "transfers was not read in ranges: {}",
        stderr(&o)
    );
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
    c.drop_everywhere(&db);

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

    // Within the limit: restored through n2, replicated to n1 and n3 (certified at
    // commit, applied there a moment later: give the appliers a little time).
    let r = restore(&into_args(n2, &data, &s.path("n2.pw")));
    ok(&r, "restore into the cluster");
    for i in [1, 3] {
        let t0 = std::time::Instant::now();
        let mut got = fingerprint(c.node(i), &db);
        while got != want && t0.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            got = fingerprint(c.node(i), &db);
        }
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
