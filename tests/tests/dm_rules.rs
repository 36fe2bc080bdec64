//! VM-only SM-K001 end-to-end with real device-mapper (`cargo xtask vm-test`, which sets
//! `SNAPMON_E2E_LVM=1`): a copy of `dmsetup` outside the trusted identities loading a thin
//! table, deleting a thin snapshot and removing a snapshot's COW device alerts within a second
//! with actor and target; `lvm` creating and removing old-style and thin snapshots does not.
//! Each test also prints what the agent recorded as a rule fixture (see `emit_fixture`).
// xtask-suite: vm-only
// xtask-suite: newest-guest

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{
    action, agent_with, emit_fixture, identities_json, lvm, run, Agent, Expect, LoopVg, Ran,
};

const VG: &str = "snapmonrl";
const WITHIN: Duration = Duration::from_secs(1);
const CONTROL: &str = "/dev/mapper/control";

/// The loop device under the VG.
static PV: OnceLock<String> = OnceLock::new();

/// A loop-backed VG, created before the agent starts (and taken down at exit with the
/// suite's own `rl…` tables, so the suites after this one in the same guest do not find
/// them), and the agent watching dm control.
fn setup() -> (&'static str, std::sync::MutexGuard<'static, Agent>) {
    let pv = PV.get_or_init(|| {
        let dev = LoopVg::lvm(VG, "512M").removing("rl").keep();
        dev.to_str().unwrap().to_string()
    });
    (pv, agent_with(&[PathBuf::from(CONTROL)]))
}

fn lv(name: &str) -> String {
    format!("{VG}/{name}")
}

/// An old-style snapshot `<p>snap` of `<p>orig`, and a thin pool `<p>pool` with a thin LV
/// `<p>thin` and its (inactive) thin snapshot `<p>tsnap`; all by trusted `lvm`.
fn snapshots(p: &str) -> Vec<Ran> {
    let (orig, pool, thin) = (format!("{p}orig"), format!("{p}pool"), format!("{p}thin"));
    vec![
        lvm("lvcreate", &["-y", "-L", "32M", "-n", &orig, VG]),
        lvm(
            "lvcreate",
            &[
                "-y",
                "-s",
                "-L",
                "16M",
                "-n",
                &format!("{p}snap"),
                &lv(&orig),
            ],
        ),
        lvm("lvcreate", &["-y", "-L", "64M", "-T", &lv(&pool)]),
        lvm(
            "lvcreate",
            &["-y", "-V", "32M", "-T", &lv(&pool), "-n", &thin],
        ),
        lvm(
            "lvcreate",
            &["-y", "-s", "-n", &format!("{p}tsnap"), &lv(&thin)],
        ),
    ]
}

/// The dm ioctls of `pids` that change devices (LVM's hundreds of status queries would only
/// bloat the fixture; `all` keeps them).
fn dm_ioctls_of(a: &Agent, pids: &[u32], all: bool) -> Vec<String> {
    const CHANGING: &[&str] = &[
        "DM_TABLE_LOAD",
        "DM_TARGET_MSG",
        "DM_DEV_REMOVE",
        "DM_DEV_CREATE",
    ];
    a.record_lines(|v| {
        let name = v["snapmon"]["ioctl"]["name"].as_str().unwrap_or("");
        v["event"]["kind"] == "event"
            && action(v) == "ioctl"
            && v["file"]["path"] == CONTROL
            && pids.iter().any(|p| v["process"]["pid"] == *p)
            && (all || CHANGING.iter().any(|c| name.starts_with(c)))
    })
}

fn k001_alerts(a: &Agent) -> Vec<Value> {
    a.records()
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert" && v["rule"]["id"] == "SM-K001")
        .collect()
}

/// The guest's identities of the trusted dm executables, in identities.json's format: the
/// fixtures are judged against the host they were recorded on (here the VM guest, whose root
/// is 9p).
fn guest_identities() -> String {
    identities_json(&[
        "/usr/sbin/lvm",
        "/usr/sbin/dmsetup",
        "/usr/sbin/dmeventd",
        "/usr/sbin/lvmpolld",
    ])
}

#[test]
fn k001_quiet_for_lvm_creating_and_removing_snapshots() {
    let (_, mut a) = setup();
    let before = k001_alerts(&a).len();
    let mut ran = snapshots("n");
    ran.push(lvm("lvremove", &["-y", &lv("nsnap")]));
    ran.push(lvm("lvremove", &["-y", &lv("ntsnap")]));
    let pids: Vec<u32> = ran.iter().map(|r| r.pid).collect();
    let evs = a.settle(Duration::from_millis(1500), |v| {
        pids.iter().any(|p| v["process"]["pid"] == *p)
    });
    let names: Vec<&str> = evs
        .iter()
        .filter_map(|v| v["snapmon"]["ioctl"]["summary"].as_str())
        .collect();
    // Seen (snapshot tables, thin create_snap/delete, the COW removal) …
    let seen = |pat: &str| names.iter().any(|n| n.contains(pat));
    for pat in [
        "[snapshot ",
        "[snapshot-origin ",
        "create_snap",
        "delete",
        "nsnap-cow",
    ] {
        assert!(seen(pat), "no {pat:?} among:\n{}", names.join("\n"));
    }
    // … and trusted.
    let k001 = &k001_alerts(&a)[before..];
    assert!(k001.is_empty(), "{k001:#?}");
    emit_fixture(
        "SM-K001/negative-lvm-snapshot-create-remove.jsonl",
        &dm_ioctls_of(&a, &pids, false),
    );
    emit_fixture("SM-K001/identities.json", &[guest_identities()]);
}

/// Run the rogue copy; dm may refuse an operation, but the ioctl is issued either way.
fn rogue(bin: &str, args: &[&str]) -> (u32, bool, String) {
    let c = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id();
    let o = c.wait_with_output().unwrap();
    (
        pid,
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Run the rogue copy and expect its SM-K001 alert within [`WITHIN`] of it finishing.
fn k001_for(a: &mut Agent, bin: &str, args: &[&str], what: &str) -> (u32, Value) {
    let mark = a.mark();
    let (pid, ok, err) = rogue(bin, args);
    assert!(ok, "dmsetup {args:?}: {err}");
    let t0 = Instant::now();
    let v = a.expect_timed(
        Expect::alert("SM-K001").pid(pid).since(mark),
        WITHIN,
        t0,
        what,
    );
    (pid, v)
}

#[test]
fn k001_fires_for_an_untrusted_dmsetup_copy() {
    let (pv, mut a) = setup();
    snapshots("p");
    let dir = std::env::temp_dir().join("rogue");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("dmsetup");
    std::fs::copy("/usr/sbin/dmsetup", &bin).unwrap();
    let bin = bin.to_str().unwrap();
    // Under TCG the agent trails LVM's burst (metadata diffs) by seconds: let it catch up, so
    // the one-second bound measures the rule, not that backlog.
    a.settle(Duration::from_millis(1500), |_| false);
    let thin_id = run(
        "lvm",
        &["lvs", "--noheadings", "-o", "thin_id", &lv("ptsnap")],
    )
    .stdout
    .trim()
    .to_string();
    let sectors = 32 * 2048;

    // 0. The same copy doing dm work that touches no snapshot: quiet (negative fixture).
    let before = k001_alerts(&a).len();
    let mut quiet = vec![];
    let linear = format!("0 2048 linear {pv} 2048");
    for args in [
        vec!["create", "rllinear", "--table", linear.as_str()],
        vec!["status"],
        vec!["table"],
        vec!["remove", "rllinear"],
    ] {
        let (pid, ok, err) = rogue(bin, &args);
        assert!(ok, "dmsetup {args:?}: {err}");
        quiet.push(pid);
    }
    a.settle(Duration::from_millis(1500), |_| false);
    let k001 = &k001_alerts(&a)[before..];
    assert!(k001.is_empty(), "{k001:#?}");
    emit_fixture(
        "SM-K001/negative-rogue-dmsetup-no-snapshot.jsonl",
        &dm_ioctls_of(&a, &quiet, true),
    );

    let tpool = format!("{VG}-ppool-tpool");
    let mut pids = vec![];

    // 1. Activate the thin snapshot under another name: a DM_TABLE_LOAD of a `thin` target.
    let table = format!("0 {sectors} thin /dev/mapper/{tpool} {thin_id}");
    let (pid, v) = k001_for(
        &mut a,
        bin,
        &["create", "rlexfil", "--table", &table],
        "table load",
    );
    let m = v["message"].as_str().unwrap();
    assert_eq!(v["process"]["executable"], bin, "{v}");
    assert!(m.starts_with("dmsetup"), "{m}");
    // libdm loads a device it just created by number, not by name.
    let dev = run(
        "dmsetup",
        &["info", "-c", "--noheadings", "-o", "major,minor", "rlexfil"],
    )
    .stdout
    .trim()
    .to_string();
    assert!(
        m.contains(&format!(
            "DM_TABLE_LOAD dev={dev} [thin /dev/mapper/{tpool} {thin_id}]"
        )),
        "{m}"
    );
    assert_eq!(v["snapmon"]["severity"], "high");
    pids.push(pid);
    pids.push(rogue(bin, &["remove", "rlexfil"]).0);

    // 2. Delete the thin snapshot inside the pool.
    let msg = format!("delete {thin_id}");
    let (pid, v) = k001_for(&mut a, bin, &["message", &tpool, "0", &msg], "thin delete");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("DM_TARGET_MSG {tpool}")) && m.contains(&msg),
        "{m}"
    );
    pids.push(pid);

    // 3. Tear down the old-style snapshot: the top device, then its COW store.
    let (pid, ok, err) = rogue(bin, &["remove", &format!("{VG}-psnap")]);
    assert!(ok, "dmsetup remove: {err}");
    pids.push(pid);
    let cow = format!("{VG}-psnap-cow");
    let (pid, v) = k001_for(&mut a, bin, &["remove", &cow], "COW removal");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(&format!("DM_DEV_REMOVE {cow}")), "{m}");
    pids.push(pid);

    a.settle(Duration::from_millis(800), |_| false);
    emit_fixture(
        "SM-K001/positive-rogue-dmsetup.jsonl",
        &dm_ioctls_of(&a, &pids, true),
    );
}
