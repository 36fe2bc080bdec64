//! Enforcement (BPF LSM): refuse snapshot-destroying operations on protected stores to
//! untrusted executables, in the kernel, with no userspace round-trip.
//!
//! Decisions come only from maps the agent keeps in sync: `PROTECTED` (inode → denied ops
//! and mode) and `TRUSTED_EXES` (executable identities). Every decision — denied, or
//! would-be-denied in monitor/dry-run — is emitted as an `EnforceEvent`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use core::ptr::null;

use snapmon_common::{deny, runtime, valid as v, EnforceEvent, EventKind, FileKey, NsOp};

use crate::{
    emit::{fill_header, output_lane, urgent_actor},
    kernel::{current_exe, is_agent, rk, valid, Dentry, File, Inode},
    observe, PROTECTED, RUNTIME, TRUSTED_EXES,
};

const EPERM: i32 = 1;

#[inline(always)]
fn runtime_flags() -> u32 {
    RUNTIME.get(0).copied().unwrap_or(0)
}

/// Decide for `op` on the object `target` (and/or its directory `dir`). Returns the LSM
/// verdict: 0 allow, -EPERM deny.
#[inline(always)]
unsafe fn decide(op: u32, target: Option<FileKey>, dir: Option<FileKey>, aux: u64) -> i32 {
    let flags = runtime_flags();
    // Without the exe offsets every actor would look untrusted: never enforce blind.
    if flags & runtime::ENFORCE_ACTIVE == 0 || !valid(v::FILES | v::ARGS) {
        return 0;
    }
    let mut hit: Option<(FileKey, u32)> = None;
    if let Some(t) = target {
        if let Some(m) = PROTECTED.get(&t) {
            if *m & op != 0 {
                hit = Some((t, *m));
            }
        }
    }
    if hit.is_none() {
        if let Some(d) = dir {
            if let Some(m) = PROTECTED.get(&d) {
                // Directory entries: only namespace ops are judged by the dir's rule.
                if *m & op & deny::DIR_OPS != 0 {
                    hit = Some((d, *m));
                }
            }
        }
    }
    let Some((key, mask)) = hit else { return 0 };
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return 0;
    }
    let exe = current_exe();
    if let Some(e) = exe {
        if TRUSTED_EXES.get(&e).is_some() {
            return 0;
        }
    }
    let enforce = mask & deny::MODE_ENFORCE != 0 && flags & runtime::DRY_RUN == 0;
    let mut ev: EnforceEvent = core::mem::zeroed();
    fill_header(&mut ev.hdr, EventKind::Enforce as u32);
    ev.hdr.backend = crate::emit::BACKEND_LSM;
    ev.op = op;
    ev.denied = enforce as u32;
    ev.target = key;
    ev.exe = exe.unwrap_or_default();
    ev.aux = aux;
    if let Some(t) = target {
        ev.object = t;
    }
    output_lane(&ev, urgent_actor(ev.hdr.uid));
    if enforce {
        -EPERM
    } else {
        0
    }
}

/// Newer verifiers require an LSM program's return value to be provably in [-4095, 0]; the
/// compiler folds our branches into arithmetic the verifier cannot bound, so re-check here
/// behind `black_box` (which the compiler cannot see through).
#[inline(always)]
fn lsm_ret(v: i32) -> i32 {
    // Two separate signed checks, each behind black_box, so they cannot be merged into the
    // unsigned add-and-compare the verifier does not carry back to `v`.
    let v = core::hint::black_box(v);
    if v > 0 {
        return 0;
    }
    let v = core::hint::black_box(v);
    if v < -4095 {
        return 0;
    }
    v
}

/// Pass through an earlier LSM's denial untouched.
macro_rules! prior {
    ($ctx:expr, $n:expr) => {{
        let ret: i32 = $ctx.arg($n);
        if ret != 0 {
            return lsm_ret(ret);
        }
    }};
}

/// file_permission(file, mask): every read/write (syscalls, io_uring, aio) passes here.
#[lsm(hook = "file_permission")]
pub fn lsm_file_permission(ctx: LsmContext) -> i32 {
    const MAY_WRITE: i32 = 2;
    unsafe {
        prior!(ctx, 2);
        let file = File::new(ctx.arg(0));
        let mask: i32 = ctx.arg(1);
        if mask & MAY_WRITE == 0 {
            return 0;
        }
        lsm_ret(decide(deny::WRITE, file.key(), None, 0))
    }
}

/// file_open(file): opening a protected file for writing.
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    const FMODE_WRITE: u32 = 0x2;
    unsafe {
        prior!(ctx, 1);
        let file = File::new(ctx.arg(0));
        let mode = file.mode();
        if mode & FMODE_WRITE == 0 {
            return 0;
        }
        lsm_ret(decide(deny::OPEN_WRITE, file.key(), None, mode as u64))
    }
}

/// path_truncate(path): truncate(2)/ftruncate(2)/O_TRUNC.
#[lsm(hook = "path_truncate")]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 1);
        let path: *const u8 = ctx.arg(0);
        // struct path { vfsmount *mnt; dentry *dentry; }
        let dentry = Dentry::new(rk(path, 8).unwrap_or(null()));
        lsm_ret(decide(deny::TRUNCATE, dentry.key(), None, 0))
    }
}

/// inode_unlink(dir, dentry)
#[lsm(hook = "inode_unlink")]
pub fn lsm_inode_unlink(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 2);
        let dir = Inode::new(ctx.arg(0));
        let dentry = Dentry::new(ctx.arg(1));
        let r = decide(deny::UNLINK, dentry.key(), dir.key(), 0);
        if r == 0 {
            observe::entry(NsOp::Unlink, dir, dentry, Inode::null(), Dentry::null(), 0);
        }
        lsm_ret(r)
    }
}

/// inode_rename(old_dir, old_dentry, new_dir, new_dentry[, flags])
#[lsm(hook = "inode_rename")]
pub fn lsm_inode_rename(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 4);
        let old_dir = Inode::new(ctx.arg(0));
        let old = Dentry::new(ctx.arg(1));
        let new_dir = Inode::new(ctx.arg(2));
        let new = Dentry::new(ctx.arg(3));
        let r = decide(deny::RENAME, old.key(), old_dir.key(), 0);
        if r != 0 {
            return lsm_ret(r);
        }
        // Renaming something over a protected file, or into a protected dir.
        let r = decide(deny::RENAME, new.key(), new_dir.key(), 1);
        if r == 0 {
            observe::entry(NsOp::Rename, old_dir, old, new_dir, new, 0);
        }
        lsm_ret(r)
    }
}

/// inode_link(old_dentry, dir, new_dentry): hard links keep data alive outside the store.
#[lsm(hook = "inode_link")]
pub fn lsm_inode_link(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 3);
        let old = Dentry::new(ctx.arg(0));
        let dir = Inode::new(ctx.arg(1));
        let new = Dentry::new(ctx.arg(2));
        let r = decide(deny::LINK, old.key(), dir.key(), 0);
        if r == 0 {
            let old_dir = old.parent().inode().unwrap_or(Inode::null());
            observe::entry(NsOp::Link, old_dir, old, dir, new, 0);
        }
        lsm_ret(r)
    }
}

/// inode_rmdir(dir, dentry): observation only.
#[lsm(hook = "inode_rmdir")]
pub fn lsm_inode_rmdir(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 2);
        let (dir, dentry) = (Inode::new(ctx.arg(0)), Dentry::new(ctx.arg(1)));
        observe::entry(NsOp::Rmdir, dir, dentry, Inode::null(), Dentry::null(), 0);
    }
    0
}

/// inode_mkdir(dir, dentry, mode): observation only (new subdirectories get watched).
#[lsm(hook = "inode_mkdir")]
pub fn lsm_inode_mkdir(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 3);
        let (dir, dentry) = (Inode::new(ctx.arg(0)), Dentry::new(ctx.arg(1)));
        let mode: u16 = ctx.arg(2);
        let aux = (mode & 0o7777) as u64;
        observe::entry(NsOp::Mkdir, dir, dentry, Inode::null(), Dentry::null(), aux);
    }
    0
}

/// inode_symlink(dir, dentry, old_name): observation only.
#[lsm(hook = "inode_symlink")]
pub fn lsm_inode_symlink(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 3);
        let (dir, dentry) = (Inode::new(ctx.arg(0)), Dentry::new(ctx.arg(1)));
        observe::entry(NsOp::Symlink, dir, dentry, Inode::null(), Dentry::null(), 0);
    }
    0
}

/// inode_setattr(dentry, attr), before 6.3: observation only. The loader attaches this or
/// `lsm_inode_setattr_idmap` by the kernel's hook signature.
#[lsm(hook = "inode_setattr")]
pub fn lsm_inode_setattr(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 2);
        observe::setattr(Dentry::new(ctx.arg(0)), ctx.arg(1));
    }
    0
}

/// inode_setattr(idmap, dentry, attr), 6.3 and later.
#[lsm(hook = "inode_setattr")]
pub fn lsm_inode_setattr_idmap(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 3);
        observe::setattr(Dentry::new(ctx.arg(1)), ctx.arg(2));
    }
    0
}

/// mmap_file(file, reqprot, prot, flags): shared writable mappings bypass write hooks.
#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file(ctx: LsmContext) -> i32 {
    const PROT_WRITE: u64 = 0x2;
    const MAP_SHARED: u64 = 0x1;
    unsafe {
        prior!(ctx, 4);
        let file = File::new(ctx.arg(0));
        let prot: u64 = ctx.arg(2);
        let flags: u64 = ctx.arg(3);
        if file.is_null() || prot & PROT_WRITE == 0 || flags & MAP_SHARED == 0 {
            return 0;
        }
        lsm_ret(decide(deny::MMAP, file.key(), None, prot))
    }
}

/// file_ioctl(file, cmd, arg): snapshot-destroying ioctls and in-place attribute flips.
#[lsm(hook = "file_ioctl")]
pub fn lsm_file_ioctl(ctx: LsmContext) -> i32 {
    unsafe {
        prior!(ctx, 3);
        let file = File::new(ctx.arg(0));
        let cmd: u32 = ctx.arg(1);
        if crate::DENY_IOCTLS.get(&cmd).is_none() {
            return 0;
        }
        lsm_ret(decide(deny::IOCTL, file.key(), None, cmd as u64))
    }
}
