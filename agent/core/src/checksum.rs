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

/// The `.sha256` file's content: `<hex>  <file name>\n`, as `sha256sum` writes it.
pub fn sha256_line(hex: &str, file_name: &str) -> String {
    format!("{hex}  {file_name}\n")
}

/// Parses a `.sha256` file; returns the hex digest if it names `file_name`.
pub fn parse_sha256_line(text: &str, file_name: &str) -> Option<String> {
    let line = text.lines().next()?;
    let (hex, name) = line.split_once("  ").or_else(|| line.split_once(" *"))?;
    (name.trim() == file_name && hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_file_line() {
        let l = sha256_line(&"a".repeat(64), "x.gpg");
        assert_eq!(parse_sha256_line(&l, "x.gpg"), Some("a".repeat(64)));
        assert_eq!(parse_sha256_line(&l, "y.gpg"), None);
    }
}
