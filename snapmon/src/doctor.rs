//! `snapmon doctor`: what this kernel allows, which hooks went live, which write paths are
//! covered, and what a gap means for the user. Loads and attaches for real, then detaches.
//! Exits non-zero when the agent cannot run here at all.

use serde::Serialize;
use serde_json::json;

use crate::kernel::loader::{self, HookStatus, LoadOptions};

/// A write path and the hooks that can see it (any one attached covers it).
const PATHS: &[(&str, &[&str], &str)] = &[
    (
        "write/pwrite/writev/pwritev",
        &[
            "sys_enter_write",
            "sys_enter_pwrite64",
            "sys_enter_writev",
            "sys_enter_pwritev",
            "sys_enter_pwritev2",
        ],
        "ordinary writes to images go unseen",
    ),
    (
        "io_uring",
        &["io_uring_submit_req", "rw_verify_area"],
        "QEMU aio=io_uring guest writes go unseen",
    ),
    (
        FIXED_FILES_PATH,
        &["rw_verify_area", "io_uring_submit_req"],
        "io_uring writes through registered (fixed) files are counted as lost, not reported (their registration is: SM-U001)",
    ),
    (
        "io_uring fixed-file registration",
        &["sys_enter_io_uring_register"],
        "a watched image registered as an io_uring fixed file goes unreported, and so, without the VFS hook, do the ring's writes to it",
    ),
    (
        "linux-aio",
        &["sys_enter_io_submit"],
        "QEMU aio=native and LVM metadata writes go unseen",
    ),
    (
        "shared writable mmap",
        &["sys_enter_mmap"],
        "an image mapped shared-writable is not reported",
    ),
    (
        "copy_file_range/splice/sendfile",
        &[
            "sys_enter_copy_file_range",
            "sys_enter_splice",
            "sys_enter_sendfile64",
        ],
        "copies into images go unseen",
    ),
    (
        "fallocate/punch-hole",
        &["sys_enter_fallocate"],
        "punched snapshot tables go unseen",
    ),
    (
        "truncate",
        &["sys_enter_ftruncate", "sys_enter_truncate"],
        "truncated images go unseen",
    ),
    (
        "create/open for write",
        &["sys_exit_openat", "sys_exit_openat2"],
        "new files in stores are not watched automatically",
    ),
    (
        "rename/unlink/link",
        &[
            "sys_enter_renameat2",
            "sys_enter_unlinkat",
            "sys_enter_linkat",
        ],
        "deleted or renamed images go unseen",
    ),
    (
        "io_uring rename/unlink/link/mkdir",
        &["io_uring_submit_req"],
        "files renamed or deleted through io_uring go unseen",
    ),
    (
        "namespace changes through an alias or by a kernel thread (bind mount, overlay upper dir, nfsd)",
        &["lsm_inode_unlink", "lsm_inode_rename"],
        "renames, unlinks, chmods through another name for a watched directory, or by nfsd/ksmbd, go unseen (the syscall hooks match path strings)",
    ),
    (
        "attributes/timestamps",
        &[
            "sys_enter_fchmodat",
            "sys_enter_fchownat",
            "sys_enter_utimensat",
        ],
        "timestamp tampering goes unseen",
    ),
    (
        "ioctl (dm, btrfs, zfs, reflink, freeze)",
        &["sys_enter_ioctl"],
        "snapshot ioctls go unseen",
    ),
    (
        "loop attach/detach outcomes",
        &["sys_exit_ioctl"],
        "loop attaches are not reported, so writes through a loop device over an image go unseen",
    ),
    (
        // Overlays in the agent's mount namespace are aliased from its mount table; the
        // open hook catches those in any other (docs/rules.md, Overlays).
        "writes through an overlayfs merged view of a store (overlays mounted in other mount namespaces)",
        &["sys_exit_openat", "sys_exit_openat2"],
        "a store that is the upper dir of an overlay in another mount namespace (a container, nobody's user namespace) is written through its merged view unseen",
    ),
    (
        "kernel-internal writers (loop devices, nfsd)",
        &["rw_verify_area"],
        "writes made by the kernel on behalf of a loop device go unseen",
    ),
    (
        "kernel-internal punch-hole (loop-device discard, nfsd)",
        &["truncate_pagecache_range"],
        "a discard through a loop device punches holes in its image unseen",
    ),
    (
        "kernel-internal reflink (overlayfs copy-up, nfsd CLONE)",
        &["vfs_clone_file_range"],
        "extents cloned over an image by the kernel go unseen",
    ),
    (
        "writes by 32-bit (ia32) programs",
        // The x86-64 syscall tracepoints skip compat syscalls: the VFS hook sees any write,
        // `raw_syscalls/sys_enter` hands 32-bit syscalls to the native hooks.
        &["rw_verify_area", "raw_sys_enter"],
        "a 32-bit program's writes to images go unseen (x86-64 syscall tracepoints skip compat syscalls)",
    ),
    (
        "process lineage",
        &["sched_process_exec", "sched_process_fork"],
        "alerts name processes from /proc only",
    ),
];

/// Whether one write path is seen, by which live hooks, and what a gap means.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub path: &'static str,
    pub covered: bool,
    pub by: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impact: Option<&'static str>,
}

/// Every write path against the hooks that went live (doctor and the agent's `coverage`
/// record say the same).
/// The submit hook covers writes through registered files only where it reads the ring's
/// file table (`LoadInfo::fixed_files`).
const FIXED_FILES_PATH: &str = "io_uring registered files";

pub fn coverage(hooks: &[HookStatus], fixed_files: bool) -> Vec<Coverage> {
    let live = |p: &str| {
        hooks
            .iter()
            .any(|h| h.program == p && h.attached_to.is_some())
    };
    PATHS
        .iter()
        .map(|(path, progs, impact)| {
            let by: Vec<&str> = progs
                .iter()
                .copied()
                .filter(|p| live(p))
                .filter(|p| fixed_files || *path != FIXED_FILES_PATH || *p != "io_uring_submit_req")
                .collect();
            let covered = !by.is_empty();
            Coverage {
                path,
                covered,
                by,
                impact: (!covered).then_some(*impact),
            }
        })
        .collect()
}

/// How writes through io_uring registered (fixed) files are seen by the submit hook.
fn fixed_files_note(resolved: bool, fd_walk: &str) -> &'static str {
    match (resolved, fd_walk) {
        (true, _) => "resolved in the ring's file table: each write judged",
        (false, "direct") => "file table not in this kernel's BTF: registration alerted on (SM-U001), writes counted as lost",
        (false, _) => "probe_read walk: registration alerted on (SM-U001), writes counted as lost",
    }
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn run(as_json: bool, syscall_hook: loader::SyscallHook) -> anyhow::Result<()> {
    // Unprivileged, loading fails for want of rights, not for what the kernel allows: say
    // that instead of reporting every hook missing and enforcement possible.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        anyhow::bail!(
            "doctor needs root to load and attach the probes (running as uid {euid}): nothing was probed, so nothing is known about this kernel yet"
        );
    }
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    let _ = crate::enforce::bpf_lsm_active(); // mounts securityfs when missing
    let lsm = read_trim("/sys/kernel/security/lsm");
    let lockdown = read_trim("/sys/kernel/security/lockdown");
    let unpriv = read_trim("/proc/sys/kernel/unprivileged_bpf_disabled");
    let bpf_lsm = lsm.as_deref().map(|l| l.split(',').any(|m| m == "bpf"));
    let loaded = loader::load(&LoadOptions {
        ring_buffer_bytes: 1 << 16,
        process_events: false,
        lsm: bpf_lsm == Some(true),
        lsm_observe: bpf_lsm == Some(true),
        hook_stats: true,
        compat: true,
        syscall_hook,
    });
    let (hooks, missing, backend, fd_walk, fixed_files, load_error): (
        Vec<HookStatus>,
        _,
        _,
        _,
        _,
        _,
    ) = match &loaded {
        Ok(k) => (
            k.info.hooks.clone(),
            k.info.missing.clone(),
            k.info.backend,
            k.info.fd_walk,
            k.info.fixed_files,
            None,
        ),
        Err(e) => (
            vec![],
            vec![],
            "none",
            "none",
            false,
            Some(format!("{e:#}")),
        ),
    };
    // What `snapmon_hook_runs_total` will be able to show.
    let hook_stats = match loaded.as_ref().map(|k| k.counters.run_stats.describe()) {
        Ok((true, None)) => "yes, with --hook-stats (BPF_ENABLE_STATS)".to_string(),
        Ok((true, Some(how))) => format!("yes ({how})"),
        Ok((false, why)) => format!("NO: {}", why.unwrap_or_default()),
        Err(_) => "unknown (load failed)".to_string(),
    };
    let coverage = coverage(&hooks, fixed_files);
    let lsm_live = hooks
        .iter()
        .any(|h| h.program.starts_with("lsm_") && h.attached_to.is_some());
    let lsm_refused = hooks
        .iter()
        .find(|h| h.program.starts_with("lsm_") && h.error.is_some())
        .and_then(|h| h.error.clone());
    let enforcement = match bpf_lsm {
        Some(true) if lsm_live => "BPF LSM programs attach: enforcement (--enforce) is available",
        Some(true) if lsm_refused.is_some() => "BPF LSM is listed but this kernel refused the LSM programs: enforcement is impossible, detection only",
        Some(true) if load_error.is_some() => "BPF LSM is listed, but the programs could not be loaded: whether enforcement works is unknown",
        Some(true) => "BPF LSM is enabled: enforcement is possible on this kernel",
        Some(false) => "BPF LSM is not in the active LSM list (boot with lsm=...,bpf): enforcement is impossible, detection only",
        None => "securityfs not mounted: cannot tell whether BPF LSM is enabled",
    };
    // The fanotify route for names made through another name of a store (`dirwatch`): tried
    // as the agent would, where the LSM hooks do not see them.
    let dir_marks = match &loaded {
        Ok(k) => crate::dirwatch::route(k.info.lsm_observes()).1,
        Err(_) => "unknown (load failed)".to_string(),
    };
    // The mode that ran: `auto` resolved by the load.
    let syscall_hook = loaded
        .as_ref()
        .map_or(syscall_hook, |k| k.info.syscall_hook);
    drop(loaded);
    // What keeps the agent from running here: the exit status says so (the package's
    // postinst does not start the service then).
    let attached = hooks.iter().filter(|h| h.attached_to.is_some()).count();
    let cannot_run = match &load_error {
        Some(e) => Some(format!("the eBPF programs did not load: {}", first_line(e))),
        None if attached == 0 => Some("no hook could be attached".to_string()),
        None => None,
    };
    let verdict = || match &cannot_run {
        Some(why) => Err(anyhow::anyhow!("the agent cannot run here: {why}")),
        None => Ok(()),
    };
    if as_json {
        let v = json!({
            "kernel": kernel, "btf": btf, "lsm": lsm, "lockdown": lockdown,
            "unprivileged_bpf_disabled": unpriv, "backend": backend, "fd_walk": fd_walk,
            "syscall_hook": syscall_hook.name(), "load_error": load_error,
            "io_uring_fixed_files": fixed_files_note(fixed_files, fd_walk), "dir_marks": dir_marks,
            "hooks": hooks, "missing_kernel_fields": missing, "coverage": coverage, "enforcement": enforcement,
            "hook_run_stats": hook_stats,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return verdict();
    }
    println!("kernel        {kernel}");
    println!(
        "BTF           {}",
        if btf {
            "yes (/sys/kernel/btf/vmlinux)"
        } else {
            "NO: snapmon cannot run"
        }
    );
    println!(
        "LSMs          {}",
        lsm.as_deref().unwrap_or("unknown (securityfs not mounted)")
    );
    println!("lockdown      {}", lockdown.as_deref().unwrap_or("unknown"));
    println!("backend       {backend}");
    println!(
        "fd walk       {}",
        match fd_walk {
            "direct" => "direct (BTF loads, bpf_rdonly_cast)",
            "probe_read" => "probe_read (bpf_probe_read_kernel chain)",
            other => other,
        }
    );
    println!("fixed files   {}", fixed_files_note(fixed_files, fd_walk));
    println!(
        "syscall hook  {}",
        match syscall_hook {
            loader::SyscallHook::Auto => "auto (the load failed before it chose)",
            loader::SyscallHook::Tracepoint => "tracepoint (one syscalls/sys_enter_* program per syscall)",
            loader::SyscallHook::Raw => "raw (tp_btf/sys_enter for every syscall, handlers by number; the rest on tracepoints)",
        }
    );
    println!("enforcement   {enforcement}");
    println!("dir marks     {dir_marks}");
    println!("hook stats    {hook_stats}");
    if let Some(e) = &load_error {
        println!("\nload failed: {e}");
        return verdict();
    }
    // The same count the agent's status line and `started` record give: the hooks `run`
    // loads. The LSM denial hooks come only with --enforce and are counted apart.
    let (enf, det): (Vec<&HookStatus>, Vec<&HookStatus>) = hooks
        .iter()
        .partition(|h| loader::enforcement_only(h.program));
    let live = |v: &[&HookStatus]| v.iter().filter(|h| h.attached_to.is_some()).count();
    println!(
        "\nhooks ({} of {} live; --enforce adds {}, {} live):",
        live(&det),
        det.len(),
        enf.len(),
        live(&enf)
    );
    for h in &hooks {
        match (&h.attached_to, &h.error) {
            (Some(at), _) => println!("  live     {:<28} {at}", h.program),
            (None, e) => println!(
                "  MISSING  {:<28} {}",
                h.program,
                first_line(e.as_deref().unwrap_or(""))
            ),
        }
    }
    for m in &missing {
        println!(
            "  kernel field missing: {} ({}): {}",
            m.field, m.group, m.effect
        );
    }
    println!("\nwrite paths:");
    for c in &coverage {
        if c.covered {
            println!("  covered  {:<44} by {}", c.path, c.by.join(", "));
        } else {
            println!("  GAP      {:<44} {}", c.path, c.impact.unwrap_or(""));
        }
    }
    verdict()
}

fn first_line(s: &str) -> &str {
    let s = s.lines().next().unwrap_or("");
    if s.len() > 140 {
        let mut end = 140;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(program: &'static str, live: bool) -> HookStatus {
        HookStatus {
            program,
            attached_to: live.then(|| program.to_string()),
            covers: "",
            error: (!live).then(|| "refused".to_string()),
            handler: None,
        }
    }

    /// The submit hook covers writes through registered files only where it reads the
    /// ring's file table; the VFS hook covers them either way.
    #[test]
    fn fixed_file_writes_are_covered_only_where_the_table_is_read() {
        let fixed = |hooks: &[HookStatus], resolved: bool| {
            coverage(hooks, resolved)
                .into_iter()
                .find(|c| c.path == FIXED_FILES_PATH)
                .expect("the path is listed")
        };
        let tp = [
            hook("io_uring_submit_req", true),
            hook("rw_verify_area", false),
        ];
        let c = fixed(&tp, true);
        assert!(c.covered && c.by == ["io_uring_submit_req"]);
        let c = fixed(&tp, false);
        assert!(!c.covered && c.impact.is_some_and(|i| i.contains("SM-U001")));
        // The other io_uring paths do not depend on it.
        let io = coverage(&tp, false);
        assert!(io.iter().find(|c| c.path == "io_uring").unwrap().covered);
        let vfs = [
            hook("io_uring_submit_req", true),
            hook("rw_verify_area", true),
        ];
        assert_eq!(fixed(&vfs, false).by, ["rw_verify_area"]);
    }
}
