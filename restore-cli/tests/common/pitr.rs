//! Point-in-time recovery tests' writer and readers: transactions of every kind, the
//! chain of segments in a local store, `restore --until` arguments.

use std::path::{Path, PathBuf};

use super::*;

/// Runs one transaction; returns its GTID.
pub fn commit(src: &Server, db: &str, sql: &str) -> String {
    src.sql_db(
        db,
        &format!("START TRANSACTION; {sql}; COMMIT; SELECT @@last_gtid"),
    )
    .trim()
    .to_string()
}

pub fn server_now(src: &Server) -> i64 {
    src.sql("SELECT UNIX_TIMESTAMP()").trim().parse().unwrap()
}

/// A few transactions of every kind over two tables.
pub fn write_some(src: &Server, db: &str, round: u32, n: u32) -> String {
    let mut last = String::new();
    for i in 0..n {
        let k = round * 1000 + i;
        last = match i % 4 {
            0 => commit(
                src,
                db,
                &format!("INSERT INTO t1 VALUES ({k}, 'r{round}-{i}', {i}); INSERT INTO t2 (note, amount) VALUES ('n{k}', {i}.25)"),
            ),
            1 => commit(
                src,
                db,
                &format!("UPDATE t1 SET n = n + {k}, v = CONCAT(v, '-u{round}') WHERE id % 5 = {}", i % 5),
            ),
            2 => commit(
                src,
                db,
                &format!("DELETE FROM t2 WHERE id % 7 = {}; UPDATE t2 SET amount = amount * 2 WHERE id % 3 = 0", i % 7),
            ),
            _ => commit(
                src,
                db,
                &format!("INSERT INTO t1 VALUES ({}, 'it''s \\\\ {k}', NULL)", k + 500),
            ),
        };
    }
    last
}

pub fn restore_args(setup: &Setup, src: &Server, dst: &Server, until: &[&str]) -> Vec<String> {
    let pw = setup.path("dst.password");
    std::fs::write(&pw, &dst.password).unwrap();
    let mut a: Vec<String> = vec![
        "--config".into(),
        setup.config(src).display().to_string(),
        "--into".into(),
        format!("mysql://{ADMIN_USER}@127.0.0.1:{}/", dst.port),
        "--password-file".into(),
        pw.display().to_string(),
        "--dpo-key".into(),
        testdata("dpo.sec.asc").display().to_string(),
        "--agent-cert".into(),
        testdata("agent.pub.asc").display().to_string(),
    ];
    a.extend(until.iter().map(|s| s.to_string()));
    a
}

pub fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Every segment manifest in the local store, with the path of its data object.
pub fn segments(store: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = store.join("main/binlog");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .map(|p| {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (dir.join(m["data"]["name"].as_str().unwrap()), m)
        })
        .collect()
}

/// The chain's segment files in the local store, in chain order, from the segment no
/// other one ends where it starts (the first chain, if a gap split it).
pub fn chain(store: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let ms = segments(store);
    let ends: Vec<&str> = ms
        .iter()
        .map(|(_, m)| m["end_position"].as_str().unwrap())
        .collect();
    let Some(mut at) = ms
        .iter()
        .filter(|(_, m)| !ends.contains(&m["previous_gtid"].as_str().unwrap()))
        .min_by_key(|(_, m)| m["segment_id"].as_str().unwrap().to_string())
    else {
        return Vec::new();
    };
    let mut out = vec![at.clone()];
    while let Some(n) = ms
        .iter()
        .find(|(_, m)| m["previous_gtid"] == at.1["end_position"])
    {
        out.push(n.clone());
        at = n;
    }
    out
}

/// Objects of every segment in the local store: (id, suffix) counts, to see that no
/// partial segment (objects without a manifest) is left.
pub fn segment_objects(store: &std::path::Path) -> (usize, usize) {
    let dir = store.join("main/binlog");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let manifests = names
        .iter()
        .filter(|n| n.ends_with(".manifest.json"))
        .count();
    (names.len(), manifests)
}

/// A new database on `src` (dropped first on `src` and `dst`) with the writer's two
/// tables, empty.
pub fn pitr_db(src: &Server, dst: &Server, prefix: &str) -> String {
    let db = unique(prefix);
    src.drop_db(&db);
    dst.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t1 (id INT PRIMARY KEY, v VARCHAR(200), n INT) ENGINE=InnoDB;\
         CREATE TABLE t2 (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT, amount DECIMAL(10,2)) ENGINE=InnoDB",
    );
    db
}

/// The documented grant for archiving, to the setup's dump user.
pub fn grant_streaming(src: &Server, setup: &Setup) {
    for host in ["127.0.0.1", "localhost"] {
        src.sql(&format!(
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{}'@'{host}'",
            setup.dump_user
        ));
    }
}

/// The kept segments `prune` lists by range (`keep A .. B (N segments) on S: needed from
/// backup B`), counted; each line must name the backup that needs it (`backup_prefix`).
pub fn kept_segments_listed(out: &str, backup_prefix: &str) -> usize {
    out.lines()
        .filter(|l| l.starts_with("  keep binlog_"))
        .map(|l| {
            assert!(
                l.contains(&format!(": needed from backup {backup_prefix}")),
                "{l}"
            );
            l.split_once(" segments) on ")
                .and_then(|(a, _)| a.rsplit('(').next())
                .map_or(1, |n| n.parse().unwrap())
        })
        .sum()
}
