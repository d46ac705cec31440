//! The S3 store (aws-sdk-s3): any S3-compatible server, custom endpoint, path-style
//! addressing, credentials from files or the AWS chain without static secrets, TLS with
//! an extra CA.
//!
//! The store contract (see store.rs) on S3:
//! - An object is visible only when complete: a stream is sent as a multipart upload of
//!   fixed-size parts (a few in flight, so memory stays at about `part_size` times
//!   (`parts_in_flight` + 1) whatever the object's size), and S3 shows nothing until
//!   CompleteMultipartUpload. An object smaller than one part is sent with one PutObject.
//! - A failed or abandoned write leaves nothing visible: every failure path, and a writer
//!   dropped without commit, sends AbortMultipartUpload. If even that fails (the server
//!   is gone), the upload is left to `clean_debris`, which aborts our pending uploads.
//! - Objects are never overwritten: create refuses an existing key (HEAD first).
//! - The object's sha256 goes into its metadata (`x-amz-meta-sha256`) when it is known
//!   before the upload starts (copies between stores, small objects). A streamed backup's
//!   sha256 is only known at the end; it is in the manifest and the `.sha256` object, and
//!   HEAD-only verification of such a copy compares size and ETag with what was recorded
//!   when the copy was verified after upload.
//! - With object lock configured, every object is written with its lock mode and
//!   retain-until date; removal deletes every version by version id (after the lock
//!   expired: callers check `lock_until` first).
//!
//! All methods block; the SDK's futures run on a runtime of this module's own, so that
//! the store can be used from any thread, including the sealing thread.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::mpsc as std_mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
};
use aws_sdk_s3::Client;
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{ChecksumMode, LockMode, ObjectLock, S3Config, S3Credentials};
use crate::secret::read_secret_file;
use crate::store::{Entry, ObjectInfo, ObjectWriter, Store, StoreError, TEMP_PREFIX};

/// Metadata key of the object's sha256 (sent as `x-amz-meta-sha256`).
pub const META_SHA256: &str = "sha256";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .expect("the S3 runtime starts")
    })
}

/// Runs a future on the S3 runtime and waits for it (from any thread).
fn run<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std_mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the S3 task reports back")
}

fn sdk_message<E, R>(e: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => DisplayErrorContext(e).to_string(),
            }
        }
        _ => DisplayErrorContext(e).to_string(),
    }
}

fn status_of<E, R>(e: &SdkError<E, R>) -> Option<u16>
where
    R: HttpStatus,
{
    e.raw_response().map(|r| r.status_code())
}

/// The HTTP status of a raw response (the SDK's response type).
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// A pending multipart upload: key, upload id, when it began.
pub type PendingUpload = (String, String, Option<DateTime<Utc>>);

pub struct S3Store {
    name: String,
    bucket: String,
    key_prefix: String,
    part_size: usize,
    parts_in_flight: usize,
    checksum: ChecksumMode,
    lock: Option<ObjectLock>,
    client: Client,
}

impl S3Store {
    pub fn new(name: &str, cfg: &S3Config) -> Result<S3Store, StoreError> {
        let err = |message: String| StoreError::Remote {
            store: name.into(),
            action: "configuring",
            key: format!("bucket {}", cfg.bucket),
            message,
        };
        let creds = match &cfg.credentials {
            S3Credentials::Files {
                access_key_id_file,
                secret_access_key_file,
            } => {
                let id = read_secret_file(&access_key_id_file.path, &access_key_id_file.key)
                    .map_err(|e| err(e.to_string()))?;
                let secret =
                    read_secret_file(&secret_access_key_file.path, &secret_access_key_file.key)
                        .map_err(|e| err(e.to_string()))?;
                Some(aws_sdk_s3::config::Credentials::new(
                    id.expose().trim(),
                    secret.expose().trim(),
                    None,
                    None,
                    "backup-agent-files",
                ))
            }
            S3Credentials::DefaultChain => None,
        };
        let http_client = match &cfg.ca_file {
            Some(ca) => {
                let pem = std::fs::read(&ca.path).map_err(|e| {
                    err(format!(
                        "{} ({}): cannot read CA file: {e}",
                        ca.key,
                        ca.path.display()
                    ))
                })?;
                use aws_smithy_http_client::tls;
                let ctx = tls::TlsContext::builder()
                    .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
                    .build()
                    .map_err(|e| err(format!("{}: {e}", ca.key)))?;
                Some(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(tls::Provider::Rustls(
                            tls::rustls_provider::CryptoMode::Ring,
                        ))
                        .tls_context(ctx)
                        .build_https(),
                )
            }
            None => None,
        };
        let region = cfg.region.clone();
        let timeout = cfg.timeout;
        let sdk = run(async move {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .operation_attempt_timeout(timeout)
                        .build(),
                )
                .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
            loader = match creds {
                Some(c) => loader.credentials_provider(c),
                None => {
                    use aws_config::meta::credentials::CredentialsProviderChain;
                    // The default chain minus environment variables: no static secret
                    // from the environment (CONTRACT: secrets come from files).
                    let chain = CredentialsProviderChain::first_try(
                        "Profile",
                        aws_config::profile::ProfileFileCredentialsProvider::builder().build(),
                    )
                    .or_else(
                        "WebIdentityToken",
                        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                            .build(),
                    )
                    .or_else(
                        "EcsContainer",
                        aws_config::ecs::EcsCredentialsProvider::builder().build(),
                    )
                    .or_else(
                        "Ec2InstanceMetadata",
                        aws_config::imds::credentials::ImdsCredentialsProvider::builder().build(),
                    );
                    loader.credentials_provider(chain)
                }
            };
            if let Some(h) = http_client {
                loader = loader.http_client(h);
            }
            loader.load().await
        });
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.path_style);
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        if cfg.checksum != ChecksumMode::Crc32 {
            // Our own SHA-256 (or none): the SDK adds its CRC only where an operation
            // requires a checksum.
            b = b
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
        }
        Ok(S3Store {
            name: name.into(),
            bucket: cfg.bucket.clone(),
            key_prefix: cfg.key_prefix.clone(),
            part_size: cfg.part_size as usize,
            parts_in_flight: cfg.parts_in_flight,
            checksum: cfg.checksum,
            lock: cfg.object_lock,
            client: Client::from_conf(b.build()),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    fn remote(&self, action: &'static str, key: &str, message: String) -> StoreError {
        StoreError::Remote {
            store: self.name.clone(),
            action,
            key: key.into(),
            message,
        }
    }

    fn lock_fields(&self) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        self.lock.map(|l| {
            let until = Utc::now() + chrono::Duration::days(l.days as i64);
            (
                match l.mode {
                    LockMode::Governance => ObjectLockMode::Governance,
                    LockMode::Compliance => ObjectLockMode::Compliance,
                },
                aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp()),
            )
        })
    }

    /// Pending multipart uploads under a prefix: (key, upload id, initiated).
    pub fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StoreError> {
        let full = self.full_key(&format!("{prefix}/"));
        let (c, bucket) = (self.client.clone(), self.bucket.clone());
        let p = full.clone();
        let out = run(async move {
            let mut v = Vec::new();
            let (mut km, mut um): (Option<String>, Option<String>) = (None, None);
            loop {
                let o = c
                    .list_multipart_uploads()
                    .bucket(&bucket)
                    .prefix(&p)
                    .set_key_marker(km.clone())
                    .set_upload_id_marker(um.clone())
                    .send()
                    .await?;
                for u in o.uploads() {
                    if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                        v.push((
                            k.to_string(),
                            id.to_string(),
                            u.initiated().and_then(to_chrono),
                        ));
                    }
                }
                if o.is_truncated() == Some(true) {
                    km = o.next_key_marker().map(String::from);
                    um = o.next_upload_id_marker().map(String::from);
                    if km.is_none() && um.is_none() {
                        break;
                    }
                } else {
                    break;
                }
            }
            Ok(v)
        })
        .map_err(|e| self.remote("listing uploads under", prefix, sdk_message(&e)))?;
        Ok(out
            .into_iter()
            .map(|(k, id, t)| {
                (
                    k.strip_prefix(&self.key_prefix).unwrap_or(&k).to_string(),
                    id,
                    t,
                )
            })
            .collect())
    }

    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        abort(&self.client, &self.bucket, &self.full_key(key), upload_id)
            .map_err(|m| self.remote("aborting the upload of", key, m))
    }
}

/// Sends AbortMultipartUpload, a few times if the server is briefly unreachable.
fn abort(c: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<(), String> {
    let (c, bucket, key, id) = (
        c.clone(),
        bucket.to_string(),
        key.to_string(),
        upload_id.to_string(),
    );
    run(async move {
        let mut last = String::new();
        for attempt in 0..5 {
            match c
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if status_of(&e) == Some(404) => return Ok(()),
                Err(e) => last = sdk_message(&e),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        Err(last)
    })
}

type PartResult = Result<CompletedPart, String>;

struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
    in_flight: VecDeque<std::sync::Mutex<std_mpsc::Receiver<PartResult>>>,
}

pub struct S3Writer {
    store: String,
    key: String,
    full_key: String,
    bucket: String,
    client: Client,
    part_size: usize,
    parts_in_flight: usize,
    checksum: ChecksumMode,
    lock: Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)>,
    known_sha256: Option<String>,
    buf: Vec<u8>,
    upload: Option<Upload>,
    failed: Option<String>,
    done: bool,
}

impl S3Writer {
    fn err(&self, msg: String) -> io::Error {
        io::Error::other(format!(
            "store {}: uploading {}: {msg}",
            self.store, self.key
        ))
    }

    fn metadata(&self, sha256: Option<&str>) -> Option<HashMap<String, String>> {
        sha256.map(|s| HashMap::from([(META_SHA256.to_string(), s.to_string())]))
    }

    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> Result<(), String> {
        let up = self.upload.as_mut().expect("upload started");
        if let Some(rx) = up.in_flight.pop_front() {
            let part = rx
                .into_inner()
                .expect("not poisoned")
                .recv()
                .map_err(|_| "the upload task vanished".to_string())??;
            up.parts.push(part);
        }
        Ok(())
    }

    fn start_upload(&mut self) -> Result<(), String> {
        let (c, bucket, key) = (
            self.client.clone(),
            self.bucket.clone(),
            self.full_key.clone(),
        );
        let meta = self.metadata(self.known_sha256.as_deref());
        let lock = self.lock.clone();
        let sha = self.checksum == ChecksumMode::Sha256 || self.lock.is_some();
        let id = run(async move {
            let mut r = c
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .set_metadata(meta);
            if sha {
                r = r.checksum_algorithm(ChecksumAlgorithm::Sha256);
            }
            if let Some((mode, until)) = lock {
                r = r
                    .object_lock_mode(mode)
                    .object_lock_retain_until_date(until);
            }
            r.send().await
        })
        .map_err(|e| sdk_message(&e))?
        .upload_id()
        .map(String::from)
        .ok_or("the server returned no upload id")?;
        self.upload = Some(Upload {
            id,
            parts: Vec::new(),
            in_flight: VecDeque::new(),
        });
        Ok(())
    }

    /// Sends the buffer as the next part (waiting while too many are in flight).
    fn send_part(&mut self) -> Result<(), String> {
        if self.upload.is_none() {
            self.start_upload()?;
        }
        while self.upload.as_ref().expect("started").in_flight.len() >= self.parts_in_flight {
            self.wait_one()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
        let up = self.upload.as_mut().expect("started");
        let number = (up.parts.len() + up.in_flight.len() + 1) as i32;
        if number as u64 > crate::config::S3_MAX_PARTS {
            return Err(format!(
                "the object needs more than {} parts of {} bytes; raise part_size for this store",
                crate::config::S3_MAX_PARTS,
                self.part_size
            ));
        }
        let checksum = (self.checksum == ChecksumMode::Sha256 || self.lock.is_some())
            .then(|| b64(&Sha256::digest(&data)));
        let (c, bucket, key, id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.full_key.clone(),
            up.id.clone(),
        );
        let (tx, rx) = std_mpsc::sync_channel(1);
        runtime().spawn(async move {
            let len = data.len() as i64;
            let r = c
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .content_length(len)
                .set_checksum_sha256(checksum.clone())
                .body(ByteStream::from(data))
                .send()
                .await;
            let out = match r {
                Ok(o) => Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(o.e_tag().map(String::from))
                    .set_checksum_sha256(checksum)
                    .build()),
                Err(e) => Err(format!("part {number}: {}", sdk_message(&e))),
            };
            let _ = tx.send(out);
        });
        up.in_flight.push_back(std::sync::Mutex::new(rx));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if self.upload.is_none() {
            // Small object: one PutObject, with its sha256 in metadata and checksum.
            let data = std::mem::take(&mut self.buf);
            let digest = Sha256::digest(&data);
            let hex = hex::encode(digest);
            if let Some(k) = &self.known_sha256 {
                if *k != hex {
                    return Err(format!(
                        "content sha256 {hex} differs from the expected {k}"
                    ));
                }
            }
            let meta = self.metadata(Some(&hex));
            // Object Lock uploads need a checksum (or Content-MD5) whatever the mode.
            let checksum = (self.checksum == ChecksumMode::Sha256 || self.lock.is_some())
                .then(|| b64(&digest));
            let (c, bucket, key, lock) = (
                self.client.clone(),
                self.bucket.clone(),
                self.full_key.clone(),
                self.lock.clone(),
            );
            run(async move {
                let len = data.len() as i64;
                let mut r = c
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .content_length(len)
                    .set_metadata(meta)
                    .set_checksum_algorithm(checksum.as_ref().map(|_| ChecksumAlgorithm::Sha256))
                    .set_checksum_sha256(checksum)
                    .body(ByteStream::from(data));
                if let Some((mode, until)) = lock {
                    r = r
                        .object_lock_mode(mode)
                        .object_lock_retain_until_date(until);
                }
                r.send().await
            })
            .map_err(|e| sdk_message(&e))?;
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.upload.as_ref().expect("started").in_flight.is_empty() {
            self.wait_one()?;
        }
        let up = self.upload.as_ref().expect("started");
        let mut parts = up.parts.clone();
        parts.sort_by_key(|p| p.part_number());
        let (c, bucket, key, id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.full_key.clone(),
            up.id.clone(),
        );
        run(async move {
            c.complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
        })
        .map_err(|e| sdk_message(&e))?;
        Ok(())
    }

    fn abort_pending(&mut self) {
        if let Some(up) = self.upload.take() {
            // Let parts in flight end first, so that none lands after the abort.
            for rx in up.in_flight {
                let rx = rx.into_inner().expect("not poisoned");
                let _ = rx.recv_timeout(Duration::from_secs(300));
            }
            if let Err(e) = abort(&self.client, &self.bucket, &self.full_key, &up.id) {
                tracing::error!(
                    event = "s3_abort_failed",
                    store = %self.store,
                    key = %self.key,
                    upload_id = %up.id,
                    error = %e,
                    "the pending upload is aborted by the next debris cleanup"
                );
            }
        }
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(f) = &self.failed {
            return Err(self.err(f.clone()));
        }
        let room = self.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part_size {
            if let Err(e) = self.send_part() {
                self.failed = Some(e.clone());
                return Err(self.err(e));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        match self.finish() {
            Ok(()) => {
                self.done = true;
                Ok(())
            }
            Err(message) => {
                self.abort_pending();
                Err(StoreError::Remote {
                    store: self.store.clone(),
                    action: "uploading",
                    key: self.key.clone(),
                    message,
                })
            }
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if !self.done {
            self.abort_pending();
        }
    }
}

/// A streaming GetObject body as a blocking reader.
struct S3Reader {
    rx: std_mpsc::Receiver<Result<bytes::Bytes, String>>,
    cur: bytes::Bytes,
    ended: bool,
}

impl Read for S3Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Err(_) => self.ended = true,
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn create_with(
        &self,
        key: &str,
        sha256: Option<&str>,
    ) -> Result<Box<dyn ObjectWriter>, StoreError> {
        if self.stat(key)?.is_some() {
            return Err(StoreError::Exists {
                store: self.name.clone(),
                key: key.into(),
            });
        }
        Ok(Box::new(S3Writer {
            store: self.name.clone(),
            key: key.into(),
            full_key: self.full_key(key),
            bucket: self.bucket.clone(),
            client: self.client.clone(),
            part_size: self.part_size,
            parts_in_flight: self.parts_in_flight,
            checksum: self.checksum,
            lock: self.lock_fields(),
            known_sha256: sha256.map(String::from),
            buf: Vec::new(),
            upload: None,
            failed: None,
            done: false,
        }))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        let (c, bucket, full) = (self.client.clone(), self.bucket.clone(), self.full_key(key));
        let out = run(async move { c.get_object().bucket(bucket).key(full).send().await })
            .map_err(|e| {
                if status_of(&e) == Some(404) {
                    StoreError::Io {
                        store: self.name.clone(),
                        action: "opening",
                        key: key.into(),
                        source: io::Error::new(io::ErrorKind::NotFound, "no such object"),
                    }
                } else {
                    self.remote("opening", key, sdk_message(&e))
                }
            })?;
        let (tx, rx) = std_mpsc::sync_channel(4);
        let mut body = out.body;
        runtime().spawn(async move {
            loop {
                match body.next().await {
                    Some(Ok(b)) => {
                        if tx.send(Ok(b)).is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(format!("reading the object: {e}")));
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(Box::new(S3Reader {
            rx,
            cur: bytes::Bytes::new(),
            ended: false,
        }))
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let (c, bucket, full) = (self.client.clone(), self.bucket.clone(), self.full_key(key));
        match run(async move { c.head_object().bucket(bucket).key(full).send().await }) {
            Ok(o) => Ok(Some(ObjectInfo {
                size: o.content_length().unwrap_or(0).max(0) as u64,
                sha256: o
                    .metadata()
                    .and_then(|m| m.get(META_SHA256))
                    .map(|s| s.to_ascii_lowercase()),
                etag: o.e_tag().map(String::from),
                modified: o.last_modified().and_then(to_chrono),
                lock_until: o.object_lock_retain_until_date().and_then(to_chrono),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.remote("inspecting", key, sdk_message(&e))),
        }
    }

    fn list_entries(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let full = self.full_key(&format!("{prefix}/"));
        let (c, bucket) = (self.client.clone(), self.bucket.clone());
        let p = full.clone();
        let objects = run(async move {
            let mut v = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let o = c
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&p)
                    .delimiter("/")
                    .set_continuation_token(token.clone())
                    .send()
                    .await?;
                for obj in o.contents() {
                    if let Some(k) = obj.key() {
                        v.push((
                            k.to_string(),
                            obj.size().unwrap_or(0).max(0) as u64,
                            obj.last_modified().and_then(to_chrono),
                        ));
                    }
                }
                match (o.is_truncated(), o.next_continuation_token()) {
                    (Some(true), Some(t)) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            Ok(v)
        })
        .map_err(|e| self.remote("listing", prefix, sdk_message(&e)))?;
        let mut v: Vec<Entry> = objects
            .into_iter()
            .filter_map(|(k, size, modified)| {
                let name = k.strip_prefix(&full)?.to_string();
                (!name.is_empty() && !name.contains('/')).then_some(Entry {
                    name,
                    size,
                    modified,
                })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        let (c, bucket, full) = (self.client.clone(), self.bucket.clone(), self.full_key(key));
        // Every version and delete marker of exactly this key, by version id: on a
        // versioned bucket a plain delete would only add a delete marker. A server
        // without ListObjectVersions (Garage) has no versions: a plain delete is all.
        run(async move {
            let mut victims: Vec<String> = Vec::new();
            let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
            let mut listed = true;
            loop {
                let o = match c
                    .list_object_versions()
                    .bucket(&bucket)
                    .prefix(&full)
                    .set_key_marker(km.clone())
                    .set_version_id_marker(vm.clone())
                    .send()
                    .await
                {
                    Ok(o) => o,
                    Err(_) => {
                        listed = false;
                        break;
                    }
                };
                for v in o.versions() {
                    if v.key() == Some(full.as_str()) {
                        victims.extend(v.version_id().map(String::from));
                    }
                }
                for m in o.delete_markers() {
                    if m.key() == Some(full.as_str()) {
                        victims.extend(m.version_id().map(String::from));
                    }
                }
                if o.is_truncated() == Some(true) {
                    km = o.next_key_marker().map(String::from);
                    vm = o.next_version_id_marker().map(String::from);
                } else {
                    break;
                }
            }
            let versioned = listed && victims.iter().any(|v| v != "null");
            if !versioned {
                return c
                    .delete_object()
                    .bucket(&bucket)
                    .key(&full)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sdk_message(&e));
            }
            for vid in victims {
                c.delete_object()
                    .bucket(&bucket)
                    .key(&full)
                    .version_id(&vid)
                    .send()
                    .await
                    .map_err(|e| format!("version {vid}: {}", sdk_message(&e)))?;
            }
            Ok::<(), String>(())
        })
        .map_err(|m| self.remote("removing", key, m))
    }

    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    fn immutable(&self) -> bool {
        self.lock.is_some()
    }

    fn clean_debris(
        &self,
        prefix: &str,
        grace: Duration,
        ours: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let now = Utc::now();
        let mut removed = Vec::new();
        for (key, id, initiated) in self.pending_uploads(prefix)? {
            let old = initiated.is_none_or(|t| (now - t).to_std().unwrap_or_default() > grace);
            let mine = key
                .rsplit('/')
                .next()
                .is_some_and(|n| ours(n) || n.starts_with(TEMP_PREFIX));
            if old && mine {
                self.abort_upload(&key, &id)?;
                removed.push(format!("{key} (upload {id})"));
            }
        }
        Ok(removed)
    }
}
