//! In-kernel path filter: does a user path name something inside a watched directory?
//!
//! Absolute paths: each directory prefix is FNV-1a hashed and looked up in `WATCHED_PREFIXES`.
//! Relative paths: the base directory (dirfd or cwd) must be watched, or, for multi-component
//! paths, an ancestor of a watched dir. Paths with `//`, `/./` or `/../` are flagged for
//! userspace to resolve. Userspace re-checks every match exactly.

use snapmon_common::{dir_flags, fnv1a_step, ns_flags, FileKey, FNV_OFFSET, PATH_LEN};

use crate::{
    emit::copy_user_str,
    kernel::base_dir_key,
    WATCHED_DIRS, WATCHED_PREFIXES,
};

pub struct PathMatch {
    pub flags: u16,
    pub len: u32,
    pub base: FileKey,
}

/// Copy `uptr` into `buf` and decide whether it is in a watched tree.
#[inline(always)]
pub unsafe fn match_path(task: *const u8, dirfd: i64, uptr: u64, buf: &mut [u8; PATH_LEN]) -> PathMatch {
    let len = copy_user_str::<PATH_LEN>(buf, uptr);
    let mut m = PathMatch { flags: 0, len, base: FileKey::default() };
    if len == 0 {
        return m;
    }
    if len as usize >= PATH_LEN - 1 {
        m.flags |= ns_flags::PATH1_TRUNCATED;
    }
    let absolute = buf[0] == b'/';
    let mut h = FNV_OFFSET;
    let mut has_slash = false;
    // Length of the current component and whether it is only dots.
    let mut seg = 0u32;
    let mut dots = 0u32;
    for i in 0..PATH_LEN {
        let c = buf[i];
        if c == 0 || c == b'/' {
            // Component ended. "" and "." only hide a watched prefix in absolute paths
            // (relative ones are judged by their base dir); ".." escapes either way.
            let dotdot = seg == 2 && dots == 2;
            let odd = seg == 0 || (seg == 1 && dots == 1);
            if i > 0 && (dotdot || (absolute && odd && c != 0)) {
                m.flags |= ns_flags::UNNORMALIZED;
            }
            if absolute && i > 0 && WATCHED_PREFIXES.get(&h).is_some() {
                m.flags |= ns_flags::ABS_PREFIX_MATCH;
            }
            if c == 0 {
                break;
            }
            if i > 0 {
                has_slash = true;
            }
            seg = 0;
            dots = 0;
        } else {
            seg += 1;
            if c == b'.' {
                dots += 1;
            }
        }
        h = fnv1a_step(h, c);
    }
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

#[inline(always)]
pub fn relevant(flags: u16) -> bool {
    flags
        & (ns_flags::ABS_PREFIX_MATCH
            | ns_flags::BASE_WATCHED
            | ns_flags::BASE_ANCESTOR
            | ns_flags::UNNORMALIZED)
        != 0
}
