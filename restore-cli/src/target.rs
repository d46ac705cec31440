//! Restore targets: `mysql://user@host:port/` or `mysql://user@localhost/?socket=PATH`.
//! The password never comes from the URL.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use backup_core::format::grants::Account;
use mysql_async::{Conn, OptsBuilder};
use std::collections::HashSet;

use backup_core::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub socket: Option<PathBuf>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.socket {
            Some(s) => write!(f, "mysql://{}@localhost/?socket={}", self.user, s.display()),
            None => write!(f, "mysql://{}@{}:{}/", self.user, self.host, self.port),
        }
    }
}

pub fn parse(s: &str) -> Result<Target> {
    let u = url::Url::parse(s)
        .with_context(|| format!("target {s:?} is not a URL; expected mysql://user@host:port/"))?;
    if u.scheme() != "mysql" && u.scheme() != "mariadb" {
        bail!("target must start with mysql:// (got {}://)", u.scheme());
    }
    if u.password().is_some() {
        // Do not echo the URL: it holds a password.
        bail!("the target URL must not contain a password; use --password-file, the config, or the prompt");
    }
    let user = percent(u.username());
    if user.is_empty() {
        bail!("the target URL needs a user: mysql://USER@host:port/");
    }
    if !(u.path().is_empty() || u.path() == "/") {
        bail!("the target URL must not name a database (got path {:?}); use --database to choose what to restore", u.path());
    }
    let mut socket = None;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "socket" => socket = Some(PathBuf::from(v.as_ref())),
            other => bail!("unknown target URL parameter {other:?}; only socket=PATH is accepted"),
        }
    }
    Ok(Target {
        user,
        host: u.host_str().unwrap_or("localhost").to_string(),
        port: u.port().unwrap_or(3306),
        socket,
    })
}

fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub async fn connect(t: &Target, password: Option<&Secret>) -> Result<Conn> {
    let mut b = OptsBuilder::default()
        .user(Some(t.user.clone()))
        .pass(password.map(|p| p.expose().to_string()))
        .stmt_cache_size(0)
        .prefer_socket(false);
    match &t.socket {
        Some(s) => b = b.socket(Some(s.display().to_string())),
        None => b = b.ip_or_hostname(t.host.clone()).tcp_port(t.port),
    }
    let conn = tokio::time::timeout(std::time::Duration::from_secs(15), Conn::new(b))
        .await
        .with_context(|| format!("cannot connect to {t}: no answer within 15s"))?
        .with_context(|| {
            format!("cannot connect to {t}; check the server runs and the user and password")
        })?;
    Ok(conn)
}

/// The row connections of a replay with `jobs` of them (none for one job: the replay's
/// own connection loads the rows then).
pub async fn connect_rows(t: &Target, password: Option<&Secret>, jobs: u16) -> Result<Vec<Conn>> {
    let mut rows = Vec::new();
    if jobs > 1 {
        for _ in 0..jobs {
            rows.push(connect(t, password).await?);
        }
    }
    Ok(rows)
}

/// Of the accounts and roles a dump creates, those that already exist on a server.
pub async fn existing_accounts(
    conn: &mut Conn,
    t: &Target,
    dumped: &[Account],
) -> Result<HashSet<Account>> {
    if dumped.is_empty() {
        return Ok(HashSet::new());
    }
    let on_server = accounts_on(conn, t).await?;
    Ok(dumped
        .iter()
        .filter(|a| on_server.contains(a))
        .cloned()
        .collect())
}

/// Every account and role of a server (needs SELECT on mysql.user).
pub async fn accounts_on(conn: &mut Conn, t: &Target) -> Result<HashSet<Account>> {
    use mysql_async::prelude::Queryable;
    let rows: Vec<(String, String, String)> = conn
        .query("SELECT User, Host, is_role FROM mysql.user")
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the accounts of {t} ({e}); restoring the backup's accounts needs SELECT on mysql.user, or leave out --accounts"))?;
    Ok(rows
        .into_iter()
        .map(|(user, host, role)| Account {
            user,
            host: (role != "Y").then_some(host),
        })
        .collect())
}

/// The privileges each database lacks, of `needed`, by what `grants` (SHOW GRANTS of the
/// restoring user) give: global grants and database grants (their `LIKE` patterns) count;
/// None when it cannot be told (privileges through a role, an unreadable grant).
pub fn lacking(
    grants: &[String],
    dbs: &[String],
    needed: &[&str],
) -> Option<Vec<(String, Vec<String>)>> {
    use backup_core::format::grants::{db_pattern_matches, grant_object, GrantObject};
    let mut global: Vec<String> = Vec::new();
    let mut per_db: Vec<(String, Vec<String>)> = Vec::new();
    for g in grants {
        let Some(rest) = g.strip_prefix("GRANT ") else {
            continue;
        };
        let object = grant_object(g);
        if matches!(object, GrantObject::Role(_)) {
            return None;
        }
        let privs: Vec<String> = match rest.find(" ON ") {
            Some(i) => rest[..i]
                .split(',')
                .map(|p| {
                    // `SELECT (a, b)` column grants: the privilege's name.
                    p.split('(')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_uppercase()
                })
                .collect(),
            None => continue,
        };
        match object {
            GrantObject::Global => global.extend(privs),
            GrantObject::Database(pattern) => per_db.push((pattern, privs)),
            _ => {}
        }
    }
    let has = |list: &[String], p: &str| {
        list.iter()
            .any(|x| x == p || x == "ALL PRIVILEGES" || x == "ALL")
    };
    let mut out = Vec::new();
    for db in dbs {
        let missing: Vec<String> = needed
            .iter()
            .filter(|p| {
                !has(&global, p)
                    && !per_db
                        .iter()
                        .any(|(pat, privs)| db_pattern_matches(pat, db) && has(privs, p))
            })
            .map(|p| p.to_string())
            .collect();
        if !missing.is_empty() {
            out.push((db.clone(), missing));
        }
    }
    Some(out)
}

/// Refuses a restoring user that lacks privileges the restore needs on the databases it
/// creates: one line naming what is missing where, and the GRANT that fixes it.
pub async fn check_privileges(
    conn: &mut Conn,
    t: &Target,
    dbs: &[String],
    needed: &[&str],
    when: &str,
) -> Result<()> {
    use mysql_async::prelude::Queryable;
    if needed.is_empty() || dbs.is_empty() {
        return Ok(());
    }
    let grants: Vec<String> = match conn.query("SHOW GRANTS").await {
        Ok(g) => g,
        // Not ours to decide: the restore itself will tell.
        Err(_) => return Ok(()),
    };
    let Some(lack) = lacking(&grants, dbs, needed) else {
        return Ok(());
    };
    if lack.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = lack
        .iter()
        .map(|(db, p)| {
            format!(
                "{} on {}",
                p.join(", "),
                backup_core::format::quote_ident(db)
            )
        })
        .collect();
    let all: std::collections::BTreeSet<&String> = lack.iter().flat_map(|(_, p)| p).collect();
    let fix = if lack.len() == 1 {
        format!("{}.*", backup_core::format::quote_ident(&lack[0].0))
    } else {
        "each of them".to_string()
    };
    bail!(
        "the restoring user {} on {t} lacks {}; grant them (GRANT {} ON {fix} TO ...) or restore as another user ({when})",
        t.user,
        what.join("; "),
        all.into_iter().cloned().collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_grants_lack() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dbs = vec!["shop".to_string(), "crm".to_string()];
        let need = ["CREATE", "INSERT", "TRIGGER"];
        assert_eq!(
            lacking(
                &g(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]),
                &dbs,
                &need
            ),
            Some(vec![])
        );
        assert_eq!(
            lacking(
                &g(&[
                    "GRANT USAGE ON *.* TO `r`@`%` IDENTIFIED BY PASSWORD '*AB'",
                    "GRANT SELECT, INSERT, CREATE ON `shop`.* TO `r`@`%`",
                    "GRANT ALL PRIVILEGES ON `cr\\_%`.* TO `r`@`%`",
                    "GRANT SELECT (`a`), INSERT (`a`) ON `shop`.`t` TO `r`@`%`",
                ]),
                &dbs,
                &need
            ),
            Some(vec![
                ("shop".to_string(), vec!["TRIGGER".to_string()]),
                (
                    "crm".to_string(),
                    vec![
                        "CREATE".to_string(),
                        "INSERT".to_string(),
                        "TRIGGER".to_string()
                    ]
                ),
            ])
        );
        assert_eq!(
            lacking(
                &g(&[
                    "GRANT INSERT, CREATE, TRIGGER ON *.* TO `r`@`%`",
                    "GRANT SELECT ON `crm`.* TO `r`@`%`"
                ]),
                &dbs,
                &need
            ),
            Some(vec![])
        );
        assert_eq!(
            lacking(&g(&["GRANT `app_role` TO `r`@`%`"]), &dbs, &need),
            None
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse("mysql://root@127.0.0.1:3307/").unwrap(),
            Target {
                user: "root".into(),
                host: "127.0.0.1".into(),
                port: 3307,
                socket: None
            }
        );
        let t = parse("mysql://admin@localhost/?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(t.socket, Some(PathBuf::from("/run/mysqld/mysqld.sock")));
        let e = parse("mysql://root:hunter2@h/").unwrap_err().to_string();
        assert!(e.contains("password") && !e.contains("hunter2"), "{e}");
        assert!(parse("http://x@h/").is_err());
        assert!(parse("mysql://h/").is_err());
        assert!(parse("mysql://u@h/db").is_err());
    }
}
