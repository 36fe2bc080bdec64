//! The decoded ioctl, as the classification reports it.

use serde::Serialize;

use super::dm::DmIoctl;
use super::ioc::IocSplit;
use super::raw::RawStr;
use crate::Format;

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
