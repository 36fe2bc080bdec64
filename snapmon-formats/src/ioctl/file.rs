//! Generic file ioctls: clone, dedupe, freeze (`linux/fs.h`).

use super::dm::flag_names;
use super::info::{DedupeDest, IoctlDetail};
use crate::bytes::{le_i32, le_i64, le_u16, le_u32, le_u64};

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

pub(super) fn decode_file(
    cmd: u32,
    arg: &[u8],
    truncated: &mut bool,
) -> Option<(&'static str, IoctlDetail)> {
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
