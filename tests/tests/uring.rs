//! End-to-end: issue #14 item 4, io_uring registered (fixed) files. A request with
//! `IOSQE_FIXED_FILE` names a slot of the ring's file table, not an fd. With the direct fd
//! walk (6.2+) the submit hook looks the slot up in the ring's table and judges the write as
//! a plain one: `nobody` zeroing nb_snapshots of root's 0666 image in a 1777 store through a
//! fixed file raises SM-Q002 with the field change. Everywhere (and alone on the probe-read
//! walk, 6.1) the registration is alerted on (SM-U001, medium or above), by every files
//! route: `IORING_REGISTER_FILES` (with a sparse slot), `IORING_REGISTER_FILES2` (sparse) +
//! `IORING_REGISTER_FILES_UPDATE2`, and a sparse table filled by an `IORING_OP_FILES_UPDATE`
//! request submitted through the ring itself. The benign mirrors: `qemu-io --aio io_uring`
//! writing an image raises nothing at medium or above (QEMU 10 registers no files), nor does
//! a trusted `qemu`-group writer (a policy naming a copy of python3) writing a data cluster
//! through a fixed file.
//!
//! The attacker is Python with raw syscalls (`ctypes`): `uring_fixed.py` beside this file;
//! and a static i386 program, whose compat `io_uring_register` only `raw_syscalls` sees.

use std::{path::Path, time::Duration};

use serde_json::Value;
use snapmon_e2e::{
    action, agent, as_nobody, c_string, i386_program, image_with_3_snapshots, loud, mov, note,
    open_store, run, Agent, Expect, SETPRIV, SYSTEM_PYTHON,
};

/// Does this agent judge writes through fixed files? Everywhere the direct fd walk runs
/// (the probe-read walk, 6.1, keeps to the registration alert).
fn fixed_files_judged(a: &Agent) -> bool {
    a.started["snapmon"]["state"]["fd_walk"] != "probe_read"
}

/// Where the VFS hook is live (fentry kernels) it owns io_uring writes: they are judged there,
/// from the file itself, and name no slot.
fn slot_named(a: &Agent) -> bool {
    !a.hook_live("rw_verify_area")
}

/// … and then `snapmon doctor`'s coverage names the hook that judges them.
fn assert_fixed_files_covered(a: &Agent) {
    let by = a.covered_by("io_uring registered files");
    assert!(
        by.iter()
            .any(|h| h == "io_uring_submit_req" || h == "rw_verify_area"),
        "{by:?}"
    );
}

const WITHIN: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(800);
const ATTACK: &str = include_str!("uring_fixed.py");

/// nobody registers `img` by `mode` (`files`, `update`, `sqe`) and writes nb_snapshots = 0
/// through the fixed file; returns its pid.
fn fixed_file_attack(img: &Path, mode: &str) -> u32 {
    run(
        "setpriv",
        &[
            SETPRIV,
            &[SYSTEM_PYTHON, "-c", ATTACK, img.to_str().unwrap(), mode],
        ]
        .concat(),
    )
    .pid
}

fn u001(a: &mut Agent, mark: u64, pid: u32) -> Option<Value> {
    a.find(&Expect::alert("SM-U001").pid(pid).since(mark), WITHIN)
}

fn nb_snapshots(img: &Path) -> u32 {
    let b = std::fs::read(img).unwrap();
    u32::from_be_bytes(b[60..64].try_into().unwrap())
}

#[test]
fn nobody_registering_an_image_as_an_io_uring_fixed_file_is_alerted() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut a = agent();
    let store = open_store(&a);
    for (mode, route, slot) in [
        ("files", "register_files", "1"),
        ("update", "register_files_update2", "3"),
        ("sqe", "op_files_update", "2"),
    ] {
        let img = image_with_3_snapshots(&store, &format!("fixed-{mode}.qcow2"));
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mark = a.mark();
        let pid = fixed_file_attack(&img, mode);
        // The attack itself worked: the write went through the registered file.
        assert_eq!(
            nb_snapshots(&img),
            0,
            "{mode}: the fixed-file write did not land"
        );
        let al = u001(&mut a, mark, pid).unwrap_or_else(|| {
            panic!(
                "{mode}: no SM-U001 within {WITHIN:?} for nobody's fixed-file registration of {}",
                img.display()
            )
        });
        let sev = al["snapmon"]["severity"].as_str().unwrap_or("");
        assert!(matches!(sev, "medium" | "high" | "critical"), "{al}");
        let msg = al["message"].as_str().unwrap_or("");
        let leaf = img.file_name().unwrap().to_str().unwrap();
        assert!(
            msg.contains(leaf) && msg.contains("io_uring fixed file"),
            "{mode}: {msg}"
        );
        assert_eq!(al["snapmon"]["detail"]["io_uring_slot"], slot, "{al}");
        assert_eq!(al["snapmon"]["detail"]["io_uring_register"], route, "{al}");
    }
    assert!(a.schema_errors().is_empty(), "{:?}", a.schema_errors());
}

#[test]
fn qemu_io_writing_through_io_uring_raises_nothing_loud() {
    let mut a = agent();
    let d = a.dir("uring");
    let img = image_with_3_snapshots(&d, "uring-benign.qcow2");
    run(
        "qemu-io",
        &[
            "--aio",
            "io_uring",
            "-t",
            "none",
            "-c",
            "write -P 0x5a 0 64k",
            img.to_str().unwrap(),
        ],
    );
    std::thread::sleep(QUIET);
    let recs: Vec<Value> = a
        .records()
        .into_iter()
        .filter(|v| snapmon_e2e::about(v, &img))
        .collect();
    // QEMU releases with `luring_fd_register` register the image: then the trusted path ran.
    let registered = recs
        .iter()
        .filter(|v| v["event"]["kind"] == "event" && action(v) == "io_uring_register_files")
        .count();
    note(&format!(
        "qemu-io --aio io_uring registered the image {registered} time(s)"
    ));
    let alerts: Vec<Value> = recs
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert")
        .collect();
    assert!(loud(&alerts).is_empty(), "{:?}", loud(&alerts));
}

/// A static i386 program, every syscall a compat one (`int 0x80`): open(img, O_RDWR),
/// io_uring_setup(4, params zeroed on the stack), io_uring_register(ring,
/// IORING_REGISTER_FILES, &fd, 1).
fn i386_registrar(img: &Path) -> Vec<u8> {
    i386_program(
        |at| {
            let mut c = Vec::new();
            mov(&mut c, 0xb8, 5); // eax = open
            mov(&mut c, 0xbb, at); // ebx = path
            mov(&mut c, 0xb9, 2); // ecx = O_RDWR
            c.extend_from_slice(&[0xcd, 0x80, 0x50, 0x89, 0xe5]); // int 0x80; push eax; ebp = &fd
            c.extend_from_slice(&[0x81, 0xec, 0x80, 0, 0, 0, 0x89, 0xe7]); // esp -= 128; edi = esp
            mov(&mut c, 0xb9, 32); // ecx = 32 dwords
            c.extend_from_slice(&[0x31, 0xc0, 0xf3, 0xab]); // eax = 0; rep stosd
            mov(&mut c, 0xb8, 425); // eax = io_uring_setup
            mov(&mut c, 0xbb, 4); // ebx = entries
            c.extend_from_slice(&[0x89, 0xe1, 0xcd, 0x80, 0x89, 0xc3]); // ecx = esp; int 0x80; ebx = ring
            mov(&mut c, 0xb8, 427); // eax = io_uring_register
            mov(&mut c, 0xb9, 2); // ecx = IORING_REGISTER_FILES
            c.extend_from_slice(&[0x89, 0xea]); // edx = &fd
            mov(&mut c, 0xbe, 1); // esi = 1
            c.extend_from_slice(&[0xcd, 0x80]);
            c
        },
        &c_string(img),
    )
}

/// The x86-64 syscall tracepoints never see a 32-bit program's `io_uring_register`: where
/// the VFS hook is refused, `raw_syscalls/sys_enter` hands it to the native hook. (Where it
/// is live, the compat hook stands down and the VFS hook sees the ring's writes themselves.)
#[test]
fn a_32_bit_program_registering_an_image_is_alerted() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut a = agent();
    if !a.hook_live("raw_sys_enter") {
        note("raw_sys_enter not live (the VFS hook is): compat registration not checked");
        return;
    }
    let store = open_store(&a);
    let img = image_with_3_snapshots(&store, "fixed-i386.qcow2");
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    let exe = std::env::temp_dir().join(format!("snapmon-i386-uring-{}", std::process::id()));
    std::fs::write(&exe, i386_registrar(&img)).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mark = a.mark();
    let pid = as_nobody(exe.to_str().unwrap(), &[]).pid;
    let _ = std::fs::remove_file(&exe);
    let al = u001(&mut a, mark, pid)
        .unwrap_or_else(|| panic!("no SM-U001 within {WITHIN:?} for the i386 registrar {pid}"));
    assert_eq!(
        al["snapmon"]["detail"]["io_uring_register"], "register_files",
        "{al}"
    );
    assert_eq!(al["snapmon"]["detail"]["io_uring_slot"], "0", "{al}");
}

/// The same attack, judged per write: the header change of a fixed-file write raises the
/// alert a plain pwrite raises, with the diff, and names the slot (base: counted as lost).
#[test]
fn nobody_zeroing_nb_snapshots_through_a_fixed_file_raises_the_header_alert() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut a = agent();
    if !fixed_files_judged(&a) {
        note("the submit hook does not read the ring's file table here (probe-read walk)");
        return;
    }
    let store = open_store(&a);
    for (mode, slot) in [("files", "1"), ("update", "3"), ("sqe", "2")] {
        let img = image_with_3_snapshots(&store, &format!("fixed-q-{mode}.qcow2"));
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mark = a.mark();
        let pid = fixed_file_attack(&img, mode);
        assert_eq!(nb_snapshots(&img), 0, "{mode}: the write did not land");
        let mut e = Expect::alert("SM-Q002")
            .pid(pid)
            .path(&img)
            .since(mark)
            .change("nb_snapshots", "0")
            .grace(Duration::ZERO);
        if slot_named(&a) {
            e = e.detail("io_uring_slot", slot);
        }
        let al = a.expect(e, WITHIN);
        assert_eq!(al["event"]["action"], "io_uring_write", "{al}");
        let msg = al["message"].as_str().unwrap_or("");
        assert!(msg.contains("nb_snapshots 3→0"), "{mode}: {msg}");
    }
    assert_fixed_files_covered(&a);
    assert!(a.schema_errors().is_empty(), "{:?}", a.schema_errors());
}

/// The benign mirror: a `qemu`-group writer (a policy naming a copy of python3 among QEMU's
/// executables) registering the image and writing a data cluster through the fixed file
/// raises nothing at medium or above; its header rewrite (the value it had) is still a write
/// judged on its own, seen with its slot.
#[test]
fn a_trusted_qemu_writing_through_a_fixed_file_raises_nothing_loud() {
    let base = std::env::temp_dir().join(format!("snapmon-uring-{}-policy", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let qemu = base.join("qemu-system-x86_64");
    std::fs::copy(SYSTEM_PYTHON, &qemu).unwrap();
    let default = run(snapmon_e2e::bin().to_str().unwrap(), &["policy", "default"]).stdout;
    let policy = default.replace(
        "\"/usr/bin/qemu-system-*\",",
        &format!("\"/usr/bin/qemu-system-*\", {:?},", qemu.to_str().unwrap()),
    );
    assert_ne!(policy, default);
    let p = base.join("policy.toml");
    std::fs::write(&p, policy).unwrap();
    let mut a = Agent::spawn("uring-trusted", &["--config", p.to_str().unwrap()], &[])
        .expect("agent with a trusted qemu copy");
    if !fixed_files_judged(&a) {
        note("the submit hook does not read the ring's file table here (probe-read walk)");
        return;
    }
    let d = a.dir("uring-trusted");
    let img = image_with_3_snapshots(&d, "vm.qcow2");
    let s = img.to_str().unwrap();
    // A guest cluster QEMU allocated, and where it lies in the file.
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 64k", s]);
    let map = run("qemu-img", &["map", "--output=json", "-f", "qcow2", s]).stdout;
    let map: Value = serde_json::from_str(&map).unwrap();
    let data = map
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["data"] == true && m["offset"].is_u64())
        .unwrap_or_else(|| panic!("no allocated cluster: {map}"))["offset"]
        .as_u64()
        .unwrap();
    std::thread::sleep(QUIET);
    let mark = a.mark();
    let ran = run(
        qemu.to_str().unwrap(),
        &[
            "-c",
            ATTACK,
            s,
            "files",
            &format!("{data}:{}", "5a".repeat(4096)),
            "60:00000003",
        ],
    );
    let e = Expect::any_event()
        .pid(ran.pid)
        .path(&img)
        .since(mark)
        .write()
        .offset(60)
        .grace(Duration::ZERO);
    let e = if slot_named(&a) {
        e.detail("io_uring_slot", "1")
    } else {
        e
    };
    a.expect(e, WITHIN);
    std::thread::sleep(QUIET);
    let alerts: Vec<Value> = a
        .records()
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert" && snapmon_e2e::about(v, &img))
        .collect();
    assert!(loud(&alerts).is_empty(), "{:?}", loud(&alerts));
    assert_eq!(nb_snapshots(&img), 3);
    assert_fixed_files_covered(&a);
    let _ = std::fs::remove_dir_all(&base);
}
