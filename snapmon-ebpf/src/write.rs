//! Write-class syscall hooks: every way bytes, size or mappings of a watched file change.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};

use snapmon_common::{
    write_flags, EventKind, WriteOp, AIO_MAX_IOCBS, DATA_LEN, FILTER_RANGES, IOV_MAX_SUMMED,
};

use crate::{
    emit::{copy_user, fill_header, output_watched, sc_arg, SysArgs},
    kernel::{current_exe, enter as enter_hook, valid, watched_fd, File, Inode, Watched},
    FILTERED, SCRATCH_WRITE, TRUSTED_WRITERS, WRITE_FILTER,
};
use snapmon_common::valid as v;

/// Where the write's offset comes from.
pub enum Pos {
    At(i64),
    /// Current file position (`-1` passed to pwritev2 / io_uring, or plain write).
    Current,
}

/// One write-class operation as a hook saw it, for `emit_write`. Passed by value into
/// inlined code: its fields stay in registers, as the positional arguments did.
pub struct WriteRec {
    /// The fd written through (-1: none, the VFS backend).
    pub fd: i64,
    pub op: WriteOp,
    pub pos: Pos,
    pub len: u64,
    /// The op's extra word (fallocate mode, a copy's source fd, the iocb index …).
    pub aux: u64,
    /// A user buffer to sample (0: none) and its length.
    pub sample: u64,
    pub sample_len: u64,
    /// `write_flags` the hook already knows (`LEN_PARTIAL`).
    pub flags: u16,
}

impl WriteRec {
    /// `len` bytes at `pos` through `fd`: no aux word, no sample, no flags.
    #[inline(always)]
    pub fn new(fd: i64, op: WriteOp, pos: Pos, len: u64) -> Self {
        WriteRec {
            fd,
            op,
            pos,
            len,
            aux: 0,
            sample: 0,
            sample_len: 0,
            flags: 0,
        }
    }

    #[inline(always)]
    pub fn aux(self, aux: u64) -> Self {
        WriteRec { aux, ..self }
    }

    /// Add `write_flags` the hook knows (`FIXED_FILE`).
    #[inline(always)]
    pub fn flags(self, flags: u16) -> Self {
        WriteRec {
            flags: self.flags | flags,
            ..self
        }
    }

    /// Sample `len` bytes of the user buffer `buf`.
    #[inline(always)]
    pub fn sample(self, buf: u64, len: u64) -> Self {
        WriteRec {
            sample: buf,
            sample_len: len,
            ..self
        }
    }

    /// An iovec write: its summed length, a sample of the first iovec (enough to see header
    /// fields being set), and `LEN_PARTIAL` when the sum stopped short.
    #[inline(always)]
    pub fn iov(fd: i64, op: WriteOp, pos: Pos, s: IovSum) -> Self {
        WriteRec {
            flags: if s.partial {
                write_flags::LEN_PARTIAL
            } else {
                0
            },
            ..WriteRec::new(fd, op, pos, s.total).sample(s.first, s.first_len)
        }
    }
}

/// Fill and emit a write record for a watched file.
#[inline(always)]
pub unsafe fn emit_write(w: &Watched, r: WriteRec) {
    emit_write_from(w, r, crate::emit::BACKEND_TRACEPOINT)
}

#[inline(always)]
unsafe fn emit_write_from(w: &Watched, r: WriteRec, backend: u32) {
    let WriteRec {
        fd,
        op,
        pos,
        len,
        aux,
        sample,
        sample_len,
        flags: extra_flags,
    } = r;
    // Where the write lands first: a trusted writer's write that misses every range that
    // matters is dropped before any record is assembled.
    let mut flags = extra_flags;
    let size = w.size();
    let offset = match pos {
        Pos::At(p) => p,
        Pos::Current => {
            flags |= write_flags::POS_FROM_FILE;
            const O_APPEND: u32 = 0o2000;
            if w.file.flags() & O_APPEND != 0 {
                flags |= write_flags::APPEND;
                size as i64
            } else {
                w.file.pos()
            }
        }
    };
    if filtered(w, op, flags, offset, len, size) {
        return;
    }
    // Circuit breaker first: the signal is queued before the syscall does its work.
    crate::respond::on_write(w, op, offset, len, size, aux, backend);
    let Some(ev) = SCRATCH_WRITE.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::FileWrite as u32);
    ev.hdr.backend = backend;
    ev.op = op as u16;
    ev.flags = flags;
    if w.is_dir {
        ev.flags |= write_flags::IS_DIR;
    }
    ev.fd = fd as i32;
    ev.file = w.key;
    ev.size = size;
    ev.offset = offset;
    ev.len = len;
    ev.aux = aux;
    ev.data_len = copy_user::<DATA_LEN>(&mut ev.data, sample, sample_len);
    output_watched(ev, ev.hdr.uid, w);
}

/// In-kernel filter: is this a write by a trusted writer of the file's format that stays
/// inside the file and misses every range its classifier published (`WRITE_FILTER`)?
/// Growth, truncation, punching, mappings, copies and partial lengths are never filtered.
#[inline(always)]
unsafe fn filtered(w: &Watched, op: WriteOp, flags: u16, offset: i64, len: u64, size: u64) -> bool {
    if !matches!(
        op,
        WriteOp::Write
            | WriteOp::Pwrite
            | WriteOp::Writev
            | WriteOp::Pwritev
            | WriteOp::Pwritev2
            | WriteOp::IoUringWrite
            | WriteOp::IoUringWritev
            | WriteOp::IoUringWriteFixed
            | WriteOp::AioPwrite
            | WriteOp::AioPwritev
    ) || w.is_dir
        || flags & (write_flags::LEN_PARTIAL | write_flags::APPEND) != 0
        || offset < 0
        || len == 0
    {
        return false;
    }
    let Some(f) = WRITE_FILTER.get_ptr(&w.key) else {
        return false;
    };
    let start = offset as u64;
    let end = start.wrapping_add(len);
    if end < start || end > size {
        return false;
    }
    if !valid(v::ARGS) {
        return false;
    }
    let Some(exe) = current_exe() else {
        return false;
    };
    let Some(groups) = TRUSTED_WRITERS.get(&exe) else {
        return false;
    };
    let f = &*f;
    if *groups & f.actors == 0 {
        return false;
    }
    let n = f.count;
    for i in 0..FILTER_RANGES {
        if i as u32 >= n {
            break;
        }
        let r = &f.ranges[i];
        if start < r.end && end > r.start {
            return false;
        }
    }
    if let Some(c) = FILTERED.get_ptr_mut(0) {
        *c += 1;
    }
    true
}

/// Emit a write found by the VFS backend (`r` has no fd and no user buffer to sample).
#[inline(always)]
pub unsafe fn emit_write_file(
    file: File,
    inode: Inode,
    (key, precious): (snapmon_common::FileKey, bool),
    r: WriteRec,
) {
    let w = Watched {
        file,
        inode,
        key,
        is_dir: false,
        precious,
        // A probe read: `inode` came from one here (`Watched::size`).
        size: if crate::kernel::direct_walk() {
            inode.size()
        } else {
            0
        },
    };
    emit_write_from(&w, r, crate::emit::BACKEND_VFS);
}

/// `kernel::enter` for the fd hooks, which look up the current task's fds (`watched_fd`).
#[inline(always)]
pub(crate) fn enter() -> Option<()> {
    enter_hook(v::FILES).map(|_| ())
}

/// The lengths of an iovec array summed (`iov_sum`).
pub struct IovSum {
    pub total: u64,
    /// The first iovec's base and length.
    pub first: u64,
    pub first_len: u64,
    /// More than `IOV_MAX_SUMMED` iovecs: `total` is short.
    pub partial: bool,
}

/// The fd in argument `slot` when it is a watched file (`watched_fd`) and the writer is not
/// the agent (`enter`). The file first: most writes are to unwatched files, and the lookup
/// has no side effect, so they skip the pid helper call.
#[inline(always)]
pub(crate) unsafe fn watched_arg<C: SysArgs>(ctx: &C, slot: usize) -> Option<(i64, Watched)> {
    if !valid(v::FILES) {
        return None;
    }
    let fd = sc_arg(ctx, slot) as i64;
    let w = watched_fd(fd, false)?;
    enter()?;
    Some((fd, w))
}

/// Sum the lengths of up to IOV_MAX_SUMMED iovecs.
#[inline(always)]
pub(crate) unsafe fn iov_sum(vec: u64, cnt: u64) -> IovSum {
    let mut total = 0u64;
    let mut first = 0u64;
    let mut first_len = 0u64;
    let n = if cnt > IOV_MAX_SUMMED as u64 {
        IOV_MAX_SUMMED as u64
    } else {
        cnt
    };
    for i in 0..IOV_MAX_SUMMED as u64 {
        if i >= n {
            break;
        }
        let base: u64 = bpf_probe_read_user((vec + i * 16) as *const u64).unwrap_or(0);
        let l: u64 = bpf_probe_read_user((vec + i * 16 + 8) as *const u64).unwrap_or(0);
        if i == 0 {
            first = base;
            first_len = l;
        }
        total += l;
    }
    IovSum {
        total,
        first,
        first_len,
        partial: cnt > IOV_MAX_SUMMED as u64,
    }
}

#[inline(always)]
pub(crate) unsafe fn write<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let (buf, count) = (sc_arg(ctx, 1), sc_arg(ctx, 2));
        let r = WriteRec::new(fd, WriteOp::Write, Pos::Current, count);
        emit_write(&w, r.sample(buf, count));
    }
}

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    unsafe { write(&ctx) };
    0
}

#[inline(always)]
pub(crate) unsafe fn pwrite64<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let (buf, count, pos) = (sc_arg(ctx, 1), sc_arg(ctx, 2), sc_arg(ctx, 3) as i64);
        let r = WriteRec::new(fd, WriteOp::Pwrite, Pos::At(pos), count);
        emit_write(&w, r.sample(buf, count));
    }
}

#[tracepoint]
pub fn sys_enter_pwrite64(ctx: TracePointContext) -> u32 {
    unsafe { pwrite64(&ctx) };
    0
}

/// The syscall ABI a hook reads its arguments in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    Native,
    /// 32-bit: `compat_iovec`s, 64-bit offsets split in two slots (`compat`).
    Ia32,
}

/// writev, pwritev, pwritev2: `(fd, iov, vlen, pos…, flags)`.
#[inline(always)]
pub(crate) unsafe fn vec_write<C: SysArgs>(ctx: &C, op: WriteOp, abi: Abi) {
    let Some((fd, w)) = watched_arg(ctx, 0) else {
        return;
    };
    let (vec, cnt) = (sc_arg(ctx, 1), sc_arg(ctx, 2));
    let sum = match abi {
        Abi::Native => iov_sum(vec, cnt),
        Abi::Ia32 => crate::compat::iov32_sum(vec, cnt),
    };
    // Read only by the ops that have a position.
    let pos_at = || match abi {
        Abi::Native => sc_arg(ctx, 3) as i64,
        Abi::Ia32 => crate::compat::split(ctx, 3) as i64,
    };
    let (pos, aux) = match op {
        WriteOp::Writev => (Pos::Current, 0),
        WriteOp::Pwritev2 => {
            let p = pos_at();
            let pos = if p == -1 { Pos::Current } else { Pos::At(p) };
            (pos, sc_arg(ctx, 5))
        }
        _ => (Pos::At(pos_at()), 0),
    };
    emit_write(&w, WriteRec::iov(fd, op, pos, sum).aux(aux));
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    unsafe { vec_write(&ctx, WriteOp::Writev, Abi::Native) };
    0
}

#[tracepoint]
pub fn sys_enter_pwritev(ctx: TracePointContext) -> u32 {
    unsafe { vec_write(&ctx, WriteOp::Pwritev, Abi::Native) };
    0
}

#[tracepoint]
pub fn sys_enter_pwritev2(ctx: TracePointContext) -> u32 {
    unsafe { vec_write(&ctx, WriteOp::Pwritev2, Abi::Native) };
    0
}

/// Destination-side copies: `(fd_in, off_in*, fd_out, off_out*, len, …)`.
#[inline(always)]
pub(crate) unsafe fn copy_into<C: SysArgs>(
    ctx: &C,
    op: WriteOp,
    out_arg: usize,
    off_arg: usize,
    len_arg: usize,
    in_arg: usize,
) {
    let Some((fd, w)) = watched_arg(ctx, out_arg) else {
        return;
    };
    let offp = if off_arg == usize::MAX {
        0
    } else {
        sc_arg(ctx, off_arg)
    };
    let pos = if offp == 0 {
        Pos::Current
    } else {
        Pos::At(bpf_probe_read_user(offp as *const i64).unwrap_or(-1))
    };
    let len = sc_arg(ctx, len_arg);
    emit_write(&w, WriteRec::new(fd, op, pos, len).aux(sc_arg(ctx, in_arg)));
}

#[tracepoint]
pub fn sys_enter_copy_file_range(ctx: TracePointContext) -> u32 {
    unsafe { copy_into(&ctx, WriteOp::CopyFileRange, 2, 3, 4, 0) };
    0
}

#[tracepoint]
pub fn sys_enter_splice(ctx: TracePointContext) -> u32 {
    unsafe { copy_into(&ctx, WriteOp::Splice, 2, 3, 4, 0) };
    0
}

/// sendfile64(out_fd, in_fd, offset*, count): `offset` is the *source* offset.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    unsafe { copy_into(&ctx, WriteOp::Sendfile, 0, usize::MAX, 3, 1) };
    0
}

#[inline(always)]
pub(crate) unsafe fn fallocate<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let (mode, offset, len) = (sc_arg(ctx, 1), sc_arg(ctx, 2) as i64, sc_arg(ctx, 3));
        let r = WriteRec::new(fd, WriteOp::Fallocate, Pos::At(offset), len);
        emit_write(&w, r.aux(mode));
    }
}

#[tracepoint]
pub fn sys_enter_fallocate(ctx: TracePointContext) -> u32 {
    unsafe { fallocate(&ctx) };
    0
}

#[inline(always)]
pub(crate) unsafe fn ftruncate<C: SysArgs>(ctx: &C) {
    unsafe {
        let Some((fd, w)) = watched_arg(ctx, 0) else {
            return;
        };
        let length = sc_arg(ctx, 1);
        let op = WriteOp::Ftruncate;
        emit_write(&w, WriteRec::new(fd, op, Pos::At(length as i64), length));
    }
}

#[tracepoint]
pub fn sys_enter_ftruncate(ctx: TracePointContext) -> u32 {
    unsafe { ftruncate(&ctx) };
    0
}

/// Shared writable mappings: later stores are invisible to syscall hooks, so report the map.
/// Shared writable mappings (native `mmap`).
#[inline(always)]
pub(crate) unsafe fn mmap<C: SysArgs>(ctx: &C) {
    let a = |i| sc_arg(ctx, i);
    unsafe { mmap_shared(a(1), a(2), a(3), a(4) as i64, a(5) as i64) };
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    unsafe { mmap(&ctx) };
    0
}

/// A mapping of `len` bytes at `off` of `fd`, reported if shared and writable (mmap, and the
/// ia32 `old_mmap`/`mmap2` in `compat`).
#[inline(always)]
pub(crate) unsafe fn mmap_shared(len: u64, prot: u64, flags: u64, fd: i64, off: i64) {
    const PROT_WRITE: u64 = 0x2;
    const MAP_SHARED: u64 = 0x1;
    if prot & PROT_WRITE == 0 || flags & MAP_SHARED == 0 {
        return;
    }
    let Some(()) = enter() else { return };
    let Some(w) = watched_fd(fd, false) else {
        return;
    };
    let r = WriteRec::new(fd, WriteOp::MmapShared, Pos::At(off), len);
    emit_write(&w, r.aux((prot << 32) | (flags & 0xffff_ffff)));
}

/// linux-aio: inspect each iocb of `io_submit(ctx, nr, iocbpp)`.
#[inline(always)]
pub(crate) unsafe fn io_submit<C: SysArgs>(ctx: &C) {
    unsafe { aio_submit(ctx, Abi::Native) };
}

#[tracepoint]
pub fn sys_enter_io_submit(ctx: TracePointContext) -> u32 {
    unsafe { io_submit(&ctx) };
    0
}

/// io_submit's iocbs. Their layout is the same on either ABI; from 32-bit code the array
/// holds 32-bit pointers and a PWRITEV's buffer is `compat_iovec`s.
#[inline(always)]
pub(crate) unsafe fn aio_submit<C: SysArgs>(ctx: &C, abi: Abi) {
    const IOCB_CMD_PWRITE: u16 = 1;
    const IOCB_CMD_PWRITEV: u16 = 8;
    let Some(()) = enter() else { return };
    let (nr, iocbpp) = (sc_arg(ctx, 1), sc_arg(ctx, 2));
    for i in 0..AIO_MAX_IOCBS as u64 {
        if i >= nr {
            break;
        }
        let iocb = match abi {
            Abi::Native => bpf_probe_read_user((iocbpp + i * 8) as *const u64),
            Abi::Ia32 => bpf_probe_read_user((iocbpp + i * 4) as *const u32).map(u64::from),
        };
        let Ok(iocb) = iocb else {
            break;
        };
        let op: u16 = bpf_probe_read_user((iocb + 16) as *const u16).unwrap_or(0);
        if op != IOCB_CMD_PWRITE && op != IOCB_CMD_PWRITEV {
            continue;
        }
        let fd: u32 = bpf_probe_read_user((iocb + 20) as *const u32).unwrap_or(u32::MAX);
        let Some(w) = watched_fd(fd as i64, false) else {
            continue;
        };
        let buf: u64 = bpf_probe_read_user((iocb + 24) as *const u64).unwrap_or(0);
        let nbytes: u64 = bpf_probe_read_user((iocb + 32) as *const u64).unwrap_or(0);
        let offset: i64 = bpf_probe_read_user((iocb + 40) as *const i64).unwrap_or(-1);
        let (fd, pos) = (fd as i64, Pos::At(offset));
        // Two calls, as before: each branch inlines its own emit (the verifier's view of
        // this eight-iocb loop is the one that reached 6.1's limits).
        if op == IOCB_CMD_PWRITE {
            let r = WriteRec::new(fd, WriteOp::AioPwrite, pos, nbytes);
            emit_write(&w, r.sample(buf, nbytes).aux(i));
        } else {
            let sum = match abi {
                Abi::Native => iov_sum(buf, nbytes),
                Abi::Ia32 => crate::compat::iov32_sum(buf, nbytes),
            };
            emit_write(&w, WriteRec::iov(fd, WriteOp::AioPwritev, pos, sum).aux(i));
        }
    }
    // The circuit breaker judges the queued writes once, not once per iocb.
    crate::respond::flush_aio();
}
