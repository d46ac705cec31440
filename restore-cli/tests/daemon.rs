//! The sidecar daemon against real receivers: schedule, healthcheck, metrics, webhook and
//! mail alerts (failed, stale, recovered), shutdown, concurrency, catch-up, canaries.

mod common;
use common::daemon::*;
use common::receivers::*;
use common::*;

use std::path::Path;

use std::time::{Duration, Instant};

fn small_db(src: &Server, rows: u32) -> String {
    let db = unique("dm");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, &format!("CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, SHA2(seq, 256) FROM seq_1_to_{rows}"));
    db
}

fn backups(setup: &Setup) -> usize {
    setup
        .store_files()
        .iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .count()
}

#[test]
fn schedule_health_metrics_and_alerts_end_to_end() {
    let src = source();
    let db = small_db(&src, 2000);
    src.sql_db(
        &db,
        "CREATE TABLE legacy (a INT) ENGINE=MyISAM; INSERT INTO legacy VALUES (1)",
    );
    let mut setup = Setup::new(&src, &db);
    let hook = Receiver::start(Mode::Ok);
    let sink = SmtpSink::start(&setup.path("mail"), None, None);
    let http = free_port();
    let url_canary = format!("CANARY-URL-{}", unique("u"));
    std::fs::write(
        setup.path("webhook.url"),
        format!("http://127.0.0.1:{}/hook/{url_canary}\n", hook.port),
    )
    .unwrap();
    setup.extra = "schedule = \"*/3 * * * * *\"\nmax_age = \"9s\"\n".into();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    setup.tail = format!(
        "[alerts]\nrepeat_interval = \"1h\"\n[alerts.webhook]\nurl_file = {:?}\ntimeout = \"2s\"\nretries = 1\n\
         [alerts.mail]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"backup-agent@test.invalid\"\nto = [\"dpo@test.invalid\", \"ops@test.invalid\"]\n",
        setup.path("webhook.url"),
        sink.port
    );
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 2, "{line}");

    let mut d = start_daemon(&setup, &src, &["--shutdown-timeout", "30s"]);
    wait_for(
        "the first scheduled backup",
        Duration::from_secs(20),
        || backups(&setup) >= 1,
    );
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 0, "{line}");
    // --json: the verdict and each source; --verbose: the line, then every clause.
    let o = setup.agent(&src, &["healthcheck", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (j["status"].as_str(), j["code"].as_u64()),
        (Some("OK"), Some(0)),
        "{j}"
    );
    assert_eq!(j["sources"][0]["source"], "main", "{j}");
    assert_eq!(j["sources"][0]["stale"], false, "{j}");
    assert!(
        j["sources"][0]["newest"]
            .as_str()
            .unwrap()
            .starts_with("mariadb_"),
        "{j}"
    );
    assert!(
        j["line"]
            .as_str()
            .unwrap()
            .starts_with("OK: main: mariadb_"),
        "{j}"
    );
    let o = setup.agent(&src, &["healthcheck", "--verbose"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 2
            && lines[0].starts_with("OK: ")
            && lines[1].starts_with("  main: mariadb_"),
        "{text}"
    );
    let (hc, body) = http_get(http, "/healthz");
    assert_eq!(hc, 200, "{body}");
    let m = metrics(http);
    assert!(metric(&m, "backup_last_success_timestamp_seconds{source=\"main\"}") > 1.7e9);
    assert_eq!(
        metric(&m, "backup_store_copies{source=\"main\",store=\"local\"}"),
        1.0
    );
    assert_eq!(metric(&m, "backup_failures_total{source=\"main\"}"), 0.0);
    assert!(metric(&m, "backup_last_size_bytes{source=\"main\"}") > 0.0);
    assert_eq!(metric(&m, "backup_policy_compliant{source=\"main\"}"), 1.0);
    assert_eq!(metric(&m, "backup_health_status"), 0.0);
    // build_info and the standard process metrics.
    assert_eq!(
        metric(
            &m,
            &format!(
                "backup_agent_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    let rss = metric(&m, "process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    let started = metric(&m, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "{started} vs {now}"
    );
    assert!(metric(&m, "process_open_fds") > 3.0);
    assert!(metric(&m, "process_max_fds") >= metric(&m, "process_open_fds"));
    assert!(metric(&m, "process_cpu_seconds_total") >= 0.0);
    // The MyISAM table is warned about once per agent start, and counted at every run.
    wait_for("a second backup", Duration::from_secs(20), || {
        backups(&setup) >= 2
    });
    let key = "backup_warnings_total{source=\"main\",event=\"non_transactional_table\"}";
    wait_for(
        "the second run's warning counted",
        Duration::from_secs(10),
        || metrics(http).iter().any(|(k, v)| k == key && *v >= 2.0),
    );
    let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("non_transactional_table") && l.contains("WARN"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(&format!("{db}.legacy")), "{}", warned[0]);

    // Backups stop working (wrong password): failure alert on both channels.
    let pw_canary = format!("CANARY-DBPW-{}", unique("p"));
    std::fs::write(setup.path("db.password"), &pw_canary).unwrap();
    setup.dump_password = pw_canary.clone();
    let failed = hook.wait_event("backup_failed", Duration::from_secs(15));
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["source"], "main");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{failed}"
    );
    for k in ["timestamp", "host", "details"] {
        assert!(failed.get(k).is_some(), "{k} missing: {failed}");
    }
    let mail = sink.wait_mail(
        "[ALERT][Backup MariaDB] main: backup_failed",
        Duration::from_secs(10),
    );
    assert!(mail.contains("cannot connect"), "{mail}");
    // Repeated failures within the repeat interval alert once.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        hook.events()
            .iter()
            .filter(|e| *e == "backup_failed")
            .count(),
        1,
        "{:?}",
        hook.events()
    );

    // After max age without a backup: stale alert and CRITICAL.
    let stale = hook.wait_event("backup_stale", Duration::from_secs(20));
    assert_eq!(stale["status"], "error");
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with("CRITICAL: source main"), "{line}");

    let (hc, _) = http_get(http, "/healthz");
    assert_eq!(hc, 503);
    assert!(metric(&metrics(http), "backup_failures_total{source=\"main\"}") >= 1.0);

    // Fixed: the next backup succeeds, "recovered" goes out, healthcheck is OK again.
    setup.dump_password = format!("good-{}", unique("p"));
    src.dump_user(&setup.dump_user, &setup.dump_password);
    std::fs::write(setup.path("db.password"), &setup.dump_password).unwrap();
    let rec = hook.wait_event("recovered", Duration::from_secs(20));
    assert_eq!(rec["status"], "success");
    sink.wait_mail(
        "[ALERT][Backup MariaDB] main: recovered",
        Duration::from_secs(10),
    );
    wait_for("healthcheck OK", Duration::from_secs(10), || {
        healthcheck(&setup, &src).0 == 0
    });

    let final_metrics = http_get(http, "/metrics").1;
    sigterm(&d);
    let status = d.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let err = std::fs::read_to_string(setup.path("daemon.out")).unwrap();

    // Logs are JSON lines on standard error with the stable fields (each says what
    // happened in "event"), no ANSI escape; no canary anywhere.
    let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
    for l in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
        assert!(
            v.get("timestamp").is_some() && v.get("level").is_some(),
            "{l}"
        );
        assert!(
            v["event"].as_str().is_some_and(|e| !e.is_empty()),
            "no event: {l}"
        );
        assert!(!l.contains('\u{1b}'), "ANSI escape in {l}");
    }
    assert!(
        err.is_empty(),
        "the daemon's standard output carries no logs: {err}"
    );
    assert!(
        log.contains("\"event\":\"backup_succeeded\"")
            && log.contains("\"event\":\"backup_failed\"")
    );
    let mut everything = log + &err;
    everything.push_str(&final_metrics);
    for b in hook.requests.lock().unwrap().iter() {
        everything.push_str(&b.body);
    }
    for m in sink.mails() {
        everything.push_str(&m);
    }
    for c in [&url_canary, &pw_canary] {
        assert!(!everything.contains(c.as_str()), "{c} leaked");
    }
    src.drop_db(&db);
}

#[test]
fn mail_over_starttls_with_auth_webhook_retries_and_channel_failures() {
    let src = source();
    let db = small_db(&src, 100);
    let mut setup = Setup::new(&src, &db);
    let (ca, cert, key) = test_cert(setup.dir.path());
    let smtp_canary = format!("CANARY-SMTP-{}", unique("s"));
    std::fs::write(setup.path("smtp.password"), &smtp_canary).unwrap();
    let sink = SmtpSink::start(
        &setup.path("mail"),
        Some((&cert, &key)),
        Some(("alerts", &setup.path("smtp.password"))),
    );
    let hook = Receiver::start(Mode::Fail500);
    std::fs::write(
        setup.path("webhook.url"),
        format!("http://127.0.0.1:{}/hook", hook.port),
    )
    .unwrap();
    std::fs::write(setup.path("webhook.token"), "token-value").unwrap();
    let (url_path, token_path) = (setup.path("webhook.url"), setup.path("webhook.token"));
    let alerts = |pwfile: &Path| {
        format!(
            "[alerts]\nrepeat_interval = \"1s\"\n[alerts.webhook]\nurl_file = {:?}\nbearer_token_file = {:?}\ntimeout = \"2s\"\nretries = 2\n\
             [alerts.mail]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nuser = \"alerts\"\npassword_file = {:?}\nca_file = {:?}\n\
             from = \"backup-agent@test.invalid\"\nto = [\"dpo@test.invalid\"]\n",
            url_path,
            token_path,
            sink.port,
            pwfile,
            ca
        )
    };
    setup.tail = alerts(&setup.path("smtp.password"));
    // A failing backup (wrong database password) alerts.
    setup.dump_password = "wrong".into();
    let o = setup.agent(&src, &["backup"]);
    assert_eq!(o.status.code(), Some(1));
    let mail = sink.wait_mail(
        "[ALERT][Backup MariaDB] main: backup_failed",
        Duration::from_secs(10),
    );
    assert!(mail.contains("backup of source main failed"), "{mail}");
    // The webhook answered 500: 1 + 2 retries, then counted as a channel failure.
    assert_eq!(hook.requests.lock().unwrap().len(), 3, "retries");
    assert!(hook.requests.lock().unwrap()[0]
        .headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("authorization: Bearer token-value")));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("state/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["alert_failures"]["webhook"], 1, "{state}");
    assert!(state["alert_failures"].get("mail").is_none(), "{state}");

    // A refused SMTP password is a channel failure, reported and counted; nothing leaks.
    std::fs::write(setup.path("smtp.wrong"), "CANARY-WRONG-SMTP").unwrap();
    setup.tail = alerts(&setup.path("smtp.wrong"));
    *hook.mode.lock().unwrap() = Mode::Ok;
    std::thread::sleep(Duration::from_millis(1100));
    let before = sink.mails().len();
    let o = setup.agent(&src, &["backup"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("alert_failed") && err.contains("mail"),
        "{err}"
    );
    assert_eq!(sink.mails().len(), before);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("state/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["alert_failures"]["mail"], 1, "{state}");
    // The webhook still went.
    assert_eq!(
        hook.events()
            .iter()
            .filter(|e| *e == "backup_failed")
            .count(),
        4
    );
    for c in [smtp_canary.as_str(), "CANARY-WRONG-SMTP"] {
        assert!(
            !err.contains(c) && !String::from_utf8_lossy(&o.stdout).contains(c),
            "{c} leaked"
        );
        assert!(!sink.mails().iter().any(|m| m.contains(c)), "{c} in a mail");
    }

    // A hanging webhook times out; mail still goes.
    *hook.mode.lock().unwrap() = Mode::Hang;
    setup.tail = alerts(&setup.path("smtp.password"));
    std::thread::sleep(Duration::from_millis(1100));
    let before = sink.mails().len();
    let t0 = Instant::now();
    let o = setup.agent(&src, &["backup"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "timeouts bound the run: {:?}",
        t0.elapsed()
    );
    assert_eq!(sink.mails().len(), before + 1);
    src.drop_db(&db);
}

#[test]
fn sigterm_during_a_backup_leaves_nothing_and_exits_0() {
    let src = source();
    let db = small_db(&src, 400_000);
    let mut setup = Setup::new(&src, &db);
    // Daily schedule with a slot owed from yesterday: the daemon starts with a catch-up run.
    setup.extra = "schedule = \"0 0 * * *\"\n".into();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{}\"\n", free_port());
    std::fs::create_dir_all(setup.path("state")).unwrap();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    std::fs::write(
        setup.path("state/state.json"),
        format!("{{\"sources\": {{\"main\": {{\"last_slot\": \"{yesterday}\"}}}}}}"),
    )
    .unwrap();
    let mut d = start_daemon(&setup, &src, &["--shutdown-timeout", "0s"]);
    wait_for(
        "the dump to read the table",
        Duration::from_secs(20),
        || {
            !src.sql(&format!("SELECT ID FROM information_schema.PROCESSLIST WHERE USER='{}' AND INFO LIKE 'SELECT %'", setup.dump_user))
            .trim()
            .is_empty()
        },
    );
    sigterm(&d);
    let t0 = Instant::now();
    let status = d.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(setup.store_files().is_empty(), "{:?}", setup.store_files());
    let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
    assert!(log.contains("backup_cancelled"), "{log}");

    // The next start is clean: no debris, no second catch-up, clean exit.
    let d = start_daemon(&setup, &src, &["--shutdown-timeout", "0s"]);
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&d);
    let o = d.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(setup.store_files().is_empty(), "{:?}", setup.store_files());
    src.drop_db(&db);
}

#[test]
fn two_sources_with_limit_one_never_overlap_and_catch_up_once() {
    let src = source();
    let (d1, d2) = (small_db(&src, 200_000), small_db(&src, 200_000));
    let mut setup = Setup::new(&src, &d1);
    let http = free_port();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\nmax_concurrent_backups = 1\n");
    setup.extra = format!(
        "schedule = \"0 0 * * *\"\n\n[[source]]\nname = \"second\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\npassword_file = {:?}\n\
         databases = {{ include = [\"{d2}\"] }}\nschedule = \"0 0 * * *\"\n",
        src.port,
        setup.dump_user,
        setup.path("db.password")
    );
    std::fs::create_dir_all(setup.path("state")).unwrap();
    let old = (chrono::Utc::now() - chrono::Duration::days(5)).to_rfc3339();
    std::fs::write(
        setup.path("state/state.json"),
        format!("{{\"sources\": {{\"main\": {{\"last_slot\": \"{old}\"}}, \"second\": {{\"last_slot\": \"{old}\"}}}}}}"),
    )
    .unwrap();
    let mut d = start_daemon(&setup, &src, &["--shutdown-timeout", "60s"]);
    wait_for("both catch-up backups", Duration::from_secs(60), || {
        backups(&setup) >= 2
    });
    // Both slots were owed for days: each is caught up exactly once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(backups(&setup), 2, "{:?}", setup.store_files());
    assert!(
        setup.store_files().iter().any(|f| f.starts_with("main/"))
            && setup.store_files().iter().any(|f| f.starts_with("second/"))
    );
    sigterm(&d);
    assert_eq!(d.wait().unwrap().code(), Some(0));
    // From the log: the two runs never overlapped.
    let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
    let mut spans: Vec<(String, String, String)> = Vec::new();
    let mut open: std::collections::HashMap<String, String> = Default::default();
    for l in log.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let (ev, s, t) = (
            v["event"].as_str().unwrap_or(""),
            v["source"].as_str().unwrap_or("").to_string(),
            v["timestamp"].as_str().unwrap_or("").to_string(),
        );
        match ev {
            "backup_started" => {
                open.insert(s, t);
            }
            "backup_succeeded" | "backup_failed" => {
                let start = open.remove(&s).expect("start before end");
                spans.push((s, start, t));
            }
            _ => {}
        }
    }
    assert_eq!(spans.len(), 2, "{log}");
    spans.sort_by(|a, b| a.1.cmp(&b.1));
    assert!(spans[0].2 <= spans[1].1, "runs overlapped: {spans:?}");
    src.drop_db(&d1);
    src.drop_db(&d2);
}

#[test]
fn expiring_dpo_certificate_turns_the_healthcheck_critical() {
    use openpgp::serialize::SerializeInto;
    use sequoia_openpgp as openpgp;
    let src = source();
    let db = small_db(&src, 10);
    let mut setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    assert_eq!(healthcheck(&setup, &src).0, 0);
    let (cert, _) = openpgp::cert::CertBuilder::new()
        .add_userid("dpo expiring soon")
        .add_storage_encryption_subkey()
        .set_validity_period(Duration::from_secs(10 * 86400))
        .generate()
        .unwrap();
    std::fs::write(setup.path("soon.asc"), cert.armored().to_vec().unwrap()).unwrap();
    setup.dpo_certs = vec![setup.path("soon.asc")];
    setup.agent_extra = "dpo_expiry_warning_days = 30\n".into();
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("expires") && line.contains(&cert.fingerprint().to_hex()),
        "{line}"
    );
    setup.agent_extra = "dpo_expiry_warning_days = 5\n".into();
    assert_eq!(healthcheck(&setup, &src).0, 0);
    src.drop_db(&db);
}

/// `format = "alertmanager"`: Alertmanager's webhook payload (what Grafana OnCall's
/// Alertmanager integration takes): a failing backup fires `backup_failed` for the source,
/// and the next good backup resolves exactly that alert (same labels and fingerprint).
#[test]
fn alertmanager_format_fires_and_resolves_per_condition() {
    let src = source();
    let db = small_db(&src, 10);
    let mut setup = Setup::new(&src, &db);
    let hook = Receiver::start(Mode::Ok);
    setup.webhook_to(&hook);
    setup.tail.push_str("format = \"alertmanager\"\n");
    let good = setup.dump_password.clone();
    setup.dump_password = format!("wrong-{}", unique("p"));
    let o = setup.agent(&src, &["backup"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    setup.dump_password = good;
    ok(&setup.agent(&src, &["backup"]), "backup");

    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    let (firing, resolved) = (&bodies[0], &bodies[1]);
    for (b, status) in [(firing, "firing"), (resolved, "resolved")] {
        assert_eq!(b["version"], "4", "{b:#}");
        assert_eq!(b["status"], status, "{b:#}");
        assert_eq!(b["receiver"], "backup-agent", "{b:#}");
        assert!(b["groupKey"].as_str().is_some(), "{b:#}");
        assert_eq!(b["alerts"].as_array().unwrap().len(), 1, "{b:#}");
        let a = &b["alerts"][0];
        assert_eq!(a["status"], status, "{b:#}");
        assert_eq!(a["labels"]["alertname"], "backup_failed", "{b:#}");
        assert_eq!(a["labels"]["source"], "main", "{b:#}");
        assert_eq!(a["labels"]["severity"], "critical", "{b:#}");
        assert_eq!(b["commonLabels"], a["labels"], "{b:#}");
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16, "{b:#}");
        for k in ["startsAt", "endsAt"] {
            chrono::DateTime::parse_from_rfc3339(a[k].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{k}: {e}: {b:#}"));
        }
    }
    let (f, r) = (&firing["alerts"][0], &resolved["alerts"][0]);
    assert!(
        f["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{firing:#}"
    );
    assert_eq!(f["endsAt"], "0001-01-01T00:00:00Z");
    // The same alert, resolved: same labels, same fingerprint, same start.
    assert_eq!(f["labels"], r["labels"]);
    assert_eq!(f["fingerprint"], r["fingerprint"]);
    assert_eq!(f["startsAt"], r["startsAt"]);
    assert_ne!(r["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        r["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("backup_failed condition cleared"),
        "{resolved:#}"
    );
    src.drop_db(&db);
}

/// The daemon runs a split source's schedule as one backup per database, found anew at
/// each slot: a database created while it runs is backed up at the next slot, and each
/// has its own freshness in /metrics.
#[test]
fn the_daemon_backs_up_each_database_of_a_split_source() {
    let src = source();
    let p = unique("dsp");
    let (a, b) = (format!("{p}_a"), format!("{p}_b"));
    for d in [&a, &b] {
        src.drop_db(d);
    }
    src.sql(&format!("CREATE DATABASE `{a}`"));
    src.sql_db(
        &a,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let mut setup = Setup::new(&src, &format!("{p}_*"));
    let http = free_port();
    setup.extra = "split = \"database\"\nschedule = \"*/2 * * * * *\"\nmax_age = \"1h\"\n".into();
    setup.agent_extra = format!(
        "http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\nmax_concurrent_backups = 2\n"
    );
    let mut d = start_daemon(&setup, &src, &["--shutdown-timeout", "30s"]);
    let has_backup = |db: &str| {
        setup
            .store_files()
            .iter()
            .any(|f| f.starts_with(&format!("main/{db}/mariadb_")) && f.ends_with(".manifest.json"))
    };
    wait_for(
        "a backup of the first database",
        Duration::from_secs(20),
        || has_backup(&a),
    );
    src.sql(&format!("CREATE DATABASE `{b}`"));
    src.sql_db(
        &b,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (2)",
    );
    wait_for(
        "a backup of the new database",
        Duration::from_secs(20),
        || has_backup(&b),
    );
    let key = |db: &str| format!("backup_last_success_timestamp_seconds{{source=\"main/{db}\"}}");
    wait_for(
        "both databases in /metrics",
        Duration::from_secs(10),
        || {
            let m = metrics(http);
            m.iter().any(|(k, v)| *k == key(&a) && *v > 1.7e9)
                && m.iter().any(|(k, v)| *k == key(&b) && *v > 1.7e9)
        },
    );
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 0, "{line}");
    sigterm(&d);
    let status = d.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
    assert!(log.contains("\"database_found\""), "{log}");
    for db in [&a, &b] {
        src.drop_db(db);
    }
}

/// A dropped database of a split source has no more runs; the daemon prunes its backups
/// under the store's retention, as a run would, and leaves the others to their runs.
#[test]
fn the_daemon_prunes_a_dropped_database_under_retention() {
    let src = source();
    let p = unique("dpr");
    let (a, b) = (format!("{p}_a"), format!("{p}_b"));
    src.fresh_dbs(
        &[&a, &b],
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let mut setup = Setup::new(&src, &format!("{p}_*"));
    let http = free_port();
    setup.extra = "split = \"database\"\nschedule = \"0 3 1 1 *\"\nmax_age = \"1000d\"\n".into();
    setup.stores = "[store.retention]\nkeep_last = 1\n".into();
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    let count = |db: &str| {
        setup
            .store_files()
            .iter()
            .filter(|f| f.starts_with(&format!("main/{db}/")) && f.ends_with(".manifest.json"))
            .count()
    };
    for at in ["2026-11-01T02:00:00Z", "2026-11-02T02:00:00Z"] {
        ok(&setup.agent(&src, &["backup", "--now", at]), "backup");
    }
    src.drop_db(&b);
    ok(
        &setup.agent(&src, &["backup", "--now", "2026-11-03T02:00:00Z"]),
        "backup after the drop",
    );
    assert_eq!((count(&a), count(&b)), (3, 2));
    let mut d = start_daemon(&setup, &src, &["--shutdown-timeout", "5s"]);
    wait_for(
        "the dropped database pruned",
        Duration::from_secs(30),
        || count(&b) == 1,
    );
    sigterm(&d);
    assert!(d.wait().unwrap().success());
    assert_eq!(
        count(&a),
        3,
        "a present database is pruned by its own runs only"
    );
    src.drop_db(&a);
}
