//! Object Lock on what we write, deleting every version by id, and pending multipart
//! uploads (listed and aborted).

use std::time::Duration;

use aws_sdk_s3::types::ObjectLockMode;
use aws_sdk_s3::Client;
use chrono::Utc;

use crate::config::LockMode;
use crate::store::StoreError;

use super::*;

impl S3Store {
    pub(super) fn lock_fields(&self) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
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
        .map_err(|e| self.remote("listing uploads under", prefix, S3Failure::of(&e)))?;
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

    /// Removes every version and delete marker of exactly `key`.
    pub(super) fn remove_every_version(&self, key: &str) -> Result<(), StoreError> {
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
                    .map_err(|e| S3Failure::of(&e));
            }
            for vid in victims {
                c.delete_object()
                    .bucket(&bucket)
                    .key(&full)
                    .version_id(&vid)
                    .send()
                    .await
                    .map_err(|e| S3Failure::of(&e).context(&format!("version {vid}")))?;
            }
            Ok::<(), S3Failure>(())
        })
        .map_err(|m| self.remote("removing", key, m))
    }
}

/// Sends AbortMultipartUpload, a few times if the server is briefly unreachable.
pub(super) fn abort(c: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Failure> {
    let (c, bucket, key, id) = (
        c.clone(),
        bucket.to_string(),
        key.to_string(),
        upload_id.to_string(),
    );
    run(async move {
        let mut last = S3Failure::msg("no attempt");
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
                Err(e) => last = S3Failure::of(&e),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        Err(last)
    })
}
