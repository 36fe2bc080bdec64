//! VFS backend (fentry): writes seen below the syscall layer, where the file is resolved.
//!
//! Attached only where the kernel allows fentry. Syscall tracepoints stay primary (they
//! carry the op and a sample of the bytes); this hook reports the writes they cannot see:
//! io_uring (any file, registered ones included, worker threads too), loop-device and other
//! kernel-internal writers. Writes made inside a hooked write syscall are skipped here.

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use snapmon_common::{valid as v, WriteOp};

use crate::{
    kernel::{current_syscall, file_inode, inode_key, is_agent, is_io_worker, valid},
    write::{emit_write_file, Pos},
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
    if !valid(v::FILES | v::VFS) {
        return 0;
    }
    unsafe {
        let rw: i32 = ctx.arg(0);
        if rw != WRITE {
            return 0;
        }
        let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
        if is_agent(tgid) {
            return 0;
        }
        let file: *const u8 = ctx.arg(1);
        let Some(inode) = file_inode(file) else {
            return 0;
        };
        let Some(key) = inode_key(inode) else {
            return 0;
        };
        if WATCHED_FILES.get(&key).is_none() {
            return 0;
        }
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
        emit_write_file(file, inode, key, op, pos, count, nr as u64);
    }
    0
}
