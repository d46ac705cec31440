//! Point-in-time recovery, part 1 (issue 13), first steps: the binary log streamed from
//! the real source server by GTID over a replication connection and cut into segments that
//! stock `mariadb-binlog` reads and that replay, on a server holding the state before
//! them, to exactly the source's rows; a segment sealed and stored like a dump.
//!
//! Other tests write to the same source at the same time: each test writes in its own
//! GTID domain (`SET SESSION gtid_domain_id`) and replays only that domain
//! (`mariadb-binlog --do-domain-ids`), so their transactions in the stream do not matter.

mod common;
use common::*;

use backup_agent::source::binlog::{self, SegmentBuilder};

/// `sql` run in GTID domain `domain`.
fn in_domain(domain: u32, sql: &str) -> String {
    format!("SET SESSION gtid_domain_id = {domain}; {sql}")
}

/// The sequence number of domain `domain` in a GTID list (`0-1-5,7001-1-30`).
fn seq_of(list: &str, domain: u32) -> Option<u64> {
    list.split(',')
        .map(str::trim)
        .find(|g| g.starts_with(&format!("{domain}-")))
        .and_then(|g| g.rsplit('-').next())
        .and_then(|s| s.parse().ok())
}

/// What the DPO does with a sealed segment: `gpg -d SEG | gunzip > OUT` (the keys in `gpg`).
fn open_segment(gpg: &Gpg, sealed: &std::path::Path, out: &std::path::Path) {
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gpg --batch --decrypt {sealed:?} | gunzip > {out:?}"
        ))
        .env("GNUPGHOME", gpg.home.path())
        .output()
        .unwrap();
    ok(&o, "gpg -d | gunzip");
}

fn conn_opts(s: &Server) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(s.port)
        .user(Some(ADMIN_USER))
        .pass(Some(s.password.clone()))
        .prefer_socket(false)
}

/// Streams the source's binary log after `after` up to its current end, cut into segments
/// of at most `max` bytes (at transaction boundaries).
fn stream_segments(src: &Server, after: &str, max: usize) -> Vec<binlog::Segment> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = mysql_async::Conn::new(conn_opts(src)).await.unwrap();
        // A replication id of this test process's own: two readers with one id would
        // make the server drop the first.
        let id = 1_000_000_000 + std::process::id();
        let mut stream = binlog::open(conn, after, id, true).await.unwrap();
        let mut b = SegmentBuilder::new(binlog::GtidPos::parse(after).unwrap());
        let mut out = Vec::new();
        while let Some(e) = stream.next().await.unwrap() {
            if b.at_boundary() && b.len() >= max && e.gtid.is_some() {
                out.extend(b.finish());
            }
            if b.push(&e) {
                out.extend(b.finish());
                assert!(!b.push(&e));
            }
        }
        out.extend(b.finish());
        stream.close().await;
        out
    })
}

#[test]
fn streamed_segments_are_binlog_files_that_replay_to_the_source_rows() {
    let src = source();
    let dst = target();
    let db = unique("pitr");
    src.drop_db(&db);
    dst.drop_db(&db);
    const DOMAIN: u32 = 7001;
    let schema =
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(100), b BLOB, d DATETIME(6)) ENGINE=InnoDB";
    src.sql(&in_domain(DOMAIN, &format!("CREATE DATABASE `{db}`")));
    src.sql_db(&db, &in_domain(DOMAIN, schema));
    dst.sql(&format!("CREATE DATABASE `{db}`"));
    dst.sql_db(&db, schema);
    let start = src.sql("SELECT @@gtid_binlog_pos").trim().to_string();

    // Row events of every kind, multi-statement transactions, a DDL, binary data.
    src.sql_db(
        &db,
        &in_domain(DOMAIN, "INSERT INTO t SELECT seq, CONCAT('row-', seq), UNHEX(SHA2(seq, 256)), '2026-01-02 03:04:05.123456' FROM seq_1_to_3000;\
         START TRANSACTION; UPDATE t SET v = CONCAT(v, '-upd') WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0; COMMIT;\
         ALTER TABLE t ADD COLUMN extra INT DEFAULT 5;\
         INSERT INTO t (id, v, b, d, extra) VALUES (100000, 'it''s \\\\ \"quoted\"', 0x00FF27, NULL, 9);"),
    );
    for i in 0..50 {
        src.sql_db(
            &db,
            &in_domain(
                DOMAIN,
                &format!("UPDATE t SET extra = {i} WHERE id = {}", i + 1),
            ),
        );
    }
    let end = src.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    let last = seq_of(&end, DOMAIN).unwrap();

    let segments = stream_segments(&src, &start, 64 << 10);
    assert!(segments.len() > 1, "several segments: {}", segments.len());
    // A chain: each segment starts at the position the previous one ended at.
    assert_eq!(
        segments[0].previous_position,
        binlog::GtidPos::parse(&start).unwrap().to_string()
    );
    for w in segments.windows(2) {
        assert_eq!(w[1].previous_position, w[0].end_position);
    }
    assert_eq!(
        binlog::GtidPos::parse(&segments.last().unwrap().end_position)
            .unwrap()
            .to_string()
            .split(',')
            .find(|g| g.starts_with(&format!("{DOMAIN}-"))),
        Some(format!("{DOMAIN}-1-{last}").as_str())
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut printed = String::new();
    for (i, s) in segments.iter().enumerate() {
        let f = tmp.path().join(format!("seg{i:03}.bin"));
        std::fs::write(&f, &s.bytes).unwrap();
        // Stock mariadb-binlog reads it (checksums verified) and replays it.
        let o = std::process::Command::new("mariadb-binlog")
            .arg("--verify-binlog-checksum")
            .arg(format!("--do-domain-ids={DOMAIN}"))
            .arg(&f)
            .output()
            .unwrap();
        ok(&o, &format!("mariadb-binlog {}", f.display()));
        printed.push_str(&String::from_utf8_lossy(&o.stdout));
        let sql = tmp.path().join(format!("seg{i:03}.sql"));
        std::fs::write(&sql, &o.stdout).unwrap();
        let o = dst.load_file(None, &sql);
        ok(&o, &format!("replaying segment {i}"));
    }
    // Every transaction of the test after the start, through the last one.
    let first = seq_of(&start, DOMAIN).map_or(1, |s| s + 1);
    for seq in [first, last] {
        assert!(
            printed.contains(&format!("GTID {DOMAIN}-1-{seq} ")),
            "GTID {DOMAIN}-1-{seq} is in the segments"
        );
    }
    assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));
    src.drop_db(&db);
    dst.drop_db(&db);
}

/// A segment sealed and stored like a dump (issue 13): in a local store and in Garage,
/// four objects under `<prefix>/binlog/`, the data read back before the manifest; the DPO
/// reads it with stock tools (`sha256sum -c`, `gpg --verify` on the manifest, `gpg -d |
/// gunzip | mariadb-binlog`), and the manifest names the chain (previous, first and last
/// GTID) exactly.
#[test]
fn a_segment_is_sealed_and_stored_like_a_dump_and_read_with_stock_tools() {
    use backup_agent::archive::{archive_segment, SegmentFrom};
    use backup_agent::copies::inventory::open_all;
    use backup_agent::seal::crypto::SealingKeys;

    let src = source();
    let db = unique("seg");
    src.drop_db(&db);
    let start = src.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(
        &db,
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, REPEAT('archived-row', 20) FROM seq_1_to_2000",
    );
    let segments = stream_segments(&src, &start, 64 << 20);
    assert_eq!(segments.len(), 1);
    let seg = &segments[0];

    let mut setup = Setup::new(&src, &db);
    let g = common::s3::garage();
    let prefix = unique("seg");
    setup.stores = g.store_toml("garage", "dc2", &prefix, &g.url, "");
    let cfg = backup_core::config::Config::load(&setup.config(&src)).unwrap();
    let keys = SealingKeys::load(cfg.encryption.as_ref().unwrap()).unwrap();
    let stores = open_all(&cfg);
    let src_cfg = &cfg.sources[0];
    let from = SegmentFrom {
        source: src_cfg,
        node: &src_cfg.nodes[0],
        agent: &cfg.agent.name,
    };
    let archived = archive_segment(&stores, &keys, 6, &from, seg).unwrap();
    assert_eq!(
        archived.stores,
        vec!["local", "garage"],
        "{:?}",
        archived.failed
    );
    let m = &archived.manifest;
    assert_eq!(m.previous_gtid, start);
    assert_eq!(Some(&m.first_gtid), seg.first_gtid.as_ref());
    assert_eq!(Some(&m.last_gtid), seg.last_gtid.as_ref());
    assert_eq!(m.source, "main");
    assert_eq!(m.binlog_bytes, seg.bytes.len() as u64);
    let id = m.segment_id.clone();
    assert!(id.starts_with("binlog_"), "{id}");

    // Four objects in each store, and nothing else.
    let names = |v: Vec<String>| -> Vec<String> {
        let mut v: Vec<String> = v
            .into_iter()
            .map(|k| k.rsplit('/').next().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let want = names(vec![
        format!("{id}.binlog.gz.gpg"),
        format!("{id}.binlog.gz.gpg.sha256"),
        format!("{id}.manifest.json"),
        format!("{id}.manifest.json.sig"),
    ]);
    let dir = setup.store().join("main/binlog");
    let local: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names(local), want);
    assert_eq!(names(g.keys(&format!("{prefix}/main/binlog/"))), want);

    // Stock tools, as the DPO would use them.
    let o = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{id}.binlog.gz.gpg.sha256"))
        .current_dir(&dir)
        .output()
        .unwrap();
    ok(&o, "sha256sum -c");
    let gpg = Gpg::new();
    gpg.import(&testdata("dpo.sec.asc"));
    gpg.import(&testdata("agent.pub.asc"));
    let o = gpg
        .cmd()
        .arg("--verify")
        .arg(dir.join(format!("{id}.manifest.json.sig")))
        .arg(dir.join(format!("{id}.manifest.json")))
        .output()
        .unwrap();
    ok(&o, "gpg --verify of the segment manifest");
    let bin = setup.path("seg.bin");
    open_segment(&gpg, &dir.join(format!("{id}.binlog.gz.gpg")), &bin);
    assert_eq!(std::fs::read(&bin).unwrap(), seg.bytes);
    let o = std::process::Command::new("mariadb-binlog")
        .arg("--verify-binlog-checksum")
        .arg(&bin)
        .output()
        .unwrap();
    ok(&o, "mariadb-binlog");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("CREATE TABLE t"),
        "the DDL is in the segment"
    );

    // The same segment again (a restart after a crash between the store and the state):
    // found stored, nothing overwritten (a new sealing would differ: new session key).
    let before: Vec<Vec<u8>> = want
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    let again = archive_segment(&stores, &keys, 6, &from, seg);
    assert!(again.is_ok(), "{again:?}");
    let after: Vec<Vec<u8>> = want
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    assert!(before == after, "the stored segment was not touched");
    assert_eq!(names(g.keys(&format!("{prefix}/main/binlog/"))), want);
    // A different segment under the same name is refused.
    let mut other = seg.clone();
    other.end_position = format!("{},9999-1-1", seg.end_position);
    let clash = archive_segment(&stores, &keys, 6, &from, &other);
    assert!(clash.is_err(), "{clash:?}");
    let after: Vec<Vec<u8>> = want
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    assert!(before == after, "never overwritten");
    src.drop_db(&db);
}

/// `backup-agent archive-binlog` (issue 13): each pass archives from where the last one
/// ended to the log's current end; the segments of several passes form one chain (each
/// starts at the position the previous ended: no gap, no duplicate), and replayed in
/// order they give exactly the source's rows.
#[test]
fn archive_passes_continue_the_chain_and_replay_exactly() {
    const DOMAIN: u32 = 7003;
    let src = source();
    let dst = target();
    let db = unique("arch");
    src.drop_db(&db);
    dst.drop_db(&db);
    let schema = "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(200))";
    src.sql(&in_domain(DOMAIN, &format!("CREATE DATABASE `{db}`")));
    src.sql_db(&db, &in_domain(DOMAIN, schema));
    dst.sql(&format!("CREATE DATABASE `{db}`"));
    dst.sql_db(&db, schema);
    let setup = Setup::new(&src, &db);
    // The documented grants for archiving.
    for host in ["127.0.0.1", "localhost"] {
        src.sql(&format!(
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{}'@'{host}'",
            setup.dump_user
        ));
    }
    // The first pass starts at the server's position (no backup, no state yet).
    ok(
        &setup.agent(&src, &["archive-binlog", "--segment-size", "64KiB"]),
        "first pass",
    );
    // Even when it found nothing to archive, it fixed where the chain starts.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.path("state/state.json")).unwrap()).unwrap();
    assert!(
        state["sources"]["main"]["binlog_position"].is_string(),
        "{state:#}"
    );
    for pass in 0..3 {
        src.sql_db(
            &db,
            &in_domain(
                DOMAIN,
                &format!(
                    "INSERT INTO t SELECT seq + {0}, REPEAT(SHA2(seq, 256), 3) FROM seq_1_to_1500; \
                     UPDATE t SET v = 'changed' WHERE id = {0} + 7; DELETE FROM t WHERE id = {0} + 9",
                    pass * 10_000
                ),
            ),
        );
        let o = setup.agent(&src, &["archive-binlog", "--segment-size", "64KiB"]);
        ok(&o, &format!("pass {pass}"));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("segment(s) archived, up to GTID"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let dir = setup.store().join("main/binlog");
    let manifests: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert!(manifests.len() >= 3, "{}", manifests.len());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.path("state/state.json")).unwrap()).unwrap();
    let position = state["sources"]["main"]["binlog_position"]
        .as_str()
        .unwrap();
    // One chain: from the segment no other ends at, each next one starts where it ended,
    // through every segment, to the state's position.
    let ends: Vec<&str> = manifests
        .iter()
        .map(|m| m["end_position"].as_str().unwrap())
        .collect();
    let mut at = manifests
        .iter()
        .find(|m| !ends.contains(&m["previous_gtid"].as_str().unwrap()))
        .expect("a first segment");
    let mut chain = vec![at];
    while let Some(next) = manifests
        .iter()
        .find(|n| n["previous_gtid"] == at["end_position"])
    {
        chain.push(next);
        at = next;
    }
    assert_eq!(
        chain.len(),
        manifests.len(),
        "one chain through every segment"
    );
    assert_eq!(at["end_position"].as_str().unwrap(), position);

    // Decrypt as the DPO does and replay the test's domain, in chain order.
    let gpg = Gpg::new();
    gpg.import(&testdata("dpo.sec.asc"));
    for m in &chain {
        let id = m["segment_id"].as_str().unwrap();
        let bin = setup.path(&format!("{id}.bin"));
        open_segment(&gpg, &dir.join(format!("{id}.binlog.gz.gpg")), &bin);
        let o = std::process::Command::new("mariadb-binlog")
            .arg(format!("--do-domain-ids={DOMAIN}"))
            .arg(&bin)
            .output()
            .unwrap();
        ok(&o, "mariadb-binlog");
        let sql = setup.path(&format!("{id}.sql"));
        std::fs::write(&sql, &o.stdout).unwrap();
        ok(&dst.load_file(None, &sql), &format!("replaying {id}"));
    }
    assert!(
        position.split(',').any(|g| g
            == format!(
                "{DOMAIN}-1-{}",
                src.sql("SELECT @@gtid_binlog_pos")
                    .trim()
                    .split(',')
                    .find(|g| g.starts_with(&format!("{DOMAIN}-")))
                    .unwrap()
                    .rsplit('-')
                    .next()
                    .unwrap()
            )),
        "the state's position {position} includes the test's last GTID"
    );
    assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));
    src.drop_db(&db);
    dst.drop_db(&db);
}
