//! VFS backend (fentry): writes seen below the syscall layer, where the file is resolved.
//!
//! Attached only where the kernel allows fentry. Syscall tracepoints stay primary (they
//! carry the op and a sample of the bytes); this hook reports the writes they cannot see:
//! io_uring (any file, registered ones included, worker threads too), loop-device and other
//! kernel-internal writers. Writes made inside a hooked write syscall are skipped here.

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use snapmon_common::{valid as v, watch_value, WriteOp};

use crate::{
    kernel::{current_syscall, enter, is_io_worker, File, Inode},
    write::{emit_write_file, Pos, WriteRec},
    WATCHED_FILES,
};

/// Syscalls whose writes the tracepoint backend already reports (x86_64 numbers).
const HOOKED_WRITE_SYSCALLS: [i64; 9] = [1, 18, 20, 296, 328, 326, 40, 275, 209];
const NR_IO_URING_ENTER: i64 = 426;

/// `rw_verify_area(int rw, struct file *file, const loff_t *ppos, size_t count)`: reached from
/// vfs_write, io_uring's io_write and aio_write alike.
#[fentry(function = "rw_verify_area")]
pub fn rw_verify_area(ctx: FEntryContext) -> u32 {
    const WRITE: i32 = 1;
    unsafe {
        let rw: i32 = ctx.arg(0);
        if rw != WRITE || enter(v::FILES | v::VFS).is_none() {
            return 0;
        }
        let file = File::new(ctx.arg(1));
        let Some(inode) = file.inode() else {
            return 0;
        };
        let Some(key) = inode.key() else {
            return 0;
        };
        let Some(value) = WATCHED_FILES.get(&key) else {
            return 0;
        };
        let value = *value;
        if !inode.is_entry_file(value, false) {
            return 0;
        }
        let precious = value & watch_value::ORDINARY == 0;
        let nr = current_syscall().0;
        if HOOKED_WRITE_SYSCALLS.contains(&nr) {
            return 0;
        }
        let ppos: *const i64 = ctx.arg(2);
        let count: u64 = ctx.arg(3);
        let pos = if ppos.is_null() {
            Pos::Current
        } else {
            Pos::At(aya_ebpf::helpers::bpf_probe_read_kernel(ppos).unwrap_or(-1))
        };
        // io_uring: inline from io_uring_enter, or on an io-wq worker (no syscall context).
        let op = if nr == NR_IO_URING_ENTER || is_io_worker() {
            WriteOp::IoUringWrite
        } else {
            WriteOp::VfsWrite
        };
        let r = WriteRec::new(-1, op, pos, count).aux(nr as u64);
        emit_write_file(file, inode, (key, precious), r);
    }
    0
}

const NR_IOCTL: i64 = 16;
const NR_FALLOCATE: i64 = 285;
const NR_COPY_FILE_RANGE: i64 = 326;

/// The watched inode and whether it is an image or metadata file, unless the agent itself
/// or a path another hook reports.
#[inline(always)]
unsafe fn watched_below_syscalls(
    inode: Inode,
    reported_by: &[i64],
) -> Option<(snapmon_common::FileKey, bool)> {
    if inode.is_null() {
        return None;
    }
    enter(v::FILES | v::VFS)?;
    let key = inode.key()?;
    let value = *WATCHED_FILES.get(&key)?;
    // Another generation: a later file with a freed watched file's number.
    if !inode.is_entry_file(value, false) {
        return None;
    }
    let precious = value & watch_value::ORDINARY == 0;
    let nr = current_syscall().0;
    // io_uring requests are reported at submission.
    if reported_by.contains(&nr) || nr == NR_IO_URING_ENTER || is_io_worker() {
        return None;
    }
    Some((key, precious))
}

/// `truncate_pagecache_range(inode, lstart, lend)`: filesystems call it when they free or zero
/// a byte range (punch-hole, zero-range, collapse, a reflink's destination). fallocate(2),
/// FICLONE and io_uring are reported by their own hooks; this catches the rest, which do not
/// even pass `vfs_fallocate`: a loop device's discard (the loop driver calls the filesystem
/// directly, from a kernel worker) or nfsd.
#[fentry(function = "truncate_pagecache_range")]
pub fn truncate_pagecache_range(ctx: FEntryContext) -> u32 {
    unsafe {
        let inode = Inode::new(ctx.arg(0));
        let Some(key) =
            watched_below_syscalls(inode, &[NR_FALLOCATE, NR_IOCTL, NR_COPY_FILE_RANGE])
        else {
            return 0;
        };
        let start: i64 = ctx.arg(1);
        let end: i64 = ctx.arg(2);
        let len = (end - start + 1).max(0) as u64;
        let r = WriteRec::new(-1, WriteOp::VfsRangeDropped, Pos::At(start), len);
        emit_write_file(File::null(), inode, key, r);
    }
    0
}

/// `vfs_clone_file_range(file_in, pos_in, file_out, pos_out, len, flags)`: reflinks into a
/// watched file that neither FICLONE (ioctl hook) nor copy_file_range made, e.g. overlayfs
/// copy-up or nfsd's CLONE.
#[fentry(function = "vfs_clone_file_range")]
pub fn vfs_clone_file_range(ctx: FEntryContext) -> u32 {
    unsafe {
        let file = File::new(ctx.arg(2));
        let Some(inode) = file.inode() else {
            return 0;
        };
        let Some(key) = watched_below_syscalls(inode, &[NR_IOCTL, NR_COPY_FILE_RANGE]) else {
            return 0;
        };
        let pos_out: i64 = ctx.arg(3);
        let len: i64 = ctx.arg(4);
        let r = WriteRec::new(-1, WriteOp::VfsClone, Pos::At(pos_out), len as u64);
        emit_write_file(file, inode, key, r);
    }
    0
}
