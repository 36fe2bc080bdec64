//! btrfs subvolume and snapshot ioctls (`linux/btrfs.h`).

use super::dm::flag_names;
use super::info::IoctlDetail;
use super::ioc::IocSplit;
use super::raw::read_cstr;
use crate::bytes::{le_i64, le_u64};

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

pub(super) fn decode_btrfs(
    cmd: u32,
    arg: &[u8],
    truncated: &mut bool,
) -> (&'static str, IoctlDetail) {
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
