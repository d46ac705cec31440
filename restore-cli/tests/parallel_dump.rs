//! Large tables read over several connections (`dump_connections`, `parallel_table_size`):
//! every reader is in the dump's one snapshot, the key ranges cover every row exactly once
//! whatever the key's type and values, the per-table digests add up (the drill recomputes
//! them), and a dump user who cannot hold the commit lock still gets a consistent backup,
//! over one connection.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    let pw = setup.path("scratch.pw");
    std::fs::write(&pw, &dst.password).unwrap();
    dst.drop_db(&db);
    let cfg = setup.config(&src);
    let d = restore(&[
        "--verify".to_string(),
        "--json".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--scratch".into(),
        format!("mysql://{ADMIN_USER}@127.0.0.1:{}/", dst.port),
        "--scratch-password-file".into(),
        pw.display().to_string(),
        "--dpo-key".into(),
        testdata("dpo.sec.asc").display().to_string(),
        "--agent-cert".into(),
        testdata("agent.pub.asc").display().to_string(),
    ]);
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

/// Moves money between accounts far apart (read by different readers) until stopped.
fn mover(port: u16, password: String, db: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
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
        let mut i: u64 = 12345;
        while !stop.load(Ordering::SeqCst) {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b, x) = (
                (i >> 20) % 10_000 + 1,
                (i >> 40) % 10_000 + 10_001,
                (i >> 8) % 97 + 1,
            );
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
                tx.commit().await
            }
            .await;
            if r.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
}

/// Backs up `accounts` while a writer moves money between its two halves, the agent
/// pausing between the start of its own snapshot and its helper's; returns the backup's
/// output and how many transfers committed during it.
fn backup_under_transfers(src: &Server, setup: &Setup) -> (std::process::Output, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = {
        let (port, pw, db, stop, done) = (
            src.port,
            src.password.clone(),
            setup.db.clone(),
            stop.clone(),
            done.clone(),
        );
        std::thread::spawn(move || mover(port, pw, db, stop, done))
    };
    let t0 = std::time::Instant::now();
    while done.load(Ordering::SeqCst) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the writer does not commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = done.load(Ordering::SeqCst);
    let cfg = setup.config(src);
    let o = std::process::Command::new(agent_bin())
        .arg("--config")
        .arg(cfg)
        .arg("backup")
        .env("TMPDIR", setup.path("state"))
        .env("BACKUP_AGENT_TEST_PAUSE_AT", "snapshot-started:1500")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let during = done.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    (o, during)
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

    // A dump user without RELOAD cannot hold the commit lock: the dump says so and reads
    // over its one connection, still one snapshot.
    src.sql(&format!(
        "REVOKE RELOAD ON *.* FROM '{u}'@'127.0.0.1', '{u}'@'localhost'",
        u = setup.dump_user
    ));
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
