//! lvm2's layout constants and our limits, the error type and the length check every reader
//! shares.

/// Size of a label sector (lvm2 `LABEL_SIZE`).
pub const SECTOR_SIZE: usize = 512;
/// lvm2 scans this many sectors from the start of the device for a label.
pub const LABEL_SCAN_SECTORS: usize = 4;
pub const LABEL_ID: &[u8; 8] = b"LABELONE";
pub const LVM2_LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// lvm2 `INITIAL_CRC`, seed of every checksum lvm2 writes.
pub const INITIAL_CRC: u32 = 0xf597_a6cf;
pub const MDA_HEADER_SIZE: usize = 512;
/// lvm2 `FMTT_MAGIC`.
pub const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// lvm2 `RAW_LOCN_IGNORED` flag on a raw_locn.
pub const RAW_LOCN_IGNORED: u32 = 0x1;
/// Upper bound on metadata text we are willing to read or parse.
pub const MAX_METADATA_TEXT: usize = 4 * 1024 * 1024;

pub(super) const PV_UUID_LEN: usize = 32;
pub(super) const LABEL_HEADER_LEN: usize = 32;
pub(super) const DISK_LOCN_LEN: usize = 16;
pub(super) const RAW_LOCN_LEN: usize = 24;
pub(super) const MDA_FIXED_LEN: usize = 40;
/// Per-list cap on disk_locn entries; a real PV has 1-2 of each.
pub(super) const MAX_DISK_LOCNS: usize = 8;
/// Nesting depth cap for the text parser (real metadata nests 5 deep).
pub(super) const MAX_DEPTH: usize = 32;
/// Default layout used by `classify_pv_write` when nothing was decoded yet.
pub(super) const DEFAULT_MDA_START: u64 = 4096;
pub(super) const DEFAULT_PE_START: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LvmError {
    #[error("buffer too short: need {need} bytes, have {have}")]
    Short { need: usize, have: usize },
    #[error("no LABELONE label in sectors 0..{LABEL_SCAN_SECTORS}")]
    NoLabel,
    #[error("label type {0:?} is not LVM2 001")]
    BadLabelType(String),
    #[error("label offset_xl {0} out of range")]
    BadLabelOffset(u32),
    #[error("bad metadata area header magic")]
    BadMdaMagic,
    #[error("metadata area header inconsistent: {0}")]
    BadMdaHeader(&'static str),
    #[error("PV has no metadata area inside the captured bytes")]
    NoMetadataArea,
    #[error("metadata area has no committed text location")]
    NoRawLocn,
    #[error("metadata text location out of range: {0}")]
    TextOutOfRange(&'static str),
    #[error("metadata text too large: {0} bytes")]
    TooLarge(usize),
    #[error("metadata syntax error at line {line}: {msg}")]
    Syntax { line: usize, msg: &'static str },
    #[error("metadata nests deeper than {MAX_DEPTH} sections")]
    TooDeep,
    #[error("no volume group section in metadata text")]
    NoVg,
}

pub type Result<T> = std::result::Result<T, LvmError>;

pub(super) fn need(b: &[u8], n: usize) -> Result<()> {
    if b.len() < n {
        Err(LvmError::Short {
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}
