//! End-to-end rules: real attacks against a watched temp store with the agent running on its
//! embedded default policy; each asserts the alert (rule, severity, actor, target, diff)
//! arrives within one second of the attack finishing.
// xtask-suite: newest-guest

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{agent, python, run, Expect};

const WITHIN: Duration = Duration::from_secs(1);

fn dir(name: &str) -> PathBuf {
    let d = agent().dir("rules").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn image(d: &Path, name: &str, snaps: &[&str]) -> PathBuf {
    let img = d.join(name);
    let s = img.to_str().unwrap();
    let made = run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
    // The agent first reads a file when it handles the file's first event: a step that
    // changes the image before then is read as part of what the image was (a debug agent
    // under load lagged past a `qemu-img snapshot` that followed at once).
    agent().expect(
        Expect::any_event().pid(made.pid).path(&img),
        Duration::from_secs(10),
    );
    for sn in snaps {
        run("qemu-img", &["snapshot", "-c", sn, s]);
    }
    img
}

fn is_alert(v: &Value, rule: &str, pid: Option<u32>) -> bool {
    v["event"]["kind"] == "alert"
        && v["rule"]["id"] == rule
        && pid.is_none_or(|p| v["process"]["pid"] == p)
}

/// Wait for the alert; fail with the near misses (alerts of the rule elsewhere, and what the
/// agent saw of the target: a lost event reads differently from a misjudged one).
fn expect_alert(rule: &str, pid: Option<u32>, target: &Path) -> Value {
    let mut e = Expect::alert(rule).mentions(target);
    if let Some(p) = pid {
        e = e.pid(p);
    }
    agent().expect(e, WITHIN)
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

#[test]
fn python_hiding_snapshots_is_critical_and_names_the_diff() {
    let d = dir("hide");
    let img = image(&d, "vm1.qcow2", &["s1", "s2", "s3"]);
    let r = python(&format!(
        "import os; fd=os.open({:?}, os.O_RDWR); os.pwrite(fd, (0).to_bytes(4,'big'), 60)",
        img.to_str().unwrap()
    ));
    let a = expect_alert("SM-Q002", Some(r.pid), &img);
    assert_eq!(a["snapmon"]["severity"], "critical");
    assert_eq!(a["event"]["severity"], 99);
    assert_eq!(a["process"]["name"], "python3");
    assert!(message(&a).starts_with("python3 (←"), "{}", message(&a));
    assert!(
        message(&a).contains("set nb_snapshots 3→0 in vm1.qcow2"),
        "{}",
        message(&a)
    );
    assert_eq!(a["threat"]["technique"]["id"][0], "T1490");
}

#[test]
fn random_bytes_over_the_header_destroy_it() {
    let d = dir("magic");
    let img = image(&d, "vm1.qcow2", &["s1"]);
    let r = run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", img.display()),
            "bs=4096",
            "count=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    let a = expect_alert("SM-Q005", Some(r.pid), &img);
    assert_eq!(a["snapmon"]["severity"], "critical");
    assert!(message(&a).contains("magic QFI\\xfb→"), "{}", message(&a));
}

#[test]
fn backing_file_redirected_to_tmp_is_critical() {
    let d = dir("backing");
    let img = image(&d, "vm1.qcow2", &[]);
    let r = python(&format!(
        "import os; fd=os.open({:?}, os.O_RDWR); n=b'/tmp/evil.qcow2'; os.pwrite(fd, n, 0x300); \
         os.pwrite(fd, (0x300).to_bytes(8,'big')+len(n).to_bytes(4,'big'), 8)",
        img.to_str().unwrap()
    ));
    // Two writes: the name, then the header pointer. An agent that reads the header late (as
    // under emulation) may also alert on the name write alone (region only, high); the alert
    // carrying the redirect is the one that must be critical.
    expect_alert("SM-Q004", Some(r.pid), &img);
    let a = agent().expect(
        Expect::alert("SM-Q004")
            .pid(r.pid)
            .message_has("backing_file (none)→/tmp/evil.qcow2"),
        WITHIN,
    );
    assert_eq!(a["snapmon"]["severity"], "critical", "{}", message(&a));
}

#[test]
fn a_renamed_copy_of_qemu_img_is_not_trusted() {
    let d = dir("rogue");
    let img = image(&d, "vm1.qcow2", &["s1", "s2"]);
    let rogue = d.join("qemu-img");
    std::fs::copy("/usr/bin/qemu-img", &rogue).unwrap();
    let r = run(
        rogue.to_str().unwrap(),
        &["snapshot", "-d", "s1", img.to_str().unwrap()],
    );
    let a = expect_alert("SM-Q002", Some(r.pid), &img);
    assert_eq!(a["process"]["name"], "qemu-img");
    assert!(message(&a).contains("nb_snapshots 2→1"), "{}", message(&a));
    expect_alert("SM-Q001", Some(r.pid), &img);
}

#[test]
fn mass_rename_of_images_fires_once_for_the_batch() {
    let d = dir("rename");
    for i in 0..6 {
        image(&d, &format!("disk{i}.qcow2"), &[]);
    }
    let r = run(
        "sh",
        &[
            "-c",
            &format!(
                "for f in {}/disk*.qcow2; do mv \"$f\" \"$f.locked\"; done",
                d.display()
            ),
        ],
    );
    let _ = r;
    let a = expect_alert("SM-R001", None, &d.join("disk4.qcow2"));
    assert_eq!(a["snapmon"]["severity"], "critical");
    assert!(
        message(&a).contains("renamed 5 disk images"),
        "{}",
        message(&a)
    );
    assert_eq!(
        a["snapmon"]["related_sequence"].as_array().map(|v| v.len()),
        Some(4)
    );
}

#[test]
fn hidden_file_and_ransom_note_in_the_store() {
    let d = dir("plant");
    let hidden = d.join(".stash");
    let r = run("touch", &[hidden.to_str().unwrap()]);
    let a = expect_alert("SM-H001", Some(r.pid), &hidden);
    assert!(
        message(&a).contains("`.stash`") && message(&a).contains("dot-file"),
        "{}",
        message(&a)
    );
    let note = d.join("HOW_TO_RECOVER_FILES.txt");
    let r = python(&format!(
        "open({:?}, 'w').write('pay')",
        note.to_str().unwrap()
    ));
    expect_alert("SM-R002", Some(r.pid), &note);
}

#[test]
fn backdated_image_timestamps_are_anti_forensics() {
    let d = dir("ts");
    let img = image(&d, "vm1.qcow2", &[]);
    let r = run("touch", &["-d", "2020-01-01 00:00", img.to_str().unwrap()]);
    let a = expect_alert("SM-T001", Some(r.pid), &img);
    assert_eq!(a["threat"]["technique"]["id"][0], "T1070");
    assert_eq!(
        a["threat"]["technique"]["subtechnique"]["id"][0],
        "T1070.006"
    );
    assert_eq!(a["threat"]["tactic"]["id"][0], "TA0005");
}

#[test]
fn routine_qemu_img_work_stays_quiet() {
    let d = dir("benign");
    let img = image(&d, "vm.qcow2", &["s1", "s2"]);
    let s = img.to_str().unwrap();
    let mut pids = vec![];
    for args in [
        vec!["snapshot", "-l", s],
        vec!["snapshot", "-a", "s1", s],
        vec!["snapshot", "-d", "s2", s],
        vec!["resize", "-q", s, "32M"],
        vec!["amend", "-f", "qcow2", "-o", "lazy_refcounts=on", s],
        vec!["bitmap", "--add", s, "b0"],
    ] {
        pids.push(run("qemu-img", &args).pid);
    }
    let loud = agent().settle(Duration::from_millis(800), |v| {
        v["event"]["kind"] == "alert"
            && v["event"]["severity"].as_u64().unwrap_or(0) >= 47
            && v["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(d.to_str().unwrap()))
    });
    assert!(
        loud.is_empty(),
        "{:#?}",
        loud.iter().map(message).collect::<Vec<_>>()
    );
}

/// The cgroup2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2() -> PathBuf {
    let m = std::fs::read_to_string("/proc/self/mounts").unwrap();
    m.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount")
}

/// Run `qemu-img snapshot -c` the way a container runtime starts a workload at the kernel
/// level: new pid and mount namespaces, join the cgroup `scope` (made here, under
/// system.slice), exec. Returns the cgroup (removed by the caller's guard).
fn qemu_img_in_cgroup(scope: &str, img: &Path, snap: &str) -> PathBuf {
    let cg = cgroup2().join("system.slice").join(scope);
    std::fs::create_dir_all(&cg).unwrap();
    run(
        "unshare",
        &[
            "--pid",
            "--mount",
            "--fork",
            "--",
            "sh",
            "-c",
            &format!(
                "echo 0 > {}/cgroup.procs && exec qemu-img snapshot -c {snap} {}",
                cg.display(),
                img.display()
            ),
        ],
    );
    cg
}

struct RmCgroup(PathBuf);
impl Drop for RmCgroup {
    fn drop(&mut self) {
        // Empty once its only process was reaped; that can trail the exit a little.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn quiet_about(rule: &str, target: &Path) -> Vec<String> {
    let t = target.to_string_lossy().into_owned();
    agent()
        .settle(Duration::from_millis(800), |v| {
            is_alert(v, rule, None) && v["file"]["path"].as_str() == Some(&t)
        })
        .iter()
        .map(|v| message(v).to_string())
        .collect()
}

#[test]
fn qemu_img_inside_a_container_cgroup_is_an_unusual_lineage() {
    let d = dir("container");
    let img = image(&d, "vm.qcow2", &[]);
    // A docker-style scope: 64 hex digits, unique per run (so are the 12 the message shows).
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let id = format!("{ns:016x}{:016x}", std::process::id()).repeat(2);
    let cg = RmCgroup(qemu_img_in_cgroup(
        &format!("docker-{id}.scope"),
        &img,
        "s1",
    ));
    let a = expect_alert("SM-L001", None, &img);
    assert_eq!(a["snapmon"]["severity"], "high");
    assert_eq!(a["process"]["name"], "qemu-img");
    assert_eq!(a["container"]["id"], id.as_str(), "{a}");
    assert!(
        message(&a).contains(&format!("inside container {}", &id[..12]))
            && message(&a).contains("did nb_snapshots 0→1 on vm.qcow2"),
        "{}",
        message(&a)
    );
    drop(cg);
    // The same run in a cgroup no runtime would name: trusted, quiet.
    let plain = image(&d, "plain.qcow2", &[]);
    let _cg = RmCgroup(qemu_img_in_cgroup(
        &format!("snapmon-e2e-{}.scope", std::process::id()),
        &plain,
        "s1",
    ));
    let loud = quiet_about("SM-L001", &plain);
    assert!(loud.is_empty(), "{loud:#?}");
}

#[test]
fn qemu_img_from_a_non_admin_users_shell_is_an_unusual_lineage() {
    let d = dir("nonadmin");
    let img = image(&d, "vm.qcow2", &[]);
    let nobody = run("id", &["-u", "nobody"]).stdout.trim().to_string();
    std::os::unix::fs::chown(&img, Some(nobody.parse().unwrap()), None).unwrap();
    // `; true` keeps bash as the parent (a lone command would be exec'd in its place).
    let shell = |snap: &str| format!("qemu-img snapshot -c {snap} {}; true", img.display());
    run(
        "setpriv",
        &[
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "bash",
            "-c",
            &shell("s1"),
        ],
    );
    let a = expect_alert("SM-L001", None, &img);
    assert_eq!(a["process"]["user"]["id"], nobody.as_str(), "{a}");
    assert_eq!(a["process"]["parent"]["name"], "bash", "{a}");
    assert!(
        message(&a).contains(&format!("from a shell of non-admin uid {nobody}")),
        "{}",
        message(&a)
    );
    // root (an admin user) doing the same from a shell: quiet.
    let root_img = image(&d, "root.qcow2", &[]);
    run(
        "bash",
        &[
            "-c",
            &format!("qemu-img snapshot -c s1 {}; true", root_img.display()),
        ],
    );
    let loud = quiet_about("SM-L001", &root_img);
    assert!(loud.is_empty(), "{loud:#?}");
}

/// Highest in-kernel filtered-write total the agent has reported so far.
fn filtered_total() -> u64 {
    agent()
        .records()
        .iter()
        .filter(|v| v["event"]["action"] == "filtered")
        .filter_map(|v| v["snapmon"]["metric"]["kernel_total"].as_u64())
        .max()
        .unwrap_or(0)
}

fn is_write_by(v: &Value, pid: u32) -> bool {
    v["event"]["kind"] == "event" && v["process"]["pid"] == pid && v["snapmon"]["write"].is_object()
}

#[test]
fn trusted_data_writes_are_dropped_in_the_kernel_but_metadata_and_untrusted_writes_arrive() {
    let d = dir("filter");
    let img = d.join("vm1.qcow2");
    let s = img.to_str().unwrap();
    // Preallocated metadata and no snapshot yet: guest writes overwrite allocated clusters in
    // place (no copy-on-write, no growth), so only data clusters are written.
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
            s,
            "16M",
        ],
    );
    agent().settle(Duration::from_millis(600), |_| false);
    let before = filtered_total();

    // (a) QEMU writing guest data: counted in the kernel, no events.
    let b = run(
        "qemu-img",
        &[
            "bench", "-w", "-c", "300", "-s", "4096", "-S", "8192", "-o", "4194304", s,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while filtered_total() < before + 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        filtered_total() >= before + 300,
        "filtered {} → {}",
        before,
        filtered_total()
    );
    let leaked: Vec<String> = agent()
        .records()
        .into_iter()
        .filter(|v| is_write_by(v, b.pid))
        .map(|v| {
            format!(
                "{}+{}",
                v["snapmon"]["write"]["offset"], v["snapmon"]["write"]["length"]
            )
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "trusted data writes reported: {leaked:?}"
    );

    // (b) QEMU's header writes still arrive with their diff …
    let c = run("qemu-img", &["snapshot", "-c", "s1", s]);
    agent().expect(
        Expect::any_event()
            .pid(c.pid)
            .write()
            .changes("nb_snapshots"),
        WITHIN,
    );
    // … and an untrusted writer is never filtered: its data write arrives, its header write alerts.
    let p = python(&format!(
        "import os; fd=os.open({s:?}, os.O_RDWR); os.pwrite(fd, b'x'*4096, 4194304)"
    ));
    // Not filtered.
    agent().expect(Expect::any_event().pid(p.pid).write(), WITHIN);
    let h = python(&format!(
        "import os; fd=os.open({s:?}, os.O_RDWR); os.pwrite(fd, (0).to_bytes(4,'big'), 60)"
    ));
    let a = expect_alert("SM-Q002", Some(h.pid), &img);
    assert!(message(&a).contains("nb_snapshots 1→0"), "{}", message(&a));
}
