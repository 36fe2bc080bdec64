//! 32-bit (ia32) syscalls on the tracepoint backend: the per-syscall tracepoints never fire
//! for them, `raw_syscalls/sys_enter` does. Compat syscalls are handed to the native hook of
//! the same syscall (its tracepoint record has the same layout: arguments from offset 16),
//! or to a variant here where the ia32 ABI splits a 64-bit argument or uses 32-bit iovecs.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::ProgramArray,
    programs::TracePointContext,
};
use snapmon_common::{WriteOp, COMPAT_SLOTS, IOV_MAX_SUMMED};

use crate::{
    emit::{sc_arg, SysArgs},
    kernel::in_compat,
    write::{
        aio_submit, emit_write, mmap_shared, vec_write, watched_arg, Abi, IovSum, Pos, WriteRec,
    },
};

/// Programs by ia32 syscall number, filled by the loader (`kernel::compat`).
#[map]
static COMPAT_TAIL: ProgramArray = ProgramArray::with_max_entries(COMPAT_SLOTS, 0);

/// Every syscall of every task passes here: one helper call for the current task and one
/// direct load of its status (no probe_read) before native syscalls return.
#[tracepoint]
pub fn raw_sys_enter(ctx: TracePointContext) -> u32 {
    unsafe {
        if !in_compat() {
            return 0;
        }
        let nr = ctx.read_at::<i64>(8).unwrap_or(-1);
        if (0..COMPAT_SLOTS as i64).contains(&nr) {
            COMPAT_TAIL.tail_call(&ctx, nr as u32);
        }
    }
    0
}

/// A 64-bit value the ia32 ABI passes as two registers, low first.
#[inline(always)]
pub(crate) fn split<C: SysArgs>(ctx: &C, lo: usize) -> u64 {
    (sc_arg(ctx, lo) & 0xffff_ffff) | (sc_arg(ctx, lo + 1) << 32)
}

/// pwrite64(fd, buf, count, pos_lo, pos_hi)
#[inline(always)]
pub(crate) unsafe fn pwrite64<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let (buf, count) = (sc_arg(ctx, 1), sc_arg(ctx, 2));
        let pos = split(ctx, 3) as i64;
        let r = WriteRec::new(fd, WriteOp::Pwrite, Pos::At(pos), count);
        emit_write(&w, r.sample(buf, count));
    }
}

#[tracepoint]
pub fn compat_pwrite64(ctx: TracePointContext) -> u32 {
    unsafe { pwrite64(&ctx) };
    0
}

/// ftruncate64(fd, len_lo, len_hi)
#[inline(always)]
pub(crate) unsafe fn ftruncate64<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let length = split(ctx, 1);
        let op = WriteOp::Ftruncate;
        emit_write(&w, WriteRec::new(fd, op, Pos::At(length as i64), length));
    }
}

#[tracepoint]
pub fn compat_ftruncate64(ctx: TracePointContext) -> u32 {
    unsafe { ftruncate64(&ctx) };
    0
}

/// fallocate(fd, mode, off_lo, off_hi, len_lo, len_hi)
#[inline(always)]
pub(crate) unsafe fn fallocate<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let (mode, offset, len) = (sc_arg(ctx, 1), split(ctx, 2) as i64, split(ctx, 4));
        let op = WriteOp::Fallocate;
        emit_write(&w, WriteRec::new(fd, op, Pos::At(offset), len).aux(mode));
    }
}

#[tracepoint]
pub fn compat_fallocate(ctx: TracePointContext) -> u32 {
    unsafe { fallocate(&ctx) };
    0
}

/// Sum of up to IOV_MAX_SUMMED `compat_iovec`s (two u32s each).
#[inline(always)]
pub(crate) unsafe fn iov32_sum(vec: u64, cnt: u64) -> IovSum {
    let (mut total, mut first, mut first_len) = (0u64, 0u64, 0u64);
    for i in 0..IOV_MAX_SUMMED as u64 {
        if i >= cnt {
            break;
        }
        let e: [u32; 2] = bpf_probe_read_user((vec + i * 8) as *const [u32; 2]).unwrap_or([0; 2]);
        if i == 0 {
            first = e[0] as u64;
            first_len = e[1] as u64;
        }
        total += e[1] as u64;
    }
    IovSum {
        total,
        first,
        first_len,
        partial: cnt > IOV_MAX_SUMMED as u64,
    }
}

/// writev(fd, compat_iovec *, vlen)
#[tracepoint]
pub fn compat_writev(ctx: TracePointContext) -> u32 {
    unsafe { vec_write(&ctx, WriteOp::Writev, Abi::Ia32) };
    0
}

/// pwritev(fd, compat_iovec *, vlen, pos_lo, pos_hi)
#[tracepoint]
pub fn compat_pwritev(ctx: TracePointContext) -> u32 {
    unsafe { vec_write(&ctx, WriteOp::Pwritev, Abi::Ia32) };
    0
}

/// pwritev2(fd, compat_iovec *, vlen, pos_lo, pos_hi, flags)
#[tracepoint]
pub fn compat_pwritev2(ctx: TracePointContext) -> u32 {
    unsafe { vec_write(&ctx, WriteOp::Pwritev2, Abi::Ia32) };
    0
}

/// io_submit(ctx_id, nr, compat_uptr_t *iocbpp)
#[tracepoint]
pub fn compat_io_submit(ctx: TracePointContext) -> u32 {
    unsafe { aio_submit(&ctx, Abi::Ia32) };
    0
}

/// The six u32s `old_mmap` takes by pointer (`struct mmap_arg_struct32`).
#[repr(C)]
#[derive(Clone, Copy)]
struct MmapArgs32 {
    addr: u32,
    len: u32,
    prot: u32,
    flags: u32,
    fd: u32,
    offset: u32,
}

/// old_mmap(struct mmap_arg_struct32 *): i386's `mmap`, every argument in memory.
#[inline(always)]
pub(crate) unsafe fn old_mmap<C: SysArgs>(ctx: &C) {
    unsafe {
        let Ok(a) = bpf_probe_read_user(sc_arg(ctx, 0) as *const MmapArgs32) else {
            return;
        };
        let (prot, flags) = (a.prot as u64, a.flags as u64);
        mmap_shared(
            a.len as u64,
            prot,
            flags,
            a.fd as i32 as i64,
            a.offset as i64,
        );
    }
}

#[tracepoint]
pub fn compat_old_mmap(ctx: TracePointContext) -> u32 {
    unsafe { old_mmap(&ctx) };
    0
}

/// mmap2(addr, len, prot, flags, fd, pgoff): the offset in 4096-byte units on x86.
#[inline(always)]
pub(crate) unsafe fn mmap2<C: SysArgs>(ctx: &C) {
    let a = |i| sc_arg(ctx, i);
    let (fd, off) = (a(4) as i32 as i64, (a(5) & 0xffff_ffff) << 12);
    unsafe { mmap_shared(a(1), a(2), a(3), fd, off as i64) };
}

#[tracepoint]
pub fn compat_mmap2(ctx: TracePointContext) -> u32 {
    unsafe { mmap2(&ctx) };
    0
}
