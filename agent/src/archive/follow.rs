//! The daemon's binary log archiver: one replication connection per archived source,
//! followed continuously. The open segment lives in memory and is stored (sealed, in
//! every store, manifest last) when it reaches `segment_max_size` or has been open for
//! `segment_max_age`, always between transactions; at shutdown the whole transactions it
//! holds are stored. A crash loses at most the open segment, which the next start fetches
//! again from the server by GTID (the state's position moves only past stored segments).
//!
//! A server that no longer holds the binary log from the archived position (purged
//! before the agent fetched it) is a gap: it is recorded in the state, alerted
//! (`binlog_gap`), and archiving goes on from the server's current position, so the
//! recoverable window restarts with the next backup.

use std::future::Future;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;

use super::{archive_segment, record_stored, start_position, ArchiveError, SegmentFrom};
use crate::copies::inventory::OpenStore;
use crate::seal::crypto::SealingKeys;
use crate::source::binlog::{self, GtidPos, Segment, SegmentBuilder, HEARTBEAT_SECS};
use backup_core::alert::{Alert, Alerter};
use backup_core::config::{BinlogConfig, Config, SourceConfig};
use backup_core::state::{BinlogGap, StateStore};

/// How often the state's "caught up" time is refreshed while the server is idle.
const SYNC_EVERY: Duration = Duration::from_secs(5);

/// Why following stops.
#[derive(Debug)]
pub enum Stop {
    /// Shutdown: the whole transactions held in memory are stored first.
    Flush,
    /// The archiver lease was lost: another agent may be archiving already, so nothing
    /// more is stored here (what is held is fetched again by the holder).
    Abandon(String),
}

/// Follows `src`'s binary log until `stop` resolves (Ok, or Err(LeaseLost) when told to
/// abandon) or something fails (Err; the caller retries).
pub async fn follow(
    cfg: &Config,
    src: &SourceConfig,
    bl: &BinlogConfig,
    keys: &SealingKeys,
    state: &StateStore,
    alerter: &Alerter,
    stop: impl Future<Output = Stop>,
) -> Result<(), ArchiveError> {
    let fail = |message: String| ArchiveError::Stream {
        source_name: src.name.clone(),
        message,
    };
    let stores: Vec<OpenStore> =
        tokio::task::block_in_place(|| crate::copies::inventory::open_all(cfg));
    let mut reader = super::connect_reader(cfg, src).await.map_err(fail)?;
    let start = start_position(cfg, src, &stores, state, &mut reader.conn)
        .await
        .map_err(fail)?;
    let pos =
        GtidPos::parse(&start).ok_or_else(|| fail(format!("{start:?} is not a GTID position")))?;
    let asked = super::start_for_server(&mut reader, &pos)
        .await
        .map_err(fail)?;
    let super::Reader {
        node,
        conn,
        cluster_domain,
    } = reader;
    let node = &node;
    let connect = || super::reconnect(src, node);
    tracing::info!(event = "binlog_follow", source = %src.name, node = %node.name, from = %start);
    let id = super::reader_server_id(&cfg.agent.name, &src.name);
    let opened = match binlog::open(conn, &asked, id, false).await {
        Ok(s) => Ok(s),
        Err(e) if e.is_purged() => Err(e),
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            let mut c = connect().await.map_err(fail)?;
            gap(src, state, alerter, &start, &mut c, &e.to_string()).await?;
            return Err(ArchiveError::Gap {
                source_name: src.name.clone(),
            });
        }
    };
    let level = cfg
        .encryption
        .as_ref()
        .map_or(backup_core::config::DEFAULT_COMPRESSION_LEVEL, |e| {
            e.compression_level
        });
    let from = SegmentFrom {
        source: src,
        node,
        agent: &cfg.agent.name,
    };
    // The stores the last stored segment missed (None: nothing stored since the last look).
    let missed: std::sync::Mutex<Option<Vec<(String, String)>>> = Default::default();
    let store = |seg: Segment| -> Result<(), ArchiveError> {
        let a = tokio::task::block_in_place(|| archive_segment(&stores, keys, level, &from, &seg))?;
        record_stored(state, &src.name, &seg).map_err(fail)?;
        for (st, e) in &a.failed {
            tracing::warn!(event = "segment_store_failed", source = %src.name, store = %st, error = %e);
        }
        *missed.lock().expect("lock") = Some(a.failed.clone());
        tracing::info!(event = "segment_archived", source = %src.name, segment = %a.manifest.segment_id, first = %a.manifest.first_gtid, last = %a.manifest.last_gtid, transactions = a.manifest.transactions, stores = %a.stores.join(","));
        Ok(())
    };
    let had_error = state
        .load()
        .ok()
        .and_then(|s| s.sources.get(&src.name).map(|x| x.binlog.error.is_some()))
        .unwrap_or(false);
    let mut recovered = !had_error;
    let max = usize::try_from(bl.segment_max_size).unwrap_or(usize::MAX);
    let mut b = SegmentBuilder::new(pos).only_domain(cluster_domain);
    let mut opened_at: Option<Instant> = None;
    let mut last_rx = Instant::now();
    let mut last_sync: Option<Instant> = None;
    tokio::pin!(stop);
    let result = loop {
        let next = tokio::select! {
            why = &mut stop => {
                // Shutdown: what is whole is stored; a transaction in flight is fetched
                // again at the next start.
                if let Stop::Abandon(why) = why {
                    break Err(ArchiveError::LeaseLost { source_name: src.name.clone(), why });
                }
                let flushed = if b.at_boundary() { b.finish().map(&store).transpose() } else { Ok(None) };
                break flushed.map(|_| ());
            }
            r = tokio::time::timeout(Duration::from_secs(1), stream.next()) => r,
        };
        let mut idle = false;
        match next {
            Ok(Ok(Some(e))) => {
                last_rx = Instant::now();
                if e.kind == crate::source::binlog::kind::HEARTBEAT {
                    idle = true;
                } else {
                    // Continuity: in each domain, the next transaction is the one after the
                    // archived position; a jump means the server no longer had the ones
                    // between (purged): the chain is cut there, never papered over.
                    if let Some((resumed, reason)) = b.jump(&e) {
                        let after = b.position().to_string();
                        if let Some(seg) = b.finish() {
                            if let Err(e) = store(seg) {
                                break Err(e);
                            }
                        }
                        opened_at = None;
                        if let Err(e) =
                            record_gap(src, state, alerter, &after, &resumed.to_string(), &reason)
                                .await
                        {
                            break Err(e);
                        }
                        b.restart_at(resumed.clone());
                    }
                    if e.gtid.is_some() && b.at_boundary() && b.len() >= max {
                        if let Some(seg) = b.finish() {
                            if let Err(e) = store(seg) {
                                break Err(e);
                            }
                            opened_at = None;
                        }
                    }
                    if b.push(&e) {
                        if let Some(seg) = b.finish() {
                            if let Err(e) = store(seg) {
                                break Err(e);
                            }
                            opened_at = None;
                        }
                        b.push(&e);
                    }
                    if !b.is_empty() && opened_at.is_none() {
                        opened_at = Some(Instant::now());
                    }
                }
            }
            Ok(Ok(None)) => break Err(fail("the server ended the binary log stream".into())),
            Ok(Err(e)) if e.is_purged() && b.is_empty() => {
                let mut c = match connect().await {
                    Ok(c) => c,
                    Err(e) => break Err(fail(e.to_string())),
                };
                if let Err(e) = gap(
                    src,
                    state,
                    alerter,
                    &b.position().to_string(),
                    &mut c,
                    &e.to_string(),
                )
                .await
                {
                    break Err(e);
                }
                break Err(ArchiveError::Gap {
                    source_name: src.name.clone(),
                });
            }
            Ok(Err(e)) => break Err(fail(e.to_string())),
            Err(_) => {
                idle = true;
                if last_rx.elapsed() > Duration::from_secs(3 * u64::from(HEARTBEAT_SECS)) {
                    break Err(fail(format!(
                        "no event and no heartbeat from the server for {}s; reconnecting",
                        last_rx.elapsed().as_secs()
                    )));
                }
            }
        }
        if b.at_boundary()
            && !b.is_empty()
            && opened_at.is_some_and(|t| t.elapsed() >= bl.segment_max_age)
        {
            if let Some(seg) = b.finish() {
                if let Err(e) = store(seg) {
                    break Err(e);
                }
            }
            opened_at = None;
        }
        // A segment that missed a store is below the policy until repair copies it: the
        // condition holds while the segments being stored miss stores.
        let last_missed = missed.lock().expect("lock").take();
        if let Some(failed) = last_missed {
            alerter
                .condition(
                    &format!("{}/binlog_copies", src.name),
                    !failed.is_empty(),
                    || {
                        Alert::new(
                            "policy_degraded",
                            &src.name,
                            false,
                            format!(
                                "source {}: binary log segments are not stored on every store ({}); run backup-agent repair once the store is back",
                                src.name,
                                failed.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>().join("; ")
                            ),
                        )
                    },
                    &src.name,
                )
                .await;
        }
        // Caught up: nothing waits in memory and the server has nothing more for now.
        if idle
            && b.is_empty()
            && b.at_boundary()
            && last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY)
        {
            last_sync = Some(Instant::now());
            let now = chrono::Utc::now();
            let _ = state.update(|s| {
                let e = s.sources.entry(src.name.clone()).or_default();
                e.binlog.synced_at = Some(now);
                e.binlog.error = None;
                e.binlog.error_since = None;
            });
            if !recovered {
                recovered = true;
                alerter
                    .clear(&format!("{}/binlog", src.name), &src.name)
                    .await;
            }
        }
    };
    // The stream broke (server gone, network): the whole transactions already received
    // are stored, so that a server that never comes back loses nothing it had sent.
    if matches!(result, Err(ArchiveError::Stream { .. })) && b.at_boundary() {
        if let Some(seg) = b.finish() {
            if let Err(e) = store(seg) {
                tracing::error!(event = "segment_flush_failed", source = %src.name, error = %e);
            }
        }
    }
    stream.close().await;
    result
}

/// The GTID position at the start of the oldest binary log the server still holds (its
/// GTID list event): archiving after a gap goes on from there, losing only what was
/// purged.
async fn oldest_position(conn: &mut mysql_async::Conn) -> Option<String> {
    let logs: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.ok()?;
    let first: String = logs.first()?.get(0)?;
    let events: Vec<mysql_async::Row> = conn
        .query(format!(
            "SHOW BINLOG EVENTS IN {} LIMIT 5",
            backup_core::format::quote_str(&first)
        ))
        .await
        .ok()?;
    events.iter().find_map(|r| {
        let kind: String = r.get("Event_type")?;
        let info: String = r.get("Info")?;
        (kind == "Gtid_list").then(|| {
            info.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
    })
}

/// Records a gap: the server no longer has the binary log after `after`. Archiving goes
/// on from the server's current position.
pub(crate) async fn gap(
    src: &SourceConfig,
    state: &StateStore,
    alerter: &Alerter,
    after: &str,
    conn: &mut mysql_async::Conn,
    reason: &str,
) -> Result<(), ArchiveError> {
    let fail = |message: String| ArchiveError::Stream {
        source_name: src.name.clone(),
        message,
    };
    let resumed: String = match oldest_position(conn).await {
        Some(p) => p,
        None => conn
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .map_err(|e| {
                fail(format!(
                    "reading the server's GTID position after a gap: {e}"
                ))
            })?
            .unwrap_or_default(),
    };
    // Never back: where the archive already is, a domain goes on from there (the server
    // may have refused the request for another domain's sake).
    let resumed = match (GtidPos::parse(after), GtidPos::parse(&resumed)) {
        (Some(a), Some(r)) => a.later(&r).to_string(),
        _ => resumed,
    };
    record_gap(src, state, alerter, after, &resumed, reason).await
}

/// Records a gap between `after` (where the archive ends) and `resumed` (where it goes
/// on), and raises the `binlog_gap` condition.
pub(crate) async fn record_gap(
    src: &SourceConfig,
    state: &StateStore,
    alerter: &Alerter,
    after: &str,
    resumed: &str,
    reason: &str,
) -> Result<(), ArchiveError> {
    let fail = |message: String| ArchiveError::Stream {
        source_name: src.name.clone(),
        message,
    };
    let resumed = resumed.to_string();
    let now = chrono::Utc::now();
    let mut window_end = None;
    state
        .update(|s| {
            let e = s.sources.entry(src.name.clone()).or_default();
            window_end = e.binlog.last_event_at.or(e.binlog.synced_at);
            e.binlog.gap = Some(BinlogGap {
                after_gtid: after.to_string(),
                resumed_at_gtid: resumed.clone(),
                found_at: now,
                reason: reason.to_string(),
                window_end,
            });
            e.binlog.gaps_total += 1;
            e.binlog_position = Some(resumed.clone());
        })
        .map_err(|e| fail(e.to_string()))?;
    let msg = format!(
        "source {}: gap in the archived binary log: the server no longer holds the log after GTID {after} (purged before it was archived); archiving goes on from {resumed}. Point-in-time recovery ends at {} until the next backup; take a backup now and keep binlog_expire_logs_seconds longer than the longest outage",
        src.name,
        window_end.map(|t| t.to_rfc3339()).unwrap_or_else(|| "the archive's last event".into())
    );
    tracing::error!(event = "binlog_gap", source = %src.name, after = %after, resumed = %resumed);
    // The same condition the daemon's freshness timer keeps while the gap is open (one
    // alert now, repeats at the repeat interval, "recovered" after the next backup).
    alerter
        .condition(
            &format!("{}/binlog_gap", src.name),
            true,
            || {
                let mut a = Alert::new("binlog_gap", &src.name, false, msg);
                a.details = serde_json::json!({"after_gtid": after, "resumed_at_gtid": resumed, "reason": reason});
                a
            },
            &src.name,
        )
        .await;
    Ok(())
}
