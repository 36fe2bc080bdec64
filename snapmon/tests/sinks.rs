//! Output side through the real binary: `verify-log` against logs built here from the
//! documented chain format (an independent implementation of it), and `--sink` parsing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snapmon"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snapmon-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Seal a record per docs/output.md: hash = SHA-256(prev ‖ seq as u64 BE ‖ R).
fn seal(prev: &mut [u8; 32], seq: u64, r: &str) -> String {
    let mut h = Sha256::new();
    h.update(*prev);
    h.update(seq.to_be_bytes());
    h.update(r.as_bytes());
    let hash: [u8; 32] = h.finalize().into();
    let line = format!(
        "{},\"snapmon.chain\":{{\"seq\":{seq},\"prev\":\"{}\",\"hash\":\"{}\"}}}}",
        &r[..r.len() - 1],
        hex::encode(*prev),
        hex::encode(hash)
    );
    *prev = hash;
    line
}

fn control(action: &str) -> String {
    format!(
        r#"{{"event":{{"kind":"state","action":"{action}","dataset":"snapmon.chain"}},"snapmon":{{"state":{{"chain_version":1}}}}}}"#
    )
}

/// header, n events, footer; returns the lines.
fn chain(prev: &mut [u8; 32], first: u64, n: u64) -> Vec<String> {
    let mut out = vec![seal(prev, first, &control("log_header"))];
    for i in 0..n {
        let r = format!(r#"{{"event":{{"kind":"event","action":"pwrite64","sequence":{i}}}}}"#);
        out.push(seal(prev, first + 1 + i, &r));
    }
    out.push(seal(prev, first + 1 + n, &control("log_closed")));
    out
}

fn write(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.join("\n") + "\n").unwrap();
}

fn verify(files: &[&Path]) -> (i32, String) {
    let o = bin().arg("verify-log").args(files).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn verify_log_exit_codes_for_every_kind_of_tampering() {
    let d = tmp("verify");
    let mut prev = [0u8; 32];
    let a = chain(&mut prev, 0, 5);
    let b = chain(&mut prev, 7, 5);
    let (pa, pb) = (d.join("s.jsonl.1"), d.join("s.jsonl"));
    write(&pa, &a);
    write(&pb, &b);
    let (code, out) = verify(&[&pb, &pa]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact: 14 records, seq 0..13"), "{out}");

    // (case, how the log is tampered with, what verify-log says)
    type Case = (&'static str, Box<dyn Fn(&mut Vec<String>)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "removed",
            Box::new(|l| {
                l.remove(2);
            }),
            ":3: seq 3: removed",
        ),
        (
            "altered",
            Box::new(|l| l[2] = l[2].replace("pwrite64", "pwritev")),
            ":3: seq 2: altered",
        ),
        (
            "reordered",
            Box::new(|l| l.swap(2, 3)),
            ":3: seq 3: reordered",
        ),
        (
            "truncated",
            Box::new(|l| {
                l.pop();
            }),
            ":6: seq 5: truncated",
        ),
    ];
    for (what, f, want) in cases {
        let mut l = a.clone();
        f(&mut l);
        write(&pa, &l);
        let (code, out) = verify(&[&pa, &pb]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(want), "{what}: want {want}\n{out}");
    }
    // Cut mid-record.
    let mut bytes = (a.join("\n") + "\n").into_bytes();
    bytes.truncate(bytes.len() - 30);
    std::fs::write(&pa, bytes).unwrap();
    let (code, out) = verify(&[&pa, &pb]);
    assert_eq!(code, 1);
    assert!(
        out.contains(":7: truncated: last line is incomplete"),
        "{out}"
    );
    // A rotated file from another chain spliced in.
    let mut other = [7u8; 32];
    write(&pa, &chain(&mut other, 0, 5));
    let (code, out) = verify(&[&pa, &pb]);
    assert_eq!(code, 1);
    assert!(out.contains("s.jsonl:1: seq 7: spliced"), "{out}");
    // Unreadable.
    let (code, _) = verify(&[&d.join("nope")]);
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_sink_specs_are_refused_with_context() {
    let o = bin()
        .args(["run", "--sink", "tcp:127.0.0.1:9,rotate_size=1M"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("rotate_size") && e.contains("does not apply to a tcp sink"),
        "{e}"
    );
    let o = bin()
        .args(["run", "--sink", "file:/x,flush=sometimes"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("sometimes"), "{e}");
}
