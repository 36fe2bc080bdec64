//! Classifying a write to a PV by the on-disk structure it lands on.

use super::base::{
    DEFAULT_MDA_START, DEFAULT_PE_START, LABEL_SCAN_SECTORS, MDA_HEADER_SIZE, SECTOR_SIZE,
};
use super::label::PvLabel;
use super::mda::MdaHeader;

pub const REGION_LABEL: &str = "lvm.label";
pub const REGION_MDA_HEADER: &str = "lvm.mda_header";
pub const REGION_METADATA: &str = "lvm.metadata";
pub const REGION_DATA: &str = "lvm.data";

fn overlaps(w_start: u64, w_end: u64, start: u64, end: u64) -> bool {
    w_start < end && start < w_end
}

/// Name every PV region a write of `len` bytes at byte `offset` touches.
///
/// Without a decoded label/header the lvm2 defaults are assumed: label in
/// sectors 0..3, mda header at 4 KiB, text up to 1 MiB, data from 1 MiB.
/// lvm2 writes through bcache from offset 0, so one write usually spans
/// several regions (e.g. 4608 bytes at 0 = label + mda header).
/// Byte ranges of a PV whose writes matter to the rules even from LVM itself: the label
/// sectors and every metadata area (header and text), as `classify_pv_write` sees them.
pub fn pv_metadata_ranges(label: Option<&PvLabel>, mda: Option<&MdaHeader>) -> Vec<(u64, u64)> {
    let sector = SECTOR_SIZE as u64;
    let hdr = MDA_HEADER_SIZE as u64;
    let mut out = vec![(0, LABEL_SCAN_SECTORS as u64 * sector)];
    if let Some(l) = label {
        out.push((l.label_offset(), l.label_offset().saturating_add(sector)));
    }
    let mut areas: Vec<(u64, u64)> = Vec::new();
    if let Some(m) = mda {
        areas.push((m.start, m.size));
    }
    if let Some(l) = label {
        areas.extend(l.metadata_areas.iter().map(|a| (a.offset, a.size)));
    }
    if areas.is_empty() {
        areas.push((DEFAULT_MDA_START, DEFAULT_PE_START - DEFAULT_MDA_START));
    }
    out.extend(
        areas
            .into_iter()
            .map(|(s, size)| (s, s.saturating_add(size.max(hdr)))),
    );
    out
}

pub fn classify_pv_write(
    label: Option<&PvLabel>,
    mda: Option<&MdaHeader>,
    offset: u64,
    len: u64,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let end = offset.saturating_add(len);
    let sector = SECTOR_SIZE as u64;
    let hdr = MDA_HEADER_SIZE as u64;

    let (lstart, lend) = match label {
        Some(l) => (l.label_offset(), l.label_offset().saturating_add(sector)),
        None => (0, LABEL_SCAN_SECTORS as u64 * sector),
    };
    if overlaps(offset, end, lstart, lend) {
        out.push(REGION_LABEL);
    }

    // Metadata areas: the decoded header wins; otherwise the label's list;
    // otherwise the default single area.
    let mut areas: Vec<(u64, u64)> = Vec::new();
    if let Some(m) = mda {
        areas.push((m.start, m.size));
    }
    if let Some(l) = label {
        for a in &l.metadata_areas {
            if !areas.iter().any(|(s, _)| *s == a.offset) {
                areas.push((a.offset, a.size));
            }
        }
    }
    if areas.is_empty() {
        areas.push((DEFAULT_MDA_START, DEFAULT_PE_START - DEFAULT_MDA_START));
    }
    let mut hit_hdr = false;
    let mut hit_text = false;
    for (s, size) in &areas {
        let hend = s.saturating_add(hdr);
        let aend = s.saturating_add((*size).max(hdr));
        hit_hdr |= overlaps(offset, end, *s, hend);
        hit_text |= overlaps(offset, end, hend, aend);
    }
    if hit_hdr {
        out.push(REGION_MDA_HEADER);
    }
    if hit_text {
        out.push(REGION_METADATA);
    }

    let data: Vec<(u64, u64)> = match label {
        Some(l) if !l.data_areas.is_empty() => l
            .data_areas
            .iter()
            .map(|d| {
                let e = if d.size == 0 {
                    u64::MAX
                } else {
                    d.offset.saturating_add(d.size)
                };
                (d.offset, e)
            })
            .collect(),
        _ => vec![(DEFAULT_PE_START, u64::MAX)],
    };
    if data.iter().any(|(s, e)| overlaps(offset, end, *s, *e)) {
        out.push(REGION_DATA);
    }
    out
}
