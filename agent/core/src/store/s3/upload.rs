//! Writing an object: a small one in one PUT, a stream as a multipart upload with a
//! fixed part size and bounded parts in flight, aborted on every failure path.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
};
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};

use crate::config::ChecksumMode;
use crate::store::{ObjectWriter, StoreError};

use super::*;

pub(super) type PartResult = Result<CompletedPart, S3Failure>;

pub(super) struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
    in_flight: VecDeque<std::sync::Mutex<std_mpsc::Receiver<PartResult>>>,
}

pub struct S3Writer {
    pub(super) store: String,
    pub(super) key: String,
    pub(super) full_key: String,
    pub(super) bucket: String,
    pub(super) client: Client,
    pub(super) part_size: usize,
    pub(super) parts_in_flight: usize,
    pub(super) checksum: ChecksumMode,
    pub(super) lock: Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)>,
    pub(super) known_sha256: Option<String>,
    pub(super) buf: Vec<u8>,
    pub(super) upload: Option<Upload>,
    pub(super) failed: Option<S3Failure>,
    pub(super) done: bool,
}

impl S3Writer {
    fn err(&self, msg: S3Failure) -> io::Error {
        io::Error::other(format!(
            "store {}: uploading {}: {msg}",
            self.store, self.key
        ))
    }

    fn metadata(&self, sha256: Option<&str>) -> Option<HashMap<String, String>> {
        sha256.map(|s| HashMap::from([(META_SHA256.to_string(), s.to_string())]))
    }

    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> Result<(), S3Failure> {
        let up = self.upload.as_mut().expect("upload started");
        if let Some(rx) = up.in_flight.pop_front() {
            let part = rx
                .into_inner()
                .expect("not poisoned")
                .recv()
                .map_err(|_| S3Failure::msg("the upload task vanished"))??;
            up.parts.push(part);
        }
        Ok(())
    }

    fn start_upload(&mut self) -> Result<(), S3Failure> {
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
        .map_err(|e| S3Failure::of(&e))?
        .upload_id()
        .map(String::from)
        .ok_or_else(|| S3Failure::msg("the server returned no upload id"))?;
        self.upload = Some(Upload {
            id,
            parts: Vec::new(),
            in_flight: VecDeque::new(),
        });
        Ok(())
    }

    /// Sends the buffer as the next part (waiting while too many are in flight).
    fn send_part(&mut self) -> Result<(), S3Failure> {
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
            return Err(S3Failure::msg(format!(
                "the object needs more than {} parts of {} bytes; raise part_size for this store",
                crate::config::S3_MAX_PARTS,
                self.part_size
            )));
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
                Err(e) => Err(S3Failure::of(&e).context(&format!("part {number}"))),
            };
            let _ = tx.send(out);
        });
        up.in_flight.push_back(std::sync::Mutex::new(rx));
        Ok(())
    }

    /// Refuses to complete over an object that appeared since the writer began. The
    /// write itself carries If-None-Match: * (atomic where the server honours it, as AWS
    /// and moto do); this check right before it covers servers that ignore the header
    /// (Garage 2.5), narrowing the window to one round trip.
    fn refuse_existing(&self) -> Result<(), S3Failure> {
        let (c, bucket, key) = (
            self.client.clone(),
            self.bucket.clone(),
            self.full_key.clone(),
        );
        let head = run(async move { c.head_object().bucket(bucket).key(key).send().await });
        match head {
            Ok(_) => Err(S3Failure {
                code: Some("PreconditionFailed".into()),
                status: Some(412),
                message: "the object exists already (written meanwhile)".into(),
            }),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(S3Failure::of(&e)),
        }
    }

    fn finish(&mut self) -> Result<(), S3Failure> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        self.refuse_existing()?;
        if self.upload.is_none() {
            // Small object: one PutObject, with its sha256 in metadata and checksum.
            let data = std::mem::take(&mut self.buf);
            let digest = Sha256::digest(&data);
            let hex = hex::encode(digest);
            if let Some(k) = &self.known_sha256 {
                if *k != hex {
                    return Err(S3Failure::msg(format!(
                        "content sha256 {hex} differs from the expected {k}"
                    )));
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
                    // Never over an existing object, even one that appeared after the
                    // writer's existence check (another agent, another run).
                    .if_none_match("*")
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
            .map_err(|e| S3Failure::of(&e))?;
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
                .if_none_match("*")
                .upload_id(id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
        })
        .map_err(|e| S3Failure::of(&e))?;
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
            Err(failure) if failure.status == Some(412) => {
                // If-None-Match: * refused: the name exists (written meanwhile).
                self.abort_pending();
                Err(StoreError::Exists {
                    store: self.store.clone(),
                    key: self.key.clone(),
                })
            }
            Err(failure) => {
                self.abort_pending();
                Err(StoreError::Remote {
                    store: self.store.clone(),
                    action: "uploading",
                    key: self.key.clone(),
                    message: failure.to_string(),
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
