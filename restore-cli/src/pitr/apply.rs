//! Pass 2 of a point-in-time restore: the chosen events of each segment, read again
//! through the pins, turned into SQL by the stock `mariadb-binlog` (on its standard
//! input) and executed on the target connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::*;

use super::walk::{walk_segment, Decision, Summary, Walker};
use super::{private_temp_dir, Plan, SegFile};
use crate::crypto::{DpoKey, TrustedSigners};

/// Pass 2: reads each segment again through its pins and applies the chosen transactions
/// on `conn`, through `mariadb-binlog` (events on its standard input, SQL from its
/// standard output).
pub async fn apply(
    plan: &Plan,
    selected: &[String],
    dpo: &DpoKey,
    trusted: &TrustedSigners,
    conn: &mut mysql_async::Conn,
) -> Result<u64> {
    // mariadb-binlog may spill a large event to a temp file: a private directory in
    // memory (/dev/shm) when the machine has one, else in TMPDIR; removed afterwards.
    let tmp = match tempfile::Builder::new()
        .prefix("restore-binlog-")
        .tempdir_in("/dev/shm")
    {
        Ok(d) => d,
        Err(_) => private_temp_dir()?,
    };
    let mut executed = 0u64;
    let mut w = Walker::start(plan, selected);
    for f in &plan.segments {
        if f.applied == 0 {
            // Walk it anyway: the decisions of the next segments depend on its position.
            let mut s = Summary::default();
            walk_segment(f, dpo, trusted, &mut w, &mut s, |_, _, _| Ok(()))?;
            continue;
        }
        let mut child = Command::new("mariadb-binlog")
            .args(["--no-defaults", "-"])
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run mariadb-binlog (Debian package mariadb-client)")?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            e
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let reader = std::thread::spawn(move || split_statements(BufReader::new(stdout), tx));
        // The walk runs in a thread of its own: it decrypts and writes events.
        let seg = SegFile {
            manifest: f.manifest.clone(),
            store: f.store.clone(),
            path: f.path.clone(),
            pins: f.pins.clone(),
            applied: f.applied,
        };
        let (dpo2, trusted2) = (dpo.clone(), trusted.clone());
        let mut w2 = w.clone();
        let walker = std::thread::spawn(move || {
            let mut s = Summary::default();
            let mut n = 0u64;
            let r = walk_segment(&seg, &dpo2, &trusted2, &mut w2, &mut s, |fde, t, d| {
                if let Some(fde) = fde {
                    stdin.write_all(&backup_core::binlog::MAGIC)?;
                    stdin.write_all(fde)?;
                }
                if *d == Decision::Apply {
                    n += 1;
                    for e in &t.events {
                        stdin.write_all(&e.bytes)?;
                    }
                }
                Ok(())
            });
            drop(stdin);
            let r = r.and_then(|()| {
                if n != seg.applied {
                    bail!(
                        "segment {} changed between the passes ({} transactions to apply, then {n})",
                        seg.manifest.segment_id,
                        seg.applied
                    );
                }
                Ok(())
            });
            (r, w2)
        });
        // Execute while the walk feeds mariadb-binlog.
        let mut exec = Ok(());
        while let Some(stmt) = rx.recv().await {
            if let Err(e) = conn.query_drop(stmt.as_slice()).await {
                let head = String::from_utf8_lossy(&stmt[..stmt.len().min(160)]).into_owned();
                exec = Err(anyhow!(
                    "the target server refused a statement of segment {} ({head}...): {e}",
                    f.manifest.segment_id
                ));
                break;
            }
            executed += 1;
        }
        drop(rx);
        if exec.is_err() {
            let _ = child.kill();
        }
        let (walk_result, w_after) = tokio::task::spawn_blocking(move || walker.join())
            .await
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|_| anyhow!("the segment reader failed"))?;
        let status = child.wait().context("waiting for mariadb-binlog")?;
        let split = reader.join().expect("reader thread");
        let errs = err_thread.join().unwrap_or_default();
        exec?;
        walk_result?;
        split.context("reading mariadb-binlog's output")?;
        if !status.success() {
            bail!(
                "mariadb-binlog failed on segment {}: {}",
                f.manifest.segment_id,
                errs.trim()
            );
        }
        w = w_after;
    }
    Ok(executed)
}

/// Whether a statement sets the source's GTID or server id for the events that follow.
/// They are left out: the target writes the restored changes as its own (with its own
/// GTIDs), which never clash with its binary log and need no replication privileges.
fn source_identity(stmt: &[u8]) -> bool {
    [
        &b"/*M!100001 SET @@session.gtid_domain_id="[..],
        b"/*M!100001 SET @@session.server_id=",
        b"/*M!100001 SET @@session.gtid_seq_no=",
    ]
    .iter()
    .any(|p| stmt.starts_with(p))
}

/// Splits `mariadb-binlog`'s output into statements as the `mariadb` client would:
/// `# ...` comment lines between statements, `DELIMITER x` lines, statements ending with
/// the current delimiter at the end of a line; the client-only `/*!\C charset */`
/// command is dropped (the `SET @@session.character_set_client` after it does the work).
fn split_statements(mut r: impl BufRead, tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> Result<()> {
    let mut delim: Vec<u8> = b";".to_vec();
    let mut buf: Vec<u8> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if buf.is_empty() {
            let t = line.trim_ascii();
            if t.is_empty() || t.starts_with(b"#") {
                continue;
            }
            if let Some(d) = t.strip_prefix(b"DELIMITER ") {
                delim = d.trim_ascii().to_vec();
                continue;
            }
        }
        buf.extend_from_slice(&line);
        let t = buf.trim_ascii_end();
        if t.ends_with(&delim) {
            let stmt = t[..t.len() - delim.len()].trim_ascii().to_vec();
            buf.clear();
            if stmt.is_empty() || stmt.starts_with(b"/*!\\C ") || source_identity(&stmt) {
                continue;
            }
            if tx.blocking_send(stmt).is_err() {
                bail!("applying stopped");
            }
        }
    }
    if !buf.trim_ascii().is_empty() {
        bail!("mariadb-binlog's output ends inside a statement");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_splits_like_the_client() {
        let out = b"/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;\nDELIMITER /*!*/;\n# at 4\nROLLBACK/*!*/;\n/*M!100001 SET @@session.gtid_domain_id=0*//*!*/;\n/*M!100001 SET @@session.server_id=1*//*!*/;\n/*M!100001 SET @@session.gtid_seq_no=7*//*!*/;\nBINLOG '\nAAAA\nBBBB\n'/*!*/;\n/*!\\C utf8mb3 *//*!*/;\nINSERT INTO t VALUES ('a;\n# not a comment')\n/*!*/;\nDELIMITER ;\n# End of log file\nROLLBACK /* added by mysqlbinlog */;\n";
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        split_statements(&out[..], tx).unwrap();
        let mut got = Vec::new();
        while let Ok(s) = rx.try_recv() {
            got.push(String::from_utf8(s).unwrap());
        }
        assert_eq!(
            got,
            vec![
                "/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/",
                "ROLLBACK",
                "BINLOG '\nAAAA\nBBBB\n'",
                "INSERT INTO t VALUES ('a;\n# not a comment')",
                "ROLLBACK /* added by mysqlbinlog */",
            ]
        );
    }
}
