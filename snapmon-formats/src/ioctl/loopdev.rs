//! Loop device ioctls (`linux/loop.h`).

use snapmon_common::loop_ioctl as lo;

use super::info::IoctlDetail;
use super::raw::read_cstr;
use crate::bytes::{le_i32, le_i64, le_u32, le_u64};

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

pub(super) fn decode_loop(
    cmd: u32,
    arg: &[u8],
    truncated: &mut bool,
) -> Option<(&'static str, IoctlDetail)> {
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
