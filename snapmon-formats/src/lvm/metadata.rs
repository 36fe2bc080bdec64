//! The VG metadata model: VG, PVs, LVs and their segments.

use std::collections::BTreeMap;

use serde::Serialize;

use super::base::LvmError;
use super::base::Result;
use super::config::{parse_config, ConfigSection};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhysicalVolume {
    /// Key inside the VG (`pv0`, ...).
    pub name: String,
    pub id: Option<String>,
    pub device: Option<String>,
    pub status: Vec<String>,
    pub dev_size: Option<u64>,
    pub pe_start: Option<u64>,
    pub pe_count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LvSegment {
    pub start_extent: Option<u64>,
    pub extent_count: Option<u64>,
    pub seg_type: String,
    /// snapshot / thin: origin LV name.
    pub origin: Option<String>,
    /// snapshot: COW LV name (`merging_store` while merging).
    pub cow_store: Option<String>,
    pub merging: bool,
    pub chunk_size: Option<u64>,
    /// thin: pool LV name.
    pub thin_pool: Option<String>,
    pub device_id: Option<u64>,
    pub transaction_id: Option<u64>,
    pub external_origin: Option<String>,
    /// thin: LV being merged into this one.
    pub merge: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct LogicalVolume {
    pub name: String,
    pub id: Option<String>,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub tags: Vec<String>,
    pub creation_time: Option<u64>,
    pub creation_host: Option<String>,
    pub visible: bool,
    pub segments: Vec<LvSegment>,
    /// Old-style snapshot (the hidden `snapshotN` LV or its COW LV) or a
    /// thin LV with an origin.
    pub is_snapshot: bool,
    pub snapshot_origin: Option<String>,
}

impl LogicalVolume {
    /// Distinct segment types in order of first appearance.
    pub fn segment_types(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.segments {
            if !out.contains(&s.seg_type) {
                out.push(s.seg_type.clone());
            }
        }
        out
    }

    pub fn extent_count(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| s.extent_count)
            .fold(0u64, |a, b| a.saturating_add(b))
    }

    pub(super) fn snapshot_segment(&self) -> Option<&LvSegment> {
        self.segments.iter().find(|s| s.seg_type == "snapshot")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct VgMetadata {
    pub vg_name: String,
    pub vg_id: Option<String>,
    pub seqno: u64,
    pub format: Option<String>,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub extent_size: Option<u64>,
    /// `contents` of a backup/archive file ("Text Format Volume Group").
    pub contents: Option<String>,
    /// On disk `Write from <cmd>`; in files `Created *after* executing '<cmd>'`.
    pub description: Option<String>,
    pub creation_host: Option<String>,
    pub creation_time: Option<u64>,
    pub physical_volumes: Vec<PhysicalVolume>,
    pub logical_volumes: Vec<LogicalVolume>,
}

impl VgMetadata {
    pub fn lv(&self, name: &str) -> Option<&LogicalVolume> {
        self.logical_volumes.iter().find(|l| l.name == name)
    }

    pub fn snapshots(&self) -> impl Iterator<Item = &LogicalVolume> {
        self.logical_volumes.iter().filter(|l| l.is_snapshot)
    }
}

/// Parse LVM text metadata (on-disk area text, `/etc/lvm/backup/<vg>` or
/// `/etc/lvm/archive/*.vg`) into a VG model.
pub fn parse_metadata_text<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<VgMetadata> {
    let root = parse_config(text.as_ref())?;
    vg_from_config(&root)
}

/// Build the VG model from a parsed config tree.
pub fn vg_from_config(root: &ConfigSection) -> Result<VgMetadata> {
    // The VG is the top-level section carrying a seqno.
    let vg = root
        .sections
        .iter()
        .find(|s| s.get("seqno").is_some())
        .ok_or(LvmError::NoVg)?;
    let mut md = VgMetadata {
        vg_name: vg.name.clone(),
        vg_id: vg.get_str("id").map(str::to_string),
        seqno: vg.get_u64("seqno").unwrap_or(0),
        format: vg.get_str("format").map(str::to_string),
        status: vg.get_str_list("status"),
        flags: vg.get_str_list("flags"),
        extent_size: vg.get_u64("extent_size"),
        contents: root.get_str("contents").map(str::to_string),
        description: root.get_str("description").map(str::to_string),
        creation_host: root.get_str("creation_host").map(str::to_string),
        creation_time: root.get_u64("creation_time"),
        physical_volumes: Vec::new(),
        logical_volumes: Vec::new(),
    };
    if let Some(pvs) = vg.section("physical_volumes") {
        for pv in &pvs.sections {
            md.physical_volumes.push(PhysicalVolume {
                name: pv.name.clone(),
                id: pv.get_str("id").map(str::to_string),
                device: pv.get_str("device").map(str::to_string),
                status: pv.get_str_list("status"),
                dev_size: pv.get_u64("dev_size"),
                pe_start: pv.get_u64("pe_start"),
                pe_count: pv.get_u64("pe_count"),
            });
        }
    }
    if let Some(lvs) = vg.section("logical_volumes") {
        for lv in &lvs.sections {
            md.logical_volumes.push(lv_from_section(lv));
        }
    }
    mark_snapshots(&mut md.logical_volumes);
    Ok(md)
}

fn lv_from_section(lv: &ConfigSection) -> LogicalVolume {
    let status = lv.get_str_list("status");
    let segments = lv
        .sections
        .iter()
        .filter(|s| s.get("type").is_some() || s.name.starts_with("segment"))
        .map(|s| {
            let owned = |k: &str| s.get_str(k).map(str::to_string);
            let (cow_store, merging) = match owned("cow_store") {
                Some(c) => (Some(c), false),
                None => match owned("merging_store") {
                    Some(m) => (Some(m), true),
                    None => (None, false),
                },
            };
            LvSegment {
                start_extent: s.get_u64("start_extent"),
                extent_count: s.get_u64("extent_count"),
                seg_type: owned("type").unwrap_or_default(),
                origin: owned("origin"),
                cow_store,
                merging,
                chunk_size: s.get_u64("chunk_size"),
                thin_pool: owned("thin_pool"),
                device_id: s.get_u64("device_id"),
                transaction_id: s.get_u64("transaction_id"),
                external_origin: owned("external_origin"),
                merge: owned("merge"),
            }
        })
        .collect();
    LogicalVolume {
        name: lv.name.clone(),
        id: lv.get_str("id").map(str::to_string),
        visible: status.iter().any(|s| s == "VISIBLE"),
        status,
        flags: lv.get_str_list("flags"),
        tags: lv.get_str_list("tags"),
        creation_time: lv.get_u64("creation_time"),
        creation_host: lv.get_str("creation_host").map(str::to_string),
        segments,
        is_snapshot: false,
        snapshot_origin: None,
    }
}

fn mark_snapshots(lvs: &mut [LogicalVolume]) {
    // COW LVs are plain striped LVs; only the hidden snapshotN segment says
    // which origin they belong to.
    let mut cow_origin: BTreeMap<String, String> = BTreeMap::new();
    for lv in lvs.iter_mut() {
        if let Some(seg) = lv.snapshot_segment() {
            let origin = seg.origin.clone();
            if let (Some(cow), Some(o)) = (&seg.cow_store, &origin) {
                cow_origin.insert(cow.clone(), o.clone());
            }
            lv.is_snapshot = true;
            lv.snapshot_origin = origin;
            continue;
        }
        if let Some(seg) = lv
            .segments
            .iter()
            .find(|s| s.seg_type == "thin" && (s.origin.is_some() || s.external_origin.is_some()))
        {
            lv.is_snapshot = true;
            lv.snapshot_origin = seg.origin.clone().or_else(|| seg.external_origin.clone());
        }
    }
    for lv in lvs.iter_mut() {
        if let Some(o) = cow_origin.get(&lv.name) {
            if !lv.is_snapshot {
                lv.is_snapshot = true;
                lv.snapshot_origin = Some(o.clone());
            }
        }
    }
}
