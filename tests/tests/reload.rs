//! Live policy reload end-to-end: an agent started with `--config FILE` alerts on an attack;
//! after the file gains a structured exception for that actor and target and the agent gets
//! SIGHUP, it reports `reloaded` and the same attack is quiet while the same attack elsewhere
//! still alerts; after a broken file and SIGHUP it reports `reload_failed` with the error's
//! position and keeps the last good policy (the exception stays in force).
// xtask-suite: newest-guest

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{hide_snapshots as hide, run, Agent, Expect};

const WITHIN: Duration = Duration::from_secs(1);

fn image(d: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(d).unwrap();
    let img = d.join(name);
    let s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
    for sn in ["s1", "s2"] {
        run("qemu-img", &["snapshot", "-c", sn, s]);
    }
    img
}

/// The SM-Q002 alert for `pid` after `mark`; fails with the near misses.
fn q002(a: &mut Agent, mark: u64, pid: u32) -> Value {
    a.expect(Expect::alert("SM-Q002").pid(pid).since(mark), WITHIN)
}

/// The attack was seen (its classified write arrived) and raised no SM-Q002.
fn assert_seen_but_quiet(a: &mut Agent, mark: u64, pid: u32, why: &str) {
    a.expect(
        Expect::event("pwrite64").pid(pid).since(mark),
        Duration::from_secs(5),
    );
    // Alerts follow their event at once; give a slow machine a margin all the same.
    let alert = snapmon_e2e::q002(a, mark, pid, Duration::from_millis(800));
    assert!(alert.is_none(), "{why}: {alert:#?}");
}

fn state_after(a: &mut Agent, mark: u64, actions: &[&str]) -> Value {
    a.wait_from(mark, Duration::from_secs(20), |v| {
        v["event"]["kind"] == "state"
            && actions
                .iter()
                .any(|x| v["event"]["action"].as_str() == Some(x))
    })
    .unwrap_or_else(|| panic!("no {actions:?} record after SIGHUP"))
}

#[test]
fn sighup_applies_a_good_policy_and_keeps_it_over_a_broken_one() {
    let default = Command::new(snapmon_e2e::bin())
        .args(["policy", "default"])
        .output()
        .unwrap();
    assert!(default.status.success());
    let default = String::from_utf8(default.stdout).unwrap();
    let base = std::env::temp_dir().join(format!("snapmon-reload-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let policy = base.join("policy.toml");
    std::fs::write(&policy, &default).unwrap();
    let mut a = Agent::spawn("reload", &["--config", policy.to_str().unwrap()], &[]).unwrap();
    let (trusted_dir, other_dir) = (a.dir("rules").join("backup"), a.dir("rules").join("vms"));
    let img = image(&trusted_dir, "vm.qcow2");

    // 1. The file's policy is the default one: the attack alerts.
    let (pid, mark) = hide(&a, &img);
    let first = q002(&mut a, mark, pid);
    let exe = first["process"]["executable"].as_str().unwrap().to_string();

    // 2. A structured exception for exactly this actor, action and target; SIGHUP.
    let excepted = format!(
        "{default}\n[[exception]]\nrules = [\"SM-Q002\", \"SM-Q001\"]\nexecutable = {exe:?}\n\
         actions = [\"pwrite64\"]\ntarget = \"{}/*.qcow2\"\n",
        trusted_dir.display()
    );
    std::fs::write(&policy, &excepted).unwrap();
    let mark = a.mark();
    let t0 = Instant::now();
    a.signal(libc::SIGHUP);
    let r = state_after(&mut a, mark, &["reloaded", "reload_failed"]);
    assert_eq!(r["event"]["action"], "reloaded", "{r}");
    assert_eq!(
        r["snapmon"]["state"]["policy"],
        policy.to_str().unwrap(),
        "{r}"
    );
    snapmon_e2e::note(&format!("reloaded record {:?} after SIGHUP", t0.elapsed()));
    let img = image(&trusted_dir, "vm2.qcow2");
    let (pid, mark) = hide(&a, &img);
    assert_seen_but_quiet(&mut a, mark, pid, "excepted actor and target");
    // The exception is that actor on that target, not the rule switched off.
    let (pid, mark) = hide(&a, &image(&other_dir, "vm1.qcow2"));
    // The same attack elsewhere still alerts.
    q002(&mut a, mark, pid);

    // 3. A broken file (and without the exception): refused, the running policy kept.
    std::fs::write(&policy, format!("{default}\n[[rule]]\nid = \"SM-NOPE\"\n")).unwrap();
    let broken_line = default.lines().count() + 3;
    let mark = a.mark();
    a.signal(libc::SIGHUP);
    let r = state_after(&mut a, mark, &["reloaded", "reload_failed"]);
    assert_eq!(r["event"]["action"], "reload_failed", "{r}");
    let err = r["snapmon"]["state"]["error"].as_str().unwrap_or("");
    assert!(
        err.contains("SM-NOPE") && err.contains(&format!("{}:{broken_line}:", policy.display())),
        "{r}"
    );
    let img = image(&trusted_dir, "vm3.qcow2");
    let (pid, mark) = hide(&a, &img);
    assert_seen_but_quiet(
        &mut a,
        mark,
        pid,
        "after a failed reload the exception must hold",
    );
    let (pid, mark) = hide(&a, &image(&other_dir, "vm2.qcow2"));
    // And the rule itself stays on.
    q002(&mut a, mark, pid);
    drop(a);
    let _ = std::fs::remove_dir_all(&base);
}

/// Rate windows survive a reload: `nobody` renames three images to `.locked`, root sends
/// SIGHUP (the policy gains a `[[store]]`, nothing about the rules), `nobody` renames two
/// more: five within the window, SM-R001 fires. The `reloaded` record says the new store
/// needs a restart.
#[test]
fn a_reload_between_renames_does_not_reset_the_rate() {
    use std::os::unix::fs::PermissionsExt as _;
    let default = Command::new(snapmon_e2e::bin())
        .args(["policy", "default"])
        .output()
        .unwrap();
    let default = String::from_utf8(default.stdout).unwrap();
    let base = std::env::temp_dir().join(format!("snapmon-reload-rate-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let policy = base.join("policy.toml");
    std::fs::write(&policy, &default).unwrap();
    let mut a = Agent::spawn("reload-rate", &["--config", policy.to_str().unwrap()], &[]).unwrap();
    let store = a.dir("rules").join("shared");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let imgs: Vec<String> = (0..5)
        .map(|i| {
            let p = store.join(format!("vm{i}.qcow2"));
            let s = p.to_str().unwrap().to_string();
            run("qemu-img", &["create", "-q", "-f", "qcow2", &s, "1M"]);
            run("chown", &["nobody:nogroup", &s]);
            s
        })
        .collect();
    let renames = |which: &[String]| {
        let code = format!("import os\nfor p in {which:?}: os.rename(p, p + '.locked')");
        run(
            "setpriv",
            &[
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                &code,
            ],
        );
    };
    let mark = a.mark();
    renames(&imgs[..3]);
    assert!(
        a.find(
            &Expect::alert("SM-R001").since(mark),
            Duration::from_secs(2)
        )
        .is_none(),
        "SM-R001 after 3 renames (threshold 5)"
    );
    let added = a.dir("rules").join("later");
    std::fs::create_dir_all(&added).unwrap();
    std::fs::write(
        &policy,
        format!(
            "{default}\n[[store]]\npath = {:?}\n",
            added.to_str().unwrap()
        ),
    )
    .unwrap();
    let mark = a.mark();
    a.signal(libc::SIGHUP);
    let r = state_after(&mut a, mark, &["reloaded", "reload_failed"]);
    assert_eq!(r["event"]["action"], "reloaded", "{r}");
    let notes = r["snapmon"]["state"]["restart_needed"].to_string();
    assert!(
        notes.contains(added.to_str().unwrap()) && notes.contains("restart"),
        "{r}"
    );
    let mark = a.mark();
    renames(&imgs[3..]);
    // Missing, the reload reset the rate window.
    let alert = a.expect(Expect::alert("SM-R001").since(mark), Duration::from_secs(5));
    snapmon_e2e::note(&format!("{}", alert["message"]));
    drop(a);
    let _ = std::fs::remove_dir_all(&base);
}
