//! VM-only SM-K003 end-to-end on real ZFS (`cargo xtask vm-test`, which loads OpenZFS
//! modules built for the guest kernel and sets `SNAPMON_E2E_ZFS=1`): python3 issuing
//! ZFS_IOC_DESTROY / ZFS_IOC_ROLLBACK on `/dev/zfs`, and a copy of `zfs` in `/tmp`, alert
//! within a second naming actor and dataset; the real `/usr/sbin/zfs` doing the same does
//! not. Each test also prints what the agent recorded as a rule fixture (`emit_fixture`).
// xtask-suite: vm-only
// xtask-suite: newest-guest

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{
    action, agent_with, emit_fixture, identities_json, note, run, Agent, Expect, LoopVg, Ran,
};

const POOL: &str = "snapmonzp";
const WITHIN: Duration = Duration::from_secs(1);
const DEV: &str = "/dev/zfs";

/// Whether this guest has ZFS. A kernel without an OpenZFS for it passes with a printed
/// reason; a failed build, or running outside the VM, fails.
fn gate() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("SNAPMON_E2E_ZFS") == "1" {
        return true;
    }
    let err = var("SNAPMON_E2E_ZFS_ERROR");
    assert!(err.is_empty(), "no ZFS in this guest: {err}");
    let skip = var("SNAPMON_E2E_ZFS_SKIP");
    assert!(
        !skip.is_empty(),
        "these tests need real ZFS: they run only in the VM (`cargo xtask vm-test --test zfs`)"
    );
    note(&format!("zfs suite SKIPPED on this kernel: {skip}"));
    false
}

fn ds(name: &str) -> String {
    format!("{POOL}/{name}")
}

fn zfs(args: &[&str]) -> Ran {
    run("/usr/sbin/zfs", args)
}

fn snapshots() -> Vec<String> {
    zfs(&["list", "-H", "-t", "snapshot", "-o", "name"])
        .stdout
        .lines()
        .map(String::from)
        .collect()
}

/// Mount points live under the guest's /tmp (the root is read-only).
fn mnt(name: &str) -> PathBuf {
    std::env::temp_dir().join("snapmon-zfs").join(name)
}

static POOL_UP: OnceLock<PathBuf> = OnceLock::new();

/// A pool on a file vdev, created before the agent starts (destroyed at exit), and the
/// agent watching /dev/zfs.
fn setup() -> std::sync::MutexGuard<'static, Agent> {
    POOL_UP.get_or_init(|| LoopVg::zfs(POOL, "256M").keep());
    agent_with(&[PathBuf::from(DEV)])
}

/// A mounted dataset `<pool>/<name>` with one file, by trusted `zfs`.
fn dataset(name: &str) -> Vec<Ran> {
    let mp = mnt(name);
    vec![zfs(&[
        "create",
        "-o",
        &format!("mountpoint={}", mp.display()),
        &ds(name),
    ])]
}

fn k003_alerts(a: &Agent) -> Vec<Value> {
    a.records()
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert" && v["rule"]["id"] == "SM-K003")
        .collect()
}

/// The ZFS ioctls of `pids` that change pools or datasets (the tool's hundreds of stats and
/// list calls would only bloat a fixture; `all` keeps them).
fn zfs_ioctls_of(a: &Agent, pids: &[u32], all: bool) -> Vec<String> {
    const READS: &[&str] = &[
        "_STATS",
        "_LIST_NEXT",
        "_GET_",
        "ZFS_IOC_POOL_CONFIGS",
        "ZFS_IOC_OBJSET_ZPLPROPS",
    ];
    a.record_lines(|v| {
        let name = v["snapmon"]["ioctl"]["name"].as_str().unwrap_or("");
        v["event"]["kind"] == "event"
            && action(v) == "ioctl"
            && v["file"]["path"] == DEV
            && pids.iter().any(|p| v["process"]["pid"] == *p)
            && (all || !READS.iter().any(|r| name.contains(r)))
    })
}

/// The guest's identities of the trusted ZFS executables, in identities.json's format (the
/// guest's /usr/sbin is a tmpfs copy with the OpenZFS userland in it, see xtask/vm/zfs.sh).
fn guest_identities() -> String {
    identities_json(&[
        "/usr/sbin/zfs",
        "/usr/sbin/zpool",
        "/usr/sbin/zed",
        "/sbin/zfs",
    ])
}

/// python3 issuing one ZFS ioctl with a zeroed `zfs_cmd_t` (16 KiB covers 2.1's ~13.7 KiB)
/// whose `zc_name` is `name`, and an output nvlist buffer (new-style ioctls such as ROLLBACK
/// return one). Prints `ok` or the errno: a refused call is still an attempt.
const PY_IOCTL: &str = r#"
import ctypes, fcntl, os, struct, sys
cmd, name = int(sys.argv[1], 0), sys.argv[2].encode()
zc = bytearray(16384)
zc[:len(name)] = name
out = ctypes.create_string_buffer(65536)
struct.pack_into("<QQQQ", zc, 4096, 0, 0, ctypes.addressof(out), len(out))
fd = os.open("/dev/zfs", os.O_RDWR)
try:
    fcntl.ioctl(fd, cmd, zc)
    print("ok")
except OSError as e:
    print("errno", e.errno)
"#;

fn python_ioctl(cmd: u32, name: &str) -> (u32, String) {
    let r = run("python3", &["-c", PY_IOCTL, &format!("{cmd:#x}"), name]);
    (r.pid, r.stdout.trim().to_string())
}

/// The SM-K003 alert of `pid`, at most [`WITHIN`] after `t0` (the actor finished), high.
fn k003_for(a: &mut Agent, mark: u64, pid: u32, t0: Instant, what: &str) -> Value {
    let v = a.expect_timed(
        Expect::alert("SM-K003").pid(pid).since(mark),
        WITHIN,
        t0,
        what,
    );
    assert_eq!(v["snapmon"]["severity"], "high", "{v}");
    v
}

/// A mounted dataset `name` with a file `data` holding `before`, and two snapshots of it
/// (`snaps`), by trusted `zfs`: the dataset's name and the file.
fn dataset_with_snapshots(name: &str, snaps: [&str; 2]) -> (String, PathBuf) {
    dataset(name);
    let d = ds(name);
    let file = mnt(name).join("data");
    std::fs::write(&file, b"before").unwrap();
    for s in snaps {
        zfs(&["snapshot", &format!("{d}@{s}")]);
    }
    (d, file)
}

#[test]
fn k003_quiet_for_the_zfs_tool() {
    if !gate() {
        return;
    }
    let mut a = setup();
    let before = k003_alerts(&a).len();
    let mut ran = dataset("trusted");
    let d = ds("trusted");
    let file = mnt("trusted").join("data");
    std::fs::write(&file, b"before").unwrap();
    ran.push(zfs(&["snapshot", &format!("{d}@one")]));
    ran.push(zfs(&["snapshot", &format!("{d}@two")]));
    std::fs::write(&file, b"after").unwrap();
    ran.push(zfs(&["rollback", &format!("{d}@two")]));
    assert_eq!(std::fs::read(&file).unwrap(), b"before");
    ran.push(zfs(&["destroy", &format!("{d}@one")]));
    assert!(!snapshots().contains(&format!("{d}@one")));
    let pids: Vec<u32> = ran.iter().map(|r| r.pid).collect();
    let evs = a.settle(Duration::from_millis(1500), |v| {
        pids.iter().any(|p| v["process"]["pid"] == *p)
    });
    let names: Vec<&str> = evs
        .iter()
        .filter_map(|v| v["snapmon"]["ioctl"]["name"].as_str())
        .collect();
    // Seen (the snapshot, the rollback, the destroy) …
    for pat in [
        "ZFS_IOC_SNAPSHOT",
        "ZFS_IOC_ROLLBACK",
        "ZFS_IOC_DESTROY_SNAPS",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(pat)),
            "no {pat} among:\n{}",
            names.join("\n")
        );
    }
    // … and trusted.
    let k003 = &k003_alerts(&a)[before..];
    assert!(k003.is_empty(), "{k003:#?}");
    emit_fixture(
        "SM-K003/negative-zfs-snapshot-rollback-destroy.jsonl",
        &zfs_ioctls_of(&a, &pids, false),
    );
    emit_fixture("SM-K003/identities.json", &[guest_identities()]);
}

#[test]
fn k003_fires_for_python_destroy_and_rollback() {
    if !gate() {
        return;
    }
    let mut a = setup();
    let (d, file) = dataset_with_snapshots("py", ["daily", "hourly"]);
    a.settle(Duration::from_millis(1500), |_| false);
    let mut pids = vec![];

    // 0. The same python reading a dataset's stats: untrusted, but not destructive.
    let before = k003_alerts(&a).len();
    let (pid, _) = python_ioctl(0x5a12, &d); // ZFS_IOC_OBJSET_STATS
    a.settle(Duration::from_millis(1500), |_| false);
    let k003 = &k003_alerts(&a)[before..];
    assert!(k003.is_empty(), "{k003:#?}");
    emit_fixture(
        "SM-K003/negative-python-objset-stats.jsonl",
        &zfs_ioctls_of(&a, &[pid], true),
    );

    // 1. ZFS_IOC_DESTROY (legacy: zc_name is the snapshot): it is gone.
    let snap = format!("{d}@daily");
    let mark = a.mark();
    let (pid, out) = python_ioctl(0x5a18, &snap);
    let t0 = Instant::now();
    assert_eq!(out, "ok", "destroy {snap}");
    let v = k003_for(&mut a, mark, pid, t0, "python3 ZFS_IOC_DESTROY");
    assert!(!snapshots().contains(&snap), "{:?}", snapshots());
    let m = v["message"].as_str().unwrap();
    assert!(m.starts_with("python3"), "{m}");
    assert!(m.contains(&format!("ZFS_IOC_DESTROY {snap}")), "{m}");
    assert!(
        v["process"]["executable"]
            .as_str()
            .unwrap()
            .contains("python3"),
        "{v}"
    );
    pids.push(pid);

    // 2. ZFS_IOC_ROLLBACK (new-style: zc_name is the dataset, to its newest snapshot): the
    // file written since @hourly is back to what it was.
    std::fs::write(&file, b"after").unwrap();
    let mark = a.mark();
    let (pid, out) = python_ioctl(0x5a19, &d);
    let t0 = Instant::now();
    assert_eq!(out, "ok", "rollback {d}");
    let v = k003_for(&mut a, mark, pid, t0, "python3 ZFS_IOC_ROLLBACK");
    assert_eq!(std::fs::read(&file).unwrap(), b"before");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(&format!("ZFS_IOC_ROLLBACK {d}")), "{m}");
    pids.push(pid);

    a.settle(Duration::from_millis(800), |_| false);
    emit_fixture(
        "SM-K003/positive-python-destroy-and-rollback.jsonl",
        &zfs_ioctls_of(&a, &pids, true),
    );
}

/// Run the rogue copy of `zfs` to completion.
fn rogue(bin: &Path, args: &[&str]) -> u32 {
    run(bin.to_str().unwrap(), args).pid
}

#[test]
fn k003_fires_for_a_zfs_copy_in_tmp() {
    if !gate() {
        return;
    }
    let mut a = setup();
    let (d, file) = dataset_with_snapshots("copy", ["keep", "last"]);
    let dir = std::env::temp_dir().join("rogue-zfs");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("zfs");
    std::fs::copy("/usr/sbin/zfs", &bin).unwrap();
    a.settle(Duration::from_millis(1500), |_| false);
    let mut pids = vec![];

    // 1. `zfs rollback` (ZFS_IOC_ROLLBACK, zc_name = the dataset).
    std::fs::write(&file, b"after").unwrap();
    let mark = a.mark();
    let pid = rogue(&bin, &["rollback", &format!("{d}@last")]);
    let t0 = Instant::now();
    let v = k003_for(&mut a, mark, pid, t0, "zfs copy rollback");
    assert_eq!(std::fs::read(&file).unwrap(), b"before");
    assert_eq!(v["process"]["executable"], bin.to_str().unwrap(), "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(&format!("ZFS_IOC_ROLLBACK {d}")), "{m}");
    pids.push(pid);

    // 2. `zfs destroy` of a snapshot: libzfs sends ZFS_IOC_DESTROY_SNAPS with the pool in
    // zc_name and the snapshots in the input nvlist, so the message names the pool.
    let snap = format!("{d}@keep");
    let mark = a.mark();
    let pid = rogue(&bin, &["destroy", &snap]);
    let t0 = Instant::now();
    let v = k003_for(&mut a, mark, pid, t0, "zfs copy destroy");
    assert!(!snapshots().contains(&snap));
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(&format!("ZFS_IOC_DESTROY_SNAPS {POOL}")), "{m}");
    pids.push(pid);

    a.settle(Duration::from_millis(800), |_| false);
    emit_fixture(
        "SM-K003/positive-zfs-copy-rollback-destroy.jsonl",
        &zfs_ioctls_of(&a, &pids, false),
    );
}
