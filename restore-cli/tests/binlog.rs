//! Point-in-time recovery, part 1 (issue 13), first step: the binary log streamed from the
//! real source server by GTID over a replication connection and cut into segments that
//! stock `mariadb-binlog` reads and that replay, on a server holding the state before
//! them, to exactly the source's rows.

mod common;
use common::*;

use backup_agent::source::binlog::{self, SegmentBuilder};

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
        let mut stream = binlog::open(conn, after, 4_000_001, true).await.unwrap();
        let mut b = SegmentBuilder::new();
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
    let schema =
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(100), b BLOB, d DATETIME(6)) ENGINE=InnoDB";
    src.sql(&format!("CREATE DATABASE `{db}`"));
    src.sql_db(&db, schema);
    dst.sql(&format!("CREATE DATABASE `{db}`"));
    dst.sql_db(&db, schema);
    let start = src.sql("SELECT @@gtid_binlog_pos").trim().to_string();

    // Row events of every kind, multi-statement transactions, a DDL, binary data.
    src.sql_db(
        &db,
        "INSERT INTO t SELECT seq, CONCAT('row-', seq), UNHEX(SHA2(seq, 256)), '2026-01-02 03:04:05.123456' FROM seq_1_to_3000;\
         START TRANSACTION; UPDATE t SET v = CONCAT(v, '-upd') WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0; COMMIT;\
         ALTER TABLE t ADD COLUMN extra INT DEFAULT 5;\
         INSERT INTO t (id, v, b, d, extra) VALUES (100000, 'it''s \\\\ \"quoted\"', 0x00FF27, NULL, 9);",
    );
    for i in 0..50 {
        src.sql_db(
            &db,
            &format!("UPDATE t SET extra = {i} WHERE id = {}", i + 1),
        );
    }
    let end = src.sql("SELECT @@gtid_binlog_pos").trim().to_string();

    let segments = stream_segments(&src, &start, 64 << 10);
    assert!(segments.len() > 1, "several segments: {}", segments.len());
    let seq = |g: &str| g.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    // The first transaction after the start position, through the last one, contiguous.
    assert_eq!(
        seq(segments[0].first_gtid.as_deref().unwrap()),
        seq(&start) + 1
    );
    assert_eq!(
        segments.last().unwrap().last_gtid.as_deref(),
        Some(end.as_str())
    );
    // Contiguous: each segment starts with the sequence number after the previous end.
    for w in segments.windows(2) {
        assert_eq!(
            seq(w[1].first_gtid.as_deref().unwrap()),
            seq(w[0].last_gtid.as_deref().unwrap()) + 1
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    for (i, s) in segments.iter().enumerate() {
        let f = tmp.path().join(format!("seg{i:03}.bin"));
        std::fs::write(&f, &s.bytes).unwrap();
        // Stock mariadb-binlog reads it (checksums verified) and replays it.
        let o = std::process::Command::new("mariadb-binlog")
            .arg("--verify-binlog-checksum")
            .arg(&f)
            .output()
            .unwrap();
        ok(&o, &format!("mariadb-binlog {}", f.display()));
        let sql = tmp.path().join(format!("seg{i:03}.sql"));
        std::fs::write(&sql, &o.stdout).unwrap();
        let o = dst.load_file(None, &sql);
        ok(&o, &format!("replaying segment {i}"));
    }
    assert_same(&fingerprint(&src, &db), &fingerprint(&dst, &db));
    src.drop_db(&db);
    dst.drop_db(&db);
}
