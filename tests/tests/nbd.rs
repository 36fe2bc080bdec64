//! End-to-end: issue #14's NBD side door. `qemu-nbd` with the qcow2 driver is the trusted
//! `qemu` group, whose data writes are dropped in the kernel. Served writable (over a unix
//! socket, or connected to `/dev/nbdN`), an image takes whatever its NBD clients write as
//! qemu-nbd's trusted writes. So serving a watched image for a process the `nbd` actor group
//! does not trust is SM-K006 (T1006): `nobody` exporting root's 0666 image, root's shell
//! connecting one to `/dev/nbd0`. The benign mirror: the same export started by a trusted
//! launcher (a copy of python3 in the policy as libvirtd) and a read-only export raise nothing
//! at medium or above.
// xtask-suite: newest-guest

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{image_with_3_snapshots, loud, open_store, run, Agent, Expect, SETPRIV};

/// Issue #14: a side door alerts within 1 s (generous under TCG in the guests).
const WITHIN: Duration = Duration::from_secs(10);

/// One agent for the suite, on the default policy with a copy of python3 as a trusted
/// libvirtd (also a trusted `nbd` launcher: the policy names libvirtd in both groups).
fn suite() -> std::sync::MutexGuard<'static, snapmon_e2e::WithLibvirtd> {
    snapmon_e2e::with_libvirtd("nbd")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Root's image with three snapshots, 0666 (any user may write it, and so serve it).
fn image(a: &Agent, name: &str) -> PathBuf {
    let img = image_with_3_snapshots(&open_store(a), name);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    img
}

/// A socket path in a directory anyone may create in.
fn socket(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("snapmon-nbd-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Wait for `server` to listen on `sock`, write 64 KiB of guest data through it with qemu-io
/// (`as_nobody`: the client too), and wait for the server to exit at the client's disconnect.
fn write_through(mut server: Child, sock: &Path, read_only: bool, as_nobody: bool) {
    let t = Instant::now();
    while !sock.exists() {
        if let Ok(Some(st)) = server.try_wait() {
            panic!("qemu-nbd exited before listening: {st}");
        }
        assert!(t.elapsed() < WITHIN, "qemu-nbd never listened on {sock:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nbd+unix:///?socket={}", s(sock));
    let cmd = if read_only {
        "read 1M 64k"
    } else {
        "write -P 0x41 1M 64k"
    };
    let mut args: Vec<&str> = vec!["qemu-io", "-f", "raw", &url, "-c", cmd];
    if read_only {
        args.insert(1, "-r");
    }
    if as_nobody {
        run("setpriv", &[SETPRIV, &args].concat());
    } else {
        run(args[0], &args[1..]);
    }
    let t = Instant::now();
    while server.try_wait().unwrap().is_none() {
        if t.elapsed() > WITHIN {
            let _ = server.kill();
            panic!("qemu-nbd did not exit after its client left");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(sock);
}

fn k006(a: &mut Agent, img: &Path, pid: u32, mark: u64) -> Value {
    a.expect(
        Expect::alert("SM-K006").pid(pid).path(img).since(mark),
        WITHIN,
    )
}

#[test]
fn nobody_serving_roots_image_over_a_socket_is_sm_k006() {
    let mut st = suite();
    let a = &mut st.agent;
    let img = image(a, "served.qcow2");
    let sock = socket("nobody");
    let mark = a.mark();
    let server = Command::new("setpriv")
        .args(SETPRIV)
        .args(["qemu-nbd", "-k", s(&sock), "-f", "qcow2", s(&img)])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd as nobody");
    let pid = server.id();
    write_through(server, &sock, false, true);
    let v = k006(a, &img, pid, mark);
    assert_eq!(v["snapmon"]["severity"], "medium", "{v}");
    assert!(v.to_string().contains("T1006"), "direct volume access: {v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("qemu-nbd (") && msg.contains("exported it over NBD"),
        "{msg}"
    );
}

#[test]
fn a_trusted_launcher_and_a_read_only_export_raise_nothing_loud() {
    let mut st = suite();
    let libvirtd = st.libvirtd.clone();
    let a = &mut st.agent;
    let img = image(a, "trusted.qcow2");
    let mark = a.mark();
    // libvirtd runs qemu-nbd as its child, as a backup job would, and a client writes.
    let sock = socket("trusted");
    let server = Command::new(&libvirtd)
        .args([
            "-c",
            "import subprocess, sys; sys.exit(subprocess.run(['/usr/bin/qemu-nbd'] + sys.argv[1:]).returncode)",
        ])
        .args(["-k", s(&sock), "-f", "qcow2", s(&img)])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd under libvirtd");
    write_through(server, &sock, false, false);
    // The export was seen: qemu-nbd's open for writing, its parent the trusted launcher.
    let opened = a.expect(Expect::event("open_write").path(&img).since(mark), WITHIN);
    assert_eq!(opened["process"]["name"], "qemu-nbd", "{opened}");
    assert_eq!(
        opened["process"]["parent"]["executable"],
        s(&libvirtd),
        "{opened}"
    );
    // A read-only export opens nothing for writing, whoever starts it.
    let ro = socket("ro");
    let server = Command::new("setpriv")
        .args(SETPRIV)
        .args(["qemu-nbd", "-r", "-k", s(&ro), "-f", "qcow2", s(&img)])
        .stdout(Stdio::null())
        .spawn()
        .expect("read-only qemu-nbd as nobody");
    write_through(server, &ro, true, true);
    a.settle(Duration::from_millis(800), |_| false);
    let alerts: Vec<Value> = a
        .since(mark)
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert" && v["file"]["path"] == s(&img))
        .collect();
    assert!(loud(&alerts).is_empty(), "{:#?}", loud(&alerts));
}

/// `qemu-nbd -c /dev/nbd0` from root's shell: the guests' kernels have the nbd module; a
/// kernel without it (this host's) cannot connect, and the test says so.
#[test]
fn connecting_an_image_to_dev_nbd_from_a_shell_is_sm_k006_naming_the_device() {
    if !Path::new("/dev/nbd0").exists()
        && !Command::new("modprobe")
            .args(["nbd", "nbds_max=2"])
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP: no nbd module on this kernel (the VM guests run this test)");
        return;
    }
    let mut st = suite();
    let a = &mut st.agent;
    let img = image(a, "connected.qcow2");
    let mark = a.mark();
    // Its own socket: the default one is under /var/lock, which the guests' root lacks.
    let sock = socket("connect");
    run(
        "qemu-nbd",
        &["-c", "/dev/nbd0", "-k", s(&sock), "-f", "qcow2", s(&img)],
    );
    let v = a.expect(Expect::alert("SM-K006").path(&img).since(mark), WITHIN);
    run("qemu-nbd", &["-d", "/dev/nbd0"]);
    let msg = v["message"].as_str().unwrap_or("");
    assert!(msg.contains("connected it to /dev/nbd0"), "{msg}");
}
