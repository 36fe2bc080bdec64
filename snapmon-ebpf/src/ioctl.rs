//! ioctl hook: cmd plus a bounded copy of the argument for watched files, dirs and devices.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use snapmon_common::{
    loop_ioctl, lost, valid as v, write_flags, EventKind, FileKey, IOCTL_ARG_LEN, IOCTL_NAME_LEN,
};

use crate::{
    emit::{
        copy_kernel_str, copy_user, count_lost, fill_header, output_lane, sc_arg, urgent_actor,
        urgent_file,
    },
    kernel::{
        current_task, dentry_inode, fd_to_file, file_inode, inode_key, is_agent, mark_watched_ino,
        off, rk, valid, watched_fd,
    },
    SCRATCH_IOCTL, WATCHED_FILES,
};

#[tracepoint]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    unsafe { on_ioctl(&ctx) };
    0
}

#[inline(always)]
unsafe fn on_ioctl(ctx: &TracePointContext) {
    if !valid(v::FILES) {
        return;
    }
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return;
    }
    let fd = sc_arg(ctx, 0) as i64;
    let cmd = sc_arg(ctx, 1) as u32;
    if loop_ioctl::attaches(cmd) && on_loop_attach(ctx, fd, cmd) {
        return;
    }
    let Some(w) = watched_fd(current_task(), fd, true) else {
        return;
    };
    crate::respond::on_ioctl(&w, cmd);
    let Some(ev) = SCRATCH_IOCTL.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::Ioctl as u32);
    ev.fd = fd as i32;
    ev.cmd = cmd;
    ev.file = w.key;
    ev.arg = sc_arg(ctx, 2);
    ev.flags = if w.is_dir { write_flags::IS_DIR } else { 0 };
    // The _IOC size field says how much the kernel itself will read; copy at most that
    // (or the full window for size-less cmds), which also keeps garbage out.
    let size = ((ev.cmd >> 16) & 0x3fff) as u64;
    let want = if size == 0 {
        IOCTL_ARG_LEN as u64
    } else {
        size.max(IOCTL_ARG_LEN as u64)
    };
    ev.arg_len = copy_user::<IOCTL_ARG_LEN>(&mut ev.arg_data, ev.arg, want);
    if ev.arg_len == 0 {
        // Pointer near the end of a mapping: retry with just the declared size.
        ev.arg_len = copy_user::<IOCTL_ARG_LEN>(&mut ev.arg_data, ev.arg, size);
    }
    ev.parent = FileKey::default();
    ev.name_len = 0;
    if valid(v::VFS_NS) {
        let d: *const u8 = rk(w.file, off!(file_dentry)).unwrap_or(core::ptr::null());
        let p: *const u8 = rk(d, off!(dentry_parent)).unwrap_or(core::ptr::null());
        // A filesystem root is its own parent and has no name worth reporting.
        if !p.is_null() && p != d {
            if let Some(pk) = dentry_inode(p).and_then(|i| inode_key(i)) {
                ev.parent = pk;
                let np: *const u8 = rk(d, off!(dentry_name)).unwrap_or(core::ptr::null());
                ev.name_len = copy_kernel_str::<IOCTL_NAME_LEN>(&mut ev.name, np) as u16;
            }
        }
    }
    output_lane(ev, urgent_file(ev.hdr.uid, w.inode, &w.key));
}

/// A loop attach whose backing fd is a watched file: the image gets a block-device side door
/// (`/dev/loopN`), which the fd the ioctl is issued on does not reveal. Reported as an ioctl
/// on the image, with the loop device node in `parent`, so the agent can watch that node as
/// an alias. True when reported.
#[inline(always)]
unsafe fn on_loop_attach(ctx: &TracePointContext, fd: i64, cmd: u32) -> bool {
    let arg = sc_arg(ctx, 2);
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
    let task = current_task();
    let Some(w) = watched_fd(task, backing, false) else {
        return false;
    };
    let Some(ev) = SCRATCH_IOCTL.get_ptr_mut(0) else {
        return false;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::Ioctl as u32);
    ev.fd = fd as i32;
    ev.cmd = cmd;
    ev.file = w.key;
    ev.arg = arg;
    ev.flags = write_flags::LOOP_BACKING;
    ev.arg_len = if cmd == loop_ioctl::CONFIGURE {
        copy_user::<IOCTL_ARG_LEN>(&mut ev.arg_data, arg, IOCTL_ARG_LEN as u64)
    } else {
        0
    };
    ev.parent = fd_to_file(task, fd)
        .and_then(|f| file_inode(f))
        .and_then(|i| inode_key(i))
        .unwrap_or_default();
    if ev.parent.ino != 0 {
        // Watch the device node now: the attacker's first write through it may come before
        // the agent has read this record. The agent adopts (or withdraws) the entry.
        mark_watched_ino(ev.parent.ino);
        if WATCHED_FILES.insert(&ev.parent, &0, 0).is_err() {
            count_lost(lost::WATCH_FULL);
        }
    }
    ev.name_len = 0;
    output_lane(ev, urgent_actor(ev.hdr.uid));
    true
}
