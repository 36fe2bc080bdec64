//! Record assembly shared by every backend: header fill, bounded user copies, ring output.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, generated as gen,
};
use snapmon_common::{blinded_slot, lost, Header};

use snapmon_common::FileKey;

use crate::{
    kernel::{Inode, Watched},
    BLINDED, EVENTS, LOST, URGENT,
};

pub const BACKEND_TRACEPOINT: u32 = 1;
pub const BACKEND_VFS: u32 = 2;
pub const BACKEND_LSM: u32 = 3;

#[inline(always)]
pub fn fill_header(h: &mut Header, kind: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind;
    h.backend = BACKEND_TRACEPOINT;
    h.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.pid = pid_tgid as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    // Straight into the record (the kernel zeroes it on failure): aya's wrapper zeroes a
    // copy on the stack through a `memset` subprogram, a third frame that took io_submit's
    // call chain (hook → respond's loop callback → memset) past 6.1's 512-byte stack.
    unsafe {
        gen::bpf_get_current_comm(h.comm.as_mut_ptr() as *mut _, h.comm.len() as u32);
    }
}

#[inline(always)]
pub fn count_lost(cause: u32) {
    if let Some(p) = LOST.get_ptr_mut(cause) {
        unsafe { *p += 1 };
    }
}

/// Copy a whole record into the ring buffer; count it as lost when the ring is full.
#[inline(always)]
pub fn output<T>(rec: &T) {
    if EVENTS.output::<T>(rec, 0).is_err() {
        count_lost(lost::RINGBUF_FULL);
    }
}

/// As `output`, into the urgent lane (`URGENT`) when `urgent`; a full urgent lane falls back
/// to the shared one, so the lane can only make a record earlier, never lose it.
#[inline(always)]
pub fn output_lane<T>(rec: &T, urgent: bool) {
    if urgent && URGENT.output::<T>(rec, 0).is_ok() {
        return;
    }
    output(rec)
}

/// Whether a record by `uid` goes to the urgent lane: everything root does. An
/// unprivileged user's own traffic (a flood of names in a 1777 store) stays in the shared
/// lane, where it cannot delay the tamper queued behind it.
#[inline(always)]
pub fn urgent_actor(uid: u32) -> bool {
    uid == 0
}

/// As `urgent_actor`, and also any record about an image or metadata file (`precious`: not
/// an ordinary `WATCHED_FILES` entry) that `uid` does not own: the user who floods cannot
/// put its own files in the lane, and whoever touches someone else's image is heard at once.
#[inline(always)]
pub unsafe fn urgent_file(uid: u32, inode: Inode, precious: bool) -> bool {
    if urgent_actor(uid) {
        return true;
    }
    // Kernels without `bpf_rdonly_cast` (the probe-read walk: 6.1) verify every write hook
    // with the walk's extra branches; the owner test in the per-iovec and per-iocb paths took
    // pwritev2 past 6.1's 1M-instruction limit and io_submit past its 512-byte stack. There
    // only root's records take the urgent lane.
    if !crate::kernel::direct_walk() {
        return false;
    }
    precious && inode.uid().is_none_or(|owner| owner != uid)
}

/// As `output_lane`, for a record about the watched file `key`. When neither lane has room
/// for a record about an image or metadata file (`precious`), the loss is counted apart
/// (`lost::PRECIOUS_DROPPED`) and the record's file and actor kept in `BLINDED`: a flood
/// may be hiding a tamper, and the agent says so. Only the failure path pays for it.
#[inline(always)]
pub unsafe fn output_file<T>(rec: &T, urgent: bool, precious: bool, key: &FileKey) {
    if urgent && URGENT.output::<T>(rec, 0).is_ok() {
        return;
    }
    if EVENTS.output::<T>(rec, 0).is_ok() {
        return;
    }
    if !precious {
        count_lost(lost::RINGBUF_FULL);
        return;
    }
    // Before the count, so the agent that sees the count grow finds a file to name.
    note_blinded(blinded_slot::FILE, rec, key, 0);
    count_lost(lost::PRECIOUS_DROPPED);
}

/// Keep the dropped record's header and `key` in `BLINDED` slot `slot`. Written in place
/// through the map value: no stack copy (6.1's 512 bytes are spent).
#[inline(always)]
unsafe fn note_blinded<T>(slot: u32, rec: &T, key: &FileKey, op: u32) {
    if let Some(b) = BLINDED.get_ptr_mut(slot) {
        // Every record starts with its `Header` (`#[repr(C)]`, snapmon-common).
        let h = &*(rec as *const T as *const Header);
        let b = &mut *b;
        b.ts_ns = h.ts_ns;
        b.file = *key;
        b.kind = h.kind;
        b.pid = h.pid;
        b.tgid = h.tgid;
        b.uid = h.uid;
        b.gid = h.gid;
        b.op = op;
        b.comm = h.comm;
    }
}

/// As `output_lane`, for a path record (`op`) in a watched tree whose path started from the
/// directory `base` (zero: absolute). When neither lane has room, the loss is counted apart
/// (`lost::NAMESPACE_DROPPED`) and the store and actor kept in `BLINDED`: the name may have
/// been an image's, and the agent looks whether one went unheard.
#[inline(always)]
pub unsafe fn output_ns<T>(rec: &T, urgent: bool, base: &FileKey, op: u32) {
    if urgent && URGENT.output::<T>(rec, 0).is_ok() {
        return;
    }
    if EVENTS.output::<T>(rec, 0).is_ok() {
        return;
    }
    note_blinded(blinded_slot::NAMESPACE, rec, base, op);
    count_lost(lost::NAMESPACE_DROPPED);
}

/// `output_file` for a record by `uid` about the watched file `w`.
#[inline(always)]
pub unsafe fn output_watched<T>(rec: &T, uid: u32, w: &Watched) {
    output_file(
        rec,
        urgent_file(uid, w.inode, w.precious),
        w.precious,
        &w.key,
    );
}

/// Copy up to `N` bytes of user memory into `dst`; returns the bytes copied.
#[inline(always)]
pub unsafe fn copy_user<const N: usize>(dst: &mut [u8; N], src: u64, len: u64) -> u32 {
    if src == 0 || len == 0 {
        return 0;
    }
    let mut n = len as u32;
    if n > N as u32 {
        n = N as u32;
    }
    // Re-bound for the verifier after the clamp.
    let n = core::hint::black_box(n) & (2 * N as u32 - 1);
    if n == 0 || n > N as u32 {
        return 0;
    }
    let r = gen::bpf_probe_read_user(dst.as_mut_ptr() as *mut _, n, src as *const _);
    if r == 0 {
        n
    } else {
        0
    }
}

/// Copy a NUL-terminated user string; returns its length without the NUL, or 0.
#[inline(always)]
pub unsafe fn copy_user_str<const N: usize>(dst: &mut [u8; N], src: u64) -> u32 {
    if src == 0 {
        return 0;
    }
    let r = gen::bpf_probe_read_user_str(dst.as_mut_ptr() as *mut _, N as u32, src as *const _);
    if r <= 0 {
        dst[0] = 0;
        0
    } else {
        (r - 1) as u32
    }
}

#[inline(always)]
pub unsafe fn copy_kernel_str<const N: usize>(dst: &mut [u8; N], src: *const u8) -> u32 {
    if src.is_null() {
        return 0;
    }
    let r = gen::bpf_probe_read_kernel_str(dst.as_mut_ptr() as *mut _, N as u32, src as *const _);
    if r <= 0 {
        0
    } else {
        (r - 1) as u32
    }
}

/// Where a syscall hook reads its arguments: a `syscalls/sys_enter_*` record, or the saved
/// registers the raw hook (`tp_btf/sys_enter`) is handed. The handlers are generic over it,
/// so both syscall-hook modes run the same code.
pub trait SysArgs {
    /// Argument `i` (0-5) of the native syscall.
    fn arg(&self, i: usize) -> u64;
}

impl SysArgs for aya_ebpf::programs::TracePointContext {
    /// At `OFFSETS.sc_args` (from the format files) + 8 per argument: a context load at a
    /// constant offset where that is the usual layout (the verifier sees the frozen global as
    /// the constant it is and prunes the other read), else a probe read. The load saves a
    /// helper call per argument on every write hook.
    #[inline(always)]
    fn arg(&self, i: usize) -> u64 {
        let base = crate::kernel::off!(sc_args);
        if base == snapmon_common::SC_ARGS_USUAL as usize {
            // SAFETY: a tracepoint context is readable at any aligned offset inside the
            // record, which holds six arguments from here; `i` is a constant at each call.
            return unsafe {
                core::ptr::read_volatile(
                    (aya_ebpf::EbpfContext::as_ptr(self) as *const u8)
                        .add(snapmon_common::SC_ARGS_USUAL as usize + 8 * (i % 6))
                        as *const u64,
                )
            };
        }
        unsafe { self.read_at::<u64>(base + 8 * i).unwrap_or(0) }
    }
}

/// Syscall argument `i`, wherever `ctx` keeps it.
#[inline(always)]
pub fn sc_arg<C: SysArgs>(ctx: &C, i: usize) -> u64 {
    ctx.arg(i)
}

#[inline(always)]
pub fn sc_ret(ctx: &aya_ebpf::programs::TracePointContext) -> i64 {
    let base = crate::kernel::off!(sc_ret);
    if base == snapmon_common::SC_RET_USUAL as usize {
        // SAFETY: as `arg`'s context load.
        return unsafe {
            core::ptr::read_volatile(
                (aya_ebpf::EbpfContext::as_ptr(ctx) as *const u8)
                    .add(snapmon_common::SC_RET_USUAL as usize) as *const i64,
            )
        };
    }
    unsafe { ctx.read_at::<i64>(base).unwrap_or(-1) }
}
