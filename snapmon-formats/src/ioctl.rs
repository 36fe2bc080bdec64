//! Classify stage: snapshot-related ioctl decoding (device-mapper, btrfs, ZFS, generic file).
//!
//! Input is the ioctl cmd plus the first bytes (normally 1024) the kernel
//! side copied from the argument pointer. Layouts follow the uapi headers
//! `linux/dm-ioctl.h`, `linux/btrfs.h`, `linux/fs.h` and OpenZFS
//! `sys/fs/zfs.h` (x86_64, little-endian). Arguments passed by value
//! (FICLONE's fd) are expected as their little-endian value. Nothing here
//! panics on short or hostile input: missing fields are `None` and the
//! result is marked `truncated`.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::Format;

// ---------------------------------------------------------------------------
// Bounded byte helpers
// ---------------------------------------------------------------------------

use crate::bytes::{le_i32, le_i64, le_u16, le_u32, le_u64};

/// A C string copied out of a captured buffer, kept as raw bytes.
///
/// `Display`/`Serialize` escape it losslessly: `\\` for a backslash, `\xNN`
/// for bytes that are not valid UTF-8, `\u{..}` for control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawStr {
    pub bytes: Vec<u8>,
    /// A NUL was found inside the field.
    pub terminated: bool,
}

impl RawStr {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Lossy UTF-8 view for matching.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for RawStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    c if (c as u32) < 0x80 && c.is_ascii_control() => {
                        write!(f, "\\u{{{:x}}}", c as u32)?
                    }
                    c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for RawStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read a NUL-terminated string from a fixed field `[off, off+field_len)`.
/// Returns the string and whether the capture ended before the field did
/// without a NUL (i.e. the value is cut short).
fn read_cstr(b: &[u8], off: usize, field_len: usize) -> (RawStr, bool) {
    let end_field = off.saturating_add(field_len);
    let avail = b
        .get(off.min(b.len())..end_field.min(b.len()))
        .unwrap_or(&[]);
    match avail.iter().position(|&c| c == 0) {
        Some(n) => (
            RawStr {
                bytes: avail[..n].to_vec(),
                terminated: true,
            },
            false,
        ),
        None => (
            RawStr {
                bytes: avail.to_vec(),
                terminated: false,
            },
            end_field > b.len(),
        ),
    }
}

// ---------------------------------------------------------------------------
// _IOC split
// ---------------------------------------------------------------------------

pub const IOC_NONE: u32 = 0;
pub const IOC_WRITE: u32 = 1;
pub const IOC_READ: u32 = 2;

/// Generic Linux `_IOC(dir, type, nr, size)` fields of a cmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IocSplit {
    pub dir: &'static str,
    #[serde(rename = "type")]
    pub ty: u8,
    pub nr: u8,
    pub size: u16,
}

impl IocSplit {
    pub fn of(cmd: u32) -> Self {
        IocSplit {
            dir: match cmd >> 30 {
                IOC_NONE => "none",
                IOC_WRITE => "w",
                IOC_READ => "r",
                _ => "rw",
            },
            ty: (cmd >> 8) as u8,
            nr: cmd as u8,
            size: ((cmd >> 16) & 0x3fff) as u16,
        }
    }
}

// ---------------------------------------------------------------------------
// Public result
// ---------------------------------------------------------------------------

/// One decoded ioctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoctlInfo {
    pub cmd: u32,
    /// "dm", "btrfs", "zfs", "file" or "unknown".
    pub family: Format,
    pub name: &'static str,
    /// The captured argument ended before a field the decoder needed.
    pub truncated: bool,
    pub detail: IoctlDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IoctlDetail {
    /// No argument worth decoding (FIFREEZE, FITHAW, output-only args…).
    None,
    Dm(DmIoctl),
    /// `struct btrfs_ioctl_vol_args` (SNAP_CREATE, SUBVOL_CREATE, SNAP_DESTROY…).
    BtrfsVolArgs {
        fd: Option<i64>,
        name: RawStr,
    },
    /// `struct btrfs_ioctl_vol_args_v2`.
    BtrfsVolArgsV2 {
        fd: Option<i64>,
        transid: Option<u64>,
        flags: Option<u64>,
        flag_names: Vec<&'static str>,
        readonly: bool,
        /// Absent when the subvolume is given by id.
        name: Option<RawStr>,
        subvolid: Option<u64>,
    },
    /// SUBVOL_SETFLAGS: new flags; `readonly` says whether RDONLY is set.
    BtrfsSubvolFlags {
        flags: Option<u64>,
        readonly: Option<bool>,
    },
    BtrfsDefaultSubvol {
        subvolid: Option<u64>,
    },
    Zfs {
        /// `zc_name` (dataset, snapshot or pool).
        zc_name: RawStr,
        destructive: bool,
    },
    /// FICLONE: source fd passed by value.
    Clone {
        src_fd: Option<i64>,
    },
    /// `struct file_clone_range`.
    CloneRange {
        src_fd: Option<i64>,
        src_offset: Option<u64>,
        src_length: Option<u64>,
        dest_offset: Option<u64>,
    },
    /// `struct file_dedupe_range` with its `info[]` entries.
    DedupeRange {
        src_offset: Option<u64>,
        src_length: Option<u64>,
        dest_count: Option<u16>,
        dests: Vec<DedupeDest>,
    },
    /// FS_IOC_[GS]ETFLAGS (`FS_*_FL`).
    FsFlags {
        flags: Option<u32>,
        flag_names: Vec<&'static str>,
    },
    /// `struct fsxattr` (FS_IOC_FS[GS]ETXATTR).
    FsXattr {
        xflags: Option<u32>,
        xflag_names: Vec<&'static str>,
        extsize: Option<u32>,
        nextents: Option<u32>,
        projid: Option<u32>,
        cowextsize: Option<u32>,
    },
    /// Loop device: `LOOP_SET_FD`/`LOOP_CHANGE_FD` (backing fd by value), `LOOP_CONFIGURE`
    /// (`struct loop_config`), `LOOP_SET_STATUS64` (`struct loop_info64`), `LOOP_SET_STATUS`
    /// (`struct loop_info`).
    Loop {
        backing_fd: Option<i64>,
        /// Where the device starts in the backing file (`lo_offset`).
        offset: Option<u64>,
        sizelimit: Option<u64>,
        lo_flags: Option<u32>,
        read_only: Option<bool>,
        file_name: Option<RawStr>,
    },
    Unknown(IocSplit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DedupeDest {
    pub dest_fd: i64,
    pub dest_offset: u64,
}

// ---------------------------------------------------------------------------
// device-mapper
// ---------------------------------------------------------------------------

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

const DM_NAMES: [&str; 0x12] = [
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

fn flag_names<T: Copy + Into<u64>>(v: T, table: &[(T, &'static str)]) -> Vec<&'static str> {
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

fn decode_dm(nr: u8, arg: &[u8], truncated: &mut bool) -> DmIoctl {
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

// ---------------------------------------------------------------------------
// btrfs
// ---------------------------------------------------------------------------

pub const BTRFS_IOCTL_TYPE: u8 = 0x94;
pub const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
pub const BTRFS_SUBVOL_SPEC_BY_ID: u64 = 1 << 4;
const BTRFS_VOL_NAME_MAX: usize = 4087; // name[4088] incl. NUL
const BTRFS_SUBVOL_NAME_MAX: usize = 4039; // name[4040] incl. NUL
const BTRFS_V2_NAME_OFF: usize = 56;

const BTRFS_V2_FLAGS: [(u64, &str); 5] = [
    (1 << 0, "CREATE_ASYNC"),
    (1 << 1, "RDONLY"),
    (1 << 2, "QGROUP_INHERIT"),
    (1 << 3, "DEVICE_SPEC_BY_ID"),
    (1 << 4, "SUBVOL_SPEC_BY_ID"),
];

pub const BTRFS_IOC_SNAP_CREATE: u32 = 0x5000_9401;
pub const BTRFS_IOC_DEFRAG: u32 = 0x5000_9402;
pub const BTRFS_IOC_RESIZE: u32 = 0x5000_9403;
pub const BTRFS_IOC_SCAN_DEV: u32 = 0x5000_9404;
pub const BTRFS_IOC_SYNC: u32 = 0x0000_9408;
pub const BTRFS_IOC_ADD_DEV: u32 = 0x5000_940a;
pub const BTRFS_IOC_RM_DEV: u32 = 0x5000_940b;
pub const BTRFS_IOC_SUBVOL_CREATE: u32 = 0x5000_940e;
pub const BTRFS_IOC_SNAP_DESTROY: u32 = 0x5000_940f;
pub const BTRFS_IOC_DEFAULT_SUBVOL: u32 = 0x4008_9413;
pub const BTRFS_IOC_WAIT_SYNC: u32 = 0x4008_9416;
pub const BTRFS_IOC_SNAP_CREATE_V2: u32 = 0x5000_9417;
pub const BTRFS_IOC_START_SYNC: u32 = 0x8008_9418;
pub const BTRFS_IOC_SUBVOL_CREATE_V2: u32 = 0x5000_9418;
pub const BTRFS_IOC_SUBVOL_GETFLAGS: u32 = 0x8008_9419;
pub const BTRFS_IOC_SUBVOL_SETFLAGS: u32 = 0x4008_941a;
pub const BTRFS_IOC_SNAP_DESTROY_V2: u32 = 0x5000_943f;

fn decode_vol_args(arg: &[u8], truncated: &mut bool) -> IoctlDetail {
    let fd = le_i64(arg, 0);
    let (name, t) = read_cstr(arg, 8, BTRFS_VOL_NAME_MAX + 1);
    *truncated |= fd.is_none() || t;
    IoctlDetail::BtrfsVolArgs { fd, name }
}

fn decode_vol_args_v2(arg: &[u8], truncated: &mut bool) -> IoctlDetail {
    let fd = le_i64(arg, 0);
    let flags = le_u64(arg, 16);
    let by_id = flags.is_some_and(|f| f & BTRFS_SUBVOL_SPEC_BY_ID != 0);
    let (name, subvolid) = if by_id {
        let id = le_u64(arg, BTRFS_V2_NAME_OFF);
        *truncated |= id.is_none();
        (None, id)
    } else {
        let (n, t) = read_cstr(arg, BTRFS_V2_NAME_OFF, BTRFS_SUBVOL_NAME_MAX + 1);
        *truncated |= t;
        (Some(n), None)
    };
    *truncated |= flags.is_none();
    IoctlDetail::BtrfsVolArgsV2 {
        fd,
        transid: le_u64(arg, 8),
        flags,
        flag_names: flags
            .map(|f| flag_names(f, &BTRFS_V2_FLAGS))
            .unwrap_or_default(),
        readonly: flags.is_some_and(|f| f & BTRFS_SUBVOL_RDONLY != 0),
        name,
        subvolid,
    }
}

fn decode_btrfs(cmd: u32, arg: &[u8], truncated: &mut bool) -> (&'static str, IoctlDetail) {
    match cmd {
        BTRFS_IOC_SNAP_CREATE => ("BTRFS_IOC_SNAP_CREATE", decode_vol_args(arg, truncated)),
        BTRFS_IOC_SUBVOL_CREATE => ("BTRFS_IOC_SUBVOL_CREATE", decode_vol_args(arg, truncated)),
        BTRFS_IOC_SNAP_DESTROY => ("BTRFS_IOC_SNAP_DESTROY", decode_vol_args(arg, truncated)),
        BTRFS_IOC_SNAP_CREATE_V2 => (
            "BTRFS_IOC_SNAP_CREATE_V2",
            decode_vol_args_v2(arg, truncated),
        ),
        BTRFS_IOC_SUBVOL_CREATE_V2 => (
            "BTRFS_IOC_SUBVOL_CREATE_V2",
            decode_vol_args_v2(arg, truncated),
        ),
        BTRFS_IOC_SNAP_DESTROY_V2 => (
            "BTRFS_IOC_SNAP_DESTROY_V2",
            decode_vol_args_v2(arg, truncated),
        ),
        BTRFS_IOC_SUBVOL_SETFLAGS => {
            let flags = le_u64(arg, 0);
            *truncated |= flags.is_none();
            (
                "BTRFS_IOC_SUBVOL_SETFLAGS",
                IoctlDetail::BtrfsSubvolFlags {
                    flags,
                    readonly: flags.map(|f| f & BTRFS_SUBVOL_RDONLY != 0),
                },
            )
        }
        // Output-only: the captured bytes are whatever was in the buffer.
        BTRFS_IOC_SUBVOL_GETFLAGS => ("BTRFS_IOC_SUBVOL_GETFLAGS", IoctlDetail::None),
        BTRFS_IOC_DEFAULT_SUBVOL => {
            let subvolid = le_u64(arg, 0);
            *truncated |= subvolid.is_none();
            (
                "BTRFS_IOC_DEFAULT_SUBVOL",
                IoctlDetail::BtrfsDefaultSubvol { subvolid },
            )
        }
        BTRFS_IOC_DEFRAG => ("BTRFS_IOC_DEFRAG", IoctlDetail::None),
        BTRFS_IOC_RESIZE => ("BTRFS_IOC_RESIZE", decode_vol_args(arg, truncated)),
        BTRFS_IOC_SCAN_DEV => ("BTRFS_IOC_SCAN_DEV", decode_vol_args(arg, truncated)),
        BTRFS_IOC_ADD_DEV => ("BTRFS_IOC_ADD_DEV", decode_vol_args(arg, truncated)),
        BTRFS_IOC_RM_DEV => ("BTRFS_IOC_RM_DEV", decode_vol_args(arg, truncated)),
        BTRFS_IOC_SYNC => ("BTRFS_IOC_SYNC", IoctlDetail::None),
        BTRFS_IOC_START_SYNC => ("BTRFS_IOC_START_SYNC", IoctlDetail::None),
        BTRFS_IOC_WAIT_SYNC => ("BTRFS_IOC_WAIT_SYNC", IoctlDetail::None),
        _ => ("BTRFS_IOC_OTHER", IoctlDetail::Unknown(IocSplit::of(cmd))),
    }
}

// ---------------------------------------------------------------------------
// ZFS
// ---------------------------------------------------------------------------

/// `ZFS_IOC_FIRST` = 'Z' << 8; Linux ZFS passes the enum value as the cmd.
pub const ZFS_IOC_FIRST: u32 = 0x5a00;
/// `zc_name[MAXPATHLEN]`.
pub const ZFS_MAXNAMELEN: usize = 4096;

/// `zfs_ioc_t` from OpenZFS `include/sys/fs/zfs.h`, indexed by cmd - 0x5a00.
const ZFS_NAMES: [&str; 0x5a] = [
    "ZFS_IOC_POOL_CREATE",
    "ZFS_IOC_POOL_DESTROY",
    "ZFS_IOC_POOL_IMPORT",
    "ZFS_IOC_POOL_EXPORT",
    "ZFS_IOC_POOL_CONFIGS",
    "ZFS_IOC_POOL_STATS",
    "ZFS_IOC_POOL_TRYIMPORT",
    "ZFS_IOC_POOL_SCAN",
    "ZFS_IOC_POOL_FREEZE",
    "ZFS_IOC_POOL_UPGRADE",
    "ZFS_IOC_POOL_GET_HISTORY",
    "ZFS_IOC_VDEV_ADD",
    "ZFS_IOC_VDEV_REMOVE",
    "ZFS_IOC_VDEV_SET_STATE",
    "ZFS_IOC_VDEV_ATTACH",
    "ZFS_IOC_VDEV_DETACH",
    "ZFS_IOC_VDEV_SETPATH",
    "ZFS_IOC_VDEV_SETFRU",
    "ZFS_IOC_OBJSET_STATS",
    "ZFS_IOC_OBJSET_ZPLPROPS",
    "ZFS_IOC_DATASET_LIST_NEXT",
    "ZFS_IOC_SNAPSHOT_LIST_NEXT",
    "ZFS_IOC_SET_PROP",
    "ZFS_IOC_CREATE",
    "ZFS_IOC_DESTROY",
    "ZFS_IOC_ROLLBACK",
    "ZFS_IOC_RENAME",
    "ZFS_IOC_RECV",
    "ZFS_IOC_SEND",
    "ZFS_IOC_INJECT_FAULT",
    "ZFS_IOC_CLEAR_FAULT",
    "ZFS_IOC_INJECT_LIST_NEXT",
    "ZFS_IOC_ERROR_LOG",
    "ZFS_IOC_CLEAR",
    "ZFS_IOC_PROMOTE",
    "ZFS_IOC_SNAPSHOT",
    "ZFS_IOC_DSOBJ_TO_DSNAME",
    "ZFS_IOC_OBJ_TO_PATH",
    "ZFS_IOC_POOL_SET_PROPS",
    "ZFS_IOC_POOL_GET_PROPS",
    "ZFS_IOC_SET_FSACL",
    "ZFS_IOC_GET_FSACL",
    "ZFS_IOC_SHARE",
    "ZFS_IOC_INHERIT_PROP",
    "ZFS_IOC_SMB_ACL",
    "ZFS_IOC_USERSPACE_ONE",
    "ZFS_IOC_USERSPACE_MANY",
    "ZFS_IOC_USERSPACE_UPGRADE",
    "ZFS_IOC_HOLD",
    "ZFS_IOC_RELEASE",
    "ZFS_IOC_GET_HOLDS",
    "ZFS_IOC_OBJSET_RECVD_PROPS",
    "ZFS_IOC_VDEV_SPLIT",
    "ZFS_IOC_NEXT_OBJ",
    "ZFS_IOC_DIFF",
    "ZFS_IOC_TMP_SNAPSHOT",
    "ZFS_IOC_OBJ_TO_STATS",
    "ZFS_IOC_SPACE_WRITTEN",
    "ZFS_IOC_SPACE_SNAPS",
    "ZFS_IOC_DESTROY_SNAPS",
    "ZFS_IOC_POOL_REGUID",
    "ZFS_IOC_POOL_REOPEN",
    "ZFS_IOC_SEND_PROGRESS",
    "ZFS_IOC_LOG_HISTORY",
    "ZFS_IOC_SEND_NEW",
    "ZFS_IOC_SEND_SPACE",
    "ZFS_IOC_CLONE",
    "ZFS_IOC_BOOKMARK",
    "ZFS_IOC_GET_BOOKMARKS",
    "ZFS_IOC_DESTROY_BOOKMARKS",
    "ZFS_IOC_RECV_NEW",
    "ZFS_IOC_POOL_SYNC",
    "ZFS_IOC_CHANNEL_PROGRAM",
    "ZFS_IOC_LOAD_KEY",
    "ZFS_IOC_UNLOAD_KEY",
    "ZFS_IOC_CHANGE_KEY",
    "ZFS_IOC_REMAP",
    "ZFS_IOC_POOL_CHECKPOINT",
    "ZFS_IOC_POOL_DISCARD_CHECKPOINT",
    "ZFS_IOC_POOL_INITIALIZE",
    "ZFS_IOC_POOL_TRIM",
    "ZFS_IOC_REDACT",
    "ZFS_IOC_GET_BOOKMARK_PROPS",
    "ZFS_IOC_WAIT",
    "ZFS_IOC_WAIT_FS",
    "ZFS_IOC_VDEV_GET_PROPS",
    "ZFS_IOC_VDEV_SET_PROPS",
    "ZFS_IOC_POOL_SCRUB",
    "ZFS_IOC_POOL_PREFETCH",
    "ZFS_IOC_DDT_PRUNE",
];

/// Linux-only block at 'Z' << 8 + 0x81.
const ZFS_LINUX_NAMES: [&str; 8] = [
    "ZFS_IOC_EVENTS_NEXT",
    "ZFS_IOC_EVENTS_CLEAR",
    "ZFS_IOC_EVENTS_SEEK",
    "ZFS_IOC_NEXTBOOT",
    "ZFS_IOC_JAIL",
    "ZFS_IOC_UNJAIL",
    "ZFS_IOC_SET_BOOTENV",
    "ZFS_IOC_GET_BOOTENV",
];

const ZFS_DESTRUCTIVE: [&str; 8] = [
    "ZFS_IOC_DESTROY",
    "ZFS_IOC_DESTROY_SNAPS",
    "ZFS_IOC_ROLLBACK",
    "ZFS_IOC_RENAME",
    "ZFS_IOC_POOL_DISCARD_CHECKPOINT",
    "ZFS_IOC_CHANNEL_PROGRAM",
    "ZFS_IOC_RECV",
    "ZFS_IOC_PROMOTE",
];

fn zfs_name(cmd: u32) -> Option<&'static str> {
    if cmd & 0xffff_ff00 != ZFS_IOC_FIRST {
        return None;
    }
    let idx = (cmd & 0xff) as usize;
    if idx < ZFS_NAMES.len() {
        Some(ZFS_NAMES[idx])
    } else if (0x81..0x81 + ZFS_LINUX_NAMES.len()).contains(&idx) {
        Some(ZFS_LINUX_NAMES[idx - 0x81])
    } else {
        Some("ZFS_IOC_OTHER")
    }
}

// ---------------------------------------------------------------------------
// Generic file ioctls
// ---------------------------------------------------------------------------

pub const FICLONE: u32 = 0x4004_9409;
pub const FICLONERANGE: u32 = 0x4020_940d;
pub const FIDEDUPERANGE: u32 = 0xc018_9436;
pub const FIFREEZE: u32 = 0xc004_5877;
pub const FITHAW: u32 = 0xc004_5878;
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
pub const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
pub const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

pub const FS_IMMUTABLE_FL: u32 = 0x10;
pub const FS_APPEND_FL: u32 = 0x20;
pub const FS_NOCOW_FL: u32 = 0x0080_0000;

const FS_FLAG_NAMES: [(u32, &str); 27] = [
    (0x1, "SECRM"),
    (0x2, "UNRM"),
    (0x4, "COMPR"),
    (0x8, "SYNC"),
    (0x10, "IMMUTABLE"),
    (0x20, "APPEND"),
    (0x40, "NODUMP"),
    (0x80, "NOATIME"),
    (0x100, "DIRTY"),
    (0x200, "COMPRBLK"),
    (0x400, "NOCOMP"),
    (0x800, "ENCRYPT"),
    (0x1000, "INDEX"),
    (0x2000, "IMAGIC"),
    (0x4000, "JOURNAL_DATA"),
    (0x8000, "NOTAIL"),
    (0x1_0000, "DIRSYNC"),
    (0x2_0000, "TOPDIR"),
    (0x4_0000, "HUGE_FILE"),
    (0x8_0000, "EXTENT"),
    (0x10_0000, "VERITY"),
    (0x20_0000, "EA_INODE"),
    (0x40_0000, "EOFBLOCKS"),
    (0x80_0000, "NOCOW"),
    (0x200_0000, "DAX"),
    (0x1000_0000, "INLINE_DATA"),
    (0x2000_0000, "PROJINHERIT"),
];

const FS_XFLAG_NAMES: [(u32, &str); 17] = [
    (0x1, "REALTIME"),
    (0x2, "PREALLOC"),
    (0x8, "IMMUTABLE"),
    (0x10, "APPEND"),
    (0x20, "SYNC"),
    (0x40, "NOATIME"),
    (0x80, "NODUMP"),
    (0x100, "RTINHERIT"),
    (0x200, "PROJINHERIT"),
    (0x400, "NOSYMLINKS"),
    (0x800, "EXTSIZE"),
    (0x1000, "EXTSZINHERIT"),
    (0x2000, "NODEFRAG"),
    (0x4000, "FILESTREAM"),
    (0x8000, "DAX"),
    (0x1_0000, "COWEXTSIZE"),
    (0x8000_0000, "HASATTR"),
];

/// Cap on dedupe destinations decoded (1024 bytes hold 31).
const MAX_DEDUPE_DESTS: usize = 64;
const DEDUPE_HDR: usize = 24;
const DEDUPE_INFO: usize = 32;

fn decode_file(cmd: u32, arg: &[u8], truncated: &mut bool) -> Option<(&'static str, IoctlDetail)> {
    let mut need = |n: usize| *truncated |= arg.len() < n;
    Some(match cmd {
        FICLONE => {
            // By value: accept a 4- or 8-byte little-endian fd.
            let src_fd = le_i64(arg, 0).or_else(|| le_i32(arg, 0).map(i64::from));
            need(4);
            ("FICLONE", IoctlDetail::Clone { src_fd })
        }
        FICLONERANGE => {
            need(32);
            (
                "FICLONERANGE",
                IoctlDetail::CloneRange {
                    src_fd: le_i64(arg, 0),
                    src_offset: le_u64(arg, 8),
                    src_length: le_u64(arg, 16),
                    dest_offset: le_u64(arg, 24),
                },
            )
        }
        FIDEDUPERANGE => {
            need(DEDUPE_HDR);
            let dest_count = le_u16(arg, 16);
            let want = dest_count.unwrap_or(0) as usize;
            let mut dests = Vec::new();
            for i in 0..want.min(MAX_DEDUPE_DESTS) {
                let o = DEDUPE_HDR + i * DEDUPE_INFO;
                match (le_i64(arg, o), le_u64(arg, o + 8)) {
                    (Some(dest_fd), Some(dest_offset)) => dests.push(DedupeDest {
                        dest_fd,
                        dest_offset,
                    }),
                    _ => break,
                }
            }
            *truncated |= dests.len() < want;
            (
                "FIDEDUPERANGE",
                IoctlDetail::DedupeRange {
                    src_offset: le_u64(arg, 0),
                    src_length: le_u64(arg, 8),
                    dest_count,
                    dests,
                },
            )
        }
        FIFREEZE => ("FIFREEZE", IoctlDetail::None),
        FITHAW => ("FITHAW", IoctlDetail::None),
        FS_IOC_GETFLAGS | FS_IOC_SETFLAGS | FS_IOC32_GETFLAGS | FS_IOC32_SETFLAGS => {
            let name = match cmd {
                FS_IOC_GETFLAGS => "FS_IOC_GETFLAGS",
                FS_IOC_SETFLAGS => "FS_IOC_SETFLAGS",
                FS_IOC32_GETFLAGS => "FS_IOC32_GETFLAGS",
                _ => "FS_IOC32_SETFLAGS",
            };
            // The kernel reads an int even though the cmd says long.
            let flags = le_u32(arg, 0);
            if cmd == FS_IOC_GETFLAGS || cmd == FS_IOC32_GETFLAGS {
                // Output-only argument.
                return Some((name, IoctlDetail::None));
            }
            need(4);
            (
                name,
                IoctlDetail::FsFlags {
                    flags,
                    flag_names: flags
                        .map(|f| flag_names(f, &FS_FLAG_NAMES))
                        .unwrap_or_default(),
                },
            )
        }
        FS_IOC_FSGETXATTR => ("FS_IOC_FSGETXATTR", IoctlDetail::None),
        FS_IOC_FSSETXATTR => {
            need(20);
            let xflags = le_u32(arg, 0);
            (
                "FS_IOC_FSSETXATTR",
                IoctlDetail::FsXattr {
                    xflags,
                    xflag_names: xflags
                        .map(|f| flag_names(f, &FS_XFLAG_NAMES))
                        .unwrap_or_default(),
                    extsize: le_u32(arg, 4),
                    nextents: le_u32(arg, 8),
                    projid: le_u32(arg, 12),
                    cowextsize: le_u32(arg, 16),
                },
            )
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Loop devices (linux/loop.h)
// ---------------------------------------------------------------------------

use snapmon_common::loop_ioctl as lo;

/// `struct loop_info64`: lo_offset@24, lo_sizelimit@32, lo_flags@52, lo_file_name[64]@56.
const LOOP_INFO64_LEN: usize = 232;
/// `struct loop_config`: fd@0, block_size@4, info (loop_info64)@8.
const LOOP_CONFIG_INFO: usize = 8;
const LO_FLAGS_READ_ONLY: u32 = 1;

fn loop_info64(arg: &[u8], base: usize, fd: Option<i64>, truncated: &mut bool) -> IoctlDetail {
    *truncated |= arg.len() < base + LOOP_INFO64_LEN;
    let lo_flags = le_u32(arg, base + 52);
    let (name, _) = read_cstr(arg, base + 56, 64);
    IoctlDetail::Loop {
        backing_fd: fd,
        offset: le_u64(arg, base + 24),
        sizelimit: le_u64(arg, base + 32),
        lo_flags,
        read_only: lo_flags.map(|f| f & LO_FLAGS_READ_ONLY != 0),
        file_name: (!name.is_empty()).then_some(name),
    }
}

fn decode_loop(cmd: u32, arg: &[u8], truncated: &mut bool) -> Option<(&'static str, IoctlDetail)> {
    let by_value = |t: &mut bool| {
        *t |= arg.len() < 4;
        le_i64(arg, 0).or_else(|| le_i32(arg, 0).map(i64::from))
    };
    let bare = |fd| IoctlDetail::Loop {
        backing_fd: fd,
        offset: None,
        sizelimit: None,
        lo_flags: None,
        read_only: None,
        file_name: None,
    };
    Some(match cmd {
        lo::SET_FD => ("LOOP_SET_FD", bare(by_value(truncated))),
        lo::CHANGE_FD => ("LOOP_CHANGE_FD", bare(by_value(truncated))),
        lo::CONFIGURE => {
            let fd = le_u32(arg, 0).map(i64::from);
            (
                "LOOP_CONFIGURE",
                loop_info64(arg, LOOP_CONFIG_INFO, fd, truncated),
            )
        }
        lo::SET_STATUS64 => ("LOOP_SET_STATUS64", loop_info64(arg, 0, None, truncated)),
        lo::SET_STATUS => {
            // struct loop_info (x86_64): lo_offset is an int at 32, lo_flags at 44.
            *truncated |= arg.len() < 48;
            let lo_flags = le_u32(arg, 44);
            (
                "LOOP_SET_STATUS",
                IoctlDetail::Loop {
                    backing_fd: None,
                    offset: le_i32(arg, 32).map(|o| o as u32 as u64),
                    sizelimit: None,
                    lo_flags,
                    read_only: lo_flags.map(|f| f & LO_FLAGS_READ_ONLY != 0),
                    file_name: None,
                },
            )
        }
        lo::CLR_FD => ("LOOP_CLR_FD", IoctlDetail::None),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

/// Decode an ioctl from its cmd and the captured argument bytes.
pub fn decode_ioctl(cmd: u32, arg: &[u8]) -> IoctlInfo {
    let mut truncated = false;
    // Exact file ioctls first: FICLONE/FICLONERANGE/FIDEDUPERANGE share
    // btrfs's 0x94 type.
    if let Some((name, detail)) = decode_file(cmd, arg, &mut truncated) {
        return IoctlInfo {
            cmd,
            family: Format::File,
            name,
            truncated,
            detail,
        };
    }
    if let Some((name, detail)) = decode_loop(cmd, arg, &mut truncated) {
        return IoctlInfo {
            cmd,
            family: Format::Loop,
            name,
            truncated,
            detail,
        };
    }
    let split = IocSplit::of(cmd);
    if split.ty == DM_IOCTL_TYPE {
        // Type + nr identify dm; the size field is not trusted.
        let name = DM_NAMES
            .get(split.nr as usize)
            .copied()
            .unwrap_or("DM_UNKNOWN");
        let d = decode_dm(split.nr, arg, &mut truncated);
        return IoctlInfo {
            cmd,
            family: Format::Dm,
            name,
            truncated,
            detail: IoctlDetail::Dm(d),
        };
    }
    if split.ty == BTRFS_IOCTL_TYPE {
        let (name, detail) = decode_btrfs(cmd, arg, &mut truncated);
        return IoctlInfo {
            cmd,
            family: Format::Btrfs,
            name,
            truncated,
            detail,
        };
    }
    if let Some(name) = zfs_name(cmd) {
        let (zc_name, t) = read_cstr(arg, 0, ZFS_MAXNAMELEN);
        return IoctlInfo {
            cmd,
            family: Format::Zfs,
            name,
            truncated: t,
            detail: IoctlDetail::Zfs {
                zc_name,
                destructive: ZFS_DESTRUCTIVE.contains(&name),
            },
        };
    }
    IoctlInfo {
        cmd,
        family: Format::Unknown,
        name: "UNKNOWN",
        truncated: false,
        detail: IoctlDetail::Unknown(split),
    }
}

impl IoctlInfo {
    fn dm(&self) -> Option<&DmIoctl> {
        match &self.detail {
            IoctlDetail::Dm(d) => Some(d),
            _ => None,
        }
    }

    /// Removes, rolls back, merges away or unprotects a snapshot.
    ///
    /// dm: thin `delete` message, a `snapshot-merge` table, REMOVE_ALL, or
    /// DEV_REMOVE of an LVM `-cow` device. btrfs: SNAP_DESTROY(_V2) or
    /// clearing a subvolume's read-only flag. ZFS: the destructive list.
    pub fn is_snapshot_destructive(&self) -> bool {
        match self.family {
            Format::Dm => {
                let Some(d) = self.dm() else { return false };
                match self.name {
                    "DM_TARGET_MSG" => d
                        .message
                        .as_ref()
                        .is_some_and(|m| m.kind == DmMessageKind::Delete),
                    "DM_TABLE_LOAD" => d
                        .targets
                        .iter()
                        .any(|t| t.target_type.bytes == b"snapshot-merge"),
                    "DM_REMOVE_ALL" => true,
                    "DM_DEV_REMOVE" => d.name.bytes.ends_with(b"-cow"),
                    _ => false,
                }
            }
            Format::Btrfs => {
                matches!(
                    self.name,
                    "BTRFS_IOC_SNAP_DESTROY" | "BTRFS_IOC_SNAP_DESTROY_V2"
                ) || matches!(
                    self.detail,
                    IoctlDetail::BtrfsSubvolFlags {
                        readonly: Some(false),
                        ..
                    }
                )
            }
            Format::Zfs => matches!(
                self.detail,
                IoctlDetail::Zfs {
                    destructive: true,
                    ..
                }
            ),
            _ => false,
        }
    }

    /// Creates a snapshot: dm thin `create_snap` or a `snapshot` table,
    /// btrfs SNAP_CREATE(_V2), ZFS SNAPSHOT / POOL_CHECKPOINT.
    pub fn is_snapshot_create(&self) -> bool {
        match self.family {
            Format::Dm => {
                let Some(d) = self.dm() else { return false };
                match self.name {
                    "DM_TARGET_MSG" => d
                        .message
                        .as_ref()
                        .is_some_and(|m| m.kind == DmMessageKind::CreateSnap),
                    "DM_TABLE_LOAD" => d.targets.iter().any(|t| t.target_type.bytes == b"snapshot"),
                    _ => false,
                }
            }
            Format::Btrfs => matches!(
                self.name,
                "BTRFS_IOC_SNAP_CREATE" | "BTRFS_IOC_SNAP_CREATE_V2"
            ),
            Format::Zfs => matches!(self.name, "ZFS_IOC_SNAPSHOT" | "ZFS_IOC_POOL_CHECKPOINT"),
            _ => false,
        }
    }
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "?".to_string(),
    }
}

impl fmt::Display for IoctlInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        match &self.detail {
            IoctlDetail::None => {}
            IoctlDetail::Dm(d) => {
                if !d.name.is_empty() {
                    write!(f, " {}", d.name)?;
                } else if !d.uuid.is_empty() {
                    write!(f, " uuid={}", d.uuid)?;
                } else if let Some((ma, mi)) = d.dev_major_minor.filter(|&d| d != (0, 0)) {
                    // libdm addresses a device it just created by number (dmsetup create).
                    write!(f, " dev={ma}:{mi}")?;
                }
                for t in &d.targets {
                    if t.params.is_empty() {
                        write!(f, " [{}]", t.target_type)?;
                    } else {
                        write!(f, " [{} {}]", t.target_type, t.params)?;
                    }
                }
                if let Some(m) = &d.message {
                    write!(f, " sector={} \"{}\"", m.sector, m.text)?;
                }
                if let Some(n) = &d.new_name {
                    write!(f, " -> {n}")?;
                }
                if let Some(g) = &d.geometry {
                    write!(f, " geometry=\"{g}\"")?;
                }
            }
            IoctlDetail::BtrfsVolArgs { name, .. } => write!(f, " name={name}")?,
            IoctlDetail::BtrfsVolArgsV2 {
                name,
                subvolid,
                readonly,
                ..
            } => {
                if let Some(n) = name {
                    write!(f, " name={n}")?;
                }
                if let Some(id) = subvolid {
                    write!(f, " subvolid={id}")?;
                }
                if *readonly {
                    f.write_str(" readonly")?;
                }
            }
            IoctlDetail::BtrfsSubvolFlags { flags, readonly } => match readonly {
                Some(true) => write!(f, " readonly=set flags={:#x}", flags.unwrap_or(0))?,
                Some(false) => write!(f, " readonly=cleared flags={:#x}", flags.unwrap_or(0))?,
                None => f.write_str(" flags=?")?,
            },
            IoctlDetail::BtrfsDefaultSubvol { subvolid } => {
                write!(f, " subvolid={}", opt(subvolid))?
            }
            IoctlDetail::Zfs { zc_name, .. } => write!(f, " {zc_name}")?,
            IoctlDetail::Clone { src_fd } => write!(f, " src_fd={}", opt(src_fd))?,
            IoctlDetail::Loop {
                offset, read_only, ..
            } => {
                if let Some(o) = offset {
                    write!(f, " offset={o}")?;
                }
                if *read_only == Some(true) {
                    f.write_str(" read-only")?;
                }
            }
            IoctlDetail::CloneRange {
                src_fd,
                src_offset,
                src_length,
                dest_offset,
            } => write!(
                f,
                " src_fd={} src_offset={} src_length={} dest_offset={}",
                opt(src_fd),
                opt(src_offset),
                opt(src_length),
                opt(dest_offset)
            )?,
            IoctlDetail::DedupeRange {
                src_offset,
                src_length,
                dest_count,
                dests,
            } => {
                write!(
                    f,
                    " src_offset={} src_length={} dest_count={} dests=[",
                    opt(src_offset),
                    opt(src_length),
                    opt(dest_count)
                )?;
                for (i, d) in dests.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}@{}", d.dest_fd, d.dest_offset)?;
                }
                f.write_str("]")?;
            }
            IoctlDetail::FsFlags { flags, flag_names } => {
                match flags {
                    Some(v) => write!(f, " flags={v:#x}")?,
                    None => f.write_str(" flags=?")?,
                }
                write!(f, " [{}]", flag_names.join(","))?;
            }
            IoctlDetail::FsXattr {
                xflags,
                xflag_names,
                projid,
                ..
            } => {
                match xflags {
                    Some(v) => write!(f, " xflags={v:#x}")?,
                    None => f.write_str(" xflags=?")?,
                }
                write!(f, " [{}] projid={}", xflag_names.join(","), opt(projid))?;
            }
            IoctlDetail::Unknown(s) => write!(
                f,
                " cmd={:#010x} dir={} type={:#04x} nr={:#04x} size={}",
                self.cmd, s.dir, s.ty, s.nr, s.size
            )?,
        }
        if self.truncated {
            f.write_str(" (truncated)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- builders ----------------------------------------------------------

    fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
        (dir << 30) | (size << 16) | (ty << 8) | nr
    }

    fn dm_cmd(nr: u32) -> u32 {
        ioc(IOC_READ | IOC_WRITE, 0xfd, nr, DM_IOCTL_SIZE as u32)
    }

    fn put(b: &mut Vec<u8>, off: usize, bytes: &[u8]) {
        if b.len() < off + bytes.len() {
            b.resize(off + bytes.len(), 0);
        }
        b[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// struct dm_ioctl, field by field.
    fn dm_header(name: &[u8], uuid: &[u8], flags: u32, dev: u64) -> Vec<u8> {
        let mut b = vec![0u8; 312];
        put(&mut b, 0, &4u32.to_le_bytes());
        put(&mut b, 4, &0u32.to_le_bytes());
        put(&mut b, 8, &0u32.to_le_bytes());
        put(&mut b, 16, &312u32.to_le_bytes()); // data_start
        put(&mut b, 24, &1i32.to_le_bytes()); // open_count
        put(&mut b, 28, &flags.to_le_bytes());
        put(&mut b, 32, &7u32.to_le_bytes()); // event_nr
        put(&mut b, 40, &dev.to_le_bytes());
        put(&mut b, 48, name);
        put(&mut b, 176, uuid);
        b
    }

    fn finish_dm(mut b: Vec<u8>, target_count: u32) -> Vec<u8> {
        let size = b.len() as u32;
        put(&mut b, 12, &size.to_le_bytes());
        put(&mut b, 20, &target_count.to_le_bytes());
        b
    }

    /// Append dm_target_specs as libdevmapper does (next aligned to 8).
    fn dm_table(name: &[u8], targets: &[(u64, u64, &[u8], &[u8])]) -> Vec<u8> {
        let mut b = dm_header(name, b"LVM-abcdef", 0, 0);
        for (start, len, ty, params) in targets {
            let pos = b.len();
            let mut spec = vec![0u8; 40];
            spec[0..8].copy_from_slice(&start.to_le_bytes());
            spec[8..16].copy_from_slice(&len.to_le_bytes());
            spec[24..24 + ty.len()].copy_from_slice(ty);
            let total = 40 + params.len() + 1;
            let next = total.div_ceil(8) * 8;
            spec[20..24].copy_from_slice(&(next as u32).to_le_bytes());
            put(&mut b, pos, &spec);
            put(&mut b, pos + 40, params);
            b.resize(pos + next, 0);
        }
        finish_dm(b, targets.len() as u32)
    }

    fn dm_msg(name: &[u8], sector: u64, msg: &[u8]) -> Vec<u8> {
        let mut b = dm_header(name, b"", 0, 0);
        put(&mut b, DM_IOCTL_SIZE, &sector.to_le_bytes());
        put(&mut b, DM_IOCTL_SIZE + 8, msg);
        b.push(0);
        finish_dm(b, 0)
    }

    fn vol_args(fd: i64, name: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        put(&mut b, 0, &fd.to_le_bytes());
        put(&mut b, 8, name);
        b
    }

    fn vol_args_v2(fd: i64, flags: u64, name: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        put(&mut b, 0, &fd.to_le_bytes());
        put(&mut b, 8, &0u64.to_le_bytes());
        put(&mut b, 16, &flags.to_le_bytes());
        put(&mut b, 56, name);
        b
    }

    struct Xorshift(u64);
    impl Xorshift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    // ---- dm ----------------------------------------------------------------

    #[test]
    fn cmd_constants_match_ioc_encoding() {
        assert_eq!(dm_cmd(9), 0xc138_fd09);
        assert_eq!(ioc(1, 0x94, 1, 4096), BTRFS_IOC_SNAP_CREATE);
        assert_eq!(ioc(1, 0x94, 23, 4096), BTRFS_IOC_SNAP_CREATE_V2);
        assert_eq!(ioc(1, 0x94, 63, 4096), BTRFS_IOC_SNAP_DESTROY_V2);
        assert_eq!(ioc(2, 0x94, 25, 8), BTRFS_IOC_SUBVOL_GETFLAGS);
        assert_eq!(ioc(1, 0x94, 26, 8), BTRFS_IOC_SUBVOL_SETFLAGS);
        assert_eq!(ioc(1, 0x94, 19, 8), BTRFS_IOC_DEFAULT_SUBVOL);
        assert_eq!(ioc(1, 0x94, 9, 4), FICLONE);
        assert_eq!(ioc(1, 0x94, 13, 32), FICLONERANGE);
        assert_eq!(ioc(3, 0x94, 54, 24), FIDEDUPERANGE);
        assert_eq!(ioc(3, b'X' as u32, 119, 4), FIFREEZE);
        assert_eq!(ioc(3, b'X' as u32, 120, 4), FITHAW);
        assert_eq!(ioc(2, b'f' as u32, 1, 8), FS_IOC_GETFLAGS);
        assert_eq!(ioc(1, b'f' as u32, 2, 8), FS_IOC_SETFLAGS);
        assert_eq!(ioc(2, b'X' as u32, 31, 28), FS_IOC_FSGETXATTR);
        assert_eq!(ioc(1, b'X' as u32, 32, 28), FS_IOC_FSSETXATTR);
    }

    #[test]
    fn dm_table_load_snapshot() {
        let arg = dm_table(b"vg-snap", &[(0, 8192, b"snapshot", b"253:3 253:4 P 8")]);
        let info = decode_ioctl(0xc138_fd09, &arg);
        assert_eq!(info.family, "dm");
        assert_eq!(info.name, "DM_TABLE_LOAD");
        assert!(!info.truncated);
        assert_eq!(
            info.to_string(),
            "DM_TABLE_LOAD vg-snap [snapshot 253:3 253:4 P 8]"
        );
        let IoctlDetail::Dm(d) = &info.detail else {
            panic!()
        };
        assert_eq!(d.version, Some([4, 0, 0]));
        assert_eq!(d.data_start, Some(312));
        assert_eq!(d.target_count, Some(1));
        assert_eq!(d.event_nr, Some(7));
        assert_eq!(d.uuid.to_string(), "LVM-abcdef");
        assert_eq!(d.targets[0].length, 8192);
        assert!(d.targets[0].is_snapshot_target());
        assert!(info.is_snapshot_create());
        assert!(!info.is_snapshot_destructive());
    }

    #[test]
    fn dm_table_load_multiple_targets_and_merge() {
        let arg = dm_table(
            b"vg-base",
            &[
                (0, 2048, b"linear", b"8:16 2048"),
                (2048, 4096, b"snapshot-merge", b"253:3 253:4 P 8"),
                (6144, 10, b"error", b""),
            ],
        );
        let info = decode_ioctl(dm_cmd(9), &arg);
        let IoctlDetail::Dm(d) = &info.detail else {
            panic!()
        };
        assert_eq!(d.targets.len(), 3);
        assert_eq!(d.targets[1].sector_start, 2048);
        assert_eq!(d.targets[2].target_type.to_string(), "error");
        assert!(!d.targets_truncated);
        assert_eq!(
            info.to_string(),
            "DM_TABLE_LOAD vg-base [linear 8:16 2048] [snapshot-merge 253:3 253:4 P 8] [error]"
        );
        assert!(info.is_snapshot_destructive());
        assert!(!info.is_snapshot_create());
        assert!(!is_snapshot_target(b"linear"));
        for t in [
            "snapshot",
            "snapshot-origin",
            "snapshot-merge",
            "thin",
            "thin-pool",
        ] {
            assert!(is_snapshot_target(t.as_bytes()));
        }
    }

    #[test]
    fn dm_target_walk_rejects_bad_next() {
        let good = dm_table(
            b"x",
            &[(0, 1, b"linear", b"8:0 0"), (1, 1, b"linear", b"8:0 1")],
        );
        // next = 0: would not advance.
        let mut b = good.clone();
        put(&mut b, DM_IOCTL_SIZE + 20, &0u32.to_le_bytes());
        let i = decode_ioctl(dm_cmd(9), &b);
        let IoctlDetail::Dm(d) = &i.detail else {
            panic!()
        };
        assert_eq!(d.targets.len(), 1);
        assert!(d.targets_truncated && i.truncated);
        // next points back into the previous params.
        let mut b = good.clone();
        put(&mut b, DM_IOCTL_SIZE + 20, &41u32.to_le_bytes());
        let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
            panic!()
        };
        assert_eq!(d.targets.len(), 1);
        assert!(d.targets_truncated);
        // next huge: beyond the buffer.
        let mut b = good.clone();
        put(&mut b, DM_IOCTL_SIZE + 20, &u32::MAX.to_le_bytes());
        let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
            panic!()
        };
        assert!(d.targets_truncated);
        // target_count larger than what is there.
        let mut b = good.clone();
        put(&mut b, 20, &1000u32.to_le_bytes());
        let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
            panic!()
        };
        assert_eq!(d.targets.len(), 2);
        assert!(d.targets_truncated);
        // data_start inside the header.
        let mut b = good.clone();
        put(&mut b, 16, &48u32.to_le_bytes());
        let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(9), &b).detail else {
            panic!()
        };
        assert!(d.targets.is_empty() && d.targets_truncated);
        // Capture cut inside the second params string.
        let cut = &good[..good.len() - 6];
        let i = decode_ioctl(dm_cmd(9), cut);
        let IoctlDetail::Dm(d) = &i.detail else {
            panic!()
        };
        assert_eq!(d.targets.len(), 2);
        assert!(!d.targets[1].params.terminated);
        assert!(i.truncated);
        assert!(i.to_string().ends_with("(truncated)"));
    }

    #[test]
    fn dm_target_msg() {
        let arg = dm_msg(b"vg-pool-tpool", 0, b"create_snap 2 1");
        let i = decode_ioctl(dm_cmd(0x0e), &arg);
        assert_eq!(i.name, "DM_TARGET_MSG");
        let IoctlDetail::Dm(d) = &i.detail else {
            panic!()
        };
        let m = d.message.as_ref().unwrap();
        assert_eq!(m.kind, DmMessageKind::CreateSnap);
        assert_eq!(m.text.to_string(), "create_snap 2 1");
        assert_eq!(
            i.to_string(),
            "DM_TARGET_MSG vg-pool-tpool sector=0 \"create_snap 2 1\""
        );
        assert!(i.is_snapshot_create());
        let del = decode_ioctl(dm_cmd(0x0e), &dm_msg(b"vg-pool-tpool", 0, b"delete 2"));
        assert!(del.is_snapshot_destructive());
        assert!(!del.is_snapshot_create());
        assert_eq!(
            dm_message_kind(b"  create_thin 3"),
            DmMessageKind::CreateThin
        );
        assert_eq!(
            dm_message_kind(b"set_transaction_id 1 2"),
            DmMessageKind::SetTransactionId
        );
        assert_eq!(
            dm_message_kind(b"reserve_metadata_snap"),
            DmMessageKind::ReserveMetadataSnap
        );
        assert_eq!(
            dm_message_kind(b"release_metadata_snap"),
            DmMessageKind::ReleaseMetadataSnap
        );
        assert_eq!(dm_message_kind(b"deletex 1"), DmMessageKind::Other);
        assert_eq!(dm_message_kind(b""), DmMessageKind::Other);
    }

    #[test]
    fn dm_header_fields_rename_remove_and_any_size() {
        // dev 253:3 in huge_encode_dev form; flags SUSPEND|UUID.
        let dev = (253u64 << 8) | 3;
        let mut arg = dm_header(b"vg-snap-cow", b"LVM-xyz-cow", 2 | (1 << 14), dev);
        arg = finish_dm(arg, 0);
        // A nonstandard size field still decodes as dm.
        let i = decode_ioctl(ioc(3, 0xfd, 4, 400), &arg);
        assert_eq!(i.name, "DM_DEV_REMOVE");
        let IoctlDetail::Dm(d) = &i.detail else {
            panic!()
        };
        assert_eq!(d.dev_major_minor, Some((253, 3)));
        assert_eq!(d.flag_names, ["SUSPEND", "UUID"]);
        assert_eq!(d.open_count, Some(1));
        assert!(i.is_snapshot_destructive());
        let plain = finish_dm(dm_header(b"vg-data", b"", 0, 0), 0);
        assert!(!decode_ioctl(dm_cmd(4), &plain).is_snapshot_destructive());
        assert!(decode_ioctl(dm_cmd(1), &plain).is_snapshot_destructive());
        // Big minor numbers use the high bits.
        let mut b = dm_header(
            b"x",
            b"",
            0,
            (0x12345u64 << 12 & 0xfff0_0000) | (8 << 8) | 0x45,
        );
        b = finish_dm(b, 0);
        let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(7), &b).detail else {
            panic!()
        };
        assert_eq!(d.dev_major_minor, Some((8, 0x12345)));
        // Addressed by number only (libdm right after DEV_CREATE): the number names it.
        let by_dev = finish_dm(dm_header(b"", b"", 0, dev), 0);
        assert_eq!(
            decode_ioctl(dm_cmd(9), &by_dev).to_string(),
            "DM_TABLE_LOAD dev=253:3"
        );
        // Rename carries the new name after the header.
        let mut r = dm_header(b"vg-old", b"", 0, 0);
        put(&mut r, DM_IOCTL_SIZE, b"vg-new\0");
        let r = finish_dm(r, 0);
        let i = decode_ioctl(dm_cmd(5), &r);
        assert_eq!(i.to_string(), "DM_DEV_RENAME vg-old -> vg-new");
        // Unknown dm nr.
        assert_eq!(decode_ioctl(dm_cmd(0x40), &plain).name, "DM_UNKNOWN");
    }

    #[test]
    fn dm_non_utf8_names_escape_losslessly() {
        let arg = finish_dm(dm_header(b"a\\b\xff\x01c\xc3\xa9", b"", 0, 0), 0);
        let i = decode_ioctl(dm_cmd(7), &arg);
        assert_eq!(i.to_string(), "DM_DEV_STATUS a\\\\b\\xff\\u{1}cé");
        let js = serde_json::to_value(&i).unwrap();
        assert_eq!(js["detail"]["name"], "a\\\\b\\xff\\u{1}cé");
        assert_eq!(js["family"], "dm");
        // Unterminated name field (128 bytes, no NUL) is kept but flagged.
        let mut b = dm_header(b"", b"", 0, 0);
        put(&mut b, 48, &[b'n'; 128]);
        let IoctlDetail::Dm(d) = decode_ioctl(dm_cmd(7), &finish_dm(b, 0)).detail else {
            panic!()
        };
        assert_eq!(d.name.bytes.len(), DM_NAME_LEN);
        assert!(!d.name.terminated);
    }

    // ---- btrfs -------------------------------------------------------------

    #[test]
    fn btrfs_snap_create_v1_and_v2() {
        let i = decode_ioctl(BTRFS_IOC_SNAP_CREATE, &vol_args(5, b"snap0\0"));
        assert_eq!(
            (i.family.as_str(), i.name),
            ("btrfs", "BTRFS_IOC_SNAP_CREATE")
        );
        assert_eq!(
            i.detail,
            IoctlDetail::BtrfsVolArgs {
                fd: Some(5),
                name: RawStr {
                    bytes: b"snap0".to_vec(),
                    terminated: true
                }
            }
        );
        assert!(i.is_snapshot_create());
        let i = decode_ioctl(
            BTRFS_IOC_SNAP_CREATE_V2,
            &vol_args_v2(3, BTRFS_SUBVOL_RDONLY, b"snap1\0"),
        );
        assert_eq!(
            i.to_string(),
            "BTRFS_IOC_SNAP_CREATE_V2 name=snap1 readonly"
        );
        let IoctlDetail::BtrfsVolArgsV2 { fd, flag_names, .. } = &i.detail else {
            panic!()
        };
        assert_eq!(*fd, Some(3));
        assert_eq!(flag_names, &["RDONLY"]);
        assert!(i.is_snapshot_create() && !i.is_snapshot_destructive());
        let i = decode_ioctl(BTRFS_IOC_SUBVOL_CREATE_V2, &vol_args_v2(3, 0, b"vol\0"));
        assert_eq!(i.to_string(), "BTRFS_IOC_SUBVOL_CREATE_V2 name=vol");
        assert!(!i.is_snapshot_create());
        let i = decode_ioctl(BTRFS_IOC_SUBVOL_CREATE, &vol_args(-1, b"v\0"));
        assert_eq!(i.name, "BTRFS_IOC_SUBVOL_CREATE");
    }

    #[test]
    fn btrfs_destroy_v1_v2_by_name_and_id() {
        let i = decode_ioctl(BTRFS_IOC_SNAP_DESTROY, &vol_args(0, b"old\0"));
        assert_eq!(i.to_string(), "BTRFS_IOC_SNAP_DESTROY name=old");
        assert!(i.is_snapshot_destructive());
        let i = decode_ioctl(BTRFS_IOC_SNAP_DESTROY_V2, &vol_args_v2(0, 0, b"old2\0"));
        assert_eq!(i.to_string(), "BTRFS_IOC_SNAP_DESTROY_V2 name=old2");
        let i = decode_ioctl(
            BTRFS_IOC_SNAP_DESTROY_V2,
            &vol_args_v2(0, BTRFS_SUBVOL_SPEC_BY_ID, &257u64.to_le_bytes()),
        );
        assert_eq!(i.to_string(), "BTRFS_IOC_SNAP_DESTROY_V2 subvolid=257");
        assert!(i.is_snapshot_destructive());
    }

    #[test]
    fn btrfs_flags_and_default() {
        let set = decode_ioctl(BTRFS_IOC_SUBVOL_SETFLAGS, &2u64.to_le_bytes());
        assert_eq!(
            set.to_string(),
            "BTRFS_IOC_SUBVOL_SETFLAGS readonly=set flags=0x2"
        );
        assert!(!set.is_snapshot_destructive());
        let clr = decode_ioctl(BTRFS_IOC_SUBVOL_SETFLAGS, &0u64.to_le_bytes());
        assert_eq!(
            clr.to_string(),
            "BTRFS_IOC_SUBVOL_SETFLAGS readonly=cleared flags=0x0"
        );
        assert!(clr.is_snapshot_destructive());
        let short = decode_ioctl(BTRFS_IOC_SUBVOL_SETFLAGS, &[2, 0]);
        assert!(short.truncated && !short.is_snapshot_destructive());
        let g = decode_ioctl(BTRFS_IOC_SUBVOL_GETFLAGS, &[0xff; 8]);
        assert_eq!(g.detail, IoctlDetail::None);
        let d = decode_ioctl(BTRFS_IOC_DEFAULT_SUBVOL, &256u64.to_le_bytes());
        assert_eq!(d.to_string(), "BTRFS_IOC_DEFAULT_SUBVOL subvolid=256");
        let o = decode_ioctl(ioc(3, 0x94, 0x70, 16), &[]);
        assert_eq!((o.family.as_str(), o.name), ("btrfs", "BTRFS_IOC_OTHER"));
    }

    #[test]
    fn btrfs_long_name_capture_truncated() {
        // Name fills the whole 1024-byte capture: the field is 4088 long.
        let mut b = vol_args(1, b"");
        for x in &mut b[8..] {
            *x = b'a';
        }
        let i = decode_ioctl(BTRFS_IOC_SNAP_CREATE, &b);
        assert!(i.truncated);
        let IoctlDetail::BtrfsVolArgs { name, .. } = &i.detail else {
            panic!()
        };
        assert_eq!(name.bytes.len(), 1016);
    }

    // ---- zfs ---------------------------------------------------------------

    #[test]
    fn zfs_names_and_flags() {
        let table = [
            (0x5a16, "ZFS_IOC_SET_PROP", false),
            (0x5a18, "ZFS_IOC_DESTROY", true),
            (0x5a19, "ZFS_IOC_ROLLBACK", true),
            (0x5a1a, "ZFS_IOC_RENAME", true),
            (0x5a1b, "ZFS_IOC_RECV", true),
            (0x5a22, "ZFS_IOC_PROMOTE", true),
            (0x5a23, "ZFS_IOC_SNAPSHOT", false),
            (0x5a30, "ZFS_IOC_HOLD", false),
            (0x5a31, "ZFS_IOC_RELEASE", false),
            (0x5a3b, "ZFS_IOC_DESTROY_SNAPS", true),
            (0x5a42, "ZFS_IOC_CLONE", false),
            (0x5a45, "ZFS_IOC_DESTROY_BOOKMARKS", false),
            (0x5a48, "ZFS_IOC_CHANNEL_PROGRAM", true),
            (0x5a4e, "ZFS_IOC_POOL_DISCARD_CHECKPOINT", true),
            (0x5a81, "ZFS_IOC_EVENTS_NEXT", false),
            (0x5a7f, "ZFS_IOC_OTHER", false),
        ];
        let mut arg = vec![0u8; 1024];
        put(&mut arg, 0, b"tank/vm@daily\0");
        for (cmd, name, destructive) in table {
            let i = decode_ioctl(cmd, &arg);
            assert_eq!((i.family.as_str(), i.name), ("zfs", name), "{cmd:#x}");
            assert_eq!(i.is_snapshot_destructive(), destructive, "{name}");
            assert!(!i.truncated);
        }
        let i = decode_ioctl(0x5a23, &arg);
        assert_eq!(i.to_string(), "ZFS_IOC_SNAPSHOT tank/vm@daily");
        assert!(i.is_snapshot_create());
        // 0x5a with _IOC size/dir bits is not ZFS.
        assert_eq!(decode_ioctl(ioc(1, 0x5a, 0x18, 8), &arg).family, "unknown");
    }

    #[test]
    fn zfs_name_truncated_by_capture() {
        let arg = vec![b'p'; 1024];
        let i = decode_ioctl(0x5a18, &arg);
        assert!(i.truncated);
        assert!(i.is_snapshot_destructive());
        let IoctlDetail::Zfs { zc_name, .. } = &i.detail else {
            panic!()
        };
        assert_eq!(zc_name.bytes.len(), 1024);
        assert!(!zc_name.terminated);
    }

    // ---- file --------------------------------------------------------------

    #[test]
    fn file_clone_and_range() {
        let i = decode_ioctl(FICLONE, &7i32.to_le_bytes());
        assert_eq!(
            (i.family.as_str(), i.to_string()),
            ("file", "FICLONE src_fd=7".into())
        );
        let i = decode_ioctl(FICLONE, &9i64.to_le_bytes());
        assert_eq!(i.detail, IoctlDetail::Clone { src_fd: Some(9) });
        let mut b = Vec::new();
        put(&mut b, 0, &3i64.to_le_bytes());
        put(&mut b, 8, &4096u64.to_le_bytes());
        put(&mut b, 16, &65536u64.to_le_bytes());
        put(&mut b, 24, &8192u64.to_le_bytes());
        let i = decode_ioctl(FICLONERANGE, &b);
        assert_eq!(
            i.to_string(),
            "FICLONERANGE src_fd=3 src_offset=4096 src_length=65536 dest_offset=8192"
        );
        let i = decode_ioctl(FICLONERANGE, &b[..20]);
        assert_eq!(
            i.to_string(),
            "FICLONERANGE src_fd=3 src_offset=4096 src_length=? dest_offset=? (truncated)"
        );
        assert!(!i.is_snapshot_create() && !i.is_snapshot_destructive());
    }

    #[test]
    fn file_dedupe() {
        let mut b = Vec::new();
        put(&mut b, 0, &0u64.to_le_bytes());
        put(&mut b, 8, &131072u64.to_le_bytes());
        put(&mut b, 16, &2u16.to_le_bytes());
        for (k, (fd, off)) in [(4i64, 0u64), (5, 65536)].iter().enumerate() {
            let o = 24 + k * 32;
            put(&mut b, o, &fd.to_le_bytes());
            put(&mut b, o + 8, &off.to_le_bytes());
            put(&mut b, o + 16, &0u64.to_le_bytes());
            put(&mut b, o + 24, &[0u8; 8]);
        }
        let i = decode_ioctl(FIDEDUPERANGE, &b);
        assert_eq!(
            i.to_string(),
            "FIDEDUPERANGE src_offset=0 src_length=131072 dest_count=2 dests=[4@0,5@65536]"
        );
        // dest_count claims more than captured (and more than the cap).
        let mut big = b.clone();
        put(&mut big, 16, &u16::MAX.to_le_bytes());
        big.resize(1024, 0);
        let i = decode_ioctl(FIDEDUPERANGE, &big);
        assert!(i.truncated);
        let IoctlDetail::DedupeRange { dests, .. } = &i.detail else {
            panic!()
        };
        assert_eq!(dests.len(), (1024 - 24) / 32);
    }

    #[test]
    fn file_flags_freeze_xattr() {
        let i = decode_ioctl(
            FS_IOC_SETFLAGS,
            &(FS_IMMUTABLE_FL | FS_APPEND_FL | FS_NOCOW_FL).to_le_bytes(),
        );
        assert_eq!(
            i.to_string(),
            "FS_IOC_SETFLAGS flags=0x800030 [IMMUTABLE,APPEND,NOCOW]"
        );
        let i = decode_ioctl(FS_IOC32_SETFLAGS, &0x80000u32.to_le_bytes());
        assert_eq!(i.to_string(), "FS_IOC32_SETFLAGS flags=0x80000 [EXTENT]");
        assert_eq!(
            decode_ioctl(FS_IOC_GETFLAGS, &[]).to_string(),
            "FS_IOC_GETFLAGS"
        );
        assert_eq!(decode_ioctl(FIFREEZE, &[]).to_string(), "FIFREEZE");
        assert_eq!(decode_ioctl(FITHAW, &[1]).to_string(), "FITHAW");
        let mut x = vec![0u8; 28];
        put(&mut x, 0, &(0x8u32 | 0x10).to_le_bytes());
        put(&mut x, 12, &42u32.to_le_bytes());
        let i = decode_ioctl(FS_IOC_FSSETXATTR, &x);
        assert_eq!(
            i.to_string(),
            "FS_IOC_FSSETXATTR xflags=0x18 [IMMUTABLE,APPEND] projid=42"
        );
        assert_eq!(
            decode_ioctl(FS_IOC_FSGETXATTR, &x).detail,
            IoctlDetail::None
        );
        assert!(decode_ioctl(FS_IOC_SETFLAGS, &[1, 2]).truncated);
    }

    #[test]
    fn unknown_split() {
        let i = decode_ioctl(0x8010_1234, &[]);
        assert_eq!(i.family, "unknown");
        assert_eq!(
            i.detail,
            IoctlDetail::Unknown(IocSplit {
                dir: "r",
                ty: 0x12,
                nr: 0x34,
                size: 16
            })
        );
        assert_eq!(
            i.to_string(),
            "UNKNOWN cmd=0x80101234 dir=r type=0x12 nr=0x34 size=16"
        );
        let js = serde_json::to_value(&i).unwrap();
        assert_eq!(js["detail"]["type"], 0x12);
        assert_eq!(js["detail"]["kind"], "unknown");
    }

    // ---- robustness --------------------------------------------------------

    fn corpus() -> Vec<(u32, Vec<u8>)> {
        vec![
            (
                dm_cmd(9),
                dm_table(
                    b"vg-snap",
                    &[
                        (0, 8, b"snapshot", b"253:3 253:4 P 8"),
                        (8, 8, b"linear", b"8:0 0"),
                    ],
                ),
            ),
            (dm_cmd(0x0e), dm_msg(b"pool", 0, b"create_snap 1 0")),
            (dm_cmd(5), {
                let mut r = dm_header(b"a", b"", 0, 0);
                put(&mut r, DM_IOCTL_SIZE, b"b\0");
                finish_dm(r, 0)
            }),
            (BTRFS_IOC_SNAP_CREATE, vol_args(3, b"s\0")),
            (
                BTRFS_IOC_SNAP_DESTROY_V2,
                vol_args_v2(3, 0x10, &[1, 1, 0, 0, 0, 0, 0, 0]),
            ),
            (BTRFS_IOC_SNAP_CREATE_V2, vol_args_v2(3, 2, b"snap\0")),
            (BTRFS_IOC_SUBVOL_SETFLAGS, 2u64.to_le_bytes().to_vec()),
            (BTRFS_IOC_DEFAULT_SUBVOL, 5u64.to_le_bytes().to_vec()),
            (0x5a18, b"tank/a@b\0".to_vec()),
            (FICLONE, 3i32.to_le_bytes().to_vec()),
            (FICLONERANGE, vec![1u8; 32]),
            (FIDEDUPERANGE, {
                let mut b = vec![0u8; 24 + 64];
                b[16] = 2;
                b
            }),
            (FS_IOC_SETFLAGS, 0x10u32.to_le_bytes().to_vec()),
            (FS_IOC_FSSETXATTR, vec![0x8u8; 28]),
        ]
    }

    #[test]
    fn every_prefix_never_panics() {
        for (cmd, arg) in corpus() {
            let full = decode_ioctl(cmd, &arg);
            assert!(!full.truncated, "{full}");
            for n in 0..arg.len() {
                let i = decode_ioctl(cmd, &arg[..n]);
                let _ = i.to_string();
                let _ = serde_json::to_string(&i).unwrap();
                let _ = (i.is_snapshot_create(), i.is_snapshot_destructive());
                assert_eq!(i.family, full.family);
                assert_eq!(i.name, full.name);
            }
        }
    }

    #[test]
    fn truncation_reported_for_short_structs() {
        // Cut inside fixed fields (strings excluded) must flag truncation.
        let dm = dm_table(b"v", &[(0, 8, b"linear", b"8:0 0")]);
        for n in [0, 10, 100, 311, DM_IOCTL_SIZE + 20] {
            assert!(decode_ioctl(dm_cmd(9), &dm[..n]).truncated, "dm prefix {n}");
        }
        let v2 = vol_args_v2(3, 2, b"snap\0");
        for n in [0, 8, 20, 56, 58] {
            assert!(
                decode_ioctl(BTRFS_IOC_SNAP_CREATE_V2, &v2[..n]).truncated,
                "v2 {n}"
            );
        }
    }

    #[test]
    fn mutation_loop_no_panic() {
        let mut rng = Xorshift(0xdead_beef_cafe_f00d);
        let corpus = corpus();
        let mut cmds: Vec<u32> = corpus.iter().map(|(c, _)| *c).collect();
        cmds.extend([
            dm_cmd(0),
            dm_cmd(0x11),
            0x5a23,
            FS_IOC_GETFLAGS,
            0xffff_ffff,
            0,
        ]);
        for it in 0..2000 {
            let (cmd, base) = &corpus[it % corpus.len()];
            let mut v = base.clone();
            for _ in 0..1 + rng.next() % 6 {
                if v.is_empty() {
                    break;
                }
                let j = (rng.next() % v.len() as u64) as usize;
                match rng.next() % 4 {
                    0 => v[j] = rng.next() as u8,
                    1 => {
                        let x = (rng.next() as u32).to_le_bytes();
                        let n = (v.len() - j).min(4);
                        v[j..j + n].copy_from_slice(&x[..n]);
                    }
                    2 => v.truncate(j),
                    _ => v[j] = 0,
                }
            }
            let c = if rng.next().is_multiple_of(8) {
                cmds[(rng.next() % cmds.len() as u64) as usize]
            } else {
                *cmd
            };
            let i = decode_ioctl(c, &v);
            let _ = i.to_string();
            let _ = serde_json::to_string(&i).unwrap();
            let _ = (i.is_snapshot_create(), i.is_snapshot_destructive());
            // Random cmds against random bytes too.
            let r: Vec<u8> = (0..rng.next() % 1100).map(|_| rng.next() as u8).collect();
            let _ = decode_ioctl(rng.next() as u32, &r).to_string();
            let _ = decode_ioctl(dm_cmd((rng.next() % 0x14) as u32), &r).to_string();
        }
    }
}
