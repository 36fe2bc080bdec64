//! io_uring hook: write-class requests at submission, attributed to the submitting task.
//!
//! io_uring writes never pass the write syscalls, so without this they would be invisible.
//! Loaded as `io_uring_submit_req` (6.4+) or `io_uring_submit_sqe` (older) by the agent.
//! Writes through registered (fixed) files name a table slot, not an fd: with the direct fd
//! walk the slot is looked up in the ring's file table and the write judged as any other;
//! everywhere the registration of a watched file (`sys_enter_io_uring_register`) is reported.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_loop},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use snapmon_common::{uring_register as ur, valid as v, write_flags, EventKind, NsOp, WriteOp};

use crate::{
    emit::{count_lost, fill_header, output_watched, sc_arg},
    kernel::{enter, fixed_file, off, rbtf, rk, valid, watched_fd, Fixed},
    namespace::ns_paths_from,
    write::{emit_write, iov_sum, Pos, WriteRec},
    REG_WALK, SCRATCH_URING,
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
    unsafe {
        let req: *const u8 = ctx.arg(0);
        let opcode: u8 = rbtf(req, off!(req_opcode)).unwrap_or(0);
        // Two frames apart: the registration walk (`register_step` in a `bpf_loop`) under
        // the write path's 320-byte frame took 6.1's combined stack to 544 bytes.
        if opcode == IORING_OP_FILES_UPDATE {
            on_files_update(req);
        } else {
            on_submit(req, opcode);
        }
    }
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

/// `IORING_OP_FILES_UPDATE`: the registration by way of the ring itself.
const IORING_OP_FILES_UPDATE: u8 = 20;

/// `IORING_OP_FILES_UPDATE`, prepped before submission is traced: the SQE's addr, len and
/// off, as the kernel copied them. The submitter's fds (SQPOLL threads share its table).
#[inline(never)]
unsafe fn on_files_update(req: *const u8) {
    if enter(v::IO_URING_UPD).is_some() {
        let fds: u64 = rk(req, off!(uring_upd_arg)).unwrap_or(0);
        let nr: u32 = rk(req, off!(uring_upd_nr)).unwrap_or(0);
        let slot: u32 = rk(req, off!(uring_upd_off)).unwrap_or(0);
        // The ring's fd is not at hand here: -1.
        walk_fds(fds, nr, slot, -1, ur::VIA_SQE | ur::OP_FILES_UPDATE, 0);
    }
}

#[inline(never)]
unsafe fn on_submit(req: *const u8, opcode: u8) {
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
    // `io_uring_submit_req` checked the offsets.
    if enter(v::IO_URING | v::FILES).is_none() {
        return;
    }
    let flags: u32 = rbtf(req, off!(req_flags)).unwrap_or(0);
    // The sqe's fd, or with a registered file its table slot.
    let fd: i32 = rbtf(req, off!(req_fd)).unwrap_or(-1);
    let (w, rec_flags) = if flags & REQ_F_FIXED_FILE != 0 {
        match fixed_file(req, fd as u32) {
            Fixed::Resolved(Some(w)) => (w, write_flags::FIXED_FILE),
            Fixed::Resolved(None) => return,
            Fixed::Unresolved => {
                // The table is not read here: count the blind spot. The file's registration
                // was reported (`sys_enter_io_uring_register`).
                count_lost(snapmon_common::lost::URING_FIXED_FILE);
                return;
            }
        }
    } else {
        let Some(w) = watched_fd(fd as i64, false) else {
            return;
        };
        (w, 0)
    };
    match opcode {
        IORING_OP_FALLOCATE => {
            let offset: i64 = rk(req, off!(req_sync_off)).unwrap_or(-1);
            let len: u64 = rk(req, off!(req_sync_len)).unwrap_or(0);
            let mode: i32 = rk(req, off!(req_sync_mode)).unwrap_or(0);
            let r = WriteRec::new(fd as i64, WriteOp::IoUringFallocate, Pos::At(offset), len);
            emit_write(&w, r.aux(mode as u64).flags(rec_flags));
        }
        IORING_OP_FTRUNCATE => {
            let len: i64 = rk(req, off!(req_rw_pos)).unwrap_or(0);
            let op = WriteOp::IoUringFtruncate;
            let r = WriteRec::new(fd as i64, op, Pos::At(len), len as u64);
            emit_write(&w, r.flags(rec_flags));
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
                let sum = iov_sum(addr, len as u64);
                let r = WriteRec::iov(fd as i64, WriteOp::IoUringWritev, pos, sum);
                emit_write(&w, r.aux(opcode as u64).flags(rec_flags));
            } else {
                let op = if opcode == IORING_OP_WRITE_FIXED {
                    WriteOp::IoUringWriteFixed
                } else {
                    WriteOp::IoUringWrite
                };
                let r = WriteRec::new(fd as i64, op, pos, len as u64);
                let r = r.aux(opcode as u64).flags(rec_flags);
                emit_write(&w, r.sample(addr, len as u64));
            }
        }
    }
}

/// One `io_uring_register` files call being read (`register_step`): in per-CPU map memory,
/// as `path::Walk`, so the callback's state converges at once.
#[repr(C)]
pub struct RegWalk {
    /// User array of `int` fds.
    fds: u64,
    /// fds to read (≤ `uring_register::MAX_FDS`) and passed in all.
    n: u32,
    nr: u32,
    /// Table slot of the first fd.
    offset: u32,
    ring_fd: i32,
    opcode: u32,
    flags: u32,
}

/// Registered files: requests naming a table slot (`IOSQE_FIXED_FILE`) are resolved at
/// submission only with the direct walk, so the registration of a watched file is a record
/// too (`UringRegisterEvent`): the alert where the writes cannot be judged.
/// Every files opcode is read: the initial table (sparse `-1` slots included) and updates.
#[tracepoint]
pub fn sys_enter_io_uring_register(ctx: TracePointContext) -> u32 {
    unsafe { io_uring_register(&ctx) };
    0
}

#[inline(always)]
pub(crate) unsafe fn io_uring_register<C: crate::emit::SysArgs>(ctx: &C) {
    if enter(v::FILES).is_some() {
        on_register(ctx);
    }
}

#[inline(always)]
unsafe fn on_register<C: crate::emit::SysArgs>(ctx: &C) {
    let (ring_fd, raw, arg, nr_args) = (
        sc_arg(ctx, 0),
        sc_arg(ctx, 1) as u32,
        sc_arg(ctx, 2),
        sc_arg(ctx, 3) as u32,
    );
    let flags = if raw & ur::USE_REGISTERED_RING != 0 {
        ur::RING_REGISTERED
    } else {
        0
    };
    let opcode = raw & !ur::USE_REGISTERED_RING;
    let u32_at = |o: u64| bpf_probe_read_user((arg + o) as *const u32).unwrap_or(0);
    let u64_at = |o: u64| bpf_probe_read_user((arg + o) as *const u64).unwrap_or(0);
    // (fds, nr, offset), from the layouts in include/uapi/linux/io_uring.h.
    let (fds, nr, offset) = match opcode {
        ur::REGISTER_FILES => (arg, nr_args, 0),
        // io_uring_rsrc_register {u32 nr; u32 flags; u64 resv2; u64 data; u64 tags}
        ur::REGISTER_FILES2 => (u64_at(16), u32_at(0), 0),
        // io_uring_files_update {u32 offset; u32 resv; u64 fds}
        ur::REGISTER_FILES_UPDATE => (u64_at(8), nr_args, u32_at(0)),
        // io_uring_rsrc_update2 {u32 offset; u32 resv; u64 data; u64 tags; u32 nr; u32 resv2}
        ur::REGISTER_FILES_UPDATE2 => (u64_at(8), u32_at(24), u32_at(0)),
        _ => return,
    };
    walk_fds(fds, nr, offset, ring_fd as i32, opcode, flags);
}

/// Test the first `uring_register::MAX_FDS` of `nr` user fds at `fds` with `watched_fd`,
/// one record per watched one, in a `bpf_loop` (the body is verified once).
#[inline(always)]
unsafe fn walk_fds(fds: u64, nr: u32, offset: u32, ring_fd: i32, opcode: u32, mut flags: u32) {
    if fds == 0 || nr == 0 {
        return;
    }
    let Some(w) = REG_WALK.get_ptr_mut(0) else {
        return;
    };
    let n = if nr > ur::MAX_FDS {
        flags |= ur::CUT;
        ur::MAX_FDS
    } else {
        nr
    };
    *w = RegWalk {
        fds,
        n,
        nr,
        offset,
        ring_fd,
        opcode,
        flags,
    };
    bpf_loop(
        ur::MAX_FDS,
        register_step as *mut core::ffi::c_void,
        core::ptr::null_mut(),
        0,
    );
}

#[inline(never)]
extern "C" fn register_step(i: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(w) = REG_WALK.get(0) else {
        return 1;
    };
    if i >= w.n as u64 || i >= ur::MAX_FDS as u64 {
        return 1;
    }
    unsafe {
        let Ok(fd) = bpf_probe_read_user((w.fds + i * 4) as *const i32) else {
            return 1;
        };
        // -1: a sparse slot; -2 (IORING_REGISTER_FILES_SKIP): an update leaving the slot.
        if fd < 0 {
            return 0;
        }
        let Some(f) = watched_fd(fd as i64, false) else {
            return 0;
        };
        if f.is_dir {
            return 0;
        }
        let Some(ev) = SCRATCH_URING.get_ptr_mut(0) else {
            return 1;
        };
        let ev = &mut *ev;
        fill_header(&mut ev.hdr, EventKind::UringRegister as u32);
        ev.file = f.key;
        ev.fd = fd;
        ev.ring_fd = w.ring_fd;
        // IORING_FILE_INDEX_ALLOC (offset ~0): the kernel picks the slots.
        ev.slot = if w.offset == u32::MAX {
            u32::MAX
        } else {
            w.offset.wrapping_add(i as u32)
        };
        ev.opcode = w.opcode;
        ev.flags = w.flags;
        ev.nr = w.nr;
        ev.size = f.size();
        output_watched(ev, ev.hdr.uid, &f);
    }
    0
}
