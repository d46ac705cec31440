//! Point-in-time recovery (issue 13): `restore --into --until TIME` and `--until-gtid`
//! against the real source server, with backups and segments archived by the real agent
//! binary; exactness is checked against the state the writer saw at each point, and a
//! target outside the window or a tampered or missing segment is refused before anything
//! reaches the target.
//!
//! Other tests write to the same source at the same time: their transactions are in the
//! archived log and the restore skips them (other databases), as it must on any shared
//! server.

mod common;
use common::pitr::*;
use common::*;

use std::path::PathBuf;
use std::time::Duration;

#[test]
fn restore_until_a_time_or_a_gtid_gives_exactly_the_rows_of_that_moment() {
    let src = source();
    let dst = target();
    let db = pitr_db(&src, &dst, "pitr");
    src.sql_db(
        &db,
        "INSERT INTO t1 SELECT seq, CONCAT('seed-', seq), seq FROM seq_1_to_200;\
         INSERT INTO t2 (note, amount) SELECT CONCAT('seed-', seq), seq / 4 FROM seq_1_to_100",
    );
    let setup = Setup::new(&src, &db);
    grant_streaming(&src, &setup);
    ok(&setup.agent(&src, &["backup"]), "backup 1");
    // The first archiving pass starts the chain at the newest backup's snapshot.
    ok(
        &setup.agent(&src, &["archive-binlog"]),
        "first archiving pass",
    );

    write_some(&src, &db, 1, 8);
    let gtid_a = write_some(&src, &db, 2, 3);
    let state_a = fingerprint(&src, &db);
    write_some(&src, &db, 3, 6);
    std::thread::sleep(Duration::from_millis(1100));
    ok(&setup.agent(&src, &["backup"]), "backup 2 (in the middle)");
    write_some(&src, &db, 4, 9);
    let state_b = fingerprint(&src, &db);
    let s1 = server_now(&src);
    while server_now(&src) < s1 + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bad DELETE, then more work.
    commit(&src, &db, "DELETE FROM t1 WHERE id < 150");
    write_some(&src, &db, 5, 6);
    ok(
        &setup.agent(&src, &["archive-binlog", "--segment-size", "4KiB"]),
        "archiving pass",
    );
    let segs = chain(&setup.store());
    assert!(segs.len() >= 3, "several segments: {}", segs.len());

    // To the second before the DELETE: the second backup and the log after it.
    let until = rfc3339(s1 + 1);
    let o = restore(&restore_args(&setup, &src, &dst, &["--until", &until]));
    ok(&o, "restore --until");
    let err = stderr(&o);
    eprintln!("{err}");
    let backups: Vec<String> = std::fs::read_dir(setup.store().join("main"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql.gz.gpg"))
        .map(|n| n.trim_end_matches(".sql.gz.gpg").to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(err.contains(&format!("backup {}", backups[1])), "{err}");
    assert_same(&state_b, &fingerprint(&dst, &db));
    dst.drop_db(&db);

    // To a GTID before the second backup: the first backup and the log after it.
    let o = restore(&restore_args(
        &setup,
        &src,
        &dst,
        &["--until-gtid", &gtid_a],
    ));
    ok(&o, "restore --until-gtid");
    assert!(
        stderr(&o).contains(&format!("backup {}", backups[0])),
        "{}",
        stderr(&o)
    );
    assert_same(&state_a, &fingerprint(&dst, &db));
    dst.drop_db(&db);

    // Refused, nothing restored: no zone; after the newest archived event.
    let o = restore(&restore_args(
        &setup,
        &src,
        &dst,
        &["--until", "2026-12-02T10:15:00"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give Z or an offset"), "{}", stderr(&o));
    let o = restore(&restore_args(
        &setup,
        &src,
        &dst,
        &["--until", &rfc3339(s1 + 86_400)],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside the recoverable window"),
        "{}",
        stderr(&o)
    );
    assert!(!dst.databases().contains(&db));

    // The segment that holds transaction `gtid_a` (domain 0 sequence numbers order it).
    let seq = |g: &str| -> u64 {
        g.split(',')
            .find(|x| x.starts_with("0-"))
            .and_then(|x| x.rsplit('-').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let target_seq = seq(&gtid_a);
    let (victim, vm) = segs
        .iter()
        .find(|(_, m)| {
            seq(m["previous_gtid"].as_str().unwrap()) < target_seq
                && target_seq <= seq(m["end_position"].as_str().unwrap())
        })
        .expect("a segment holds the target");
    let until_a = ["--until-gtid", gtid_a.as_str()];

    // A flipped byte in a segment of the chain: refused before the target is touched.
    let good = std::fs::read(victim).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(victim, &bad).unwrap();
    let o = restore(&restore_args(&setup, &src, &dst, &until_a));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert!(!dst.databases().contains(&db));
    std::fs::write(victim, &good).unwrap();

    // Its manifest re-signed by a key nobody trusts: the segment does not count, the chain
    // has a gap there, and the restore says why.
    let id = vm["segment_id"].as_str().unwrap().to_string();
    let manifest = victim.with_file_name(format!("{id}.manifest.json"));
    let sig = victim.with_file_name(format!("{id}.manifest.json.sig"));
    let good_sig = std::fs::read(&sig).unwrap();
    let g = Gpg::new();
    g.gen_key("intruder@test.invalid", "ed25519", None, "0");
    std::fs::remove_file(&sig).unwrap();
    ok(
        &g.run(&[
            "--local-user",
            "intruder@test.invalid",
            "--armor",
            "--output",
            sig.to_str().unwrap(),
            "--detach-sign",
            manifest.to_str().unwrap(),
        ]),
        "gpg --detach-sign",
    );
    let o = restore(&restore_args(&setup, &src, &dst, &until_a));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad signature"), "{}", stderr(&o));
    assert!(!dst.databases().contains(&db));
    std::fs::write(&sig, good_sig).unwrap();

    // A segment removed from the middle of the chain: the window closes at the gap.
    let aside = setup.path("aside");
    std::fs::create_dir_all(&aside).unwrap();
    let moved: Vec<PathBuf> = std::fs::read_dir(victim.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&id))
        .collect();
    assert_eq!(moved.len(), 4);
    for p in &moved {
        std::fs::rename(p, aside.join(p.file_name().unwrap())).unwrap();
    }
    let o = restore(&restore_args(&setup, &src, &dst, &until_a));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside the recoverable window"),
        "{}",
        stderr(&o)
    );
    assert!(!dst.databases().contains(&db));
    src.drop_db(&db);
}

#[test]
fn the_daemon_archives_continuously_survives_sigkill_at_every_step_and_restores_exactly() {
    use common::daemon::*;
    let src = source();
    let dst = target();
    let db = pitr_db(&src, &dst, "pitrd");
    src.sql_db(
        &db,
        "INSERT INTO t1 SELECT seq, CONCAT('seed-', seq), seq FROM seq_1_to_100",
    );
    let mut setup = Setup::new(&src, &db);
    grant_streaming(&src, &setup);
    let http = common::receivers::free_port();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    // A schedule that does not fire during the test; the backup is taken by hand.
    setup.extra = "schedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n[source.binlog]\nsegment_max_age = \"2s\"\nsegment_max_size = \"8KiB\"\nmax_lag = \"60s\"\n".into();
    ok(&setup.agent(&src, &["backup"]), "backup");

    let start = |kill_at: Option<&str>| {
        let cfg = setup.config(&src);
        let mut c = std::process::Command::new(agent_bin());
        c.args(["--config", cfg.to_str().unwrap(), "run"])
            .stderr(std::fs::File::create(setup.path("daemon.log")).unwrap())
            .stdout(std::fs::File::create(setup.path("daemon.err")).unwrap());
        if let Some(k) = kill_at {
            c.env("BACKUP_AGENT_TEST_KILL_AT", k);
        }
        c.spawn().unwrap()
    };
    let lag = |port: u16| -> f64 {
        metrics(port)
            .iter()
            .find(|(k, _)| k == "backup_binlog_lag_seconds{source=\"main\"}")
            .map_or(-1.0, |(_, v)| *v)
    };
    let mut child = start(None);
    wait_for("the archiver to catch up", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() && lag(http) >= 0.0
    });

    // Killed at each step of storing a segment, and once with a segment open in memory.
    for (round, point) in [
        "segment-data",
        "segment-signature",
        "segment-manifest",
        "segment-recorded",
        "",
    ]
    .iter()
    .enumerate()
    {
        let _ = child.kill();
        let _ = child.wait();
        child = start((!point.is_empty()).then_some(*point));
        write_some(&src, &db, 10 + round as u32, 5);
        if point.is_empty() {
            // SIGKILL while the segment is open (its age limit is 2 s).
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
        }
        let status = {
            let t0 = std::time::Instant::now();
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break Some(s);
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(9),
            "the agent was killed at {point:?}: {status:?}\n{}",
            std::fs::read_to_string(setup.path("daemon.log")).unwrap_or_default()
        );
        child = start(None);
    }
    let last = write_some(&src, &db, 30, 4);
    let want = fingerprint(&src, &db);
    let last_seq: u64 = last.rsplit('-').next().unwrap().parse().unwrap();
    wait_for(
        "the last transaction to be archived",
        Duration::from_secs(40),
        || {
            let c = chain(&setup.store());
            c.last().is_some_and(|(_, m)| {
                m["end_position"].as_str().unwrap().split(',').any(|g| {
                    g.starts_with(&format!("{}-", last.split('-').next().unwrap()))
                        && g.rsplit('-').next().unwrap().parse::<u64>().unwrap() >= last_seq
                })
            })
        },
    );
    wait_for(
        "the archive to be caught up",
        Duration::from_secs(30),
        || {
            let l = lag(http);
            (0.0..10.0).contains(&l)
        },
    );
    let m = metrics(http);
    assert_eq!(metric(&m, "backup_binlog_gaps_total{source=\"main\"}"), 0.0);
    assert!(
        metric(
            &m,
            "backup_recoverable_until_timestamp_seconds{source=\"main\"}"
        ) > 0.0
    );
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 0, "{line}");
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // One chain through every segment (no gap, no overlap, no duplicate), and no partial
    // segment visible.
    let c = chain(&setup.store());
    let (objects, manifests) = segment_objects(&setup.store());
    assert_eq!(c.len(), manifests, "every segment is in one chain");
    assert_eq!(objects, 4 * manifests, "no objects without a manifest");

    let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", &last]));
    ok(&o, "restore --until-gtid after the kills");
    assert_same(&want, &fingerprint(&dst, &db));
    dst.drop_db(&db);
    src.drop_db(&db);
}

#[test]
fn check_config_names_what_binlog_archiving_needs() {
    let src = source();
    let db = unique("pchk");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    let mut setup = Setup::new(&src, &db);
    setup.extra = "[source.binlog]\n".into();
    let o = setup.agent(&src, &["check-config"]);
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(out.contains("REPLICATION SLAVE"), "{out}");
    grant_streaming(&src, &setup);
    let o = setup.agent(&src, &["check-config"]);
    ok(&o, "check-config with the grant");
    // A bad value is named with its key.
    setup.extra = "[source.binlog]\nsegment_max_size = \"1KiB\"\nmax_lag = \"30s\"\nsegment_max_age = \"1m\"\n".into();
    let o = setup.agent(&src, &["check-config"]);
    assert!(!o.status.success());
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(out.contains("source[0].binlog.segment_max_size"), "{out}");
    assert!(out.contains("source[0].binlog.max_lag"), "{out}");
    src.drop_db(&db);
}

#[test]
fn retention_keeps_exactly_the_segments_the_pitr_window_needs() {
    let src = source();
    let dst = target();
    let db = pitr_db(&src, &dst, "pret");
    let mut setup = Setup::new(&src, &db);
    grant_streaming(&src, &setup);
    // The local store keeps 10 daily backups; the window is 7 days.
    setup.stores = "[store.retention]\nkeep_daily = 10\n".into();
    setup.extra = "[source.binlog]\npitr_window = \"7d\"\n".into();
    let day = |d: u32| format!("2026-10-{d:02}T02:00:00Z");
    let mut mid24 = (String::new(), Default::default());
    for d in 1..=30 {
        let first = write_some(&src, &db, d, 1);
        if d == 24 {
            mid24 = (first, fingerprint(&src, &db));
        }
        write_some(&src, &db, 100 + d, 1);
        ok(&setup.agent(&src, &["backup", "--now", &day(d)]), "backup");
        ok(
            &setup.agent(&src, &["archive-binlog", "--segment-size", "4KiB"]),
            "archive",
        );
    }
    let anchor: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            setup
                .store()
                .join("main/mariadb_2026-10-23_020000.manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let anchor_gtid = anchor["binlog"]["gtid"].as_str().unwrap().to_string();
    let seq0 = |list: &str| -> u64 {
        list.split(',')
            .find(|g| g.starts_with("0-"))
            .and_then(|g| g.rsplit('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let before: Vec<(String, u64)> = segments(&setup.store())
        .iter()
        .map(|(_, m)| {
            (
                m["segment_id"].as_str().unwrap().to_string(),
                seq0(m["end_position"].as_str().unwrap()),
            )
        })
        .collect();
    let needed: std::collections::BTreeSet<String> = before
        .iter()
        .filter(|(_, end)| *end > seq0(&anchor_gtid))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        needed.len() < before.len() && !needed.is_empty(),
        "{before:?}"
    );

    let now = "2026-10-30T03:00:00Z";
    let o = setup.agent(&src, &["prune", "--dry-run", "--now", now]);
    ok(&o, "prune --dry-run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("needed from backup mariadb_2026-10-2"),
        "{out}"
    );
    assert!(
        out.contains("before backup mariadb_2026-10-23_020000"),
        "{out}"
    );
    // Kept segments are named by range, each with the backup that needs it.
    let kept_listed = kept_segments_listed(&out, "mariadb_2026-10-");
    assert_eq!(kept_listed, needed.len(), "{out}");
    assert_eq!(
        segments(&setup.store()).len(),
        before.len(),
        "a dry run deletes nothing"
    );
    ok(&setup.agent(&src, &["prune", "--now", now]), "prune");
    let after: std::collections::BTreeSet<String> = segments(&setup.store())
        .iter()
        .map(|(_, m)| m["segment_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        after, needed,
        "exactly the segments after the window's anchor remain"
    );
    let (_, manifests) = segment_objects(&setup.store());
    let (objects, _) = segment_objects(&setup.store());
    assert_eq!(objects, 4 * manifests, "whole segments removed");

    // A point inside the window is still reachable: backup of day 23, then the log.
    let (gtid, state) = mid24;
    let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", &gtid]));
    ok(&o, "restore inside the window after prune");
    assert!(
        stderr(&o).contains("backup mariadb_2026-10-23_020000"),
        "{}",
        stderr(&o)
    );
    assert_same(&state, &fingerprint(&dst, &db));
    dst.drop_db(&db);
    src.drop_db(&db);
}

#[test]
fn segments_are_scrubbed_counted_in_the_policy_and_repaired_byte_for_byte() {
    let src = source();
    let dst = target();
    let db = pitr_db(&src, &dst, "pscr");
    let mut setup = Setup::new(&src, &db);
    grant_streaming(&src, &setup);
    let s3 = common::s3::moto(
        setup.dir.path(),
        &unique("pscr").replace('_', "-"),
        false,
        false,
    );
    let prefix = unique("t");
    setup.stores = s3.store_toml("s3", "dc2", &prefix, &s3.url, "");
    setup.policy = "[policy]\ncopies = 2\nmedia = 1\noffsite = 1\n".into();
    ok(&setup.agent(&src, &["backup"]), "backup");
    ok(&setup.agent(&src, &["archive-binlog"]), "first pass");
    write_some(&src, &db, 1, 40);
    let last = write_some(&src, &db, 2, 4);
    let want = fingerprint(&src, &db);
    ok(
        &setup.agent(&src, &["archive-binlog", "--segment-size", "4KiB"]),
        "archive",
    );
    let segs = chain(&setup.store());
    assert!(segs.len() >= 3, "{}", segs.len());
    let o = setup.agent(&src, &["scrub", "--all"]);
    ok(&o, "scrub of good segments");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 failed, 0 not meeting the policy"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // One segment gone from the local store, another changed on S3.
    let (gone_path, gone) = &segs[1];
    let gone_id = gone["segment_id"].as_str().unwrap().to_string();
    for e in std::fs::read_dir(gone_path.parent().unwrap())
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&gone_id) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let bad_id = segs[2].1["segment_id"].as_str().unwrap().to_string();
    let bad_key = format!("{prefix}/main/binlog/{bad_id}.binlog.gz.gpg");
    let mut bytes = s3.get(&bad_key);
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    s3.put(&bad_key, bytes);
    let o = setup.agent(&src, &["scrub", "--all"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!("FAILED: segment {bad_id} on s3")),
        "{out}"
    );
    assert!(out.contains(&format!("segment {gone_id}: ")), "{out}");

    // The daemon's hourly look at the segments (the first one at its start) alerts.
    {
        use common::daemon::*;
        use common::receivers::*;
        let hook = Receiver::start(Mode::Ok);
        std::fs::write(
            setup.path("webhook.url"),
            format!("http://127.0.0.1:{}/hook\n", hook.port),
        )
        .unwrap();
        setup.agent_extra = format!(
            "http_bind = \"127.0.0.1:{}\"\ncheck_interval = \"1s\"\n",
            free_port()
        );
        setup.tail = format!(
            "[alerts]\nrepeat_interval = \"1h\"\n[alerts.webhook]\nurl_file = {:?}\ntimeout = \"2s\"\nretries = 1\n",
            setup.path("webhook.url")
        );
        setup.extra = "schedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n[source.binlog]\n".into();
        let mut d = start_daemon(&setup, &src, &[]);
        wait_for(
            "policy_degraded naming the missing segment",
            Duration::from_secs(30),
            || {
                hook.bodies().iter().any(|b| {
                    b["event"] == "policy_degraded"
                        && b["message"].as_str().is_some_and(|m| {
                            m.contains("archived binary log segments") && m.contains(&gone_id)
                        })
                })
            },
        );
        sigterm(&d);
        assert!(d.wait().unwrap().success());
    }

    let o = setup.agent(&src, &["repair"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!("copied segment {gone_id} -> local")),
        "{out}"
    );
    assert!(
        out.contains(&format!("copied segment {bad_id} -> s3")),
        "{out}"
    );
    ok(
        &setup.agent(&src, &["scrub", "--all"]),
        "scrub after repair",
    );
    // Byte for byte: the repaired manifest and signature are the other store's.
    for suffix in [".manifest.json", ".manifest.json.sig"] {
        assert_eq!(
            std::fs::read(gone_path.with_file_name(format!("{gone_id}{suffix}"))).unwrap(),
            s3.get(&format!("{prefix}/main/binlog/{gone_id}{suffix}"))
        );
    }
    let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", &last]));
    ok(&o, "restore after repair");
    assert_same(&want, &fingerprint(&dst, &db));
    dst.drop_db(&db);
    src.drop_db(&db);
}

#[test]
fn a_segment_that_misses_a_store_alerts_policy_degraded() {
    use common::daemon::*;
    use common::receivers::*;
    let src = source();
    let db = pitr_db(&src, &target(), "pdeg");
    let mut setup = Setup::new(&src, &db);
    grant_streaming(&src, &setup);
    let hook = Receiver::start(Mode::Ok);
    std::fs::write(
        setup.path("webhook.url"),
        format!("http://127.0.0.1:{}/hook\n", hook.port),
    )
    .unwrap();
    let http = free_port();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    setup.extra = "schedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n[source.binlog]\nsegment_max_age = \"1s\"\n".into();
    setup.tail = format!(
        "[alerts]\nrepeat_interval = \"1h\"\n[alerts.webhook]\nurl_file = {:?}\ntimeout = \"2s\"\nretries = 1\n",
        setup.path("webhook.url")
    );
    ok(&setup.agent(&src, &["backup"]), "backup");
    // A second store that is down while the daemon archives.
    let dead = free_port();
    std::fs::write(setup.path("k"), "x\n").unwrap();
    setup.stores = format!(
        "[[store]]\nname = \"offsite\"\nkind = \"s3\"\nsite = \"dc2\"\nendpoint = \"http://127.0.0.1:{dead}\"\nbucket = \"b\"\nregion = \"r\"\npath_style = true\naccess_key_id_file = {k:?}\nsecret_access_key_file = {k:?}\n",
        k = setup.path("k")
    );
    let mut d = start_daemon(&setup, &src, &[]);
    write_some(&src, &db, 1, 4);
    // The archiver's own alert (the daemon's hourly look at the segments may also report
    // the unreachable store, in an alert of its own).
    wait_for(
        "the archiver's policy_degraded",
        Duration::from_secs(40),
        || {
            hook.bodies().iter().any(|b| {
                b["event"] == "policy_degraded"
                    && b["message"].as_str().is_some_and(|m| {
                        m.contains("binary log segments are not stored on every store")
                            && m.contains("offsite")
                    })
            })
        },
    );
    sigterm(&d);
    assert!(d.wait().unwrap().success());
    src.drop_db(&db);
}

#[test]
fn an_archiver_that_cannot_stream_alerts_and_turns_critical_when_it_lags() {
    use common::daemon::*;
    use common::receivers::*;
    let src = source();
    let db = pitr_db(&src, &target(), "plag");
    let mut setup = Setup::new(&src, &db);
    let grant = |verb: &str| {
        for host in ["127.0.0.1", "localhost"] {
            src.sql(&format!(
                "{verb} REPLICATION SLAVE ON *.* {} '{}'@'{host}'",
                if verb == "GRANT" { "TO" } else { "FROM" },
                setup.dump_user
            ));
        }
    };
    grant("GRANT");
    let hook = Receiver::start(Mode::Ok);
    std::fs::write(
        setup.path("webhook.url"),
        format!("http://127.0.0.1:{}/hook\n", hook.port),
    )
    .unwrap();
    let http = free_port();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    setup.extra = "schedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n[source.binlog]\nsegment_max_age = \"1s\"\nmax_lag = \"10s\"\n".into();
    setup.tail = format!(
        "[alerts]\nrepeat_interval = \"1h\"\n[alerts.webhook]\nurl_file = {:?}\ntimeout = \"2s\"\nretries = 1\n",
        setup.path("webhook.url")
    );
    ok(&setup.agent(&src, &["backup"]), "backup");
    // The archiver's account loses the replication grant before the daemon starts.
    grant("REVOKE");
    let mut d = start_daemon(&setup, &src, &[]);
    let failed = hook.wait_event("binlog_failed", Duration::from_secs(30));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("binary log archiving failed"),
        "{failed}"
    );
    let lag = hook.wait_event("binlog_lag", Duration::from_secs(30));
    assert!(lag["message"].as_str().unwrap().contains("behind"), "{lag}");
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("binary log archiving has stored nothing yet")
            || line.contains("binary log archive is"),
        "{line}"
    );
    // Fixed: archiving catches up, "recovered" goes out, healthy again.
    grant("GRANT");
    write_some(&src, &db, 1, 3);
    wait_for("recovered", Duration::from_secs(60), || {
        hook.events().iter().filter(|e| *e == "recovered").count() >= 1
    });
    wait_for("healthcheck OK", Duration::from_secs(30), || {
        healthcheck(&setup, &src).0 == 0
    });
    sigterm(&d);
    assert!(d.wait().unwrap().success());
    src.drop_db(&db);
}
