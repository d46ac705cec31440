//! Users, roles and grants, dumped as CREATE USER / GRANT statements (never as rows of
//! mysql.* tables), with grants on objects outside the dump left out.

use std::collections::HashSet;

use mysql_async::Conn;

use backup_core::format::columns::text;
use backup_core::format::{quote_ident, USERS_SECTION};

use super::output::SqlOutput;
use super::session::{bytes, fetch};
use super::DumpError;

/// Accounts that belong to the server, not to the data: never dumped.
fn is_system_account(user: &str, host: &str) -> bool {
    matches!(user, "root" | "mariadb.sys" | "mysql" | "PUBLIC" | "")
        || (user == "mariadb.sys" && host == "localhost")
}

/// What a GRANT statement from SHOW GRANTS applies to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GrantObject {
    /// `*.*`, `db`.*, roles, proxies: loads whatever exists.
    Unconditional,
    /// A table, view or column grant: needs the relation.
    Relation(String, String),
    /// A routine grant: needs the routine.
    Routine(String, String),
}

/// Reads the object of a GRANT statement: the part after the first ` ON ` outside quotes.
fn grant_object(stmt: &str) -> GrantObject {
    let b = stmt.as_bytes();
    let mut quote: Option<u8> = None;
    let mut on = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if matches!(b[i], b'`' | b'\'' | b'"') => quote = Some(b[i]),
            None if stmt[i..].starts_with(" ON ") => {
                on = Some(i + 4);
                break;
            }
            None => {}
        }
        i += 1;
    }
    let Some(start) = on else {
        return GrantObject::Unconditional;
    };
    let mut rest = &stmt[start..];
    let mut routine = false;
    for kw in ["PROCEDURE ", "FUNCTION ", "PACKAGE BODY ", "PACKAGE "] {
        if let Some(r) = rest.strip_prefix(kw) {
            rest = r;
            routine = true;
            break;
        }
    }
    let Some((db, after)) = take_ident(rest) else {
        return GrantObject::Unconditional;
    };
    let Some(after) = after.strip_prefix('.') else {
        return GrantObject::Unconditional;
    };
    match take_ident(after) {
        Some((name, _)) if routine => GrantObject::Routine(db, name),
        Some((name, _)) => GrantObject::Relation(db, name),
        None => GrantObject::Unconditional,
    }
}

/// A backtick-quoted identifier at the start of `s`, and what follows it.
fn take_ident(s: &str) -> Option<(String, &str)> {
    let rest = s.strip_prefix('`')?;
    let mut out = String::new();
    let mut it = rest.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == '`' {
            if let Some((_, '`')) = it.peek() {
                it.next();
                out.push('`');
            } else {
                return Some((out, &rest[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// Accounts and roles of the server, read before the databases are dumped.
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

/// Accounts are not transactional: one created or dropped while the dump reads them must
/// not fail the backup or produce statements that do not load. An account that vanished
/// between the listing and its SHOW statements is skipped; a role grant naming a role that
/// is not in the listing is left out (and counted).
pub(super) async fn read_accounts(conn: &mut Conn) -> Result<Accounts, DumpError> {
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
    let mut creates = Vec::new();
    let mut grants = Vec::new();
    let mut seen = HashSet::new();
    for u in &users {
        let (user, host, is_role) = (text(&u[0]), text(&u[1]), text(&u[2]) == "Y");
        if is_system_account(&user, &host) || !seen.insert((user.clone(), host.clone())) {
            continue;
        }
        let account = if is_role {
            quote_ident(&user)
        } else {
            format!("{}@{}", quote_ident(&user), quote_ident(&host))
        };
        let create = if is_role {
            format!("CREATE ROLE IF NOT EXISTS {account};\n").into_bytes()
        } else {
            match fetch(
                conn,
                &format!("SHOW CREATE USER {account}"),
                &format!("reading account {user}@{host}"),
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
        let g = match fetch(
            conn,
            &format!("SHOW GRANTS FOR {account}"),
            &format!("reading grants of {user}@{host}"),
        )
        .await
        {
            Ok(g) => g,
            Err(e) if account_vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        creates.push(create);
        for r in &g {
            let stmt = bytes(&r[0]);
            if let Some(role) = granted_role(&String::from_utf8_lossy(&stmt)) {
                if !roles.contains(&role) {
                    continue;
                }
            }
            grants.push(stmt);
        }
    }
    Ok(Accounts { creates, grants })
}

/// The role of a `GRANT `role` TO ...` statement (a grant with no ON clause).
fn granted_role(stmt: &str) -> Option<String> {
    let rest = stmt.strip_prefix("GRANT ")?;
    if grant_object(stmt) != GrantObject::Unconditional || stmt.contains(" ON ") {
        return None;
    }
    let (role, after) = take_ident(rest)?;
    after.trim_start().starts_with("TO ").then_some(role)
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
            GrantObject::Unconditional => true,
            GrantObject::Relation(d, n) => relations.contains(&(d, n)),
            GrantObject::Routine(d, n) => routines.contains(&(d, n)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_objects() {
        use GrantObject::*;
        assert_eq!(
            grant_object("GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'"),
            Unconditional
        );
        assert_eq!(
            grant_object("GRANT SELECT ON `d`.* TO `u`@`%`"),
            Unconditional
        );
        assert_eq!(grant_object("GRANT `role` TO `u`@`%`"), Unconditional);
        assert_eq!(
            grant_object("GRANT PROXY ON ''@'%' TO 'u'@'%'"),
            Unconditional
        );
        assert_eq!(
            grant_object("GRANT SELECT (`a ON b`), UPDATE (`x`) ON `d`.`t``1` TO `u`@`%`"),
            Relation("d".into(), "t`1".into())
        );
        assert_eq!(
            grant_object("GRANT EXECUTE ON PROCEDURE `d`.`p` TO `u`@`%`"),
            Routine("d".into(), "p".into())
        );
        assert_eq!(
            grant_object("GRANT EXECUTE ON FUNCTION `d`.`f` TO `u`@`%`"),
            Routine("d".into(), "f".into())
        );
        assert_eq!(
            granted_role("GRANT `r``1` TO `u`@`%` WITH ADMIN OPTION"),
            Some("r`1".into())
        );
        assert_eq!(granted_role("GRANT SELECT ON `d`.* TO `u`@`%`"), None);
        assert_eq!(granted_role("GRANT USAGE ON *.* TO `u`@`%`"), None);
    }
}
