//! Large tables read over several connections (`dump_connections`, `parallel_table_size`):
//! every reader is in the dump's one snapshot, the key ranges cover every row exactly once
//! whatever the key's type and values, the per-table digests add up (the drill recomputes
//! them), and a dump user who cannot hold the commit lock still gets a consistent backup,
//! over one connection.

mod common;
use common::*;

use common::transfers::{Mover, Transfers};
use std::time::Duration;

/// Split tables of every integer key kind, with extreme and sparse values; tables that
/// are not split (a text key, no key, MyISAM) beside them.
fn load(src: &Server, db: &str) {
    src.drop_db(db);
    src.sql(&format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"));
    src.sql_db(
        db,
        "CREATE TABLE u64 (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB;
         INSERT INTO u64 VALUES (0, 'zero'), (1, 'one'), (18446744073709551615, 'max'), (9223372036854775808, 'mid');
         INSERT INTO u64 SELECT seq * 1000003, CONCAT('row ', seq) FROM seq_2_to_3000;
         CREATE TABLE i64 (id BIGINT PRIMARY KEY, v TEXT) ENGINE=InnoDB;
         INSERT INTO i64 VALUES (-9223372036854775808, 'min'), (9223372036854775807, 'max'), (0, NULL);
         INSERT INTO i64 SELECT CAST(seq AS SIGNED) * 7919 - 5000000, REPEAT('é', seq % 50) FROM seq_1_to_2000;
         CREATE TABLE tiny (id TINYINT PRIMARY KEY, v INT) ENGINE=InnoDB;
         INSERT INTO tiny SELECT CAST(seq AS SIGNED) - 128, seq FROM seq_0_to_255;
         CREATE TABLE one_row (id INT PRIMARY KEY, v INT) ENGINE=InnoDB;
         INSERT INTO one_row VALUES (42, 1);
         CREATE TABLE empty (id INT PRIMARY KEY) ENGINE=InnoDB;
         CREATE TABLE composite (a INT, b VARCHAR(10), v DOUBLE, PRIMARY KEY (a, b)) ENGINE=InnoDB;
         INSERT INTO composite SELECT seq % 97, CONCAT('k', seq), seq / 3 FROM seq_1_to_5000;
         CREATE TABLE by_text (k VARCHAR(20) PRIMARY KEY, v INT) ENGINE=InnoDB;
         INSERT INTO by_text SELECT CONCAT('key', seq), seq FROM seq_1_to_1000;
         CREATE TABLE no_key (v INT) ENGINE=InnoDB;
         INSERT INTO no_key SELECT seq % 10 FROM seq_1_to_1000;
         CREATE TABLE plain (id INT PRIMARY KEY, v INT) ENGINE=MyISAM;
         INSERT INTO plain SELECT seq, seq FROM seq_1_to_1000;",
    );
}

/// The tables the agent logged as read in ranges.
fn ranged_tables(o: &std::process::Output) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["event"] == "table_in_ranges")
        .map(|j| j["table"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn tables_read_in_key_ranges_restore_exactly_and_pass_the_drill() {
    let src = source();
    let dst = target();
    let db = unique("pdump");
    load(&src, &db);
    let mut setup = Setup::new(&src, &db);
    setup.extra = "users_and_grants = false\nparallel_table_size = \"0\"\n".into();
    let o = setup.agent(&src, &["backup"]);
    ok(&o, "backup");
    let want: Vec<String> = ["composite", "i64", "one_row", "tiny", "u64"]
        .iter()
        .map(|t| format!("{db}.{t}"))
        .collect();
    assert_eq!(ranged_tables(&o), want, "{}", stderr(&o));

    dst.drop_db(&db);
    let r = restore(&into_args(&dst, &setup.only_backup(), &setup.path("t.pw")));
    ok(&r, "restore");
    assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));

    // The drill recomputes every table's digest on the restored copy and compares it with
    // the one the dump summed over its readers.
    dst.drop_db(&db);
    let mut args = vec![
        "--verify".to_string(),
        "--json".into(),
        "--config".into(),
        setup.config(&src).display().to_string(),
    ];
    args.extend(scratch_args(&dst, &setup.path("scratch.pw")));
    args.extend(key_args());
    let d = restore(&args);
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap_or_default();
    assert_eq!(d.status.code(), Some(0), "{v:#}\n{}", stderr(&d));
    assert_eq!(v["tables_compared"], 9, "{v:#}");
    dst.drop_db(&db);

    // A budget of two connections to the server has no room for a helper and the lock:
    // one connection reads everything.
    setup.agent_extra = "max_connections_per_server = 2\n".into();
    std::thread::sleep(Duration::from_millis(1100));
    let o = setup.agent(&src, &["backup"]);
    ok(&o, "backup within a budget of 2");
    assert!(ranged_tables(&o).is_empty(), "{}", stderr(&o));
    src.drop_db(&db);
}

/// Backs up `accounts` while a writer moves money between its two halves, the agent
/// pausing between the start of its own snapshot and its helper's; returns the backup's
/// output and how many transfers committed during it.
fn backup_under_transfers(src: &Server, setup: &Setup) -> (std::process::Output, u64) {
    let w = Transfers::start(vec![Mover {
        port: src.port,
        password: src.password.clone(),
        db: setup.db.clone(),
        // Accounts far apart: read by different readers.
        from: (1, 10_000),
        to: (10_001, 10_000),
        log: false,
    }]);
    w.wait_for(20, Duration::from_secs(30));
    let before = w.committed();
    let o = paused_backup(src, setup);
    let during = w.committed() - before;
    w.stop();
    (o, during)
}

/// `backup-agent backup`, pausing 1.5 s between the start of the dump's snapshot and its
/// helpers'.
fn paused_backup(src: &Server, setup: &Setup) -> std::process::Output {
    std::process::Command::new(agent_bin())
        .arg("--config")
        .arg(setup.config(src))
        .arg("backup")
        .env("TMPDIR", setup.path("state"))
        .env("BACKUP_AGENT_TEST_PAUSE_AT", "snapshot-started:1500")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Two backups of one server at once, with room in its connection budget for only one
/// of them to add a helper: the other reads over its own connection (and says why),
/// neither waits for the other, both are whole.
#[test]
fn helpers_take_only_what_the_budget_has_free() {
    let src = source();
    let dst = target();
    let (d1, d2) = (unique("pbudget_a"), unique("pbudget_b"));
    for d in [&d1, &d2] {
        src.drop_db(d);
        src.sql(&format!("CREATE DATABASE `{d}`"));
        src.sql_db(
            d,
            "CREATE TABLE t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB;
             INSERT INTO t SELECT seq, SHA2(seq, 256) FROM seq_1_to_3000",
        );
    }
    let mut setup = Setup::new(&src, &d1);
    setup.extra = "users_and_grants = false\nparallel_table_size = \"0\"\n".into();
    // Two own connections, and one helper with its lock connection: 4.
    setup.agent_extra = "max_concurrent_backups = 2\nmax_connections_per_server = 4\n".into();
    setup.tail = format!(
        "[[source]]\nname = \"second\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\npassword_file = {:?}\ndatabases = {{ include = [\"{d2}\"] }}\nusers_and_grants = false\nparallel_table_size = \"0\"\n",
        src.port,
        setup.dump_user,
        setup.path("db.password")
    );
    let o = paused_backup(&src, &setup);
    ok(&o, "two backups at once");
    let ranged = ranged_tables(&o);
    assert_eq!(ranged.len(), 1, "{}", stderr(&o));
    assert!(
        [format!("{d1}.t"), format!("{d2}.t")].contains(&ranged[0]),
        "{ranged:?}"
    );
    let log = stderr(&o);
    let single: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["event"] == "dump_single_connection")
        .collect();
    assert_eq!(single.len(), 1, "{log}");
    assert!(
        single[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_connections_per_server"),
        "{log}"
    );
    // Both backups are whole: each restores to its source's tables.
    let data: Vec<String> = setup
        .store_files()
        .into_iter()
        .filter(|f| f.ends_with(".sql.gz.gpg"))
        .collect();
    assert_eq!(data.len(), 2, "{data:?}");
    for f in &data {
        let d = if f.split('/').any(|c| c == "second") {
            &d2
        } else {
            &d1
        };
        dst.drop_db(d);
        let r = restore(&into_args(
            &dst,
            &setup.store().join(f),
            &setup.path("t.pw"),
        ));
        ok(&r, "restore");
        assert_same(&fingerprint(&src, d), &fingerprint(&dst, d));
        dst.drop_db(d);
    }
    src.drop_db(&d1);
    src.drop_db(&d2);
}

fn accounts_db(src: &Server) -> String {
    let db = unique("pmoney");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL, note VARCHAR(100)) ENGINE=InnoDB;
         INSERT INTO accounts SELECT seq, 1000, REPEAT('x', 90) FROM seq_1_to_20000;",
    );
    db
}

/// Writes commit between the agent's snapshot and its helper's (the agent pauses there):
/// the commit lock holds them back, so both readers see the same transactions and no
/// money is created or lost in the backup.
#[test]
fn readers_share_one_snapshot_while_writes_commit() {
    let src = source();
    let dst = target();
    let db = accounts_db(&src);
    let mut setup = Setup::new(&src, &db);
    setup.extra = "users_and_grants = false\nparallel_table_size = \"0\"\n".into();
    let (o, during) = backup_under_transfers(&src, &setup);
    ok(&o, "backup under transfers");
    assert_eq!(
        ranged_tables(&o),
        vec![format!("{db}.accounts")],
        "{}",
        stderr(&o)
    );
    assert!(
        during >= 5,
        "only {during} transfers committed during the backup"
    );
    dst.drop_db(&db);
    let r = restore(&into_args(&dst, &setup.only_backup(), &setup.path("t.pw")));
    ok(&r, "restore");
    assert_eq!(
        dst.sql_db(&db, "SELECT SUM(balance), COUNT(*) FROM accounts")
            .trim(),
        "20000000\t20000",
        "money was created or lost: the readers' snapshots differ"
    );
    dst.drop_db(&db);
    let c = setup.agent(&src, &["check-config"]);
    ok(&c, "check-config");
    assert!(
        !String::from_utf8_lossy(&c.stdout).contains("warning:"),
        "{}",
        String::from_utf8_lossy(&c.stdout)
    );

    // A dump user without RELOAD cannot hold the commit lock: the dump says so and reads
    // over its one connection, still one snapshot.
    src.sql(&format!(
        "REVOKE RELOAD ON *.* FROM '{u}'@'127.0.0.1', '{u}'@'localhost'",
        u = setup.dump_user
    ));
    // check-config says so beforehand: a warning, not a problem (the backup is still
    // consistent, only slower).
    let c = setup.agent(&src, &["check-config"]);
    ok(&c, "check-config without RELOAD");
    let out = String::from_utf8_lossy(&c.stdout).into_owned();
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning: source main node")
                && l.contains("lacks RELOAD")
                && l.contains("dump_connections = 2")
                && l.contains("GRANT RELOAD ON *.*")),
        "{out}"
    );
    std::fs::remove_dir_all(setup.store()).unwrap();
    std::fs::create_dir_all(setup.store()).unwrap();
    let (o, _) = backup_under_transfers(&src, &setup);
    ok(&o, "backup without RELOAD");
    assert!(ranged_tables(&o).is_empty(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dump_single_connection") && stderr(&o).contains("RELOAD"),
        "{}",
        stderr(&o)
    );
    let r = restore(&into_args(&dst, &setup.only_backup(), &setup.path("t.pw")));
    ok(&r, "restore");
    assert_eq!(
        dst.sql_db(&db, "SELECT SUM(balance), COUNT(*) FROM accounts")
            .trim(),
        "20000000\t20000"
    );
    dst.drop_db(&db);
    src.drop_db(&db);
}
