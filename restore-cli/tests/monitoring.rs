//! The shipped Prometheus rules (monitoring/prometheus/): `promtool check rules` and their
//! unit tests, and end to end: a real Prometheus scraping a real agent on loopback fires
//! BackupStale when the newest backup is older than max_age and resolves it after a backup,
//! and every query of the Grafana dashboard (monitoring/grafana/) returns data from it.

mod common;
use common::daemon::*;
use common::receivers::free_port;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn rules_dir() -> std::path::PathBuf {
    repo_root().join("monitoring/prometheus")
}

/// promtool from Debian's `prometheus` package (installed by scripts/test-services.sh).
fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool (Debian package prometheus) must be installed: scripts/test-services.sh up installs it")
}

#[test]
fn the_shipped_rules_check_and_pass_their_unit_tests() {
    let o = promtool(&["check", "rules", "backup-agent.rules.yml"]);
    ok(&o, "promtool check rules");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
    let o = promtool(&["test", "rules", "backup-agent.rules.test.yml"]);
    ok(&o, "promtool test rules");
    // Every alert of the rules file has a unit test.
    let rules = std::fs::read_to_string(rules_dir().join("backup-agent.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("backup-agent.rules.test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {line}\n        exp_alerts:\n          - "
            )),
            "no firing test for {line}"
        );
    }
}

/// Every query (`expr`) of the Grafana dashboard, and the dashboard's template variables
/// resolve to metrics the agent exports.
fn dashboard_queries() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("monitoring/grafana/backup-agent.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert_eq!(d["uid"], "backup-agent");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "source"]);
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(scrape_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: backup-agent\n    static_configs:\n      - targets: ['127.0.0.1:{scrape_port}']\n",
                rules_dir().join("backup-agent.rules.yml")
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus) must be installed");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready").0 == 200
        });
        p
    }

    /// The firing alerts: (alertname, source label).
    fn firing(&self) -> Vec<(String, String)> {
        let (code, body) = http_get(self.port, "/api/v1/alerts");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["labels"]["source"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

#[test]
fn a_real_prometheus_fires_stale_on_an_overdue_backup_and_resolves_it_after_one() {
    let src = source();
    let db = unique("mon");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let mut setup = Setup::new(&src, &db);
    let http = free_port();
    // Never due while the test runs; stale 6 s after a backup. The binary log is archived
    // (the dashboard's point-in-time panels).
    setup.extra = "schedule = \"0 3 1 1 *\"\nmax_age = \"6s\"\n[source.binlog]\nsegment_max_age = \"1s\"\nmax_lag = \"1h\"\n".into();
    common::pitr::grant_streaming(&src, &setup);
    setup.agent_extra = format!("http_bind = \"127.0.0.1:{http}\"\ncheck_interval = \"1s\"\n");
    ok(&setup.agent(&src, &["backup"]), "backup");
    let mut daemon = start_daemon(&setup, &src, &[]);
    wait_for("the agent's /metrics", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    let prom = Prometheus::start(http);
    let stale = ("BackupStale".to_string(), "main".to_string());

    wait_for("BackupStale firing", Duration::from_secs(60), || {
        prom.firing().contains(&stale)
    });
    // The agent is up and its backup did not fail: only the stale alert.
    let firing = prom.firing();
    assert!(
        !firing
            .iter()
            .any(|(a, _)| a == "BackupAgentDown" || a == "BackupFailed"),
        "{firing:?}"
    );

    ok(&setup.agent(&src, &["backup"]), "backup");
    wait_for("BackupStale resolved", Duration::from_secs(30), || {
        !prom.firing().contains(&stale)
    });

    // A transaction archived, so that the log panels have an event to show.
    src.sql_db(&db, "INSERT INTO t VALUES (2)");
    wait_for(
        "an archived binary log event",
        Duration::from_secs(30),
        || {
            metric(
                &metrics(http),
                "backup_binlog_last_event_timestamp_seconds{source=\"main\"}",
            ) > 0.0
        },
    );
    std::thread::sleep(Duration::from_secs(3)); // a scrape after it
                                                // Every query of the shipped Grafana dashboard returns data from this Prometheus (no
                                                // empty or misspelt panel), for the source and for "All".
    let exprs = dashboard_queries();
    assert!(exprs.len() >= 12, "{exprs:?}");
    for source in ["main", ".*"] {
        for e in &exprs {
            let q = e.replace("$source", source);
            let (code, body) = http_get(prom.port, &format!("/api/v1/query?query={}", encode(&q)));
            assert_eq!(code, 200, "{q}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "success", "{q}: {body}");
            assert!(
                !v["data"]["result"].as_array().unwrap().is_empty(),
                "the dashboard's query {q} returns no data: {body}"
            );
        }
    }

    sigterm(&daemon);
    let _ = daemon.wait();
    src.drop_db(&db);
}
