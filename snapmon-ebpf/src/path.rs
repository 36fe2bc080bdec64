//! In-kernel path filter: does a user path name something inside a watched directory?
//!
//! Absolute paths: each directory prefix is FNV-1a hashed and looked up in `WATCHED_PREFIXES`.
//! Relative paths: the base directory (dirfd or cwd) must be watched, or, for multi-component
//! paths, an ancestor of a watched dir; a base not in the map yet (made a moment ago) is
//! judged by its nearest registered ancestor. Paths with `//`, `/./` or `/../` are flagged for
//! userspace to resolve. Userspace re-checks every match exactly. A path longer than the
//! record holds is flagged cut and its full length reported, for userspace to resolve.

use snapmon_common::{dir_flags, fnv1a_step, ns_flags, FileKey, FNV_OFFSET, PATH_LEN, PATH_MAX};

use aya_ebpf::helpers::generated::bpf_loop;

use crate::{
    emit::{copy_kernel_str, copy_user_str},
    kernel::{Dentry, Task},
    PATH_FULL, PATH_WALK, UP_WALK, WATCHED_DIRS, WATCHED_LEAVES, WATCHED_PREFIXES,
};

pub struct PathMatch {
    pub flags: u16,
    /// Bytes copied; with `PATH1_TRUNCATED`, the whole path's length.
    pub len: u32,
    pub base: FileKey,
    /// FNV-1a of the whole path: with `exact` or `base_entry`, what the circuit breaker
    /// looks protected images up by.
    pub hash: u64,
    /// Absolute, complete and normalized: the hashes name the object exactly.
    pub exact: bool,
    /// A bare entry name (no `/`) in the directory `base`.
    pub base_entry: bool,
}

/// Loop state of one path walk. It lives in per-CPU map memory, not on the stack: newer
/// verifiers simulate `bpf_loop` callbacks until their states converge, and map values are
/// not tracked precisely, so they converge at once.
#[repr(C)]
pub struct Walk {
    hash: u64,
    /// FNV-1a of the current component (the last one, once the walk ends).
    leaf: u64,
    state: u32,
    absolute: u32,
}

/// Callback context: only the buffer, which is the same on every iteration.
#[repr(C)]
struct WalkCtx {
    buf: *const u8,
}

/// One byte position of the walk (`i` = 1..PATH_LEN). Returns 1 to stop.
///
/// Run through `bpf_loop` so the verifier checks the body once, whatever the path length;
/// an unrolled 256-step loop is slow to verify everywhere and rejected outright by 6.1's CFG
/// check when the compiler lays the latch out as a fallthrough.
#[inline(never)]
extern "C" fn walk_step(idx: u64, ctx: *mut WalkCtx) -> i64 {
    // Bound the index before arithmetic so the verifier sees 1 <= i < PATH_LEN.
    if idx >= (PATH_LEN - 1) as u64 {
        return 1;
    }
    let i = idx as usize + 1;
    let Some(w) = PATH_WALK.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    let b = unsafe { (*ctx).buf };
    let (p1, c) = unsafe { (*b.add(i - 1), *b.add(i)) };
    w.hash = fnv1a_step(w.hash, p1);
    w.leaf = if p1 == b'/' {
        FNV_OFFSET
    } else {
        fnv1a_step(w.leaf, p1)
    };
    if c != 0 && c != b'/' {
        return 0;
    }
    // A component ended at i. Look back instead of counting: no loop-carried counters.
    let p2 = if i >= 2 {
        unsafe { *b.add(i - 2) }
    } else {
        b'/'
    };
    let p3 = if i >= 3 {
        unsafe { *b.add(i - 3) }
    } else {
        b'/'
    };
    let dot = p1 == b'.' && p2 == b'/';
    let dotdot = p1 == b'.' && p2 == b'.' && p3 == b'/';
    let lead_dotdot = i == 2 && p1 == b'.' && p2 == b'.';
    let absolute = w.absolute != 0;
    // "" and "." only hide a watched prefix in absolute paths (relative ones are judged by
    // their base dir); ".." escapes either way.
    if dotdot || lead_dotdot || (absolute && c == b'/' && (p1 == b'/' || dot)) {
        w.state |= ns_flags::UNNORMALIZED as u32;
    }
    if c == b'/' {
        w.state |= HAS_SLASH;
    }
    let h = w.hash;
    if absolute && unsafe { WATCHED_PREFIXES.get(&h) }.is_some() {
        w.state |= ns_flags::ABS_PREFIX_MATCH as u32;
    }
    if c == 0 && unsafe { WATCHED_LEAVES.get(&w.leaf) }.is_some() {
        w.state |= ns_flags::LEAF_MATCH as u32;
    }
    (c == 0) as i64
}

/// Copy the path at `ptr` (user memory, or kernel memory with `kernel`, as io_uring's
/// prepped `struct filename`) into `buf` and decide whether it is in a watched tree.
#[inline(always)]
pub unsafe fn match_path(
    task: Task,
    dirfd: i64,
    ptr: u64,
    kernel: bool,
    buf: &mut [u8; PATH_LEN],
) -> PathMatch {
    let len = if kernel {
        copy_kernel_str::<PATH_LEN>(buf, ptr as *const u8)
    } else {
        copy_user_str::<PATH_LEN>(buf, ptr)
    };
    let mut m = PathMatch {
        flags: 0,
        len,
        base: FileKey::default(),
        hash: 0,
        exact: false,
        base_entry: false,
    };
    if len == 0 {
        return m;
    }
    let Some(w) = PATH_WALK.get_ptr_mut(0) else {
        return m;
    };
    let absolute = buf[0] == b'/';
    (*w).hash = FNV_OFFSET;
    (*w).leaf = FNV_OFFSET;
    (*w).state = if len as usize >= PATH_LEN - 1 {
        m.len = full_len(ptr, kernel).unwrap_or(len);
        ns_flags::PATH1_TRUNCATED as u32
    } else {
        0
    };
    (*w).absolute = absolute as u32;
    let mut ctx = WalkCtx { buf: buf.as_ptr() };
    bpf_loop(
        (PATH_LEN - 1) as u32,
        walk_step as *mut core::ffi::c_void,
        &mut ctx as *mut WalkCtx as *mut core::ffi::c_void,
        0,
    );
    let state = (*w).state;
    m.flags = (state & 0xffff) as u16;
    let has_slash = state & HAS_SLASH != 0;
    m.hash = (*w).hash;
    let clean = m.flags & (ns_flags::UNNORMALIZED | ns_flags::PATH1_TRUNCATED) == 0;
    m.exact = absolute && clean;
    if !absolute {
        if let Some(dir) = task.base_dir(dirfd) {
            if let Some(base) = dir.key() {
                m.base = base;
                m.base_entry = !has_slash && clean;
                let f = match WATCHED_DIRS.get(&base) {
                    Some(f) => Some(*f),
                    None => new_dir_flags(dir, &base),
                };
                if let Some(f) = f {
                    if !has_slash && f & dir_flags::WATCHED != 0 {
                        m.flags |= ns_flags::BASE_WATCHED;
                    } else if has_slash {
                        m.flags |= ns_flags::BASE_ANCESTOR;
                    }
                }
            }
        }
    }
    m
}

/// Levels of new, not-yet-registered directories a base may sit below a watched one (as
/// `open`'s creates).
const MAX_NEW_DEPTH: u32 = 4;

/// Loop state of the walk up from a base directory not in `WATCHED_DIRS`.
#[repr(C)]
pub struct UpWalk {
    dentry: u64,
    /// The first registered ancestor's `dir_flags`, `u32::MAX` while none is found.
    flags: u32,
    _pad: u32,
}

/// One level up (`bpf_loop` callback, verified once whatever the depth). Returns 1 to stop.
#[inline(never)]
extern "C" fn up_step(_idx: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(w) = UP_WALK.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    let up = unsafe { Dentry::new(w.dentry as *const u8).parent() };
    if up.is_null() || up.as_ptr() as u64 == w.dentry {
        return 1; // the root is its own parent
    }
    let Some(k) = (unsafe { up.key() }) else {
        return 1;
    };
    if let Some(f) = unsafe { WATCHED_DIRS.get(&k) } {
        w.flags = *f;
        return 1;
    }
    w.dentry = up.as_ptr() as u64;
    0
}

/// A directory made a moment ago inside a watched tree is not in the map until userspace
/// sees its mkdir land: judge it by its nearest registered ancestor, and register it as
/// that ancestor's (as `open` does for creates), so the ops that follow cost one lookup.
#[inline(always)]
unsafe fn new_dir_flags(dir: Dentry, key: &FileKey) -> Option<u32> {
    let w = UP_WALK.get_ptr_mut(0)?;
    (*w).dentry = dir.as_ptr() as u64;
    (*w).flags = u32::MAX;
    bpf_loop(
        MAX_NEW_DEPTH,
        up_step as *mut core::ffi::c_void,
        core::ptr::null_mut(),
        0,
    );
    let f = (*w).flags;
    if f == u32::MAX || f & dir_flags::WATCHED == 0 {
        return None;
    }
    let f = f & (dir_flags::WATCHED | dir_flags::METADATA);
    let _ = WATCHED_DIRS.insert(key, &f, 0);
    Some(f)
}

/// Length of a path that filled the record's buffer, read once more into per-CPU scratch:
/// userspace tells cut paths sharing their first bytes apart by it.
#[inline(always)]
unsafe fn full_len(ptr: u64, kernel: bool) -> Option<u32> {
    let buf = &mut *PATH_FULL.get_ptr_mut(0)?;
    let len = if kernel {
        copy_kernel_str::<PATH_MAX>(buf, ptr as *const u8)
    } else {
        copy_user_str::<PATH_MAX>(buf, ptr)
    };
    (len as usize >= PATH_LEN - 1).then_some(len)
}

/// Internal bit above the u16 wire flags.
const HAS_SLASH: u32 = 1 << 16;

#[inline(always)]
pub fn relevant(flags: u16) -> bool {
    by_prefix(flags) || flags & ns_flags::LEAF_MATCH != 0
}

/// Matched by its directories (not by its last component alone).
#[inline(always)]
pub fn by_prefix(flags: u16) -> bool {
    flags
        & (ns_flags::ABS_PREFIX_MATCH
            | ns_flags::BASE_WATCHED
            | ns_flags::BASE_ANCESTOR
            | ns_flags::UNNORMALIZED)
        != 0
}
