//! VM-only end-to-end: real LVM snapshots on a loop-backed PV with real device-mapper, run by
//! `cargo xtask vm-test` (which sets `SNAPMON_E2E_LVM=1`). Without that variable every test
//! fails, on purpose: it creates and removes block devices and changes /etc/lvm.
// xtask-suite: vm-only
// xtask-suite: newest-guest

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{about, action, agent_with, brief, changes, lvm, regions, Agent, LoopVg, Ran};

/// Silence that ends a command's records, once the agent has caught up with them (a
/// barrier: under TCG it trailed lvcreate by more than 3 s). Each LVM metadata write makes
/// the agent re-read the PV and wait up to 200 ms for the commit.
const QUIET: Duration = Duration::from_millis(3000);
const VG: &str = "snapmonvg";

/// The loop device under the VG.
static PV: OnceLock<PathBuf> = OnceLock::new();

/// The loop-backed PV and VG, created once before the agent starts (taken down at exit),
/// and the agent itself.
fn setup() -> (&'static Path, std::sync::MutexGuard<'static, Agent>) {
    let pv = PV.get_or_init(|| LoopVg::lvm(VG, "512M").keep());
    let a = agent_with(&[
        PathBuf::from("/dev/mapper/control"),
        pv.clone(),
        PathBuf::from("/etc/lvm"),
    ]);
    (pv, a)
}

fn ioctls(evs: &[Value]) -> Vec<&Value> {
    evs.iter().filter(|v| action(v) == "ioctl").collect()
}

/// The decoded one-line summary (`DM_TABLE_LOAD … [snapshot 254:2 …]`): `name` is the bare
/// command, so the targets and messages are matched here.
fn ioctl_name(v: &Value) -> &str {
    v["snapmon"]["ioctl"]["summary"].as_str().unwrap_or("")
}

fn brief_ioctls(evs: &[Value]) -> String {
    ioctls(evs)
        .iter()
        .map(|v| {
            format!(
                "pid={} {} {}",
                v["process"]["pid"],
                v["snapmon"]["ioctl"]["name"],
                v["snapmon"]["ioctl"]["summary"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// DM_TABLE_LOADs from `pid` with a `target` target: the name reads
/// `DM_TABLE_LOAD <dev> [<type> <params>]…`.
fn table_load_with(evs: &[Value], pid: u32, target: &str) -> bool {
    let (with_params, bare) = (format!("[{target} "), format!("[{target}]"));
    ioctls(evs).iter().any(|v| {
        let n = ioctl_name(v);
        v["process"]["pid"] == pid
            && n.starts_with("DM_TABLE_LOAD")
            && (n.contains(&with_params) || n.contains(&bare))
    })
}

/// DM_TARGET_MSG from `pid` carrying `msg` (`create_snap`, `delete`).
fn target_msg_with(evs: &[Value], pid: u32, msg: &str) -> bool {
    ioctls(evs).iter().any(|v| {
        v["process"]["pid"] == pid
            && ioctl_name(v).starts_with("DM_TARGET_MSG")
            && (v["snapmon"]["ioctl"].to_string().contains(msg))
    })
}

/// Everything from `pid` since the agent started, after things settle.
fn from_pid(a: &mut Agent, pid: u32) -> Vec<Value> {
    a.barrier();
    a.settle(QUIET, |v| v["process"]["pid"] == pid)
}

/// Every metadata diff seen on the PV, from any pid: shows where a diff went if not to `pid`.
fn pv_diffs(a: &mut Agent, dev: &Path) -> String {
    a.settle(Duration::ZERO, |v| about(v, dev) && !changes(v).is_empty())
        .iter()
        .map(|v| format!("pid={} {} {:?}", v["process"]["pid"], action(v), changes(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn pv_writes<'a>(evs: &'a [Value], dev: &Path) -> Vec<&'a Value> {
    evs.iter()
        .filter(|v| about(v, dev) && action(v) != "ioctl")
        .collect()
}

/// A write of `pid` (among its records `evs`) to the PV whose metadata diff has a change
/// starting with `want`; a miss fails with `pid`'s records and every diff on the PV.
fn assert_pv_diff(a: &mut Agent, evs: &[Value], pv: &Path, pid: u32, want: &str) {
    assert!(
        pv_writes(evs, pv)
            .iter()
            .any(|v| changes(v).iter().any(|c| c.starts_with(want))),
        "no {want} diff on the PV from pid {pid}:\n{}\nPV diffs from any pid:\n{}",
        brief(evs),
        pv_diffs(a, pv)
    );
}

fn lvm_backup_files(evs: &[Value]) -> Vec<&Value> {
    evs.iter()
        .filter(|v| v["snapmon"]["classification"]["format"] == "lvm-backup")
        .collect()
}

/// An LV `base<n>` and its old-style snapshot `snap<n>`, by trusted `lvm`: the snapshot's
/// `lvcreate -s`.
fn old_style_snapshot(n: &str) -> Ran {
    lvm(
        "lvcreate",
        &["-y", "-L", "16M", "-n", &format!("base{n}"), VG],
    );
    lvm(
        "lvcreate",
        &[
            "-y",
            "-s",
            "-L",
            "8M",
            "-n",
            &format!("snap{n}"),
            &format!("{VG}/base{n}"),
        ],
    )
}

#[test]
fn old_style_snapshot_create_is_seen_as_dm_tables_pv_metadata_and_backup() {
    let (pv, mut a) = setup();
    let r = old_style_snapshot("");
    let evs = from_pid(&mut a, r.pid);
    for t in ["snapshot", "snapshot-origin"] {
        assert!(
            table_load_with(&evs, r.pid, t),
            "no DM_TABLE_LOAD with a {t} target from lvcreate -s:\n{}",
            brief_ioctls(&evs)
        );
    }
    let w = pv_writes(&evs, pv);
    assert!(
        w.iter()
            .any(|v| regions(v).iter().any(|r| r.starts_with("lvm."))),
        "no PV write labelled lvm.*:\n{}",
        brief(&evs)
    );
    assert_pv_diff(&mut a, &evs, pv, r.pid, "lv_added: snap");
    let b = lvm_backup_files(&evs);
    for d in ["/etc/lvm/backup/", "/etc/lvm/archive/"] {
        assert!(
            b.iter().any(|v| {
                [&v["file"]["path"], &v["snapmon"]["destination"]["path"]]
                    .iter()
                    .any(|p| p.as_str().is_some_and(|p| p.starts_with(d)))
            }),
            "no lvm-backup record under {d}:\n{}",
            brief(&evs)
        );
    }
}

#[test]
fn old_style_snapshot_remove_reports_lv_removed() {
    let (pv, mut a) = setup();
    old_style_snapshot("2");
    let r = lvm("lvremove", &["-y", &format!("{VG}/snap2")]);
    let evs = from_pid(&mut a, r.pid);
    assert!(
        ioctls(&evs)
            .iter()
            .any(|v| ioctl_name(v).starts_with("DM_DEV_REMOVE")),
        "no DM_DEV_REMOVE from lvremove:\n{}",
        brief_ioctls(&evs)
    );
    assert_pv_diff(&mut a, &evs, pv, r.pid, "lv_removed: snap2");
    assert!(
        !lvm_backup_files(&evs).is_empty(),
        "no lvm-backup record:\n{}",
        brief(&evs)
    );
}

#[test]
fn thin_snapshot_create_and_delete_are_target_messages() {
    let (pv, mut a) = setup();
    lvm(
        "lvcreate",
        &["-y", "-L", "64M", "-T", &format!("{VG}/pool")],
    );
    let thin = lvm(
        "lvcreate",
        &[
            "-y",
            "-V",
            "32M",
            "-T",
            &format!("{VG}/pool"),
            "-n",
            "thin1",
        ],
    );
    let evs = from_pid(&mut a, thin.pid);
    assert!(
        table_load_with(&evs, thin.pid, "thin"),
        "no DM_TABLE_LOAD with a thin target:\n{}",
        brief_ioctls(&evs)
    );
    let s = lvm(
        "lvcreate",
        &["-y", "-s", "-n", "thinsnap", &format!("{VG}/thin1")],
    );
    let evs = from_pid(&mut a, s.pid);
    assert!(
        target_msg_with(&evs, s.pid, "create_snap"),
        "no DM_TARGET_MSG create_snap from the thin snapshot:\n{}",
        brief_ioctls(&evs)
    );
    assert_pv_diff(&mut a, &evs, pv, s.pid, "lv_added: thinsnap");
    let d = lvm("lvremove", &["-y", &format!("{VG}/thinsnap")]);
    let evs = from_pid(&mut a, d.pid);
    assert!(
        target_msg_with(&evs, d.pid, "delete"),
        "no DM_TARGET_MSG delete from lvremove of the thin snapshot:\n{}",
        brief_ioctls(&evs)
    );
    assert_pv_diff(&mut a, &evs, pv, d.pid, "lv_removed: thinsnap");
}

#[test]
fn lvconvert_merge_loads_a_snapshot_merge_table() {
    let (pv, mut a) = setup();
    old_style_snapshot("3");
    let r = lvm("lvconvert", &["-y", "--merge", &format!("{VG}/snap3")]);
    let evs = from_pid(&mut a, r.pid);
    assert!(
        table_load_with(&evs, r.pid, "snapshot-merge"),
        "no DM_TABLE_LOAD with a snapshot-merge target from lvconvert --merge:\n{}",
        brief_ioctls(&evs)
    );
    // The metadata records the merge, then drops the merged snapshot.
    for want in ["snapshot_merge", "lv_removed: snap3"] {
        assert_pv_diff(&mut a, &evs, pv, r.pid, want);
    }
}
