//! The copies of backups across the stores. Here: operations on one backup's copy in one
//! store: verify it, copy it from another store (repair), remove it (manifest first, so
//! no half-deleted backup looks valid). `inventory` sees every copy of a source with its
//! verification state and 3-2-1 verdict; `maintain` keeps them: repair, scrub, prune.

use std::io::{Read, Write};

pub mod inventory;
pub mod maintain;
pub mod segments;

use chrono::Utc;
use sha2::{Digest, Sha256};

use backup_core::checksum;
use backup_core::checksum::hash_stream;
use backup_core::config::VerifyMode;
use backup_core::layout;
use backup_core::layout::{MANIFEST_SUFFIX, SHA256_SUFFIX, SIGNATURE_SUFFIX};
use backup_core::manifest::{Manifest, SignedManifest};
use backup_core::state::CopyMark;
use backup_core::store::{put_bytes, Store, StoreError};

/// Checks a stored copy against its signed manifest: this store's manifest and signature
/// must be the checked ones byte for byte (a changed or re-signed manifest fails the copy),
/// then the data. HEAD-only checks the data's size and the sha256 the store keeps in
/// metadata, or (without one) the ETag recorded at the last full check; with neither, it
/// reads the copy back.
pub fn verify_copy(
    store: &dyn Store,
    mode: VerifyMode,
    prefix: &str,
    signed: &SignedManifest,
    prev: Option<&CopyMark>,
) -> CopyMark {
    let m = &signed.manifest;
    let mark = verify_data(store, mode, prefix, m, prev);
    if !mark.verified {
        return mark;
    }
    if let Some(e) = manifest_differs(store, prefix, signed) {
        return CopyMark {
            verified: false,
            error: Some(e),
            ..mark
        };
    }
    if mark.method != "read-back" {
        return mark;
    }
    // The .sha256 file must name the same digest.
    let sha_key = layout::object_key(prefix, &m.backup_id, SHA256_SUFFIX);
    let mut text = String::new();
    let read = store.open(&sha_key).and_then(|mut r| {
        r.read_to_string(&mut text)
            .map_err(|source| StoreError::Io {
                store: store.name().into(),
                action: "reading",
                key: sha_key.clone(),
                source,
            })
    });
    let problem = match read {
        Err(e) => Some(e.to_string()),
        Ok(_)
            if checksum::parse_sha256_line(&text, &m.data.name).as_deref()
                != Some(m.data.sha256.as_str()) =>
        {
            Some(format!("{sha_key} does not hold the manifest's sha256"))
        }
        Ok(_) => None,
    };
    match problem {
        Some(e) => CopyMark {
            verified: false,
            error: Some(e),
            ..mark
        },
        None => mark,
    }
}

/// Why this store's manifest or signature object is not the checked one, if it is not.
fn manifest_differs(store: &dyn Store, prefix: &str, signed: &SignedManifest) -> Option<String> {
    let id = &signed.manifest.backup_id;
    for (suffix, want) in [
        (MANIFEST_SUFFIX, &signed.bytes),
        (SIGNATURE_SUFFIX, &signed.signature),
    ] {
        let key = layout::object_key(prefix, id, suffix);
        let mut got = Vec::new();
        let read = store.open(&key).and_then(|r| {
            r.take(backup_core::catalog::MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut got)
                .map_err(|source| StoreError::Io {
                    store: store.name().into(),
                    action: "reading",
                    key: key.clone(),
                    source,
                })
        });
        match read {
            Err(e) if e.is_not_found() => return Some(format!("{key} is missing")),
            Err(e) => return Some(e.to_string()),
            Ok(_) if got != *want => {
                return Some(format!(
                    "{key} differs from the signed manifest checked on the other copies (changed in this store)"
                ))
            }
            Ok(_) => {}
        }
    }
    None
}

/// Checks the data object of a copy (not its `.sha256` file).
pub fn verify_data(
    store: &dyn Store,
    mode: VerifyMode,
    prefix: &str,
    m: &Manifest,
    prev: Option<&CopyMark>,
) -> CopyMark {
    let now = Utc::now();
    let data_key = layout::key(prefix, &m.data.name);
    let fail = |method: &str, size: u64, etag: Option<String>, e: String| CopyMark {
        verified: false,
        checked_at: now,
        method: method.into(),
        size,
        etag,
        error: Some(e),
    };
    let info = match store.stat(&data_key) {
        Ok(Some(i)) => i,
        Ok(None) => return fail("head", 0, None, format!("{data_key} is missing")),
        Err(e) => return fail("head", 0, None, e.to_string()),
    };
    if info.size != m.data.size {
        return fail(
            "head",
            info.size,
            info.etag,
            format!(
                "{data_key}: size {} differs from the manifest's {}",
                info.size, m.data.size
            ),
        );
    }
    if mode == VerifyMode::Head {
        let head_ok = match (&info.sha256, prev) {
            (Some(s), _) => Some(*s == m.data.sha256),
            (None, Some(p)) if p.verified && p.etag.is_some() => {
                Some(p.etag == info.etag && p.size == info.size)
            }
            _ => None,
        };
        match head_ok {
            Some(true) => {
                return CopyMark {
                    verified: true,
                    checked_at: now,
                    method: "head".into(),
                    size: info.size,
                    etag: info.etag,
                    error: None,
                }
            }
            Some(false) => {
                return fail(
                    "head",
                    info.size,
                    info.etag,
                    format!("{data_key}: stored checksum or ETag differs from the verified copy"),
                )
            }
            None => {}
        }
    }
    // Full read-back: hash the data object, and check the .sha256 file names the same.
    let read = store.open(&data_key).and_then(|r| {
        hash_stream(r).map_err(|source| StoreError::Io {
            store: store.name().into(),
            action: "reading back",
            key: data_key.clone(),
            source,
        })
    });
    let read = match read {
        Ok(r) => r,
        Err(e) => return fail("read-back", info.size, info.etag, e.to_string()),
    };
    if read.sha256 != m.data.sha256 || read.size != m.data.size {
        return fail(
            "read-back",
            read.size,
            info.etag,
            format!(
                "{data_key}: content sha256 {} differs from the manifest's {}",
                read.sha256, m.data.sha256
            ),
        );
    }
    CopyMark {
        verified: true,
        checked_at: now,
        method: "read-back".into(),
        size: read.size,
        etag: info.etag,
        error: None,
    }
}

/// Writes the `.sha256` file, the manifest's signature and the manifest (last) of a
/// backup whose data object is already in the store.
pub fn publish(store: &dyn Store, prefix: &str, signed: &SignedManifest) -> Result<(), StoreError> {
    let m = &signed.manifest;
    put_bytes(
        store,
        &layout::object_key(prefix, &m.backup_id, SHA256_SUFFIX),
        checksum::sha256_line(&m.data.sha256, &m.data.name).as_bytes(),
    )?;
    backup_core::os::test_kill_point(&format!("published-sha256:{}", store.name()));
    put_bytes(
        store,
        &layout::object_key(prefix, &m.backup_id, SIGNATURE_SUFFIX),
        &signed.signature,
    )?;
    backup_core::os::test_kill_point(&format!("published-sig:{}", store.name()));
    put_bytes(
        store,
        &layout::object_key(prefix, &m.backup_id, MANIFEST_SUFFIX),
        &signed.bytes,
    )?;
    backup_core::os::test_kill_point(&format!("published:{}", store.name()));
    Ok(())
}

/// Removes a backup from a store: manifest first (from then on it is not a backup), then
/// its signature, the `.sha256` file, and the data. Returns the keys removed.
pub fn remove_backup(store: &dyn Store, prefix: &str, id: &str) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    for suffix in layout::SUFFIXES.iter().rev() {
        let k = layout::object_key(prefix, id, suffix);
        if store.exists(&k)? {
            store.remove(&k)?;
            removed.push(k);
        }
    }
    Ok(removed)
}

/// Removes what a dead run of this host left of backup `id` in a store (see
/// `backup::journal`): nothing if the backup's manifest is there (it was published; the
/// inventory judges it), else its objects and our temp files and pending uploads of it.
pub fn remove_dead_run(
    store: &dyn Store,
    prefix: &str,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    if store.exists(&layout::object_key(prefix, id, MANIFEST_SUFFIX))? {
        return Ok(Vec::new());
    }
    let mut removed = remove_backup(store, prefix, id)?;
    removed.extend(store.clean_debris(prefix, std::time::Duration::ZERO, &|n| {
        layout::backup_id_of(n) == Some(id)
    })?);
    Ok(removed)
}

/// Copies a backup from a store that holds a verified copy to one that lacks it, hashing
/// on the way: the copy is published (manifest last) only if the bytes read match the
/// manifest. Anything written is removed again on failure.
pub fn copy_backup(
    from: &dyn Store,
    to: &dyn Store,
    prefix: &str,
    signed: &SignedManifest,
) -> Result<(), CopyError> {
    let m = &signed.manifest;
    let data_key = layout::key(prefix, &m.data.name);
    let io = |store: &dyn Store, action: &'static str| {
        let (store, key) = (store.name().to_string(), data_key.clone());
        move |source| StoreError::Io {
            store,
            action,
            key,
            source,
        }
    };
    let mut r = from.open(&data_key)?;
    let mut w = to.create_with(&data_key, Some(&m.data.sha256))?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io(from, "reading"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
        w.write_all(&buf[..n]).map_err(io(to, "writing"))?;
    }
    let got = hex::encode(h.finalize());
    if got != m.data.sha256 || size != m.data.size {
        // Dropping the writer discards the copy.
        return Err(CopyError::NotIntact {
            from: from.name().to_string(),
            size,
            sha256: got,
        });
    }
    w.commit()?;
    publish(to, prefix, signed).map_err(|e| {
        // The data object is ours (just committed): take the half-copy away again.
        let _ = remove_backup(to, prefix, &m.backup_id);
        CopyError::Store(e)
    })
}

/// Why a copy between stores failed; nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the copy on {from} is not intact ({size} bytes, sha256 {sha256}); nothing was copied"
    )]
    NotIntact {
        from: String,
        size: u64,
        sha256: String,
    },
}
