//! Namespace hooks: create/rename/unlink/link/mkdir and attribute changes in watched trees.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use snapmon_common::{ns_flags, EventKind, NsOp};

use crate::{
    emit::{fill_header, output_ns, output_watched, sc_arg, urgent_actor},
    kernel::watched_fd,
    path::{by_prefix, match_path, relevant},
    raw::RegArgs,
    write::enter,
    SCRATCH_NS,
};

const AT_FDCWD: u64 = -100i64 as u64;
const NONE: u64 = 0;

/// Emit a namespace record when either path lies in a watched tree.
#[inline(always)]
unsafe fn ns_paths(op: NsOp, dirfd1: u64, p1: u64, dirfd2: u64, p2: u64, aux: u64, aux2: u64) {
    ns_paths_from(op, dirfd1, p1, dirfd2, p2, aux, aux2, false)
}

/// As `ns_paths`; with `uring`, the paths are io_uring's kernel copies and the record says
/// it came through io_uring.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined into each hook: a struct would cost stack the 6.1 verifier counts"
)]
pub unsafe fn ns_paths_from(
    op: NsOp,
    dirfd1: u64,
    p1: u64,
    dirfd2: u64,
    p2: u64,
    aux: u64,
    aux2: u64,
    uring: bool,
) {
    let Some(()) = enter() else { return };
    let task = crate::kernel::Task::current();
    let Some(ev) = SCRATCH_NS.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    let m1 = match_path(task, dirfd1 as i64, p1, uring, &mut ev.path1);
    let mut flags = m1.flags;
    ev.path1_len = m1.len as u16;
    ev.base1 = m1.base;
    ev.path2_len = 0;
    ev.base2 = Default::default();
    let mut dest = 0u64;
    let mut m2_by_prefix = false;
    if p2 != 0 {
        let m2 = match_path(task, dirfd2 as i64, p2, uring, &mut ev.path2);
        if m2.exact {
            dest = m2.hash;
        }
        ev.path2_len = m2.len as u16;
        ev.base2 = m2.base;
        if relevant(m2.flags) {
            flags |= ns_flags::PATH2_MATCH;
        }
        if m2.flags & ns_flags::LEAF_MATCH != 0 {
            flags |= ns_flags::LEAF2_MATCH;
        }
        m2_by_prefix = by_prefix(m2.flags);
        if m2.flags & ns_flags::PATH1_TRUNCATED != 0 {
            flags |= ns_flags::PATH2_TRUNCATED;
        }
    }
    if !relevant(flags) && flags & ns_flags::PATH2_MATCH == 0 {
        crate::observe::mark(false);
        return;
    }
    // Matched by a last component alone: where the LSM hooks observe, they see the operation
    // by the directory's identity, surely; the agent would only have to guess it here.
    if !uring && !by_prefix(m1.flags) && !m2_by_prefix && crate::observe::observing() {
        crate::observe::mark(false);
        return;
    }
    crate::respond::on_path(op, &m1, dest);
    if uring {
        flags |= ns_flags::VIA_IO_URING;
    }
    fill_header(&mut ev.hdr, EventKind::Namespace as u32);
    ev.op = op as u16;
    ev.flags = flags;
    ev.dirfd = dirfd1 as i32;
    ev.dirfd2 = dirfd2 as i32;
    ev.aux = aux;
    ev.aux2 = aux2;
    // The store the path was matched in: path1's base dir, else path2's (a rename into it).
    let base = if relevant(m1.flags) {
        &ev.base1
    } else {
        &ev.base2
    };
    output_ns(ev, urgent_actor(ev.hdr.uid), base, op as u32);
    if !uring {
        crate::observe::mark(true);
    }
}

/// Attribute change through a file descriptor (fchmod, fchown, futimens).
#[inline(always)]
unsafe fn ns_fd(op: NsOp, fd: u64, aux: u64, aux2: u64) {
    let Some(()) = enter() else { return };
    let Some(w) = watched_fd(fd as i64, true) else {
        crate::observe::mark(false);
        return;
    };
    let Some(ev) = SCRATCH_NS.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::Namespace as u32);
    ev.op = op as u16;
    ev.flags = ns_flags::TARGET_IS_FD;
    ev.dirfd = fd as i32;
    ev.dirfd2 = 0;
    ev.base1 = w.key;
    ev.base2 = Default::default();
    ev.path1_len = 0;
    ev.path2_len = 0;
    ev.path1[0] = 0;
    ev.path2[0] = 0;
    ev.aux = aux;
    ev.aux2 = aux2;
    output_watched(ev, ev.hdr.uid, &w);
    crate::observe::mark(true);
}

/// A syscall hook in both modes: `tp!(name / raw_name(slot, …) => body)` makes the
/// tracepoint program `name` and the raw handler `raw_name` (`tp_btf/sys_enter`, see `raw`)
/// of one body. It names the argument slots in order (`_` skips one) and binds each name to
/// a reader of its slot, so the body reads `slot()` where it needs it, as often as the old
/// `sc_arg` calls did; the body runs unsafe.
macro_rules! tp {
    ($name:ident / $raw:ident($($slot:tt),*) => $body:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            tp!(@bind ctx, 0, $($slot),*);
            #[allow(unused_unsafe, reason = "some bodies call no unsafe function")]
            unsafe {
                $body
            };
            0
        }

        #[btf_tracepoint(function = "sys_enter")]
        pub fn $raw(ctx: BtfTracePointContext) -> u32 {
            let args = unsafe { RegArgs::of(&ctx) };
            tp!(@bind args, 0, $($slot),*);
            #[allow(unused_unsafe, reason = "some bodies call no unsafe function")]
            unsafe {
                $body
            };
            0
        }
    };
    (@bind $ctx:ident, $i:expr, _ $(, $rest:tt)*) => {
        tp!(@bind $ctx, $i + 1, $($rest),*)
    };
    (@bind $ctx:ident, $i:expr, $slot:ident $(, $rest:tt)*) => {
        let $slot = || sc_arg(&$ctx, $i);
        tp!(@bind $ctx, $i + 1, $($rest),*)
    };
    (@bind $ctx:ident, $i:expr,) => {};
}

tp!(sys_enter_unlink / raw_unlink(path) => ns_paths(NsOp::Unlink, AT_FDCWD, path(), 0, NONE, 0, 0));
tp!(sys_enter_unlinkat / raw_unlinkat(dfd, path, flag) => {
    const AT_REMOVEDIR: u64 = 0x200;
    let flag = flag();
    let op = if flag & AT_REMOVEDIR != 0 {
        NsOp::Rmdir
    } else {
        NsOp::Unlink
    };
    ns_paths(op, dfd(), path(), 0, NONE, flag, 0)
});
tp!(sys_enter_rmdir / raw_rmdir(path) => ns_paths(NsOp::Rmdir, AT_FDCWD, path(), 0, NONE, 0, 0));
tp!(sys_enter_rename / raw_rename(old, new) => ns_paths(NsOp::Rename, AT_FDCWD, old(), AT_FDCWD, new(), 0, 0));
tp!(sys_enter_renameat / raw_renameat(odfd, old, ndfd, new) => {
    ns_paths(NsOp::Rename, odfd(), old(), ndfd(), new(), 0, 0)
});
tp!(sys_enter_renameat2 / raw_renameat2(odfd, old, ndfd, new, flags) => {
    ns_paths(NsOp::Rename, odfd(), old(), ndfd(), new(), flags(), 0)
});
tp!(sys_enter_link / raw_link(old, new) => ns_paths(NsOp::Link, AT_FDCWD, old(), AT_FDCWD, new(), 0, 0));
tp!(sys_enter_linkat / raw_linkat(odfd, old, ndfd, new, flags) => {
    ns_paths(NsOp::Link, odfd(), old(), ndfd(), new(), flags(), 0)
});
// symlink(target, linkpath): only linkpath names a place; target is content.
tp!(sys_enter_symlink / raw_symlink(_, link) => ns_paths(NsOp::Symlink, AT_FDCWD, link(), 0, NONE, 0, 0));
tp!(sys_enter_symlinkat / raw_symlinkat(_, dfd, link) => ns_paths(NsOp::Symlink, dfd(), link(), 0, NONE, 0, 0));
tp!(sys_enter_mkdir / raw_mkdir(path, mode) => ns_paths(NsOp::Mkdir, AT_FDCWD, path(), 0, NONE, mode(), 0));
tp!(sys_enter_mkdirat / raw_mkdirat(dfd, path, mode) => ns_paths(NsOp::Mkdir, dfd(), path(), 0, NONE, mode(), 0));
tp!(sys_enter_chmod / raw_chmod(path, mode) => ns_paths(NsOp::Chmod, AT_FDCWD, path(), 0, NONE, mode(), 0));
tp!(sys_enter_fchmodat / raw_fchmodat(dfd, path, mode) => ns_paths(NsOp::Chmod, dfd(), path(), 0, NONE, mode(), 0));
tp!(sys_enter_fchmodat2 / raw_fchmodat2(dfd, path, mode) => {
    ns_paths(NsOp::Chmod, dfd(), path(), 0, NONE, mode(), 0)
});
tp!(sys_enter_fchmod / raw_fchmod(fd, mode) => ns_fd(NsOp::Chmod, fd(), mode(), 0));
tp!(sys_enter_chown / raw_chown(path, uid, gid) => {
    ns_paths(NsOp::Chown, AT_FDCWD, path(), 0, NONE, uid(), gid())
});
tp!(sys_enter_lchown / raw_lchown(path, uid, gid) => {
    ns_paths(NsOp::Chown, AT_FDCWD, path(), 0, NONE, uid(), gid())
});
tp!(sys_enter_fchownat / raw_fchownat(dfd, path, uid, gid) => {
    ns_paths(NsOp::Chown, dfd(), path(), 0, NONE, uid(), gid())
});
tp!(sys_enter_fchown / raw_fchown(fd, uid, gid) => ns_fd(NsOp::Chown, fd(), uid(), gid()));
tp!(sys_enter_truncate / raw_truncate(path, length) => {
    ns_paths(NsOp::Truncate, AT_FDCWD, path(), 0, NONE, 0, length())
});
// utimensat(dfd, NULL, times, 0) is futimens(dfd).
tp!(sys_enter_utimensat / raw_utimensat(dfd, path, times, flags) => {
    let path = path();
    if path == 0 {
        ns_fd(NsOp::Utimes, dfd(), times(), 0)
    } else {
        ns_paths(NsOp::Utimes, dfd(), path, 0, NONE, times(), flags())
    }
});
tp!(sys_enter_utime / raw_utime(path, times) => ns_paths(NsOp::Utimes, AT_FDCWD, path(), 0, NONE, times(), 0));
tp!(sys_enter_utimes / raw_utimes(path, times) => {
    ns_paths(NsOp::Utimes, AT_FDCWD, path(), 0, NONE, times(), 0)
});
tp!(sys_enter_futimesat / raw_futimesat(dfd, path, times) => {
    ns_paths(NsOp::Utimes, dfd(), path(), 0, NONE, times(), 0)
});
