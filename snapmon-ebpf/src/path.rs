//! In-kernel path filter: does a user path name something inside a watched directory?
//!
//! Absolute paths: each directory prefix is FNV-1a hashed and looked up in `WATCHED_PREFIXES`.
//! Relative paths: the base directory (dirfd or cwd) must be watched, or, for multi-component
//! paths, an ancestor of a watched dir. Paths with `//`, `/./` or `/../` are flagged for
//! userspace to resolve. Userspace re-checks every match exactly.

use snapmon_common::{dir_flags, fnv1a_step, ns_flags, FileKey, FNV_OFFSET, PATH_LEN};

use core::ptr::{read_volatile, write_volatile};

use crate::{
    emit::copy_user_str, kernel::base_dir_key, PATH_STATE, WATCHED_DIRS, WATCHED_PREFIXES,
};

pub struct PathMatch {
    pub flags: u16,
    pub len: u32,
    pub base: FileKey,
}

/// Copy `uptr` into `buf` and decide whether it is in a watched tree.
///
/// Loop-carried state lives in map memory (`PATH_STATE`, volatile) rather than registers: the
/// verifier does not track map values, so every iteration's branches converge and prune.
#[inline(always)]
pub unsafe fn match_path(
    task: *const u8,
    dirfd: i64,
    uptr: u64,
    buf: &mut [u8; PATH_LEN],
) -> PathMatch {
    let len = copy_user_str::<PATH_LEN>(buf, uptr);
    let mut m = PathMatch {
        flags: 0,
        len,
        base: FileKey::default(),
    };
    if len == 0 {
        return m;
    }
    let Some(st) = PATH_STATE.get_ptr_mut(0) else {
        return m;
    };
    write_volatile(st, 0);
    if len as usize >= PATH_LEN - 1 {
        write_volatile(st, ns_flags::PATH1_TRUNCATED as u32);
    }
    let absolute = buf[0] == b'/';
    let mut h = FNV_OFFSET;
    for i in 1..PATH_LEN {
        h = fnv1a_step(h, buf[i - 1]);
        let c = buf[i];
        if c != 0 && c != b'/' {
            continue;
        }
        // A component ended at i. Look back instead of counting: no loop-carried counters.
        let p1 = buf[i - 1];
        let p2 = if i >= 2 { buf[i - 2] } else { b'/' };
        let p3 = if i >= 3 { buf[i - 3] } else { b'/' };
        let dot = p1 == b'.' && p2 == b'/';
        let dotdot = p1 == b'.' && p2 == b'.' && p3 == b'/';
        let lead_dotdot = i == 2 && p1 == b'.' && p2 == b'.';
        let mut f = 0u32;
        // "" and "." only hide a watched prefix in absolute paths (relative ones are judged by
        // their base dir); ".." escapes either way.
        if dotdot || lead_dotdot || (absolute && c == b'/' && (p1 == b'/' || dot)) {
            f |= ns_flags::UNNORMALIZED as u32;
        }
        if c == b'/' {
            f |= HAS_SLASH;
        }
        if absolute && WATCHED_PREFIXES.get(&h).is_some() {
            f |= ns_flags::ABS_PREFIX_MATCH as u32;
        }
        if f != 0 {
            write_volatile(st, read_volatile(st) | f);
        }
        if c == 0 {
            break;
        }
    }
    let state = read_volatile(st);
    m.flags = (state & 0xffff) as u16;
    let has_slash = state & HAS_SLASH != 0;
    if !absolute {
        if let Some(base) = base_dir_key(task, dirfd) {
            m.base = base;
            if let Some(f) = WATCHED_DIRS.get(&base) {
                if !has_slash && *f & dir_flags::WATCHED != 0 {
                    m.flags |= ns_flags::BASE_WATCHED;
                } else if has_slash {
                    m.flags |= ns_flags::BASE_ANCESTOR;
                }
            }
        }
    }
    m
}

/// Internal bit above the u16 wire flags.
const HAS_SLASH: u32 = 1 << 16;

#[inline(always)]
pub fn relevant(flags: u16) -> bool {
    flags
        & (ns_flags::ABS_PREFIX_MATCH
            | ns_flags::BASE_WATCHED
            | ns_flags::BASE_ANCESTOR
            | ns_flags::UNNORMALIZED)
        != 0
}
