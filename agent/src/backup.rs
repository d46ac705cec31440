//! One backup of one source: dump -> seal -> store, then the `.sha256` file, a read-back
//! check of the stored object, and the manifest last. Any failure leaves no object under
//! a final name (the data object is committed only after the whole stream was sealed; if
//! a later step fails, what was committed for this backup is removed again, so nothing
//! without a manifest stays behind).

use std::sync::Arc;
use std::time::Instant;

use crate::config::{EncryptionConfig, SourceConfig};
use crate::crypto::SealingKeys;
use crate::dump::{self, DumpError, SqlOutput};
use crate::manifest::{self, DataObject, Manifest, DATA_SUFFIX, MANIFEST_SUFFIX, SHA256_SUFFIX};
use crate::pipeline::{self, PipelineError};
use crate::secret::read_secret_file;
use crate::store::{put_bytes, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("source {source_name}: {err}")]
    Secret {
        source_name: String,
        err: crate::secret::SecretError,
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
    #[error("source {source_name}: store {store}: read-back of {key} does not match what was written (wrote {wrote}, read {read}); the copy was removed")]
    Verify {
        source_name: String,
        store: String,
        key: String,
        wrote: String,
        read: String,
    },
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub manifest: Manifest,
    pub stores: Vec<String>,
    pub duration_secs: f64,
    pub non_transactional: Vec<String>,
    pub rows: u64,
}

/// Runs one backup of `source` into `store`.
pub async fn run_backup(
    source: &SourceConfig,
    enc: &EncryptionConfig,
    keys: Arc<SealingKeys>,
    store: &dyn Store,
) -> Result<BackupReport, BackupError> {
    let sname = source.name.clone();
    let t0 = Instant::now();
    let started = chrono::Utc::now();
    let id = manifest::backup_id(started);
    let data_name = format!("{id}{DATA_SUFFIX}");
    let key = |suffix: &str| format!("{}/{id}{suffix}", source.prefix);
    let st = |err| BackupError::Store {
        source_name: sname.clone(),
        err,
    };

    let password = read_secret_file(&source.password_file.path, &source.password_file.key)
        .map_err(|err| BackupError::Secret {
            source_name: sname.clone(),
            err,
        })?;
    let mut conn = dump::connect(source, &password)
        .await
        .map_err(|err| BackupError::Dump {
            source_name: sname.clone(),
            err: Box::new(err),
        })?;
    drop(password);

    for suffix in [DATA_SUFFIX, SHA256_SUFFIX, MANIFEST_SUFFIX] {
        if store.exists(&key(suffix)).map_err(st)? {
            return Err(st(StoreError::Exists {
                store: store.name().into(),
                key: key(suffix),
            }));
        }
    }
    let object = store.create(&key(DATA_SUFFIX)).map_err(st)?;
    let (tx, sealer) = pipeline::spawn_sealer(
        keys.clone(),
        enc.compression_level,
        object,
        format!(
            "store {} object {}",
            store.name(),
            store.describe(&key(DATA_SUFFIX))
        ),
    );
    let mut out = SqlOutput::new(tx.clone());
    let description = format!(
        "backup-agent {} dump of source {}\nBackup {id}, started {}",
        env!("CARGO_PKG_VERSION"),
        source.name,
        started.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let dumped = dump::dump(&mut conn, source, &description, &mut out).await;
    let (summary, sealed) = match dumped {
        Ok(s) => {
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
            // Let the sealer see the abort and drop its uncommitted object.
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

    // From here on the data object is visible: read it back, then write the .sha256 file
    // and the manifest; if anything fails, remove this backup's objects again.
    let publish = || -> Result<Manifest, BackupError> {
        let read_back = store
            .open(&key(DATA_SUFFIX))
            .and_then(|r| {
                pipeline::hash_stream(r).map_err(|source| StoreError::Io {
                    store: store.name().into(),
                    action: "reading back",
                    key: key(DATA_SUFFIX),
                    source,
                })
            })
            .map_err(st)?;
        if read_back != sealed {
            return Err(BackupError::Verify {
                source_name: sname.clone(),
                store: store.name().into(),
                key: key(DATA_SUFFIX),
                wrote: format!("{} bytes sha256 {}", sealed.size, sealed.sha256),
                read: format!("{} bytes sha256 {}", read_back.size, read_back.sha256),
            });
        }
        let m = Manifest {
            format_version: manifest::MANIFEST_VERSION,
            backup_id: id.clone(),
            source: source.name.clone(),
            host: summary.host.clone(),
            server_version: summary.server_version.clone(),
            started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            binlog: summary.binlog.clone(),
            galera: None,
            databases: summary.databases.clone(),
            data: DataObject {
                name: data_name.clone(),
                size: read_back.size,
                sha256: read_back.sha256.clone(),
                compression: "gzip".into(),
                encryption: "openpgp-seipdv1-aes256".into(),
            },
            dpo_recipients: keys.recipient_fingerprints(),
            signer: keys.signer_fingerprint().to_string(),
            tool_version: format!("backup-agent {}", env!("CARGO_PKG_VERSION")),
            largest_statement_bytes: summary.largest_statement as u64,
            tables: summary.tables as u64,
            warnings: summary.warnings.clone(),
        };
        put_bytes(
            store,
            &key(SHA256_SUFFIX),
            manifest::sha256_line(&read_back.sha256, &data_name).as_bytes(),
        )
        .map_err(st)?;
        put_bytes(
            store,
            &key(MANIFEST_SUFFIX),
            &serde_json::to_vec_pretty(&m).expect("manifest serializes"),
        )
        .map_err(st)?;
        Ok(m)
    };
    let manifest = publish().inspect_err(|_| {
        for suffix in [MANIFEST_SUFFIX, SHA256_SUFFIX, DATA_SUFFIX] {
            let _ = store.remove(&key(suffix));
        }
    })?;
    Ok(BackupReport {
        manifest,
        stores: vec![store.name().to_string()],
        duration_secs: t0.elapsed().as_secs_f64(),
        non_transactional: summary.non_transactional,
        rows: summary.rows,
    })
}
