//! The hash chain's key file: read where the policy is validated and where the chain opens,
//! so sink configuration checks a key without importing the chain.

use std::{fs, path::Path};

#[derive(Debug, thiserror::Error)]
#[error("key file {path}: {msg}")]
pub struct KeyError {
    path: String,
    msg: String,
}

/// Key bytes from a file, trailing whitespace trimmed (so `echo secret > key` works).
pub fn load_key(p: &Path) -> Result<Vec<u8>, KeyError> {
    let err = |msg: String| KeyError {
        path: p.display().to_string(),
        msg,
    };
    let mut b = fs::read(p).map_err(|e| err(e.to_string()))?;
    while b.last().is_some_and(|c| c.is_ascii_whitespace()) {
        b.pop();
    }
    if b.len() < 16 {
        return Err(err("key is shorter than 16 bytes".into()));
    }
    Ok(b)
}
