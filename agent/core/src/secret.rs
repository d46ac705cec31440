//! Secrets read from files. The value never appears in Debug output or error messages;
//! errors name the file and the configuration key it came from.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

/// A secret string. Debug prints a placeholder; there is no Display. Not `Clone`: one
/// copy in memory, wiped when dropped (share it by reference or `Arc`).
#[derive(PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn new(s: String) -> Secret {
        Secret(Zeroizing::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path} ({key}): {source}; check that the file exists and is readable by this user")]
    Read {
        path: String,
        key: String,
        source: std::io::Error,
    },
    #[error("secret file {path} ({key}) is empty; write the secret into it")]
    Empty { path: String, key: String },
    #[error("secret file {path} ({key}) is not UTF-8 text")]
    NotText { path: String, key: String },
}

/// Reads a secret from a file, dropping one trailing newline (files written by `echo`).
pub fn read_secret_file(path: &Path, key: &str) -> Result<Secret, SecretError> {
    let p = path.display().to_string();
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| SecretError::Read {
        path: p.clone(),
        key: key.into(),
        source,
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotText {
        path: p.clone(),
        key: key.into(),
    })?;
    let mut s = Zeroizing::new(text.to_string());
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err(SecretError::Empty {
            path: p,
            key: key.into(),
        });
    }
    Ok(Secret(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_one_newline_and_hides_value() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cr3t\n").unwrap();
        let s = read_secret_file(&f, "k").unwrap();
        assert_eq!(s.expose(), "s3cr3t");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            read_secret_file(&f, "k"),
            Err(SecretError::Empty { .. })
        ));
        let e = read_secret_file(&d.path().join("nope"), "source[0].password_file").unwrap_err();
        assert!(e.to_string().contains("source[0].password_file"));
    }
}
