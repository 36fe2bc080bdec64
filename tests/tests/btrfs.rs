//! btrfs end-to-end on a real loop-mounted btrfs: snapshot ioctls and writes inside a
//! subvolume (whose `stat` device differs from the superblock's) are seen and decoded, and
//! SM-K002 fires for an untrusted process unprotecting or destroying a snapshot but not for
//! btrfs-progs doing the same.
// xtask-suite: newest-guest

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{action, agent_with, brief, python, run, Agent, Expect, Ran};

fn sh(cmd: &str) {
    let st = Command::new("bash").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// One btrfs per test binary, mounted before the shared agent starts watching it.
struct Btrfs {
    mnt: PathBuf,
}

static FS: OnceLock<Btrfs> = OnceLock::new();

extern "C" fn unmount_at_exit() {
    if let Some(fs) = FS.get() {
        let _ = Command::new("umount").arg("-l").arg(&fs.mnt).status();
        let _ = std::fs::remove_dir_all(fs.mnt.parent().unwrap());
    }
}

fn btrfs() -> (&'static Path, std::sync::MutexGuard<'static, Agent>) {
    let fs = FS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("snapmon-btrfs-{}", std::process::id()));
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let img = base.join("fs.img");
        sh(&format!(
            "truncate -s 256M {0} && mkfs.btrfs -q -f {0} && mount -o loop {0} {1}",
            img.display(),
            mnt.display()
        ));
        unsafe { libc::atexit(unmount_at_exit) };
        Btrfs { mnt }
    });
    let a = agent_with(std::slice::from_ref(&fs.mnt));
    (&fs.mnt, a)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ioctl_named(evs: &[Value], pid: u32, prefix: &str) -> bool {
    evs.iter().any(|v| {
        action(v) == "ioctl"
            && v["process"]["pid"] == pid
            && v["snapmon"]["ioctl"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
    })
}

#[test]
fn btrfs_snapshot_ioctls_and_subvolume_writes_are_reported() {
    let (mnt, mut a) = btrfs();
    let vol = mnt.join("vol");
    run("btrfs", &["subvolume", "create", s(&vol)]);
    std::fs::write(vol.join("disk.qcow2"), b"data").unwrap();
    let snap = mnt.join("snap1");
    let c = run("btrfs", &["subvolume", "snapshot", "-r", s(&vol), s(&snap)]);
    let p = run("btrfs", &["property", "set", "-f", s(&snap), "ro", "false"]);
    let d = run("btrfs", &["subvolume", "delete", s(&snap)]);
    let f = vol.join("disk.qcow2");
    let w = python(&format!(
        "import os; fd=os.open('{}', os.O_RDWR); os.pwrite(fd, b'xx', 2)",
        f.display()
    ));
    let evs = a.settle(Duration::from_millis(800), |v| {
        v["event"]["kind"] == "event"
            && v["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(s(mnt)))
    });
    assert!(
        ioctl_named(&evs, c.pid, "BTRFS_IOC_SNAP_CREATE_V2"),
        "no snapshot create ioctl:\n{}",
        brief(&evs)
    );
    assert!(
        ioctl_named(&evs, p.pid, "BTRFS_IOC_SUBVOL_SETFLAGS"),
        "no read-only clear ioctl:\n{}",
        brief(&evs)
    );
    assert!(
        ioctl_named(&evs, d.pid, "BTRFS_IOC_SNAP_DESTROY"),
        "no snapshot destroy ioctl:\n{}",
        brief(&evs)
    );
    let destroy = evs
        .iter()
        .find(|v| {
            v["process"]["pid"] == d.pid
                && v["snapmon"]["ioctl"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("BTRFS_IOC_SNAP_DESTROY"))
        })
        .unwrap();
    assert_eq!(
        destroy["snapmon"]["classification"]["snapshot_destructive"], true,
        "{destroy}"
    );
    assert!(
        evs.iter().any(|v| v["process"]["pid"] == w.pid
            && action(v) == "pwrite64"
            && v["file"]["path"] == s(&f)),
        "write inside the subvolume not seen:\n{}",
        brief(&evs)
    );
}

const WITHIN: Duration = Duration::from_secs(1);

/// python3 issuing the btrfs ioctls the way btrfs-progs does, from an untrusted identity.
const BTRFS_PY: &str = r#"
import fcntl, os, struct, sys
SETFLAGS, DESTROY, DESTROY_V2 = 0x4008941a, 0x5000940f, 0x5000943f
op, path = sys.argv[1], sys.argv[2]
if op == "clear-ro":
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.ioctl(fd, SETFLAGS, struct.pack("=Q", 0))
else:
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    name = os.path.basename(path).encode()
    if op == "destroy":
        arg = bytearray(struct.pack("=q", 0) + name.ljust(4088, b"\0"))
        fcntl.ioctl(fd, DESTROY, arg)
    else:
        arg = bytearray(struct.pack("=qQQ", 0, 0, 0) + bytes(32) + name.ljust(4040, b"\0"))
        fcntl.ioctl(fd, DESTROY_V2, arg)
"#;

fn py_btrfs(op: &str, path: &Path) -> Ran {
    run("python3", &["-c", BTRFS_PY, op, s(path)])
}

/// The SM-K002 alert from `pid`, waited for at most [`WITHIN`].
fn k002_from(a: &mut Agent, pid: u32) -> Option<(Value, Duration)> {
    let t0 = Instant::now();
    a.find(&Expect::alert("SM-K002").pid(pid), WITHIN)
        .map(|v| (v, t0.elapsed()))
}

fn alerts_so_far(a: &Agent) -> String {
    a.records()
        .iter()
        .filter(|v| v["event"]["kind"] == "alert")
        .map(|v| {
            format!(
                "{} pid={} {}",
                v["rule"]["id"], v["process"]["pid"], v["message"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn k002_fires_for_python_unprotecting_and_destroying_snapshots() {
    let (mnt, mut a) = btrfs();
    let vol = mnt.join("k2vol");
    run("btrfs", &["subvolume", "create", s(&vol)]);
    let (s1, s2) = (mnt.join("k2snap1"), mnt.join("k2snap2"));
    for sn in [&s1, &s2] {
        run("btrfs", &["subvolume", "snapshot", "-r", s(&vol), s(sn)]);
    }

    let clear = py_btrfs("clear-ro", &s1);
    let (v, took) = k002_from(&mut a, clear.pid)
        .unwrap_or_else(|| panic!("no SM-K002 for the clear-ro:\n{}", alerts_so_far(&a)));
    let m = v["message"].as_str().unwrap();
    assert!(m.starts_with("python3"), "{m}");
    // Every subvolume root is inode 256 on the one superblock the agent keys btrfs by; the
    // record's entry name in its parent directory says which snapshot it was.
    assert!(
        m.contains(&format!("cleared the read-only flag of {}", s(&s1))),
        "{m}"
    );
    assert!(m.contains("readonly=cleared"), "{m}");
    assert_eq!(v["snapmon"]["severity"], "high");
    assert!(
        v["file"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(s(mnt))),
        "{v}"
    );
    eprintln!("SM-K002 clear-ro alert after {took:?}");

    let destroy = py_btrfs("destroy", &s1);
    let (v, took) = k002_from(&mut a, destroy.pid)
        .unwrap_or_else(|| panic!("no SM-K002 for SNAP_DESTROY:\n{}", alerts_so_far(&a)));
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("destroyed a snapshot in {}", s(mnt))),
        "{m}"
    );
    assert!(
        m.contains("BTRFS_IOC_SNAP_DESTROY") && m.contains("k2snap1"),
        "{m}"
    );
    eprintln!("SM-K002 SNAP_DESTROY alert after {took:?}");

    let destroy2 = py_btrfs("destroy-v2", &s2);
    let (v, took) = k002_from(&mut a, destroy2.pid)
        .unwrap_or_else(|| panic!("no SM-K002 for SNAP_DESTROY_V2:\n{}", alerts_so_far(&a)));
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("BTRFS_IOC_SNAP_DESTROY_V2") && m.contains("k2snap2"),
        "{m}"
    );
    eprintln!("SM-K002 SNAP_DESTROY_V2 alert after {took:?}");
    assert!(
        !s1.exists() && !s2.exists(),
        "the snapshots were really destroyed"
    );
}

#[test]
fn k002_stays_quiet_for_btrfs_progs_doing_the_same() {
    let (mnt, mut a) = btrfs();
    let vol = mnt.join("k2tvol");
    run("btrfs", &["subvolume", "create", s(&vol)]);
    let sn = mnt.join("k2tsnap");
    let c = run("btrfs", &["subvolume", "snapshot", "-r", s(&vol), s(&sn)]);
    let p = run("btrfs", &["property", "set", "-f", s(&sn), "ro", "false"]);
    let d = run("btrfs", &["subvolume", "delete", s(&sn)]);
    let pids = [c.pid, p.pid, d.pid];
    let evs = a.settle(Duration::from_millis(1500), |v| {
        pids.iter().any(|p| v["process"]["pid"] == *p)
    });
    // The operations were seen (so silence means trust, not blindness) …
    assert!(
        ioctl_named(&evs, p.pid, "BTRFS_IOC_SUBVOL_SETFLAGS"),
        "{}",
        brief(&evs)
    );
    assert!(
        ioctl_named(&evs, d.pid, "BTRFS_IOC_SNAP_DESTROY"),
        "{}",
        brief(&evs)
    );
    let destructive = evs
        .iter()
        .filter(|v| v["snapmon"]["classification"]["snapshot_destructive"] == true)
        .count();
    assert!(destructive >= 2, "{}", brief(&evs));
    // … and raised no SM-K002.
    let k002: Vec<_> = evs
        .iter()
        .filter(|v| v["event"]["kind"] == "alert" && v["rule"]["id"] == "SM-K002")
        .collect();
    assert!(k002.is_empty(), "{k002:#?}");
}
