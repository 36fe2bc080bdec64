//! File baselines: size, hash and qcow2 identity, compared field by field.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::qcow2::{HeaderSummary, Qcow2Error, Qcow2Image};
use crate::FieldChange;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub qcow2: Option<HeaderSummary>,
}

/// A FIFO, device or symlink at `path` (planted since the baseline, say) is an error, never
/// opened or followed.
pub fn baseline_entry(path: &Path) -> Result<BaselineEntry, Qcow2Error> {
    let mut f = crate::file::open(path).map_err(|e| Qcow2Error::Io(e.into()))?;
    let size = f.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let qcow2 = Qcow2Image::read_from(&mut f).ok().map(|i| i.summary());
    Ok(BaselineEntry {
        path: path.display().to_string(),
        size,
        sha256: hex::encode(hasher.finalize()),
        qcow2,
    })
}

pub fn compare_baseline(old: &BaselineEntry, new: &BaselineEntry) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut cmp = |f: &str, a: String, b: String| {
        if a != b {
            out.push(FieldChange::new(f, a, b));
        }
    };
    cmp("path", old.path.clone(), new.path.clone());
    cmp("file_size", old.size.to_string(), new.size.to_string());
    cmp("sha256", old.sha256.clone(), new.sha256.clone());
    match (&old.qcow2, &new.qcow2) {
        (Some(a), Some(b)) => {
            let hex = |v: u64| format!("{v:#x}");
            let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
            for (f, x, y) in [
                ("version", a.version.to_string(), b.version.to_string()),
                (
                    "size",
                    a.virtual_size.to_string(),
                    b.virtual_size.to_string(),
                ),
                (
                    "cluster_size",
                    a.cluster_size.to_string(),
                    b.cluster_size.to_string(),
                ),
                (
                    "crypt_method",
                    a.crypt_method.to_string(),
                    b.crypt_method.to_string(),
                ),
                ("backing_file", opt(&a.backing_file), opt(&b.backing_file)),
                (
                    "backing_format",
                    opt(&a.backing_format),
                    opt(&b.backing_format),
                ),
                (
                    "nb_snapshots",
                    a.nb_snapshots.to_string(),
                    b.nb_snapshots.to_string(),
                ),
                (
                    "l1_table_offset",
                    hex(a.l1_table_offset),
                    hex(b.l1_table_offset),
                ),
                (
                    "refcount_table_offset",
                    hex(a.refcount_table_offset),
                    hex(b.refcount_table_offset),
                ),
                (
                    "snapshots_offset",
                    hex(a.snapshots_offset),
                    hex(b.snapshots_offset),
                ),
                (
                    "incompatible_features",
                    hex(a.incompatible_features),
                    hex(b.incompatible_features),
                ),
                (
                    "compatible_features",
                    hex(a.compatible_features),
                    hex(b.compatible_features),
                ),
                (
                    "autoclear_features",
                    hex(a.autoclear_features),
                    hex(b.autoclear_features),
                ),
                (
                    "refcount_bits",
                    a.refcount_bits.to_string(),
                    b.refcount_bits.to_string(),
                ),
            ] {
                cmp(f, x, y);
            }
            for n in a.snapshots.iter().filter(|n| !b.snapshots.contains(n)) {
                out.push(FieldChange::new("snapshot_removed", n, ""));
            }
            for n in b.snapshots.iter().filter(|n| !a.snapshots.contains(n)) {
                out.push(FieldChange::new("snapshot_added", "", n));
            }
        }
        (a, b) if a.is_some() != b.is_some() => {
            let fmt = |s: &Option<HeaderSummary>| if s.is_some() { "qcow2" } else { "unknown" };
            out.push(FieldChange::new("format", fmt(a), fmt(b)));
        }
        _ => {}
    }
    out
}
