//! Users, roles and grants, dumped as CREATE USER / GRANT statements (never as rows of
//! mysql.* tables), with grants on objects outside the dump left out.
//!
//! A dump of every database carries every account of the server (but the system ones). A
//! dump of some databases (a tenant's) carries only the accounts and roles that hold
//! privileges on those databases, directly or through a role (not by administering it:
//! MariaDB makes a role's creator its admin), and of their grants only
//! those on these databases and the role grants among them: never another account, a
//! global privilege, a grant on another database, or a PROXY grant. A database grant whose
//! name is a pattern counts only if it matches no database outside the dump.

use std::collections::{BTreeSet, HashSet};

use mysql_async::Conn;

use backup_core::format::columns::text;
use backup_core::format::grants::{db_pattern_matches, grant_object, grantee, take_ident};
pub(super) use backup_core::format::grants::{Account, GrantObject};
use backup_core::format::USERS_SECTION;

use super::output::SqlOutput;
use super::session::{bytes, fetch};
use super::DumpError;

/// Accounts that belong to the server, not to the data: never dumped.
fn is_system_account(user: &str, host: &str) -> bool {
    matches!(user, "root" | "mariadb.sys" | "mysql" | "PUBLIC" | "")
        || (user == "mariadb.sys" && host == "localhost")
}

/// Which accounts a dump carries.
pub(super) enum Scope {
    /// The dump holds every database: every account but the system ones.
    Server,
    /// The dump holds some databases: only what concerns them.
    Databases {
        dumped: HashSet<String>,
        /// The server's other databases (those a grant pattern must not match).
        others: Vec<String>,
    },
}

impl Scope {
    /// Whether a grant on this object gives privileges on the dumped databases only.
    fn concerns(&self, obj: &GrantObject) -> bool {
        let Scope::Databases { dumped, others } = self else {
            return true;
        };
        // Global, PROXY and anything else give privileges beyond these databases.
        match obj {
            GrantObject::Database(p) => {
                dumped.iter().any(|d| db_pattern_matches(p, d))
                    && !others.iter().any(|d| db_pattern_matches(p, d))
            }
            GrantObject::Relation(d, _) | GrantObject::Routine(d, _) => dumped.contains(d),
            _ => false,
        }
    }
}

/// Accounts and roles read before the databases are dumped.
pub(super) struct Accounts {
    /// CREATE USER / CREATE ROLE statements: written first, so that every DEFINER exists
    /// before the views, routines, triggers and events that name it are created.
    creates: Vec<Vec<u8>>,
    /// SHOW GRANTS output: written last, once the objects they name exist.
    grants: Vec<Vec<u8>>,
}

/// Server errors that mean an account disappeared while the dump read it.
fn account_vanished(e: &DumpError) -> bool {
    // 1133 no such user, 1141 no such grant, 1449 definer does not exist, 1959 invalid role.
    matches!(e, DumpError::Server { source: mysql_async::Error::Server(se), .. } if matches!(se.code, 1133 | 1141 | 1449 | 1959))
}

/// The role a `SET DEFAULT ROLE `r` FOR ...` statement names.
fn default_role(stmt: &str) -> Option<String> {
    stmt.strip_prefix("SET DEFAULT ROLE ")
        .and_then(take_ident)
        .map(|(r, _)| r)
}

/// Accounts are not transactional: one created or dropped while the dump reads them must
/// not fail the backup or produce statements that do not load. An account that vanished
/// between the listing and its SHOW statements is skipped; a role grant naming a role that
/// is not in the listing is left out.
pub(super) async fn read_accounts(conn: &mut Conn, scope: &Scope) -> Result<Accounts, DumpError> {
    let users = fetch(
        conn,
        "SELECT User, Host, is_role FROM mysql.user ORDER BY User, Host",
        "listing users (grant the dump user SELECT on mysql.user, or set users_and_grants = false)",
    )
    .await?;
    let roles: HashSet<String> = users
        .iter()
        .filter(|u| text(&u[2]) == "Y")
        .map(|u| text(&u[0]))
        .collect();
    // Every account's grants, each statement once (SHOW GRANTS of a role repeats the
    // grants of the roles granted to it).
    let mut listed = Vec::new();
    let mut grants: Vec<String> = Vec::new();
    let mut seen_grants = HashSet::new();
    let mut seen = HashSet::new();
    for u in &users {
        let (user, host, is_role) = (text(&u[0]), text(&u[1]), text(&u[2]) == "Y");
        if is_system_account(&user, &host) || !seen.insert((user.clone(), host.clone())) {
            continue;
        }
        let account = Account {
            host: (!is_role).then_some(host),
            user,
        };
        let g = match fetch(
            conn,
            &format!("SHOW GRANTS FOR {account}"),
            &format!("reading grants of {account}"),
        )
        .await
        {
            Ok(g) => g,
            Err(e) if account_vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        for r in &g {
            let stmt = String::from_utf8_lossy(&bytes(&r[0])).into_owned();
            if let GrantObject::Role(role) = grant_object(&stmt) {
                if !roles.contains(&role) {
                    continue;
                }
            }
            if seen_grants.insert(stmt.clone()) {
                grants.push(stmt);
            }
        }
        listed.push(account);
    }

    // The accounts this dump carries: in a scoped dump, those with a grant on its
    // databases, and (until nothing changes) those granted a role already carried, but
    // not those that only administer it.
    let included: BTreeSet<Account> = match scope {
        Scope::Server => listed.iter().cloned().collect(),
        Scope::Databases { .. } => {
            let mut inc: BTreeSet<Account> = grants
                .iter()
                .filter(|g| scope.concerns(&grant_object(g)))
                .filter_map(|g| grantee(g))
                .collect();
            loop {
                let more: Vec<Account> = grants
                    .iter()
                    .filter_map(|g| match grant_object(g) {
                        // The role's creator holds it WITH ADMIN OPTION (MariaDB grants
                        // that itself): administering a role is not a tenant's privilege.
                        GrantObject::Role(r)
                            if !g.ends_with(" WITH ADMIN OPTION")
                                && inc.contains(&Account {
                                    user: r.clone(),
                                    host: None,
                                }) =>
                        {
                            grantee(g)
                        }
                        _ => None,
                    })
                    .filter(|a| !inc.contains(a))
                    .collect();
                if more.is_empty() {
                    break inc;
                }
                inc.extend(more);
            }
        }
    };
    let mut creates = Vec::new();
    let mut created = HashSet::new();
    for account in listed.iter().filter(|a| included.contains(a)) {
        let create = if account.host.is_none() {
            format!("CREATE ROLE IF NOT EXISTS {account};\n").into_bytes()
        } else {
            match fetch(
                conn,
                &format!("SHOW CREATE USER {account}"),
                &format!("reading account {account}"),
            )
            .await
            {
                Ok(c) => {
                    let stmt = bytes(&c[0][0]);
                    let mut s = match stmt.strip_prefix(b"CREATE USER ") {
                        Some(rest) => [b"CREATE USER IF NOT EXISTS ".as_slice(), rest].concat(),
                        None => stmt,
                    };
                    s.extend_from_slice(b";\n");
                    s
                }
                Err(e) if account_vanished(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        creates.push(create);
        created.insert(account.clone());
    }
    let role_created = |r: String| {
        created.contains(&Account {
            user: r,
            host: None,
        })
    };
    // A grant goes with its account; a role grant also needs its role; an account or role
    // that vanished before its CREATE was read takes its grants along.
    let grants: Vec<Vec<u8>> = grants
        .into_iter()
        .filter(|g| {
            let object = grant_object(g);
            let with_account = match scope {
                Scope::Server => grantee(g).is_none_or(|a| created.contains(&a)),
                Scope::Databases { .. } => grantee(g).is_some_and(|a| created.contains(&a)),
            };
            with_account
                && match object {
                    GrantObject::Role(r) => role_created(r),
                    _ if g.starts_with("SET DEFAULT ROLE ") => {
                        default_role(g).is_none_or(role_created)
                    }
                    o => scope.concerns(&o),
                }
        })
        .map(String::into_bytes)
        .collect();
    Ok(Accounts { creates, grants })
}

pub(super) async fn write_accounts(out: &mut SqlOutput, a: &Accounts) -> Result<(), DumpError> {
    if a.creates.is_empty() {
        return Ok(());
    }
    out.write(format!("\n--\n{USERS_SECTION}\n--\n").as_bytes())
        .await?;
    for s in &a.creates {
        out.write(s).await?;
    }
    Ok(())
}

/// Writes the grants whose objects are in this dump; returns how many were left out.
pub(super) async fn write_grants(
    out: &mut SqlOutput,
    a: &Accounts,
    title: &str,
    relations: &HashSet<(String, String)>,
    routines: &HashSet<(String, String)>,
    select: impl Fn(&GrantObject) -> bool,
) -> Result<usize, DumpError> {
    let mut dropped = 0;
    let mut keep = Vec::new();
    for g in &a.grants {
        let obj = grant_object(&String::from_utf8_lossy(g));
        if !select(&obj) {
            continue;
        }
        let ok = match obj {
            GrantObject::Relation(d, n) => relations.contains(&(d, n)),
            GrantObject::Routine(d, n) => routines.contains(&(d, n)),
            _ => true,
        };
        if ok {
            keep.push(g);
        } else {
            dropped += 1;
        }
    }
    if !keep.is_empty() {
        out.write(format!("\n--\n{title}\n--\n").as_bytes()).await?;
        for g in keep {
            let mut s = g.clone();
            s.extend_from_slice(b";\n");
            out.write(&s).await?;
        }
    }
    Ok(dropped)
}
