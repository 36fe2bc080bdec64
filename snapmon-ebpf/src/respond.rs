//! Circuit breaker: signal an untrusted process in the same program run that saw it tamper
//! with a protected object (a metadata write, a snapshot-destroying ioctl, a rename, unlink
//! or truncate), before the syscall does its work and before the agent reads the event.
//!
//! Works on every backend, BPF LSM or not: the hooks that call in here are the syscall
//! tracepoints (and, where fentry exists, the VFS hook). Decisions come only from maps the
//! agent loads: `RESPOND` (object identity → `respond::*` bits and bootstrap metadata
//! ranges), `RESPOND_PATHS` (FNV-1a of a protected image's absolute path → bits),
//! `RESPOND_ENTRIES` (its directory and name → bits), `RESPOND_TRUSTED`
//! (executables never signalled), plus the write filter's `WRITE_FILTER` ranges and
//! `TRUSTED_WRITERS`. Every decision is emitted as a `RespondEvent`.

use aya_ebpf::helpers::{
    bpf_ktime_get_boot_ns,
    generated::{bpf_loop, bpf_send_signal},
};
use snapmon_common::{
    respond as r, runtime, valid as v, ByteRange, EventKind, FileKey, NsOp, RespondEntry, WriteOp,
    AIO_MAX_IOCBS, FILTER_RANGES,
};

use crate::{
    emit::{fill_header, output_lane, urgent_actor},
    kernel::{current_exe, enter, Watched},
    path::PathMatch,
    DENY_IOCTLS, RESPOND, RESPOND_AIO, RESPOND_ENTRIES, RESPOND_PATHS, RESPOND_TRUSTED,
    RESPOND_WRITE, RUNTIME, SCRATCH_RESPOND, TRUSTED_WRITERS, WRITE_FILTER,
};

#[inline(always)]
fn active() -> bool {
    RUNTIME
        .get(0)
        .is_some_and(|f| *f & runtime::RESPOND_ACTIVE != 0)
}

/// The actor's executable identity when it may be signalled: never init, the agent, a task
/// without an executable (kernel threads), one whose identity cannot be read, an executable
/// in `RESPOND_TRUSTED`, or a trusted writer (`actors`) of the file's format.
#[inline(always)]
unsafe fn untrusted_actor(actors: u32) -> Option<FileKey> {
    let tgid = (enter(v::FILES | v::ARGS)? >> 32) as u32;
    if tgid <= 1 {
        return None;
    }
    let exe = current_exe()?;
    if exe.ino == 0 || RESPOND_TRUSTED.get(&exe).is_some() {
        return None;
    }
    if actors != 0 {
        if let Some(g) = TRUSTED_WRITERS.get(&exe) {
            if *g & actors != 0 {
                return None;
            }
        }
    }
    Some(exe)
}

/// What was judged, for the record.
struct Seen {
    class: u32,
    flags: u32,
    target: FileKey,
    offset: i64,
    len: u64,
    aux: u64,
    path_hash: u64,
}

/// Signal the current process (unless dry-run) and emit the record.
#[inline(always)]
unsafe fn act(t0: u64, s: &Seen, exe: FileKey, backend: u32) {
    let dry = s.flags & r::DRY_RUN != 0;
    let sig = if s.flags & r::KILL != 0 {
        r::SIGKILL
    } else {
        r::SIGSTOP
    };
    // The whole thread group: a multi-threaded encryptor must not go on in a sibling.
    let ret = if dry { 0 } else { bpf_send_signal(sig) as i32 };
    let t1 = bpf_ktime_get_boot_ns();
    let Some(ev) = SCRATCH_RESPOND.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::Respond as u32);
    ev.hdr.backend = backend;
    ev.hdr.ts_ns = t0;
    ev.class = s.class;
    ev.signal = if dry { 0 } else { sig };
    ev.ret = ret;
    ev.flags = s.flags;
    ev.target = s.target;
    ev.exe = exe;
    ev.signal_ns = t1;
    ev.offset = s.offset;
    ev.len = s.len;
    ev.aux = s.aux;
    ev.path_hash = s.path_hash;
    output_lane(ev, urgent_actor(ev.hdr.uid));
}

/// Does `[start, end)` meet one of the first `n` ranges?
#[inline(always)]
fn overlaps(ranges: &[ByteRange; FILTER_RANGES], n: u32, start: u64, end: u64) -> bool {
    for (i, rg) in ranges.iter().enumerate() {
        if i as u32 >= n {
            break;
        }
        if start < rg.end && end > rg.start {
            return true;
        }
    }
    false
}

/// fallocate modes that destroy bytes: PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE.
const FALLOC_DESTRUCTIVE: u64 = 0x02 | 0x08 | 0x10 | 0x20;

/// One write to judge, in per-CPU map memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WriteCheck {
    t0: u64,
    key: FileKey,
    offset: i64,
    len: u64,
    size: u64,
    aux: u64,
    op: u16,
    _pad: u16,
    backend: u32,
}

/// The writes of one `io_submit` call, judged together after its loop (`flush_aio`).
#[repr(C)]
pub struct WriteQueue {
    n: u32,
    _pad: u32,
    w: [WriteCheck; AIO_MAX_IOCBS as usize],
}

/// A write-class operation on a watched file (called where the write record is built).
/// `offset` is resolved (-1: unknown), `size` is `i_size`, `aux` the op's aux word.
///
/// linux-aio writes are queued and judged once per `io_submit` (`flush_aio`), in a
/// `bpf_loop` callback with its input in map memory: that hook builds up to eight write
/// records in one run, and eight inlined judgements pushed it past the verifier's
/// complexity limit on 6.1.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "inlined into each hook: a struct would cost stack the 6.1 verifier counts"
)]
pub unsafe fn on_write(
    w: &Watched,
    op: WriteOp,
    offset: i64,
    len: u64,
    size: u64,
    aux: u64,
    backend: u32,
) {
    if w.is_dir {
        return;
    }
    let t0 = bpf_ktime_get_boot_ns();
    let aio = matches!(op, WriteOp::AioPwrite | WriteOp::AioPwritev);
    let slot = if aio {
        let Some(q) = RESPOND_AIO.get_ptr_mut(0) else {
            return;
        };
        let i = (*q).n;
        if i >= AIO_MAX_IOCBS {
            return;
        }
        (*q).n = i + 1;
        &mut (*q).w[(i & (AIO_MAX_IOCBS - 1)) as usize] as *mut WriteCheck
    } else {
        let Some(c) = RESPOND_WRITE.get_ptr_mut(0) else {
            return;
        };
        c
    };
    *slot = WriteCheck {
        t0,
        key: w.key,
        offset,
        len,
        size,
        aux,
        op: op as u16,
        _pad: 0,
        backend,
    };
    // Inline, not in a callback: a callback frame on top of io_uring's hook exceeds 6.1's
    // combined stack limit (512 bytes).
    if !aio {
        judge_write(&*slot);
    }
}

/// Judge the writes `on_write` queued for this `io_submit` (call once, after its loop).
#[inline(always)]
pub unsafe fn flush_aio() {
    let Some(q) = RESPOND_AIO.get_ptr_mut(0) else {
        return;
    };
    if (*q).n != 0 {
        bpf_loop(
            AIO_MAX_IOCBS,
            aio_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    (*q).n = 0;
}

#[inline(never)]
extern "C" fn aio_step(i: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(q) = RESPOND_AIO.get(0) else {
        return 1;
    };
    if i >= q.n as u64 || i >= AIO_MAX_IOCBS as u64 {
        return 1;
    }
    unsafe { judge_write(&q.w[(i & (AIO_MAX_IOCBS as u64 - 1)) as usize]) };
    0
}

#[inline(always)]
unsafe fn judge_write(c: &WriteCheck) {
    if !active() {
        return;
    }
    let Some(t) = RESPOND.get_ptr(&c.key) else {
        return;
    };
    let t = &*t;
    let op = c.op;
    let truncate = op == WriteOp::Ftruncate as u16 || op == WriteOp::IoUringFtruncate as u16;
    let class = if truncate {
        r::TRUNCATE
    } else {
        r::METADATA_WRITE
    };
    if t.flags & class == 0 {
        return;
    }
    // Trusted writers of the file's format first: they are most writes that get here.
    let filter = WRITE_FILTER.get_ptr(&c.key);
    let actors = filter.map_or(0, |f| (*f).actors);
    let Some(exe) = untrusted_actor(actors) else {
        return;
    };
    if truncate {
        // Growing an image destroys nothing.
        if c.offset >= 0 && c.offset as u64 >= c.size {
            return;
        }
    } else {
        let falloc = op == WriteOp::Fallocate as u16 || op == WriteOp::IoUringFallocate as u16;
        if falloc && c.aux & FALLOC_DESTRUCTIVE == 0 {
            return;
        }
        // Unknown offset: judged as if it hit metadata. Known: the classifier's current
        // ranges, else the ones the plan loaded.
        if c.offset >= 0 {
            let start = c.offset as u64;
            let end = start.saturating_add(if c.len == 0 { 1 } else { c.len });
            let (ranges, n) = match filter {
                Some(f) => (&(*f).ranges, (*f).count),
                None => (&t.ranges, t.count),
            };
            if !overlaps(ranges, n, start, end) {
                return;
            }
        }
    }
    let s = Seen {
        class,
        flags: t.flags,
        target: c.key,
        offset: c.offset,
        len: c.len,
        aux: op as u64,
        path_hash: 0,
    };
    act(c.t0, &s, exe, c.backend);
}

/// An ioctl on a watched file, directory or device.
#[inline(always)]
pub unsafe fn on_ioctl(w: &Watched, cmd: u32) {
    if !active() {
        return;
    }
    let t0 = bpf_ktime_get_boot_ns();
    if DENY_IOCTLS.get(&cmd).is_none() {
        return;
    }
    let Some(t) = RESPOND.get_ptr(&w.key) else {
        return;
    };
    let flags = (*t).flags;
    if flags & r::SNAPSHOT_IOCTL == 0 {
        return;
    }
    let Some(exe) = untrusted_actor(0) else {
        return;
    };
    let s = Seen {
        class: r::SNAPSHOT_IOCTL,
        flags,
        target: w.key,
        offset: 0,
        len: 0,
        aux: cmd as u64,
        path_hash: 0,
    };
    act(t0, &s, exe, crate::emit::BACKEND_TRACEPOINT);
}

/// A rename, unlink or truncate by path. `m` is the (source) path's match; `dest` the
/// rename destination's full-path hash (0 when none): renaming over a protected image
/// destroys it too.
#[inline(always)]
pub unsafe fn on_path(op: NsOp, m: &PathMatch, dest: u64) {
    if !active() {
        return;
    }
    let t0 = bpf_ktime_get_boot_ns();
    let class = match op {
        NsOp::Rename => r::RENAME,
        NsOp::Unlink => r::UNLINK,
        NsOp::Truncate => r::TRUNCATE,
        _ => return,
    };
    let mut flags = 0u32;
    let mut target = FileKey::default();
    let mut path_hash = 0u64;
    if m.exact {
        if let Some(f) = RESPOND_PATHS.get(&m.hash) {
            (flags, path_hash) = (*f, m.hash);
        }
    } else if m.base_entry {
        let k = RespondEntry {
            dir: m.base,
            name_hash: m.hash,
        };
        if let Some(f) = RESPOND_ENTRIES.get(&k) {
            (flags, target, path_hash) = (*f, m.base, m.hash);
        }
    }
    if flags & class == 0 && class == r::RENAME && dest != 0 {
        if let Some(f) = RESPOND_PATHS.get(&dest) {
            (flags, path_hash) = (*f, dest);
        }
    }
    if flags & class == 0 {
        return;
    }
    let Some(exe) = untrusted_actor(0) else {
        return;
    };
    let s = Seen {
        class,
        flags,
        target,
        offset: 0,
        len: 0,
        aux: op as u64,
        path_hash,
    };
    act(t0, &s, exe, crate::emit::BACKEND_TRACEPOINT);
}
