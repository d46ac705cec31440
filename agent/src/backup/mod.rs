//! One backup of one source: dump -> seal -> every store at once (one stream, teed), then
//! per store a verification of the stored object (read back and hashed, or HEAD-only
//! where the store asks for it), the `.sha256` file, and the manifest last. A store that
//! fails drops out without stopping the others; what it wrote for this backup is removed
//! again. The backup is made when at least one copy is verified.

pub mod journal;
pub mod slot;
pub mod units;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::copies;
use crate::seal::crypto::SealingKeys;
use crate::seal::pipeline::{self, PipelineError};
use crate::source::dump::{self, DumpError, DumpSummary, SqlOutput};
use backup_core::checksum::ObjectSum;
use backup_core::config::{EncryptionConfig, SourceConfig, StoreConfig};
use backup_core::layout;
use backup_core::layout::DATA_SUFFIX;
use backup_core::manifest::{self, DataObject, Manifest, SignedManifest};
use backup_core::secret::read_secret_file;
use backup_core::state::CopyMark;
use backup_core::store::{ObjectWriter, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("source {source_name}: {err}")]
    Secret {
        source_name: String,
        err: backup_core::secret::SecretError,
    },
    #[error("source {source_name}: {err}")]
    Dump {
        source_name: String,
        err: Box<DumpError>,
    },
    #[error("source {source_name}: {err}")]
    Pipeline {
        source_name: String,
        err: PipelineError,
    },
    #[error("source {source_name}: {err}")]
    Store {
        source_name: String,
        err: StoreError,
    },
    /// Node choice, desync or the cluster lease.
    #[error("source {source_name}: {message}")]
    Galera {
        source_name: String,
        message: String,
    },
    /// Another run of the same source holds its lock on this host.
    #[error("source {source_name}: another backup of this source is running on this host ({holder}); this run did nothing and the running one carries on")]
    Busy { source_name: String, holder: String },
    #[error("source {source_name}: cannot take the source's lock {path}: {err}; check the state_dir is writable")]
    Lock {
        source_name: String,
        path: String,
        err: std::io::Error,
    },
    #[error("source {source_name}: no store holds a verified copy, so there is no backup: {}", failures.iter().map(|(s, e)| named_store(s, e)).collect::<Vec<_>>().join("; "))]
    NoCopy {
        source_name: String,
        failures: Vec<(String, String)>,
    },
}

/// A store's failure, named once ("store s3: ..."), whether its message names it or not.
fn named_store(store: &str, e: &str) -> String {
    if e.starts_with(&format!("store {store}: ")) {
        e.to_string()
    } else {
        format!("store {store}: {e}")
    }
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub manifest: Manifest,
    /// Stores that hold a verified copy, with the verification.
    pub stores: Vec<String>,
    pub marks: Vec<(String, CopyMark)>,
    /// Stores that failed, with the reason (the policy verdict says what that costs).
    pub failed_stores: Vec<(String, String)>,
    pub duration_secs: f64,
    pub non_transactional: Vec<String>,
    pub rows: u64,
}

/// Which node to dump, and what the manifest's `galera` field adds to the position the
/// dump reads (node, site, desync, lease, attempts).
pub struct DumpFrom<'a> {
    pub node: &'a backup_core::config::NodeConfig,
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The connection budget of the source's server: the dump's helpers take from it
    /// what is free at the start (None: no budget, the helpers just open).
    pub spare: Option<Arc<tokio::sync::Semaphore>>,
}

impl BackupError {
    /// Whether the dump was aborted by a conflict with replicated writes or DDL
    /// (deadlock 1213), which a new attempt can get past.
    pub fn is_deadlock(&self) -> bool {
        match self {
            BackupError::Dump { err, .. } => matches!(
                err.as_ref(),
                DumpError::Server { source: mysql_async::Error::Server(e), .. } if e.code == 1213
            ),
            _ => false,
        }
    }
}

/// One store's part of a backup.
pub struct Target<'a> {
    pub cfg: &'a StoreConfig,
    pub store: Result<&'a dyn Store, &'a StoreError>,
}

/// A store's name and how its write ended.
type StoreOutcome = (String, Result<(), WriteFailed>);

/// Why one store's copy of the stream was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailed {
    #[error("{0}")]
    Write(Arc<io::Error>),
    #[error("{0}")]
    Commit(Arc<StoreError>),
    #[error("the run was cancelled before its end; the object was discarded")]
    Abandoned,
}

/// One stream, many stores: each write goes to every store still writing; a store whose
/// write fails drops out (its writer is dropped, which discards its object) and the
/// others go on. Fails only when no store is left.
struct Tee {
    slots: Vec<(String, Option<Box<dyn ObjectWriter>>)>,
    outcome: Arc<Mutex<Outcome>>,
}

/// Shared by a run and its sealing thread, which outlives the run when the run is dropped
/// (cancelled at shutdown, or its cluster lease lost) after the dump's end marker: how
/// each store's write ended (Ok: the data object is committed, i.e. visible), and whether
/// the run was abandoned.
#[derive(Default)]
struct Outcome {
    stores: Vec<StoreOutcome>,
    abandoned: bool,
}

/// Keeps a run from leaving anything visible unless it returns a backup: dropped (on an
/// error return or a cancellation) it stops the sealer from committing and removes what
/// was committed or published already, in every store.
struct Uncommitted<'a> {
    outcome: Arc<Mutex<Outcome>>,
    targets: &'a [Target<'a>],
    prefix: &'a str,
    id: String,
    kept: bool,
}

impl Drop for Uncommitted<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Waits for a commit in progress; later ones see `abandoned` and discard.
        let stores: Vec<String> = {
            let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            o.abandoned = true;
            o.stores
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in stores {
            let Some(Ok(store)) = self
                .targets
                .iter()
                .find(|t| t.cfg.name == name)
                .map(|t| t.store.as_ref())
            else {
                continue;
            };
            match copies::remove_backup(*store, self.prefix, &self.id) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::warn!(event = "unfinished_copy_removed", store = %name, backup = %self.id, "the run ended before this copy was complete and verified; removed")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(event = "unfinished_copy_left", store = %name, backup = %self.id, error = %e, "the run ended before this copy was complete; removing it failed (the next prune removes it as debris)")
                }
            }
        }
    }
}

impl Tee {
    fn fail(&mut self, i: usize, e: io::Error) {
        let name = self.slots[i].0.clone();
        self.slots[i].1 = None;
        self.outcome
            .lock()
            .expect("lock")
            .stores
            .push((name, Err(WriteFailed::Write(Arc::new(e)))));
    }
    fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.1.is_some()).count()
    }
    fn all_failed(&self) -> io::Error {
        let o = self.outcome.lock().expect("lock");
        io::Error::other(
            o.stores
                .iter()
                .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("store {n}: {e}")))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for i in 0..self.slots.len() {
            if let Some(w) = self.slots[i].1.as_mut() {
                if let Err(e) = w.write_all(buf) {
                    self.fail(i, e);
                }
            }
        }
        if self.live() == 0 {
            return Err(self.all_failed());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        for i in 0..self.slots.len() {
            if let Some(w) = self.slots[i].1.as_mut() {
                if let Err(e) = w.flush() {
                    self.fail(i, e);
                }
            }
        }
        if self.live() == 0 {
            return Err(self.all_failed());
        }
        Ok(())
    }
}

impl ObjectWriter for Tee {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        for i in 0..self.slots.len() {
            if let Some(w) = self.slots[i].1.take() {
                let name = self.slots[i].0.clone();
                // Held across the commit, so that an abandoning run waits for it and
                // removes what it made visible.
                let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
                let r = if o.abandoned {
                    drop(w);
                    Err(WriteFailed::Abandoned)
                } else {
                    w.commit().map_err(|e| WriteFailed::Commit(Arc::new(e)))
                };
                backup_core::os::test_kill_point(&format!("committed:{name}"));
                o.stores.push((name, r));
            }
        }
        let o = self.outcome.lock().expect("lock");
        if o.stores.iter().any(|(_, r)| r.is_ok()) {
            Ok(())
        } else {
            Err(StoreError::Remote {
                store: "every store".into(),
                action: "committing",
                key: "the data object".into(),
                message: o
                    .stores
                    .iter()
                    .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("store {n}: {e}")))
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        }
    }
}

/// Runs one backup of `source` into every target store.
pub async fn run_backup(
    source: &SourceConfig,
    enc: &EncryptionConfig,
    keys: Arc<SealingKeys>,
    targets: &[Target<'_>],
    started: chrono::DateTime<chrono::Utc>,
    from: &DumpFrom<'_>,
    journal: &std::path::Path,
) -> Result<BackupReport, BackupError> {
    let sname = source.name.clone();
    let t0 = Instant::now();
    let id = tokio::task::block_in_place(|| free_id(targets, &source.prefix, started));
    journal::record(journal, &id).map_err(|err| BackupError::Lock {
        source_name: sname.clone(),
        path: journal.display().to_string(),
        err,
    })?;

    let password = read_secret_file(&source.password_file.path, &source.password_file.key)
        .map_err(|err| BackupError::Secret {
            source_name: sname.clone(),
            err,
        })?;
    let mut conn = dump::connect(source, &from.node.endpoint, &password)
        .await
        .map_err(|err| BackupError::Dump {
            source_name: sname.clone(),
            err: Box::new(err),
        })?;
    // Helpers that read large tables open their connections during the dump; the
    // password goes when it ends.
    let connector = dump::Connector {
        source: source.clone(),
        endpoint: from.node.endpoint.clone(),
        password: Arc::new(password),
        spare: from.spare.clone(),
    };

    // Open the data object on every store that can take it.
    let (slots, descriptions, mut failures) = open_targets(targets, &source.prefix, &id);
    backup_core::os::test_kill_point("opened");
    if slots.is_empty() {
        let _ = conn.disconnect().await;
        return Err(BackupError::NoCopy {
            source_name: sname,
            failures,
        });
    }
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut uncommitted = Uncommitted {
        outcome: outcome.clone(),
        targets,
        prefix: &source.prefix,
        id: id.clone(),
        kept: false,
    };
    let tee = Box::new(Tee {
        slots,
        outcome: outcome.clone(),
    });
    let (tx, sealer) = pipeline::spawn_sealer(
        keys.clone(),
        source.name.clone(),
        enc.compression_level,
        enc.compression_threads as usize,
        tee,
        descriptions.join(", "),
    );
    let mut out = SqlOutput::new(tx.clone()).with_rate_limit(source.rate_limit);
    let description = format!(
        "backup-agent {} dump of source {}\nBackup {id}, started {}",
        env!("CARGO_PKG_VERSION"),
        source.name,
        started.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let dumped = dump::dump(
        &mut conn,
        source,
        &id,
        &description,
        &mut out,
        Some(&connector),
    )
    .await;
    drop(connector);
    let (summary, sealed) = match dumped {
        Ok(s) => {
            backup_core::os::test_kill_point("dumped");
            // End marker: the sealer finalizes and commits only after this.
            let sent = tx.send(Vec::new()).await;
            drop(out);
            drop(tx);
            let sealed = sealer.await;
            match (sent, sealed) {
                (Ok(()), Ok(Ok(sealed))) => (s, sealed),
                (_, Ok(Err(err))) => {
                    return Err(BackupError::Pipeline {
                        source_name: sname,
                        err,
                    })
                }
                (_, Err(e)) => {
                    return Err(BackupError::Pipeline {
                        source_name: sname,
                        err: PipelineError::Thread(e.to_string()),
                    })
                }
                (Err(_), Ok(Ok(_))) => {
                    unreachable!("the sealer cannot finish without the end marker")
                }
            }
        }
        Err(err) => {
            drop(out);
            drop(tx);
            // Let the sealer see the abort and drop its uncommitted objects.
            let sealed = sealer.await;
            let _ = conn.disconnect().await;
            // If the sealer itself failed first, its error is the cause.
            if let (DumpError::OutputClosed, Ok(Err(perr))) = (&err, sealed) {
                return Err(BackupError::Pipeline {
                    source_name: sname,
                    err: perr,
                });
            }
            return Err(BackupError::Dump {
                source_name: sname,
                err: Box::new(err),
            });
        }
    };
    let _ = conn.disconnect().await;

    let m = manifest_of(source, &id, started, t0, &summary, &sealed, &keys, from);
    let bytes = serde_json::to_vec_pretty(&m).expect("manifest serializes");
    let signature = keys
        .sign_detached(&bytes)
        .map_err(|e| BackupError::Pipeline {
            source_name: sname.clone(),
            err: PipelineError::Crypto(e),
        })?;
    let signed = SignedManifest {
        manifest: m,
        bytes,
        signature,
        signed_by: keys.signer_fingerprint().to_string(),
    };

    // Per store: the data object is visible; verify it, then the .sha256 file and the
    // manifest; if anything fails, remove this backup's objects from that store again.
    // Cloned, not taken: until this run returns its backup, the guard removes every
    // committed copy if the run is dropped or fails.
    let committed: Vec<StoreOutcome> = outcome.lock().expect("lock").stores.clone();
    let (stores, marks) =
        verify_and_publish(committed, targets, &source.prefix, &signed, &mut failures);
    if stores.is_empty() {
        return Err(BackupError::NoCopy {
            source_name: sname,
            failures,
        });
    }
    backup_core::os::test_kill_point("stored");
    uncommitted.kept = true;
    Ok(BackupReport {
        manifest: signed.manifest,
        stores,
        marks,
        failed_stores: failures,
        duration_secs: t0.elapsed().as_secs_f64(),
        non_transactional: summary.non_transactional,
        rows: summary.rows,
    })
}

/// The id of a new backup started at `started`: its second, or the next second no store
/// holds an object of (a backup that finished within the same second, a run of another
/// host without a lease, a tamperer's file). Runs of one source on one host are serialized
/// by the source's lock, so the id found stays free for this run; a writer elsewhere that
/// takes it meanwhile is stopped by the stores' refusal to overwrite.
fn free_id(targets: &[Target<'_>], prefix: &str, started: chrono::DateTime<chrono::Utc>) -> String {
    let taken = |id: &str| {
        targets.iter().filter_map(|t| t.store.ok()).any(|s| {
            layout::SUFFIXES.iter().any(|suffix| {
                s.exists(&layout::object_key(prefix, id, suffix))
                    .unwrap_or(false)
            })
        })
    };
    for k in 0..120 {
        let id = layout::backup_id(started + chrono::Duration::seconds(k));
        if !taken(&id) {
            return id;
        }
    }
    // Every second of two minutes taken: let the store refuse the first one, by name.
    layout::backup_id(started)
}

/// Opens the data object on every store that can take it (refusing a name that exists):
/// the writers with their stores' names, their descriptions, and the stores that failed.
#[allow(clippy::type_complexity)]
fn open_targets(
    targets: &[Target<'_>],
    prefix: &str,
    id: &str,
) -> (
    Vec<(String, Option<Box<dyn ObjectWriter>>)>,
    Vec<String>,
    Vec<(String, String)>,
) {
    let key = |suffix: &str| layout::object_key(prefix, id, suffix);
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut slots = Vec::new();
    let mut descriptions = Vec::new();
    for t in targets {
        let store = match &t.store {
            Ok(s) => *s,
            Err(e) => {
                failures.push((t.cfg.name.clone(), e.to_string()));
                continue;
            }
        };
        let opened =
            tokio::task::block_in_place(|| -> Result<Box<dyn ObjectWriter>, StoreError> {
                for suffix in layout::SUFFIXES {
                    if store.exists(&key(suffix))? {
                        return Err(StoreError::Exists {
                            store: store.name().into(),
                            key: key(suffix),
                        });
                    }
                }
                store.create(&key(DATA_SUFFIX))
            });
        match opened {
            Ok(w) => {
                descriptions.push(store.describe(&key(DATA_SUFFIX)));
                slots.push((t.cfg.name.clone(), Some(w)));
            }
            Err(e) => failures.push((t.cfg.name.clone(), e.to_string())),
        }
    }
    (slots, descriptions, failures)
}

/// The manifest of a sealed dump.
#[allow(clippy::too_many_arguments)]
fn manifest_of(
    source: &SourceConfig,
    id: &str,
    started: chrono::DateTime<chrono::Utc>,
    t0: Instant,
    summary: &DumpSummary,
    sealed: &ObjectSum,
    keys: &SealingKeys,
    from: &DumpFrom<'_>,
) -> Manifest {
    Manifest {
        format_version: manifest::MANIFEST_VERSION,
        backup_id: id.to_string(),
        source: source.name.clone(),
        host: summary.host.clone(),
        server_version: summary.server_version.clone(),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: (started + chrono::Duration::from_std(t0.elapsed()).unwrap_or_default())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        binlog: summary.binlog.clone(),
        galera: galera_field(summary, from),
        databases: summary.databases.clone(),
        data: DataObject {
            name: layout::object_name(id, DATA_SUFFIX),
            size: sealed.size,
            sha256: sealed.sha256.clone(),
            compression: "gzip".into(),
            encryption: "openpgp-seipdv1-aes256".into(),
        },
        dpo_recipients: keys.recipient_fingerprints(),
        tenant_recipients: keys.tenant_fingerprints(&source.name),
        signer: keys.signer_fingerprint().to_string(),
        tool_version: format!("backup-agent {}", env!("CARGO_PKG_VERSION")),
        largest_statement_bytes: summary.largest_statement as u64,
        tables: summary.tables as u64,
        warnings: summary.warnings.clone(),
    }
}

/// Verifies each committed copy and publishes its `.sha256` and manifest; a copy that
/// fails is removed again and joins `failures`. Returns the stores that hold a verified
/// copy, and their verification marks.
fn verify_and_publish(
    committed: Vec<StoreOutcome>,
    targets: &[Target<'_>],
    prefix: &str,
    signed: &SignedManifest,
    failures: &mut Vec<(String, String)>,
) -> (Vec<String>, Vec<(String, CopyMark)>) {
    let m = &signed.manifest;
    let mut stores = Vec::new();
    let mut marks = Vec::new();
    for (name, r) in committed {
        let t = targets
            .iter()
            .find(|t| t.cfg.name == name)
            .expect("a target");
        let store = t.store.as_ref().expect("opened");
        if let Err(e) = r {
            failures.push((name, e.to_string()));
            continue;
        }
        let prefix = prefix.to_string();
        let verified = tokio::task::block_in_place(|| {
            let mark = copies::verify_data(*store, t.cfg.verify, &prefix, m, None);
            if !mark.verified {
                return Err(mark.error.unwrap_or_default());
            }
            backup_core::os::test_kill_point(&format!("verified:{name}"));
            copies::publish(*store, &prefix, signed).map_err(|e| e.to_string())?;
            Ok(mark)
        });
        match verified {
            Ok(mark) => {
                stores.push(name.clone());
                marks.push((name, mark));
            }
            Err(e) => {
                let _ = tokio::task::block_in_place(|| {
                    copies::remove_backup(*store, &prefix, &m.backup_id)
                });
                failures.push((name, format!("{e}; the copy was removed")));
            }
        }
    }
    (stores, marks)
}

/// The manifest's `galera` field: the node and the position of the snapshot. A dump of a
/// standalone server has none unless the source is configured as a cluster.
fn galera_field(summary: &dump::DumpSummary, from: &DumpFrom<'_>) -> Option<serde_json::Value> {
    let pos = summary.galera.as_ref()?;
    let mut m = from.extra.clone();
    m.insert("node".into(), from.node.name.clone().into());
    m.insert("address".into(), from.node.endpoint.to_string().into());
    if let Some(site) = &from.node.site {
        m.insert("site".into(), site.clone().into());
    }
    m.insert("wsrep_node_name".into(), pos.node_name.clone().into());
    m.insert(
        "cluster_state_uuid".into(),
        pos.cluster_state_uuid.clone().into(),
    );
    m.insert("last_committed".into(), pos.last_committed.into());
    m.insert("cluster_conf_id".into(), pos.cluster_conf_id.into());
    m.insert("cluster_size".into(), pos.cluster_size.into());
    m.insert("local_state".into(), pos.local_state.clone().into());
    Some(serde_json::Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::config::{ConfigPath, StoreKind, VerifyMode};
    use backup_core::store::LocalStore;

    fn store_config(name: &str, dir: &std::path::Path) -> StoreConfig {
        StoreConfig {
            name: name.into(),
            kind: StoreKind::Local {
                path: ConfigPath {
                    path: dir.to_path_buf(),
                    key: "stores.path".into(),
                    position: None,
                },
            },
            media: "disk".into(),
            site: "dc1".into(),
            verify: VerifyMode::ReadBack,
            retention: Default::default(),
        }
    }

    const ID: &str = "mariadb_2026-11-21_120000";

    fn tee(stores: &[&LocalStore], outcome: &Arc<Mutex<Outcome>>) -> Box<Tee> {
        let key = format!("main/{ID}{DATA_SUFFIX}");
        let slots = stores
            .iter()
            .map(|s| (s.name().to_string(), Some(s.create(&key).unwrap())))
            .collect();
        let mut t = Box::new(Tee {
            slots,
            outcome: outcome.clone(),
        });
        t.write_all(b"sealed bytes").unwrap();
        t
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir.join("main"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// A run dropped while its sealer finishes (cancelled at shutdown, or its lease lost
    /// after the dump's end marker) leaves nothing visible, whichever comes first: the
    /// commit or the drop.
    #[test]
    fn an_abandoned_run_keeps_nothing_whether_the_sealer_committed_or_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (d1, d2) = (tmp.path().join("a"), tmp.path().join("b"));
        let (s1, s2) = (LocalStore::new("a", &d1), LocalStore::new("b", &d2));
        let (c1, c2) = (store_config("a", &d1), store_config("b", &d2));
        let targets = [
            Target {
                cfg: &c1,
                store: Ok(&s1 as &dyn Store),
            },
            Target {
                cfg: &c2,
                store: Ok(&s2 as &dyn Store),
            },
        ];
        let guard = |outcome: &Arc<Mutex<Outcome>>| Uncommitted {
            outcome: outcome.clone(),
            targets: &targets,
            prefix: "main",
            id: ID.into(),
            kept: false,
        };

        // Committed first, then the run is dropped: the visible objects are removed again.
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let g = guard(&outcome);
        tee(&[&s1, &s2], &outcome).commit().unwrap();
        assert_eq!(files(&d1), vec![format!("{ID}{DATA_SUFFIX}")]);
        assert_eq!(files(&d2), vec![format!("{ID}{DATA_SUFFIX}")]);
        drop(g);
        assert!(files(&d1).is_empty(), "{:?}", files(&d1));
        assert!(files(&d2).is_empty(), "{:?}", files(&d2));

        // Dropped first: the sealer's late commit discards the objects.
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let t = tee(&[&s1, &s2], &outcome);
        drop(guard(&outcome));
        assert!(t.commit().is_err());
        assert!(files(&d1).is_empty(), "{:?}", files(&d1));
        assert!(files(&d2).is_empty(), "{:?}", files(&d2));

        // Kept (the run returned its backup): nothing is removed.
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let mut g = guard(&outcome);
        tee(&[&s1], &outcome).commit().unwrap();
        g.kept = true;
        drop(g);
        assert_eq!(files(&d1), vec![format!("{ID}{DATA_SUFFIX}")]);
    }
}
