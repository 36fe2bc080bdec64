//! Header extensions: backing format, feature names, bitmaps, external data file.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::base::{align8, escape_bytes, invalid, Qcow2Error};
use super::base::{
    EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_ENCRYPTION, EXT_EXTERNAL_DATA_FILE, EXT_FEATURE_NAMES,
};
use super::header::{parse_header, Qcow2Header};
use crate::bytes::{be_u32_padded, be_u64_padded};

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
