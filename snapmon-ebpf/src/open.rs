//! open(2) hooks: opens for write of watched files and creates in watched dirs.
//!
//! Judged at syscall exit from the returned fd, so the decision uses the real file and its
//! real parent directory (no path games); new files in watched dirs are watched at once.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use snapmon_common::{dir_flags, lost, runtime, valid as v, EventKind, OpenStash, PATH_LEN};

use crate::{
    emit::{copy_user_str, count_lost, fill_header, output, sc_arg, sc_ret},
    kernel::{
        current_task, dentry_inode, fd_to_file, file_inode, inode_key, inode_size, is_agent, off,
        rk, valid,
    },
    OPEN_STASH, RUNTIME, SCRATCH_OPEN, WATCHED_DIRS, WATCHED_FILES,
};

#[inline(always)]
fn runtime_flags() -> u32 {
    RUNTIME.get(0).copied().unwrap_or(0)
}

const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const AT_FDCWD: u64 = -100i64 as u64;
/// Levels of new, not-yet-registered subdirectories an open may sit below a watched dir.
const MAX_NEW_DEPTH: usize = 4;

#[inline(always)]
fn stash(dirfd: u64, path: u64, flags: u64) {
    if flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) == 0 || !valid(v::FILES) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return;
    }
    let s = OpenStash {
        path_ptr: path,
        flags: flags as u32,
        dirfd: dirfd as i32,
    };
    let _ = OPEN_STASH.insert(&(pid_tgid as u32), &s, 0);
}

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    stash(sc_arg(&ctx, 0), sc_arg(&ctx, 1), sc_arg(&ctx, 2));
    0
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    stash(AT_FDCWD, sc_arg(&ctx, 0), sc_arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    stash(AT_FDCWD, sc_arg(&ctx, 0), O_CREAT | O_WRONLY | O_TRUNC);
    0
}

/// openat2(dfd, path, struct open_how *how, size): flags are `how->flags`.
#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let how = sc_arg(&ctx, 2);
    let flags: u64 =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const u64).unwrap_or(0) };
    stash(sc_arg(&ctx, 0), sc_arg(&ctx, 1), flags);
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
    let task = current_task();
    let Some(file) = fd_to_file(task, fd) else {
        return;
    };
    let Some(inode) = file_inode(file) else {
        return;
    };
    let Some(key) = inode_key(inode) else { return };
    let dentry: *const u8 = rk(file, off!(file_dentry)).unwrap_or(core::ptr::null());
    let parent: *const u8 = rk(dentry, off!(dentry_parent)).unwrap_or(core::ptr::null());
    let pkey = dentry_inode(parent)
        .and_then(|i| inode_key(i))
        .unwrap_or_default();
    let file_watched = WATCHED_FILES.get(&key).is_some();
    let mut parent_watched = WATCHED_DIRS
        .get(&pkey)
        .map(|f| *f & dir_flags::WATCHED != 0)
        .unwrap_or(false);
    if !file_watched && !parent_watched && pkey.ino != 0 {
        // A directory made a moment ago inside a watched tree may not be in the map yet
        // (userspace adds it when it sees the mkdir): judge by the nearest ancestors, and
        // watch the directory here so the race cannot hide files created right after.
        let mut d = parent;
        for _ in 0..MAX_NEW_DEPTH {
            d = rk(d, off!(dentry_parent)).unwrap_or(core::ptr::null());
            let Some(k) = dentry_inode(d).and_then(|i| inode_key(i)) else {
                break;
            };
            if let Some(f) = WATCHED_DIRS.get(&k) {
                if *f & dir_flags::WATCHED != 0 {
                    parent_watched = true;
                    let _ = WATCHED_DIRS.insert(&pkey, &dir_flags::WATCHED, 0);
                }
                break;
            }
        }
    }
    if !file_watched && !parent_watched {
        return;
    }
    // Past the map's ordinary share the agent decides (images and metadata get the
    // headroom, the rest is counted there), so a flood of junk cannot fill it for good.
    if !file_watched && runtime_flags() & runtime::WATCH_RESERVE == 0 {
        // Watch it from now on, before its first write can reach us.
        crate::kernel::mark_watched_ino(key.ino);
        if WATCHED_FILES.insert(&key, &0, 0).is_err() {
            count_lost(lost::WATCH_FULL);
        }
    }
    let Some(ev) = SCRATCH_OPEN.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::FileOpen as u32);
    ev.fd = fd as i32;
    ev.flags = s.flags;
    ev.f_mode = rk(file, off!(file_mode)).unwrap_or(0);
    ev.file = key;
    ev.parent = pkey;
    ev.size = inode_size(inode);
    ev.path_len = copy_user_str::<PATH_LEN>(&mut ev.path, s.path_ptr);
    let _ = s.dirfd;
    output(ev);
}

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    unsafe { on_exit(&ctx) };
    0
}

#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    unsafe { on_exit(&ctx) };
    0
}

#[tracepoint]
pub fn sys_exit_creat(ctx: TracePointContext) -> u32 {
    unsafe { on_exit(&ctx) };
    0
}

#[tracepoint]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    unsafe { on_exit(&ctx) };
    0
}
