//! Field-level diffs between two versions of an image.

use std::collections::{BTreeMap, BTreeSet};

use super::base::FieldChange;
use super::extension::BackingName;
use super::header::Qcow2Header;
use super::image::Qcow2Image;
use super::snapshot::SnapshotEntry;

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

pub(super) fn diff_backing(
    before: Option<&BackingName>,
    after: Option<&BackingName>,
) -> Option<FieldChange> {
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
