//! The qcow2 header: fields, feature bits and validation.

use serde::{Deserialize, Serialize};

use super::base::{
    escape_bytes, invalid, too_large, Qcow2Error, INCOMPAT_COMPRESSION, MAX_BACKING_NAME,
    MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS, QCOW2_MAGIC,
};
use crate::bytes::{be_padded, be_u32_padded, be_u64_padded};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qcow2Header {
    pub magic: u32,
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
}

impl Qcow2Header {
    /// Decode without validation; missing bytes read as zero, v3 fields get
    /// v2 defaults unless version is 3. Never fails: used for raw diffs.
    pub fn decode_lossy(b: &[u8]) -> Self {
        let version = be_u32_padded(b, 4);
        let v3 = version == 3;
        let header_length = if v3 { be_u32_padded(b, 100) } else { 72 };
        Self {
            magic: be_u32_padded(b, 0),
            version,
            backing_file_offset: be_u64_padded(b, 8),
            backing_file_size: be_u32_padded(b, 16),
            cluster_bits: be_u32_padded(b, 20),
            size: be_u64_padded(b, 24),
            crypt_method: be_u32_padded(b, 32),
            l1_size: be_u32_padded(b, 36),
            l1_table_offset: be_u64_padded(b, 40),
            refcount_table_offset: be_u64_padded(b, 48),
            refcount_table_clusters: be_u32_padded(b, 56),
            nb_snapshots: be_u32_padded(b, 60),
            snapshots_offset: be_u64_padded(b, 64),
            incompatible_features: if v3 { be_u64_padded(b, 72) } else { 0 },
            compatible_features: if v3 { be_u64_padded(b, 80) } else { 0 },
            autoclear_features: if v3 { be_u64_padded(b, 88) } else { 0 },
            refcount_order: if v3 { be_u32_padded(b, 96) } else { 4 },
            header_length,
            compression_type: if v3 && header_length > 104 {
                be_padded(b, 104, 1) as u8
            } else {
                0
            },
        }
    }

    /// Cluster size in bytes (0 if cluster_bits is absurd).
    pub fn cluster_size(&self) -> u64 {
        if self.cluster_bits < 64 {
            1u64 << self.cluster_bits
        } else {
            0
        }
    }

    pub fn refcount_bits(&self) -> u64 {
        if self.refcount_order < 64 {
            1u64 << self.refcount_order
        } else {
            0
        }
    }

    pub fn refcount_table_bytes(&self) -> u64 {
        u64::from(self.refcount_table_clusters).saturating_mul(self.cluster_size())
    }

    /// Formatted value of every field, in HEADER_FIELDS order.
    pub fn field_values(&self) -> Vec<(&'static str, String)> {
        let hex = |v: u64| format!("{v:#x}");
        vec![
            ("magic", escape_bytes(&self.magic.to_be_bytes())),
            ("version", self.version.to_string()),
            ("backing_file_offset", hex(self.backing_file_offset)),
            ("backing_file_size", self.backing_file_size.to_string()),
            ("cluster_bits", self.cluster_bits.to_string()),
            ("size", self.size.to_string()),
            ("crypt_method", self.crypt_method.to_string()),
            ("l1_size", self.l1_size.to_string()),
            ("l1_table_offset", hex(self.l1_table_offset)),
            ("refcount_table_offset", hex(self.refcount_table_offset)),
            (
                "refcount_table_clusters",
                self.refcount_table_clusters.to_string(),
            ),
            ("nb_snapshots", self.nb_snapshots.to_string()),
            ("snapshots_offset", hex(self.snapshots_offset)),
            ("incompatible_features", hex(self.incompatible_features)),
            ("compatible_features", hex(self.compatible_features)),
            ("autoclear_features", hex(self.autoclear_features)),
            ("refcount_order", self.refcount_order.to_string()),
            ("header_length", self.header_length.to_string()),
            ("compression_type", self.compression_type.to_string()),
        ]
    }

    /// Names of set feature bits (unknown ones as `<kind>_bit<N>`).
    pub fn feature_names(&self) -> Vec<String> {
        const INC: [&str; 5] = [
            "dirty",
            "corrupt",
            "external_data_file",
            "compression_type",
            "extended_l2",
        ];
        const COMPAT: [&str; 1] = ["lazy_refcounts"];
        const AUTO: [&str; 2] = ["bitmaps", "raw_external_data"];
        let mut out = Vec::new();
        for (kind, bits, names) in [
            ("incompatible", self.incompatible_features, &INC[..]),
            ("compatible", self.compatible_features, &COMPAT[..]),
            ("autoclear", self.autoclear_features, &AUTO[..]),
        ] {
            for bit in (0..64).filter(|b| bits & (1u64 << b) != 0) {
                out.push(match names.get(bit) {
                    Some(n) => (*n).to_string(),
                    None => format!("{kind}_bit{bit}"),
                });
            }
        }
        out
    }
}

/// Parse and validate the fixed header (limits as QEMU enforces them).
pub fn parse_header(bytes: &[u8]) -> Result<Qcow2Header, Qcow2Error> {
    let have = bytes.len() as u64;
    if have < 4 {
        return Err(Qcow2Error::Truncated {
            what: "header",
            need: 72,
            have,
        });
    }
    if be_u32_padded(bytes, 0) != QCOW2_MAGIC {
        return Err(Qcow2Error::BadMagic);
    }
    let need = if be_u32_padded(bytes, 4) == 3 {
        104
    } else {
        72
    };
    if have < need {
        return Err(Qcow2Error::Truncated {
            what: "header",
            need,
            have,
        });
    }
    let h = Qcow2Header::decode_lossy(bytes);
    if h.version != 2 && h.version != 3 {
        return Err(Qcow2Error::UnsupportedVersion(h.version));
    }
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(invalid(
            "cluster_bits",
            format!("{} not in 9..=21", h.cluster_bits),
        ));
    }
    let cs = h.cluster_size();
    if h.version == 3 {
        if h.header_length < 104 || !h.header_length.is_multiple_of(8) {
            return Err(invalid("header_length", format!("{}", h.header_length)));
        }
        too_large("header_length", h.header_length.into(), cs)?;
        if have < u64::from(h.header_length) {
            return Err(Qcow2Error::Truncated {
                what: "header",
                need: h.header_length.into(),
                have,
            });
        }
    }
    too_large(
        "backing_file_size",
        h.backing_file_size.into(),
        MAX_BACKING_NAME.into(),
    )?;
    if h.crypt_method > 2 {
        return Err(invalid("crypt_method", h.crypt_method.to_string()));
    }
    if h.refcount_order > 6 {
        return Err(invalid("refcount_order", h.refcount_order.to_string()));
    }
    if h.compression_type > 1
        || (h.compression_type != 0 && h.incompatible_features & INCOMPAT_COMPRESSION == 0)
    {
        return Err(invalid("compression_type", h.compression_type.to_string()));
    }
    too_large("l1_size", u64::from(h.l1_size) * 8, MAX_L1_BYTES)?;
    too_large("nb_snapshots", h.nb_snapshots.into(), MAX_SNAPSHOTS.into())?;
    too_large(
        "refcount_table",
        h.refcount_table_bytes(),
        MAX_REFTABLE_BYTES,
    )?;
    for (field, off) in [
        ("l1_table_offset", h.l1_table_offset),
        ("refcount_table_offset", h.refcount_table_offset),
        ("snapshots_offset", h.snapshots_offset),
    ] {
        if off % cs != 0 {
            return Err(invalid(field, format!("{off:#x} not cluster aligned")));
        }
    }
    Ok(h)
}
