//! `check-config`: the I/O checks that validation cannot do: secrets readable, DPO
//! certificates usable, signing key a usable secret key, store directories writable, the
//! policy within reach of the stores, and every source node: it logs in, finds the
//! included databases and the privileges the dump needs. Every problem is reported, not
//! just the first.

use crate::seal::crypto;
use backup_core::config::{Config, ConfigProblem, StoreKind};
use backup_core::secret::read_secret_file;

/// What check-config found: problems (config invalid), warnings (valid, but something
/// works less well than configured) and notes (facts worth printing).
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<ConfigProblem>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

pub fn check(cfg: &Config) -> CheckReport {
    let mut r = CheckReport::default();
    let file = cfg.file.as_path();
    if let Err(e) = cfg.require_backup_parts() {
        r.problems.extend(e.problems);
    }
    for s in &cfg.sources {
        if let Err(e) = read_secret_file(&s.password_file.path, &s.password_file.key) {
            r.problems
                .push(s.password_file.problem(file, e.to_string()));
        }
        if let Some(pf) = s
            .galera
            .as_ref()
            .and_then(|g| g.admin_password_file.as_ref())
        {
            if let Err(e) = read_secret_file(&pf.path, &pf.key) {
                r.problems.push(pf.problem(file, e.to_string()));
            }
        }
        if s.split.is_some() {
            r.notes.push(format!(
                "source {}: one backup per database (split = \"database\"), listed at every run: {}; each under {}/<database>, named {}/<database> in health, metrics and alerts",
                s.name,
                if s.include.is_empty() { "every database".to_string() } else { format!("databases matching {}", s.include.join(", ")) },
                s.prefix,
                s.name
            ));
        }
        if let Some(g) = &s.galera {
            r.notes.push(format!(
                "source {}: {} node(s); desync {}; cluster lease {} (agent name {:?})",
                s.name,
                s.nodes.len(),
                if g.desync { "on" } else { "off" },
                if g.lease {
                    format!(
                        "in {}.lease, TTL {}",
                        g.lease_database,
                        humantime::format_duration(g.lease_ttl)
                    )
                } else {
                    "off".into()
                },
                cfg.agent.name
            ));
        }
    }
    if let Some(enc) = &cfg.encryption {
        for cp in &enc.dpo_certificates {
            match crypto::check_dpo_certificates(cp) {
                Ok(certs) => {
                    for (_, info) in certs {
                        let exp = info
                            .expires_at
                            .map(|t| {
                                chrono::DateTime::<chrono::Utc>::from(t)
                                    .format("%Y-%m-%d")
                                    .to_string()
                            })
                            .unwrap_or_else(|| "never".into());
                        r.notes.push(format!(
                            "DPO certificate {} ({}): {} encryption subkey(s), expires {exp}",
                            info.fingerprint,
                            info.user_ids
                                .first()
                                .map(String::as_str)
                                .unwrap_or("no user id"),
                            info.encryption_subkeys.len()
                        ));
                    }
                }
                Err(e) => r
                    .problems
                    .push(cp.problem(file, strip_key(&e.to_string(), &cp.key))),
            }
        }
        for src in &cfg.sources {
            for (db, cp) in &src.tenant_certificates {
                match crypto::check_dpo_certificates(cp) {
                    Ok(certs) => {
                        for (_, info) in certs {
                            r.notes.push(format!(
                                "source {}: backups of {db} are also encrypted to tenant certificate {} ({})",
                                src.name,
                                info.fingerprint,
                                info.user_ids
                                    .first()
                                    .map(String::as_str)
                                    .unwrap_or("no user id"),
                            ));
                        }
                    }
                    Err(e) => r
                        .problems
                        .push(cp.problem(file, strip_key(&e.to_string(), &cp.key))),
                }
            }
        }
        match crypto::load_signing_key(
            &enc.signing_key_file,
            enc.signing_key_passphrase_file.as_ref(),
        ) {
            Ok(k) => r
                .notes
                .push(format!("agent signing key {}", k.fingerprint())),
            Err(e) => r.problems.push(
                enc.signing_key_file
                    .problem(file, strip_key(&e.to_string(), &enc.signing_key_file.key)),
            ),
        }
        for cp in &enc.peer_certificates {
            match backup_core::signature::Trust::read_file(&cp.path) {
                Ok(certs) => {
                    for c in certs {
                        r.notes.push(format!(
                            "peer agent certificate {} (its manifests are trusted)",
                            c.fingerprint().to_hex()
                        ));
                    }
                }
                Err(e) => r
                    .problems
                    .push(cp.problem(file, format!("{}: {e}", cp.path.display()))),
            }
        }
    }
    for p in policy_problems(cfg) {
        r.problems.push(backup_core::config::ConfigProblem {
            file: file.to_path_buf(),
            position: None,
            key: "policy".into(),
            message: p,
        });
    }
    for st in &cfg.stores {
        match &st.kind {
            StoreKind::Local { path } => {
                let p = &path.path;
                if let Err(e) = backup_core::store::open_store(st) {
                    // The same message `backup` gives.
                    r.problems.push(path.problem(file, e.to_string()));
                } else {
                    let probe = p.join(format!(".tmp-check-config.{}", std::process::id()));
                    match std::fs::write(&probe, b"") {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&probe);
                        }
                        Err(e) => r.problems.push(path.problem(
                            file,
                            format!("store {}: cannot write into {}: {e}", st.name, p.display()),
                        )),
                    }
                }
            }
            StoreKind::S3(s3) => {
                // Credentials readable, bucket reachable and listable.
                let problem = |m: String| backup_core::config::ConfigProblem {
                    file: file.to_path_buf(),
                    position: None,
                    key: format!("store {}", st.name),
                    message: m,
                };
                match backup_core::store::open_store(st) {
                    Err(e) => r.problems.push(problem(e.to_string())),
                    Ok(store) => match store.list_entries("") {
                        Ok(_) => r.notes.push(format!(
                            "store {}: bucket {} reachable{}",
                            st.name,
                            s3.bucket,
                            if s3.object_lock.is_some() {
                                " (object lock on upload)"
                            } else {
                                ""
                            }
                        )),
                        Err(e) => r.problems.push(problem(format!(
                            "{e}; check endpoint, bucket, region and credentials"
                        ))),
                    },
                }
            }
        }
    }
    r
}

/// Crypto errors start with "key: path: "; the problem line has its own key column.
fn strip_key(msg: &str, key: &str) -> String {
    msg.strip_prefix(&format!("{key}: "))
        .unwrap_or(msg)
        .to_string()
}

/// What of the [policy] the configured stores can never meet, however well they work.
fn policy_problems(cfg: &Config) -> Vec<String> {
    let p = &cfg.policy;
    let stores = cfg.stores.len();
    let media: std::collections::BTreeSet<&str> =
        cfg.stores.iter().map(|s| s.media.as_str()).collect();
    let offsite = cfg
        .stores
        .iter()
        .filter(|s| s.site != cfg.agent.site)
        .count();
    let locked = cfg
        .stores
        .iter()
        .filter(|s| matches!(&s.kind, StoreKind::S3(s3) if s3.object_lock.is_some()))
        .count();
    let mut v = Vec::new();
    let mut need = |what: &str, want: u32, have: usize, fix: &str| {
        if want as usize > have {
            v.push(format!(
                "policy asks for {want} {what}, the configured stores can give {have}; {fix}"
            ));
        }
    };
    need(
        "verified copies",
        p.copies,
        stores,
        "add a [[store]] or lower policy.copies",
    );
    need(
        "media kinds",
        p.media,
        media.len(),
        "add a store of another media or lower policy.media",
    );
    need(
        "offsite copies",
        p.offsite,
        offsite,
        "add a store whose site differs from agent.site, or lower policy.offsite",
    );
    need(
        "immutable copies",
        p.immutable,
        locked,
        "add an S3 store with object_lock_mode, or lower policy.immutable",
    );
    v
}

/// Privileges the dumper needs on every database it reads (globally or per database).
const DUMP_PRIVILEGES: [&str; 4] = ["SELECT", "SHOW VIEW", "TRIGGER", "EVENT"];

/// Logs in to every node of every source as the dump user: connection, the included
/// databases, and the privileges the dump needs. Problems and warnings name the source
/// and node.
pub async fn check_sources(cfg: &Config) -> CheckReport {
    let mut out = CheckReport::default();
    for src in &cfg.sources {
        let Ok(password) = read_secret_file(&src.password_file.path, &src.password_file.key) else {
            continue; // already a problem of check()
        };
        for node in &src.nodes {
            let problem = |m: String| ConfigProblem {
                file: cfg.file.clone(),
                position: None,
                key: format!("source {} node {}", src.name, node.name),
                message: m,
            };
            match crate::source::dump::connect(src, &node.endpoint, &password).await {
                Ok(mut conn) => {
                    let (problems, warnings) = node_problems(src, &mut conn).await;
                    out.problems.extend(problems.into_iter().map(problem));
                    out.warnings.extend(
                        warnings
                            .into_iter()
                            .map(|w| format!("source {} node {}: {w}", src.name, node.name)),
                    );
                    let _ = conn.disconnect().await;
                }
                Err(e) => out.problems.push(problem(e.to_string())),
            }
        }
    }
    out
}

/// The node's problems and warnings.
async fn node_problems(
    src: &backup_core::config::SourceConfig,
    conn: &mut mysql_async::Conn,
) -> (Vec<String>, Vec<String>) {
    use mysql_async::prelude::Queryable;
    let mut v = Vec::new();
    let dbs: Vec<String> = match conn.query("SHOW DATABASES").await {
        Ok(d) => d,
        Err(e) => return (vec![format!("cannot list databases: {e}")], vec![]),
    };
    for inc in src
        .include
        .iter()
        .filter(|i| !backup_core::config::split::is_pattern(i))
    {
        if !dbs.contains(inc) {
            v.push(format!(
                "database {inc:?} (databases.include) does not exist or the dump user {:?} cannot see it; create it or fix the list",
                src.user
            ));
        }
    }
    let grants: Vec<String> = match conn.query("SHOW GRANTS").await {
        Ok(g) => g,
        Err(e) => {
            return (
                vec![format!("cannot read the dump user's grants: {e}")],
                vec![],
            )
        }
    };
    if grants.iter().any(|g| !g.contains(" ON ")) {
        // Privileges through roles: not resolved here; the first backup will tell.
        return (v, vec![]);
    }
    let warnings = reader_warnings(src, conn, &grants).await;
    if src.binlog.is_some() {
        v.extend(binlog_problems(src, conn, &grants).await);
    }
    let selected: Vec<&String> = dbs.iter().filter(|d| src.selects(d)).collect();
    let missing = missing_privileges(&grants, &selected);
    if !missing.is_empty() {
        v.push(format!(
            "the dump user {:?} lacks {} on {}; run: GRANT {} ON *.* TO '{}'@'<host>'",
            src.user,
            missing.join(", "),
            if selected.is_empty() {
                "*.*".to_string()
            } else {
                "the dumped databases".to_string()
            },
            DUMP_PRIVILEGES.join(", "),
            src.user
        ));
    }
    (v, warnings)
}

/// Why a dump with `dump_connections` > 1 would read its large tables over one
/// connection on this node: the readers' snapshots start together only under BACKUP STAGE
/// BLOCK_COMMIT, which needs the RELOAD privilege and MariaDB 10.4 or later. Not a
/// problem (the backup is still whole and consistent, only slower), so a warning.
async fn reader_warnings(
    src: &backup_core::config::SourceConfig,
    conn: &mut mysql_async::Conn,
    grants: &[String],
) -> Vec<String> {
    use mysql_async::prelude::Queryable;
    if src.dump_connections < 2 {
        return vec![];
    }
    let mut w = Vec::new();
    if !global_privilege(grants, "RELOAD") {
        w.push(format!(
            "the dump user {:?} lacks RELOAD: large tables will be read over one connection, not dump_connections = {} (the readers' snapshots start together under BACKUP STAGE BLOCK_COMMIT, which needs RELOAD); run: GRANT RELOAD ON *.* TO '{}'@'<host>', or set dump_connections = 1",
            src.user, src.dump_connections, src.user
        ));
    }
    let version: Option<String> = conn.query_first("SELECT VERSION()").await.unwrap_or(None);
    if let Some(v) = version {
        let mut parts = v
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|x| x.parse::<u32>().ok());
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < (10, 4) {
            w.push(format!(
                "the server is {v}: BACKUP STAGE needs MariaDB 10.4 or later, so large tables will be read over one connection, not dump_connections = {}; set dump_connections = 1",
                src.dump_connections
            ));
        }
    }
    w
}

/// What `[source.binlog]` needs of the server: the binary log on, row format (so that
/// every change is attributed to its table's database on restore), GTIDs in strict
/// mode, the replication grant, and logs kept longer than an outage the archiver must
/// survive.
async fn binlog_problems(
    src: &backup_core::config::SourceConfig,
    conn: &mut mysql_async::Conn,
    grants: &[String],
) -> Vec<String> {
    use mysql_async::prelude::Queryable;
    let mut v = Vec::new();
    let row: Option<(String, String, u64)> = conn
        .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_expire_logs_seconds")
        .await
        .unwrap_or(None);
    let Some((log_bin, format, expire)) = row else {
        return vec!["cannot read the server's binary log settings".into()];
    };
    if log_bin != "1" {
        v.push("[source.binlog] needs the binary log: set log_bin (and server_id) in the server's configuration and restart it".into());
    }
    if !format.eq_ignore_ascii_case("ROW") {
        v.push(format!(
            "binlog_format is {format}; point-in-time restore of some databases needs ROW (a statement is attributed to its default database only): set binlog_format=ROW"
        ));
    }
    if expire != 0 && expire < 86_400 {
        v.push(format!(
            "binlog_expire_logs_seconds is {expire}: logs the agent has not fetched within that time are lost (a gap); keep them longer than the longest outage you want to survive (e.g. 604800, 7 days)"
        ));
    }
    let has = |p: &str| global_privilege(grants, p);
    if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
        v.push(format!(
            "the dump user {:?} lacks REPLICATION SLAVE, which binary log archiving needs; run: GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{}'@'<host>'",
            src.user, src.user
        ));
    }
    v.extend(crate::archive::galera_gtid_problems(conn).await);
    v
}

/// Whether a `GRANT ... ON *.*` line of SHOW GRANTS gives privilege `p` (or ALL).
fn global_privilege(grants: &[String], p: &str) -> bool {
    grants.iter().any(|g| {
        let u = g.to_ascii_uppercase();
        let Some((privs, after)) = u.strip_prefix("GRANT ").and_then(|r| r.split_once(" ON "))
        else {
            return false;
        };
        after.starts_with("*.* ")
            && (privs.contains("ALL PRIVILEGES") || privs.split(',').any(|x| x.trim() == p))
    })
}

/// The dump privileges that neither a global grant nor every selected database's grant
/// gives (from SHOW GRANTS lines).
fn missing_privileges(grants: &[String], dbs: &[&String]) -> Vec<&'static str> {
    let privs_on = |target: &str| -> Vec<String> {
        grants
            .iter()
            .filter_map(|g| {
                let rest = g.strip_prefix("GRANT ")?;
                let (privs, after) = rest.split_once(" ON ")?;
                let on = after.split(" TO ").next()?.trim();
                (on == target).then(|| privs.to_ascii_uppercase())
            })
            .collect()
    };
    let has = |list: &[String], p: &str| {
        list.iter()
            .any(|l| l.contains("ALL PRIVILEGES") || l.split(',').any(|x| x.trim() == p))
    };
    let global = privs_on("*.*");
    DUMP_PRIVILEGES
        .into_iter()
        .filter(|p| {
            !has(&global, p)
                && (dbs.is_empty()
                    || !dbs.iter().all(|d| {
                        let q = backup_core::format::quote_ident(d);
                        has(&privs_on(&format!("{q}.*")), p)
                    }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_privileges_from_show_grants() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (a, b) = ("a".to_string(), "b".to_string());
        let full = g(&["GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON *.* TO `u`@`%`"]);
        assert!(missing_privileges(&full, &[&a]).is_empty());
        let all = g(&["GRANT ALL PRIVILEGES ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*X'"]);
        assert!(missing_privileges(&all, &[&a]).is_empty());
        let no_view = g(&["GRANT SELECT, TRIGGER, EVENT ON *.* TO `u`@`%`"]);
        assert_eq!(missing_privileges(&no_view, &[&a]), vec!["SHOW VIEW"]);
        let per_db = g(&[
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `a`.* TO `u`@`%`",
        ]);
        assert!(missing_privileges(&per_db, &[&a]).is_empty());
        assert_eq!(missing_privileges(&per_db, &[&a, &b]).len(), 4);
    }

    #[test]
    fn global_privileges_from_show_grants() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let full = g(&[
            "GRANT SELECT, RELOAD, REPLICATION SLAVE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*X'",
        ]);
        for p in ["RELOAD", "REPLICATION SLAVE", "SELECT"] {
            assert!(global_privilege(&full, p), "{p}");
        }
        // Neither a prefix of another privilege nor a grant on one database counts.
        assert!(!global_privilege(&full, "REPLICATION"));
        assert!(!global_privilege(&full, "SLAVE"));
        let per_db = g(&[
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT RELOAD, SELECT ON `a`.* TO `u`@`%`",
        ]);
        assert!(!global_privilege(&per_db, "RELOAD"));
        let all = g(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]);
        assert!(global_privilege(&all, "RELOAD"));
        // A role's or a proxy's grant line is not a global privilege.
        let odd = g(&[
            "GRANT `backup_role` TO `u`@`%`",
            "GRANT PROXY ON ''@'%' TO 'u'@'%'",
        ]);
        assert!(!global_privilege(&odd, "RELOAD"));
    }
}
