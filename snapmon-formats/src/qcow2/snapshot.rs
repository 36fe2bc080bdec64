//! The snapshot table.

use std::io::{Read, Seek};

use serde::{Deserialize, Serialize};

use super::base::{
    align8, escape_bytes, too_large, Qcow2Error, MAX_L1_BYTES, MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA,
    MAX_SNAPSHOT_TABLE,
};
use super::header::Qcow2Header;
use super::reader::Src;
use crate::bytes::{be_u16_padded, be_u32_padded, be_u64_padded};

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
pub(super) fn read_snapshot_table<R: Read + Seek>(
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
