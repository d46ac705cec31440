//! Point-in-time recovery, the writing side: a binary log segment sealed exactly like a
//! dump (gzip, OpenPGP to the DPO's keys, signed by the agent), stored with its `.sha256`,
//! the detached signature of its manifest and the manifest, written last, in every store.
//! Each copy is read back and hashed before its manifest is written; a store that fails
//! drops out and what it got of the segment is removed. A segment is bounded (its size
//! limit), so it is sealed in memory: no plaintext reaches a disk.

use std::io::{Read, Write};

pub mod follow;

use mysql_async::prelude::*;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::copies::inventory::OpenStore;
use crate::seal::crypto::{CryptoError, SealingKeys};
use crate::source::binlog::Segment;
use backup_core::checksum::{self, hash_stream};
use backup_core::config::{NodeConfig, SourceConfig};
use backup_core::layout::{
    self, MANIFEST_SUFFIX, SEGMENT_DATA_SUFFIX, SEGMENT_SHA256_SUFFIX, SIGNATURE_SUFFIX,
};
use backup_core::manifest::{DataObject, SegmentManifest, SEGMENT_MANIFEST_VERSION};
use backup_core::store::{put_bytes, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("source {source_name}: sealing segment {segment}: {err}")]
    Seal {
        source_name: String,
        segment: String,
        err: CryptoError,
    },
    #[error("source {source_name}: {message}")]
    Stream {
        source_name: String,
        message: String,
    },
    /// The archiver lease was lost; another agent archives (nothing more stored here).
    #[error("source {source_name}: {why}; archiving stopped here (another agent archives)")]
    LeaseLost { source_name: String, why: String },
    /// A gap was found and recorded; archiving goes on from the oldest log the server has.
    #[error("source {source_name}: gap in the binary log (recorded); archiving restarts")]
    Gap { source_name: String },
    #[error("source {source_name}: segment {segment} is in no store: {}", failures.iter().map(|(s, e)| format!("store {s}: {e}")).collect::<Vec<_>>().join("; "))]
    NoCopy {
        source_name: String,
        segment: String,
        failures: Vec<(String, String)>,
    },
}

/// Where a segment's events came from.
pub struct SegmentFrom<'a> {
    pub source: &'a SourceConfig,
    pub node: &'a NodeConfig,
    /// This agent's name.
    pub agent: &'a str,
}

/// A stored segment: its manifest, the stores that hold a verified copy, the ones that
/// failed.
#[derive(Debug)]
pub struct Archived {
    pub manifest: SegmentManifest,
    pub stores: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Gzip then OpenPGP (signed, encrypted to the DPO), in memory.
pub fn seal_bytes(keys: &SealingKeys, level: u32, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let io = |e: std::io::Error| CryptoError::Seal(e.to_string());
    let mut out = Vec::with_capacity(data.len() / 3 + 4096);
    {
        let sealer = keys.seal(&mut out)?;
        let mut gz = GzEncoder::new(sealer, Compression::new(level));
        gz.write_all(data).map_err(io)?;
        gz.finish().map_err(io)?.finish()?;
    }
    Ok(out)
}

fn utc(t: Option<u32>) -> String {
    chrono::DateTime::from_timestamp(i64::from(t.unwrap_or(0)), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Seals `seg` and stores it in every store that can take it.
pub fn archive_segment(
    stores: &[OpenStore],
    keys: &SealingKeys,
    level: u32,
    from: &SegmentFrom<'_>,
    seg: &Segment,
) -> Result<Archived, ArchiveError> {
    let sname = from.source.name.clone();
    let first = seg.first_gtid.clone().unwrap_or_default();
    let first_time = chrono::DateTime::from_timestamp(i64::from(seg.first_time.unwrap_or(0)), 0)
        .unwrap_or_default();
    let id = layout::segment_id(first_time, &first);
    let seal_err = |err| ArchiveError::Seal {
        source_name: sname.clone(),
        segment: id.clone(),
        err,
    };
    let sealed = seal_bytes(keys, level, &seg.bytes).map_err(seal_err)?;
    let sum = hash_stream(&sealed[..]).expect("hashing memory");
    let manifest = SegmentManifest {
        format_version: SEGMENT_MANIFEST_VERSION,
        segment_id: id.clone(),
        source: sname.clone(),
        node: from.node.name.clone(),
        address: from.node.endpoint.to_string(),
        server_id: seg.server_id.unwrap_or(0),
        previous_gtid: seg.previous_position.clone(),
        end_position: seg.end_position.clone(),
        first_gtid: first,
        last_gtid: seg.last_gtid.clone().unwrap_or_default(),
        first_event_at: utc(seg.first_time),
        last_event_at: utc(seg.last_time),
        transactions: seg.transactions,
        binlog_bytes: seg.bytes.len() as u64,
        data: DataObject {
            name: format!("{id}{SEGMENT_DATA_SUFFIX}"),
            size: sum.size,
            sha256: sum.sha256.clone(),
            compression: "gzip".into(),
            encryption: "openpgp-seipdv1-aes256".into(),
        },
        dpo_recipients: keys.recipient_fingerprints(),
        signer: keys.signer_fingerprint().to_string(),
        tool_version: format!("backup-agent {}", env!("CARGO_PKG_VERSION")),
        archived_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        agent: Some(from.agent.to_string()),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    let signature = keys.sign_detached(&bytes).map_err(seal_err)?;
    let mut out = Archived {
        manifest,
        stores: Vec::new(),
        failed: Vec::new(),
    };
    let prefix = &from.source.prefix;
    let sha_line = checksum::sha256_line(&sum.sha256, &out.manifest.data.name);
    for os in stores {
        let store = match &os.store {
            Ok(s) => s.as_ref(),
            Err(e) => {
                out.failed.push((os.cfg.name.clone(), e.to_string()));
                continue;
            }
        };
        let objects: [(&str, &[u8]); 4] = [
            (SEGMENT_DATA_SUFFIX, &sealed),
            (SEGMENT_SHA256_SUFFIX, sha_line.as_bytes()),
            (SIGNATURE_SUFFIX, &signature),
            (MANIFEST_SUFFIX, &bytes),
        ];
        let mut written = Vec::new();
        match store_one(
            store,
            prefix,
            &id,
            &objects,
            &sum.sha256,
            &out.manifest.end_position,
            &mut written,
        ) {
            Ok(()) => out.stores.push(os.cfg.name.clone()),
            Err(e) => {
                // Only what this attempt wrote: an existing segment is never touched.
                for key in written.iter().rev() {
                    let _ = store.remove(key);
                }
                let removed = if written.is_empty() {
                    ""
                } else {
                    "; what was written of it was removed"
                };
                out.failed
                    .push((os.cfg.name.clone(), format!("{e}{removed}")));
            }
        }
    }
    if out.stores.is_empty() {
        return Err(ArchiveError::NoCopy {
            source_name: sname,
            segment: id,
            failures: out.failed,
        });
    }
    Ok(out)
}

/// Writes a segment's objects to one store in order, the data read back and hashed
/// before the rest. A segment whose manifest is already there is never touched: if it
/// ends where this one does, it is this segment stored before a crash (nothing to do);
/// otherwise the store is refused. Objects without a manifest are the debris of a store
/// that was interrupted (they are no segment): they are replaced.
fn store_one(
    store: &dyn Store,
    prefix: &str,
    id: &str,
    objects: &[(&str, &[u8]); 4],
    sha256: &str,
    end_position: &str,
    written: &mut Vec<String>,
) -> Result<(), StoreError> {
    let key = |suffix: &str| layout::segment_key(prefix, id, suffix);
    if store.exists(&key(MANIFEST_SUFFIX))? {
        let mut text = Vec::new();
        store
            .open(&key(MANIFEST_SUFFIX))?
            .take(backup_core::catalog::MAX_MANIFEST_BYTES)
            .read_to_end(&mut text)
            .map_err(|source| StoreError::Io {
                store: store.name().into(),
                action: "reading",
                key: key(MANIFEST_SUFFIX),
                source,
            })?;
        // The sealed bytes differ every time (a new session key); the events do not.
        let same = serde_json::from_slice::<SegmentManifest>(&text)
            .is_ok_and(|m| m.end_position == end_position);
        if same {
            return Ok(());
        }
        return Err(StoreError::Exists {
            store: store.name().into(),
            key: key(MANIFEST_SUFFIX),
        });
    }
    for (suffix, _) in &objects[..3] {
        if store.exists(&key(suffix))? {
            tracing::warn!(event = "segment_debris_replaced", store = %store.name(), key = %key(suffix));
            store.remove(&key(suffix))?;
        }
    }
    let (data_suffix, data) = objects[0];
    put_bytes(store, &key(data_suffix), data)?;
    written.push(key(data_suffix));
    backup_core::os::test_kill_point("segment-data");
    let got = store.open(&key(data_suffix)).and_then(|r| {
        hash_stream(r.take(data.len() as u64 + 1)).map_err(|source| StoreError::Io {
            store: store.name().into(),
            action: "reading back",
            key: key(data_suffix),
            source,
        })
    })?;
    if got.sha256 != sha256 || got.size != data.len() as u64 {
        return Err(StoreError::Remote {
            store: store.name().into(),
            action: "reading back",
            key: key(data_suffix),
            message: format!(
                "the stored copy has {} bytes sha256 {}, not what was written",
                got.size, got.sha256
            ),
        });
    }
    for (suffix, bytes) in &objects[1..] {
        put_bytes(store, &key(suffix), bytes)?;
        written.push(key(suffix));
        if *suffix == SIGNATURE_SUFFIX {
            backup_core::os::test_kill_point("segment-signature");
        }
    }
    backup_core::os::test_kill_point("segment-manifest");
    Ok(())
}

/// A connection to `node` of `src` with the source's credential (read anew each time).
pub(crate) async fn reconnect(
    src: &SourceConfig,
    node: &backup_core::config::NodeConfig,
) -> Result<mysql_async::Conn, String> {
    let password =
        backup_core::secret::read_secret_file(&src.password_file.path, &src.password_file.key)
            .map_err(|e| e.to_string())?;
    crate::source::dump::connect(src, &node.endpoint, &password)
        .await
        .map_err(|e| e.to_string())
}

/// The node a source's binary log is read from, and a connection to it: a standalone
/// source's node; for a Galera source, a node chosen like the dump's (reachable, ready,
/// in the Primary component, own site first, least loaded; a desynced node serves too,
/// its binary log is whole), whose GTIDs are the cluster's ([`galera_gtid_problems`]).
/// Because every node numbers the cluster's transactions alike, archiving goes on from
/// any node at the last archived GTID: no gap, no duplicate.
pub(crate) async fn connect_reader(
    cfg: &backup_core::config::Config,
    src: &SourceConfig,
) -> Result<Reader, String> {
    if src.galera.is_none() {
        let node = src.nodes[0].clone();
        let conn = reconnect(src, &node).await?;
        return Ok(Reader {
            node,
            conn,
            cluster_domain: None,
        });
    }
    let password =
        backup_core::secret::read_secret_file(&src.password_file.path, &src.password_file.key)
            .map_err(|e| e.to_string())?;
    let probes = crate::source::galera::probe_all(src, &password).await;
    let any: Vec<String> = src.nodes.iter().map(|n| n.name.clone()).collect();
    let i = crate::source::galera::choose(&probes, &cfg.agent.site, &any)
        .map_err(|e| format!("choosing the node to read the binary log from: {e}"))?;
    let node = src.nodes[i].clone();
    let mut conn = reconnect(src, &node).await?;
    let (problems, cluster_domain) = galera_gtid(&mut conn).await;
    if !problems.is_empty() {
        let _ = conn.disconnect().await;
        return Err(format!(
            "node {} ({}): {}",
            node.name,
            node.endpoint,
            problems.join("; ")
        ));
    }
    Ok(Reader {
        node,
        conn,
        cluster_domain,
    })
}

/// The node the binary log is read from, a connection to it, and for a Galera node the
/// cluster's GTID domain: only its transactions are archived (the others are a node's
/// own: not replicated, or replicated under the node's domain and numbered differently on
/// each node), so that any node continues the archive exactly.
pub(crate) struct Reader {
    pub node: NodeConfig,
    pub conn: mysql_async::Conn,
    pub cluster_domain: Option<u32>,
}

/// The position to ask `conn`'s server for: `start` without the domains its binary log
/// never had (another Galera node's local domain: the server would refuse the whole
/// request as if the log were purged). A domain it lacks that matters (the cluster's)
/// shows as a jump in the stream and is recorded as a gap.
pub(crate) async fn start_for_server(
    r: &mut Reader,
    start: &crate::source::binlog::GtidPos,
) -> Result<String, String> {
    if let Some(d) = r.cluster_domain {
        // A Galera node: the cluster's domain from the archived position; the node's other
        // domains (left out of the archive) at their current end. The server looks for the
        // binary log file to start in by every domain its files list: a domain missing
        // from the request, or behind the node's oldest file, would make it refuse the
        // request as if the log were purged.
        let now: String = r
            .conn
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .map_err(|e| format!("reading the node's GTID position: {e}"))?
            .unwrap_or_default();
        let mut req = crate::source::binlog::GtidPos::parse(&now)
            .unwrap_or_default()
            .only(|x| x != d);
        if let Some(g) = start.domains().find(|g| g.domain == d) {
            req.advance_to(g);
        }
        return Ok(req.to_string());
    }
    let state: String = r
        .conn
        .query_first("SELECT @@gtid_binlog_state")
        .await
        .map_err(|e| format!("reading the server's GTID state: {e}"))?
        .unwrap_or_default();
    let has = crate::source::binlog::GtidPos::parse(&state).unwrap_or_default();
    Ok(start.only(|d| has.seq(d).is_some()).to_string())
}

/// What a Galera node needs for its binary log to be the cluster's, readable from any
/// node at the same GTID (nothing for a standalone server): `wsrep_gtid_mode=ON` with one
/// `wsrep_gtid_domain_id` on every node, `log_slave_updates=ON` (else a node logs only
/// what was written on it), and a `gtid_domain_id` of its own for what it writes outside
/// the cluster.
pub(crate) async fn galera_gtid_problems(conn: &mut mysql_async::Conn) -> Vec<String> {
    galera_gtid(conn).await.0
}

/// The problems of [`galera_gtid_problems`], and the cluster's GTID domain (None for a
/// server that is not a Galera node).
async fn galera_gtid(conn: &mut mysql_async::Conn) -> (Vec<String>, Option<u32>) {
    type Settings = (String, String, String, u32, u32);
    let row: Result<Option<Settings>, _> = conn
        .query_first(
            "SELECT @@wsrep_on, @@wsrep_gtid_mode, @@log_slave_updates, @@wsrep_gtid_domain_id, @@gtid_domain_id",
        )
        .await;
    let (wsrep, mode, slave_updates, cluster_domain, local_domain) = match row {
        Ok(Some(r)) => r,
        // A server without Galera (no wsrep variables) is not a cluster node.
        Ok(None) | Err(_) => return (Vec::new(), None),
    };
    if wsrep != "1" {
        return (Vec::new(), None);
    }
    let mut v = Vec::new();
    if mode != "1" {
        v.push("wsrep_gtid_mode is OFF: each node then numbers the cluster's transactions its own way, so archiving could not go on from another node without a gap or a duplicate; set wsrep_gtid_mode=ON and one wsrep_gtid_domain_id on every node (and each node a gtid_domain_id of its own), then restart the nodes one at a time".to_string());
    }
    if slave_updates != "1" {
        v.push("log_slave_updates is OFF: the node's binary log holds only what was written on it, not the cluster's other transactions; set log_slave_updates=ON on every node and restart them one at a time".to_string());
    }
    if mode == "1" && local_domain == cluster_domain {
        v.push(format!(
            "gtid_domain_id is {local_domain}, the cluster's wsrep_gtid_domain_id: what a node writes outside the cluster would then be numbered in the cluster's domain; give each node a gtid_domain_id of its own (e.g. 10 + its number)"
        ));
    }
    (v, Some(cluster_domain))
}

/// The id a replication connection of this agent gives itself for `source`: in a range of
/// its own (4 000 000 000 + 200 million), drawn anew for each connection from the agent and
/// source names, the process and the time. The server refuses a second reader with the
/// id of one still connected (error 4052), so two agents, or two runs, must never share
/// one; nothing needs it to stay the same across connections.
pub fn reader_server_id(agent: &str, source: &str) -> u32 {
    use sha2::Digest;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h =
        sha2::Sha256::digest(format!("{agent}/{source}/{}/{nanos}", std::process::id()).as_bytes());
    let h: [u8; 4] = h[..4].try_into().expect("4 bytes");
    4_000_000_000 + u32::from_le_bytes(h) % 200_000_000
}

/// Where archiving of `src` starts the first time: the snapshot GTID of the newest backup
/// in the stores (so that the chain reaches back to a backup), else None.
fn newest_backup_gtid(
    cfg: &backup_core::config::Config,
    src: &SourceConfig,
    stores: &[OpenStore],
) -> Option<String> {
    let trust = crate::seal::crypto::manifest_trust(cfg.encryption.as_ref()).ok()?;
    stores
        .iter()
        .filter_map(|os| os.store.as_ref().ok())
        .filter_map(|s| {
            backup_core::catalog::complete_backups(s.as_ref(), &src.prefix, &trust).ok()
        })
        .flat_map(|l| l.backups)
        .filter_map(|m| m.binlog.and_then(|b| b.gtid).map(|g| (m.backup_id, g)))
        .max()
        .map(|(_, g)| g)
}

/// Where archiving of `src` continues: the end of the stored chain that continues the
/// state's position; the first time (or on an agent that never archived, such as the
/// other site's agent taking over), the one that continues the newest backup's snapshot
/// GTID, else the newest stored segment's end, else the server's current position. It is
/// recorded at once, so that the chain starts there even if nothing is archived yet.
pub(crate) async fn start_position(
    cfg: &backup_core::config::Config,
    src: &SourceConfig,
    stores: &[OpenStore],
    state: &backup_core::state::StateStore,
    conn: &mut mysql_async::Conn,
) -> Result<String, String> {
    let known = state
        .load()
        .map_err(|e| e.to_string())?
        .sources
        .get(&src.name)
        .and_then(|s| s.binlog_position.clone());
    let segs = tokio::task::block_in_place(|| stored_segments(cfg, src, stores));
    let from = match known {
        Some(p) => Some(p),
        None => tokio::task::block_in_place(|| newest_backup_gtid(cfg, src, stores)),
    };
    let p = match from {
        Some(p) => stored_chain_end(src, &segs, p),
        None => match newest_segment_end(&segs) {
            Some(p) => p,
            None => conn
                .query_first::<String, _>("SELECT @@gtid_binlog_pos")
                .await
                .map_err(|e| format!("reading the server's GTID position: {e}"))?
                .unwrap_or_default(),
        },
    };
    state
        .update(|s| {
            s.sources
                .entry(src.name.clone())
                .or_default()
                .binlog_position = Some(p.clone())
        })
        .map_err(|e| e.to_string())?;
    Ok(p)
}

/// Every trusted segment manifest of `src` in the stores (a segment in several stores
/// comes once per store).
fn stored_segments(
    cfg: &backup_core::config::Config,
    src: &SourceConfig,
    stores: &[OpenStore],
) -> Vec<SegmentManifest> {
    let Ok(trust) = crate::seal::crypto::manifest_trust(cfg.encryption.as_ref()) else {
        return Vec::new();
    };
    stores
        .iter()
        .filter_map(|os| os.store.as_ref().ok())
        .filter_map(|s| {
            backup_core::catalog::complete_segments(s.as_ref(), &src.prefix, &trust).ok()
        })
        .flat_map(|l| l.segments)
        .collect()
}

/// The end of the newest stored segment (by its last event), when no backup anchors the
/// chain.
fn newest_segment_end(segs: &[SegmentManifest]) -> Option<String> {
    segs.iter()
        .max_by(|a, b| (&a.last_event_at, &a.segment_id).cmp(&(&b.last_event_at, &b.segment_id)))
        .map(|m| m.end_position.clone())
}

/// The end of the chain of stored segments that continues from `p`: segments stored
/// before a crash kept the state from recording them (the state moves after the store),
/// and segments another agent stored while it held the archiver lease continue it too.
fn stored_chain_end(src: &SourceConfig, segs: &[SegmentManifest], p: String) -> String {
    let Some(from) = crate::source::binlog::GtidPos::parse(&p) else {
        return p;
    };
    let all: Vec<&SegmentManifest> = segs.iter().collect();
    let chain = backup_core::catalog::chain_after(&all, &from);
    match chain.last() {
        Some(last) => {
            tracing::info!(event = "segment_found_stored", source = %src.name, segments = chain.len(), last = %last.segment_id, "stored before this agent (re)started; archiving continues after them");
            last.end_position.clone()
        }
        None => p,
    }
}

/// After a segment is stored: the chain's position moves past it, the newest archived
/// event's time is its last one's, and a past archiving error is over.
pub(crate) fn record_stored(
    state: &backup_core::state::StateStore,
    source: &str,
    seg: &Segment,
) -> Result<(), String> {
    state
        .update(|s| {
            let e = s.sources.entry(source.to_string()).or_default();
            e.binlog_position = Some(seg.end_position.clone());
            if let Some(t) = seg
                .last_time
                .and_then(|t| chrono::DateTime::from_timestamp(i64::from(t), 0))
            {
                e.binlog.last_event_at = Some(t);
            }
            e.binlog.error = None;
            e.binlog.error_since = None;
        })
        .map_err(|e| e.to_string())?;
    backup_core::os::test_kill_point("segment-recorded");
    Ok(())
}

/// One archiving pass of a source: its binary log from where the last pass ended (the
/// state's position; the first time, the newest backup's snapshot GTID, else the
/// server's current position) to the log's current end, in segments of at most
/// `max_bytes` (cut between transactions), each stored in every store before the state's
/// position moves past it: a pass that fails loses nothing, the next one starts again
/// from the last stored segment.
pub async fn archive_until_now(
    cfg: &backup_core::config::Config,
    src: &SourceConfig,
    keys: &SealingKeys,
    state: &backup_core::state::StateStore,
    max_bytes: usize,
) -> Result<Vec<Archived>, ArchiveError> {
    use crate::source::binlog::{self, GtidPos, SegmentBuilder};
    let fail = |message: String| ArchiveError::Stream {
        source_name: src.name.clone(),
        message,
    };
    let stores: Vec<OpenStore> =
        tokio::task::block_in_place(|| crate::copies::inventory::open_all(cfg));
    let mut reader = connect_reader(cfg, src).await.map_err(fail)?;
    let start = start_position(cfg, src, &stores, state, &mut reader.conn)
        .await
        .map_err(fail)?;
    let pos =
        GtidPos::parse(&start).ok_or_else(|| fail(format!("{start:?} is not a GTID position")))?;
    let asked = start_for_server(&mut reader, &pos).await.map_err(fail)?;
    let Reader {
        node,
        conn,
        cluster_domain,
    } = reader;
    let node = &node;
    let id = reader_server_id(&cfg.agent.name, &src.name);
    let alerter = backup_core::alert::Alerter::new(cfg.alerts.clone(), state.clone());
    let purged = |e: &binlog::BinlogError| e.is_purged();
    let mut stream = match binlog::open(conn, &asked, id, true).await {
        Ok(s) => s,
        Err(e) if purged(&e) => {
            let mut c = reconnect(src, node).await.map_err(fail)?;
            follow::gap(src, state, &alerter, &start, &mut c, &e.to_string()).await?;
            return Err(ArchiveError::Gap {
                source_name: src.name.clone(),
            });
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut b = SegmentBuilder::new(pos).only_domain(cluster_domain);
    let mut out = Vec::new();
    let from = SegmentFrom {
        source: src,
        node,
        agent: &cfg.agent.name,
    };
    let mut store_seg = |seg: Segment| -> Result<(), ArchiveError> {
        let a = tokio::task::block_in_place(|| {
            archive_segment(
                &stores,
                keys,
                cfg.encryption
                    .as_ref()
                    .map_or(backup_core::config::DEFAULT_COMPRESSION_LEVEL, |e| {
                        e.compression_level
                    }),
                &from,
                &seg,
            )
        })?;
        record_stored(state, &src.name, &seg).map_err(fail)?;
        tracing::info!(event = "segment_archived", source = %src.name, segment = %a.manifest.segment_id, first = %a.manifest.first_gtid, last = %a.manifest.last_gtid, stores = %a.stores.join(","));
        out.push(a);
        Ok(())
    };
    loop {
        let e = match stream.next().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) if purged(&e) && b.is_empty() && out.is_empty() => {
                stream.close().await;
                let mut c = reconnect(src, node).await.map_err(fail)?;
                follow::gap(src, state, &alerter, &start, &mut c, &e.to_string()).await?;
                return Err(ArchiveError::Gap {
                    source_name: src.name.clone(),
                });
            }
            Err(e) => {
                stream.close().await;
                return Err(fail(e.to_string()));
            }
        };
        if let Some((resumed, reason)) = b.jump(&e) {
            let after = b.position().to_string();
            if let Some(seg) = b.finish() {
                store_seg(seg)?;
            }
            follow::record_gap(src, state, &alerter, &after, &resumed.to_string(), &reason).await?;
            b.restart_at(resumed);
        }
        if e.gtid.is_some() && b.at_boundary() && b.len() >= max_bytes {
            if let Some(seg) = b.finish() {
                store_seg(seg)?;
            }
        }
        if b.push(&e) {
            if let Some(seg) = b.finish() {
                store_seg(seg)?;
            }
            b.push(&e);
        }
    }
    stream.close().await;
    if !b.at_boundary() {
        return Err(fail(
            "the binary log ends inside a transaction; the next pass archives it whole".into(),
        ));
    }
    if let Some(seg) = b.finish() {
        store_seg(seg)?;
    }
    Ok(out)
}
