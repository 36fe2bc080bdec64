//! End-to-end findings of issue #15, "no local user can silence, stall or fool the agent":
//! a FIFO planted by `nobody` under an image's name in a 1777 store (opened blocking, it
//! stalled the agent's main thread: later tampering went unreported and SIGTERM unheeded),
//! and a policy file a non-root user can write (a blanket exception and one SIGHUP silenced
//! every rule), and paths longer than the 255 bytes the kernel copies (a mass rename to long
//! names went unalerted, deep mkdirs all showed one cut path) or stores deeper than the
//! scan went (writes there were not reported). Attackers run as `nobody`; each test has an
//! agent of its own.
// xtask-suite: newest-guest

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{
    action, dest, hide_snapshots, image_with_3_snapshots, nobody_py, open_store, q002, run, Agent,
    Expect, SETPRIV, SYSTEM_PYTHON,
};

/// A `nobody` process left running; killed (by its pid) when dropped.
struct Background(Child);

impl Background {
    fn start(code: &str) -> Background {
        let child = Command::new("setpriv")
            .args(SETPRIV)
            .args([SYSTEM_PYTHON, "-c", code])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("setpriv (util-linux)");
        Background(child)
    }
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn state_from(a: &mut Agent, mark: u64, timeout: Duration, actions: &[&str]) -> Option<Value> {
    a.wait_from(mark, timeout, |v| {
        v["event"]["kind"] == "state"
            && actions
                .iter()
                .any(|x| v["event"]["action"].as_str() == Some(x))
    })
}

#[test]
fn a_fifo_under_an_image_name_stalls_nothing() {
    let mut a = Agent::spawn("unblind-fifo", &[], &[]).unwrap();
    let store = open_store(&a);

    // 1. A FIFO named like an image, held open for reading: that open blocks until a writer
    //    comes, and the agent must not be it (nor block as a reader itself).
    let fifo = store.join("x.qcow2");
    let mut reader = Background::start(&format!(
        "import os; os.mkfifo({0:?}); open({0:?}, 'rb').read()",
        fifo.to_str().unwrap()
    ));
    // 2. nobody's own image, written with more header than the kernel captures (so the agent
    //    re-reads the header by path) and at once replaced by a FIFO nobody ever writes.
    let own = store.join("own.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", own.to_str().unwrap(), "16M"],
    );
    run("chown", &["nobody:nogroup", own.to_str().unwrap()]);
    nobody_py(&format!(
        "import os, time\n\
         p = {0:?}\n\
         fd = os.open(p, os.O_RDWR); head = os.pread(fd, 65536, 0)\n\
         time.sleep(1)\n\
         os.mkfifo(p + '.fifo')\n\
         os.pwrite(fd, head, 0); os.rename(p + '.fifo', p)",
        own.to_str().unwrap()
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fifo.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fifo.exists(), "nobody's FIFO was not made");

    // 3. Root tampering in the same store afterwards must still alert, promptly.
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    let (pid, mark) = hide_snapshots(&a, &img);
    if q002(&mut a, mark, pid, Duration::from_secs(5)).is_none() {
        // A stalled agent ignores SIGTERM too: `stop` ends it with SIGKILL, so the test
        // fails instead of hanging in the agent's Drop.
        let heeded = a.stop(Duration::from_secs(2));
        panic!("no SM-Q002 for nb_snapshots 3 → 0 after nobody planted FIFOs (SIGTERM heeded: {heeded}): the agent is stalled");
    }
    assert!(
        reader.running(),
        "the agent opened nobody's FIFO for writing: the blocked reader was released"
    );

    // 4. SIGTERM is heeded: the `stopped` record within 2 s, then the process exits (tearing
    //    the probes down takes the kernel a few seconds more on some hosts).
    let t0 = Instant::now();
    a.signal(libc::SIGTERM);
    // Read the file, not `wait_from`: the agent exiting is expected here.
    while !snapmon_e2e::json_lines(&a.out)
        .iter()
        .any(|v| v["event"]["kind"] == "state" && v["event"]["action"] == "stopped")
    {
        if t0.elapsed() > Duration::from_secs(2) {
            a.stop(Duration::from_secs(1));
            panic!("no `stopped` record within 2 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.stop(Duration::from_secs(20)), "the agent did not exit");
    snapmon_e2e::note(&format!(
        "stopped and exited {:?} after SIGTERM",
        t0.elapsed()
    ));
    drop(reader);
}

/// A root-owned 0755 directory under /tmp (root's, sticky) holding the default policy as a
/// root-owned 0644 file: what an admin writes, and what the agent trusts.
fn admin_policy(tag: &str) -> (PathBuf, PathBuf, String) {
    let out = Command::new(snapmon_e2e::bin())
        .args(["policy", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let default = String::from_utf8(out.stdout).unwrap();
    let dir = std::env::temp_dir().join(format!("snapmon-unblind-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, &default).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, policy, default)
}

/// Every rule id, from `policy check`'s rule list.
fn all_rule_ids(policy: &Path) -> Vec<String> {
    let out = run(
        snapmon_e2e::bin().to_str().unwrap(),
        &["policy", "check", policy.to_str().unwrap()],
    );
    let ids: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("SM-"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert!(ids.len() > 10, "{}", out.stdout);
    ids
}

#[test]
fn a_policy_others_can_write_is_refused_at_start() {
    let (dir, policy, _) = admin_policy("start");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut child = Command::new(snapmon_e2e::bin())
        .args(["run", "--format", "json", "--config"])
        .arg(&policy)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // An agent that takes the file runs until stopped: give it the time a refusal needs.
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent started with a policy anyone can write");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one sentence: {e}");
    let p = policy.display();
    assert!(
        e.contains(&format!("{p}: not trusted"))
            && e.contains("(mode 0666)")
            && e.contains(&format!("chmod go-w {p}"))
            && e.contains("--insecure-config"),
        "{e}"
    );
    // The escape hatch starts it, and says so in the `started` record.
    let a = Agent::spawn(
        "unblind-insecure",
        &["--config", policy.to_str().unwrap(), "--insecure-config"],
        &[],
    )
    .expect("--insecure-config must start");
    let warnings = a.started["snapmon"]["state"]["warnings"].to_string();
    assert!(
        warnings.contains("--insecure-config") && warnings.contains(&p.to_string()),
        "{warnings}"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_policy_made_writable_and_silenced_by_nobody_is_not_reloaded() {
    let (dir, policy, _) = admin_policy("reload");
    let mut a = Agent::spawn(
        "unblind-reload",
        &["--config", policy.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let store = open_store(&a);
    let rules = all_rule_ids(&policy);

    // The admin's mistake; then nobody adds an exception for everything, and any SIGHUP
    // (a logrotate, a package upgrade) would apply it.
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    nobody_py(&format!(
        "open({:?}, 'a').write('\\n[[exception]]\\nrules = {:?}\\nexecutable = \"/**\"\\n')",
        policy.to_str().unwrap(),
        rules
    ));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("executable = \"/**\""), "{text}");
    // The file itself is a valid policy: only its permissions make it refused.
    run(
        snapmon_e2e::bin().to_str().unwrap(),
        &["policy", "check", policy.to_str().unwrap()],
    );

    let mark = a.mark();
    a.signal(libc::SIGHUP);
    let r = state_from(
        &mut a,
        mark,
        Duration::from_secs(20),
        &["reloaded", "reload_failed"],
    )
    .expect("no reload record after SIGHUP");
    assert_eq!(r["event"]["action"], "reload_failed", "{r}");
    let err = r["snapmon"]["state"]["error"].as_str().unwrap_or("");
    assert!(
        err.contains(&format!("{}: not trusted", policy.display())) && err.contains("mode 0666"),
        "{r}"
    );

    // The running policy stayed: root's tamper still alerts.
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    let (pid, mark) = hide_snapshots(&a, &img);
    q002(&mut a, mark, pid, Duration::from_secs(5))
        .expect("SM-Q002 silenced by a policy nobody wrote");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nobody`'s python, run to completion: its pid.
fn nobody_py_pid(code: &str) -> u32 {
    nobody_py(code).pid
}

/// A path the agent names as `want`, or as the kernel's cut copy of it (`…` appended, and
/// the record marks that path `path_truncated`). None when it names something else.
fn named(v: &Value, shown: Option<&str>, which: &str, want: &str) -> Option<bool> {
    let shown = shown?;
    if shown == want {
        return Some(true);
    }
    let marked = v["snapmon"]["detail"]["path_truncated"]
        .as_str()
        .is_some_and(|m| m.split(',').any(|w| w == which));
    let head = shown.strip_suffix('…')?;
    (marked && want.starts_with(head) && head.len() >= 255).then_some(false)
}

#[test]
fn a_mass_rename_to_names_past_255_bytes_alerts_and_names_them() {
    let mut a = Agent::spawn("unblind-longname", &[], &[]).unwrap();
    let store = open_store(&a);
    // Paths of ~290 bytes (under PATH_MAX): the kernel copies 255, which ends inside the
    // name, before its extension. The number comes first, as ransomware keeps the old name.
    let pad = "x".repeat(230);
    let imgs: Vec<String> = (0..6)
        .map(|i| {
            let p = store.join(format!("vm{i}-{pad}.qcow2"));
            let s = p.to_str().unwrap().to_string();
            run("qemu-img", &["create", "-q", "-f", "qcow2", &s, "1M"]);
            run("chown", &["nobody:nogroup", &s]);
            s
        })
        .collect();
    assert!(imgs
        .iter()
        .all(|p| p.len() > 255 + ".qcow2".len() && p.len() < 4000));
    let mark = a.mark();
    let pid = nobody_py_pid(&format!(
        "import os\nfor p in {imgs:?}: os.rename(p, p + '.locked')"
    ));
    // A miss lists the renames seen (the near misses: records by the same pid).
    let alert = a.expect(
        Expect::alert("SM-R001").pid(pid).since(mark),
        Duration::from_secs(10),
    );
    // The alert's evidence is one of the renames, named in full (or marked cut).
    let (src, dst) = (alert["file"]["path"].as_str(), dest(&alert));
    let i = imgs
        .iter()
        .position(|p| named(&alert, src, "file", p).is_some())
        .unwrap_or_else(|| panic!("the alert names no image: {alert}"));
    let whole = named(&alert, src, "file", &imgs[i]).unwrap()
        && named(&alert, dst, "target", &format!("{}.locked", imgs[i]))
            .unwrap_or_else(|| panic!("the destination is not vm{i}'s: {alert}"));
    snapmon_e2e::note(&format!(
        "SM-R001 on long names; evidence named {}",
        if whole { "in full" } else { "cut, marked" }
    ));
}

#[test]
fn mkdirs_past_255_bytes_are_each_named_or_marked_cut() {
    let a = Agent::spawn("unblind-deepmkdir", &[], &[]).unwrap();
    let store = open_store(&a);
    // 30 levels of 19 bytes: the last 15 or so run past the 255 bytes the kernel copies.
    let mut dirs = vec![];
    let mut p = store.clone();
    for i in 0..30 {
        p = p.join(format!("level-{i:02}-aaaaaaaaaa"));
        dirs.push(p.to_str().unwrap().to_string());
    }
    let deep = dirs.iter().filter(|d| d.len() > 255).count();
    assert!(deep >= 15, "{deep}");
    let pid = nobody_py_pid(&format!("import os\nfor d in {dirs:?}: os.mkdir(d)"));
    let mut seen = vec![];
    let end = Instant::now() + Duration::from_secs(10);
    while seen.len() < dirs.len() && Instant::now() < end {
        seen = a
            .records()
            .into_iter()
            .filter(|v| action(v) == "mkdir" && v["process"]["pid"] == pid)
            .collect();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen.len(), dirs.len(), "{}", snapmon_e2e::brief(&seen));
    // In order, each event names its own directory, or its cut copy marked as such.
    let mut whole = 0;
    for (v, d) in seen.iter().zip(&dirs) {
        match named(v, v["file"]["path"].as_str(), "file", d) {
            Some(true) => whole += 1,
            Some(false) => {}
            None => panic!("mkdir of {d} ({} bytes) shown as {v}", d.len()),
        }
    }
    snapmon_e2e::note(&format!(
        "{whole} of {} mkdirs named in full ({deep} past 255 bytes)",
        dirs.len()
    ));
}

#[test]
fn an_image_twenty_levels_deep_in_a_store_is_watched_from_the_start() {
    // The store exists, with its tree, before the agent starts and scans it.
    let store = std::env::temp_dir().join(format!("snapmon-unblind-deep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let mut d = store.join("images");
    for i in 0..20 {
        d = d.join(format!("l{i}"));
    }
    std::fs::create_dir_all(&d).unwrap();
    let img = image_with_3_snapshots(&d, "vm.qcow2");
    // And a tree deeper than the default scan depth (256 levels): warned about at start.
    let mut far = store.join("far");
    for _ in 0..260 {
        far = far.join("d");
    }
    std::fs::create_dir_all(&far).unwrap();
    let mut a = Agent::spawn("unblind-deepscan", &[], std::slice::from_ref(&store)).unwrap();
    let (pid, mark) = hide_snapshots(&a, &img);
    q002(&mut a, mark, pid, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no SM-Q002 for an image 20 levels down a store"));
    let warnings = a.started["snapmon"]["state"]["warnings"].to_string();
    assert!(
        warnings.contains("deeper than 256 levels") && warnings.contains("scan_depth"),
        "no scan-depth warning in `started`: {warnings}"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&store);
}
