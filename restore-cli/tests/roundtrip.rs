//! Backup of the round-trip schema with backup-agent, restore with `restore --into` into a
//! second server: every table's CHECKSUM TABLE and row count, every view, routine,
//! trigger, event and sequence definition, and the users and grants come back equal.

mod common;
use common::*;

#[test]
fn round_trip_every_type_and_object() {
    let src = source();
    let dst = target();
    let db = unique("rt");
    load_schema(&src, &db);
    let app = unique("app");
    let role = unique("role");
    src.sql(&format!(
        "CREATE USER '{app}'@'%' IDENTIFIED BY 'app-password'; \
         GRANT SELECT, INSERT ON `{db}`.* TO '{app}'@'%'; \
         GRANT SELECT (id), UPDATE (ti) ON `{db}`.`ints` TO '{app}'@'%'; \
         GRANT EXECUTE ON PROCEDURE `{db}`.`p_touch` TO '{app}'@'%'; \
         CREATE ROLE '{role}'; GRANT SELECT ON `{db}`.* TO '{role}'; GRANT '{role}' TO '{app}'@'%'"
    ));
    // A grant on a table of a database that is not in the backup.
    let other = unique("other");
    src.sql(&format!("CREATE DATABASE `{other}`; CREATE TABLE `{other}`.t (a INT); GRANT SELECT ON `{other}`.`t` TO '{app}'@'%'"));
    let setup = Setup::new(&src, &db);
    let o = setup.agent(&src, &["backup"]);
    ok(&o, "backup");

    // Four objects under the source's prefix (data, .sha256, the manifest's signature,
    // the manifest), no temp files.
    let files = setup.store_files();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files.iter().all(|f| f.starts_with("main/mariadb_")),
        "{files:?}"
    );
    let data = setup.only_backup();
    let mpath = data
        .to_string_lossy()
        .replace(".sql.gz.gpg", ".manifest.json");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    assert_eq!(m["databases"], serde_json::json!([db]));
    assert!(
        m["binlog"]["file"]
            .as_str()
            .unwrap()
            .starts_with("mariadb-bin."),
        "{m}"
    );
    assert!(m["binlog"]["gtid"].as_str().is_some(), "{m}");
    assert!(
        m["largest_statement_bytes"].as_u64().unwrap() > 16 << 20,
        "the 16 MiB row needs its own statement: {m}"
    );
    let warnings: Vec<&str> = m["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("3 non-transactional")),
        "{m}"
    );
    assert_eq!(
        m["data"]["size"].as_u64().unwrap(),
        std::fs::metadata(&data).unwrap().len()
    );
    let mtext = std::fs::read_to_string(&mpath).unwrap();
    for table in ["ints", "texts", "keyless", "many"] {
        assert!(
            !mtext.contains(&format!("\"{table}\"")),
            "the manifest must not name tables: {mtext}"
        );
    }

    dst.drop_db(&db);
    let mut args = into_args(&dst, &data, &setup.path("target.password"));
    args.push("--accounts".into());
    let o = restore(&args);
    ok(&o, "restore --into");

    let a = fingerprint(&src, &db);
    let b = fingerprint(&dst, &db);
    assert!(
        a.len() > 30,
        "fingerprint covers the schema: {:?}",
        a.keys()
    );
    assert_same(&a, &b);

    // Users, roles and grants came back as statements (the grant on a table of a database
    // outside the backup is not in it).
    let grants = |s: &Server| {
        let mut g: Vec<String> = s
            .sql(&format!("SHOW GRANTS FOR '{app}'@'%'"))
            .lines()
            .map(String::from)
            .collect();
        g.sort();
        g
    };
    let expected: Vec<String> = grants(&src)
        .into_iter()
        .filter(|g| !g.contains(&other))
        .collect();
    assert_eq!(grants(&src).len(), expected.len() + 1);
    assert_eq!(expected, grants(&dst));
    assert_eq!(
        src.sql(&format!("SHOW GRANTS FOR '{role}'")),
        dst.sql(&format!("SHOW GRANTS FOR '{role}'"))
    );

    // The sequence does not hand out a value the source already used (100, 105).
    let next: i64 = dst
        .sql_db(&db, "SELECT NEXTVAL(seq_orders)")
        .trim()
        .parse()
        .unwrap();
    assert!(next >= 110, "sequence restarted at {next}");

    // An existing database is refused without --force and left untouched.
    dst.sql_db(&db, "INSERT INTO empty_t VALUES (42)");
    let o = restore(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refusing to overwrite existing database"),
        "{}",
        stderr(&o)
    );
    // Refused before the passes over the backup (fail fast), from the signed manifest.
    assert!(!stderr(&o).contains("checksum ok"), "{}", stderr(&o));
    assert_eq!(dst.sql_db(&db, "SELECT COUNT(*) FROM empty_t").trim(), "1");
    // With --force it is replaced.
    let mut forced = args.clone();
    forced.push("--force".into());
    ok(&restore(&forced), "restore --force");
    assert_eq!(dst.sql_db(&db, "SELECT COUNT(*) FROM empty_t").trim(), "0");
    assert_same(&a, &fingerprint(&dst, &db));

    src.drop_db(&other);
    src.drop_db(&db);
    dst.drop_db(&db);
    for s in [&src, &dst] {
        s.sql(&format!(
            "DROP USER IF EXISTS '{app}'@'%'; DROP ROLE IF EXISTS '{role}'"
        ));
    }
}

#[test]
fn restore_of_one_database_out_of_several() {
    let src = source();
    let dst = target();
    let (d1, d2) = (unique("one"), unique("two"));
    for d in [&d1, &d2] {
        src.drop_db(d);
        src.sql(&format!("CREATE DATABASE `{d}`"));
        src.sql_db(d, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1,'a'),(2,'b')");
    }
    let mut setup = Setup::new(&src, &d1);
    setup.extra = String::new();
    let cfg_db = format!("{d1}\", \"{d2}");
    setup.db = cfg_db;
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    dst.drop_db(&d1);
    dst.drop_db(&d2);
    let mut args = into_args(&dst, &data, &setup.path("target.password"));
    args.extend(["--database".to_string(), d2.clone()]);
    let o = restore(&args);
    ok(&o, "restore --database");
    let dbs = dst.databases();
    assert!(dbs.contains(&d2) && !dbs.contains(&d1), "{dbs:?}");
    assert_same(&fingerprint(&src, &d2), &fingerprint(&dst, &d2));
    for s in [&src, &dst] {
        s.drop_db(&d1);
        s.drop_db(&d2);
    }
}

/// Text in every charset the server offers comes back byte for byte: in the single-byte
/// ones all 256 byte values (written as `_cs '...'`, escaped), in the multi-byte ones
/// characters whose bytes hold a backslash or a quote (sjis 0x955C, big5 0xA45C, ...),
/// written as `_cs X'..'`; plus the empty string and NULL.
#[test]
fn text_in_every_charset_round_trips_byte_for_byte() {
    let src = source();
    let dst = target();
    let db = unique("cs");
    src.drop_db(&db);
    dst.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    let list = src.sql(
        "SELECT CHARACTER_SET_NAME, MAXLEN FROM information_schema.CHARACTER_SETS \
         WHERE CHARACTER_SET_NAME <> 'binary' ORDER BY 1",
    );
    let charsets: Vec<(String, u32)> = list
        .lines()
        .map(|l| {
            let (n, m) = l.split_once('\t').unwrap();
            (n.to_string(), m.parse().unwrap())
        })
        .collect();
    assert!(charsets.len() >= 39, "{charsets:?}");
    let cols: Vec<String> = charsets
        .iter()
        .map(|(cs, _)| format!("`c_{cs}` LONGTEXT CHARACTER SET {cs}"))
        .collect();
    src.sql_db(
        &db,
        &format!(
            "CREATE TABLE t (id INT PRIMARY KEY, {}) ENGINE=InnoDB",
            cols.join(", ")
        ),
    );
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02X}")).collect();
    // Characters given in UTF-8 and converted to each charset (what it cannot hold
    // becomes '?'): quotes, backslashes, and CJK characters whose second byte is 0x5C or
    // 0x27 in some legacy encoding.
    let sample_text = "a'b\\c\"\0d 表 ソ 十 功 许 é ß ё 🙂 end";
    let sample = format!(
        "_utf8mb4 X'{}'",
        sample_text
            .bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    );
    // ASCII alone (a plain string where the charset agrees with ASCII, swe7 does not).
    let ascii_bytes: String = (0..=127u8).map(|b| format!("{b:02X}")).collect();
    let mut rows = vec![Vec::new(); 5];
    for (cs, maxlen) in &charsets {
        rows[0].push(if *maxlen == 1 && cs != "ascii" {
            format!("CAST(UNHEX('{all_bytes}') AS CHAR CHARACTER SET {cs})")
        } else {
            format!("CONVERT({sample} USING {cs})")
        });
        rows[1].push(format!("CONVERT({sample} USING {cs})"));
        rows[2].push("''".into());
        rows[3].push("NULL".into());
        rows[4].push(if *maxlen == 1 {
            format!("CAST(UNHEX('{ascii_bytes}') AS CHAR CHARACTER SET {cs})")
        } else {
            "'plain ascii'".into()
        });
    }
    for (i, r) in rows.iter().enumerate() {
        src.sql_db(
            &db,
            &format!(
                "SET SESSION sql_mode=''; INSERT INTO t VALUES ({i}, {})",
                r.join(", ")
            ),
        );
    }
    let hexes = |s: &Server| -> String {
        let sel: Vec<String> = charsets
            .iter()
            .map(|(cs, _)| format!("IFNULL(HEX(`c_{cs}`), 'NULL')"))
            .collect();
        s.sql_db(
            &db,
            &format!("SELECT id, {} FROM t ORDER BY id", sel.join(", ")),
        )
    };
    let want = hexes(&src);
    // The single-byte charsets really hold every byte value.
    let first = want.lines().next().unwrap();
    let latin1_at = charsets.iter().position(|(c, _)| c == "latin1").unwrap() + 1;
    assert_eq!(first.split('\t').nth(latin1_at).unwrap(), all_bytes);
    let sjis_at = charsets.iter().position(|(c, _)| c == "sjis").unwrap() + 1;
    assert!(
        first.split('\t').nth(sjis_at).unwrap().contains("955C"),
        "sjis holds a character whose second byte is a backslash: {first}"
    );

    let setup = Setup::new(&src, &db);
    ok(&setup.agent(&src, &["backup"]), "backup");
    let data = setup.only_backup();
    // The single-byte text is an escaped string, not hex.
    let sql = setup.path("plain.sql");
    let mut args = vec![
        "--decrypt".to_string(),
        data.display().to_string(),
        "-o".into(),
        sql.display().to_string(),
    ];
    args.extend(
        into_args(&dst, &data, &setup.path("pw"))[6..]
            .iter()
            .cloned(),
    );
    ok(&restore(&args), "restore --decrypt");
    let text = std::fs::read(&sql).unwrap();
    let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"_latin1 '\\0\x01\x02"), "latin1 as an escaped string");
    assert!(has(b"_cp1251 '"), "cp1251 as an escaped string");
    assert!(has(b"_sjis X'"), "sjis as hex");
    assert!(!has(b"_latin1 X'"), "no latin1 hex literal");
    assert!(has(b",'\\0\x01\x02"), "ASCII latin1 as a plain string");
    assert!(
        has(b"_swe7 '\\0\x01\x02"),
        "ASCII swe7 keeps its introducer"
    );

    ok(
        &restore(&into_args(&dst, &data, &setup.path("pw"))),
        "restore --into",
    );
    assert_eq!(hexes(&dst), want);
    src.drop_db(&db);
    dst.drop_db(&db);
}

/// The table definitions are read a batch at a time (one round trip per batch): a
/// database of more tables than a batch, with names that need quoting, comes back whole.
#[test]
fn a_database_of_many_tables_round_trips() {
    let src = source();
    let dst = target();
    let db = unique("many");
    src.drop_db(&db);
    src.sql(&format!("CREATE DATABASE `{db}`"));
    let mut sql = String::new();
    for i in 0..230 {
        let name = match i % 3 {
            0 => format!("t{i:03}"),
            1 => format!("t {i:03} `q`;"),
            _ => format!("T{i:03}é"),
        };
        let q = format!("`{}`", name.replace('`', "``"));
        sql.push_str(&format!(
            "CREATE TABLE {q} (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE={}; INSERT INTO {q} VALUES ({i}, 'row {i}');\n",
            if i == 7 { "MyISAM" } else { "InnoDB" }
        ));
    }
    let file = std::env::temp_dir().join(format!("{db}.sql"));
    std::fs::write(&file, sql).unwrap();
    ok(&src.load_file(Some(&db), &file), "creating 230 tables");
    let _ = std::fs::remove_file(&file);
    let setup = Setup::new(&src, &db);
    let o = setup.agent(&src, &["backup", "--json"]);
    ok(&o, "backup");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r[0]["tables"], 230, "{r}");
    assert_eq!(r[0]["rows"], 230, "{r}");
    dst.drop_db(&db);
    let o = restore(&into_args(
        &dst,
        &setup.only_backup(),
        &setup.path("target.password"),
    ));
    ok(&o, "restore");
    assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));
    src.drop_db(&db);
    dst.drop_db(&db);
}
