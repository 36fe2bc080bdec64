//! Issue #15 findings that take a flood of names by `nobody` in a 1777 store: a path table
//! scanned per event (70 unlinks/s, SIGTERM unheeded) and a watched-files map that filled
//! for good (the next image's tampering unseen). Each test has an agent of its own.
// xtask-suite: host-only
// (100 000 files are minutes of work in the TCG guests; the kernel side is one map insert.)

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{
    hide_snapshots, image_with_3_snapshots, nobody_py, open_store, python, q002, Agent,
};

/// The write event of `pid` on `path`.
fn write_of(a: &mut Agent, mark: u64, pid: u32, path: &Path, timeout: Duration) -> Option<Value> {
    a.wait_from(mark, timeout, |v| {
        v["event"]["kind"] == "event"
            && v["process"]["pid"] == pid
            && v["file"]["path"] == path.to_str().unwrap()
            && v["snapmon"]["write"].is_object()
    })
}

/// Sum of `lost` records' counts of `source`/`cause` in the whole output.
fn lost(a: &Agent, source: &str, cause: &str) -> u64 {
    snapmon_e2e::json_lines(&a.out)
        .iter()
        .filter(|v| v["event"]["kind"] == "metric" && v["event"]["action"] == "lost")
        .filter_map(|v| v["snapmon"]["metric"][source][cause].as_u64())
        .sum()
}

/// Events the agent reported with `action` on names in `dir` starting with `prefix`.
fn events_in(a: &Agent, dir: &Path, prefix: &str, action: &str) -> usize {
    let want = format!("{}/{prefix}", dir.display());
    snapmon_e2e::json_lines(&a.out)
        .iter()
        .filter(|v| v["event"]["kind"] == "event" && v["event"]["action"] == action)
        .filter(|v| {
            v["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&want))
        })
        .count()
}

/// SIGTERM is heeded: the `stopped` record within 2 s; then the process exits.
fn stops_within_2s(a: &mut Agent) {
    use std::io::{Read as _, Seek as _};
    // Only what comes after the mark is read: the flood's records are a large file.
    let mut f = std::fs::File::open(&a.out).unwrap();
    f.seek(std::io::SeekFrom::Start(a.mark())).unwrap();
    let mut buf = Vec::new();
    let t0 = Instant::now();
    a.signal(libc::SIGTERM);
    loop {
        f.read_to_end(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf).contains(r#""action":"stopped""#) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(2) {
            a.stop(Duration::from_secs(1));
            panic!("no `stopped` record within 2 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    snapmon_e2e::note(&format!("`stopped` {:?} after SIGTERM", t0.elapsed()));
    assert!(a.stop(Duration::from_secs(20)), "the agent did not exit");
}

const FLOOD: usize = 100_000;

#[test]
fn a_flood_of_names_by_nobody_delays_neither_tampering_alerts_nor_shutdown() {
    let mut a = Agent::spawn("flood-names", &[], &[]).unwrap();
    let store = open_store(&a);
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    // Root's, but writable by anyone (a careless mode): nobody may tamper with it, and must
    // not be able to hide that behind its own flood.
    let shared = image_with_3_snapshots(&store, "shared.qcow2");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    // 100 000 files made at full speed, a tenth of them renamed, then all unlinked: the
    // path table holds them all before the unlinks come. Halfway through the unlinks, with
    // the ring buffer full of them (ringbuf_full counting), nobody tampers with an image it
    // does not own; then root tampers with another, while the burst goes on. Without the
    // urgent lane nobody's record is lost with the junk (no alert at all); without alerts
    // jumping the sink queue they came 1.7-4.7 s late; before the path index, never (70
    // unlinks/s). The issue's bound is 1 s.
    let t0 = Instant::now();
    let mut flooder = std::process::Command::new("setpriv")
        .args(snapmon_e2e::SETPRIV)
        .arg(snapmon_e2e::SYSTEM_PYTHON)
        .arg("-c")
        .arg(format!(
            "import os, sys\n\
             os.chdir({:?})\n\
             for i in range({FLOOD}):\n\
             \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))\n\
             for i in range(0, {FLOOD}, 10):\n\
             \x20   os.rename('n%d' % i, 'r%d' % i)\n\
             for i in range({FLOOD}):\n\
             \x20   os.unlink(('r%d' if i % 10 == 0 else 'n%d') % i)\n\
             \x20   if i == {FLOOD} // 2:\n\
             \x20       print('ready', flush=True); sys.stdin.readline()\n\
             \x20       fd = os.open({:?}, os.O_RDWR); os.pwrite(fd, bytes(4), 60); os.close(fd)\n\
             \x20       print('tampered', flush=True)",
            store.to_str().unwrap(),
            shared.to_str().unwrap(),
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let nobody = flooder.id();
    let mut said = std::io::BufReader::new(flooder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the flood did not reach its middle");
    // The mark here, not at the start: the test then parses only what follows the tamper
    // (the flood's hundreds of megabytes before it would time the test, not the agent).
    let mark = a.mark();
    std::io::Write::write_all(flooder.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert_eq!(line.trim(), "tampered");
    let t_nobody = Instant::now();
    let by_nobody = q002(&mut a, mark, nobody, Duration::from_secs(30));
    let nobody_latency = t_nobody.elapsed();
    let (pid, root_mark) = hide_snapshots(&a, &img);
    let t_root = Instant::now();
    let alert = q002(&mut a, root_mark, pid, Duration::from_secs(30));
    let latency = t_root.elapsed();
    assert!(flooder.wait().unwrap().success(), "the flood failed");
    let flood = t0.elapsed();
    snapmon_e2e::note(&format!(
        "flood of {FLOOD} names took {flood:?}; mid-flood tamper alerts after \
         {nobody_latency:?} (nobody's, own flood) and {latency:?} (root's)"
    ));
    assert!(
        by_nobody.is_some(),
        "no SM-Q002 within 30 s for nobody's tamper in the middle of its own flood"
    );
    assert!(
        alert.is_some(),
        "no SM-Q002 within 30 s for root's tamper in the middle of the flood"
    );
    assert!(
        nobody_latency < Duration::from_secs(1),
        "SM-Q002 for nobody's mid-flood tamper came {nobody_latency:?} after it"
    );
    assert!(
        latency < Duration::from_secs(1),
        "SM-Q002 for root's mid-flood tamper came {latency:?} after it"
    );
    // The burst's records are still being read: count once the agent has caught up.
    std::thread::sleep(Duration::from_secs(2));
    let unlinks = events_in(&a, &store, "", "unlink");
    let ringbuf = lost(&a, "kernel", "ringbuf_full");
    snapmon_e2e::note(&format!(
        "{unlinks} unlink events reported, kernel ringbuf_full {ringbuf}"
    ));
    // Every unlink reported, or the shortfall said in a `lost` record: none unaccounted.
    if unlinks < FLOOD {
        assert!(
            ringbuf > 0,
            "{} unlinks neither reported nor counted as lost",
            FLOOD - unlinks
        );
    }
    stops_within_2s(&mut a);
}

/// Empty files nobody made past the watched-files map's size (65 536).
const JUNK: usize = 66_000;

#[test]
fn junk_files_by_nobody_leave_room_for_the_next_image() {
    let mut a = Agent::spawn("flood-junk", &[], &[]).unwrap();
    let store = open_store(&a);
    nobody_py(&format!(
        "import os\n\
         os.chdir({:?})\n\
         for i in range({JUNK}):\n\
         \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))",
        store.to_str().unwrap()
    ));
    // Root makes an image afterwards (qemu-img, as an admin would) and tampers with it:
    // the write is seen and alerted although the junk outnumbers the map.
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    let (pid, mark) = hide_snapshots(&a, &img);
    let write = write_of(&mut a, mark, pid, &img, Duration::from_secs(10));
    let alert = q002(&mut a, mark, pid, Duration::from_secs(10));
    // The junk past the map's ordinary share was refused, and that is said as loss.
    let refused = lost(&a, "watch", "watch_full") + lost(&a, "kernel", "watch_full");
    snapmon_e2e::note(&format!(
        "{JUNK} junk files: write seen {}, SM-Q002 {}, refused as watch_full {refused}",
        write.is_some(),
        alert.is_some()
    ));
    assert!(
        write.is_some(),
        "no write event for the tampering of {}",
        img.display()
    );
    assert!(
        alert.is_some(),
        "no SM-Q002 for the tampering of {}",
        img.display()
    );
    assert!(
        refused > 0,
        "junk past the map's ordinary share refused without a `lost` record"
    );
    stops_within_2s(&mut a);
}

/// More files than the map holds, each unlinked again.
const CHURN: usize = 70_000;

#[test]
fn files_nobody_made_and_deleted_leave_the_watch_map() {
    let mut a = Agent::spawn("flood-churn", &[], &[]).unwrap();
    let store = open_store(&a);
    nobody_py(&format!(
        "import os\n\
         os.chdir({:?})\n\
         for i in range({CHURN}):\n\
         \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))\n\
         \x20   os.unlink('n%d' % i)",
        store.to_str().unwrap()
    ));
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    let (pid, mark) = hide_snapshots(&a, &img);
    assert!(
        q002(&mut a, mark, pid, Duration::from_secs(10)).is_some(),
        "no SM-Q002 for the tampering of {} after {CHURN} files came and went",
        img.display()
    );
    // An ordinary file made afterwards is watched too: the deleted files' entries were
    // withdrawn, so the map is not in reserve (which only images and metadata may use).
    // (Entries whose unlink the ring buffer dropped are found by the audit: allow for it.)
    let plain = store.join("notes");
    let mut seen = None;
    let t0 = Instant::now();
    while seen.is_none() && t0.elapsed() < Duration::from_secs(10) {
        let mark = a.mark();
        let r = python(&format!(
            "import os; fd=os.open({:?}, os.O_WRONLY | os.O_CREAT, 0o600); os.pwrite(fd, b'x', 0)",
            plain.to_str().unwrap()
        ));
        seen = write_of(&mut a, mark, r.pid, &plain, Duration::from_secs(1));
    }
    snapmon_e2e::note(&format!(
        "after {CHURN} files came and went: a new ordinary file watched after {:?} \
         (kernel ringbuf_full {}, watch_full {})",
        t0.elapsed(),
        lost(&a, "kernel", "ringbuf_full"),
        lost(&a, "watch", "watch_full") + lost(&a, "kernel", "watch_full"),
    ));
    assert!(
        seen.is_some(),
        "writes to a new ordinary file are not seen: the map stayed full"
    );
    stops_within_2s(&mut a);
}
