//! open(2) hooks: opens for write of watched files and creates in watched dirs.
//!
//! Judged at syscall exit from the returned fd, so the decision uses the real file and its
//! real parent directory (no path games); new files in watched dirs are watched at once.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use snapmon_common::{
    dir_flags, fnv1a_step, lost, open_watch, runtime, valid as v, watch_share, watch_value,
    EventKind, FileKey, OpenStash, FNV_OFFSET, ORDINARY_LIMIT, PATH_LEN, PRECIOUS_EXT_LEN,
};

use crate::{
    emit::{
        copy_user_str, count_lost, fill_header, output_file, sc_arg, sc_ret, urgent_file, SysArgs,
    },
    kernel::{direct_walk, enter, valid, Task},
    IMAGE_INO, OPEN_STASH, PRECIOUS_EXTS, RUNTIME, SCRATCH_OPEN, WATCHED_DIRS, WATCHED_FILES,
    WATCH_SHARE,
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

#[inline(always)]
fn runtime_flags() -> u32 {
    RUNTIME.get(0).copied().unwrap_or(0)
}

const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const AT_FDCWD: u64 = -100i64 as u64;
/// Is the last component of `path[..len]` an image or metadata name: its extension (the
/// bytes after its last dot, a leading dot excepted) in `PRECIOUS_EXTS`? A cut path is not.
#[inline(always)]
fn precious_name(path: &[u8; PATH_LEN], len: u32) -> bool {
    const M: usize = PATH_LEN - 1;
    let len = len as usize;
    if len == 0 || len >= M {
        return false;
    }
    // Backwards from the end to the last dot, the extension's bytes kept reversed. Every
    // index is masked: the verifier sees it inside the buffer whatever the compiler folds.
    let mut ext = [0u8; PRECIOUS_EXT_LEN];
    let mut n = 0usize;
    let mut dot = 0usize;
    for j in 1..=PRECIOUS_EXT_LEN + 1 {
        if j >= len {
            return false;
        }
        let c = path[(len - j) & M];
        if c == b'/' {
            return false;
        }
        if c == b'.' {
            dot = len - j;
            break;
        }
        if n < PRECIOUS_EXT_LEN {
            ext[n & (PRECIOUS_EXT_LEN - 1)] = c;
            n += 1;
        }
    }
    // No dot within reach, an empty extension, or a name that only starts with one.
    if dot == 0 || n == 0 || path[(dot - 1) & M] == b'/' {
        return false;
    }
    let mut h = FNV_OFFSET;
    for k in 0..PRECIOUS_EXT_LEN {
        if k < n {
            h = fnv1a_step(
                h,
                ext[(n - 1 - k) & (PRECIOUS_EXT_LEN - 1)].to_ascii_lowercase(),
            );
        }
    }
    unsafe { PRECIOUS_EXTS.get(&h).is_some() }
}

/// Ordinary entries in `WATCHED_FILES` now (`watch_share`).
#[inline(always)]
fn ordinary_entries() -> u64 {
    let s = |i| WATCH_SHARE.get(i).copied().unwrap_or(0);
    (s(watch_share::KERNEL_ADDED) + s(watch_share::AGENT_ADDED))
        .saturating_sub(s(watch_share::AGENT_REMOVED))
}

/// Insert a file new to `WATCHED_FILES`: images and metadata always (while the map has
/// room), others only below the ordinary share. A refusal is counted; nothing is ignored.
///
/// `value` is the entry's (`Inode::entry_value`); `stale` the value of an entry of an earlier
/// file with this inode number, which the new entry replaces.
#[inline(always)]
unsafe fn admit(key: &FileKey, value: u32, stale: Option<u32>) -> u32 {
    let precious = value & watch_value::ORDINARY == 0;
    if !precious && ordinary_entries() >= ORDINARY_LIMIT as u64 {
        count_lost(lost::WATCH_FULL);
        return open_watch::REFUSED;
    }
    // Watch it from now on, before its first write can reach us.
    crate::kernel::mark_watched_ino(key.ino);
    let flags = if stale.is_some() { 0 } else { BPF_NOEXIST };
    // A replaced ordinary entry is counted in the share already.
    let counted = stale.is_some_and(|v| v & watch_value::ORDINARY != 0);
    match WATCHED_FILES.insert(key, &value, flags) {
        Ok(()) => {
            if !precious && !counted {
                if let Some(p) = WATCH_SHARE.get_ptr_mut(watch_share::KERNEL_ADDED) {
                    // One atomic add (BPF_XADD): CPUs creating files at once all count.
                    use core::intrinsics::{atomic_xadd, AtomicOrdering};
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1);
                }
            }
            open_watch::ADMITTED
        }
        // Another CPU (or the agent) put it in meanwhile: watched, and counted once.
        Err(e) if e as i64 == -EEXIST => open_watch::NONE,
        Err(_) => {
            count_lost(lost::WATCH_FULL);
            open_watch::REFUSED
        }
    }
}

/// Levels of new, not-yet-registered subdirectories an open may sit below a watched dir.
const MAX_NEW_DEPTH: usize = 4;

#[inline(always)]
fn stash(dirfd: u64, path: u64, flags: u64) {
    if flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) == 0 {
        return;
    }
    let Some(pid_tgid) = enter(v::FILES) else {
        return;
    };
    let s = OpenStash {
        path_ptr: path,
        flags: flags as u32,
        dirfd: dirfd as i32,
    };
    let _ = OPEN_STASH.insert(&(pid_tgid as u32), &s, 0);
}

#[inline(always)]
pub(crate) fn openat<C: SysArgs>(ctx: &C) {
    stash(sc_arg(ctx, 0), sc_arg(ctx, 1), sc_arg(ctx, 2));
}

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    openat(&ctx);
    0
}

#[inline(always)]
pub(crate) fn open<C: SysArgs>(ctx: &C) {
    stash(AT_FDCWD, sc_arg(ctx, 0), sc_arg(ctx, 1));
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    open(&ctx);
    0
}

#[inline(always)]
pub(crate) fn creat<C: SysArgs>(ctx: &C) {
    stash(AT_FDCWD, sc_arg(ctx, 0), O_CREAT | O_WRONLY | O_TRUNC);
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    creat(&ctx);
    0
}

/// openat2(dfd, path, struct open_how *how, size): flags are `how->flags`.
#[inline(always)]
pub(crate) fn openat2<C: SysArgs>(ctx: &C) {
    let how = sc_arg(ctx, 2);
    let flags: u64 =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64).unwrap_or(0) };
    stash(sc_arg(ctx, 0), sc_arg(ctx, 1), flags);
}

#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    openat2(&ctx);
    0
}

#[inline(always)]
unsafe fn on_exit(ctx: &TracePointContext) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(s) = OPEN_STASH.get(&tid) else {
        return;
    };
    let s = *s;
    let _ = OPEN_STASH.remove(&tid);
    let fd = sc_ret(ctx);
    if fd < 0 {
        return;
    }
    let Some(file) = Task::current().fd_file(fd) else {
        return;
    };
    // With the direct walk, `file` is a BTF pointer and the dentry chain is plain loads; a
    // null is never replaced by a literal 0, which the verifier would not let us load from.
    let direct = direct_walk();
    let (inode, key, parent, pkey) = if direct {
        let Some(inode) = file.direct_inode() else {
            return;
        };
        let Some(key) = inode.direct_key() else {
            return;
        };
        let Some(dentry) = file.direct_dentry() else {
            return;
        };
        let Some(parent) = dentry.direct_parent() else {
            return;
        };
        let pkey = parent
            .direct_inode()
            .and_then(|i| i.direct_key())
            .unwrap_or_default();
        (inode, key, parent, pkey)
    } else {
        let Some(inode) = file.inode() else {
            return;
        };
        let Some(key) = inode.key() else { return };
        let parent = file.dentry().parent();
        let pkey = parent.key().unwrap_or_default();
        (inode, key, parent, pkey)
    };
    // Any node of a loop device over a watched image opens the image's bytes.
    let mut key = key;
    let mut aliased = false;
    if WATCHED_FILES.get(&key).is_none() {
        if let Some(k) = crate::kernel::rdev_alias(inode) {
            key = k;
            aliased = true;
        }
    }
    // An overlay's file (anonymous device) with a watched image's inode number, opened for
    // write through a merged view the agent has no alias for (another mount namespace, or
    // one mounted a moment ago): watched from here, before its first write; the agent
    // confirms it or withdraws it.
    let mut overlay = false;
    if key.dev >> 20 == 0
        && WATCHED_FILES.get(&key).is_none()
        && IMAGE_INO.get(&key.ino).is_some()
        && valid(v::SB_MAGIC)
        // Not another btrfs subvolume's file (their inode numbers repeat): an overlay's.
        && inode.sb().and_then(|sb| sb.magic()) == Some(snapmon_common::OVERLAYFS_SUPER_MAGIC)
    {
        overlay = admit(&key, inode.entry_value(0, direct), None) == open_watch::ADMITTED;
    }
    // Entry value: an image or metadata file (not ORDINARY) is `precious` to `output_file`.
    let mut entry = WATCHED_FILES.get(&key).copied();
    // An entry of another generation is a freed file's (its number reused): not this file,
    // whose entry, if it gets one, replaces it. An alias's entry is the node's, not this one's.
    let stale = entry.filter(|v| !aliased && !inode.is_entry_file(*v, direct));
    if stale.is_some() {
        entry = None;
    }
    let file_watched = entry.is_some();
    let mut precious = entry.is_some_and(|v| v & watch_value::ORDINARY == 0);
    let mut pflags = WATCHED_DIRS.get(&pkey).copied().unwrap_or(0);
    if !file_watched && pflags & dir_flags::WATCHED == 0 && pkey.ino != 0 {
        // A directory made a moment ago inside a watched tree may not be in the map yet
        // (userspace adds it when it sees the mkdir): judge by the nearest ancestors, and
        // watch the directory here so the race cannot hide files created right after.
        let mut d = parent;
        for _ in 0..MAX_NEW_DEPTH {
            let k = if direct {
                let Some(up) = d.direct_parent() else {
                    break;
                };
                d = up;
                d.direct_inode().and_then(|i| i.direct_key())
            } else {
                d = d.parent();
                d.key()
            };
            let Some(k) = k else {
                break;
            };
            if let Some(f) = WATCHED_DIRS.get(&k) {
                if *f & dir_flags::WATCHED != 0 {
                    pflags = *f & (dir_flags::WATCHED | dir_flags::METADATA);
                    let _ = WATCHED_DIRS.insert(&pkey, &pflags, 0);
                }
                break;
            }
        }
    }
    if !file_watched && pflags & dir_flags::WATCHED == 0 {
        return;
    }
    let Some(ev) = SCRATCH_OPEN.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    ev.path_len = copy_user_str::<PATH_LEN>(&mut ev.path, s.path_ptr);
    ev.watch = if overlay {
        open_watch::OVERLAY
    } else {
        open_watch::NONE
    };
    if !file_watched {
        // Images and metadata always get a watch; other files only below the ordinary
        // share, and not at all while the agent keeps the map in reserve (it decides and
        // counts those), so a flood of junk cannot take the room of the next image.
        precious = pflags & dir_flags::METADATA != 0 || precious_name(&ev.path, ev.path_len);
        if precious || runtime_flags() & runtime::WATCH_RESERVE == 0 {
            let flags = if precious { 0 } else { watch_value::ORDINARY };
            ev.watch = admit(&key, inode.entry_value(flags, direct), stale);
        }
    }
    fill_header(&mut ev.hdr, EventKind::FileOpen as u32);
    ev.fd = fd as i32;
    ev.flags = s.flags;
    ev.f_mode = file.mode();
    ev.file = key;
    ev.parent = pkey;
    ev.size = if direct {
        inode.direct_size()
    } else {
        inode.size()
    };
    ev._pad = 0;
    let _ = s.dirfd;
    output_file(ev, urgent_file(ev.hdr.uid, inode, precious), precious, &key);
}

/// The exit of every open syscall (openat, open, creat, openat2): one program, verified
/// once, attached to each (the agent's `Attach::SyscallShared`).
#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    unsafe { on_exit(&ctx) };
    0
}
