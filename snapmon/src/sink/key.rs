//! The hash chain's key file: read where the policy is validated and where the chain opens,
//! so sink configuration checks a key without importing the chain.

use std::{fs, path::Path};

use sha2::{Digest, Sha256};

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

/// HMAC-SHA256 (RFC 2104) over sha2.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}
