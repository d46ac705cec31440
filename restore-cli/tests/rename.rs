//! `restore --into --database OLD --as NEW`: one database restored beside the original
//! on the same server, every reference to it moved to the new name, the original
//! untouched; what cannot be rewritten safely is refused before anything is restored.

mod common;
use common::*;

/// The fingerprint of `db` as it reads after renaming it to `new` (SHOW CREATE names it).
fn renamed(
    fp: &std::collections::BTreeMap<String, String>,
    db: &str,
    new: &str,
) -> std::collections::BTreeMap<String, String> {
    fp.iter()
        .map(|(k, v)| (k.clone(), v.replace(db, new)))
        .collect()
}

#[test]
fn a_database_restored_under_another_name_beside_the_original() {
    let src = source();
    let db = unique("rn_orig");
    let new = unique("rn_copy");
    let other = unique("rn_other");
    for d in [&new, &other] {
        src.drop_db(d);
    }
    load_schema(&src, &db);
    // References the authors wrote, qualified with the database: a trigger calling a
    // routine, a procedure, an event, a view on views, a table with a foreign key into
    // another database.
    src.sql(&format!(
        "CREATE DATABASE `{other}`; CREATE TABLE `{other}`.ref (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO `{other}`.ref VALUES (1);"
    ));
    src.sql_db(
        &db,
        &format!(
            "CREATE TABLE cross_db (id INT PRIMARY KEY, r INT, CONSTRAINT fk_other FOREIGN KEY (r) REFERENCES `{other}`.ref (id)) ENGINE=InnoDB; \
             INSERT INTO cross_db VALUES (1, 1); \
             CREATE TRIGGER trg_parts_bi BEFORE INSERT ON parts FOR EACH ROW SET NEW.v = {db}.f_double(2); \
             CREATE PROCEDURE p_count() SELECT COUNT(*) FROM {db}.orders WHERE item <> 'x'; \
             CREATE EVENT ev_call ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' ON COMPLETION PRESERVE DISABLE DO CALL `{db}`.p_count(); \
             CREATE VIEW v_top AS SELECT t.id FROM `{db}`.a_top t JOIN {db}.m_middle m ON m.id = t.id"
        ),
    );
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    let before = fingerprint(&src, &db);

    let mut args = into_args(&src, &data, &setup.path("target.password"));
    args.extend(["--database".into(), db.clone(), "--as".into(), new.clone()]);
    let o = restore(&args);
    ok(&o, "restore --as");
    assert!(stderr(&o).contains(&new), "{}", stderr(&o));

    // The copy equals the original, its references moved to the new name; the original
    // is untouched, and nothing of the copy points back at it.
    let copy = fingerprint(&src, &new);
    assert_same(&renamed(&before, &db, &new), &copy);
    assert_same(&before, &fingerprint(&src, &db));
    for (k, v) in &copy {
        assert!(!v.contains(&db), "{k} still names {db}: {v}");
    }
    let fk = src.sql(&format!(
        "SELECT UNIQUE_CONSTRAINT_SCHEMA FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA='{new}' AND CONSTRAINT_NAME='fk_other'"
    ));
    assert_eq!(fk.trim(), other);
    // The copy's trigger and procedure work on the copy.
    src.sql_db(
        &new,
        "INSERT INTO parts (id, created, v) VALUES (99, '2024-01-01', 'x')",
    );
    assert_eq!(
        src.sql_db(&new, "SELECT v FROM parts WHERE id = 99").trim(),
        "4"
    );
    assert_eq!(
        src.sql_db(&db, "SELECT COUNT(*) FROM parts WHERE id = 99")
            .trim(),
        "0"
    );
    src.sql_db(
        &new,
        "INSERT INTO orders (item) VALUES ('only in the copy')",
    );
    let in_copy = src.sql_db(&new, "CALL p_count()");
    let in_orig = src.sql_db(&db, "CALL p_count()");
    assert_ne!(in_copy.trim(), in_orig.trim());

    // Again: the name is taken now.
    let o = restore(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refusing to overwrite existing database(s) on")
            && stderr(&o).contains(&new),
        "{}",
        stderr(&o)
    );

    // Dynamic SQL naming the database cannot be rewritten: refused, naming the
    // procedure, before anything is restored.
    src.sql_db(
        &db,
        &format!("CREATE PROCEDURE p_dynamic() EXECUTE IMMEDIATE 'SELECT * FROM {db}.orders'"),
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&setup.agent(&src, &["backup"]), "second backup");
    let newest = setup
        .store_files()
        .into_iter()
        .filter(|f| f.ends_with(".sql.gz.gpg"))
        .max()
        .unwrap();
    let third = unique("rn_refused");
    let mut args = into_args(
        &src,
        &setup.store().join(newest),
        &setup.path("target.password"),
    );
    args.extend([
        "--database".into(),
        db.clone(),
        "--as".into(),
        third.clone(),
    ]);
    let o = restore(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("procedure `p_dynamic`") && e.contains("nothing was restored"),
        "{e}"
    );
    assert!(!src.databases().contains(&third));

    // Usage: --as needs one --database.
    let mut args = into_args(&src, &data, &setup.path("target.password"));
    args.extend(["--as".into(), third.clone()]);
    let o = restore(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("exactly one --database"),
        "{}",
        stderr(&o)
    );
    for d in [&db, &new, &other] {
        src.drop_db(d);
    }
}

/// The restoring user's privileges are checked before the passes over the backup (what
/// every restore needs) and before the replay (what the backup's objects need): a user
/// that could load the rows but not create the views, routines, triggers and events is
/// refused before anything is restored, naming what it lacks and where.
#[test]
fn a_restoring_user_without_the_privileges_is_refused_before_anything_is_restored() {
    let src = source();
    let dst = target();
    let db = unique("priv");
    load_schema(&src, &db);
    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    dst.drop_db(&db);
    let user = unique("restorer");
    let pw = "pw-restorer";
    dst.sql(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY '{pw}'; GRANT SELECT ON `{db}`.* TO '{user}'@'%'"
    ));
    std::fs::write(setup.path("restorer.password"), pw).unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "--into".to_string(),
            format!("mysql://{user}@127.0.0.1:{}/", dst.port),
            "--backup".into(),
            data.display().to_string(),
            "--password-file".into(),
            setup.path("restorer.password").display().to_string(),
            "--dpo-key".into(),
            testdata("dpo.sec.asc").display().to_string(),
            "--agent-cert".into(),
            testdata("agent.pub.asc").display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // SELECT only: refused from the manifest, before the backup is read.
    let o = restore(&args(&[]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("lacks CREATE, INSERT on `{db}`"))
            && e.contains("nothing was read or restored"),
        "{e}"
    );
    assert!(!e.contains("checksum ok"), "{e}");
    // Enough for the tables and rows, not for the objects: refused after the verification
    // pass, before the replay.
    dst.sql(&format!(
        "GRANT CREATE, INSERT, ALTER, INDEX, REFERENCES ON `{db}`.* TO '{user}'@'%'"
    ));
    let o = restore(&args(&[]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "lacks CREATE VIEW, CREATE ROUTINE, TRIGGER, EVENT on `{db}`"
        )) || e.contains("lacks CREATE ROUTINE, CREATE VIEW, TRIGGER, EVENT"),
        "{e}"
    );
    assert!(e.contains("nothing was restored"), "{e}");
    assert!(!dst.databases().contains(&db), "{e}");
    dst.sql(&format!("DROP USER '{user}'@'%'"));
    src.drop_db(&db);
}
