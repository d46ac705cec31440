//! The manifest: written last, it is what makes a backup exist. It holds no table names
//! and no row data; those stay inside the encrypted message.

use serde::{Deserialize, Serialize};

/// Binlog coordinates of the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub position: u64,
    pub gtid: Option<String>,
}

pub const MANIFEST_VERSION: u32 = 1;
pub const DATA_SUFFIX: &str = ".sql.gz.gpg";
pub const SHA256_SUFFIX: &str = ".sql.gz.gpg.sha256";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub backup_id: String,
    pub source: String,
    /// Server host name (the node that was dumped).
    pub host: String,
    pub server_version: String,
    pub started_at: String,
    pub finished_at: String,
    pub binlog: Option<BinlogPosition>,
    pub galera: Option<serde_json::Value>,
    pub databases: Vec<String>,
    pub data: DataObject,
    /// Encryption subkeys the message is encrypted to.
    pub dpo_recipients: Vec<String>,
    /// Primary fingerprint of the agent certificate that signed the message.
    pub signer: String,
    pub tool_version: String,
    /// Largest SQL statement in the dump, in bytes: the minimum max_allowed_packet.
    pub largest_statement_bytes: u64,
    pub tables: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataObject {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub compression: String,
    pub encryption: String,
}

/// `mariadb_YYYY-MM-DD_HHMMSS` for a UTC time.
pub fn backup_id(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("mariadb_%Y-%m-%d_%H%M%S").to_string()
}

/// Whether a file name is one of ours, and of which backup.
pub fn backup_id_of(file_name: &str) -> Option<&str> {
    for suffix in [SHA256_SUFFIX, DATA_SUFFIX, MANIFEST_SUFFIX] {
        if let Some(id) = file_name.strip_suffix(suffix) {
            if is_backup_id(id) {
                return Some(id);
            }
        }
    }
    None
}

/// The UTC time a backup id names.
pub fn id_time(id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(id, "mariadb_%Y-%m-%d_%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

pub fn is_backup_id(id: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(id, "mariadb_%Y-%m-%d_%H%M%S").is_ok()
}

/// The `.sha256` file's content: `<hex>  <file name>\n`, as `sha256sum` writes it.
pub fn sha256_line(hex: &str, file_name: &str) -> String {
    format!("{hex}  {file_name}\n")
}

/// Parses a `.sha256` file; returns the hex digest if it names `file_name`.
pub fn parse_sha256_line(text: &str, file_name: &str) -> Option<String> {
    let line = text.lines().next()?;
    let (hex, name) = line.split_once("  ").or_else(|| line.split_once(" *"))?;
    (name.trim() == file_name && hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-21T02:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
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
        assert_eq!(backup_id_of("mariadb_latest.sql.gz.gpg"), None);
        assert_eq!(backup_id_of("notes.txt"), None);
        let l = sha256_line(&"a".repeat(64), "x.gpg");
        assert_eq!(parse_sha256_line(&l, "x.gpg"), Some("a".repeat(64)));
        assert_eq!(parse_sha256_line(&l, "y.gpg"), None);
    }
}
