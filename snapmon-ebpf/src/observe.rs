//! VFS backend, namespace side: the LSM inode hooks report renames, unlinks, links, mkdirs
//! and attribute changes in watched trees that the syscall hooks did not.
//!
//! The syscall hooks match path strings, so a watched directory reached through another
//! name (a bind mount, an overlay's upper dir, `/proc/PID/root/…`) or changed by a kernel
//! thread (nfsd, ksmbd) escapes them. The LSM hooks see the inodes themselves. To report
//! each operation once, a syscall hook that reported one leaves an `NsMark` for the thread
//! (syscall number and first argument) and clears it when it saw nothing; the LSM hook
//! stays quiet when the mark matches the syscall it runs in. io_uring requests are reported
//! at submission and skipped here.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns};
use snapmon_common::{dir_flags, ns_flags, runtime, valid as v, EventKind, FileKey, NsMark, NsOp};

use crate::{
    emit::{copy_kernel_str, fill_header, output_lane, urgent_actor, BACKEND_LSM},
    kernel::{current_syscall, enter, is_io_worker, off, rk, Dentry, Inode},
    NS_MARK, RUNTIME, SCRATCH_NS, WATCHED_DIRS, WATCHED_FILES,
};

const NR_IO_URING_ENTER: i64 = 426;
/// A mark older than this belongs to some earlier syscall.
const MARK_TTL_NS: u64 = 1_000_000_000;

/// The LSM hooks report namespace operations (`runtime::LSM_OBSERVE`).
#[inline(always)]
pub fn observing() -> bool {
    RUNTIME
        .get(0)
        .is_some_and(|f| *f & runtime::LSM_OBSERVE != 0)
}

/// Called by the syscall namespace hooks: `reported` when they emitted a record.
#[inline(always)]
pub unsafe fn mark(reported: bool) {
    if !observing() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    if reported {
        let (nr, arg0) = current_syscall();
        let m = NsMark {
            nr,
            arg0,
            ts_ns: bpf_ktime_get_boot_ns(),
        };
        let _ = NS_MARK.insert(&id, &m, 0);
    } else {
        let _ = NS_MARK.remove(&id);
    }
}

/// Should an LSM hook report this operation? Not the agent's own, not io_uring's, and not
/// one a syscall hook already reported (that mark is consumed).
#[inline(always)]
unsafe fn should_report() -> bool {
    if !observing() {
        return false;
    }
    let Some(id) = enter(v::VFS_NS | v::FILES) else {
        return false;
    };
    if is_io_worker() {
        return false;
    }
    let (nr, arg0) = current_syscall();
    if nr == NR_IO_URING_ENTER {
        return false;
    }
    if let Some(m) = NS_MARK.get(&id) {
        let fresh = bpf_ktime_get_boot_ns().saturating_sub(m.ts_ns) < MARK_TTL_NS;
        if fresh && m.nr == nr && m.arg0 == arg0 {
            let _ = NS_MARK.remove(&id);
            return false;
        }
    }
    true
}

#[inline(always)]
unsafe fn watched_dir(k: Option<FileKey>) -> bool {
    k.and_then(|k| WATCHED_DIRS.get(&k))
        .is_some_and(|f| *f & dir_flags::WATCHED != 0)
}

/// The identity of `dentry`'s inode, and whether that inode is a watched file: its
/// `WATCHED_FILES` entry was made for it, not for a freed file whose number it reuses.
#[inline(always)]
unsafe fn watched_target(dentry: Dentry) -> (Option<FileKey>, bool) {
    let Some(inode) = dentry.inode() else {
        return (None, false);
    };
    let k = inode.key();
    let w = k
        .and_then(|k| WATCHED_FILES.get(&k))
        .is_some_and(|v| inode.is_entry_file(*v, false));
    (k, w)
}

#[inline(always)]
unsafe fn name_of(dentry: Dentry, buf: &mut [u8; snapmon_common::PATH_LEN]) -> u16 {
    copy_kernel_str(buf, dentry.name()) as u16
}

/// An entry operation: `dentry` in directory `dir` (and, for rename/link, `dentry2` in
/// `dir2`, the new name).
#[inline(always)]
pub unsafe fn entry(op: NsOp, dir: Inode, dentry: Dentry, dir2: Inode, dentry2: Dentry, aux: u64) {
    if !should_report() {
        return;
    }
    let k1 = dir.key();
    let k2 = if dir2.is_null() { None } else { dir2.key() };
    let (target, wt) = watched_target(dentry);
    let (w1, w2) = (watched_dir(k1), watched_dir(k2));
    if !w1 && !w2 && !wt {
        return;
    }
    let Some(ev) = SCRATCH_NS.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    let mut flags = ns_flags::VIA_VFS;
    ev.path2_len = 0;
    ev.base2 = FileKey::default();
    if w1 || w2 {
        // Names in their directories; userspace knows watched directories by identity.
        ev.base1 = k1.unwrap_or_default();
        ev.path1_len = name_of(dentry, &mut ev.path1);
        if w1 {
            flags |= ns_flags::BASE_WATCHED;
        }
        if !dentry2.is_null() {
            ev.base2 = k2.unwrap_or_default();
            ev.path2_len = name_of(dentry2, &mut ev.path2);
            if w2 {
                flags |= ns_flags::PATH2_MATCH;
            }
        }
    } else {
        // A watched file in an unwatched directory: name the file by identity.
        flags |= ns_flags::TARGET_IS_FD;
        ev.base1 = target.unwrap_or_default();
        ev.path1_len = 0;
        ev.path1[0] = 0;
    }
    fill_header(&mut ev.hdr, EventKind::Namespace as u32);
    ev.hdr.backend = BACKEND_LSM;
    ev.op = op as u16;
    ev.flags = flags;
    ev.dirfd = -1;
    ev.dirfd2 = -1;
    ev.aux = aux;
    ev.aux2 = 0;
    output_lane(ev, urgent_actor(ev.hdr.uid));
}

const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;
/// ATTR_KILL_SUID | ATTR_KILL_SGID | ATTR_KILL_PRIV: side effects of a write, not a chmod.
const ATTR_KILL: u32 = (1 << 11) | (1 << 12) | (1 << 14);

/// `inode_setattr(…, dentry, attr)`: chmod, chown, utimes. Size changes are left to the
/// write/truncate hooks (open with O_TRUNC lands here too).
#[inline(always)]
pub unsafe fn setattr(dentry: Dentry, attr: *const u8) {
    let valid_bits: u32 = rk(attr, off!(iattr_valid)).unwrap_or(0);
    if valid_bits & (ATTR_SIZE | ATTR_KILL) != 0 {
        return;
    }
    let (op, aux, aux2) = if valid_bits & ATTR_MODE != 0 {
        // ia_mode carries the file type too; report permission bits, as chmod(2) takes them.
        let mode: u16 = rk(attr, off!(iattr_mode)).unwrap_or(0);
        (NsOp::Chmod, (mode & 0o7777) as u64, 0)
    } else if valid_bits & (ATTR_UID | ATTR_GID) != 0 {
        let uid: u32 = if valid_bits & ATTR_UID != 0 {
            rk(attr, off!(iattr_uid)).unwrap_or(u32::MAX)
        } else {
            u32::MAX
        };
        let gid: u32 = if valid_bits & ATTR_GID != 0 {
            rk(attr, off!(iattr_gid)).unwrap_or(u32::MAX)
        } else {
            u32::MAX
        };
        (NsOp::Chown, uid as u64, gid as u64)
    } else if valid_bits & (ATTR_ATIME | ATTR_MTIME) != 0 {
        (NsOp::Utimes, 0, 0)
    } else {
        return;
    };
    if !should_report() {
        return;
    }
    let (target, wt) = watched_target(dentry);
    if !wt && !watched_dir(dentry.parent().key()) {
        return;
    }
    let Some(ev) = SCRATCH_NS.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::Namespace as u32);
    ev.hdr.backend = BACKEND_LSM;
    ev.op = op as u16;
    ev.flags = ns_flags::VIA_VFS | ns_flags::TARGET_IS_FD;
    ev.base1 = target.unwrap_or_default();
    ev.base2 = FileKey::default();
    ev.path1_len = 0;
    ev.path2_len = 0;
    ev.path1[0] = 0;
    ev.dirfd = -1;
    ev.dirfd2 = -1;
    ev.aux = aux;
    ev.aux2 = aux2;
    output_lane(ev, urgent_actor(ev.hdr.uid));
}
