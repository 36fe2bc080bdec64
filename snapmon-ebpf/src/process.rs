//! Process hooks: fork/exec/exit of thread-group leaders, for lineage in userspace.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, generated as gen},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use snapmon_common::{valid as v, EventKind, ExitEvent, ForkEvent, ARGS_LEN, PATH_LEN};

use crate::{
    emit::{copy_kernel_str, fill_header, output_lane, urgent_actor},
    kernel::{file_inode, inode_key, off, process_events, rk, valid},
    SCRATCH_EXEC,
};

#[inline(always)]
unsafe fn tgid_of(task: *const u8) -> u32 {
    rk::<i32>(task, off!(task_tgid)).unwrap_or(0) as u32
}

#[inline(always)]
unsafe fn pid_of(task: *const u8) -> u32 {
    rk::<i32>(task, off!(task_pid)).unwrap_or(0) as u32
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    if !process_events() || !valid(v::PROC) {
        return 0;
    }
    unsafe {
        let parent: *const u8 = ctx.arg(0);
        let child: *const u8 = ctx.arg(1);
        let (ctgid, cpid) = (tgid_of(child), pid_of(child));
        // Threads share their process's lineage; only new processes matter.
        if ctgid != cpid {
            return 0;
        }
        let mut ev: ForkEvent = core::mem::zeroed();
        fill_header(&mut ev.hdr, EventKind::ProcessFork as u32);
        ev.child_tgid = ctgid;
        ev.parent_tgid = tgid_of(parent);
        ev.child_start_ns = rk(child, off!(task_start_boottime)).unwrap_or(0);
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
    let task: *const u8 = ctx.arg(0);
    let old_pid: i32 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let Some(ev) = SCRATCH_EXEC.get_ptr_mut(0) else {
        return;
    };
    let ev = &mut *ev;
    fill_header(&mut ev.hdr, EventKind::ProcessExec as u32);
    let parent: *const u8 = rk(task, off!(task_real_parent)).unwrap_or(core::ptr::null());
    ev.ppid = tgid_of(parent);
    let cred: *const u8 = rk(task, off!(task_cred)).unwrap_or(core::ptr::null());
    ev.euid = rk(cred, off!(cred_euid)).unwrap_or(u32::MAX);
    ev.start_ns = rk(task, off!(task_start_boottime)).unwrap_or(0);
    ev.old_pid = old_pid as u32;
    ev.cgroup_id = bpf_get_current_cgroup_id();
    let fname: *const u8 = rk(bprm, off!(bprm_filename)).unwrap_or(core::ptr::null());
    ev.filename_len = copy_kernel_str::<PATH_LEN>(&mut ev.filename, fname);
    let file: *const u8 = rk(bprm, off!(bprm_file)).unwrap_or(core::ptr::null());
    ev.exe = file_inode(file)
        .and_then(|i| inode_key(i))
        .unwrap_or_default();
    ev.args_len = 0;
    ev.args_total = 0;
    if valid(v::ARGS) {
        let mm: *const u8 = rk(task, off!(task_mm)).unwrap_or(core::ptr::null());
        let start: u64 = rk(mm, off!(mm_arg_start)).unwrap_or(0);
        let end: u64 = rk(mm, off!(mm_arg_end)).unwrap_or(0);
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
        let task: *const u8 = ctx.arg(0);
        if tgid_of(task) != pid_of(task) {
            return 0;
        }
        let mut ev: ExitEvent = core::mem::zeroed();
        fill_header(&mut ev.hdr, EventKind::ProcessExit as u32);
        ev.exit_code = rk(task, off!(task_exit_code)).unwrap_or(0);
        ev.start_ns = rk(task, off!(task_start_boottime)).unwrap_or(0);
        output_lane(&ev, urgent_actor(ev.hdr.uid));
    }
    0
}
