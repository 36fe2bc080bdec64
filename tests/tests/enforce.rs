//! Enforcement end-to-end. On a kernel with BPF LSM (the VM harness sets
//! `SNAPMON_E2E_EXPECT_LSM=1`): untrusted writers get EPERM, trusted qemu-img still works,
//! dry-run denies nothing but reports. On a kernel without it (this host): `--enforce`
//! refuses to start with one clear sentence, `--enforce=best-effort` runs detection only.
// xtask-suite: host-prefix=host_

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::expect_lsm;

fn start_timeout() -> Duration {
    let s = std::env::var("SNAPMON_E2E_START_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(s)
}

fn store(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snapmon-enforce-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let img = d.join("vm.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(ok.success());
    d
}

struct Running {
    child: Child,
    out: PathBuf,
}

impl Running {
    fn start(args: &[&str], out: PathBuf) -> Running {
        let _ = std::fs::remove_file(&out);
        let child = Command::new(snapmon_e2e::bin())
            .args(["run", "--format", "json", "--output"])
            .arg(&out)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut r = Running { child, out };
        let end = Instant::now() + start_timeout();
        while r
            .records()
            .iter()
            .all(|v| v["event"]["action"] != "started")
        {
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!("agent exited before `started`: {st}");
            }
            assert!(Instant::now() < end, "no `started` record");
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }
    fn records(&self) -> Vec<Value> {
        let Ok(f) = std::fs::File::open(&self.out) else {
            return vec![];
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }
    fn alerts(&self, rule: &str) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(800));
        self.records()
            .into_iter()
            .filter(|v| v["event"]["kind"] == "alert" && v["rule"]["id"] == rule)
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// Run a command; Ok(stdout) on success, Err(stderr) on failure.
fn attempt(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn python_pwrite(img: &Path) -> Result<String, String> {
    attempt(
        "python3",
        &[
            "-c",
            &format!(
                "import os; fd=os.open('{}', os.O_RDWR); os.pwrite(fd, b'\\0\\0\\0\\0', 60)",
                img.display()
            ),
        ],
    )
}

#[test]
fn host_enforce_without_bpf_lsm_is_refused_in_one_sentence_and_best_effort_detects() {
    assert!(
        !expect_lsm(),
        "this test is for kernels without BPF LSM (cargo xtask test)"
    );
    let d = store("refuse");
    let o = Command::new(snapmon_e2e::bin())
        .args(["run", "--format", "json", "--enforce", "--protect"])
        .arg(&d)
        .output()
        .unwrap();
    // 2: the run could not start (every subcommand: 1 is for findings).
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        last.starts_with("snapmon: ") && last.contains("LSM"),
        "{err}"
    );
    let r = Running::start(
        &["--enforce=best-effort", "--protect", d.to_str().unwrap()],
        d.with_extension("jsonl"),
    );
    let started = snapmon_e2e::started_view(&r.records());
    assert_eq!(
        started["snapmon"]["state"]["detail"]["enforcement"]["active"], false,
        "{started}"
    );
    // Detection still works.
    python_pwrite(&d.join("vm.qcow2")).expect("best-effort must not deny");
}

#[test]
fn lsm_untrusted_writers_are_denied_while_trusted_qemu_img_works() {
    assert!(
        expect_lsm(),
        "needs BPF LSM: runs inside `cargo xtask vm-test` (SNAPMON_E2E_EXPECT_LSM=1)"
    );
    let d = store("deny");
    let img = d.join("vm.qcow2");
    let s = img.to_str().unwrap();
    let r = Running::start(
        &[
            "--enforce",
            "--protect",
            d.to_str().unwrap(),
            "--watch",
            d.to_str().unwrap(),
        ],
        d.with_extension("jsonl"),
    );
    let started = snapmon_e2e::started_view(&r.records());
    assert_eq!(
        started["snapmon"]["state"]["detail"]["enforcement"]["active"], true,
        "{started}"
    );

    let e = python_pwrite(&img).expect_err("python write must be denied");
    assert!(
        e.contains("Operation not permitted") || e.contains("PermissionError"),
        "{e}"
    );
    let e = attempt(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={s}"),
            "bs=512",
            "count=1",
            "conv=notrunc",
            "status=none",
        ],
    )
    .expect_err("dd must be denied");
    assert!(e.contains("Operation not permitted"), "{e}");
    assert!(
        attempt("truncate", &["-s", "0", s]).is_err(),
        "truncate must be denied"
    );
    assert!(attempt("rm", &["-f", s]).is_err(), "unlink must be denied");
    assert!(
        attempt("mv", &[s, &format!("{s}.locked")]).is_err(),
        "rename must be denied"
    );
    let fake_dir = std::env::temp_dir().join(format!("snapmon-fakeqemu-{}", std::process::id()));
    std::fs::create_dir_all(&fake_dir).unwrap();
    let fake = fake_dir.join("qemu-img");
    std::fs::copy("/usr/bin/qemu-img", &fake).unwrap();
    assert!(
        attempt(fake.to_str().unwrap(), &["snapshot", "-c", "evil", s]).is_err(),
        "a copied qemu-img is not trusted"
    );

    attempt("qemu-img", &["snapshot", "-c", "s1", s])
        .expect("trusted qemu-img snapshot -c must succeed");
    attempt("qemu-img", &["snapshot", "-d", "s1", s])
        .expect("trusted qemu-img snapshot -d must succeed");

    let denied = r.alerts("SM-E001");
    assert!(
        denied
            .iter()
            .any(|a| a["process"]["name"] == "python3" && a["file"]["path"] == s),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|a| a["process"]["executable"] == fake.to_str().unwrap()),
        "{denied:?}"
    );
    assert!(denied
        .iter()
        .all(|a| a["process"]["executable"] != "/usr/bin/qemu-img"));
    let _ = std::fs::remove_dir_all(&fake_dir);
}

#[test]
fn lsm_dry_run_denies_nothing_but_reports() {
    assert!(
        expect_lsm(),
        "needs BPF LSM: runs inside `cargo xtask vm-test` (SNAPMON_E2E_EXPECT_LSM=1)"
    );
    let d = store("dry");
    let img = d.join("vm.qcow2");
    let r = Running::start(
        &["--enforce", "--dry-run", "--protect", d.to_str().unwrap()],
        d.with_extension("jsonl"),
    );
    python_pwrite(&img).expect("dry-run must not deny");
    let would = r.alerts("SM-E002");
    assert!(
        would.iter().any(|a| a["process"]["name"] == "python3"),
        "{would:?}"
    );
    assert!(r.alerts("SM-E001").is_empty());
}

#[test]
fn lsm_policy_reload_switches_from_monitor_to_enforce() {
    assert!(
        expect_lsm(),
        "needs BPF LSM: runs inside `cargo xtask vm-test` (SNAPMON_E2E_EXPECT_LSM=1)"
    );
    let d = store("reload");
    let img = d.join("vm.qcow2");
    let policy = d.with_extension("toml");
    let write_policy = |mode: &str| {
        std::fs::write(
            &policy,
            format!(
                "[enforce]\nmode = \"{mode}\"\nprotect = [\"{}\"]\n",
                d.display()
            ),
        )
        .unwrap();
    };
    write_policy("monitor");
    let r = Running::start(
        &["--config", policy.to_str().unwrap()],
        d.with_extension("jsonl"),
    );
    python_pwrite(&img).expect("monitor mode must not deny");
    assert!(
        !r.alerts("SM-E002").is_empty(),
        "monitor mode reports would-be denials"
    );

    write_policy("enforce");
    unsafe { libc::kill(r.child.id() as i32, libc::SIGHUP) };
    let end = Instant::now() + Duration::from_secs(20);
    while !r
        .records()
        .iter()
        .any(|v| v["event"]["action"] == "reloaded")
    {
        assert!(Instant::now() < end, "no `reloaded` record after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = python_pwrite(&img).expect_err("enforce mode after reload must deny");
    assert!(
        e.contains("Operation not permitted") || e.contains("PermissionError"),
        "{e}"
    );
    assert!(!r.alerts("SM-E001").is_empty());
}

#[test]
fn lsm_keep_enforcing_outlives_the_agent_until_unpinned() {
    assert!(
        expect_lsm(),
        "needs BPF LSM: runs inside `cargo xtask vm-test` (SNAPMON_E2E_EXPECT_LSM=1)"
    );
    let d = store("keep");
    let img = d.join("vm.qcow2");
    let mut r = Running::start(
        &[
            "--enforce",
            "--keep-enforcing",
            "--protect",
            d.to_str().unwrap(),
        ],
        d.with_extension("jsonl"),
    );
    python_pwrite(&img).expect_err("denied while the agent runs");
    // The agent dies hard: the pinned LSM links keep enforcing.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGKILL) };
    let _ = r.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    let e = python_pwrite(&img).expect_err("still denied after the agent died");
    assert!(
        e.contains("Operation not permitted") || e.contains("PermissionError"),
        "{e}"
    );
    attempt("qemu-img", &["snapshot", "-c", "s1", img.to_str().unwrap()])
        .expect("trusted qemu-img still works");
    // Unpinning removes enforcement.
    std::fs::remove_dir_all("/sys/fs/bpf/snapmon").expect("unpin");
    // The link detaches when its last reference goes, which newer kernels defer (RCU).
    let end = Instant::now() + Duration::from_secs(10);
    while let Err(e) = python_pwrite(&img) {
        assert!(
            Instant::now() < end,
            "still denied 10 s after unpinning: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
