//! ioctl hook: cmd plus a bounded copy of the argument for watched files, dirs and devices.
//! Loop attaches and detaches are reported at syscall exit, and only when they succeeded: a
//! refused `LOOP_SET_FD` (EBUSY on a bound device) neither makes nor ends an alias.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use snapmon_common::{
    loop_ioctl, lost, valid as v, write_flags, EventKind, FileKey, IoctlEvent, IOCTL_ARG_LEN,
    IOCTL_NAME_LEN,
};

use crate::{
    emit::{
        copy_kernel_str, copy_user, count_lost, fill_header, output_file, output_watched, sc_arg,
        sc_ret, urgent_actor,
    },
    kernel::{enter, in_compat, mark_watched_ino, valid, watch_rdev, watched_fd, Task, Watched},
    SCRATCH_IOCTL, WATCHED_FILES,
};

/// A loop ioctl's arguments between syscall entry and exit, by thread id.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct LoopCall {
    fd: i64,
    arg: u64,
    cmd: u32,
    _pad: u32,
}

#[map]
static LOOP_CALLS: LruHashMap<u32, LoopCall> = LruHashMap::with_max_entries(1024, 0);

/// Entries of `LOOP_CALLS` not yet taken at exit: every ioctl returns through the exit hook
/// (KVM_RUN many times a second), and this array read spares them the hash lookup. A count
/// left behind (an evicted entry, a task killed in the call) only costs that lookup.
#[map]
static LOOP_PENDING: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
unsafe fn pending_add(n: u64) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    if let Some(p) = LOOP_PENDING.get_ptr_mut(0) {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n);
    }
}

/// Loop ioctls whose effect on an alias depends on their outcome.
#[inline(always)]
fn loop_binding(cmd: u32) -> bool {
    loop_ioctl::attaches(cmd) || cmd == loop_ioctl::CLR_FD
}

#[tracepoint]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    unsafe { on_ioctl(&ctx) };
    0
}

#[tracepoint]
pub fn sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    unsafe { on_ioctl_exit(&ctx) };
    0
}

#[inline(always)]
pub(crate) unsafe fn on_ioctl<C: crate::emit::SysArgs>(ctx: &C) {
    let Some(pid_tgid) = enter(v::FILES) else {
        return;
    };
    let fd = sc_arg(ctx, 0) as i64;
    let cmd = sc_arg(ctx, 1) as u32;
    let arg = sc_arg(ctx, 2);
    // Not in a 32-bit syscall: handed here by `compat`, which has no exit hook to finish it.
    if loop_binding(cmd) && !in_compat() {
        // The circuit breaker judges before the effect; the record waits for the outcome.
        if let Some(w) = watched_fd(fd, true) {
            crate::respond::on_ioctl(&w, cmd);
        }
        let call = LoopCall {
            fd,
            arg,
            cmd,
            _pad: 0,
        };
        let tid = pid_tgid as u32;
        if LOOP_CALLS.insert(&tid, &call, 0).is_ok() {
            pending_add(1);
        } else {
            count_lost(lost::STASH_FULL);
        }
        return;
    }
    if loop_ioctl::attaches(cmd) && on_loop_attach(fd, cmd, arg) {
        return;
    }
    let Some(w) = watched_fd(fd, true) else {
        return;
    };
    if !w.is_dir && sets_generation(cmd) {
        crate::kernel::forget_generation(&w.key);
    }
    crate::respond::on_ioctl(&w, cmd);
    report(&w, fd, cmd, arg);
}

/// `FS_IOC_SETVERSION` / `EXT4_IOC_SETVERSION` (and their 32-bit forms): the owner gives the
/// inode a new `i_generation` (`chattr -v`), which must not make the file's entry another's.
#[inline(always)]
fn sets_generation(cmd: u32) -> bool {
    matches!(cmd, 0x4008_7602 | 0x4004_7602 | 0x4008_6604 | 0x4004_6604)
}

/// A loop attach or detach returned: reported only when it took effect.
#[inline(always)]
unsafe fn on_ioctl_exit(ctx: &TracePointContext) {
    if LOOP_PENDING.get(0).is_none_or(|n| *n == 0) {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(c) = LOOP_CALLS.get(&tid) else {
        return;
    };
    let c = *c;
    if LOOP_CALLS.remove(&tid).is_ok() {
        pending_add(u64::MAX); // -1
    }
    if sc_ret(ctx) != 0 {
        return;
    }
    if loop_ioctl::attaches(c.cmd) && on_loop_attach(c.fd, c.cmd, c.arg) {
        return;
    }
    if let Some(w) = watched_fd(c.fd, true) {
        report(&w, c.fd, c.cmd, c.arg);
    }
}

/// The record both ioctl reports share: who, which fd, which cmd on which file, and a
/// bounded copy of the argument (`want` bytes, or just `size` when that copy fails).
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined into both reports: a struct would cost stack the 6.1 verifier counts"
)]
unsafe fn fill(
    ev: &mut IoctlEvent,
    fd: i64,
    cmd: u32,
    file: FileKey,
    arg: u64,
    flags: u16,
    want: u64,
    size: u64,
) {
    fill_header(&mut ev.hdr, EventKind::Ioctl as u32);
    ev.fd = fd as i32;
    ev.cmd = cmd;
    ev.file = file;
    ev.arg = arg;
    ev.flags = flags;
    ev.arg_len = if want == 0 {
        0
    } else {
        copy_user::<IOCTL_ARG_LEN>(&mut ev.arg_data, arg, want)
    };
    if ev.arg_len == 0 && size != 0 {
        // Pointer near the end of a mapping: retry with just the declared size.
        ev.arg_len = copy_user::<IOCTL_ARG_LEN>(&mut ev.arg_data, arg, size);
    }
    ev.parent = FileKey::default();
    ev.name_len = 0;
}

/// An ioctl on a watched file, dir or device, with the entry's name in its directory.
#[inline(always)]
unsafe fn report(w: &Watched, fd: i64, cmd: u32, arg: u64) {
    let Some(ev) = SCRATCH_IOCTL.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    // The _IOC size field says how much the kernel itself will read; copy at most that
    // (or the full window for size-less cmds), which also keeps garbage out.
    let size = ((cmd >> 16) & 0x3fff) as u64;
    let want = if size == 0 {
        IOCTL_ARG_LEN as u64
    } else {
        size.max(IOCTL_ARG_LEN as u64)
    };
    let flags = if w.is_dir { write_flags::IS_DIR } else { 0 };
    fill(ev, fd, cmd, w.key, arg, flags, want, size);
    if valid(v::VFS_NS) {
        let d = w.file.dentry();
        let p = d.parent();
        // A filesystem root is its own parent and has no name worth reporting.
        if !p.is_null() && p != d {
            if let Some(pk) = p.key() {
                ev.parent = pk;
                ev.name_len = copy_kernel_str::<IOCTL_NAME_LEN>(&mut ev.name, d.name()) as u16;
            }
        }
    }
    output_watched(ev, ev.hdr.uid, w);
}

/// A loop attach whose backing fd is a watched file: the image gets a block-device side door
/// (`/dev/loopN`), which the fd the ioctl is issued on does not reveal. Reported as an ioctl
/// on the image, with the loop device node in `parent`, so the agent can watch that node as
/// an alias. True when reported.
#[inline(always)]
unsafe fn on_loop_attach(fd: i64, cmd: u32, arg: u64) -> bool {
    let backing: i64 = if cmd == loop_ioctl::CONFIGURE {
        // struct loop_config { __u32 fd; … }
        let mut b = [0u8; 4];
        if copy_user::<4>(&mut b, arg, 4) != 4 {
            return false;
        }
        u32::from_le_bytes(b) as i64
    } else {
        arg as u32 as i64
    };
    let Some(w) = watched_fd(backing, false) else {
        return false;
    };
    let Some(ev) = SCRATCH_IOCTL.get_ptr_mut(0) else {
        return false;
    };
    let ev = &mut *ev;
    let want = if cmd == loop_ioctl::CONFIGURE {
        IOCTL_ARG_LEN as u64
    } else {
        0
    };
    fill(ev, fd, cmd, w.key, arg, write_flags::LOOP_BACKING, want, 0);
    let node = Task::current().fd_file(fd).and_then(|f| f.inode());
    ev.parent = node.and_then(|i| i.key()).unwrap_or_default();
    if ev.parent.ino != 0 {
        // Watch the device node now: the attacker's first write through it may come before
        // the agent has read this record. The agent adopts (or withdraws) the entry. Any
        // other node of the device (`mknod`) is recognised by its device number.
        mark_watched_ino(ev.parent.ino);
        if WATCHED_FILES.insert(&ev.parent, &0, 0).is_err() {
            count_lost(lost::WATCH_FULL);
        }
        if let Some(i) = node {
            watch_rdev(i, &ev.parent);
        }
    }
    output_file(ev, urgent_actor(ev.hdr.uid), w.precious, &w.key);
    true
}
