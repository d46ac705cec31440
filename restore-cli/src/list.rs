//! `--list`: the complete backups of the configured stores, in the listing's one format.

use anyhow::{anyhow, Result};

use backup_core::config::Config;

use crate::{load_trusted, usage, Cli};

pub(crate) fn list(cli: &Cli, cfg: Option<&Config>) -> Result<()> {
    let cfg = cfg.ok_or_else(|| usage("--list needs --config (the stores and sources)"))?;
    let trust = load_trusted(cli, Some(cfg))?.trust();
    let mut rows = Vec::new();
    let mut table: Vec<backup_core::listing::Row> = Vec::new();
    for src in cfg
        .sources
        .iter()
        .filter(|s| cli.source.as_ref().is_none_or(|n| &s.name == n))
    {
        if src.split.is_some() {
            // Its backups are per database, under <prefix>/<database>.
            eprintln!(
                "restore: source {} keeps one backup per database: list one with --source {}/<database> (backup-agent list shows every database it has backed up)",
                src.name, src.name
            );
            continue;
        }
        // The archived binary log of the source, from every store: how far a
        // point-in-time restore from each backup reaches.
        let mut segs: std::collections::BTreeMap<String, backup_core::manifest::SegmentManifest> =
            std::collections::BTreeMap::new();
        let mut per_store = Vec::new();
        for st in &cfg.stores {
            let store = backup_core::store::open_store(st).map_err(|e| anyhow!("{e}"))?;
            let list = backup_core::catalog::complete_backups(store.as_ref(), &src.prefix, &trust)
                .map_err(|e| anyhow!("{e}"))?;
            for (id, problem) in &list.problems {
                eprintln!(
                    "restore: store {}: backup {id} is not listed: {problem}",
                    st.name
                );
            }
            if let Ok(l) =
                backup_core::catalog::complete_segments(store.as_ref(), &src.prefix, &trust)
            {
                for (id, problem) in &l.problems {
                    eprintln!(
                        "restore: store {}: segment {id} is not used: {problem}",
                        st.name
                    );
                }
                for m in l.segments {
                    segs.entry(m.segment_id.clone()).or_insert(m);
                }
            }
            per_store.push((st, store, list.backups));
        }
        let all: Vec<&backup_core::manifest::SegmentManifest> = segs.values().collect();
        let first_row = table.len();
        for (st, store, backups) in per_store {
            for m in backups {
                let reach = backup_core::listing::reach(&m, &all);
                // One row per backup, its copies on every store.
                match table[first_row..]
                    .iter_mut()
                    .find(|r| r.backup == m.backup_id)
                {
                    Some(r) => r.copies.push((st.name.clone(), "listed".into())),
                    None => table.push(backup_core::listing::Row {
                        source: src.name.clone(),
                        backup: m.backup_id.clone(),
                        finished: m.finished_at.clone(),
                        size: m.data.size,
                        copies: vec![(st.name.clone(), "listed".into())],
                        verdict: None,
                        until: reach.as_ref().map(|r| r.0.clone()),
                    }),
                }
                rows.push(serde_json::json!({
                    "source": src.name, "store": st.name, "backup_id": m.backup_id, "finished_at": m.finished_at,
                    "size": m.data.size, "sha256": m.data.sha256, "databases": m.databases,
                    "file": store.describe(&backup_core::layout::key(&src.prefix, &m.data.name)),
                    "recoverable_until": reach.as_ref().map(|r| r.0.clone()),
                    "recoverable_until_gtid": reach.as_ref().map(|r| r.1.clone()),
                }));
            }
        }
        table[first_row..].sort_by(|a, b| a.backup.cmp(&b.backup));
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        // The listing's one text format (backup-agent list prints the same table, with
        // each copy's verification and the 3-2-1 verdict, which only the agent knows).
        for r in &mut table {
            r.copies.sort();
        }
        print!("{}", backup_core::listing::render(&table));
    }
    Ok(())
}
