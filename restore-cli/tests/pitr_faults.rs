//! Point-in-time recovery under faults a shared server must not suffer, each on a MariaDB
//! of its own: binary logs purged before the agent fetched them (a gap: detected,
//! alerted, shown in the healthcheck and /metrics, never crossed by a restore, closed by
//! the next backup), and the source server killed with SIGKILL while a writer runs (the
//! archive holds every transaction the server had sent; the loss window is measured).

mod common;
use common::daemon::*;
use common::pitr::*;
use common::private::PrivateServer;
use common::receivers::*;
use common::*;

use std::time::{Duration, SystemTime};

/// The private server's database (named after `prefix`) and a setup whose daemon archives
/// it, with webhook alerts to `hook`.
fn setup_for(
    src: &Server,
    dst: &Server,
    prefix: &str,
    http: u16,
    hook: Option<&Receiver>,
) -> (String, Setup) {
    let db = pitr_db(src, dst, prefix);
    src.sql_db(
        &db,
        "INSERT INTO t1 SELECT seq, CONCAT('seed-', seq), seq FROM seq_1_to_100",
    );
    let mut setup = Setup::new(src, &db);
    grant_streaming(src, &setup);
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    // Accounts stay out: the private server's admin account must never reach the shared
    // target.
    setup.extra = "users_and_grants = false\nschedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n[source.binlog]\nsegment_max_age = \"2s\"\nmax_lag = \"60s\"\n".into();
    if let Some(h) = hook {
        std::fs::write(
            setup.path("webhook.url"),
            format!("http://127.0.0.1:{}/hook\n", h.port),
        )
        .unwrap();
        setup.tail = format!(
            "[alerts]\nrepeat_interval = \"1h\"\n[alerts.webhook]\nurl_file = {:?}\ntimeout = \"2s\"\nretries = 1\n",
            setup.path("webhook.url")
        );
    }
    (db, setup)
}

fn archived_up_to(setup: &Setup, gtid: &str) -> bool {
    let (domain, seq) = {
        let mut p = gtid.split('-');
        let d = p.next().unwrap().to_string();
        (d, gtid.rsplit('-').next().unwrap().parse::<u64>().unwrap())
    };
    segments(&setup.store()).iter().any(|(_, m)| {
        m["end_position"].as_str().unwrap().split(',').any(|g| {
            g.starts_with(&format!("{domain}-"))
                && g.rsplit('-').next().unwrap().parse::<u64>().unwrap() >= seq
        })
    })
}

fn lag(http: u16) -> f64 {
    metrics(http)
        .iter()
        .find(|(k, _)| k == "backup_binlog_lag_seconds{source=\"main\"}")
        .map_or(-1.0, |(_, v)| *v)
}

fn wait_caught_up(http: u16) {
    wait_for("the archiver to catch up", Duration::from_secs(40), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
            && (0.0..10.0).contains(&lag(http))
    });
}

#[test]
fn purged_logs_are_a_gap_that_is_alerted_refused_and_closed_by_the_next_backup() {
    let src = PrivateServer::start(21);
    let dst = target();
    let hook = Receiver::start(Mode::Ok);
    let http = free_port();
    let (db, setup) = setup_for(&src, &dst, "gap", http, Some(&hook));
    ok(&setup.agent(&src, &["backup"]), "backup");
    let mut d = start_daemon(&setup, &src, &[]);
    wait_caught_up(http);
    let w0 = write_some(&src, &db, 1, 6);
    let state_w0 = fingerprint(&src, &db);
    wait_for("w0 archived", Duration::from_secs(30), || {
        archived_up_to(&setup, &w0)
    });
    sigterm(&d);
    assert!(d.wait().unwrap().success());

    // While the agent is down: writes, then the logs holding them are purged.
    let w1 = write_some(&src, &db, 2, 6);
    src.sql("FLUSH BINARY LOGS");
    let current = src
        .sql("SHOW MASTER STATUS")
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    // The server keeps a log until InnoDB's checkpoint no longer needs it.
    wait_for(
        "the older binary logs purged",
        Duration::from_secs(30),
        || {
            src.sql(&format!("PURGE BINARY LOGS TO '{current}'"));
            src.sql("SHOW BINARY LOGS").lines().count() == 1
        },
    );
    let w2 = write_some(&src, &db, 3, 4);

    let mut d2 = start_daemon(&setup, &src, &[]);
    let gap = hook.wait_event("binlog_gap", Duration::from_secs(30));
    assert!(
        gap["message"]
            .as_str()
            .unwrap()
            .contains("gap in the archived binary log"),
        "{gap}"
    );
    wait_for("the gap in /metrics", Duration::from_secs(20), || {
        let m = metrics(http);
        metric(&m, "backup_binlog_gaps_total{source=\"main\"}") == 1.0
            && metric(&m, "backup_binlog_gap_open{source=\"main\"}") == 1.0
    });
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("gap in the archived binary log"), "{line}");
    let o = setup.agent(&src, &["list"]);
    ok(&o, "list");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!("binary log GAP after GTID {w0}")),
        "{out}"
    );
    // What the server still had after the purge is archived (w2), what it had lost is
    // not (w1); a restore never crosses the gap...
    wait_for("w2 archived", Duration::from_secs(30), || {
        archived_up_to(&setup, &w2)
    });
    for until in [&w1, &w2] {
        let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", until]));
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("outside the recoverable window"),
            "{}",
            stderr(&o)
        );
        assert!(!dst.databases().contains(&db));
    }
    // ...but reaches anything before it.
    let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", &w0]));
    ok(&o, "restore before the gap");
    assert_same(&state_w0, &fingerprint(&dst, &db));
    dst.drop_db(&db);

    // A backup after the gap starts a new window: healthy again, and restorable.
    ok(&setup.agent(&src, &["backup"]), "backup after the gap");
    let w3 = write_some(&src, &db, 4, 5);
    let state_w3 = fingerprint(&src, &db);
    wait_for("w3 archived", Duration::from_secs(30), || {
        archived_up_to(&setup, &w3)
    });
    wait_for(
        "healthcheck OK after the backup",
        Duration::from_secs(30),
        || healthcheck(&setup, &src).0 == 0,
    );
    assert_eq!(
        metric(&metrics(http), "backup_binlog_gap_open{source=\"main\"}"),
        0.0
    );
    // `restore --list` shows how far each backup reaches: the first one to the gap, the
    // new one to the newest archived transaction.
    let o = restore(&[
        "--config",
        setup.config(&src).to_str().unwrap(),
        "--list",
        "--json",
        "--agent-cert",
        testdata("agent.pub.asc").to_str().unwrap(),
    ]);
    ok(&o, "restore --list");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["recoverable_until_gtid"], w0.as_str(), "{rows:?}");
    assert_eq!(rows[1]["recoverable_until_gtid"], w3.as_str(), "{rows:?}");
    let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", &w3]));
    ok(&o, "restore after the gap, from the new backup");
    assert_same(&state_w3, &fingerprint(&dst, &db));
    dst.drop_db(&db);
    sigterm(&d2);
    assert!(d2.wait().unwrap().success());
}

#[test]
fn a_source_killed_mid_write_loses_nothing_it_had_sent() {
    let mut src = PrivateServer::start(22);
    let dst = target();
    let http = free_port();
    let (db, setup) = setup_for(&src, &dst, "rpo", http, None);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let mut d = start_daemon(&setup, &src, &[]);
    wait_caught_up(http);

    // A writer commits one row at a time and logs when each commit returned.
    let server = src.server.clone();
    let wdb = db.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut log: Vec<(u32, SystemTime)> = Vec::new();
        let mut c = server.client();
        c.arg("--unbuffered")
            .arg(&wdb)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        use std::io::{BufRead, Write};
        let mut i = 1000u32;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            if writeln!(input, "INSERT INTO t1 VALUES ({i}, 'w', {i}); SELECT {i};").is_err() {
                break;
            }
            let _ = input.flush();
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            log.push((i, SystemTime::now()));
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(input);
        let _ = child.kill();
        let _ = child.wait();
        log
    });
    std::thread::sleep(Duration::from_secs(7));
    let killed_at = SystemTime::now();
    src.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = writer.join().unwrap();
    assert!(log.len() > 20, "the writer committed {} rows", log.len());
    // The archiver stores what it had and then retries the dead server.
    std::thread::sleep(Duration::from_secs(5));
    sigterm(&d);
    assert!(d.wait().unwrap().success());

    let c = chain(&setup.store());
    let last = c.last().unwrap().1["last_gtid"]
        .as_str()
        .unwrap()
        .to_string();
    let o = restore(&restore_args(&setup, &src, &dst, &["--until-gtid", &last]));
    ok(&o, "restore everything archived");
    let max: u32 = dst
        .sql_db(&db, "SELECT COALESCE(MAX(id), 0) FROM t1")
        .trim()
        .parse()
        .unwrap();
    let count: u32 = dst
        .sql_db(&db, "SELECT COUNT(*) FROM t1 WHERE id >= 1000")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, max.saturating_sub(999), "archived rows have no hole");
    let last_archived_commit = log
        .iter()
        .filter(|(i, _)| *i <= max)
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    let lost: Vec<u32> = log
        .iter()
        .filter(|(i, _)| *i > max)
        .map(|(i, _)| *i)
        .collect();
    let window = killed_at
        .duration_since(last_archived_commit)
        .unwrap_or_default();
    eprintln!(
        "RPO: {} rows committed, {} archived, {} lost; loss window {:.3}s before the SIGKILL",
        log.len(),
        log.len() - lost.len(),
        lost.len(),
        window.as_secs_f64()
    );
    // Everything committed more than segment_max_age (2 s) + 5 s before the kill is in
    // the archive.
    let bound = killed_at - Duration::from_secs(7);
    for (i, t) in &log {
        if *t < bound {
            assert!(
                *i <= max,
                "row {i} committed 7 s before the kill is not archived"
            );
        }
    }
    assert!(window < Duration::from_secs(7), "loss window {window:?}");
    dst.drop_db(&db);
}
