//! The command line as a user meets it: one-sentence errors (an OS error said once), the
//! same exit codes everywhere (0 ok, 1 findings, 2 usage or read error) and options that do
//! not apply refused rather than ignored. None of these needs root or loads a probe.

use std::process::{Command, Output};

fn snapmon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapmon"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run snapmon")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("snapmon-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn an_os_error_is_said_once_in_one_sentence_and_exits_2() {
    for args in [
        &["run", "--config", "/nonexistent/policy.toml"][..],
        &["run", "--output", "/nonexistent/dir/x.jsonl"],
        &["policy", "check", "/nonexistent/policy.toml"],
        &["verify", "/nonexistent/baseline.json"],
    ] {
        let o = snapmon(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(
            e.matches("No such file or directory").count(),
            1,
            "{args:?}: {e}"
        );
        assert_eq!(
            e.trim_end().lines().count(),
            1,
            "{args:?}: one sentence: {e}"
        );
    }
}

#[test]
fn a_sink_with_no_path_is_named_without_a_double_colon() {
    for spec in ["file", "file:"] {
        let o = snapmon(&["run", "--sink", spec]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains("a file sink needs `path`"), "{e}");
        assert!(!e.contains("::"), "{e}");
    }
}

#[test]
fn replay_of_a_missing_file_says_that_first_and_only() {
    let o = snapmon(&["replay", "/nonexistent/rec.jsonl"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("snapmon: cannot read /nonexistent/rec.jsonl: No such file"),
        "{e}"
    );
}

#[test]
fn baseline_refuses_a_directory_that_does_not_exist() {
    let d = tmp("baseline");
    let outdir = tmp("baseline-out");
    let out = outdir.join("b.json");
    let o = snapmon(&[
        "baseline",
        "/nonexistent/images",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot read /nonexistent/images"));
    assert!(!out.exists(), "no empty baseline written");
    // A real one still works, and verify says unchanged (0) or changed (1).
    std::fs::write(d.join("a.img"), b"x").unwrap();
    let o = snapmon(&[
        "baseline",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        snapmon(&["verify", out.to_str().unwrap()]).status.code(),
        Some(0)
    );
    std::fs::write(d.join("a.img"), b"y").unwrap();
    assert_eq!(
        snapmon(&["verify", out.to_str().unwrap()]).status.code(),
        Some(1)
    );
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&outdir);
}

#[test]
fn options_that_do_not_apply_are_refused() {
    let d = tmp("record");
    let rec = d.join("rec.jsonl");
    for (args, want) in [
        (
            vec!["record", rec.to_str().unwrap(), "--format", "tail"],
            "--format tail does not apply",
        ),
        (
            vec!["record", rec.to_str().unwrap(), "--output", "/tmp/x"],
            "--output does not apply",
        ),
        (
            vec!["record", rec.to_str().unwrap(), "--schema", "ocsf"],
            "--schema ocsf does not apply",
        ),
        (
            vec![
                "run",
                "--sink",
                "file:/tmp/x.jsonl",
                "--min-severity",
                "high",
            ],
            "--min-severity shape the stdout or --output sink",
        ),
    ] {
        let o = snapmon(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(!rec.exists(), "nothing recorded");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn policy_check_tells_findings_from_unreadable() {
    let d = tmp("policy");
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[agent]\nno_such_key = 1\n").unwrap();
    let o = snapmon(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "invalid policy is a finding: {}",
        stderr(&o)
    );
    let o = snapmon(&["policy", "check", d.join("missing.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn exit_codes_are_documented_once_for_every_subcommand() {
    let o = snapmon(&["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Exit status: 0 ok; 1 findings") && out.contains("2 usage error"),
        "{out}"
    );
    for sub in ["inspect", "verify", "verify-log", "baseline", "doctor"] {
        let o = snapmon(&[sub, "--help"]);
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(h.contains("Exit") || h.contains("exits 2"), "{sub}: {h}");
    }
}

/// Unprivileged, doctor cannot load a probe: it must say it learned nothing and fail, not
/// report every hook missing and enforcement possible.
#[test]
fn doctor_as_non_root_says_it_cannot_probe_and_fails() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    let o = if root {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_snapmon"))
            .arg("doctor")
            .output()
            .expect("setpriv (util-linux)")
    } else {
        snapmon(&["doctor"])
    };
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("needs root") && e.contains("nothing was probed"),
        "{e}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("enforcement is possible"), "{out}");
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn inspect_of_a_fifo_exits_2_at_once_in_one_sentence() {
    let d = tmp("fifo");
    let fifo = d.join("x.qcow2");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    // No writer ever comes: an open that blocks would hang here, so the wait is bounded.
    let mut child = Command::new(env!("CARGO_BIN_EXE_snapmon"))
        .arg("inspect")
        .arg(&fifo)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("snapmon inspect blocked on a FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one sentence: {e}");
    assert!(
        e.contains(fifo.to_str().unwrap()) && e.contains("is a fifo, not an image file"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
