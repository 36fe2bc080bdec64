//! What changed between two versions of a VG's metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::metadata::{LogicalVolume, PhysicalVolume, VgMetadata};
use crate::FieldChange;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum LvmChange {
    VgRenamed {
        before: String,
        after: String,
    },
    Seqno {
        before: u64,
        after: u64,
    },
    /// The new `description`: the command that made the change.
    Description {
        text: String,
    },
    LvAdded {
        name: String,
        snapshot_of: Option<String>,
        seg_types: Vec<String>,
    },
    LvRemoved {
        name: String,
        snapshot_of: Option<String>,
        seg_types: Vec<String>,
    },
    LvRenamed {
        before: String,
        after: String,
    },
    LvStatus {
        name: String,
        before: Vec<String>,
        after: Vec<String>,
    },
    LvSegments {
        name: String,
        before: Vec<String>,
        after: Vec<String>,
    },
    LvResized {
        name: String,
        before_extents: u64,
        after_extents: u64,
    },
    SnapshotMergeStarted {
        name: String,
        origin: Option<String>,
    },
    PvAdded {
        name: String,
        device: Option<String>,
    },
    PvRemoved {
        name: String,
        device: Option<String>,
    },
}

fn with_origin(name: &str, of: &Option<String>) -> String {
    match of {
        Some(o) => format!("{name} (snapshot of {o})"),
        None => name.to_string(),
    }
}

fn with_device(name: &str, device: &Option<String>) -> String {
    match device {
        Some(d) => format!("{name} ({d})"),
        None => name.to_string(),
    }
}

impl LvmChange {
    /// The change as the classification reports it: `field`, and the value before and after
    /// (an added or removed item, a merge or the description has only an `after`).
    pub fn field_change(&self) -> FieldChange {
        match self {
            LvmChange::VgRenamed { before, after } => FieldChange::new("vg_renamed", before, after),
            LvmChange::Seqno { before, after } => {
                FieldChange::new("seqno", before.to_string(), after.to_string())
            }
            LvmChange::Description { text } => FieldChange::new("description", "", text),
            LvmChange::LvAdded {
                name, snapshot_of, ..
            } => FieldChange::new("lv_added", "", with_origin(name, snapshot_of)),
            LvmChange::LvRemoved {
                name, snapshot_of, ..
            } => FieldChange::new("lv_removed", "", with_origin(name, snapshot_of)),
            LvmChange::LvRenamed { before, after } => FieldChange::new("lv_renamed", before, after),
            LvmChange::LvStatus {
                name,
                before,
                after,
            } => FieldChange::new(
                "lv_status",
                format!("{name} [{}]", before.join(", ")),
                format!("[{}]", after.join(", ")),
            ),
            LvmChange::LvSegments {
                name,
                before,
                after,
            } => FieldChange::new(
                "lv_segments",
                format!("{name} {}", before.join(",")),
                after.join(","),
            ),
            LvmChange::LvResized {
                name,
                before_extents,
                after_extents,
            } => FieldChange::new(
                "lv_resized",
                format!("{name} {before_extents}"),
                format!("{after_extents} extents"),
            ),
            LvmChange::SnapshotMergeStarted { name, origin } => FieldChange::new(
                "snapshot_merge",
                "",
                match origin {
                    Some(o) => format!("{name} into {o}"),
                    None => name.clone(),
                },
            ),
            LvmChange::PvAdded { name, device } => {
                FieldChange::new("pv_added", "", with_device(name, device))
            }
            LvmChange::PvRemoved { name, device } => {
                FieldChange::new("pv_removed", "", with_device(name, device))
            }
        }
    }
}

impl fmt::Display for LvmChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.field_change().fmt(f)
    }
}

/// Key LVs by uuid when present so that a rename is not an add + remove.
fn lv_key(lv: &LogicalVolume) -> String {
    match &lv.id {
        Some(id) => format!("id:{id}"),
        None => format!("name:{}", lv.name),
    }
}

/// True for a hidden `snapshotN` LV whose COW LV is in `names`: the COW LV
/// already carries the user-visible name of the snapshot.
fn redundant_snapshot_lv(lv: &LogicalVolume, names: &BTreeSet<&str>) -> bool {
    !lv.visible
        && lv
            .snapshot_segment()
            .and_then(|s| s.cow_store.as_deref())
            .is_some_and(|c| names.contains(c))
}

/// Describe what changed between two versions of a VG's metadata.
pub fn diff_vg(before: &VgMetadata, after: &VgMetadata) -> Vec<LvmChange> {
    let mut out = Vec::new();
    if before.vg_name != after.vg_name {
        out.push(LvmChange::VgRenamed {
            before: before.vg_name.clone(),
            after: after.vg_name.clone(),
        });
    }
    if before.seqno != after.seqno {
        out.push(LvmChange::Seqno {
            before: before.seqno,
            after: after.seqno,
        });
    }
    let body_start = out.len();

    let bmap: BTreeMap<String, &LogicalVolume> = before
        .logical_volumes
        .iter()
        .map(|l| (lv_key(l), l))
        .collect();
    let amap: BTreeMap<String, &LogicalVolume> = after
        .logical_volumes
        .iter()
        .map(|l| (lv_key(l), l))
        .collect();

    let removed: Vec<&LogicalVolume> = before
        .logical_volumes
        .iter()
        .filter(|l| !amap.contains_key(&lv_key(l)))
        .collect();
    let added: Vec<&LogicalVolume> = after
        .logical_volumes
        .iter()
        .filter(|l| !bmap.contains_key(&lv_key(l)))
        .collect();
    let removed_names: BTreeSet<&str> = removed.iter().map(|l| l.name.as_str()).collect();
    let added_names: BTreeSet<&str> = added.iter().map(|l| l.name.as_str()).collect();

    for lv in &removed {
        if redundant_snapshot_lv(lv, &removed_names) {
            continue;
        }
        out.push(LvmChange::LvRemoved {
            name: lv.name.clone(),
            snapshot_of: lv.snapshot_origin.clone(),
            seg_types: lv.segment_types(),
        });
    }
    for lv in &added {
        if redundant_snapshot_lv(lv, &added_names) {
            continue;
        }
        out.push(LvmChange::LvAdded {
            name: lv.name.clone(),
            snapshot_of: lv.snapshot_origin.clone(),
            seg_types: lv.segment_types(),
        });
    }
    for a in &after.logical_volumes {
        let Some(b) = bmap.get(&lv_key(a)) else {
            continue;
        };
        if a.name != b.name {
            out.push(LvmChange::LvRenamed {
                before: b.name.clone(),
                after: a.name.clone(),
            });
        }
        if a.status != b.status {
            out.push(LvmChange::LvStatus {
                name: a.name.clone(),
                before: b.status.clone(),
                after: a.status.clone(),
            });
        }
        let (bt, at) = (b.segment_types(), a.segment_types());
        if bt != at {
            out.push(LvmChange::LvSegments {
                name: a.name.clone(),
                before: bt,
                after: at,
            });
        }
        if a.extent_count() != b.extent_count() {
            out.push(LvmChange::LvResized {
                name: a.name.clone(),
                before_extents: b.extent_count(),
                after_extents: a.extent_count(),
            });
        }
        let merging = |l: &LogicalVolume| l.snapshot_segment().is_some_and(|s| s.merging);
        if merging(a) && !merging(b) {
            let seg = a.snapshot_segment();
            out.push(LvmChange::SnapshotMergeStarted {
                name: seg
                    .and_then(|s| s.cow_store.clone())
                    .unwrap_or_else(|| a.name.clone()),
                origin: seg.and_then(|s| s.origin.clone()),
            });
        }
    }

    let pv_key = |p: &PhysicalVolume| p.id.clone().unwrap_or_else(|| p.name.clone());
    let bpv: BTreeSet<String> = before.physical_volumes.iter().map(pv_key).collect();
    let apv: BTreeSet<String> = after.physical_volumes.iter().map(pv_key).collect();
    for p in &before.physical_volumes {
        if !apv.contains(&pv_key(p)) {
            out.push(LvmChange::PvRemoved {
                name: p.name.clone(),
                device: p.device.clone(),
            });
        }
    }
    for p in &after.physical_volumes {
        if !bpv.contains(&pv_key(p)) {
            out.push(LvmChange::PvAdded {
                name: p.name.clone(),
                device: p.device.clone(),
            });
        }
    }

    // The description names the command; attach it whenever anything moved.
    if let Some(d) = &after.description {
        if !out.is_empty() || before.description.as_ref() != Some(d) {
            out.insert(body_start, LvmChange::Description { text: d.clone() });
        }
    }
    out
}
