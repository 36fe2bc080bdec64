//! ioctl hook: cmd plus a bounded copy of the argument for watched files, dirs and devices.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use snapmon_common::{valid as v, write_flags, EventKind, FileKey, IOCTL_ARG_LEN, IOCTL_NAME_LEN};

use crate::{
    emit::{copy_kernel_str, copy_user, fill_header, output, sc_arg},
    kernel::{current_task, dentry_inode, inode_key, is_agent, off, rk, valid, watched_fd},
    SCRATCH_IOCTL,
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
    let Some(w) = watched_fd(current_task(), fd, true) else {
        return;
    };
    crate::respond::on_ioctl(&w, sc_arg(ctx, 1) as u32);
    let Some(ev) = SCRATCH_IOCTL.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::Ioctl as u32);
    ev.fd = fd as i32;
    ev.cmd = sc_arg(ctx, 1) as u32;
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
    output(ev);
}
