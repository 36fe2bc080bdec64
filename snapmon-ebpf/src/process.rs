//! Process hooks: fork/exec/exit of thread-group leaders, for lineage in userspace.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated as gen},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use snapmon_common::{valid as v, EventKind, ExitEvent, ForkEvent, ARGS_LEN, PATH_LEN};

use crate::{
    emit::{copy_kernel_str, fill_header, output_lane, urgent_actor},
    kernel::{off, process_events, rk, valid, File, Mm, Task},
    SCRATCH_EXEC,
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    if !process_events() || !valid(v::PROC) {
        return 0;
    }
    unsafe {
        let parent = Task::new(ctx.arg(0));
        let child = Task::new(ctx.arg(1));
        let (ctgid, cpid) = (child.tgid(), child.pid());
        // Threads share their process's lineage; only new processes matter.
        if ctgid != cpid {
            return 0;
        }
        let mut ev: ForkEvent = core::mem::zeroed();
        fill_header(&mut ev.hdr, EventKind::ProcessFork as u32);
        ev.child_tgid = ctgid;
        ev.parent_tgid = parent.tgid();
        ev.child_start_ns = child.start_boottime();
        output_lane(&ev, urgent_actor(ev.hdr.uid));
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> u32 {
    if !process_events() || !valid(v::PROC) {
        return 0;
    }
    unsafe { on_exec(&ctx) };
    0
}

#[inline(always)]
unsafe fn on_exec(ctx: &BtfTracePointContext) {
    let task = Task::new(ctx.arg(0));
    let old_pid: i32 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let Some(ev) = SCRATCH_EXEC.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::ProcessExec as u32);
    ev.ppid = task.real_parent().unwrap_or(Task::null()).tgid();
    ev.euid = task.euid();
    ev.start_ns = task.start_boottime();
    ev.old_pid = old_pid as u32;
    ev.cgroup_id = bpf_get_current_cgroup_id();
    let fname: *const u8 = rk(bprm, off!(bprm_filename)).unwrap_or(core::ptr::null());
    ev.filename_len = copy_kernel_str::<PATH_LEN>(&mut ev.filename, fname);
    let file = File::new(rk(bprm, off!(bprm_file)).unwrap_or(core::ptr::null()));
    ev.exe = file.key().unwrap_or_default();
    ev.args_len = 0;
    ev.args_total = 0;
    if valid(v::ARGS) {
        let (start, end) = task.mm().unwrap_or(Mm::null()).args();
        if end > start {
            let total = end - start;
            ev.args_total = total as u32;
            let mut n = if total > ARGS_LEN as u64 {
                ARGS_LEN as u32
            } else {
                total as u32
            };
            n = core::hint::black_box(n) & (2 * ARGS_LEN as u32 - 1);
            if n > 0 && n <= ARGS_LEN as u32 {
                let r =
                    gen::bpf_probe_read_user(ev.args.as_mut_ptr() as *mut _, n, start as *const _);
                if r == 0 {
                    ev.args_len = n;
                }
            }
        }
    }
    output_lane(ev, urgent_actor(ev.hdr.uid));
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    if !process_events() || !valid(v::PROC) {
        return 0;
    }
    unsafe {
        let task = Task::new(ctx.arg(0));
        if task.tgid() != task.pid() {
            return 0;
        }
        let mut ev: ExitEvent = core::mem::zeroed();
        fill_header(&mut ev.hdr, EventKind::ProcessExit as u32);
        ev.exit_code = task.exit_code();
        ev.start_ns = task.start_boottime();
        output_lane(&ev, urgent_actor(ev.hdr.uid));
    }
    0
}
