//! A loaded image: header, tables and their extents.

use std::io::{Read, Seek};

use serde::{Deserialize, Serialize};

use super::base::{
    align8, round_up, Qcow2Error, AUTOCLEAR_BITMAPS, HEADER_FIELDS, L1_OFFSET_MASK, MAX_L1_BYTES,
    MAX_REFTABLE_BYTES, MAX_SNAPSHOT_L1_TOTAL, REFT_OFFSET_MASK,
};
use super::bitmap::{read_bitmap_dir, BitmapEntry};
use super::extension::{parse_head, BackingName, ExtensionData, HeaderExtension};
use super::header::Qcow2Header;
use super::reader::{u64s, Src};
use super::region::{Region, RegionMap, RegionSpan};
use super::snapshot::{read_snapshot_table, SnapshotEntry};
use crate::bytes::{be_padded, be_u32_padded};

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

    pub(super) fn rebuild_map(&mut self) {
        self.paint_map();
        self.map.refblocks = self.refcount_blocks();
        self.map.l2 = self.l2_tables();
    }

    /// Repaint the header-derived extents; the L2 and refcount-block sets are kept.
    pub(super) fn rebuild_map_keeping_tables(&mut self) {
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
