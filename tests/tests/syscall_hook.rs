//! End-to-end: issue #19 item 3, the raw syscall hook (`--syscall-hook raw`). An agent started
//! in raw mode must say so (`started`: `syscall_hook`, every write hook `attached_to`
//! `tp_btf/sys_enter` with its handler) and must still catch a real tamper: `nobody` zeroing
//! nb_snapshots of root's 0666 image, natively (pwrite64) and from a 32-bit program (ia32
//! pwrite64, whose offset comes in two registers), each reported once. So the mode cannot
//! silently be a no-op, nor hand a syscall to the wrong handler.
//!
//! The default, `auto`, is raw mode on this host (fentry refused, direct walk), so the other
//! host suites run in raw mode; `SNAPMON_SYSCALL_HOOK=tracepoint` in the environment runs
//! them in tracepoint mode (the harness's agents inherit it).
//!
//! Raw mode is a choice of the tracepoint backend on kernels with the direct fd walk: the
//! guests run fentry (and 6.1 has no direct walk, so raw mode refuses to start there).
// xtask-suite: host-only

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use serde_json::Value;
use snapmon_e2e::{
    about, action, as_nobody, brief, c_string, i386_program, image_with_3_snapshots, mov,
    nobody_py, open_store, Agent, Expect,
};

const WITHIN: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(800);

/// The write family: each runs on `tp_btf/sys_enter` in raw mode.
const WRITE_HOOKS: &[&str] = &[
    "sys_enter_write",
    "sys_enter_pwrite64",
    "sys_enter_writev",
    "sys_enter_pwritev",
    "sys_enter_pwritev2",
    "sys_enter_copy_file_range",
    "sys_enter_splice",
    "sys_enter_sendfile64",
    "sys_enter_fallocate",
    "sys_enter_ftruncate",
    "sys_enter_mmap",
    "sys_enter_io_submit",
];

/// A static i386 program: open `path` write-only, pwrite64 4 zero bytes at `pos` (the offset
/// split over esi/edi as the ia32 ABI passes it).
fn i386_pwriter(path: &Path, pos: u32) -> Vec<u8> {
    let p = c_string(path);
    let n = p.len() as u32;
    let mut data = p;
    data.extend_from_slice(&[0; 4]);
    i386_program(
        |at| {
            let mut c = Vec::new();
            mov(&mut c, 0xb8, 5); // eax = open
            mov(&mut c, 0xbb, at); // ebx = path
            mov(&mut c, 0xb9, 1); // ecx = O_WRONLY
            c.extend_from_slice(&[0xcd, 0x80, 0x89, 0xc3]); // int 0x80; ebx = fd
            mov(&mut c, 0xb8, 181); // eax = pwrite64
            mov(&mut c, 0xb9, at + n); // ecx = data
            mov(&mut c, 0xba, 4); // edx = 4
            mov(&mut c, 0xbe, pos); // esi = pos, low half
            mov(&mut c, 0xbf, 0); // edi = pos, high half
            c.extend_from_slice(&[0xcd, 0x80]);
            c
        },
        &data,
    )
}

fn pwrites_by(a: &mut Agent, img: &Path, pid: u32) -> Vec<Value> {
    // Event records only: the alert carries the write's action too.
    a.settle(QUIET, |v| {
        v["event"]["kind"] == "event"
            && about(v, img)
            && v["process"]["pid"] == pid
            && action(v) == "pwrite64"
    })
}

#[test]
fn raw_mode_runs_the_write_hooks_on_tp_btf_and_still_alerts() {
    let mut a = Agent::spawn("raw", &["--syscall-hook", "raw"], &[]).expect("agent in raw mode");
    runs_raw(&a);
    alerts_natively_and_from_32_bit_code(&mut a);
}

/// The default (`auto`, pinned by a unit test) is raw mode where raw loads and no VFS write
/// hook owns writes: this host, which refuses fentry and has the direct walk (#19 item 3:
/// raw won the bench's VM-host syscall mix). It must catch the same tampers.
#[test]
fn auto_mode_is_raw_where_fentry_is_refused_and_still_alerts() {
    let mut a = Agent::spawn("auto", &["--syscall-hook", "auto"], &[]).expect("agent in auto mode");
    if a.hook_live("rw_verify_area") || a.started["snapmon"]["state"]["fd_walk"] != "direct" {
        assert_eq!(a.started["snapmon"]["state"]["syscall_hook"], "tracepoint");
        return;
    }
    runs_raw(&a);
    alerts_natively_and_from_32_bit_code(&mut a);
}

/// Tracepoint mode stays a choice (`--syscall-hook tracepoint`), with its own programs on the
/// write tracepoints, and catches the same tampers.
#[test]
fn tracepoint_mode_when_asked_runs_per_syscall_tracepoints_and_still_alerts() {
    let mut a = Agent::spawn("tp", &["--syscall-hook", "tracepoint"], &[])
        .expect("agent in tracepoint mode");
    let st = a.started["snapmon"]["state"].clone();
    assert_eq!(st["syscall_hook"], "tracepoint", "{st}");
    let hooks = a.hooks();
    assert!(
        !hooks
            .iter()
            .any(|h| h["program"] == "syscall_enter" && h["attached_to"].is_string()),
        "{hooks:?}"
    );
    let h = hooks
        .iter()
        .find(|h| h["program"] == "sys_enter_pwrite64")
        .unwrap_or_else(|| panic!("sys_enter_pwrite64 not listed: {hooks:?}"));
    assert_eq!(
        h["attached_to"], "tracepoint/syscalls/sys_enter_pwrite64",
        "{h}"
    );
    // Where fentry is refused the 32-bit hook runs on every syscall: on `tp_btf` where the
    // raw handlers load (a raw tracepoint's run per syscall, not a perf record's too).
    if !a.hook_live("rw_verify_area") && st["fd_walk"] == "direct" {
        let c = hooks
            .iter()
            .find(|h| h["program"] == "raw_sys_enter")
            .unwrap_or_else(|| panic!("no 32-bit hook listed: {hooks:?}"));
        let at = c["attached_to"].as_str().unwrap_or("");
        assert!(at.starts_with("tp_btf/sys_enter (compat_enter"), "{c}");
        assert_eq!(c["handler"], "compat_enter", "{c}");
    }
    alerts_natively_and_from_32_bit_code(&mut a);
}

/// `started` says raw, and every write hook runs on `tp_btf/sys_enter` by its handler.
fn runs_raw(a: &Agent) {
    let st = a.started["snapmon"]["state"].clone();
    assert_eq!(st["syscall_hook"], "raw", "{st}");
    let hooks = a.hooks();
    let dispatcher = hooks
        .iter()
        .find(|h| h["program"] == "syscall_enter")
        .unwrap_or_else(|| panic!("no syscall_enter hook: {hooks:?}"));
    assert_eq!(
        dispatcher["attached_to"], "tp_btf/sys_enter",
        "{dispatcher}"
    );
    for want in WRITE_HOOKS {
        let h = hooks
            .iter()
            .find(|h| h["program"] == *want)
            .unwrap_or_else(|| panic!("{want} not listed: {hooks:?}"));
        let at = h["attached_to"].as_str().unwrap_or("");
        assert!(at.starts_with("tp_btf/sys_enter ("), "{want}: {h}");
        let handler = h["handler"].as_str().unwrap_or("");
        assert!(handler.starts_with("raw_") && at.contains(handler), "{h}");
    }
}

/// nobody zeroes nb_snapshots of root's 0666 images, natively and from an i386 program: one
/// write record and an SM-Q002 each.
fn alerts_natively_and_from_32_bit_code(a: &mut Agent) {
    // nobody zeroes nb_snapshots (offset 60) of root's 0666 image: a native pwrite64.
    let store = open_store(a);
    let img = image_with_3_snapshots(&store, "raw.qcow2");
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mark = a.mark();
    let r = nobody_py(&format!(
        "import os; fd=os.open({:?}, os.O_WRONLY); os.pwrite(fd, bytes(4), 60)",
        img.to_str().unwrap()
    ));
    let w = a.expect(
        Expect::event("pwrite64").pid(r.pid).path(&img).since(mark),
        WITHIN,
    );
    assert_eq!(w["snapmon"]["write"]["offset"], 60, "{w}");
    assert_eq!(w["snapmon"]["write"]["length"], 4, "{w}");
    a.expect(Expect::alert("SM-Q002").pid(r.pid).since(mark), WITHIN);
    let evs = pwrites_by(a, &img, r.pid);
    assert_eq!(evs.len(), 1, "one record per write:\n{}", brief(&evs));

    // The same from a 32-bit program: the ia32 pwrite64 (181), by RAW_COMPAT_TAIL.
    let img32 = image_with_3_snapshots(&store, "raw32.qcow2");
    std::fs::set_permissions(&img32, std::fs::Permissions::from_mode(0o666)).unwrap();
    let exe = std::env::temp_dir().join(format!("snapmon-i386-raw-{}", std::process::id()));
    std::fs::write(&exe, i386_pwriter(&img32, 60)).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mark = a.mark();
    let r = as_nobody(exe.to_str().unwrap(), &[]);
    let _ = std::fs::remove_file(&exe);
    let hdr = std::fs::read(&img32).unwrap();
    assert_eq!(&hdr[60..64], &[0; 4], "the i386 writer did not write");
    if a.hook_live("rw_verify_area") {
        // Where fentry is allowed the VFS hook owns 32-bit writes (`e2e`'s compat tests).
        return;
    }
    let w = a.expect(
        Expect::event("pwrite64")
            .pid(r.pid)
            .path(&img32)
            .since(mark),
        WITHIN,
    );
    assert_eq!(w["snapmon"]["write"]["offset"], 60, "{w}");
    assert_eq!(w["snapmon"]["write"]["length"], 4, "{w}");
    a.expect(Expect::alert("SM-Q002").pid(r.pid).since(mark), WITHIN);
    let evs = pwrites_by(a, &img32, r.pid);
    assert_eq!(evs.len(), 1, "one record per write:\n{}", brief(&evs));
}

/// Where the mode cannot be what was asked, the agent says so and stops: an unknown mode is
/// refused, not run as the default.
#[test]
fn an_unknown_syscall_hook_mode_is_refused() {
    let out = std::process::Command::new(snapmon_e2e::bin())
        .args(["run", "--syscall-hook", "fast", "--watch", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expected `auto`, `tracepoint` or `raw`"),
        "{err}"
    );
}
