//! The raw syscall hook (`--syscall-hook raw`): one `tp_btf/sys_enter` program sees every
//! syscall and tail-calls the handler of its number (`RAW_TAIL`, or `RAW_COMPAT_TAIL` for an
//! ia32 syscall). The handlers run the tracepoint hooks' own code, generic over `SysArgs`,
//! with the arguments read from the saved registers instead of a tracepoint record.
//!
//! Tail-call targets must share the caller's program type and attach target: the loader
//! loads every handler as `tp_btf/sys_enter` without attaching it. The namespace handlers
//! (`raw_unlink` …) are made beside their tracepoints by `namespace`'s `tp!`.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::ProgramArray,
    programs::BtfTracePointContext,
};
use snapmon_common::{SyscallSet, WriteOp, RAW_SLOTS};

use crate::{
    emit::SysArgs,
    kernel::{in_compat, regs_args},
    write::{self, Abi},
    CONFIG,
};

/// Handlers by native syscall number, filled by the loader.
#[map]
static RAW_TAIL: ProgramArray = ProgramArray::with_max_entries(RAW_SLOTS, 0);

/// Handlers by ia32 syscall number, filled by the loader (the same table as `COMPAT_TAIL`).
#[map]
static RAW_COMPAT_TAIL: ProgramArray = ProgramArray::with_max_entries(RAW_SLOTS, 0);

/// x86_64 `write` and `pwrite64`: the loader's `RAW` slots 1 and 18.
const NR_WRITE: i64 = 1;
const NR_PWRITE64: i64 = 18;

/// Every syscall of every task: its number from the tracepoint's arguments, one ia32 test,
/// one tail call (which falls through on an empty slot). Native `write` and `pwrite64`, the
/// host's most frequent hooked syscalls, run their handler's code here instead: a tail
/// call is an indirect jump, a retpoline where Spectre v2 is mitigated.
#[btf_tracepoint(function = "sys_enter")]
pub fn syscall_enter(ctx: BtfTracePointContext) -> u32 {
    let id: i64 = ctx.arg(1);
    // Most syscalls have no handler on either ABI: no ia32 test for them.
    if (0..RAW_SLOTS as i64).contains(&id) && hooked(id as u32) {
        unsafe {
            if in_compat() {
                RAW_COMPAT_TAIL.tail_call(&ctx, id as u32);
            } else if id == NR_PWRITE64 {
                write::pwrite64(&RegArgs::native(&ctx));
            } else if id == NR_WRITE {
                write::write(&RegArgs::native(&ctx));
            } else {
                RAW_TAIL.tail_call(&ctx, id as u32);
            }
        }
    }
    0
}

/// Tracepoint mode's 32-bit hook where the raw handlers load: only ia32 syscalls are handed
/// on (`RAW_COMPAT_TAIL`), native ones return at once. On `tp_btf/sys_enter` it costs every
/// syscall on the host a raw tracepoint's run, where `compat::raw_sys_enter` on the classic
/// `raw_syscalls/sys_enter` costs a perf trace record first.
#[btf_tracepoint(function = "sys_enter")]
pub fn compat_enter(ctx: BtfTracePointContext) -> u32 {
    let id: i64 = ctx.arg(1);
    if (0..RAW_SLOTS as i64).contains(&id) && compat_hooked(id as u32) {
        unsafe {
            if in_compat() {
                RAW_COMPAT_TAIL.tail_call(&ctx, id as u32);
            }
        }
    }
    0
}

/// `nr` (below `RAW_SLOTS`) has a raw handler on either ABI (`AgentConfig::hooked_ids`).
#[inline(always)]
fn hooked(nr: u32) -> bool {
    in_set(&CONFIG.hooked_ids, nr)
}

/// `nr` (below `RAW_SLOTS`) has an ia32 raw handler (`AgentConfig::compat_ids`).
#[inline(always)]
fn compat_hooked(nr: u32) -> bool {
    in_set(&CONFIG.compat_ids, nr)
}

/// One bit of a set in `CONFIG`, read as the loader froze it: a volatile load, so the
/// compiler does not fold the zeroed placeholder.
#[inline(always)]
fn in_set(set: &SyscallSet, nr: u32) -> bool {
    let word = unsafe { core::ptr::read_volatile(&set.0[(nr / 64) as usize & 7]) };
    word & (1 << (nr % 64)) != 0
}

/// The six arguments of the syscall being entered, read once from `pt_regs` (the first
/// argument of `sys_enter`, a trusted BTF pointer) in the ABI the task is in.
pub struct RegArgs([u64; 6]);

impl RegArgs {
    #[inline(always)]
    pub(crate) unsafe fn of(ctx: &BtfTracePointContext) -> Self {
        let regs: *const u8 = ctx.arg(0);
        RegArgs(regs_args(regs, in_compat()))
    }

    /// The arguments of a syscall already known to be native.
    #[inline(always)]
    unsafe fn native(ctx: &BtfTracePointContext) -> Self {
        let regs: *const u8 = ctx.arg(0);
        RegArgs(regs_args(regs, false))
    }
}

impl SysArgs for RegArgs {
    #[inline(always)]
    fn arg(&self, i: usize) -> u64 {
        self.0[i % 6]
    }
}

/// One handler program per syscall body: `name |args| body;`.
macro_rules! raw {
    ($($(#[$m:meta])* $name:ident |$a:ident| $body:expr;)*) => {$(
        $(#[$m])*
        #[btf_tracepoint(function = "sys_enter")]
        pub fn $name(ctx: BtfTracePointContext) -> u32 {
            #[allow(unused_unsafe, reason = "some bodies call no unsafe function")]
            unsafe {
                let $a = &RegArgs::of(&ctx);
                $body;
            }
            0
        }
    )*};
}

raw! {
    raw_write |a| write::write(a);
    raw_pwrite64 |a| write::pwrite64(a);
    raw_writev |a| write::vec_write(a, WriteOp::Writev, Abi::Native);
    raw_pwritev |a| write::vec_write(a, WriteOp::Pwritev, Abi::Native);
    raw_pwritev2 |a| write::vec_write(a, WriteOp::Pwritev2, Abi::Native);
    raw_copy_file_range |a| write::copy_into(a, WriteOp::CopyFileRange, 2, 3, 4, 0);
    raw_splice |a| write::copy_into(a, WriteOp::Splice, 2, 3, 4, 0);
    raw_sendfile64 |a| write::copy_into(a, WriteOp::Sendfile, 0, usize::MAX, 3, 1);
    raw_fallocate |a| write::fallocate(a);
    raw_ftruncate |a| write::ftruncate(a);
    raw_mmap |a| write::mmap(a);
    raw_io_submit |a| write::io_submit(a);
    raw_ioctl |a| crate::ioctl::on_ioctl(a);
    raw_io_uring_register |a| crate::uring::io_uring_register(a);
    raw_openat |a| crate::open::openat(a);
    raw_open |a| crate::open::open(a);
    raw_creat |a| crate::open::creat(a);
    raw_openat2 |a| crate::open::openat2(a);
    raw_compat_pwrite64 |a| crate::compat::pwrite64(a);
    raw_compat_ftruncate64 |a| crate::compat::ftruncate64(a);
    raw_compat_fallocate |a| crate::compat::fallocate(a);
    raw_compat_writev |a| write::vec_write(a, WriteOp::Writev, Abi::Ia32);
    raw_compat_pwritev |a| write::vec_write(a, WriteOp::Pwritev, Abi::Ia32);
    raw_compat_pwritev2 |a| write::vec_write(a, WriteOp::Pwritev2, Abi::Ia32);
    raw_compat_io_submit |a| write::aio_submit(a, Abi::Ia32);
    raw_compat_old_mmap |a| crate::compat::old_mmap(a);
    raw_compat_mmap2 |a| crate::compat::mmap2(a);
}
