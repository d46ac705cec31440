//! The log drill (`restore --verify --pitr`): the second-newest backup plus the archived
//! binary log up to the newest backup's snapshot must equal the newest backup, table by
//! table. It passes on a good chain, and fails, naming the table, when a segment was
//! replaced by a validly signed one with one event dropped; it is recorded and alerted
//! like the plain drill, and the healthcheck asks for it.

mod common;

use std::time::Duration;

use common::daemon::healthcheck;
use common::pitr::*;
use common::receivers::{Mode, Receiver};
use common::*;

fn log_drill(
    setup: &Setup,
    src: &Server,
    dst: &Server,
) -> (std::process::Output, serde_json::Value) {
    let mut args: Vec<String> = vec![
        "--verify".into(),
        "--pitr".into(),
        "--json".into(),
        "--config".into(),
        setup.config(src).display().to_string(),
    ];
    args.extend(scratch_args(dst, &setup.path("scratch.pw")));
    args.extend(key_args());
    let o = restore(&args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

fn backup_ids(setup: &Setup) -> Vec<String> {
    let mut ids: Vec<String> = setup
        .store_files()
        .iter()
        .filter_map(|f| f.strip_suffix(".manifest.json"))
        .filter(|f| !f.contains("binlog"))
        .map(|f| f.rsplit('/').next().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The binary log file without one event: the rows event of the first row change of
/// `table` (the one after its table map event); every other byte, checksums included, as
/// it was.
fn drop_first_rows_of(binlog: &[u8], table: &[u8]) -> Option<Vec<u8>> {
    let mut out = binlog[..4].to_vec();
    let mut at = 4;
    let mut dropped = false;
    while at + 19 <= binlog.len() {
        let size = u32::from_le_bytes(binlog[at + 9..at + 13].try_into().unwrap()) as usize;
        let kind = binlog[at + 4];
        let body = &binlog[at + 19..at + size];
        // TABLE_MAP: table id (6), flags (2), db length, db, NUL, table length, table.
        let is_map_of = kind == 19 && {
            let db_len = body[8] as usize;
            let t = 8 + 1 + db_len + 1;
            let t_len = body[t] as usize;
            &body[t + 1..t + 1 + t_len] == table
        };
        if is_map_of && !dropped {
            out.extend_from_slice(&binlog[at..at + size]);
            let next = at + size;
            let next_size =
                u32::from_le_bytes(binlog[next + 9..next + 13].try_into().unwrap()) as usize;
            at = next + next_size;
            dropped = true;
            continue;
        }
        out.extend_from_slice(&binlog[at..at + size]);
        at += size;
    }
    dropped.then_some(out)
}

#[test]
fn the_log_drill_proves_the_chain_between_two_backups_and_names_the_table_a_forged_segment_breaks()
{
    let src = source();
    let dst = target();
    let db = pitr_db(&src, &dst, "ldrill");
    src.sql_db(
        &db,
        "INSERT INTO t1 SELECT seq, CONCAT('seed-', seq), seq FROM seq_1_to_100",
    );
    let mut setup = Setup::new(&src, &db);
    grant_streaming(&src, &setup);
    let hook = Receiver::start(Mode::Ok);
    setup.webhook_to(&hook);
    setup.agent_extra = "drill_max_age = \"30d\"\n".into();
    setup.extra = "[source.binlog]\nmax_lag = \"30d\"\n".into();
    ok(&setup.agent(&src, &["backup"]), "backup 1");
    ok(&setup.agent(&src, &["archive-binlog"]), "archive-binlog");
    write_some(&src, &db, 1, 12);
    ok(&setup.agent(&src, &["archive-binlog"]), "archive-binlog");
    std::thread::sleep(Duration::from_millis(1100));
    ok(&setup.agent(&src, &["backup"]), "backup 2");
    write_some(&src, &db, 2, 4);
    ok(&setup.agent(&src, &["archive-binlog"]), "archive-binlog");
    let ids = backup_ids(&setup);
    assert_eq!(ids.len(), 2, "{ids:?}");

    // Asked for before it ever ran.
    let (_, line) = healthcheck(&setup, &src);
    assert!(line.contains("no log drill (PITR) on record"), "{line}");

    let (o, r) = log_drill(&setup, &src, &dst);
    assert_eq!(o.status.code(), Some(0), "{r:#} {}", stderr(&o));
    assert_eq!(r["pitr"], true);
    assert_eq!(r["base_backup_id"], ids[0].as_str());
    assert_eq!(r["backup_id"], ids[1].as_str());
    assert_eq!(r["tables_compared"], 2, "{r:#}");
    assert!(r["segments"].as_u64().unwrap() >= 1, "{r:#}");
    let applied = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "binary log")
        .expect("the binary log check");
    assert_eq!(applied["ok"], true, "{r:#}");
    let to_apply: u64 = applied["detail"]
        .as_str()
        .unwrap()
        .split("; ")
        .last()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the number of transactions to apply");
    // write_some's 12 transactions; the 3 DELETE/UPDATE ones on t2 log nothing when they
    // match no row (an empty transaction is not logged).
    assert!(
        (9..=12).contains(&to_apply),
        "the transactions between the two backups: {r:#}"
    );
    assert!(
        !dst.databases().contains(&db),
        "the scratch server is cleaned"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.path("state/pitr-drill.json")).unwrap())
            .unwrap();
    assert_eq!(rec["success"], true);
    assert_eq!(rec["pitr"], true);
    let (_, line) = healthcheck(&setup, &src);
    assert!(!line.contains("log drill"), "{line}");
    let passed = hook.wait_event("drill_succeeded", Duration::from_secs(10));
    assert_eq!(passed["details"]["pitr"], true, "{passed:#}");

    // A segment replaced by a validly signed one with one event dropped (a row change: a
    // bug, or an attacker with the agent's key): every check of the bytes passes, the data
    // does not.
    let g = Gpg::new();
    g.import(&testdata("dpo.sec.asc"));
    g.import(&testdata("agent.pub.asc"));
    let keys = agent_sealing_keys();
    let mut forged = false;
    for (data, m) in chain(&setup.store()) {
        let plain_gz = setup.path("segment.gz");
        let _ = std::fs::remove_file(&plain_gz);
        ok(
            &g.cmd()
                .arg("--output")
                .arg(&plain_gz)
                .arg("--decrypt")
                .arg(&data)
                .output()
                .unwrap(),
            "gpg --decrypt",
        );
        let mut binlog = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&plain_gz).unwrap()),
            &mut binlog,
        )
        .unwrap();
        let Some(fewer) = drop_first_rows_of(&binlog, b"t2") else {
            continue;
        };
        let sealed = backup_agent::archive::seal_bytes(&keys, 6, &fewer).unwrap();
        let sum = backup_core::checksum::hash_stream(&sealed[..]).unwrap();
        std::fs::write(&data, &sealed).unwrap();
        let name = data.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(
            format!("{}.sha256", data.display()),
            backup_core::checksum::sha256_line(&sum.sha256, &name),
        )
        .unwrap();
        let mut m = m.clone();
        m["data"]["size"] = sum.size.into();
        m["data"]["sha256"] = sum.sha256.clone().into();
        m["binlog_bytes"] = (fewer.len() as u64).into();
        let id = m["segment_id"].as_str().unwrap().to_string();
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        std::fs::write(data.with_file_name(format!("{id}.manifest.json")), &bytes).unwrap();
        std::fs::write(
            data.with_file_name(format!("{id}.manifest.json.sig")),
            keys.sign_detached(&bytes).unwrap(),
        )
        .unwrap();
        forged = true;
        break;
    }
    assert!(forged, "a segment with a row change of t2");
    let (o, r) = log_drill(&setup, &src, &dst);
    assert_eq!(o.status.code(), Some(1), "{r:#} {}", stderr(&o));
    assert_eq!(r["success"], false);
    let mismatches = r["mismatches"].to_string();
    assert!(
        mismatches.contains(&format!("table {db}.t2")) && !mismatches.contains(".t1"),
        "names the table the dropped event changed, and only it: {r:#}"
    );
    let failed = hook.wait_event("drill_failed", Duration::from_secs(10));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("log drill (PITR)"),
        "{failed:#}"
    );
    let (code, line) = healthcheck(&setup, &src);
    assert_eq!(code, 1, "CRITICAL: {line}");
    assert!(line.contains("the last log drill (PITR) failed"), "{line}");
    dst.drop_db(&db);
    src.drop_db(&db);
}
