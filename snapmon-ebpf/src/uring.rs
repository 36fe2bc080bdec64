//! io_uring hook: write-class requests at submission, attributed to the submitting task.
//!
//! io_uring writes never pass the write syscalls, so without this they would be invisible.
//! Loaded as `io_uring_submit_req` (6.4+) or `io_uring_submit_sqe` (older) by the agent.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use snapmon_common::{valid as v, write_flags, NsOp, WriteOp};

use crate::{
    emit::count_lost,
    kernel::{current_task, is_agent, off, rk, valid, watched_fd},
    namespace::ns_paths_from,
    write::{emit_write, iov_sum, Pos},
};

const IORING_OP_WRITEV: u8 = 2;
const IORING_OP_WRITE_FIXED: u8 = 5;
const IORING_OP_FALLOCATE: u8 = 17;
const IORING_OP_WRITE: u8 = 23;
const IORING_OP_FTRUNCATE: u8 = 55;
/// `REQ_F_FIXED_FILE`: the fd is an index into the ring's registered files.
const REQ_F_FIXED_FILE: u32 = 1;

#[btf_tracepoint(function = "io_uring_submit_req")]
pub fn io_uring_submit_req(ctx: BtfTracePointContext) -> u32 {
    if !valid(v::IO_URING | v::FILES) {
        return 0;
    }
    unsafe { on_submit(&ctx) };
    0
}

const IORING_OP_RENAMEAT: u8 = 35;
const IORING_OP_UNLINKAT: u8 = 36;
const IORING_OP_MKDIRAT: u8 = 37;
const IORING_OP_SYMLINKAT: u8 = 38;
const IORING_OP_LINKAT: u8 = 39;
const AT_REMOVEDIR: i32 = 0x200;

/// Namespace requests (rename/unlink/link/symlink/mkdir) never pass the namespace syscalls.
/// They are prepped before submission is traced, so their paths are already kernel copies.
#[inline(always)]
unsafe fn on_namespace(req: *const u8, opcode: u8) {
    if !valid(v::IO_URING_NS) {
        return;
    }
    // `struct filename *` → its `name`, as a kernel address.
    let name = |o: usize| -> u64 {
        let f: *const u8 = rk(req, o).unwrap_or(core::ptr::null());
        rk::<u64>(f, off!(filename_name)).unwrap_or(0)
    };
    let int = |o: usize| -> i64 { rk::<i32>(req, o).unwrap_or(-100) as i64 };
    match opcode {
        IORING_OP_RENAMEAT => ns_paths_from(
            NsOp::Rename,
            int(off!(uring_ren_odfd)) as u64,
            name(off!(uring_ren_opath)),
            int(off!(uring_ren_ndfd)) as u64,
            name(off!(uring_ren_npath)),
            rk::<i32>(req, off!(uring_ren_flags)).unwrap_or(0) as u64,
            0,
            true,
        ),
        IORING_OP_LINKAT => ns_paths_from(
            NsOp::Link,
            int(off!(uring_lnk_odfd)) as u64,
            name(off!(uring_lnk_opath)),
            int(off!(uring_lnk_ndfd)) as u64,
            name(off!(uring_lnk_npath)),
            rk::<i32>(req, off!(uring_lnk_flags)).unwrap_or(0) as u64,
            0,
            true,
        ),
        // symlink(target, linkpath): only linkpath (newpath, at new_dfd) names a place.
        IORING_OP_SYMLINKAT => ns_paths_from(
            NsOp::Symlink,
            int(off!(uring_lnk_ndfd)) as u64,
            name(off!(uring_lnk_npath)),
            0,
            0,
            0,
            0,
            true,
        ),
        IORING_OP_UNLINKAT => {
            let flags = rk::<i32>(req, off!(uring_unl_flags)).unwrap_or(0);
            let op = if flags & AT_REMOVEDIR != 0 {
                NsOp::Rmdir
            } else {
                NsOp::Unlink
            };
            ns_paths_from(
                op,
                int(off!(uring_unl_dfd)) as u64,
                name(off!(uring_unl_path)),
                0,
                0,
                flags as u64,
                0,
                true,
            )
        }
        IORING_OP_MKDIRAT => ns_paths_from(
            NsOp::Mkdir,
            int(off!(uring_mkd_dfd)) as u64,
            name(off!(uring_mkd_path)),
            0,
            0,
            0,
            0,
            true,
        ),
        _ => {}
    }
}

#[inline(always)]
unsafe fn on_submit(ctx: &BtfTracePointContext) {
    let req: *const u8 = ctx.arg(0);
    let opcode: u8 = rk(req, off!(req_opcode)).unwrap_or(0);
    if (IORING_OP_RENAMEAT..=IORING_OP_LINKAT).contains(&opcode) {
        on_namespace(req, opcode);
        return;
    }
    // With the VFS hook live, io_uring writes are reported where they happen (any file);
    // fallocate and ftruncate are still reported here.
    if matches!(
        opcode,
        IORING_OP_WRITEV | IORING_OP_WRITE_FIXED | IORING_OP_WRITE
    ) && crate::RUNTIME
        .get(0)
        .is_some_and(|f| *f & snapmon_common::runtime::VFS_WRITES != 0)
    {
        return;
    }
    if !matches!(
        opcode,
        IORING_OP_WRITEV
            | IORING_OP_WRITE_FIXED
            | IORING_OP_FALLOCATE
            | IORING_OP_WRITE
            | IORING_OP_FTRUNCATE
    ) {
        return;
    }
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return;
    }
    let flags: u32 = rk(req, off!(req_flags)).unwrap_or(0);
    if flags & REQ_F_FIXED_FILE != 0 {
        // Registered files are resolved only by the VFS backend; count the blind spot.
        count_lost(snapmon_common::lost::URING_FIXED_FILE);
        return;
    }
    let fd: i32 = rk(req, off!(req_fd)).unwrap_or(-1);
    let Some(w) = watched_fd(current_task(), fd as i64, false) else {
        return;
    };
    match opcode {
        IORING_OP_FALLOCATE => {
            let offset: i64 = rk(req, off!(req_sync_off)).unwrap_or(-1);
            let len: u64 = rk(req, off!(req_sync_len)).unwrap_or(0);
            let mode: i32 = rk(req, off!(req_sync_mode)).unwrap_or(0);
            emit_write(
                &w,
                fd as i64,
                WriteOp::IoUringFallocate,
                Pos::At(offset),
                len,
                mode as u64,
                0,
                0,
                0,
            );
        }
        IORING_OP_FTRUNCATE => {
            let len: i64 = rk(req, off!(req_rw_pos)).unwrap_or(0);
            emit_write(
                &w,
                fd as i64,
                WriteOp::IoUringFtruncate,
                Pos::At(len),
                len as u64,
                0,
                0,
                0,
                0,
            );
        }
        _ => {
            let pos: i64 = rk(req, off!(req_rw_pos)).unwrap_or(-1);
            let len: u32 = rk(req, off!(req_rw_len)).unwrap_or(0);
            let addr: u64 = rk(req, off!(req_rw_addr)).unwrap_or(0);
            let pos = if pos == -1 {
                Pos::Current
            } else {
                Pos::At(pos)
            };
            if opcode == IORING_OP_WRITEV {
                // len is the iovec count here; sum what we can.
                let (total, first, firstlen, partial) = iov_sum(addr, len as u64);
                let fl = if partial { write_flags::LEN_PARTIAL } else { 0 };
                emit_write(
                    &w,
                    fd as i64,
                    WriteOp::IoUringWritev,
                    pos,
                    total,
                    opcode as u64,
                    first,
                    firstlen,
                    fl,
                );
            } else {
                let op = if opcode == IORING_OP_WRITE_FIXED {
                    WriteOp::IoUringWriteFixed
                } else {
                    WriteOp::IoUringWrite
                };
                emit_write(
                    &w,
                    fd as i64,
                    op,
                    pos,
                    len as u64,
                    opcode as u64,
                    addr,
                    len as u64,
                    0,
                );
            }
        }
    }
}
