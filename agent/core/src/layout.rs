//! Where things live in a store: backup ids, the names of a backup's three objects, the
//! drill records, and the key of each under a source's prefix. Every object key is made
//! here; the stores take keys as opaque strings and know nothing of backups.
//!
//! A backup `mariadb_YYYY-MM-DD_HHMMSS` (UTC) of a source with prefix `P` is
//! `P/<id>.sql.gz.gpg` (the sealed data), `P/<id>.sql.gz.gpg.sha256` and
//! `P/<id>.manifest.json.sig` (the agent's detached signature over the manifest, written
//! before it) and `P/<id>.manifest.json` (written last). Drill records are
//! `P/drills/<name>.json`.

use chrono::{DateTime, NaiveDateTime, Utc};

pub const DATA_SUFFIX: &str = ".sql.gz.gpg";
pub const SHA256_SUFFIX: &str = ".sql.gz.gpg.sha256";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
pub const SIGNATURE_SUFFIX: &str = ".manifest.json.sig";

const ID_FORMAT: &str = "mariadb_%Y-%m-%d_%H%M%S";
const DRILLS_DIR: &str = "drills";

/// The objects of a backup, in the order they are written (and removed in reverse: the
/// manifest first, so that no half-removed backup looks complete).
pub const SUFFIXES: [&str; 4] = [
    DATA_SUFFIX,
    SHA256_SUFFIX,
    SIGNATURE_SUFFIX,
    MANIFEST_SUFFIX,
];

/// `mariadb_YYYY-MM-DD_HHMMSS` for a UTC time.
pub fn backup_id(t: DateTime<Utc>) -> String {
    t.format(ID_FORMAT).to_string()
}

/// Whether a file name is one of ours, and of which backup.
pub fn backup_id_of(file_name: &str) -> Option<&str> {
    for suffix in [
        SHA256_SUFFIX,
        DATA_SUFFIX,
        SIGNATURE_SUFFIX,
        MANIFEST_SUFFIX,
    ] {
        if let Some(id) = file_name.strip_suffix(suffix) {
            if is_backup_id(id) {
                return Some(id);
            }
        }
    }
    None
}

/// The UTC time a backup id names.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(id, ID_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

pub fn is_backup_id(id: &str) -> bool {
    NaiveDateTime::parse_from_str(id, ID_FORMAT).is_ok()
}

/// The key of an object named `name` (a backup's file name) under a source's prefix.
pub fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

/// The key of one of a backup's objects: `suffix` is one of [`SUFFIXES`].
pub fn object_key(prefix: &str, id: &str, suffix: &str) -> String {
    format!("{prefix}/{id}{suffix}")
}

/// The file name of one of a backup's objects.
pub fn object_name(id: &str, suffix: &str) -> String {
    format!("{id}{suffix}")
}

/// The prefix under which a backup's objects are listed together (for ledgers and logs).
pub fn backup_key(prefix: &str, id: &str) -> String {
    format!("{prefix}/{id}")
}

/// Where a source's drill records are listed.
pub fn drills_prefix(prefix: &str) -> String {
    format!("{prefix}/{DRILLS_DIR}")
}

/// The key of a drill record named `name` (see [`is_drill_record`]).
pub fn drill_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{DRILLS_DIR}/{name}")
}

/// The key of a new drill record, named after the drill's time (to the millisecond);
/// the log drill's (`pitr`) are `pitr-drill_<time>.json`.
pub fn new_drill_key(prefix: &str, at: DateTime<Utc>, pitr: bool) -> String {
    drill_key(
        prefix,
        &format!(
            "{}{}.json",
            drill_name_prefix(pitr),
            at.format("%Y-%m-%d_%H%M%S_%3f")
        ),
    )
}

fn drill_name_prefix(pitr: bool) -> &'static str {
    if pitr {
        "pitr-drill_"
    } else {
        "drill_"
    }
}

/// Whether a name listed under [`drills_prefix`] is a drill record of this kind; their
/// names sort by time.
pub fn is_drill_record(name: &str, pitr: bool) -> bool {
    name.starts_with(drill_name_prefix(pitr)) && name.ends_with(".json")
}

/// Binary log segments (point-in-time recovery) of a source with prefix `P` live under
/// `P/binlog/`: `<id>.binlog.gz.gpg` (the sealed segment, a binary log file), its
/// `.sha256`, its manifest's signature and its manifest (written last), with the same
/// suffixes as a backup's beside the data. A segment id is `binlog_<first event time,
/// UTC>_<its first GTID>` (unique: a GTID is); the order of the chain is the one of the
/// manifests' positions (each segment starts where the previous one ended), not the ids'.
pub const SEGMENT_DATA_SUFFIX: &str = ".binlog.gz.gpg";
pub const SEGMENT_SHA256_SUFFIX: &str = ".binlog.gz.gpg.sha256";
/// The objects of a segment, in the order they are written.
pub const SEGMENT_SUFFIXES: [&str; 4] = [
    SEGMENT_DATA_SUFFIX,
    SEGMENT_SHA256_SUFFIX,
    SIGNATURE_SUFFIX,
    MANIFEST_SUFFIX,
];
const BINLOG_DIR: &str = "binlog";

/// Where a source's binary log segments are listed.
pub fn binlog_prefix(prefix: &str) -> String {
    format!("{prefix}/{BINLOG_DIR}")
}

/// The id of a segment whose first transaction is `first_gtid`, written at `first_time`.
pub fn segment_id(first_time: DateTime<Utc>, first_gtid: &str) -> String {
    format!(
        "binlog_{}_{first_gtid}",
        first_time.format("%Y-%m-%d_%H%M%S")
    )
}

/// The key of one of a segment's objects: `suffix` is one of [`SEGMENT_SUFFIXES`].
pub fn segment_key(prefix: &str, id: &str, suffix: &str) -> String {
    format!("{}/{id}{suffix}", binlog_prefix(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = backup_id(t);
        assert_eq!(id, "mariadb_2026-11-21_020000");
        assert_eq!(
            backup_id_of(&format!("{id}{DATA_SUFFIX}")),
            Some(id.as_str())
        );
        assert_eq!(
            backup_id_of(&format!("{id}{SHA256_SUFFIX}")),
            Some(id.as_str())
        );
        assert_eq!(
            backup_id_of(&format!("{id}{SIGNATURE_SUFFIX}")),
            Some(id.as_str())
        );
        assert_eq!(backup_id_of("mariadb_latest.sql.gz.gpg"), None);
        assert_eq!(backup_id_of("notes.txt"), None);
        assert_eq!(id_time(&id), Some(t));
        assert_eq!(
            object_key("dc1/main", &id, MANIFEST_SUFFIX),
            "dc1/main/mariadb_2026-11-21_020000.manifest.json"
        );
    }
}
