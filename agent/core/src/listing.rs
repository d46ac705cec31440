//! The one text format of a backup listing, shared by `backup-agent list` (which knows
//! each copy's verification and the 3-2-1 verdict) and `restore --list` (which reads the
//! stores with the agent's certificate only): a table with a row per backup, oldest
//! first per source, and the same columns in both.

use crate::catalog::chain_after;
use crate::manifest::{Manifest, SegmentManifest};

/// One backup of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub source: String,
    pub backup: String,
    /// RFC 3339.
    pub finished: String,
    pub size: u64,
    /// Per store holding a copy: what is known of it ("verified", "listed", "FAILED", ...).
    pub copies: Vec<(String, String)>,
    /// The 3-2-1 verdict ("compliant", "NOT compliant: ..."), where it is known.
    pub verdict: Option<String>,
    /// How far a point-in-time restore from this backup reaches: the time of the last
    /// archived event of the chain that follows it.
    pub until: Option<String>,
}

const HEADER: [&str; 7] = [
    "SOURCE",
    "BACKUP",
    "FINISHED",
    "SIZE",
    "COPIES",
    "POINT-IN-TIME UNTIL",
    "VERDICT",
];

/// The table: a header and a row per backup, columns as wide as their widest cell.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.source.clone(),
                r.backup.clone(),
                r.finished.clone(),
                crate::format::human_size(r.size),
                if r.copies.is_empty() {
                    "-".to_string()
                } else {
                    r.copies
                        .iter()
                        .map(|(s, st)| format!("{s}: {st}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                r.until.clone().unwrap_or_else(|| "-".into()),
                r.verdict.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut width = HEADER.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String; 7]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width.iter()).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            match i {
                // Sizes align right; the last column is not padded.
                3 => s.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                6 => s.push_str(cell),
                _ => s.push_str(&format!("{cell}{}  ", " ".repeat(pad))),
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&HEADER.map(String::from));
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c));
        out.push('\n');
    }
    out
}

/// How far a point-in-time restore from `backup` reaches over the archived segments
/// `all`: the last event's time and GTID of the unbroken chain after its position.
pub fn reach(backup: &Manifest, all: &[&SegmentManifest]) -> Option<(String, String)> {
    let pos = backup
        .binlog
        .as_ref()
        .and_then(|b| b.gtid.as_deref())
        .and_then(crate::binlog::GtidPos::parse)?;
    chain_after(all, &pos)
        .last()
        .map(|l| (l.last_event_at.clone(), l.last_gtid.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_backup_in_aligned_columns() {
        let rows = vec![
            Row {
                source: "main".into(),
                backup: "mariadb_2026-12-01_020000".into(),
                finished: "2026-12-01T02:00:09Z".into(),
                size: 2 << 20,
                copies: vec![
                    ("local".into(), "verified".into()),
                    ("s3".into(), "verified lock 2027-01-01".into()),
                ],
                verdict: Some("compliant".into()),
                until: Some("2026-12-01T09:59:58Z".into()),
            },
            Row {
                source: "erp/client_07".into(),
                backup: "mariadb_2026-12-01_020001".into(),
                finished: "2026-12-01T02:00:02Z".into(),
                size: 900,
                copies: vec![("local".into(), "listed".into())],
                verdict: None,
                until: None,
            },
        ];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SOURCE         BACKUP"), "{t}");
        let col = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(col(lines[0], "BACKUP"), col(lines[1], "mariadb_"));
        assert_eq!(col(lines[0], "COPIES"), col(lines[2], "local: listed"));
        assert!(
            lines[1].ends_with("compliant") && lines[2].ends_with('-'),
            "{t}"
        );
    }
}
