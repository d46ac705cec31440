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

use std::io::{self, Read};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};

use crate::config::{ChecksumMode, ObjectLock};
use crate::store::{Entry, ObjectInfo, ObjectWriter, Store, StoreError, TEMP_PREFIX};

mod client;
mod upload;
mod versions;

use client::*;
use upload::*;
use versions::*;

/// Metadata key of the object's sha256 (sent as `x-amz-meta-sha256`).
pub const META_SHA256: &str = "sha256";

/// A pending multipart upload: key, upload id, when it began.
pub type PendingUpload = (String, String, Option<DateTime<Utc>>);

pub struct S3Store {
    name: String,
    /// For messages: the endpoint URL (no credentials in it).
    endpoint: String,
    bucket: String,
    key_prefix: String,
    part_size: usize,
    parts_in_flight: usize,
    checksum: ChecksumMode,
    lock: Option<ObjectLock>,
    client: Client,
}

/// A streaming GetObject body as a blocking reader.
struct S3Reader {
    rx: std_mpsc::Receiver<Result<bytes::Bytes, S3Failure>>,
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
                    self.remote("opening", key, S3Failure::of(&e))
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
                        let _ = tx.send(Err(S3Failure::msg(format!("reading the object: {e}"))));
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
            Err(e) => Err(self.remote("inspecting", key, S3Failure::of(&e))),
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
        .map_err(|e| self.remote("listing", prefix, S3Failure::of(&e)))?;
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
        self.remove_every_version(key)
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
