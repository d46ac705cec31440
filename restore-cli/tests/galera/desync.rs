//! Desync: on for the dump, off on every way out, and the alert while it cannot be turned off.

use super::*;

#[test]
fn desync_is_on_for_the_dump_and_off_after_success_failure_and_sigkill() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let mut s = n1_setup(&c, &db, "rate_limit = \"256KiB\"", "");
    let (admin, admin_pw) = desync_admin(&c, &s);
    // The dump account itself cannot desync: SUPER is missing, and the message says so.
    s.extra = s.extra.replace(
        "[source.galera]\n",
        &format!("[source.galera]\ndesync = true\nlease = false\nadmin_user = \"{}\"\nadmin_password_file = {:?}\n", s.dump_user, s.path("db.password")),
    );
    let (o, _) = backup(&s, &c, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("SUPER"), "{}", stderr(&o));
    assert_eq!(c.desync_flag(1), "0");
    assert!(markers(&s).is_empty(), "{:?}", markers(&s));
    s.extra = s.extra.replace(
        &format!("admin_user = \"{}\"", s.dump_user),
        &format!("admin_user = \"{admin}\""),
    );
    s.extra = s.extra.replace(
        &format!("{:?}", s.path("db.password")),
        &format!("{admin_pw:?}"),
    );

    // Success: Donor/Desynced during the dump (with a marker), OFF right after.
    let mut child = spawn_agent(&s, &c, &["backup"], "ok");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    assert_eq!(c.desync_flag(1), "1");
    assert_eq!(markers(&s).len(), 1, "a marker while desynced");
    // The other nodes stay Synced and take writes.
    assert_eq!(c.status(2, "wsrep_local_state_comment"), "Synced");
    c.node(2).sql_db(
        &db,
        "INSERT INTO filler VALUES (999999, 'written while n1 was desynced')",
    );
    let st = wait_child(&mut child, Duration::from_secs(60));
    assert!(st.success(), "{}", read_log(&s, "ok"));
    assert_eq!(c.desync_flag(1), "0", "desync left on after success");
    assert!(markers(&s).is_empty());
    let m = manifests(&s.store()).pop().unwrap();
    assert_eq!(m["galera"]["desynced"], true);
    assert_eq!(m["galera"]["node"], "n1");

    // Failure: the dump's connection is killed on the server mid-dump.
    let before = manifests(&s.store()).len();
    let mut child = spawn_agent(&s, &c, &["backup"], "fail");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_millis(500));
    let ids = c.node(1).sql(&format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{}'",
        s.dump_user
    ));
    assert!(!ids.trim().is_empty(), "the dump connection");
    for id in ids.lines() {
        let _ = c
            .node(1)
            .client()
            .arg("-e")
            .arg(format!("KILL {id}"))
            .output();
    }
    let st = wait_child(&mut child, Duration::from_secs(60));
    assert_eq!(st.code(), Some(1), "{}", read_log(&s, "fail"));
    assert!(
        read_log(&s, "fail").contains("the dump from node n1"),
        "{}",
        read_log(&s, "fail")
    );
    assert_eq!(c.desync_flag(1), "0", "desync left on after a failed dump");
    assert!(markers(&s).is_empty());
    assert_eq!(manifests(&s.store()).len(), before);

    // SIGKILL mid-dump: the desync stays (nobody could turn it off), the marker says where.
    let mut child = spawn_agent(&s, &c, &["backup"], "killed");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(c.desync_flag(1), "1");
    assert_eq!(markers(&s).len(), 1);
    // The next start turns it off first.
    let http = free_port();
    s.agent_extra
        .push_str(&format!("http_bind = \"127.0.0.1:{http}\"\n"));
    s.extra = s.extra.replacen(
        "connect_timeout_secs",
        "schedule = \"0 0 1 1 *\"\nconnect_timeout_secs",
        1,
    );
    let mut daemon = spawn_agent(&s, &c, &["run"], "daemon");
    wait_for(
        "the restarted agent to turn the desync off",
        Duration::from_secs(20),
        || c.desync_flag(1) == "0",
    );
    wait_for("the marker to go", Duration::from_secs(5), || {
        markers(&s).is_empty()
    });
    // The line follows the flag and the marker; a TERM sent before the daemon has set up
    // its signal handling would end it before it writes the line.
    wait_for(
        "the daemon to log that it cleared the desync",
        Duration::from_secs(10),
        || read_log(&s, "daemon").contains("desync_cleared_at_start"),
    );
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    wait_child(&mut daemon, Duration::from_secs(20));
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Synced",
        Duration::from_secs(10),
    );
    c.node(1).drop_db(&db);
}

#[test]
fn a_cancelled_run_turns_the_desync_off() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let (mut s, _) = n1_desync_setup(
        &c,
        &db,
        "rate_limit = \"128KiB\"\nschedule = \"*/2 * * * * *\"",
    );
    s.agent_extra
        .push_str(&format!("http_bind = \"127.0.0.1:{}\"\n", free_port()));
    let mut d = spawn_agent(&s, &c, &["run", "--shutdown-timeout", "1h"], "daemon");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(20),
    );
    // First signal: drain (the running backup may finish); second: cancel it now.
    for _ in 0..2 {
        Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = wait_child(&mut d, Duration::from_secs(30));
    let log = read_log(&s, "daemon");
    assert!(st.success(), "{log}");
    assert!(log.contains("backup_cancelled"), "{log}");
    assert_eq!(
        c.desync_flag(1),
        "0",
        "desync left on by a cancelled run: {log}"
    );
    assert!(markers(&s).is_empty());
    assert!(manifests(&s.store()).is_empty(), "{:?}", s.store_files());
    c.node(1).drop_db(&db);
}

/// The admin account stops working during the dump (its password changed on the server):
/// the backup itself is good, but wsrep_desync stays ON. The agent says so (`desync_stuck`
/// naming the node, the marker kept), and once the account works again the next run turns
/// it off at its start and sends `recovered`.
#[test]
fn a_desync_that_cannot_be_turned_off_alerts_until_a_later_run_clears_it() {
    let c = cluster();
    let db = filler_db(&c, 2000);
    let hook = Receiver::start(Mode::Ok);
    let (mut s, admin) = n1_desync_setup(&c, &db, "rate_limit = \"256KiB\"");
    webhook(&mut s, &hook);
    let set_admin_password = |pw: &str| {
        for host in ["127.0.0.1", "localhost"] {
            c.node(1).sql(&format!(
                "ALTER USER '{admin}'@'{host}' IDENTIFIED BY '{pw}'"
            ));
        }
    };

    let mut child = spawn_agent(&s, &c, &["backup"], "stuck");
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Donor/Desynced",
        Duration::from_secs(15),
    );
    set_admin_password("changed-meanwhile");
    let st = wait_child(&mut child, Duration::from_secs(60));
    let log = read_log(&s, "stuck");
    // The backup is complete and verified: it counts as made.
    assert!(st.success(), "{log}");
    assert_eq!(manifests(&s.store()).len(), 1, "{log}");
    assert!(log.contains("desync_off_failed"), "{log}");
    assert_eq!(c.desync_flag(1), "1", "the OFF should have failed: {log}");
    assert_eq!(markers(&s).len(), 1, "the marker stays: {log}");
    let a = hook.wait_event("desync_stuck", Duration::from_secs(5));
    assert_eq!(a["status"], "error", "{a}");
    let msg = a["message"].as_str().unwrap();
    assert!(
        msg.contains("wsrep_desync is still ON on n1 (127.0.0.1:")
            && msg.contains("SET GLOBAL wsrep_desync=OFF"),
        "{a}"
    );
    assert_eq!(a["details"]["nodes"][0]["node"], "n1", "{a}");
    assert!(
        !hook.bodies().iter().any(|b| b["event"] == "backup_failed"),
        "the backup itself did not fail: {:?}",
        hook.bodies()
    );

    // The account works again: the next run turns the desync off before anything else,
    // backs up, and the condition clears.
    set_admin_password("adm-pw");
    let (o, node) = backup(&s, &c, &[]);
    ok(&o, "backup after the admin account was fixed");
    assert!(node.is_some(), "{}", text(&o));
    assert!(text(&o).contains("desync_cleared"), "{}", text(&o));
    assert_eq!(c.desync_flag(1), "0");
    assert!(markers(&s).is_empty(), "{:?}", markers(&s));
    wait_for("the recovered alert", Duration::from_secs(5), || {
        hook.bodies().iter().any(|b| {
            b["event"] == "recovered" && b["message"].as_str().unwrap_or("").contains("desync")
        })
    });
    assert_eq!(
        hook.bodies()
            .iter()
            .filter(|b| b["event"] == "desync_stuck")
            .count(),
        1,
        "{:?}",
        hook.bodies()
    );
    c.node(1).drop_db(&db);
}

/// The databases of a split source dumped from n1 at once, both desynced: n1 stays
/// eligible for the second (that desync is this agent's own, not someone else's) and
/// stays desynced until the last of them is done; the budget per server counts each
/// backup's dump and desync connections.
#[test]
fn units_of_a_split_source_share_their_nodes_desync_and_count_its_connection() {
    let c = cluster();
    let p = unique("gsp");
    let (a, b) = (format!("{p}_a"), format!("{p}_b"));
    c.node(1).fresh_dbs(
        &[&a, &b],
        "CREATE TABLE filler (id INT PRIMARY KEY, pad VARCHAR(600)); \
         INSERT INTO filler SELECT seq, REPEAT(SHA2(seq, 256), 8) FROM seq_1_to_1500",
    );
    let (mut s, _) = n1_desync_setup(
        &c,
        &format!("{p}_*"),
        "split = \"database\"\nrate_limit = \"256KiB\"",
    );
    let base = s.agent_extra.clone();
    let run = |s: &mut Setup, agent: &str| -> String {
        s.agent_extra = format!("{base}max_concurrent_backups = 2\n{agent}");
        std::thread::sleep(Duration::from_millis(1100));
        let o = s.agent(c.node(1), &["backup"]);
        assert!(o.status.success(), "{}", text(&o));
        stderr(&o)
    };
    let lines = |log: &str, what: &str| -> Vec<usize> {
        log.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(what))
            .map(|(i, _)| i)
            .collect()
    };
    // Two connections a backup (dump, desync): a budget of 3 runs them one after the other.
    let log = run(&mut s, "max_connections_per_server = 3\n");
    let (started, done) = (
        lines(&log, "\"backup_started\""),
        lines(&log, "\"backup_succeeded\""),
    );
    assert_eq!((started.len(), done.len()), (2, 2), "{log}");
    assert!(done[0] < started[1], "serial expected:\n{log}");
    assert_eq!(c.desync_flag(1), "0");

    // A budget of 4: both at once, both from n1; the first done keeps the desync for the
    // other, which turns it off.
    let log = run(&mut s, "max_connections_per_server = 4\n");
    let (started, done) = (
        lines(&log, "\"backup_started\""),
        lines(&log, "\"backup_succeeded\""),
    );
    assert_eq!((started.len(), done.len()), (2, 2), "{log}");
    assert!(started[1] < done[0], "concurrent expected:\n{log}");
    let (kept, off) = (
        lines(&log, "\"desync_kept\""),
        lines(&log, "\"desync_off\""),
    );
    assert_eq!((kept.len(), off.len()), (1, 1), "{log}");
    assert!(kept[0] < off[0], "{log}");
    assert_eq!(c.desync_flag(1), "0", "desync left on");
    assert!(markers(&s).is_empty(), "{:?}", markers(&s));
    for db in [&a, &b] {
        let dir = s
            .store()
            .join("main")
            .join(backup_core::config::split::db_dir(db));
        let mut nodes: Vec<(String, bool)> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
            .map(|p| {
                let m: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                (
                    m["galera"]["node"].as_str().unwrap_or("").to_string(),
                    m["galera"]["desynced"] == true,
                )
            })
            .collect();
        nodes.sort();
        assert_eq!(
            nodes,
            vec![("n1".to_string(), true), ("n1".to_string(), true)],
            "{db}: every backup from n1, desynced\n{log}"
        );
    }
    c.wait_status(
        1,
        "wsrep_local_state_comment",
        "Synced",
        Duration::from_secs(10),
    );
    c.drop_everywhere(&a);
    c.drop_everywhere(&b);
}
