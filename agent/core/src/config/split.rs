//! `split = "database"`: one source, one backup per database.
//!
//! A split source names a server and a selection of databases (names or patterns such as
//! `client_*`); at every run the agent lists the databases the selection matches and
//! backs each up as its own *unit*: a source named `<source>/<database>`, with the prefix
//! `<prefix>/<database>` (the database's name escaped for keys and paths, see
//! [`db_dir`]), its own backup ids, manifest, freshness, 3-2-1 verdict, metrics label and
//! alerts. The databases a split source has had are kept in the state
//! ([`crate::state::SplitState`]): a dropped one stays a unit (its backups are listed,
//! scrubbed and kept under retention) but is no longer expected to be fresh.
//!
//! A unit's configuration is a function of its parent and the database name alone, so
//! `restore --source <source>/<database>` needs no state (the restore machine has none).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Config, SourceConfig};
use crate::state::SplitState;

/// How a source is split into backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One backup per database.
    Database,
}

/// What makes a source a unit of a split source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOf {
    /// The split source's name.
    pub parent: String,
    /// The one database this unit backs up.
    pub database: String,
    /// When the database was found gone (its backups are kept; it is not expected fresh).
    pub dropped: Option<DateTime<Utc>>,
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters and `?` one
/// character (case-sensitive, as database names are on Linux).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with backtracking to the last '*'.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether a `databases.include` / `exclude` entry is a pattern rather than a name.
pub fn is_pattern(entry: &str) -> bool {
    entry.contains(['*', '?'])
}

/// Names of a store's own directories under a source's prefix, which a database's
/// directory must not take.
const RESERVED_DIRS: &[&str] = &["binlog", "drills"];

/// The directory (one key component) of a database under its split source's prefix:
/// letters, digits, `_` and `-` as they are, every other byte as `%XX`; a name that is a
/// store directory of its own (`binlog`, `drills`) has its first letter escaped. The
/// mapping is one to one, so two databases never share a directory.
pub fn db_dir(db: &str) -> String {
    let mut out = String::with_capacity(db.len());
    for b in db.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if RESERVED_DIRS.contains(&out.as_str()) {
        out = format!("%{:02X}{}", out.as_bytes()[0], &out[1..]);
    }
    out
}

/// The file name stem for a source's files in the state dir (locks, journals): a unit's
/// `/` and any other byte outside `[A-Za-z0-9._-]` escaped as `%XX`, one to one.
pub fn file_stem(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for b in source.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl SourceConfig {
    /// The unit of this split source for database `db`.
    pub fn unit(&self, db: &str, dropped: Option<DateTime<Utc>>) -> SourceConfig {
        let mut u = self.clone();
        u.name = format!("{}/{db}", self.name);
        u.prefix = format!("{}/{}", self.prefix, db_dir(db));
        u.include = vec![db.to_string()];
        u.exclude = Vec::new();
        u.split = None;
        u.tenant_certificates = self
            .tenant_certificates
            .iter()
            .filter(|(d, _)| d == db)
            .cloned()
            .collect();
        u.unit_of = Some(UnitOf {
            parent: self.name.clone(),
            database: db.to_string(),
            dropped,
        });
        u
    }

    /// The source name a backup of database `db` of this source is filed under: the
    /// unit's for a split source, the source's own otherwise (tenant keys are looked up
    /// by it).
    pub fn name_for(&self, db: &str) -> String {
        match self.split {
            Some(Split::Database) => format!("{}/{db}", self.name),
            None => self.name.clone(),
        }
    }
}

impl Config {
    /// This configuration with every split source replaced by its units, as the state
    /// knows them (every database it ever backed up, dropped ones included). The split
    /// sources themselves move to [`Config::splits`].
    /// Expanding an expanded configuration gives it back with the units the state knows
    /// now (units added by [`Config::add_unit`] are kept).
    pub fn expanded(&self, known: &BTreeMap<String, SplitState>) -> Config {
        let mut out = self.clone();
        out.sources.clear();
        out.splits.clear();
        let parents = self
            .splits
            .iter()
            .chain(self.sources.iter().filter(|s| s.split.is_some()));
        for p in parents {
            out.splits.push(p.clone());
            if let Some(k) = known.get(&p.name) {
                for (db, mark) in &k.databases {
                    out.sources.push(p.unit(db, mark.dropped_at));
                }
            }
        }
        let mut plain = Vec::new();
        for s in self.sources.iter().filter(|s| s.split.is_none()) {
            if !out.sources.iter().any(|u| u.name == s.name) {
                plain.push(s.clone());
            }
        }
        // The configured order: plain sources first as written, then the units.
        plain.append(&mut out.sources);
        out.sources = plain;
        out
    }

    /// The split source named `name`, expanded or not.
    pub fn split_source(&self, name: &str) -> Option<&SourceConfig> {
        self.splits
            .iter()
            .chain(self.sources.iter())
            .find(|s| s.name == name && s.split.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("client_*", "client_"));
        assert!(glob_match("client_*", "client_042"));
        assert!(!glob_match("client_*", "Client_042"));
        assert!(!glob_match("client_*", "xclient_1"));
        assert!(glob_match("c?_*x", "cA_yyx"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }

    #[test]
    fn database_directories_are_one_to_one_and_safe() {
        assert_eq!(db_dir("client_01"), "client_01");
        assert_eq!(db_dir("a.b"), "a%2Eb");
        assert_eq!(db_dir(".."), "%2E%2E");
        assert_eq!(db_dir("a/b"), "a%2Fb");
        assert_eq!(db_dir("a%2Fb"), "a%252Fb");
        assert_eq!(db_dir("binlog"), "%62inlog");
        assert_eq!(db_dir("drills"), "%64rills");
        assert_eq!(db_dir("Bücher"), "B%C3%BCcher");
        assert_eq!(file_stem("t/client.1"), "t%2Fclient.1");
    }
}
