//! recover against real images from the installed qemu-img/qemu-io: hidden three ways,
//! restored, then checked by qemu-img itself and by reading each snapshot's data back.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::*;
use crate::classify::qcow2::testutil::{patch, qemu_img, qemu_io, tool_output, TmpDir};

const PATTERNS: [(&str, u8); 3] = [("s1", 0x11), ("s2", 0x22), ("s3", 0x33)];

/// 3 snapshots, each holding its own pattern at offset 0 (and its own cluster at 1 MiB·i),
/// then the active layer overwritten with 0x44.
fn image(d: &TmpDir) -> PathBuf {
    let p = d.s("vm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", &p, "64M"]);
    for (i, (name, pat)) in PATTERNS.iter().enumerate() {
        qemu_io(&p, &format!("write -P {pat:#x} 0 64k"));
        qemu_io(&p, &format!("write -P {pat:#x} {}M 64k", i + 1));
        qemu_img(&["snapshot", "-c", name, &p]);
    }
    qemu_io(&p, "write -P 0x44 0 64k");
    d.path("vm.qcow2")
}

fn header(p: &Path) -> (u32, u64) {
    let img = Qcow2Image::read_from(&mut File::open(p).unwrap()).unwrap();
    (img.header.nb_snapshots, img.header.snapshots_offset)
}

fn out(p: &Path, tool: &str, args: &[&str]) -> (bool, String) {
    let o = tool_output(tool, &[args, &[p.to_str().unwrap()]].concat());
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// `qemu-img check` is clean, `snapshot -l` lists all three, and applying each gives its
/// own data back.
fn assert_restored(p: &Path) {
    let (ok, text) = out(p, "qemu-img", &["check"]);
    assert!(ok && text.contains("No errors were found"), "{text}");
    assert!(!text.contains("leaked"), "{text}");
    let (ok, list) = out(p, "qemu-img", &["snapshot", "-l"]);
    assert!(ok, "{list}");
    for (name, _) in PATTERNS {
        assert!(list.contains(name), "{name} missing from:\n{list}");
    }
    let s = p.display().to_string();
    for (i, (name, pat)) in PATTERNS.iter().enumerate() {
        qemu_img(&["snapshot", "-a", name, &s]);
        qemu_io(&s, &format!("read -P {pat:#x} 0 64k"));
        qemu_io(&s, &format!("read -P {pat:#x} {}M 64k", i + 1));
    }
}

fn req<'a>(img: &'a Path, out: &'a Path, logs: &'a [PathBuf]) -> Request<'a> {
    Request {
        image: img,
        out: Some(out),
        in_place: false,
        backup: None,
        logs,
    }
}

#[test]
fn a_zeroed_count_is_undone_and_every_snapshot_gives_its_data_back() {
    let d = TmpDir::new("recover-count");
    let p = image(&d);
    let good = header(&p);
    assert_eq!(good.0, 3);
    patch(&p, 60, &[0; 4]);
    let (_, hidden) = out(&p, "qemu-img", &["snapshot", "-l"]);
    assert!(!hidden.contains("s1"), "{hidden}");
    let fixed = d.path("fixed.qcow2");
    let r = recover(&req(&p, &fixed, &[])).unwrap();
    assert_eq!((r.from.nb_snapshots, r.from.snapshots_offset), good);
    assert!(r.from.source.contains("beyond nb_snapshots"), "{r}");
    assert_eq!(r.snapshots.len(), 3);
    assert_eq!(header(&p).0, 0, "the image itself is left as it was");
    assert_restored(&fixed);
}

#[test]
fn a_zeroed_count_and_pointer_are_found_as_an_unreferenced_table() {
    let d = TmpDir::new("recover-orphan");
    let p = image(&d);
    let good = header(&p);
    patch(&p, 60, &[0; 12]);
    let fixed = d.path("fixed.qcow2");
    let r = recover(&req(&p, &fixed, &[])).unwrap();
    assert_eq!((r.from.nb_snapshots, r.from.snapshots_offset), good);
    assert!(r.from.source.contains("no header field points to"), "{r}");
    assert_restored(&fixed);
}

/// One agent record about `img` with header changes, in the agent's JSON shape.
fn logged(img: &Path, changes: &[(&str, &str, &str)]) -> String {
    let ch: Vec<Value> = changes
        .iter()
        .map(|(f, b, a)| serde_json::json!({"field": f, "before": b, "after": a}))
        .collect();
    serde_json::json!({"event": {"kind": "event", "action": "pwrite64"},
        "file": {"path": img.display().to_string()},
        "snapmon": {"classification": {"format": "qcow2", "changes": ch}}})
    .to_string()
}

#[test]
fn the_log_restores_the_table_after_the_pointer_was_overwritten_too() {
    let d = TmpDir::new("recover-log");
    let p = image(&d);
    let (nb, off) = header(&p);
    // What the agent logged: qemu-img's own snapshots, then the attacker's two writes.
    let log = d.path("agent.jsonl");
    let lines = [
        logged(
            &p,
            &[
                ("nb_snapshots", "2", "3"),
                ("snapshots_offset", "0x50000", &format!("{off:#x}")),
            ],
        ),
        logged(&p, &[("nb_snapshots", "3", "0")]),
        logged(
            &p,
            &[("snapshots_offset", &format!("{off:#x}"), "0x7fff0000")],
        ),
        // Another image's records are not ours.
        logged(
            Path::new("/elsewhere/vm.qcow2"),
            &[("nb_snapshots", "9", "0")],
        ),
        "not json".to_string(),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    patch(&p, 60, &0u32.to_be_bytes());
    patch(&p, 64, &0x7fff_0000u64.to_be_bytes());
    let c = candidates_in_logs(std::slice::from_ref(&log), &p, (0, 0)).unwrap();
    assert!(
        c.iter()
            .any(|c| (c.nb_snapshots, c.snapshots_offset) == (nb, off)),
        "{c:?}"
    );
    assert!(c.iter().all(|c| c.nb_snapshots != 9), "{c:?}");
    let fixed = d.path("fixed.qcow2");
    let r = recover(&req(&p, &fixed, &[log])).unwrap();
    assert_eq!((r.from.nb_snapshots, r.from.snapshots_offset), (nb, off));
    assert!(r.from.source.contains("log"), "{r}");
    assert_restored(&fixed);
}

fn repair_leaks(p: &Path) {
    let o = tool_output("qemu-img", &["check", "-r", "leaks", p.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Repairing"),
        "{o:?}"
    );
}

#[test]
fn refuses_when_the_tables_clusters_were_freed_and_reused() {
    // Two snapshots of three hidden: the table stays (the header still points to it), but
    // to qemu-img the hidden snapshots' L1 tables and clusters are leaks. Repairing frees
    // them: their refcounts say so, and restoring would corrupt the image.
    let d = TmpDir::new("recover-freed");
    let p = image(&d);
    patch(&p, 60, &1u32.to_be_bytes());
    repair_leaks(&p);
    let fixed = d.path("fixed.qcow2");
    let e = recover(&req(&p, &fixed, &[])).unwrap_err();
    assert!(matches!(e, RecoverError::Unsafe(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("freed or reused") && m.contains("3 snapshots"),
        "{m}"
    );
    assert_eq!(e.exit_code(), 1);
    assert!(!fixed.exists(), "nothing is written when refusing");

    // All hidden, repaired, then new guest data over the freed clusters: the table itself
    // is gone from the image, and what the log remembers no longer holds.
    let d = TmpDir::new("recover-reused");
    let p = image(&d);
    let (_, off) = header(&p);
    let log = d.path("agent.jsonl");
    std::fs::write(
        &log,
        logged(
            &p,
            &[
                ("nb_snapshots", "3", "0"),
                ("snapshots_offset", &format!("{off:#x}"), "0x0"),
            ],
        ) + "\n",
    )
    .unwrap();
    patch(&p, 60, &[0; 12]);
    repair_leaks(&p);
    let s = p.display().to_string();
    for i in 0..16 {
        qemu_io(&s, &format!("write -P 0x99 {}M 64k", 20 + i));
    }
    let e = recover(&req(&p, &fixed, &[])).unwrap_err();
    assert!(matches!(e, RecoverError::NothingHidden(_)), "{e}");
    assert_eq!(e.exit_code(), 1);
    let e = recover(&req(&p, &fixed, &[log])).unwrap_err();
    assert!(matches!(e, RecoverError::Unsafe(_)), "{e}");
    assert!(e.to_string().contains("3 snapshots"), "{e}");
    assert!(!fixed.exists());
}

#[test]
fn in_place_needs_a_backup_and_qemus_write_lock() {
    let d = TmpDir::new("recover-inplace");
    let p = image(&d);
    let good = header(&p);
    patch(&p, 60, &[0; 4]);
    let hidden = std::fs::read(&p).unwrap();
    let backup = d.path("backup.qcow2");
    let mut r = Request {
        image: &p,
        out: None,
        in_place: true,
        backup: None,
        logs: &[],
    };
    assert_eq!(recover(&r).unwrap_err().exit_code(), 2);
    r.backup = Some(&backup);
    // A QEMU process with the image open for writing holds the lock: refused.
    let mut holder = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&p)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead as _, Write as _};
        let mut stdin = holder.stdin.as_ref().unwrap();
        writeln!(stdin, "read -P 0x44 0 512").unwrap();
        let out = std::io::BufReader::new(holder.stdout.as_mut().unwrap());
        // Once it answers a read, it has the image open (and locked).
        let answered = out
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("512/512"));
        assert!(answered, "qemu-io did not open the image");
    }
    let e = recover(&r).unwrap_err();
    assert!(matches!(e, RecoverError::Locked { .. }), "{e}");
    assert!(!backup.exists(), "no backup is taken when refusing");
    assert!(e.to_string().contains("in use"), "{e}");
    assert_eq!(e.exit_code(), 2);
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let r = recover(&r).unwrap();
    assert_eq!(r.backup.as_deref(), Some(backup.to_str().unwrap()));
    assert_eq!(std::fs::read(&backup).unwrap(), hidden);
    assert_eq!(header(&p), good);
    assert_restored(&p);
}

#[test]
fn nothing_hidden_and_existing_outputs_are_clear_errors() {
    let d = TmpDir::new("recover-nothing");
    let p = image(&d);
    let fixed = d.path("fixed.qcow2");
    let e = recover(&req(&p, &fixed, &[])).unwrap_err();
    assert!(matches!(e, RecoverError::NothingHidden(_)), "{e}");
    std::fs::write(&fixed, b"x").unwrap();
    let e = recover(&req(&p, &fixed, &[])).unwrap_err();
    assert!(e.to_string().contains("never overwrites"), "{e}");
    assert_eq!(e.exit_code(), 2);
    let junk = d.path("junk.qcow2");
    std::fs::write(&junk, b"not an image at all").unwrap();
    let e = recover(&req(&junk, &d.path("o.qcow2"), &[])).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
}
