//! Classify stage: qcow2 format intelligence — parse, region map, shadow diff.
//!
//! Everything here treats the image as hostile: sizes are capped (mirroring
//! QEMU's own limits), arithmetic saturates, and loops are bounded by counts
//! read from the header *after* those counts were capped.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize, Serializer};

use crate::bytes::{be_padded, be_u16_padded, be_u32_padded, be_u64_padded};

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

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2_COMPRESSED: u64 = 1 << 62;
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

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

fn invalid(field: &'static str, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Invalid {
        field,
        reason: reason.into(),
    }
}

fn too_large(what: &'static str, value: u64, limit: u64) -> Result<(), Qcow2Error> {
    if value > limit {
        Err(Qcow2Error::TooLarge { what, value, limit })
    } else {
        Ok(())
    }
}

fn align8(x: u64) -> u64 {
    x.saturating_add(7) & !7
}
fn round_up(x: u64, to: u64) -> u64 {
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

// ---------------------------------------------------------------- header

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

// ---------------------------------------------------------------- extensions

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureName {
    pub kind: u8,
    pub bit: u8,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExtensionData {
    BackingFormat(String),
    FeatureNames(Vec<FeatureName>),
    Bitmaps {
        nb_bitmaps: u32,
        bitmap_directory_size: u64,
        bitmap_directory_offset: u64,
    },
    Encryption {
        offset: u64,
        length: u64,
    },
    ExternalDataFile(String),
    /// The type-0 terminator.
    End,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderExtension {
    pub ext_type: u32,
    /// Offset of the extension's {type,length} header in the file.
    pub offset: u64,
    /// Data length (without the 8-byte header and padding).
    pub length: u32,
    pub data: ExtensionData,
}

/// Name used in `header.extension.<name>` labels.
pub fn extension_name(ext_type: u32) -> Cow<'static, str> {
    match ext_type {
        0 => "end".into(),
        EXT_BACKING_FORMAT => "backing_format".into(),
        EXT_FEATURE_NAMES => "feature_names".into(),
        EXT_BITMAPS => "bitmaps".into(),
        EXT_ENCRYPTION => "encryption".into(),
        EXT_EXTERNAL_DATA_FILE => "external_data_file".into(),
        t => format!("unknown_{t:x}").into(),
    }
}

/// Parse extensions from cluster 0. Like QEMU, they end at the terminator or
/// at the backing file name (or the end of cluster 0).
pub fn parse_extensions(
    cluster0: &[u8],
    h: &Qcow2Header,
) -> Result<Vec<HeaderExtension>, Qcow2Error> {
    let cs = h.cluster_size();
    let end = if h.backing_file_offset != 0 {
        h.backing_file_offset.min(cs)
    } else {
        cs
    };
    let have = cluster0.len() as u64;
    let mut off = u64::from(h.header_length);
    let mut out = Vec::new();
    while off < end {
        if off.saturating_add(8) > end {
            return Err(invalid(
                "header extension",
                format!("header at {off:#x} crosses end"),
            ));
        }
        if off.saturating_add(8) > have {
            return Err(Qcow2Error::Truncated {
                what: "header extension",
                need: off + 8,
                have,
            });
        }
        let (o, ty, len) = (
            off as usize,
            be_u32_padded(cluster0, off as usize),
            be_u32_padded(cluster0, off as usize + 4),
        );
        let data_start = off + 8;
        let data_end = data_start + u64::from(len);
        if data_end > end {
            return Err(invalid(
                "header extension",
                format!("type {ty:#x} length {len} overflows"),
            ));
        }
        if data_end > have {
            return Err(Qcow2Error::Truncated {
                what: "header extension",
                need: data_end,
                have,
            });
        }
        let d = &cluster0[data_start as usize..data_end as usize];
        let text = |d: &[u8]| escape_bytes(d.split(|&c| c == 0).next().unwrap_or(&[]));
        let data = match ty {
            0 => ExtensionData::End,
            EXT_BACKING_FORMAT => ExtensionData::BackingFormat(text(d)),
            EXT_EXTERNAL_DATA_FILE => ExtensionData::ExternalDataFile(text(d)),
            EXT_FEATURE_NAMES => ExtensionData::FeatureNames(
                d.chunks_exact(48)
                    .map(|e| FeatureName {
                        kind: e[0],
                        bit: e[1],
                        name: text(&e[2..]),
                    })
                    .collect(),
            ),
            EXT_BITMAPS if len >= 24 => ExtensionData::Bitmaps {
                nb_bitmaps: be_u32_padded(d, 0),
                bitmap_directory_size: be_u64_padded(d, 8),
                bitmap_directory_offset: be_u64_padded(d, 16),
            },
            EXT_ENCRYPTION if len >= 16 => ExtensionData::Encryption {
                offset: be_u64_padded(d, 0),
                length: be_u64_padded(d, 8),
            },
            EXT_BITMAPS | EXT_ENCRYPTION => {
                return Err(invalid(
                    "header extension",
                    format!("type {ty:#x} too short ({len})"),
                ))
            }
            _ => ExtensionData::Unknown,
        };
        out.push(HeaderExtension {
            ext_type: ty,
            offset: o as u64,
            length: len,
            data,
        });
        if ty == 0 {
            break;
        }
        off = align8(data_end); // strictly advances by >= 8 bytes
    }
    Ok(out)
}

/// Backing file name bytes; kept raw so non-UTF-8 names survive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingName(pub Vec<u8>);

impl BackingName {
    pub fn display(&self) -> String {
        escape_bytes(&self.0)
    }
}

impl fmt::Display for BackingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

fn parse_backing(cluster0: &[u8], h: &Qcow2Header) -> Result<Option<BackingName>, Qcow2Error> {
    if h.backing_file_offset == 0 {
        return Ok(None);
    }
    let end = h
        .backing_file_offset
        .saturating_add(h.backing_file_size.into());
    if end > h.cluster_size() {
        return Err(invalid("backing_file_offset", "name outside cluster 0"));
    }
    let have = cluster0.len() as u64;
    if end > have {
        return Err(Qcow2Error::Truncated {
            what: "backing file name",
            need: end,
            have,
        });
    }
    Ok(Some(BackingName(
        cluster0[h.backing_file_offset as usize..end as usize].to_vec(),
    )))
}

/// Header, extensions and backing name: everything that lives in cluster 0.
pub fn parse_head(
    cluster0: &[u8],
) -> Result<(Qcow2Header, Vec<HeaderExtension>, Option<BackingName>), Qcow2Error> {
    let h = parse_header(cluster0)?;
    let ext = parse_extensions(cluster0, &h)?;
    let backing = parse_backing(cluster0, &h)?;
    Ok((h, ext, backing))
}

// ---------------------------------------------------------------- bounded reader

struct Src<'a, R> {
    r: &'a mut R,
    len: u64,
}

impl<'a, R: Read + Seek> Src<'a, R> {
    fn new(r: &'a mut R) -> Result<Self, Qcow2Error> {
        let len = r.seek(SeekFrom::End(0))?;
        Ok(Self { r, len })
    }

    /// Up to `len` bytes at `off`, clamped at EOF (callers cap `len`).
    fn read_clamped(&mut self, off: u64, len: u64) -> Result<Vec<u8>, Qcow2Error> {
        let avail = self.len.saturating_sub(off).min(len);
        let mut buf = Vec::with_capacity(avail as usize);
        if avail > 0 {
            self.r.seek(SeekFrom::Start(off))?;
            (&mut *self.r).take(avail).read_to_end(&mut buf)?;
        }
        Ok(buf)
    }

    fn read_exact(
        &mut self,
        off: u64,
        len: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, Qcow2Error> {
        let b = self.read_clamped(off, len)?;
        if (b.len() as u64) < len {
            return Err(Qcow2Error::Truncated {
                what,
                need: off.saturating_add(len),
                have: self.len,
            });
        }
        Ok(b)
    }
}

/// A file read as it will be once a captured write has landed. Hooks fire before
/// the bytes reach the file, so a re-read racing the syscall would see the old
/// header; overlaying the captured bytes makes the re-read independent of timing.
pub struct WithWrite<'a, R> {
    inner: R,
    pos: u64,
    off: u64,
    data: &'a [u8],
}

impl<'a, R> WithWrite<'a, R> {
    pub fn new(inner: R, off: u64, data: &'a [u8]) -> Self {
        Self {
            inner,
            pos: 0,
            off,
            data,
        }
    }
}

impl<R: Read> Read for WithWrite<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (start, end) = (self.pos, self.pos + n as u64);
        let (ws, we) = (self.off, self.off.saturating_add(self.data.len() as u64));
        let (a, b) = (start.max(ws), end.min(we));
        if a < b {
            buf[(a - start) as usize..(b - start) as usize]
                .copy_from_slice(&self.data[(a - ws) as usize..(b - ws) as usize]);
        }
        self.pos = end;
        Ok(n)
    }
}

impl<R: Seek> Seek for WithWrite<'_, R> {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(p)?;
        Ok(self.pos)
    }
}

/// Up to `len` bytes at `off`, clamped at EOF; callers bound `len`.
pub fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: u64) -> Result<Vec<u8>, Qcow2Error> {
    Src::new(r)?.read_clamped(off, len)
}

fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| be_u64_padded(c, 0)).collect()
}

// ---------------------------------------------------------------- snapshots

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Byte offset and padded length of this entry in the file.
    pub offset: u64,
    pub entry_len: u64,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    /// id and name, escaped with `escape_bytes`.
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u32,
    pub extra_data_size: u32,
    pub vm_state_size_large: Option<u64>,
    pub disk_size: Option<u64>,
    pub icount: Option<u64>,
}

fn read_snapshot_entry<R: Read + Seek>(
    src: &mut Src<R>,
    off: u64,
) -> Result<SnapshotEntry, Qcow2Error> {
    let f = src.read_exact(off, 40, "snapshot entry")?;
    let (id_len, name_len) = (be_u16_padded(&f, 12), be_u16_padded(&f, 14));
    let extra = be_u32_padded(&f, 36);
    too_large(
        "snapshot extra_data_size",
        extra.into(),
        MAX_SNAPSHOT_EXTRA.into(),
    )?;
    let var_len = u64::from(extra) + u64::from(id_len) + u64::from(name_len);
    let v = src.read_exact(off.saturating_add(40), var_len, "snapshot entry")?;
    let (e, rest) = v.split_at(extra as usize);
    let (id, name) = rest.split_at(id_len as usize);
    let opt = |at: u32| (extra >= at + 8).then(|| be_u64_padded(e, at as usize));
    Ok(SnapshotEntry {
        offset: off,
        entry_len: align8(40 + var_len),
        l1_table_offset: be_u64_padded(&f, 0),
        l1_size: be_u32_padded(&f, 8),
        id: escape_bytes(id),
        name: escape_bytes(name),
        date_sec: be_u32_padded(&f, 16),
        date_nsec: be_u32_padded(&f, 20),
        vm_clock_nsec: be_u64_padded(&f, 24),
        vm_state_size: be_u32_padded(&f, 32),
        extra_data_size: extra,
        vm_state_size_large: opt(0),
        disk_size: opt(8),
        icount: opt(16),
    })
}

/// Entries and the padded table length. QEMU does not write the last
/// entry's padding, so the file may end up to 7 bytes before the table does.
fn read_snapshot_table<R: Read + Seek>(
    src: &mut Src<R>,
    h: &Qcow2Header,
) -> Result<(Vec<SnapshotEntry>, u64), Qcow2Error> {
    let mut out = Vec::new();
    let mut off = h.snapshots_offset;
    let mut total = 0u64;
    for _ in 0..h.nb_snapshots {
        let e = read_snapshot_entry(src, off)?;
        total = total.saturating_add(e.entry_len);
        too_large("snapshot table", total, MAX_SNAPSHOT_TABLE)?;
        off = off.saturating_add(e.entry_len);
        out.push(e);
    }
    Ok((out, total))
}

/// Does this entry look like one QEMU wrote? Used to find stale/hidden
/// entries, so it is strict.
pub fn snapshot_entry_plausible(e: &SnapshotEntry, cluster_size: u64, file_len: u64) -> bool {
    let l1_bytes = u64::from(e.l1_size) * 8;
    e.l1_table_offset != 0
        && cluster_size != 0
        && e.l1_table_offset.is_multiple_of(cluster_size)
        && e.l1_size > 0
        && l1_bytes <= MAX_L1_BYTES
        && e.l1_table_offset.saturating_add(l1_bytes) <= file_len
        && !e.id.is_empty()
        && !e.id.contains("\\x")
        && !e.name.contains("\\x00")
        && e.date_nsec < 1_000_000_000
}

/// Leniently read up to `max_entries` consecutive plausible entries at
/// `offset` (stops at the first implausible or unreadable one).
pub fn scan_snapshot_entries<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    cluster_size: u64,
    max_entries: usize,
) -> Vec<SnapshotEntry> {
    let Ok(mut src) = Src::new(r) else {
        return Vec::new();
    };
    let file_len = src.len;
    let (mut out, mut off, mut total) = (Vec::new(), offset, 0u64);
    while out.len() < max_entries.min(MAX_SNAPSHOTS as usize) {
        match read_snapshot_entry(&mut src, off) {
            Ok(e) if snapshot_entry_plausible(&e, cluster_size, file_len) => {
                total = total.saturating_add(e.entry_len);
                if total > MAX_SNAPSHOT_TABLE {
                    break;
                }
                off = off.saturating_add(e.entry_len);
                out.push(e);
            }
            _ => break,
        }
    }
    out
}

// ---------------------------------------------------------------- bitmaps

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapEntry {
    /// Offset of this directory entry in the file.
    pub offset: u64,
    pub table_offset: u64,
    pub table_size: u32,
    pub flags: u32,
    pub bitmap_type: u8,
    pub granularity_bits: u8,
    pub name: String,
    pub extra_data_size: u32,
}

fn read_bitmap_dir<R: Read + Seek>(
    src: &mut Src<R>,
    nb: u32,
    size: u64,
    dir_off: u64,
) -> Result<Vec<BitmapEntry>, Qcow2Error> {
    too_large("nb_bitmaps", nb.into(), MAX_BITMAPS.into())?;
    too_large("bitmap_directory_size", size, MAX_BITMAP_DIR)?;
    let d = src.read_exact(dir_off, size, "bitmap directory")?;
    let mut out = Vec::new();
    let mut pos = 0u64;
    for _ in 0..nb {
        let p = pos as usize;
        if pos + 24 > size {
            return Err(invalid("bitmap directory", "entry overflows directory"));
        }
        let (name_len, extra) = (be_u16_padded(&d, p + 18), be_u32_padded(&d, p + 20));
        let name_start = pos + 24 + u64::from(extra);
        let end = name_start + u64::from(name_len);
        if end > size {
            return Err(invalid("bitmap directory", "entry overflows directory"));
        }
        out.push(BitmapEntry {
            offset: dir_off.saturating_add(pos),
            table_offset: be_u64_padded(&d, p),
            table_size: be_u32_padded(&d, p + 8),
            flags: be_u32_padded(&d, p + 12),
            bitmap_type: d[p + 16],
            granularity_bits: d[p + 17],
            name: escape_bytes(&d[name_start as usize..end as usize]),
            extra_data_size: extra,
        });
        pos = align8(end);
    }
    Ok(out)
}

// ---------------------------------------------------------------- regions

/// What a byte of the image file is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Region {
    /// `header.<field>`, `header.reserved` or `header.padding`.
    Header(&'static str),
    /// `header.extension.<name>` (type 0, the terminator, is `end`).
    Extension(u32),
    BackingName,
    /// LUKS header area referenced by the encryption extension.
    CryptoHeader,
    SnapshotTable,
    L1Active,
    L1Snapshot(String),
    Refcount,
    L2,
    Bitmap,
    Data,
}

/// `header.<field>` of a header region, without formatting for the fields there are: this
/// runs for every classified header write.
fn header_label(f: &'static str) -> Cow<'static, str> {
    let l = match f {
        "magic" => "header.magic",
        "version" => "header.version",
        "backing_file_offset" => "header.backing_file_offset",
        "backing_file_size" => "header.backing_file_size",
        "cluster_bits" => "header.cluster_bits",
        "size" => "header.size",
        "crypt_method" => "header.crypt_method",
        "l1_size" => "header.l1_size",
        "l1_table_offset" => "header.l1_table_offset",
        "refcount_table_offset" => "header.refcount_table_offset",
        "refcount_table_clusters" => "header.refcount_table_clusters",
        "nb_snapshots" => "header.nb_snapshots",
        "snapshots_offset" => "header.snapshots_offset",
        "incompatible_features" => "header.incompatible_features",
        "compatible_features" => "header.compatible_features",
        "autoclear_features" => "header.autoclear_features",
        "refcount_order" => "header.refcount_order",
        "header_length" => "header.header_length",
        "compression_type" => "header.compression_type",
        "reserved" => "header.reserved",
        "padding" => "header.padding",
        _ => return format!("header.{f}").into(),
    };
    l.into()
}

impl Region {
    pub fn as_label(&self) -> Cow<'static, str> {
        match self {
            Region::Header(f) => header_label(f),
            Region::Extension(t) => format!("header.extension.{}", extension_name(*t)).into(),
            Region::BackingName => "backing_name".into(),
            Region::CryptoHeader => "crypto_header".into(),
            Region::SnapshotTable => "snapshot_table".into(),
            Region::L1Active => "l1.active".into(),
            Region::L1Snapshot(_) => "l1.snapshot".into(),
            Region::Refcount => "refcount".into(),
            Region::L2 => "l2".into(),
            Region::Bitmap => "bitmap".into(),
            Region::Data => "data".into(),
        }
    }

    pub fn is_header(&self) -> bool {
        matches!(
            self,
            Region::Header(_) | Region::Extension(_) | Region::BackingName
        )
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_label())?;
        if let Region::L1Snapshot(name) = self {
            write!(f, "({name})")?;
        }
        Ok(())
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionSpan {
    pub region: Region,
    /// Half-open byte range [start, end).
    pub start: u64,
    pub end: u64,
}

/// Non-overlapping painted extents (first painter wins) plus sorted cluster
/// sets for the potentially numerous L2 tables and refcount blocks.
#[derive(Debug, Clone, Default)]
struct RegionMap {
    painted: BTreeMap<u64, (u64, Region)>,
    refblocks: Vec<u64>,
    l2: Vec<u64>,
    cluster_size: u64,
}

impl RegionMap {
    fn paint(&mut self, start: u64, end: u64, region: Region) {
        if start >= end {
            return;
        }
        let taken: Vec<(u64, u64)> = self
            .painted
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, (e, _))| (*s, *e))
            .collect();
        let mut cur = start;
        for (s, e) in taken.into_iter().rev() {
            if s > cur {
                self.painted.insert(cur, (s, region.clone()));
            }
            cur = cur.max(e);
        }
        if cur < end {
            self.painted.insert(cur, (end, region));
        }
    }

    fn next_in(set: &[u64], p: u64) -> u64 {
        set.get(set.partition_point(|&c| c <= p))
            .copied()
            .unwrap_or(u64::MAX)
    }

    /// Region at byte `p` and where that run ends (always > p).
    fn region_at(&self, p: u64) -> (Region, u64) {
        if let Some((_, (e, r))) = self.painted.range(..=p).next_back() {
            if *e > p {
                return (r.clone(), *e);
            }
        }
        let np = self
            .painted
            .range(p.saturating_add(1)..)
            .next()
            .map_or(u64::MAX, |(s, _)| *s);
        let cs = self.cluster_size.max(1);
        let c = p - p % cs;
        let ce = c.saturating_add(cs).min(np);
        if self.refblocks.binary_search(&c).is_ok() {
            return (Region::Refcount, ce);
        }
        if self.l2.binary_search(&c).is_ok() {
            return (Region::L2, ce);
        }
        if p < cs {
            return (Region::Header("padding"), ce);
        }
        let next = np
            .min(Self::next_in(&self.refblocks, p))
            .min(Self::next_in(&self.l2, p));
        (Region::Data, next)
    }
}

// ---------------------------------------------------------------- image

#[derive(Debug, Clone)]
pub struct Qcow2Image {
    pub header: Qcow2Header,
    pub extensions: Vec<HeaderExtension>,
    pub backing_file: Option<BackingName>,
    pub snapshots: Vec<SnapshotEntry>,
    /// Bytes used by the snapshot table entries.
    pub snapshot_table_len: u64,
    /// Active L1 entries present in the file (a table cut by EOF is shorter).
    pub l1: Vec<u64>,
    /// L1 entries per snapshot (parallel to `snapshots`); empty when not
    /// loaded because of MAX_SNAPSHOT_L1_TOTAL.
    pub snapshot_l1: Vec<Vec<u64>>,
    pub snapshot_l1_complete: bool,
    pub refcount_table: Vec<u64>,
    pub bitmaps: Vec<BitmapEntry>,
    pub file_len: u64,
    map: RegionMap,
}

impl Qcow2Image {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Qcow2Error> {
        Self::read_from(&mut std::io::Cursor::new(bytes))
    }

    pub fn read_from<R: Read + Seek>(r: &mut R) -> Result<Self, Qcow2Error> {
        let mut src = Src::new(r)?;
        let first = src.read_clamped(0, 112)?;
        let bits = be_u32_padded(&first, 20);
        let cluster0 = if (9..=21).contains(&bits) {
            src.read_clamped(0, 1u64 << bits)?
        } else {
            first
        };
        let (header, extensions, backing_file) = parse_head(&cluster0)?;
        let (snapshots, snapshot_table_len) = read_snapshot_table(&mut src, &header)?;

        let l1 = u64s(&src.read_clamped(header.l1_table_offset, u64::from(header.l1_size) * 8)?);
        let mut budget = MAX_SNAPSHOT_L1_TOTAL;
        let mut snapshot_l1 = Vec::with_capacity(snapshots.len());
        let mut snapshot_l1_complete = true;
        for s in &snapshots {
            let bytes = u64::from(s.l1_size) * 8;
            if bytes > budget || bytes > MAX_L1_BYTES {
                snapshot_l1_complete = false;
                snapshot_l1.push(Vec::new());
                continue;
            }
            budget -= bytes;
            snapshot_l1.push(u64s(&src.read_clamped(s.l1_table_offset, bytes)?));
        }
        let refcount_table =
            u64s(&src.read_clamped(header.refcount_table_offset, header.refcount_table_bytes())?);
        let mut bitmaps = Vec::new();
        if header.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
            if let Some(ExtensionData::Bitmaps {
                nb_bitmaps,
                bitmap_directory_size,
                bitmap_directory_offset,
            }) = extensions
                .iter()
                .map(|e| &e.data)
                .find(|d| matches!(d, ExtensionData::Bitmaps { .. }))
            {
                bitmaps = read_bitmap_dir(
                    &mut src,
                    *nb_bitmaps,
                    *bitmap_directory_size,
                    *bitmap_directory_offset,
                )?;
            }
        }
        let mut img = Self {
            header,
            extensions,
            backing_file,
            snapshots,
            snapshot_table_len,
            l1,
            snapshot_l1,
            snapshot_l1_complete,
            refcount_table,
            bitmaps,
            file_len: src.len,
            map: RegionMap::default(),
        };
        img.rebuild_map();
        Ok(img)
    }

    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    pub fn extension(&self, ext_type: u32) -> Option<&HeaderExtension> {
        self.extensions.iter().find(|e| e.ext_type == ext_type)
    }

    pub fn backing_format(&self) -> Option<&str> {
        self.extensions.iter().find_map(|e| match &e.data {
            ExtensionData::BackingFormat(f) => Some(f.as_str()),
            _ => None,
        })
    }

    /// Refcount block offsets referenced by the refcount table.
    pub fn refcount_blocks(&self) -> Vec<u64> {
        let cs = self.cluster_size();
        let mut v: Vec<u64> = self
            .refcount_table
            .iter()
            .map(|e| e & REFT_OFFSET_MASK)
            .filter(|&o| o != 0)
            .map(|o| o - o % cs)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// L2 table offsets referenced by the active or any snapshot L1.
    pub fn l2_tables(&self) -> Vec<u64> {
        let cs = self.cluster_size();
        let mut v: Vec<u64> = self
            .l1
            .iter()
            .chain(self.snapshot_l1.iter().flatten())
            .map(|e| e & L1_OFFSET_MASK)
            .filter(|&o| o != 0)
            .map(|o| o - o % cs)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// End of the header struct + extensions (terminator included).
    pub fn header_end(&self) -> u64 {
        self.extensions
            .last()
            .map_or(u64::from(self.header.header_length), |e| {
                align8(e.offset + 8 + u64::from(e.length))
            })
    }

    /// Exact extents of the non-cluster-set metadata: (label, start, end).
    pub fn metadata_extents(&self) -> Vec<(String, u64, u64)> {
        let h = &self.header;
        let mut v = vec![("header".to_string(), 0, self.header_end())];
        if let Some(b) = &self.backing_file {
            v.push((
                "backing_name".into(),
                h.backing_file_offset,
                h.backing_file_offset + b.0.len() as u64,
            ));
        }
        for e in &self.extensions {
            match e.data {
                ExtensionData::Encryption { offset, length } => v.push((
                    "crypto_header".into(),
                    offset,
                    offset.saturating_add(length),
                )),
                ExtensionData::Bitmaps {
                    bitmap_directory_offset: o,
                    bitmap_directory_size: s,
                    ..
                } if !self.bitmaps.is_empty() => {
                    v.push(("bitmap_directory".into(), o, o.saturating_add(s)))
                }
                _ => {}
            }
        }
        if self.snapshot_table_len > 0 {
            // Unwritten padding of the last entry is not part of the extent.
            let o = h.snapshots_offset;
            let end = o.saturating_add(self.snapshot_table_len).saturating_sub(7);
            v.push(("snapshot_table".into(), o, end.max(o + 1)));
        }
        if h.l1_size > 0 {
            let o = h.l1_table_offset;
            v.push((
                "l1.active".into(),
                o,
                o.saturating_add(u64::from(h.l1_size) * 8),
            ));
        }
        for s in self.snapshots.iter().filter(|s| s.l1_size > 0) {
            let o = s.l1_table_offset;
            v.push((
                format!("l1.snapshot({})", s.name),
                o,
                o.saturating_add(u64::from(s.l1_size) * 8),
            ));
        }
        if h.refcount_table_clusters > 0 {
            let o = h.refcount_table_offset;
            v.push((
                "refcount_table".into(),
                o,
                o.saturating_add(h.refcount_table_bytes()),
            ));
        }
        for b in self.bitmaps.iter().filter(|b| b.table_size > 0) {
            let o = b.table_offset;
            v.push((
                format!("bitmap_table({})", b.name),
                o,
                o.saturating_add(u64::from(b.table_size) * 8),
            ));
        }
        v
    }

    fn rebuild_map(&mut self) {
        self.paint_map();
        self.map.refblocks = self.refcount_blocks();
        self.map.l2 = self.l2_tables();
    }

    /// Repaint the header-derived extents; the L2 and refcount-block sets are kept.
    fn rebuild_map_keeping_tables(&mut self) {
        let refblocks = std::mem::take(&mut self.map.refblocks);
        let l2 = std::mem::take(&mut self.map.l2);
        self.paint_map();
        self.map.refblocks = refblocks;
        self.map.l2 = l2;
    }

    fn paint_map(&mut self) {
        let h = &self.header;
        let cs = h.cluster_size();
        let mut m = RegionMap {
            cluster_size: cs,
            ..Default::default()
        };
        let hlen = u64::from(h.header_length);
        let mut fields_end = 0;
        for &(name, s, l) in HEADER_FIELDS {
            if s + l <= hlen {
                m.paint(s, s + l, Region::Header(name));
                fields_end = fields_end.max(s + l);
            }
        }
        m.paint(fields_end, hlen, Region::Header("reserved"));
        for e in &self.extensions {
            let end = align8(e.offset + 8 + u64::from(e.length));
            m.paint(e.offset, end, Region::Extension(e.ext_type));
        }
        if let Some(b) = &self.backing_file {
            let o = h.backing_file_offset;
            m.paint(o, o + b.0.len() as u64, Region::BackingName);
        }
        // Metadata tables are allocated in whole clusters: their unused tails
        // belong to them too.
        let clus = |o: u64, len: u64| (o, o.saturating_add(round_up(len, cs)));
        for e in &self.extensions {
            if let ExtensionData::Encryption { offset, length } = e.data {
                let (s, e) = clus(offset, length);
                m.paint(s, e, Region::CryptoHeader);
            }
        }
        if self.snapshot_table_len > 0 {
            let (s, e) = clus(h.snapshots_offset, self.snapshot_table_len);
            m.paint(s, e, Region::SnapshotTable);
        }
        if h.l1_size > 0 {
            let (s, e) = clus(h.l1_table_offset, u64::from(h.l1_size) * 8);
            m.paint(s, e, Region::L1Active);
        }
        for sn in self.snapshots.iter().filter(|s| s.l1_size > 0) {
            let (s, e) = clus(sn.l1_table_offset, u64::from(sn.l1_size) * 8);
            m.paint(s, e, Region::L1Snapshot(sn.name.clone()));
        }
        let (s, e) = clus(h.refcount_table_offset, h.refcount_table_bytes());
        m.paint(s, e, Region::Refcount);
        for ext in &self.extensions {
            if let ExtensionData::Bitmaps {
                bitmap_directory_offset: o,
                bitmap_directory_size: len,
                ..
            } = ext.data
            {
                if !self.bitmaps.is_empty() {
                    let (s, e) = clus(o, len);
                    m.paint(s, e, Region::Bitmap);
                }
            }
        }
        for b in &self.bitmaps {
            let (s, e) = clus(b.table_offset, u64::from(b.table_size) * 8);
            m.paint(s, e, Region::Bitmap);
        }
        self.map = m;
    }

    /// Byte ranges whose writes matter even from QEMU: the header cluster (fields,
    /// extensions, backing name), snapshot table, active and snapshot L1 tables, refcount
    /// table, bitmap directory and tables, crypto header. L2 tables and refcount blocks are
    /// left out: only untrusted writers are alerted on them.
    pub fn metadata_ranges(&self) -> Vec<(u64, u64)> {
        let mut v = vec![(0, self.cluster_size().max(512))];
        v.extend(self.map.painted.iter().map(|(s, (e, _))| (*s, *e)));
        v
    }

    /// Classify a write of `len` bytes at `offset` into region spans, in
    /// offset order, adjacent bytes of one region coalesced.
    pub fn classify(&self, offset: u64, len: u64) -> Vec<RegionSpan> {
        let end = offset.saturating_add(len);
        let mut out: Vec<RegionSpan> = Vec::new();
        let mut p = offset;
        while p < end {
            let (region, run_end) = self.map.region_at(p);
            let e = run_end.min(end).max(p + 1);
            match out.last_mut() {
                Some(last) if last.region == region && last.end == p => last.end = e,
                _ => out.push(RegionSpan {
                    region,
                    start: p,
                    end: e,
                }),
            }
            p = e;
        }
        out
    }

    /// Refcount of the cluster containing `offset`, read from the file.
    /// None when the refcount table/block does not cover it.
    pub fn refcount_of<R: Read + Seek>(&self, r: &mut R, offset: u64) -> Option<u64> {
        let cs = self.cluster_size();
        let width = self.header.refcount_bits();
        if cs == 0 || width == 0 || width > 64 {
            return None;
        }
        let per_block = cs * 8 / width;
        let idx = offset / cs;
        let block = self
            .refcount_table
            .get(usize::try_from(idx / per_block).ok()?)?
            & REFT_OFFSET_MASK;
        if block == 0 {
            return Some(0);
        }
        let bit = (idx % per_block) * width;
        let mut src = Src::new(r).ok()?;
        let b = src
            .read_exact(block + bit / 8, width.div_ceil(8), "refcount block")
            .ok()?;
        Some(refcount_entry(&b, bit % 8 / width, width))
    }

    /// Clusters with a nonzero refcount that no known metadata claims (guest
    /// data, or orphaned metadata), in file order. Reads at most
    /// `MAX_REFTABLE_BYTES * 8` of refcount blocks and returns <= `limit`.
    pub fn allocated_data_clusters<R: Read + Seek>(&self, r: &mut R, limit: usize) -> Vec<u64> {
        let (cs, width) = (self.cluster_size(), self.header.refcount_bits());
        let mut out = Vec::new();
        let Ok(mut src) = Src::new(r) else {
            return out;
        };
        if cs == 0 || width == 0 || width > 64 {
            return out;
        }
        let per_block = cs * 8 / width;
        let mut budget = MAX_REFTABLE_BYTES * 8;
        for (ti, &e) in self.refcount_table.iter().enumerate() {
            let block = e & REFT_OFFSET_MASK;
            if block == 0 || budget < cs {
                continue;
            }
            budget -= cs;
            let Ok(b) = src.read_clamped(block, cs) else {
                break;
            };
            for i in 0..per_block {
                let off = (ti as u64 * per_block + i).saturating_mul(cs);
                if off >= self.file_len || out.len() >= limit {
                    return out;
                }
                if refcount_entry(&b, i, width) != 0 && self.map.region_at(off).0 == Region::Data {
                    out.push(off);
                }
            }
        }
        out
    }

    pub fn summary(&self) -> HeaderSummary {
        let h = &self.header;
        HeaderSummary {
            version: h.version,
            virtual_size: h.size,
            cluster_size: h.cluster_size(),
            crypt_method: h.crypt_method,
            backing_file: self.backing_file.as_ref().map(|b| b.display()),
            backing_format: self.backing_format().map(str::to_string),
            nb_snapshots: h.nb_snapshots,
            snapshots: self.snapshots.iter().map(|s| s.name.clone()).collect(),
            l1_table_offset: h.l1_table_offset,
            refcount_table_offset: h.refcount_table_offset,
            snapshots_offset: h.snapshots_offset,
            incompatible_features: h.incompatible_features,
            compatible_features: h.compatible_features,
            autoclear_features: h.autoclear_features,
            refcount_bits: h.refcount_bits(),
            features: h.feature_names(),
        }
    }
}

/// Entry `idx` of a refcount block of `width`-bit entries (0 if out of
/// range). Sub-byte refcounts are packed LSB first, as in QEMU.
pub fn refcount_entry(block: &[u8], idx: u64, width: u64) -> u64 {
    let bit = idx.saturating_mul(width);
    let Ok(byte) = usize::try_from(bit / 8) else {
        return 0;
    };
    match width {
        1 | 2 | 4 => block
            .get(byte)
            .map_or(0, |&b| (u64::from(b) >> (bit % 8)) & ((1 << width) - 1)),
        8 | 16 | 32 | 64 => be_padded(block, byte, (width / 8) as usize),
        _ => 0,
    }
}

/// Compact, serializable view of an image for reports and baselines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSummary {
    pub version: u32,
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub crypt_method: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub nb_snapshots: u32,
    pub snapshots: Vec<String>,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_bits: u64,
    pub features: Vec<String>,
}

// ---------------------------------------------------------------- diffs

const NONE: &str = "(none)";

pub fn diff_headers(before: &Qcow2Header, after: &Qcow2Header) -> Vec<FieldChange> {
    before
        .field_values()
        .into_iter()
        .zip(after.field_values())
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| FieldChange::new(name, a, b))
        .collect()
}

fn diff_backing(before: Option<&BackingName>, after: Option<&BackingName>) -> Option<FieldChange> {
    let show = |b: Option<&BackingName>| b.map_or(NONE.to_string(), |b| b.display());
    (before != after).then(|| FieldChange::new("backing_file", show(before), show(after)))
}

fn diff_named<'a>(
    kind: &str,
    before: impl Iterator<Item = &'a String>,
    after: impl Iterator<Item = &'a String>,
    out: &mut Vec<FieldChange>,
) {
    let (b, a): (BTreeSet<_>, BTreeSet<_>) = (before.collect(), after.collect());
    out.extend(
        b.difference(&a)
            .map(|n| FieldChange::new(format!("{kind}_removed"), *n, "")),
    );
    out.extend(
        a.difference(&b)
            .map(|n| FieldChange::new(format!("{kind}_added"), "", *n)),
    );
}

/// Field-level diff: header fields, backing file/format, snapshots (by
/// id+name, plus per-snapshot L1 moves) and bitmaps.
pub fn diff_images(before: &Qcow2Image, after: &Qcow2Image) -> Vec<FieldChange> {
    let mut out = diff_headers(&before.header, &after.header);
    out.extend(diff_backing(
        before.backing_file.as_ref(),
        after.backing_file.as_ref(),
    ));
    let fmt = |i: &Qcow2Image| i.backing_format().unwrap_or(NONE).to_string();
    if fmt(before) != fmt(after) {
        out.push(FieldChange::new("backing_format", fmt(before), fmt(after)));
    }
    let key = |s: &SnapshotEntry| (s.id.clone(), s.name.clone());
    let bmap: BTreeMap<_, _> = before.snapshots.iter().map(|s| (key(s), s)).collect();
    let amap: BTreeMap<_, _> = after.snapshots.iter().map(|s| (key(s), s)).collect();
    for (k, s) in &bmap {
        match amap.get(k) {
            None => out.push(FieldChange::new("snapshot_removed", &s.name, "")),
            Some(a) if a.l1_table_offset != s.l1_table_offset || a.l1_size != s.l1_size => out
                .push(FieldChange::new(
                    format!("snapshot[{}].l1", s.name),
                    format!("{:#x}/{}", s.l1_table_offset, s.l1_size),
                    format!("{:#x}/{}", a.l1_table_offset, a.l1_size),
                )),
            _ => {}
        }
    }
    out.extend(
        amap.iter()
            .filter(|(k, _)| !bmap.contains_key(*k))
            .map(|(_, s)| FieldChange::new("snapshot_added", "", &s.name)),
    );
    diff_named(
        "bitmap",
        before.bitmaps.iter().map(|b| &b.name),
        after.bitmaps.iter().map(|b| &b.name),
        &mut out,
    );
    out
}

// ---------------------------------------------------------------- shadow

/// Captured header write applied to the shadow's raw bytes.
#[derive(Debug, Clone)]
pub struct HeaderPatch {
    pub raw: Vec<u8>,
    /// Lossy decode of the patched header (always available).
    pub header: Qcow2Header,
    /// Why the patched header would not open (None = valid).
    pub error: Option<String>,
    pub backing_file: Option<BackingName>,
    pub changes: Vec<FieldChange>,
    /// Snapshot list as far as it can be inferred without reading the file.
    pub snapshots: Option<Vec<SnapshotEntry>>,
}

/// Shadow copy of an image's header area plus its parsed state.
#[derive(Debug, Clone)]
pub struct Qcow2Shadow {
    pub raw: Vec<u8>,
    pub image: Qcow2Image,
}

impl Qcow2Shadow {
    pub fn load<R: Read + Seek>(r: &mut R) -> Result<Self, Qcow2Error> {
        let image = Qcow2Image::read_from(r)?;
        let mut src = Src::new(r)?;
        let raw = src.read_clamped(0, image.cluster_size().min(SHADOW_BYTES))?;
        Ok(Self { raw, image })
    }

    /// Patch a captured write into a copy of the raw header bytes and diff
    /// it against the shadow. None if the write misses the header area.
    pub fn apply_header_write(&self, offset: u64, data: &[u8]) -> Option<HeaderPatch> {
        let rl = self.raw.len() as u64;
        if offset >= rl || data.is_empty() {
            return None;
        }
        let mut raw = self.raw.clone();
        let n = (rl - offset).min(data.len() as u64) as usize;
        raw[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
        let header = Qcow2Header::decode_lossy(&raw);
        let parsed = parse_head(&raw);
        let error = parsed.as_ref().err().map(|e| e.to_string());
        let backing_file = match &parsed {
            Ok((_, _, b)) => b.clone(),
            Err(_) => self.image.backing_file.clone(),
        };
        let mut changes = diff_headers(&self.image.header, &header);
        changes.extend(diff_backing(
            self.image.backing_file.as_ref(),
            backing_file.as_ref(),
        ));
        // Same table offset and fewer entries: the surviving entries are a
        // prefix of the old table, so the removed ones are known exactly.
        let old = &self.image.header;
        let snapshots = (error.is_none() && header.snapshots_offset == old.snapshots_offset)
            .then(|| self.image.snapshots.get(..header.nb_snapshots as usize))
            .flatten()
            .map(<[SnapshotEntry]>::to_vec);
        if let Some(kept) = &snapshots {
            changes.extend(
                self.image.snapshots[kept.len()..]
                    .iter()
                    .map(|s| FieldChange::new("snapshot_removed", &s.name, "")),
            );
        }
        Some(HeaderPatch {
            raw,
            header,
            error,
            backing_file,
            changes,
            snapshots,
        })
    }

    /// Take a patch into the shadow. Returns false when the shadow can no
    /// longer be kept consistent without `refresh` (invalid header, or
    /// snapshot/table pointers that need file reads).
    pub fn absorb(&mut self, patch: HeaderPatch) -> bool {
        self.raw = patch.raw;
        let Ok((header, extensions, backing)) = parse_head(&self.raw) else {
            return false;
        };
        let consistent = patch.snapshots.is_some()
            && header.l1_table_offset == self.image.header.l1_table_offset
            && header.l1_size == self.image.header.l1_size
            && header.refcount_table_offset == self.image.header.refcount_table_offset
            && header.refcount_table_clusters == self.image.header.refcount_table_clusters
            && header.cluster_bits == self.image.header.cluster_bits;
        // Same layout (a field rewritten in place): the region map stays valid as it is.
        let same_layout = header == self.image.header
            && extensions == self.image.extensions
            && backing == self.image.backing_file
            && patch
                .snapshots
                .as_ref()
                .is_some_and(|s| s.len() == self.image.snapshots.len());
        if same_layout {
            return consistent;
        }
        let same_tables = patch
            .snapshots
            .as_ref()
            .is_some_and(|s| s.len() == self.image.snapshot_l1.len());
        if let Some(s) = patch.snapshots {
            self.image.snapshot_l1.truncate(s.len());
            self.image.snapshot_table_len = s.iter().map(|e| e.entry_len).sum();
            self.image.snapshots = s;
        }
        self.image.header = header;
        self.image.extensions = extensions;
        self.image.backing_file = backing;
        if consistent && same_tables {
            // L1 and refcount tables untouched: keep their (costly) cluster sets.
            self.image.rebuild_map_keeping_tables();
        } else {
            self.image.rebuild_map();
        }
        consistent
    }

    /// Would this write leave the shadow's header bytes exactly as they are (a field
    /// rewritten with its current value)? Only when the shadow is itself consistent.
    pub fn is_noop_write(&self, offset: u64, data: &[u8]) -> bool {
        let Ok(o) = usize::try_from(offset) else {
            return false;
        };
        let Some(end) = o.checked_add(data.len()) else {
            return false;
        };
        !data.is_empty()
            && self.raw.get(o..end) == Some(data)
            && Qcow2Header::decode_lossy(&self.raw) == self.image.header
            && self.image.snapshots.len() >= self.image.header.nb_snapshots as usize
    }

    /// Re-read the file, diff against the shadow and replace it.
    pub fn refresh<R: Read + Seek>(&mut self, r: &mut R) -> Result<Vec<FieldChange>, Qcow2Error> {
        let new = Self::load(r)?;
        let changes = diff_images(&self.image, &new.image);
        *self = new;
        Ok(changes)
    }
}

#[cfg(any(test, feature = "testutil"))]
pub mod testutil {
    //! Real images from the installed qemu-img, in per-test temp dirs.
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub use crate::testutil::TmpDir;

    fn run(tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("`{tool}` is required by these tests (apt-get install qemu-utils) but could not run: {e}")
        });
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn qemu_img(args: &[&str]) -> String {
        run("qemu-img", args)
    }

    /// `qemu-img rebase -u -F qcow2 -b BACKING IMG`: only the header changes.
    pub fn rebase_unsafe(img: &str, backing: &str) {
        qemu_img(&["rebase", "-u", "-F", "qcow2", "-b", backing, img]);
    }

    pub fn qemu_io(img: &str, cmd: &str) {
        run("qemu-io", &["-f", "qcow2", "-c", cmd, img]);
    }

    pub fn info(p: &Path) -> serde_json::Value {
        serde_json::from_str(&qemu_img(&[
            "info",
            "--output=json",
            "-U",
            &p.display().to_string(),
        ]))
        .expect("qemu-img info json")
    }

    pub fn load(p: &Path) -> Qcow2Image {
        Qcow2Image::read_from(&mut std::fs::File::open(p).unwrap()).unwrap()
    }

    pub fn shadow(p: &Path) -> Qcow2Shadow {
        Qcow2Shadow::load(&mut std::fs::File::open(p).unwrap()).unwrap()
    }

    pub fn patch(p: &Path, off: u64, bytes: &[u8]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(bytes).unwrap();
    }

    /// v3 image with guest data (so L2 tables exist) and two snapshots.
    pub fn image_with_snapshots(d: &TmpDir, name: &str, extra: &[&str]) -> PathBuf {
        let p = d.s(name);
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&p, "64M"]);
        qemu_img(&args);
        qemu_io(&p, "write -P 0xab 0 128k");
        qemu_img(&["snapshot", "-c", "s1", &p]);
        qemu_io(&p, "write -P 0xcd 32M 64k");
        qemu_img(&["snapshot", "-c", "s2", &p]);
        d.path(name)
    }

    /// 4 KiB-cluster image whose metadata all fits in its first 64 KiB:
    /// backing name, two snapshots, a bitmap.
    pub fn small_seed_image(d: &TmpDir) -> PathBuf {
        let p = d.s("seed.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "16M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &p,
            "16M",
        ]);
        qemu_io(&p, "write -P 0xab 0 4k");
        qemu_img(&["snapshot", "-c", "s1", &p]);
        qemu_io(&p, "write -P 0xcd 8M 4k");
        qemu_img(&["snapshot", "-c", "s2", &p]);
        d.path("seed.qcow2")
    }

    pub struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn header_labels_need_no_formatting_and_say_what_formatting_would() {
        let names = HEADER_FIELDS
            .iter()
            .map(|f| f.0)
            .chain(["reserved", "padding"]);
        for name in names {
            let l = Region::Header(name).as_label();
            assert!(matches!(l, Cow::Borrowed(_)), "{name} is formatted");
            assert_eq!(l, format!("header.{name}"));
        }
        assert_eq!(Region::Header("other").as_label(), "header.other");
    }
    use std::time::{Duration, Instant};

    fn labels(spans: &[RegionSpan]) -> Vec<String> {
        spans.iter().map(|s| s.region.to_string()).collect()
    }

    fn check_against_info(img: &Qcow2Image, info: &serde_json::Value) {
        assert_eq!(img.header.size, info["virtual-size"].as_u64().unwrap());
        assert_eq!(img.cluster_size(), info["cluster-size"].as_u64().unwrap());
        assert_eq!(
            img.backing_file.as_ref().map(|b| b.display()),
            info["backing-filename"].as_str().map(str::to_string)
        );
        let snaps = info["snapshots"].as_array().cloned().unwrap_or_default();
        assert_eq!(img.snapshots.len(), snaps.len());
        assert_eq!(img.header.nb_snapshots as usize, snaps.len());
        for (s, j) in img.snapshots.iter().zip(&snaps) {
            assert_eq!(s.name, j["name"].as_str().unwrap());
            assert_eq!(s.id, j["id"].as_str().unwrap());
            assert_eq!(u64::from(s.date_sec), j["date-sec"].as_u64().unwrap());
            assert_eq!(u64::from(s.date_nsec), j["date-nsec"].as_u64().unwrap());
            assert_eq!(
                s.vm_state_size_large.unwrap_or(s.vm_state_size.into()),
                j["vm-state-size"].as_u64().unwrap()
            );
            assert_eq!(s.icount, j["icount"].as_u64());
        }
    }

    #[test]
    fn v3_create_matches_qemu_info() {
        let d = TmpDir::new("v3");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("a.qcow2"), "64M"]);
        let img = load(&d.path("a.qcow2"));
        check_against_info(&img, &info(&d.path("a.qcow2")));
        let h = &img.header;
        assert_eq!(
            (h.magic, h.version, h.header_length, h.refcount_order),
            (QCOW2_MAGIC, 3, 112, 4)
        );
        assert_eq!(h.nb_snapshots, 0);
        assert_eq!(img.l1.len(), h.l1_size as usize);
        assert!(img.extension(EXT_FEATURE_NAMES).is_some());
        assert!(matches!(
            img.extensions.last().unwrap().data,
            ExtensionData::End
        ));
        assert_eq!(
            labels(&img.classify(60, 12)),
            ["header.nb_snapshots", "header.snapshots_offset"]
        );
        assert_eq!(
            labels(&img.classify(104, 8)),
            ["header.compression_type", "header.reserved"]
        );
        assert_eq!(
            labels(&img.classify(112, 4)),
            ["header.extension.feature_names"]
        );
        assert_eq!(labels(&img.classify(65536 - 8, 8)), ["header.padding"]);
    }

    #[test]
    fn rewriting_a_field_with_its_value_is_a_noop_and_absorbing_a_change_keeps_the_map() {
        let d = TmpDir::new("noop");
        let p = d.s("a.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
            &p,
            "64M",
        ]);
        qemu_img(&["snapshot", "-c", "s1", &d.s("a.qcow2")]);
        let mut f = std::fs::File::open(d.path("a.qcow2")).unwrap();
        let mut sh = Qcow2Shadow::load(&mut f).unwrap();
        let same = sh.raw[60..72].to_vec();
        assert!(sh.is_noop_write(60, &same));
        assert!(!sh.is_noop_write(60, &[0, 0, 0, 0]));
        assert!(!sh.is_noop_write(u64::MAX, &same));
        // A changed field in place (dirty bit) is absorbed without touching the table sets.
        let l2 = sh.image.l2_tables();
        let p = sh.apply_header_write(72, &1u64.to_be_bytes()).unwrap();
        assert!(sh.absorb(p));
        assert_eq!(sh.image.header.incompatible_features, 1);
        assert_eq!(labels(&sh.image.classify(l2[0], 8)), ["l2"]);
        assert!(!sh.is_noop_write(72, &0u64.to_be_bytes()));
    }

    #[test]
    fn v2_compat_defaults() {
        let d = TmpDir::new("v2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            &d.s("a.qcow2"),
            "1M",
        ]);
        let img = load(&d.path("a.qcow2"));
        check_against_info(&img, &info(&d.path("a.qcow2")));
        let h = &img.header;
        assert_eq!(
            (
                h.version,
                h.header_length,
                h.refcount_order,
                h.incompatible_features
            ),
            (2, 72, 4, 0)
        );
        // v2 bytes 72.. are extensions, not v3 fields.
        assert_eq!(
            labels(&img.classify(68, 8)),
            ["header.snapshots_offset", "header.extension.end"]
        );
    }

    #[test]
    fn snapshots_match_qemu_info_and_list() {
        let d = TmpDir::new("snap");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let img = load(&p);
        check_against_info(&img, &info(&p));
        let list = qemu_img(&["snapshot", "-l", &d.s("a.qcow2")]);
        for s in &img.snapshots {
            assert!(list.contains(&s.name), "{list}");
            assert_eq!(s.extra_data_size, 24);
            assert_eq!(s.disk_size, Some(64 << 20));
        }
        assert_eq!(img.snapshot_l1.len(), 2);
        assert!(img.snapshot_l1.iter().all(|l| l.iter().any(|&e| e != 0)));
        let e = &img.snapshots[1];
        assert_eq!(
            e.offset,
            img.snapshots[0].offset + img.snapshots[0].entry_len
        );
        assert_eq!(e.entry_len, align8(40 + 24 + 1 + 2));
    }

    #[test]
    fn apply_and_delete_diffs() {
        let d = TmpDir::new("apply");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let mut sh = shadow(&p);
        qemu_img(&["snapshot", "-a", "s1", &d.s("a.qcow2")]);
        let ch = sh.refresh(&mut std::fs::File::open(&p).unwrap()).unwrap();
        assert!(
            ch.iter()
                .all(|c| c.field != "nb_snapshots" && !c.field.starts_with("snapshot_")),
            "{ch:?}"
        );
        qemu_img(&["snapshot", "-d", "s1", &d.s("a.qcow2")]);
        let ch = sh.refresh(&mut std::fs::File::open(&p).unwrap()).unwrap();
        let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"nb_snapshots: 2 → 1".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"snapshot_removed: s1".to_string()),
            "{text:?}"
        );
        assert!(ch.iter().any(|c| c.field == "snapshots_offset"));
        qemu_img(&["snapshot", "-d", "s2", &d.s("a.qcow2")]);
        let ch = sh.refresh(&mut std::fs::File::open(&p).unwrap()).unwrap();
        let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"nb_snapshots: 1 → 0".to_string()),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("snapshots_offset: 0x") && t.ends_with("→ 0x0")),
            "{text:?}"
        );
        assert_eq!(
            ch.iter()
                .find(|c| c.field == "snapshot_removed")
                .unwrap()
                .before,
            "s2"
        );
    }

    #[test]
    fn zeroed_nb_snapshots_patch_equals_reread() {
        let d = TmpDir::new("zero");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let mut sh = shadow(&p);
        let mut w = sh.raw[60..72].to_vec();
        w[..4].fill(0);
        let patch = sh.apply_header_write(60, &w).expect("header write");
        assert!(patch.error.is_none());
        patch_file_and_compare(&mut sh, &p, &w, patch);
    }

    fn patch_file_and_compare(
        sh: &mut Qcow2Shadow,
        p: &std::path::Path,
        w: &[u8],
        hp: HeaderPatch,
    ) {
        patch(p, 60, w);
        let mut reread = sh.refresh(&mut std::fs::File::open(p).unwrap()).unwrap();
        let mut fromp = hp.changes.clone();
        reread.sort();
        fromp.sort();
        assert_eq!(reread, fromp);
        let text: Vec<String> = reread.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"nb_snapshots: 2 → 0".to_string()),
            "{text:?}"
        );
        assert_eq!(
            reread
                .iter()
                .filter(|c| c.field == "snapshot_removed")
                .count(),
            2
        );
    }

    #[test]
    fn absorb_keeps_shadow_consistent() {
        let d = TmpDir::new("absorb");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let mut sh = shadow(&p);
        let p1 = sh.apply_header_write(60, &1u32.to_be_bytes()).unwrap();
        assert!(sh.absorb(p1));
        assert_eq!(sh.image.snapshots.len(), 1);
        let p2 = sh.apply_header_write(0, b"\x00\x01\x02\x03").unwrap();
        assert!(p2.error.is_some());
        assert_eq!(
            p2.changes[0].to_string(),
            "magic: QFI\\xfb → \\x00\\x01\\x02\\x03"
        );
        assert!(!sh.absorb(p2));
        assert!(sh.apply_header_write(1 << 20, b"x").is_none());
    }

    #[test]
    fn with_write_overlays_the_captured_bytes_on_every_read_path() {
        let file: Vec<u8> = (0u8..32).collect();
        let mut r = WithWrite::new(std::io::Cursor::new(file), 6, b"ABCD");
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(&all[4..12], b"\x04\x05ABCD\x0a\x0b");
        // Reads that start inside, end inside, or miss the write.
        let mut b = [0u8; 3];
        r.seek(SeekFrom::Start(8)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"CD\x0a");
        r.seek(SeekFrom::Start(4)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"\x04\x05A");
        r.seek(SeekFrom::Start(20)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, &[20, 21, 22]);
        assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), 32);
    }

    #[test]
    fn rebase_changes_backing_file() {
        let d = TmpDir::new("rebase");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "64M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &d.s("top.qcow2"),
        ]);
        let top = d.path("top.qcow2");
        let img = load(&top);
        check_against_info(&img, &info(&top));
        assert_eq!(img.backing_format(), Some("qcow2"));
        assert_eq!(
            labels(&img.classify(img.header.backing_file_offset, 4)),
            ["backing_name"]
        );
        let mut sh = shadow(&top);
        qemu_img(&[
            "rebase",
            "-u",
            "-b",
            "/tmp/evil.qcow2",
            "-F",
            "qcow2",
            &d.s("top.qcow2"),
        ]);
        let ch = sh.refresh(&mut std::fs::File::open(&top).unwrap()).unwrap();
        let text: Vec<String> = ch.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"backing_file: base.qcow2 → /tmp/evil.qcow2".to_string()),
            "{text:?}"
        );
        check_against_info(&sh.image, &info(&top));
    }

    #[test]
    fn commit_amend_bitmap_resize() {
        let d = TmpDir::new("ops");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "64M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &d.s("top.qcow2"),
        ]);
        qemu_io(&d.s("top.qcow2"), "write -P 0x11 0 64k");
        qemu_img(&["commit", "-q", &d.s("top.qcow2")]);
        for n in ["base.qcow2", "top.qcow2"] {
            check_against_info(&load(&d.path(n)), &info(&d.path(n)));
        }
        let base = d.path("base.qcow2");
        let mut sh = shadow(&base);
        qemu_img(&["amend", "-o", "lazy_refcounts=on", &d.s("base.qcow2")]);
        let ch = sh
            .refresh(&mut std::fs::File::open(&base).unwrap())
            .unwrap();
        assert!(
            ch.iter()
                .any(|c| c.to_string() == "compatible_features: 0x0 → 0x1"),
            "{ch:?}"
        );

        qemu_img(&["bitmap", "--add", &d.s("base.qcow2"), "bm0"]);
        let ch = sh
            .refresh(&mut std::fs::File::open(&base).unwrap())
            .unwrap();
        assert!(
            ch.iter().any(|c| c.to_string() == "bitmap_added: bm0"),
            "{ch:?}"
        );
        assert!(
            ch.iter()
                .any(|c| c.to_string() == "autoclear_features: 0x0 → 0x1"),
            "{ch:?}"
        );
        let img = &sh.image;
        let inf = info(&base);
        let names: Vec<&str> = inf["format-specific"]["data"]["bitmaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["bm0"]);
        assert_eq!(img.bitmaps[0].name, "bm0");
        let Some(ExtensionData::Bitmaps {
            bitmap_directory_offset: o,
            ..
        }) = img.extension(EXT_BITMAPS).map(|e| &e.data)
        else {
            panic!("no bitmaps extension");
        };
        assert_eq!(labels(&img.classify(*o, 8)), ["bitmap"]);

        qemu_img(&["resize", "-q", &d.s("base.qcow2"), "128M"]);
        let ch = sh
            .refresh(&mut std::fs::File::open(&base).unwrap())
            .unwrap();
        assert!(
            ch.iter()
                .any(|c| c.to_string() == "size: 67108864 → 134217728"),
            "{ch:?}"
        );
        check_against_info(&sh.image, &info(&base));
    }

    #[test]
    fn classify_metadata_regions() {
        let d = TmpDir::new("classify");
        let p = image_with_snapshots(&d, "a.qcow2", &[]);
        let img = load(&p);
        let h = &img.header;
        let cs = img.cluster_size();
        assert_eq!(labels(&img.classify(h.l1_table_offset, 8)), ["l1.active"]);
        assert_eq!(
            labels(&img.classify(h.snapshots_offset, 40)),
            ["snapshot_table"]
        );
        let s1 = &img.snapshots[0];
        let sp = img.classify(s1.l1_table_offset, 8);
        assert_eq!(sp[0].region, Region::L1Snapshot("s1".into()));
        assert_eq!(sp[0].region.as_label(), "l1.snapshot");
        assert_eq!(
            labels(&img.classify(h.refcount_table_offset, 8)),
            ["refcount"]
        );
        let rb = img.refcount_blocks()[0];
        assert_eq!(labels(&img.classify(rb + 100, 2)), ["refcount"]);
        let l2 = img.l2_tables();
        assert!(!l2.is_empty());
        assert_eq!(labels(&img.classify(l2[0], 8)), ["l2"]);
        assert_eq!(
            labels(&img.classify(img.file_len + 100 * cs, 4096)),
            ["data"]
        );
        // Guest data cluster for offset 0: first L2 entry of the active L1.
        let mut f = std::fs::File::open(&p).unwrap();
        let l2e = Src::new(&mut f)
            .unwrap()
            .read_exact(img.l1[0] & L1_OFFSET_MASK, 8, "l2")
            .unwrap();
        let data = be_u64_padded(&l2e, 0) & L1_OFFSET_MASK;
        assert_eq!(labels(&img.classify(data, cs)), ["data"]);

        // One write across header, cluster 0 padding and the next clusters.
        let spans = img.classify(0, 4 * cs);
        assert_eq!(spans[0].region, Region::Header("magic"));
        assert!(spans
            .windows(2)
            .all(|w| w[0].end == w[1].start && w[0].region != w[1].region));
        assert_eq!((spans[0].start, spans.last().unwrap().end), (0, 4 * cs));
        let l = labels(&spans);
        let pos = |x: &str| {
            l.iter()
                .position(|y| y == x)
                .unwrap_or_else(|| panic!("{x} missing in {l:?}"))
        };
        assert!(pos("header.nb_snapshots") < pos("header.padding"));
        assert!(pos("header.padding") < pos("refcount"));
        assert_eq!(
            spans
                .iter()
                .find(|s| s.region == Region::Header("padding"))
                .unwrap()
                .end,
            cs
        );
    }

    fn damaged(base: &[u8], off: usize, bytes: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        v[off..off + bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn hostile_inputs_give_typed_errors() {
        let d = TmpDir::new("hostile");
        let p = small_seed_image(&d);
        let good = std::fs::read(&p).unwrap();
        let img = Qcow2Image::from_bytes(&good).unwrap();
        for n in [0, 3, 50, 71, 100, 111] {
            assert!(
                matches!(
                    Qcow2Image::from_bytes(&good[..n]),
                    Err(Qcow2Error::Truncated { .. })
                ),
                "len {n}"
            );
        }
        let so = img.header.snapshots_offset as usize;
        assert!(matches!(
            Qcow2Image::from_bytes(&good[..so + 20]),
            Err(Qcow2Error::Truncated { .. })
        ));
        let huge_l1 = damaged(&good, 36, &u32::MAX.to_be_bytes());
        assert!(matches!(
            Qcow2Image::from_bytes(&huge_l1),
            Err(Qcow2Error::TooLarge {
                what: "l1_size",
                ..
            })
        ));
        let beyond = damaged(&good, 64, &(1u64 << 40).to_be_bytes());
        assert!(matches!(
            Qcow2Image::from_bytes(&beyond),
            Err(Qcow2Error::Truncated { .. })
        ));
        let nb = damaged(&good, 60, &65535u32.to_be_bytes());
        assert!(Qcow2Image::from_bytes(&nb).is_err());
        let bfs = damaged(&good, 16, &5000u32.to_be_bytes());
        assert!(matches!(
            Qcow2Image::from_bytes(&bfs),
            Err(Qcow2Error::TooLarge {
                what: "backing_file_size",
                ..
            })
        ));
        // Extension length running past cluster 0.
        let ext = damaged(&good, 116, &0xffff_fff0u32.to_be_bytes());
        assert!(matches!(
            Qcow2Image::from_bytes(&ext),
            Err(Qcow2Error::Invalid { .. })
        ));
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let random: Vec<u8> = (0..8192).map(|_| rng.next() as u8).collect();
        assert!(matches!(
            Qcow2Image::from_bytes(&random),
            Err(Qcow2Error::BadMagic)
        ));
        assert!(matches!(
            parse_header(&damaged(&good, 4, &[0, 0, 0, 9])),
            Err(Qcow2Error::UnsupportedVersion(9))
        ));
        // Snapshot table pointing at the header itself: parses garbage or
        // errors, but terminates.
        let selfref = damaged(&good, 64, &0u64.to_be_bytes());
        let t = Instant::now();
        let _ = Qcow2Image::from_bytes(&selfref);
        // Everything pointing at cluster 0: still bounded.
        let mut all0 = good.clone();
        for o in [40, 48, 64] {
            all0[o..o + 8].fill(0);
        }
        if let Ok(i) = Qcow2Image::from_bytes(&all0) {
            let _ = i.classify(0, 1 << 20);
        }
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn mutation_fuzz_no_panic_bounded_time() {
        let d = TmpDir::new("fuzz");
        let p = small_seed_image(&d);
        let full = std::fs::read(&p).unwrap();
        assert!(full.len() <= 64 << 10, "seed image grew to {}", full.len());
        let seed = &full[..];
        let sh = Qcow2Shadow::load(&mut std::io::Cursor::new(seed)).unwrap();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let start = Instant::now();
        let mut parsed = 0;
        for i in 0..2000 {
            let mut v = seed.to_vec();
            for _ in 0..=rng.below(8) {
                // Mostly the header, sometimes anywhere.
                let span = if rng.below(4) == 0 {
                    v.len() as u64
                } else {
                    128
                };
                let i = rng.below(span) as usize;
                v[i] = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next() as u8,
                };
            }
            if rng.below(8) == 0 {
                v.truncate(rng.below(v.len() as u64) as usize);
            }
            if let Ok(img) = Qcow2Image::from_bytes(&v) {
                parsed += 1;
                let off = rng.below(1 << 20);
                let _ = img.classify(off, rng.below(1 << 18));
                let _ = diff_images(&sh.image, &img);
            }
            let off = rng.below(256);
            let _ = sh.apply_header_write(off, &v[..v.len().min(256)]);
            if i % 20 == 0 {
                // The file-based inspector must survive the same input.
                std::fs::write(d.path("m.qcow2"), &v).unwrap();
                let _ = crate::inspect::inspect_image(&d.path("m.qcow2")).to_string();
            }
        }
        assert!(parsed > 0, "no mutant parsed: mutations too coarse");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "took {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn entropy_and_escaping() {
        assert_eq!(shannon_entropy(&[0; 4096]), 0.0);
        let all: Vec<u8> = (0..=255).collect();
        assert!((shannon_entropy(&all) - 8.0).abs() < 1e-9);
        let mut rng = XorShift(7);
        let rnd: Vec<u8> = (0..65536).map(|_| rng.next() as u8).collect();
        assert!(shannon_entropy(&rnd) > 7.9);
        assert!(shannon_entropy(&QCOW2_MAGIC.to_be_bytes()) <= 2.0);
        assert_eq!(escape_bytes(b"QFI\xfb a\\\n"), "QFI\\xfb a\\x5c\\x0a");
        assert_eq!(BackingName(b"b\xffx".to_vec()).to_string(), "b\\xffx");
    }

    #[test]
    fn header_fields_table_matches_decoder() {
        // Each field's byte range must be what decode_lossy reads for it.
        let mut b = [0u8; 112];
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        let base = Qcow2Header::decode_lossy(&b).field_values();
        for (i, &(name, s, l)) in HEADER_FIELDS.iter().enumerate() {
            let mut m = b;
            m[(s + l - 1) as usize] ^= 0x01;
            let vals = Qcow2Header::decode_lossy(&m).field_values();
            assert_eq!(vals[i].0, name);
            let changed: Vec<_> = vals
                .iter()
                .zip(&base)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0)
                .collect();
            // Changing the version turns the v3 fields into v2 defaults.
            assert_eq!(changed[0], name);
            assert!(name == "version" || changed.len() == 1, "{changed:?}");
        }
    }
}
