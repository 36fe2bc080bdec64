//! The metadata area header and the text it points at, wrapped or not.

use std::collections::BTreeMap;

use serde::Serialize;

use super::base::Result;
use super::base::{
    need, LvmError, INITIAL_CRC, MAX_METADATA_TEXT, MDA_FIXED_LEN, MDA_HEADER_SIZE, MDA_MAGIC,
    RAW_LOCN_IGNORED, RAW_LOCN_LEN,
};
use super::crc::calc_crc;
use super::label::{parse_label, PvLabel};
use super::metadata::{parse_metadata_text, VgMetadata};
use crate::bytes::{le_u32, le_u64};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RawLocn {
    /// Offset of the text relative to the start of the metadata area.
    pub offset: u64,
    /// Text length in bytes, including lvm2's trailing NUL.
    pub size: u64,
    pub checksum: u32,
    pub flags: u32,
}

impl RawLocn {
    pub fn ignored(&self) -> bool {
        self.flags & RAW_LOCN_IGNORED != 0
    }
}

/// Decoded `struct mda_header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MdaHeader {
    pub checksum: u32,
    pub checksum_computed: u32,
    pub checksum_ok: bool,
    pub version: u32,
    /// Absolute byte offset of this header on the PV.
    pub start: u64,
    /// Size of the whole metadata area, header included.
    pub size: u64,
    /// `raw_locns[0]` is the committed text, `[1]` the precommitted one.
    pub raw_locns: Vec<RawLocn>,
}

/// Decode the 512-byte `mda_header` at the start of `bytes`.
pub fn parse_mda_header(bytes: &[u8]) -> Result<MdaHeader> {
    need(bytes, MDA_HEADER_SIZE)?;
    let h = &bytes[..MDA_HEADER_SIZE];
    if &h[4..20] != MDA_MAGIC {
        return Err(LvmError::BadMdaMagic);
    }
    let checksum = le_u32(h, 0).unwrap_or(0);
    let checksum_computed = calc_crc(INITIAL_CRC, &h[4..]);
    let mut raw_locns = Vec::new();
    let mut pos = MDA_FIXED_LEN;
    // Null-terminated list; the header has room for 19 entries.
    while pos + RAW_LOCN_LEN <= MDA_HEADER_SIZE {
        let offset = le_u64(h, pos).unwrap_or(0);
        if offset == 0 {
            break;
        }
        raw_locns.push(RawLocn {
            offset,
            size: le_u64(h, pos + 8).unwrap_or(0),
            checksum: le_u32(h, pos + 16).unwrap_or(0),
            flags: le_u32(h, pos + 20).unwrap_or(0),
        });
        pos += RAW_LOCN_LEN;
    }
    Ok(MdaHeader {
        checksum,
        checksum_computed,
        checksum_ok: checksum == checksum_computed,
        version: le_u32(h, 20).unwrap_or(0),
        start: le_u64(h, 24).unwrap_or(0),
        size: le_u64(h, 32).unwrap_or(0),
        raw_locns,
    })
}

/// Committed metadata text pulled out of a captured device prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetadataText {
    pub label: PvLabel,
    pub mda: MdaHeader,
    pub locn: RawLocn,
    /// Text bytes in logical order (wrap-around already joined).
    pub text: Vec<u8>,
    pub wrapped: bool,
    pub checksum_computed: u32,
    pub checksum_ok: bool,
}

/// label → mda header → raw_locn[0] → text, from bytes starting at device
/// offset 0. The text area is a ring buffer after the 512-byte header.
pub fn read_metadata_text(device_bytes: &[u8]) -> Result<MetadataText> {
    let label = parse_label(device_bytes)?;
    let mut last_err = LvmError::NoMetadataArea;
    for area in &label.metadata_areas {
        let Ok(start) = usize::try_from(area.offset) else {
            continue;
        };
        let Some(hdr_bytes) = device_bytes.get(start..start.saturating_add(MDA_HEADER_SIZE)) else {
            continue;
        };
        match read_area_text(device_bytes, start, hdr_bytes) {
            Ok((mda, locn, text, wrapped)) => {
                let checksum_computed = calc_crc(INITIAL_CRC, &text);
                return Ok(MetadataText {
                    label,
                    checksum_ok: checksum_computed == locn.checksum,
                    checksum_computed,
                    mda,
                    locn,
                    text,
                    wrapped,
                });
            }
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

fn read_area_text(
    dev: &[u8],
    start: usize,
    hdr_bytes: &[u8],
) -> Result<(MdaHeader, RawLocn, Vec<u8>, bool)> {
    let mda = parse_mda_header(hdr_bytes)?;
    if mda.start != start as u64 {
        return Err(LvmError::BadMdaHeader("start does not match label"));
    }
    if mda.size <= MDA_HEADER_SIZE as u64 {
        return Err(LvmError::BadMdaHeader("area smaller than its header"));
    }
    let locn = *mda.raw_locns.first().ok_or(LvmError::NoRawLocn)?;
    if locn.size == 0 {
        return Err(LvmError::NoRawLocn);
    }
    let ring = MDA_HEADER_SIZE as u64..mda.size;
    if !ring.contains(&locn.offset) {
        return Err(LvmError::TextOutOfRange("offset outside the area"));
    }
    if locn.size > mda.size - MDA_HEADER_SIZE as u64 {
        return Err(LvmError::TextOutOfRange("size larger than the area"));
    }
    if locn.size > MAX_METADATA_TEXT as u64 {
        return Err(LvmError::TooLarge(locn.size as usize));
    }
    let size = locn.size as usize;
    // Same split as lvm2 _vg_read_raw_area: the tail that runs past the end
    // of the area continues right after the header.
    let first = (mda.size - locn.offset).min(locn.size) as usize;
    let wrap = size - first;
    let a0 = start
        .checked_add(locn.offset as usize)
        .ok_or(LvmError::TextOutOfRange("offset overflow"))?;
    let part1 = dev
        .get(a0..a0.saturating_add(first))
        .filter(|p| p.len() == first)
        .ok_or(LvmError::TextOutOfRange("text beyond captured bytes"))?;
    let mut text = Vec::with_capacity(size);
    text.extend_from_slice(part1);
    if wrap > 0 {
        let b0 = start + MDA_HEADER_SIZE;
        let part2 = dev.get(b0..b0 + wrap).ok_or(LvmError::TextOutOfRange(
            "wrapped text beyond captured bytes",
        ))?;
        text.extend_from_slice(part2);
    }
    Ok((mda, locn, text, wrap > 0))
}

/// Decode the committed VG metadata from bytes starting at device offset 0.
pub fn metadata_text_from_device(device_bytes: &[u8]) -> Result<VgMetadata> {
    let mt = read_metadata_text(device_bytes)?;
    parse_metadata_text(&mt.text)
}

/// Every VG version still readable in the metadata areas' ring buffers, oldest first, up to
/// and including the committed one (never a precommitted text beyond it).
///
/// LVM appends each new text at the next 512-byte boundary and only then moves the header's
/// pointer, so earlier versions stay on disk until the ring wraps over them. An observer that
/// reads late (the write landed long before the event was handled) still finds each
/// intermediate version and can attribute every change to the command that wrote it.
pub fn metadata_history(device_bytes: &[u8]) -> Vec<VgMetadata> {
    let Ok(cur) = metadata_text_from_device(device_bytes) else {
        return Vec::new();
    };
    let Ok(label) = parse_label(device_bytes) else {
        return vec![cur];
    };
    let prefix = format!("{} {{", cur.vg_name);
    let mut seen: BTreeMap<u64, VgMetadata> = BTreeMap::new();
    for area in &label.metadata_areas {
        let Ok(start) = usize::try_from(area.offset) else {
            continue;
        };
        let Some(hdr) = device_bytes.get(start..start.saturating_add(MDA_HEADER_SIZE)) else {
            continue;
        };
        let Ok(mda) = parse_mda_header(hdr) else {
            continue;
        };
        let end = start
            .saturating_add(usize::try_from(mda.size).unwrap_or(usize::MAX))
            .min(device_bytes.len());
        let mut at = start + MDA_HEADER_SIZE;
        while at < end {
            let chunk = &device_bytes[at..end];
            if chunk.starts_with(prefix.as_bytes()) {
                let len = chunk
                    .iter()
                    .take(MAX_METADATA_TEXT)
                    .position(|&b| b == 0)
                    .unwrap_or(chunk.len().min(MAX_METADATA_TEXT));
                if let Ok(vg) = parse_metadata_text(&chunk[..len]) {
                    if vg.vg_name == cur.vg_name && vg.vg_id == cur.vg_id && vg.seqno <= cur.seqno {
                        seen.entry(vg.seqno).or_insert(vg);
                    }
                }
                // Texts are contiguous: resume at the first boundary after this one.
                at += len.div_ceil(MDA_HEADER_SIZE).max(1) * MDA_HEADER_SIZE;
                continue;
            }
            at += MDA_HEADER_SIZE;
        }
    }
    seen.insert(cur.seqno, cur);
    seen.into_values().collect()
}

/// Did the command line `args` (argv, as the kernel saw it) write a VG version described as
/// `Write from <cmd>.` / `Write[2] from <cmd>.`? LVM quotes arguments with spaces, so only
/// plain arguments are compared, as whole words, in order.
pub fn description_names_command(description: &str, args: &[&[u8]]) -> bool {
    let Some((_, cmd)) = description.split_once(" from ") else {
        return false;
    };
    let cmd = cmd.strip_suffix('.').unwrap_or(cmd);
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let plain: Vec<&str> = args
        .iter()
        .filter_map(|a| std::str::from_utf8(a).ok())
        .filter(|a| {
            !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
        })
        .enumerate()
        // argv[0] may be a path; LVM names the command by its basename.
        .map(|(i, a)| {
            if i == 0 {
                a.rsplit('/').next().unwrap_or(a)
            } else {
                a
            }
        })
        // `lvm lvcreate …`: LVM names the command, not the multiplexer.
        .skip_while(|a| *a == "lvm")
        .collect();
    if plain.is_empty() {
        return false;
    }
    let mut w = words.iter();
    plain.iter().all(|a| w.any(|x| x == a))
}
