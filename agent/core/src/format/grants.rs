//! Reading the account statements of a dump: what a `GRANT` (as `SHOW GRANTS` prints it)
//! applies to and whom it grants to, which account a `CREATE USER` / `CREATE ROLE` makes,
//! and whether a database-level grant's name (a `LIKE` pattern) matches a database. The
//! dumper uses these to scope the accounts of a backup to its databases; `restore` to
//! leave accounts alone unless asked.

use std::fmt;

/// An account or a role, as a dump names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account {
    pub user: String,
    /// None for a role.
    pub host: Option<String>,
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(
                f,
                "{}@{}",
                super::quote_ident(&self.user),
                super::quote_ident(h)
            ),
            None => write!(f, "{}", super::quote_ident(&self.user)),
        }
    }
}

/// What a GRANT statement from SHOW GRANTS applies to.
#[derive(Debug, PartialEq, Eq)]
pub enum GrantObject {
    /// `*.*`: global privileges.
    Global,
    /// `db`.*: the name is a `LIKE` pattern (`_` and `%` match, `\_` and `\%` do not).
    Database(String),
    /// A table, view or column grant: needs the relation.
    Relation(String, String),
    /// A routine grant: needs the routine.
    Routine(String, String),
    /// `GRANT role TO ...`: no ON clause.
    Role(String),
    /// PROXY and anything not recognised.
    Other,
}

/// Byte offset of the first occurrence of `kw` in `stmt` outside quotes.
fn find_unquoted(stmt: &str, kw: &str) -> Option<usize> {
    let b = stmt.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if matches!(b[i], b'`' | b'\'' | b'"') => quote = Some(b[i]),
            None if stmt.is_char_boundary(i) && stmt[i..].starts_with(kw) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

/// Reads the object of a GRANT statement: the part after the first ` ON ` outside quotes.
pub fn grant_object(stmt: &str) -> GrantObject {
    let Some(on) = find_unquoted(stmt, " ON ") else {
        return match stmt.strip_prefix("GRANT ").and_then(take_ident) {
            Some((role, after)) if after.trim_start().starts_with("TO ") => GrantObject::Role(role),
            _ => GrantObject::Other,
        };
    };
    let mut rest = &stmt[on + 4..];
    if rest.starts_with("*.*") {
        return GrantObject::Global;
    }
    let mut routine = false;
    for kw in ["PROCEDURE ", "FUNCTION ", "PACKAGE BODY ", "PACKAGE "] {
        if let Some(r) = rest.strip_prefix(kw) {
            rest = r;
            routine = true;
            break;
        }
    }
    let Some((db, after)) = take_ident(rest) else {
        return GrantObject::Other;
    };
    let Some(after) = after.strip_prefix('.') else {
        return GrantObject::Other;
    };
    if after.starts_with('*') && !routine {
        return GrantObject::Database(db);
    }
    match take_ident(after) {
        Some((name, _)) if routine => GrantObject::Routine(db, name),
        Some((name, _)) => GrantObject::Relation(db, name),
        None => GrantObject::Other,
    }
}

/// The account a `GRANT ... TO x` or `SET DEFAULT ROLE r FOR x` statement changes.
pub fn grantee(stmt: &str) -> Option<Account> {
    let kw = if stmt.starts_with("SET DEFAULT ROLE ") {
        " FOR "
    } else {
        " TO "
    };
    let at = find_unquoted(stmt, kw)?;
    account_at(&stmt[at + kw.len()..])
}

/// The account a `CREATE USER [IF NOT EXISTS] x` or `CREATE ROLE [IF NOT EXISTS] r`
/// statement makes.
pub fn created_account(stmt: &str) -> Option<Account> {
    let rest = stmt
        .strip_prefix("CREATE USER ")
        .or_else(|| stmt.strip_prefix("CREATE ROLE "))?;
    let rest = rest.strip_prefix("IF NOT EXISTS ").unwrap_or(rest);
    account_at(rest)
}

/// The DEFINER of a `CREATE ... DEFINER=x ... VIEW|PROCEDURE|FUNCTION|TRIGGER|EVENT`
/// statement (as SHOW CREATE prints it), read in its head.
pub fn definer(stmt: &str) -> Option<Account> {
    if !stmt.starts_with("CREATE ") {
        return None;
    }
    let head = &stmt[..stmt.len().min(1024)];
    let head = &head[..(0..=head.len()).rev().find(|&i| head.is_char_boundary(i))?];
    let at = find_unquoted(head, " DEFINER=")?;
    let rest = &head[at + " DEFINER=".len()..];
    account_at(rest)
}

/// `user`@`host` or `role` at the start of `s`.
fn account_at(s: &str) -> Option<Account> {
    let (user, after) = take_ident(s.trim_start())?;
    let host = after.strip_prefix('@').and_then(take_ident).map(|(h, _)| h);
    Some(Account { user, host })
}

/// A backtick-quoted identifier at the start of `s`, and what follows it.
pub fn take_ident(s: &str) -> Option<(String, &str)> {
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

/// Whether the name of a database-level grant matches database `db`, as the server reads
/// it: `_` any one character, `%` any run, `\_` / `\%` / `\\` themselves; compared as the
/// server compares database names on Linux (case-sensitively).
pub fn db_pattern_matches(pattern: &str, db: &str) -> bool {
    #[derive(Clone, Copy)]
    enum P {
        Lit(char),
        One,
        Any,
    }
    let mut p = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        p.push(match c {
            '\\' => P::Lit(it.next().unwrap_or('\\')),
            '_' => P::One,
            '%' => P::Any,
            c => P::Lit(c),
        });
    }
    let s: Vec<char> = db.chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last `%`.
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        match p.get(i) {
            Some(P::Lit(c)) if *c == s[j] => {
                i += 1;
                j += 1;
            }
            Some(P::One) => {
                i += 1;
                j += 1;
            }
            Some(P::Any) => {
                star = Some((i, j));
                i += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i.min(p.len())..].iter().all(|x| matches!(x, P::Any))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_objects() {
        use GrantObject::*;
        assert_eq!(
            grant_object("GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'"),
            Global
        );
        assert_eq!(
            grant_object("GRANT SELECT ON `d`.* TO `u`@`%`"),
            Database("d".into())
        );
        assert_eq!(
            grant_object("GRANT SELECT ON `t\\_a`.* TO `u`@`%`"),
            Database("t\\_a".into())
        );
        assert_eq!(grant_object("GRANT `role` TO `u`@`%`"), Role("role".into()));
        assert_eq!(
            grant_object("GRANT `r``1` TO `u`@`%` WITH ADMIN OPTION"),
            Role("r`1".into())
        );
        assert_eq!(grant_object("GRANT PROXY ON ''@'%' TO 'u'@'%'"), Other);
        assert_eq!(grant_object("GRANT PROXY ON ``@`%` TO `u`@`%`"), Other);
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
    }

    #[test]
    fn grantees_and_created_accounts() {
        let u = |user: &str, host: Option<&str>| Account {
            user: user.into(),
            host: host.map(String::from),
        };
        assert_eq!(
            grantee("GRANT SELECT (`x TO y`) ON `d`.`t` TO `u``1`@`h%` WITH GRANT OPTION"),
            Some(u("u`1", Some("h%")))
        );
        assert_eq!(grantee("GRANT `r` TO `r2`"), Some(u("r2", None)));
        assert_eq!(
            grantee("SET DEFAULT ROLE `r` FOR `u`@`%`"),
            Some(u("u", Some("%")))
        );
        assert_eq!(
            created_account(
                "CREATE USER IF NOT EXISTS `u`@`localhost` IDENTIFIED BY PASSWORD '*X'"
            ),
            Some(u("u", Some("localhost")))
        );
        assert_eq!(
            created_account("CREATE ROLE IF NOT EXISTS `r`"),
            Some(u("r", None))
        );
        assert_eq!(created_account("CREATE TABLE `t` (a int)"), None);
        assert_eq!(
            definer("CREATE ALGORITHM=UNDEFINED DEFINER=`adm`@`localhost` SQL SECURITY DEFINER VIEW `d`.`v` AS select 1"),
            Some(u("adm", Some("localhost")))
        );
        assert_eq!(
            definer("CREATE DEFINER=`r` PROCEDURE `p`() SELECT 1"),
            Some(u("r", None))
        );
        assert_eq!(definer("CREATE TABLE `t` (`DEFINER=` int)"), None);
        assert_eq!(definer("INSERT INTO t VALUES (' DEFINER=`x`@`y`')"), None);
        assert_eq!(u("a`b", Some("%")).to_string(), "`a``b`@`%`");
    }

    #[test]
    fn database_patterns() {
        assert!(db_pattern_matches("t\\_a", "t_a"));
        assert!(!db_pattern_matches("t\\_a", "tXa"));
        assert!(db_pattern_matches("t_a", "tXa"));
        assert!(db_pattern_matches("client\\_%", "client_07"));
        assert!(db_pattern_matches("client\\_%", "client_"));
        assert!(!db_pattern_matches("client\\_%", "clientX07"));
        assert!(db_pattern_matches("%", "anything"));
        assert!(db_pattern_matches("a%b%c", "aXXbYYc"));
        assert!(!db_pattern_matches("a%b%c", "aXXbYY"));
        assert!(!db_pattern_matches("abc", "abcd"));
        assert!(!db_pattern_matches("abcd", "abc"));
        assert!(db_pattern_matches("50\\%", "50%"));
        assert!(!db_pattern_matches("50\\%", "500"));
    }
}
