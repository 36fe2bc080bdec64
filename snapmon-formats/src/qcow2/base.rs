//! The qcow2 spec's constants and QEMU's limits, the error type and the arithmetic every
//! section shares.

pub const QCOW2_MAGIC: u32 = 0x5146_49fb;
/// QEMU's QCOW_MAX_SNAPSHOTS / QCOW_MAX_SNAPSHOTS_SIZE.
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_SNAPSHOT_TABLE: u64 = 64 << 20;
/// QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA.
pub const MAX_SNAPSHOT_EXTRA: u32 = 1024;
/// QEMU's QCOW_MAX_L1_SIZE.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's QCOW_MAX_REFTABLE_SIZE.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_BACKING_NAME: u32 = 1023;
/// Budget for all snapshot L1 tables together; beyond it they are not loaded.
pub const MAX_SNAPSHOT_L1_TOTAL: u64 = 32 << 20;
pub const MAX_BITMAPS: u32 = 65535;
pub const MAX_BITMAP_DIR: u64 = 64 << 20;
/// Raw header bytes kept by the shadow.
pub const SHADOW_BYTES: u64 = 64 << 10;

pub(super) const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2_COMPRESSED: u64 = 1 << 62;
pub(super) const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_ENCRYPTION: u32 = 0x0537_be77;
pub const EXT_EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

pub const INCOMPAT_DIRTY: u64 = 1;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_KNOWN: u64 = 0x1f;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1;
pub const AUTOCLEAR_BITMAPS: u64 = 1;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Byte range of every header field (start, length), v2 fields then v3 ones.
pub const HEADER_FIELDS: &[(&str, u64, u64)] = &[
    ("magic", 0, 4),
    ("version", 4, 4),
    ("backing_file_offset", 8, 8),
    ("backing_file_size", 16, 4),
    ("cluster_bits", 20, 4),
    ("size", 24, 8),
    ("crypt_method", 32, 4),
    ("l1_size", 36, 4),
    ("l1_table_offset", 40, 8),
    ("refcount_table_offset", 48, 8),
    ("refcount_table_clusters", 56, 4),
    ("nb_snapshots", 60, 4),
    ("snapshots_offset", 64, 8),
    ("incompatible_features", 72, 8),
    ("compatible_features", 80, 8),
    ("autoclear_features", 88, 8),
    ("refcount_order", 96, 4),
    ("header_length", 100, 4),
    ("compression_type", 104, 1),
];

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("bad magic (not a qcow2 image)")]
    BadMagic,
    #[error("unsupported qcow2 version {0}")]
    UnsupportedVersion(u32),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{what} too large: {value} > {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Invalid {
        field,
        reason: reason.into(),
    }
}

pub(super) fn too_large(what: &'static str, value: u64, limit: u64) -> Result<(), Qcow2Error> {
    if value > limit {
        Err(Qcow2Error::TooLarge { what, value, limit })
    } else {
        Ok(())
    }
}

pub(super) fn align8(x: u64) -> u64 {
    x.saturating_add(7) & !7
}
pub(super) fn round_up(x: u64, to: u64) -> u64 {
    x.checked_next_multiple_of(to.max(1)).unwrap_or(u64::MAX)
}

pub use crate::change::FieldChange;
pub use crate::text::escape_bytes;

/// Shannon entropy in bits per byte (0.0 ..= 8.0).
pub fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}
