//! device-mapper ioctls (`linux/dm-ioctl.h`).

use serde::Serialize;

use super::raw::{read_cstr, RawStr};
use crate::bytes::{le_i32, le_u32, le_u64};

pub const DM_IOCTL_TYPE: u8 = 0xfd;
/// sizeof(struct dm_ioctl).
pub const DM_IOCTL_SIZE: usize = 312;
pub const DM_NAME_LEN: usize = 128;
pub const DM_UUID_LEN: usize = 129;
const DM_NAME_OFF: usize = 48;
const DM_UUID_OFF: usize = 176;
/// sizeof(struct dm_target_spec).
const DM_SPEC_SIZE: usize = 40;
const DM_MAX_TYPE_NAME: usize = 16;
/// More targets than this in one capture means garbage.
const MAX_DM_TARGETS: usize = 64;

pub(super) const DM_NAMES: [&str; 0x12] = [
    "DM_VERSION",
    "DM_REMOVE_ALL",
    "DM_LIST_DEVICES",
    "DM_DEV_CREATE",
    "DM_DEV_REMOVE",
    "DM_DEV_RENAME",
    "DM_DEV_SUSPEND",
    "DM_DEV_STATUS",
    "DM_DEV_WAIT",
    "DM_TABLE_LOAD",
    "DM_TABLE_CLEAR",
    "DM_TABLE_DEPS",
    "DM_TABLE_STATUS",
    "DM_LIST_VERSIONS",
    "DM_TARGET_MSG",
    "DM_DEV_SET_GEOMETRY",
    "DM_DEV_ARM_POLL",
    "DM_GET_TARGET_VERSION",
];
const DM_NR_DEV_RENAME: u8 = 0x05;
const DM_NR_TABLE_LOAD: u8 = 0x09;
const DM_NR_TARGET_MSG: u8 = 0x0e;
const DM_NR_SET_GEOMETRY: u8 = 0x0f;

const DM_FLAG_NAMES: [(u32, &str); 18] = [
    (1 << 0, "READONLY"),
    (1 << 1, "SUSPEND"),
    (1 << 3, "PERSISTENT_DEV"),
    (1 << 4, "STATUS_TABLE"),
    (1 << 5, "ACTIVE_PRESENT"),
    (1 << 6, "INACTIVE_PRESENT"),
    (1 << 8, "BUFFER_FULL"),
    (1 << 9, "SKIP_BDGET"),
    (1 << 10, "SKIP_LOCKFS"),
    (1 << 11, "NOFLUSH"),
    (1 << 12, "QUERY_INACTIVE_TABLE"),
    (1 << 13, "UEVENT_GENERATED"),
    (1 << 14, "UUID"),
    (1 << 15, "SECURE_DATA"),
    (1 << 16, "DATA_OUT"),
    (1 << 17, "DEFERRED_REMOVE"),
    (1 << 18, "INTERNAL_SUSPEND"),
    (1 << 19, "IMA_MEASUREMENT"),
];

pub(super) fn flag_names<T: Copy + Into<u64>>(
    v: T,
    table: &[(T, &'static str)],
) -> Vec<&'static str> {
    let v: u64 = v.into();
    table
        .iter()
        .filter(|(bit, _)| v & (*bit).into() != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Decoded `struct dm_ioctl` plus its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmIoctl {
    pub version: Option<[u32; 3]>,
    pub data_size: Option<u32>,
    pub data_start: Option<u32>,
    pub target_count: Option<u32>,
    pub open_count: Option<i32>,
    pub flags: Option<u32>,
    pub flag_names: Vec<&'static str>,
    pub event_nr: Option<u32>,
    pub dev: Option<u64>,
    /// `major:minor` decoded with the kernel's huge_encode_dev layout.
    pub dev_major_minor: Option<(u32, u32)>,
    pub name: RawStr,
    pub uuid: RawStr,
    /// TABLE_LOAD targets in order.
    pub targets: Vec<DmTarget>,
    /// The target walk stopped early (capture end, bad `next`, count cap).
    pub targets_truncated: bool,
    pub message: Option<DmMessage>,
    /// DEV_RENAME: new name (or new uuid with the UUID flag).
    pub new_name: Option<RawStr>,
    /// DEV_SET_GEOMETRY: "cyl heads sectors start".
    pub geometry: Option<RawStr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmTarget {
    pub sector_start: u64,
    pub length: u64,
    pub status: i32,
    pub target_type: RawStr,
    pub params: RawStr,
}

impl DmTarget {
    pub fn is_snapshot_target(&self) -> bool {
        is_snapshot_target(&self.target_type.bytes)
    }
}

/// True for the dm target types that implement snapshots.
pub fn is_snapshot_target(target_type: &[u8]) -> bool {
    matches!(
        target_type,
        b"snapshot" | b"snapshot-origin" | b"snapshot-merge" | b"thin" | b"thin-pool"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DmMessageKind {
    /// thin-pool `create_snap <dev_id> <origin_id>`.
    CreateSnap,
    /// thin-pool `create_thin <dev_id>`.
    CreateThin,
    /// thin-pool `delete <dev_id>`.
    Delete,
    SetTransactionId,
    ReserveMetadataSnap,
    ReleaseMetadataSnap,
    Other,
}

/// Classify a dm target message by its first word.
pub fn dm_message_kind(msg: &[u8]) -> DmMessageKind {
    let word = msg
        .split(|c| c.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    match word {
        b"create_snap" => DmMessageKind::CreateSnap,
        b"create_thin" => DmMessageKind::CreateThin,
        b"delete" => DmMessageKind::Delete,
        b"set_transaction_id" => DmMessageKind::SetTransactionId,
        b"reserve_metadata_snap" => DmMessageKind::ReserveMetadataSnap,
        b"release_metadata_snap" => DmMessageKind::ReleaseMetadataSnap,
        _ => DmMessageKind::Other,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmMessage {
    pub sector: u64,
    pub text: RawStr,
    pub kind: DmMessageKind,
}

pub(super) fn decode_dm(nr: u8, arg: &[u8], truncated: &mut bool) -> DmIoctl {
    let u = |o| le_u32(arg, o);
    let version = match (u(0), u(4), u(8)) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    let flags = u(28);
    let dev = le_u64(arg, 40);
    let (name, t1) = read_cstr(arg, DM_NAME_OFF, DM_NAME_LEN);
    let (uuid, t2) = read_cstr(arg, DM_UUID_OFF, DM_UUID_LEN);
    *truncated |= arg.len() < DM_IOCTL_SIZE || t1 || t2;
    let mut d = DmIoctl {
        version,
        data_size: u(12),
        data_start: u(16),
        target_count: u(20),
        open_count: le_i32(arg, 24),
        flags,
        flag_names: flags
            .map(|f| flag_names(f, &DM_FLAG_NAMES))
            .unwrap_or_default(),
        event_nr: u(32),
        dev,
        dev_major_minor: dev.map(|d| {
            let d = d as u32;
            ((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00))
        }),
        name,
        uuid,
        targets: Vec::new(),
        targets_truncated: false,
        message: None,
        new_name: None,
        geometry: None,
    };
    let (Some(data_size), Some(data_start)) = (d.data_size, d.data_start) else {
        return d;
    };
    // The kernel only looks at data_size bytes; the capture may be shorter.
    let end = if (data_size as usize) >= DM_IOCTL_SIZE {
        (data_size as usize).min(arg.len())
    } else {
        arg.len()
    };
    let cut = (data_size as usize) > arg.len();
    let ds = data_start as usize;
    match nr {
        DM_NR_TABLE_LOAD => {
            let (targets, short) = walk_targets(arg, ds, end, d.target_count.unwrap_or(0) as usize);
            d.targets = targets;
            d.targets_truncated = short;
            *truncated |= short;
        }
        DM_NR_TARGET_MSG if ds >= DM_IOCTL_SIZE => {
            if let Some(sector) = le_u64(&arg[..end], ds) {
                let (text, t) = read_cstr(&arg[..end], ds + 8, usize::MAX / 2);
                d.message = Some(DmMessage {
                    sector,
                    kind: dm_message_kind(&text.bytes),
                    text,
                });
                *truncated |= t && cut;
            } else {
                *truncated = true;
            }
        }
        DM_NR_DEV_RENAME | DM_NR_SET_GEOMETRY => {
            if ds >= DM_IOCTL_SIZE && ds < end {
                let (s, t) = read_cstr(&arg[..end], ds, usize::MAX / 2);
                *truncated |= t && cut;
                if nr == DM_NR_DEV_RENAME {
                    d.new_name = Some(s);
                } else {
                    d.geometry = Some(s);
                }
            } else if ds >= DM_IOCTL_SIZE && cut {
                *truncated = true;
            }
        }
        _ => {}
    }
    d
}

/// Walk TABLE_LOAD target specs the way the kernel's `populate_table` does:
/// the first spec is at `data_start`, each `next` is relative to the
/// current spec and must land past the previous params' NUL. Returns the
/// targets and whether the walk stopped before `count` targets.
fn walk_targets(arg: &[u8], data_start: usize, end: usize, count: usize) -> (Vec<DmTarget>, bool) {
    let mut out = Vec::new();
    if count == 0 {
        return (out, false);
    }
    let buf = &arg[..end.min(arg.len())];
    let mut spec = 0usize; // position of the previous spec (param itself first)
    let mut next = data_start;
    let mut min_size = DM_IOCTL_SIZE;
    for _ in 0..count.min(MAX_DM_TARGETS) {
        if next < min_size {
            return (out, true);
        }
        let Some(pos) = spec.checked_add(next) else {
            return (out, true);
        };
        let (Some(sector_start), Some(length), Some(status), Some(nxt)) = (
            le_u64(buf, pos),
            le_u64(buf, pos + 8),
            le_i32(buf, pos + 16),
            le_u32(buf, pos + 20),
        ) else {
            return (out, true);
        };
        let (target_type, _) = read_cstr(buf, pos + 24, DM_MAX_TYPE_NAME);
        let params_off = pos + DM_SPEC_SIZE;
        if params_off > buf.len() {
            return (out, true);
        }
        let rest = &buf[params_off..];
        let Some(nul) = rest.iter().position(|&c| c == 0) else {
            // Keep what was captured of the params, but flag it.
            out.push(DmTarget {
                sector_start,
                length,
                status,
                target_type,
                params: RawStr {
                    bytes: rest.to_vec(),
                    terminated: false,
                },
            });
            return (out, true);
        };
        out.push(DmTarget {
            sector_start,
            length,
            status,
            target_type,
            params: RawStr {
                bytes: rest[..nul].to_vec(),
                terminated: true,
            },
        });
        min_size = DM_SPEC_SIZE + nul + 1;
        spec = pos;
        next = nxt as usize;
    }
    (out, count > MAX_DM_TARGETS)
}
