//! The tamper-evident log across crashes: a live agent is SIGKILLed while it writes a keyed,
//! chained file under load, then restarted on the same file. The new run continues on a fresh
//! line after a `log_resumed` record, its `started` record says the previous run was killed,
//! and `verify-log` says "truncated, not tampered" (exit 3), never tampering; edits to the same
//! file are still tampering (exit 1). A clean stop and restart verifies intact (exit 0).
// xtask-suite: host-only

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{bin, eventually, start_raw, Reaped};

/// One agent run writing the chained `log` (and its own stdout records to `truth`).
struct Run {
    /// A run a failing test left is killed, not left writing.
    child: Reaped,
    err: PathBuf,
    started: Value,
}

fn start(work: &Path, log: &Path, key: &Path, n: usize) -> Run {
    let err = work.join(format!("stderr{n}"));
    let truth = work.join(format!("truth{n}.jsonl"));
    let sink = format!(
        "file:{},key_file={},checkpoint_every=50",
        log.display(),
        key.display()
    );
    let (child, started) = start_raw(&work.join("watch"), &["--sink", &sink], &truth, &err);
    Run {
        child,
        err,
        started,
    }
}

impl Run {
    fn stop(mut self) {
        // The agent installs its signal handlers just after the started record: a SIGTERM in
        // between would kill it like SIGKILL (a race for the event-loop rewrite to close).
        std::thread::sleep(Duration::from_millis(500));
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(self.child.wait().unwrap().success());
    }
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verify(files: &[PathBuf], key: &Path) -> (i32, String) {
    let o = Command::new(bin())
        .arg("verify-log")
        .arg("--key")
        .arg(key)
        .args(files)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// A writer in the watched directory that keeps the agent busy until it is killed.
fn load(work: &Path) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os\nfd=os.open({:?}, os.O_RDWR|os.O_CREAT)\nfor i in range(200000): os.pwrite(fd, b'x', i % 4096)",
            work.join("watch/load.raw").to_str().unwrap()
        ))
        .spawn()
        .unwrap()
}

fn setup(tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let work = std::env::temp_dir().join(format!("snapmon-crash-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("watch")).unwrap();
    let key = work.join("log.key");
    std::fs::write(&key, "crash-test-key-0123456789abcdef\n").unwrap();
    (work.clone(), work.join("log.jsonl"), key)
}

#[test]
fn a_sigkilled_agent_leaves_a_truncated_log_never_a_tampered_one() {
    let (work, log, key) = setup("kill");
    let a = start(&work, &log, &key, 1);
    assert!(a.started["snapmon"]["state"]["previous_run"].is_null());
    let mut w = load(&work);
    // Killed while records pour in.
    eventually(Duration::from_secs(300), "records in the log", || {
        let n = std::fs::metadata(&log).map_or(0, |m| m.len());
        (n > 200_000).then_some(()).ok_or(n.to_string())
    });
    a.kill();
    let _ = w.kill();
    let _ = w.wait();
    let size_at_kill = std::fs::metadata(&log).unwrap().len();
    let tail_was_partial = !std::fs::read(&log).unwrap().ends_with(b"\n");

    let b = start(&work, &log, &key, 2);
    let prev = &b.started["snapmon"]["state"]["previous_run"];
    assert_eq!(prev["clean"], false, "{prev}");
    assert_eq!(
        prev["logs"][0]["partial_line_bytes"].as_u64().unwrap() > 0,
        tail_was_partial
    );
    let err2 = std::fs::read_to_string(&b.err).unwrap();
    assert!(
        err2.contains("previous run did not close its log"),
        "{err2}"
    );
    b.stop();
    // The restart began on a fresh line after everything the killed run left.
    let bytes = std::fs::read(&log).unwrap();
    let after = &bytes[size_at_kill as usize..];
    let first_new = String::from_utf8_lossy(after);
    let first_new = first_new
        .trim_start_matches('\n')
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(first_new.contains("\"log_resumed\""), "{first_new:.300}");
    let (code, out) = verify(std::slice::from_ref(&log), &key);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("truncated, not tampered"), "{out}");
    for bad in ["altered", "reordered", "removed", "spliced", "checkpoint"] {
        assert!(
            !out.contains(&format!(": {bad}: ")),
            "{bad} after a crash: {out}"
        );
    }
    edits_are_tampering(&work, &log, &key);
    let _ = std::fs::remove_dir_all(&work);
}

/// A kill that leaves half a line (a write cut short), restarted: still only truncation.
#[test]
fn a_partial_last_line_is_continued_on_a_fresh_line() {
    let (work, log, key) = setup("partial");
    let a = start(&work, &log, &key, 1);
    let mut w = load(&work);
    eventually(Duration::from_secs(300), "records in the log", || {
        let n = std::fs::metadata(&log).map_or(0, |m| m.len());
        (n > 50_000).then_some(()).ok_or(n.to_string())
    });
    a.kill();
    let _ = w.kill();
    let _ = w.wait();
    // Cut the last line in half, as a write the kill interrupted leaves it.
    let data = std::fs::read(&log).unwrap();
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    let last_start = body.iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let cut = last_start + (body.len() - last_start) / 2;
    std::fs::write(&log, &data[..cut]).unwrap();
    let (code, out) = verify(std::slice::from_ref(&log), &key);
    assert_eq!(code, 3, "a cut tail is truncation: {out}");
    let b = start(&work, &log, &key, 2);
    assert!(
        b.started["snapmon"]["state"]["previous_run"]["logs"][0]["partial_line_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    b.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"log_resumed\""))
        .unwrap();
    // The fragment stays, alone on its line, and is not glued to the next record.
    assert_eq!(
        lines[at - 1].as_bytes(),
        &data[last_start..cut],
        "the partial line was changed"
    );
    let (code, out) = verify(std::slice::from_ref(&log), &key);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("partial record of a run that was killed"),
        "{out}"
    );
    assert!(
        !out.contains(": altered: ") && !out.contains(": reordered: "),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Edits to a copy of the crashed-and-resumed log are tampering, each at its line.
fn edits_are_tampering(work: &Path, log: &Path, key: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    // A pwrite event record in the middle (the writer's first event is its `create`, which
    // the `altered` edit would leave as it was).
    let i = lines
        .iter()
        .enumerate()
        .skip(5)
        .find(|(_, l)| l.contains("\"kind\":\"event\"") && l.contains("\"pwrite64\""))
        .map(|(i, _)| i)
        .unwrap();
    type Edit = Box<dyn Fn(&mut Vec<String>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "altered",
            Box::new(move |l| l[i] = l[i].replacen("\"pwrite64\"", "\"pwrite65\"", 1)),
        ),
        (
            "removed",
            Box::new(move |l| {
                l.remove(i);
            }),
        ),
        ("reordered", Box::new(move |l| l.swap(i, i + 1))),
    ];
    for (want, edit) in cases {
        let mut l = lines.clone();
        edit(&mut l);
        assert_ne!(l, lines, "{want}: nothing changed");
        let copy = work.join(format!("edited-{want}.jsonl"));
        std::fs::write(&copy, l.join("\n") + "\n").unwrap();
        let (code, out) = verify(&[copy], key);
        assert_eq!(code, 1, "{want}: {out}");
        assert!(out.contains(&format!(": {want}: ")), "{want}: {out}");
    }
}

#[test]
fn a_clean_stop_and_restart_is_intact_and_says_so() {
    let (work, log, key) = setup("clean");
    start(&work, &log, &key, 1).stop();
    let b = start(&work, &log, &key, 2);
    assert_eq!(
        b.started["snapmon"]["state"]["previous_run"]["clean"], true,
        "{}",
        b.started["snapmon"]["state"]["previous_run"]
    );
    b.stop();
    let (code, out) = verify(std::slice::from_ref(&log), &key);
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&work);
}
