//! `restore --into --jobs N`: rows load over N connections, everything else over one, in
//! the dump's order; the result is the same as over one connection, and a statement the
//! target refuses on any connection fails the restore with its number and head.

mod common;
use common::*;

/// Two databases (the row connections follow `USE`), a table big enough for many INSERT
/// statements, a row whose AUTO_INCREMENT id is 0 and a zero date (they load only with
/// the dump's session settings, which the row connections must apply too), foreign keys,
/// a trigger that would count the restored rows if it existed before them, a view.
fn load(src: &Server, db: &str, other: &str) {
    src.drop_db(db);
    src.drop_db(other);
    src.sql(&format!(
        "CREATE DATABASE `{db}` CHARACTER SET latin1; CREATE DATABASE `{other}` CHARACTER SET utf8mb4"
    ));
    src.sql_db(
        db,
        "CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB;
         CREATE TABLE big (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT, note VARCHAR(300),
           at DATETIME, KEY (parent_id), FOREIGN KEY (parent_id) REFERENCES parent (id)) ENGINE=InnoDB;
         CREATE TABLE audit (n INT AUTO_INCREMENT PRIMARY KEY, big_id INT) ENGINE=InnoDB;
         INSERT INTO parent SELECT seq, CONCAT('Müller ', seq) FROM seq_1_to_100;
         SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO';
         INSERT INTO big VALUES (0, 1, 'id zero', '0000-00-00 00:00:00');
         INSERT INTO big SELECT seq, 1 + seq % 100, CONCAT('Straße ', seq, ' ', REPEAT(SHA2(seq, 256), 3)), '2026-01-01' + INTERVAL seq MINUTE FROM seq_1_to_40000;
         CREATE TRIGGER big_audit AFTER INSERT ON big FOR EACH ROW INSERT INTO audit (big_id) VALUES (NEW.id);
         CREATE VIEW big_per_parent AS SELECT parent_id, COUNT(*) AS n FROM big GROUP BY parent_id;",
    );
    for i in 0..12 {
        src.sql_db(
            other,
            &format!(
                "CREATE TABLE t{i} (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB;
                 INSERT INTO t{i} SELECT seq, CONCAT('€ ', seq * {i}) FROM seq_1_to_{};",
                500 + 300 * i
            ),
        );
    }
}

/// Loads the two databases (named after `prefix`) and backs up the first, or both.
fn backed_up(
    src: &Server,
    prefix: &str,
    both: bool,
) -> (String, String, Setup, std::path::PathBuf) {
    let db = unique(prefix);
    let other = unique(&format!("{prefix}2"));
    load(src, &db, &other);
    let mut setup = Setup::new(src, &db);
    setup.extra = "users_and_grants = false\n".into();
    if both {
        setup.db = format!("{db}\", \"{other}");
    }
    ok(&setup.agent(src, &["backup"]), "backup");
    let data = setup.only_backup();
    (db, other, setup, data)
}

#[test]
fn rows_load_over_several_connections_and_equal_a_one_connection_restore() {
    let (src, dst) = (source(), target());
    let (db, other, setup, data) = backed_up(&src, "par", true);
    let args = into_args(&dst, &data, &setup.path("target.password"));
    let want = (fingerprint(&src, &db), fingerprint(&src, &other));
    assert_eq!(
        src.sql_db(&db, "SELECT COUNT(*) FROM audit").trim(),
        "0",
        "the trigger fired on the source"
    );
    for jobs in ["1", "4"] {
        dst.drop_db(&db);
        dst.drop_db(&other);
        let connections = |s: &Server| -> u64 {
            s.sql("SHOW GLOBAL STATUS LIKE 'Connections'")
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        };
        let before = connections(&dst);
        let mut a = args.clone();
        a.extend(["--jobs".to_string(), jobs.to_string()]);
        let o = restore(&a);
        ok(&o, &format!("restore --jobs {jobs}"));
        let opened = connections(&dst) - before;
        let n: u64 = jobs.parse().unwrap();
        let expected = if n == 1 { 1 } else { n + 1 };
        assert!(
            opened >= expected,
            "--jobs {jobs}: {opened} connections opened, expected at least {expected}"
        );
        assert_same(&want.0, &fingerprint(&dst, &db));
        assert_same(&want.1, &fingerprint(&dst, &other));
        // Loaded with the dump's session settings on every connection: id 0 kept, the
        // zero date kept; the trigger came after the rows.
        assert_eq!(
            dst.sql_db(&db, "SELECT note, at FROM big WHERE id = 0")
                .trim(),
            "id zero\t0000-00-00 00:00:00"
        );
        assert_eq!(dst.sql_db(&db, "SELECT COUNT(*) FROM audit").trim(), "0");
        assert_eq!(
            dst.sql_db(&db, "SELECT SUM(n) FROM big_per_parent").trim(),
            "40001"
        );
    }
    // The table really is many statements, so several connections share its rows.
    let sql = std::process::Command::new(restore_bin())
        .args(["--decrypt", data.to_str().unwrap(), "-o", "-"])
        .args([
            "--dpo-key",
            testdata("dpo.sec.asc").to_str().unwrap(),
            "--agent-cert",
            testdata("agent.pub.asc").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    ok(&sql, "restore --decrypt");
    let inserts = String::from_utf8_lossy(&sql.stdout)
        .lines()
        .filter(|l| l.starts_with("INSERT INTO `big`"))
        .count();
    assert!(inserts >= 10, "{inserts} INSERT statements for big");
    src.drop_db(&db);
    src.drop_db(&other);
    dst.drop_db(&db);
    dst.drop_db(&other);
}

#[test]
fn a_row_the_target_refuses_on_a_row_connection_fails_the_restore_naming_it() {
    let (src, dst) = (source(), target());
    let (db, other, setup, data) = backed_up(&src, "parf", false);
    // A restore user that may create the tables but not insert into them: every
    // definition goes through, the first row fails on a row connection. It also holds a
    // role, so the early privilege check cannot tell (privileges through roles are left
    // to the restore) and the row connection meets the refusal.
    let user = unique("noins");
    let role = unique("noins_role");
    dst.sql(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}';
         GRANT SELECT, CREATE, DROP, ALTER, INDEX, REFERENCES, CREATE VIEW, SHOW VIEW, TRIGGER ON `{db}`.* TO '{user}'@'%';
         CREATE ROLE '{role}'; GRANT '{role}' TO '{user}'@'%'"
    ));
    std::fs::write(setup.path("noins.password"), format!("pw-{user}")).unwrap();
    dst.drop_db(&db);
    let t0 = std::time::Instant::now();
    let o = restore(&[
        "--into".to_string(),
        format!("mysql://{user}@127.0.0.1:{}/", dst.port),
        "--backup".into(),
        data.display().to_string(),
        "--password-file".into(),
        setup.path("noins.password").display().to_string(),
        "--dpo-key".into(),
        testdata("dpo.sec.asc").display().to_string(),
        "--agent-cert".into(),
        testdata("agent.pub.asc").display().to_string(),
        "--jobs".into(),
        "3".into(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the target server refused statement") && err.contains("(INSERT INTO `"),
        "{err}"
    );
    assert!(err.contains("INSERT command denied"), "{err}");
    assert!(
        err.contains("the target may hold a partial restore of"),
        "{err}"
    );
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("restore: restore into") && last.contains("refused statement"),
        "the error is one line: {err}"
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "the restore stops at the first refusal"
    );
    // No trigger or view was created after the failure.
    assert_eq!(
        dst.sql(&format!(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{db}'"
        ))
        .trim(),
        "0"
    );
    dst.sql(&format!("DROP USER '{user}'@'%'; DROP ROLE '{role}'"));
    src.drop_db(&db);
    src.drop_db(&other);
    dst.drop_db(&db);
}

/// `SHOW CREATE TABLE` of every base table of `db`, without the AUTO_INCREMENT counter.
fn table_definitions(s: &Server, db: &str) -> Vec<String> {
    let tables = s.sql(&format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' AND TABLE_TYPE='BASE TABLE' ORDER BY TABLE_NAME"
    ));
    tables
        .lines()
        .map(|t| {
            let def = s.sql_db(db, &format!("SHOW CREATE TABLE `{t}`"));
            let def: Vec<&str> = def
                .split_whitespace()
                .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                .collect();
            def.join(" ")
        })
        .collect()
}

/// Large tables get their plain secondary keys after their rows (one ALTER TABLE each,
/// the keys in their order): the restored tables' definitions are the source's, byte for
/// byte, over several connections and over one; a table with a foreign key on a column
/// whose only index was held back gets it first; the drill compares the definitions too.
#[test]
fn large_tables_get_their_keys_after_their_rows_with_the_same_definition() {
    let (src, dst) = (source(), target());
    let db = unique("keys");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"));
    src.sql_db(
        &db,
        "CREATE TABLE big (id BIGINT AUTO_INCREMENT PRIMARY KEY, a INT NOT NULL, b VARCHAR(30), c DATETIME,
           UNIQUE KEY ub (b), KEY ka (a), KEY kab (a, b(10)) COMMENT 'KEY `x`, (y)', KEY kc (c) IGNORED,
           CONSTRAINT pos CHECK (a >= 0)) ENGINE=InnoDB;
         INSERT INTO big (a, b, c) SELECT seq % 1000, CONCAT('b', seq), '2026-01-01' + INTERVAL seq SECOND FROM seq_1_to_210000;
         CREATE TABLE big_part (id INT NOT NULL, v INT, PRIMARY KEY (id), KEY kv (v)) ENGINE=InnoDB PARTITION BY HASH (id) PARTITIONS 3;
         INSERT INTO big_part SELECT seq, seq % 77 FROM seq_1_to_205000;
         CREATE TABLE child (id INT PRIMARY KEY, big_a INT, KEY (big_a), CONSTRAINT fk_a FOREIGN KEY (big_a) REFERENCES big (a)) ENGINE=InnoDB;
         INSERT INTO child SELECT seq, seq % 1000 FROM seq_1_to_100;
         CREATE TABLE small (id INT PRIMARY KEY, v INT, KEY (v)) ENGINE=InnoDB;
         INSERT INTO small SELECT seq, seq FROM seq_1_to_100;",
    );
    let mut setup = Setup::new(&src, &db);
    setup.extra = "users_and_grants = false\n".into();
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    let want = (fingerprint(&src, &db), table_definitions(&src, &db));
    let args = into_args(&dst, &data, &setup.path("target.password"));
    for jobs in ["2", "1"] {
        dst.drop_db(&db);
        let mut a = args.clone();
        a.extend(["--jobs".to_string(), jobs.to_string()]);
        let o = restore(&a);
        ok(&o, &format!("restore --jobs {jobs}"));
        assert!(
            stderr(&o).contains("added the secondary keys of 2 large table(s) after their rows"),
            "--jobs {jobs}: {}",
            stderr(&o)
        );
        assert_same(&want.0, &fingerprint(&dst, &db));
        assert_eq!(want.1, table_definitions(&dst, &db), "--jobs {jobs}");
    }
    // A restoring user who may create and fill the tables (and reference them) but not
    // alter them: the keys stay in the CREATE TABLE, and the restore succeeds as before.
    dst.drop_db(&db);
    let user = format!("{db}_noalter");
    let pw = "no-alter-pw";
    dst.sql(&format!(
        "CREATE OR REPLACE USER '{user}'@'%' IDENTIFIED BY '{pw}'; \
         GRANT CREATE, INSERT, SELECT, REFERENCES ON `{db}`.* TO '{user}'@'%'"
    ));
    let pw_file = setup.path("noalter.password");
    std::fs::write(&pw_file, pw).unwrap();
    let mut a = into_args(&dst, &data, &setup.path("target.password"));
    a[1] = format!("mysql://{user}@127.0.0.1:{}/", dst.port);
    a[5] = pw_file.display().to_string();
    let o = restore(&a);
    ok(&o, "restore by a user without ALTER");
    assert!(
        !stderr(&o).contains("added the secondary keys"),
        "{}",
        stderr(&o)
    );
    assert_same(&want.0, &fingerprint(&dst, &db));
    assert_eq!(want.1, table_definitions(&dst, &db), "a user without ALTER");
    dst.sql(&format!("DROP USER '{user}'@'%'"));
    dst.drop_db(&db);
    let mut args = vec![
        "--verify".to_string(),
        "--json".into(),
        "--backup".into(),
        data.display().to_string(),
    ];
    args.extend(scratch_args(&dst, &setup.path("scratch.pw")));
    args.extend(key_args());
    let d = restore(&args);
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap_or_default();
    assert_eq!(d.status.code(), Some(0), "{v:#}\n{}", stderr(&d));
    assert_eq!(v["tables_compared"], 4, "{v:#}");
    src.drop_db(&db);
}
