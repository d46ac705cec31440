//! The cluster lease: two agents, one backup per slot, takeover, the compose configs of both sites.

use super::*;

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
    wait_for("agent A to hold the slot", Duration::from_secs(30), || {
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
    std::fs::remove_dir(a3.store()).unwrap();
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
        assert_eq!(v.keys("galera/").len(), 4, "one backup in {}", v.bucket);
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
    wait_for("agent A to hold the slot", Duration::from_secs(30), || {
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
        4,
        "only B's four objects: {shared_files:?}"
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
