//! Tests on real qemu-img images, damaged on purpose.

use std::path::PathBuf;

use super::*;
use crate::qcow2::testutil::*;
use crate::qcow2::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};

fn codes(r: &InspectReport) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.code).collect()
}

#[test]
fn hidden_snapshots_found_after_nb_zeroed() {
    let d = TmpDir::new("hidden");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let clean = inspect_image(&p);
    assert!(
        clean.finding("hidden_snapshot_suspected").is_none(),
        "{clean}"
    );
    patch(&p, 60, &[0; 4]);
    let r = inspect_image(&p);
    let f = r
        .finding("hidden_snapshot_suspected")
        .unwrap_or_else(|| panic!("{r}"));
    assert!(f.severity >= Severity::High);
    assert!(
        f.message.contains("'s1'") && f.message.contains("'s2'"),
        "{}",
        f.message
    );
    assert!(f.message.contains("refcount 1"), "{}", f.message);
    assert!(r.snapshots.is_empty());
    assert!(r.to_string().contains("hidden_snapshot_suspected"));
    // Hiding only the last one names only it.
    patch(&p, 60, &1u32.to_be_bytes());
    let r = inspect_image(&p);
    let m = &r.finding("hidden_snapshot_suspected").unwrap().message;
    assert!(m.contains("'s2'") && !m.contains("'s1'"), "{m}");
    // Count and table pointer both zeroed: the orphaned table is found.
    patch(&p, 60, &[0; 12]);
    let r = inspect_image(&p);
    let m = &r
        .finding("hidden_snapshot_suspected")
        .unwrap_or_else(|| panic!("{r}"))
        .message;
    assert!(
        m.contains("unreferenced") && m.contains("'s1'") && m.contains("'s2'"),
        "{m}"
    );
}

#[test]
fn hidden_with_sub_byte_refcounts() {
    for bits in ["1", "4", "64"] {
        let d = TmpDir::new("rc");
        let p = d.s("a.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("refcount_bits={bits}"),
            &p,
            "16M",
        ]);
        qemu_img(&["snapshot", "-c", "x", &p]);
        assert!(!inspect_image(&d.path("a.qcow2")).has_findings_at_least(Severity::Low));
        patch(&d.path("a.qcow2"), 60, &[0; 4]);
        let r = inspect_image(&d.path("a.qcow2"));
        let m = &r
            .finding("hidden_snapshot_suspected")
            .unwrap_or_else(|| panic!("{r}"))
            .message;
        assert!(
            m.contains("'x'") && m.contains("refcount 1"),
            "bits {bits}: {m}"
        );
    }
}

#[test]
fn legit_delete_is_not_hidden() {
    let d = TmpDir::new("legit");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    qemu_img(&["snapshot", "-d", "s2", &d.s("a.qcow2")]);
    let r = inspect_image(&p);
    assert!(!r.has_findings_at_least(Severity::Low), "{r}");
    qemu_img(&["snapshot", "-d", "s1", &d.s("a.qcow2")]);
    let r = inspect_image(&p);
    assert!(!r.has_findings_at_least(Severity::Low), "{r}");
}

#[test]
fn clean_image_has_no_medium_findings() {
    let d = TmpDir::new("clean");
    let p = image_with_snapshots(&d, "a.qcow2", &["-o", "lazy_refcounts=on"]);
    qemu_img(&["bitmap", "--add", &d.s("a.qcow2"), "bm0"]);
    let r = inspect_image(&p);
    assert_eq!(r.format, "qcow2");
    assert!(!r.has_findings_at_least(Severity::Medium), "{r}");
    assert_eq!(r.snapshots.len(), 2);
    assert!(r.features.contains(&"lazy_refcounts".to_string()));
    // v2, with the table last in the file (its final padding is never
    // written).
    let v2 = d.s("v2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10,cluster_size=4096",
        &v2,
        "16M",
    ]);
    qemu_img(&["snapshot", "-c", "only", &v2]);
    let r2 = inspect_image(&d.path("v2.qcow2"));
    assert!(!r2.has_findings_at_least(Severity::Low), "{r2}");
    assert_eq!(r2.snapshots[0].name, "only");
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["format"], "qcow2");
    assert_eq!(j["header"]["snapshots"][1], "s2");
}

#[test]
fn backing_chain_findings() {
    let d = TmpDir::new("chain");
    qemu_img(&["create", "-q", "-f", "qcow2", &d.s("base.qcow2"), "16M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &d.s("mid.qcow2"),
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &d.s("top.qcow2"),
    ]);
    let r = inspect_image(&d.path("top.qcow2"));
    let names: Vec<&str> = r.backing_chain.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["mid.qcow2", "base.qcow2"]);
    assert!(r
        .backing_chain
        .iter()
        .all(|l| l.exists && l.format == "qcow2"));
    // The test dir lives under /tmp, so the chain is volatile.
    assert!(
        r.finding("backing_file_volatile")
            .unwrap()
            .message
            .contains("/tmp"),
        "{r}"
    );
    assert!(r.finding("backing_file_missing").is_none());

    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        "/tmp/snapmon-no-such-evil.qcow2",
        "-F",
        "qcow2",
        &d.s("top.qcow2"),
    ]);
    let r = inspect_image(&d.path("top.qcow2"));
    assert!(r.finding("backing_file_missing").is_some(), "{r}");
    assert!(r.finding("backing_file_volatile").is_some(), "{r}");

    // base -> top loop.
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        "top.qcow2",
        "-F",
        "qcow2",
        &d.s("base.qcow2"),
    ]);
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &d.s("top.qcow2"),
    ]);
    let r = inspect_image(&d.path("top.qcow2"));
    assert!(r.finding("backing_loop").is_some(), "{r}");
    assert_eq!(r.backing_chain.len(), 3);
}

#[test]
fn non_volatile_backing_not_flagged() {
    // Must not be under /tmp (CI may clone there): /var/lib is neither volatile nor
    // world-writable.
    let dir = PathBuf::from(format!(
        "/var/lib/snapmon-test-inspect-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let s = |n: &str| dir.join(n).display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &s("base.qcow2"), "16M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &s("top.qcow2"),
    ]);
    let r = inspect_image(&dir.join("top.qcow2"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!r.has_findings_at_least(Severity::Low), "{r}");
    assert_eq!(r.backing_chain.len(), 1);
}

#[test]
fn damaged_headers() {
    let d = TmpDir::new("damage");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let good = std::fs::read(&p).unwrap();
    let variant = |name: &str, off: usize, bytes: &[u8]| {
        let q = d.path(name);
        let mut v = good.clone();
        v[off..off + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&q, v).unwrap();
        inspect_image(&q)
    };
    let r = variant(
        "dirty.qcow2",
        72,
        &(INCOMPAT_DIRTY | INCOMPAT_CORRUPT).to_be_bytes(),
    );
    assert!(
        codes(&r).contains(&"dirty") && codes(&r).contains(&"corrupt"),
        "{r}"
    );
    let r = variant("unk.qcow2", 72, &(1u64 << 40).to_be_bytes());
    assert!(codes(&r).contains(&"unknown_incompatible_features"), "{r}");
    let r = variant("luks.qcow2", 32, &2u32.to_be_bytes());
    assert!(codes(&r).contains(&"encrypted_inconsistent"), "{r}");
    let r = variant("far.qcow2", 40, &(1u64 << 40).to_be_bytes());
    assert!(codes(&r).contains(&"header_outside_file"), "{r}");
    let rt = &good[48..56];
    let r = variant("overlap.qcow2", 40, rt);
    assert!(codes(&r).contains(&"overlapping_metadata"), "{r}");
    let r = variant("magic.qcow2", 0, b"XXXX");
    assert_eq!((r.format, codes(&r)), ("unknown", vec!["bad_magic"]));
    let mut rng = XorShift(99);
    let noise: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
    let r = variant("random.qcow2", 0, &noise);
    assert!(
        codes(&r).contains(&"bad_magic") && codes(&r).contains(&"header_random"),
        "{r}"
    );
    std::fs::write(d.path("short.qcow2"), &good[..50]).unwrap();
    assert_eq!(codes(&inspect_image(&d.path("short.qcow2"))), ["truncated"]);
    let r = inspect_image(&d.path("missing.qcow2"));
    assert_eq!(codes(&r), ["io_error"]);
}

#[test]
fn baseline_round_trip_and_compare() {
    let d = TmpDir::new("baseline");
    let p = image_with_snapshots(&d, "a.qcow2", &[]);
    let old = baseline_entry(&p).unwrap();
    assert_eq!(old.sha256.len(), 64);
    let back: BaselineEntry = serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
    assert_eq!(back, old);
    assert!(compare_baseline(&old, &back).is_empty());
    qemu_img(&["snapshot", "-c", "s3", &d.s("a.qcow2")]);
    let new = baseline_entry(&p).unwrap();
    let ch: Vec<String> = compare_baseline(&old, &new)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(ch.contains(&"nb_snapshots: 2 → 3".to_string()), "{ch:?}");
    assert!(ch.contains(&"snapshot_added: s3".to_string()), "{ch:?}");
    assert!(ch.iter().any(|c| c.starts_with("sha256: ")));
    std::fs::write(&p, b"not qcow2").unwrap();
    let raw = baseline_entry(&p).unwrap();
    assert!(raw.qcow2.is_none());
    assert!(compare_baseline(&new, &raw)
        .iter()
        .any(|c| c.to_string() == "format: qcow2 → unknown"));
}

/// Runs `f` on a thread: a blocking open would hang the suite, so it fails after 10 s.
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("blocked: a FIFO with no writer was opened for reading")
}

#[test]
fn a_fifo_or_symlink_named_like_an_image_is_reported_not_opened() {
    let d = TmpDir::new("inspect-fifo");
    let fifo = d.path("x.qcow2");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let p = fifo.clone();
    let r = within_10s(move || inspect_image(&p));
    let f = r.finding("io_error").unwrap_or_else(|| panic!("{r}"));
    assert!(f.message.contains("fifo"), "{}", f.message);
    let p = fifo.clone();
    let e = within_10s(move || baseline_entry(&p)).unwrap_err();
    assert!(e.to_string().contains("fifo"), "{e}");
    // A backing file named by the image's author: a FIFO is a link of format "other".
    let top = image_with_snapshots(&d, "top.qcow2", &[]);
    std::fs::remove_file(&top).unwrap();
    let s = top.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "raw",
        "-b",
        fifo.to_str().unwrap(),
        s,
        "16M",
    ]);
    let r = within_10s(move || inspect_image(&top));
    assert_eq!(r.backing_chain.len(), 1, "{r}");
    assert_eq!(r.backing_chain[0].format, "other", "{r}");
    // A symlink is not followed.
    std::os::unix::fs::symlink(&fifo, d.path("link.qcow2")).unwrap();
    let r = inspect_image(&d.path("link.qcow2"));
    let f = r.finding("io_error").unwrap_or_else(|| panic!("{r}"));
    assert!(f.message.contains("symlink"), "{}", f.message);
}
