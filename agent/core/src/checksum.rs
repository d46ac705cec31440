//! The sha256 of a stored object, as written in its `.sha256` file and its manifest.

use std::io;

use sha2::{Digest, Sha256};

/// Size and sha256 (lower-case hex) of an object's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSum {
    pub size: u64,
    pub sha256: String,
}

/// Reads a stream to its end and returns its size and sha256.
pub fn hash_stream(mut r: impl io::Read) -> io::Result<ObjectSum> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(ObjectSum {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}
