//! Issue #15 findings that take a flood of names by `nobody` in a 1777 store: a path table
//! scanned per event (70 unlinks/s, SIGTERM unheeded) and a watched-files map that filled
//! for good (the next image's tampering unseen); and issue #14's last item, a flood that drops
//! records about an image is itself an alert (SM-A001). Each test has an agent of its own.
// xtask-suite: host-only
// (100 000 files are minutes of work in the TCG guests; the kernel side is one map insert.)

use std::{
    path::{Path, PathBuf},
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

/// An agent of its own (`tag`) and its open store, in which nobody has made `n` empty files
/// (each unlinked again at once with `unlink`).
fn agent_after_files(tag: &str, n: usize, unlink: bool) -> (Agent, PathBuf) {
    let a = Agent::spawn(tag, &[], &[]).unwrap();
    let store = open_store(&a);
    let mut code = format!(
        "import os\n\
         os.chdir({:?})\n\
         for i in range({n}):\n\
         \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))",
        store.to_str().unwrap()
    );
    if unlink {
        code.push_str("\n    os.unlink('n%d' % i)");
    }
    nobody_py(&code);
    (a, store)
}

/// Empty files nobody made past the watched-files map's size (65 536).
const JUNK: usize = 66_000;

#[test]
fn junk_files_by_nobody_leave_room_for_the_next_image() {
    let (mut a, store) = agent_after_files("flood-junk", JUNK, false);
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
    let (mut a, store) = agent_after_files("flood-churn", CHURN, true);
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

/// The smallest ring the agent takes (`agent.ring_buffer_bytes`; the urgent lane is then
/// 4 KiB too): a dozen write records fill a lane, so a flood by one user drops records.
const SMALL_RING: &str = "[agent]\nring_buffer_bytes = 4096\n";

/// An agent of its own on a 4 KiB ring, with a 1777 store.
fn small_ring_agent(tag: &str) -> (Agent, PathBuf) {
    // Outside the agent's root (which `spawn` recreates), root-owned, 0644 in sticky /tmp.
    let policy =
        std::env::temp_dir().join(format!("snapmon-e2e-{}-{tag}.toml", std::process::id()));
    std::fs::write(&policy, SMALL_RING).unwrap();
    let a = Agent::spawn(tag, &["--config", policy.to_str().unwrap()], &[]);
    // Read at start (no reload here): nothing left behind in /tmp.
    let _ = std::fs::remove_file(&policy);
    let a = a.unwrap();
    let store = open_store(&a);
    (a, store)
}

/// The records written after `mark`.
fn records_after(a: &Agent, mark: u64) -> Vec<Value> {
    use std::io::{Read as _, Seek as _};
    let mut f = std::fs::File::open(&a.out).unwrap();
    f.seek(std::io::SeekFrom::Start(mark)).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    buf.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// The SM-A001 alerts after `mark`.
fn blinded_alerts(a: &Agent, mark: u64) -> Vec<Value> {
    records_after(a, mark)
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert" && v["rule"]["id"] == "SM-A001")
        .collect()
}

/// Kernel loss of `cause` counted in `lost` records after `mark`.
fn kernel_lost_after(a: &Agent, mark: u64, cause: &str) -> u64 {
    records_after(a, mark)
        .iter()
        .filter(|v| v["event"]["kind"] == "metric" && v["event"]["action"] == "lost")
        .filter_map(|v| v["snapmon"]["metric"]["kernel"][cause].as_u64())
        .sum()
}

/// A root-made image on a 4 KiB ring: qemu-img's own burst may overflow it (and is rightly
/// SM-A001); wait until that loss has been reported, so what follows starts clean.
fn quiet_image(store: &Path, name: &str) -> PathBuf {
    let img = image_with_3_snapshots(store, name);
    std::thread::sleep(Duration::from_millis(1500));
    img
}

/// Wall-clock nanoseconds of a record's `@timestamp` (`2026-11-28T18:10:52.682469425Z`).
fn unix_ns(v: &Value) -> i128 {
    let s = v["@timestamp"].as_str().unwrap_or("");
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i32>().ok()).unwrap_or(0);
    // SAFETY: a zeroed `tm` is valid; timegm only reads it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = num(0..4) - 1900;
    tm.tm_mon = num(5..7) - 1;
    tm.tm_mday = num(8..10);
    tm.tm_hour = num(11..13);
    tm.tm_min = num(14..16);
    tm.tm_sec = num(17..19);
    let secs = unsafe { libc::timegm(&mut tm) } as i128;
    let frac = s
        .get(20..29)
        .and_then(|x| x.parse::<i128>().ok())
        .unwrap_or(0);
    secs * 1_000_000_000 + frac
}

fn now_unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Iterations of the mixed flood: a few seconds of python as nobody.
const BLIND_FLOOD: usize = 20_000;

#[test]
fn a_flood_that_drops_image_records_raises_monitoring_blinded_within_1s() {
    let (mut a, store) = small_ring_agent("flood-blind");
    // Root's image writable by anyone (careless mode), and nobody's own image: records about
    // both are precious; root's goes to the urgent lane (nobody does not own it), nobody's to
    // the shared one, where nobody's junk names flood it.
    let shared = quiet_image(&store, "shared.qcow2");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let mark = a.mark();
    let t0 = Instant::now();
    let mut flooder = std::process::Command::new("setpriv")
        .args(snapmon_e2e::SETPRIV)
        .arg(snapmon_e2e::SYSTEM_PYTHON)
        .arg("-c")
        .arg(format!(
            "import os\n\
             os.chdir({:?})\n\
             s = os.open({:?}, os.O_RDWR)\n\
             m = os.open('mine.qcow2', os.O_RDWR | os.O_CREAT, 0o600)\n\
             blk = bytes(512)\n\
             for i in range({BLIND_FLOOD}):\n\
             \x20   os.pwrite(s, blk, 8 << 20)\n\
             \x20   os.pwrite(m, blk, 0)\n\
             \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))\n\
             \x20   os.unlink('n%d' % i)",
            store.to_str().unwrap(),
            shared.to_str().unwrap(),
        ))
        .spawn()
        .unwrap();
    let nobody = flooder.id();
    // Read as the agent writes (10 ms polls), during the flood and up to 1 s after it.
    let mut alert = None;
    let mut seen_at = 0;
    let mut ended: Option<Instant> = None;
    while alert.is_none() && ended.is_none_or(|e| e.elapsed() < Duration::from_secs(1)) {
        alert = a.wait_from_lines(mark, Duration::from_millis(100), b"SM-A001", |v| {
            v["event"]["kind"] == "alert" && v["rule"]["id"] == "SM-A001"
        });
        seen_at = now_unix_ns();
        if ended.is_none() && flooder.try_wait().unwrap().is_some() {
            ended = Some(Instant::now());
        }
    }
    let status = flooder.wait().unwrap();
    assert!(status.success(), "the flood failed");
    let flood_took = ended.map_or(t0.elapsed(), |e| e - t0);
    let first = blinded_alerts(&a, mark).into_iter().next();
    let precious = kernel_lost_after(&a, mark, "precious_dropped");
    snapmon_e2e::note(&format!(
        "mixed flood of {BLIND_FLOOD} by nobody took {flood_took:?}: kernel precious_dropped \
         {precious}, ringbuf_full {}; SM-A001 {}",
        kernel_lost_after(&a, mark, "ringbuf_full"),
        first
            .as_ref()
            .map(|v| v["message"].to_string())
            .unwrap_or_else(|| "none".into())
    ));
    assert!(
        precious > 0,
        "the flood dropped no image record on a 4 KiB ring (it cannot test the rule)"
    );
    let alert = alert.expect("no SM-A001 within 1 s of a flood that dropped image records");
    let first = first.unwrap();
    // The event's time is the last dropped record's: the alert came this long after that loss.
    let latency = Duration::from_nanos((seen_at - unix_ns(&alert)).max(0) as u64);
    snapmon_e2e::note(&format!("SM-A001 read {latency:?} after the loss it names"));
    assert!(
        latency < Duration::from_secs(1),
        "SM-A001 came {latency:?} after the loss"
    );
    let msg = first["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("events lost on shared.qcow2") || msg.contains("events lost on mine.qcow2"),
        "SM-A001 does not name the image: {msg}"
    );
    assert!(
        msg.contains("uid 65534"),
        "SM-A001 does not name nobody: {msg}"
    );
    assert_eq!(first["process"]["pid"], nobody, "{first}");
    assert_eq!(first["snapmon"]["severity"], "high");
    assert_eq!(first["event"]["action"], "blinded");
    assert!(
        first["threat"]["technique"]["id"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "T1562")),
        "{}",
        first["threat"]
    );
    snapmon_e2e::emit_fixture(
        "SM-A001/positive-nobody-flood.jsonl",
        &a.record_lines(|v| {
            (v["event"]["kind"] == "event" && v["event"]["action"] == "blinded")
                || (v["event"]["kind"] == "metric"
                    && v["snapmon"]["metric"]["kernel"]["precious_dropped"].is_u64())
        }),
    );
    stops_within_2s(&mut a);
}

#[test]
fn a_flood_of_junk_names_alone_is_loss_but_not_blinding() {
    let (mut a, store) = small_ring_agent("flood-junk-only");
    // An image in the store nobody does not touch: nothing about it is queued, nothing lost.
    let _img = quiet_image(&store, "vm.qcow2");
    let mark = a.mark();
    nobody_py(&format!(
        "import os\n\
         os.chdir({:?})\n\
         for i in range({BLIND_FLOOD}):\n\
         \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))\n\
         \x20   os.unlink('n%d' % i)",
        store.to_str().unwrap()
    ));
    // Two status ticks: any loss is reported by then.
    std::thread::sleep(Duration::from_secs(2));
    let ringbuf = kernel_lost_after(&a, mark, "ringbuf_full");
    let precious = kernel_lost_after(&a, mark, "precious_dropped");
    let blinded = blinded_alerts(&a, mark);
    snapmon_e2e::note(&format!(
        "junk flood of {BLIND_FLOOD} by nobody: kernel ringbuf_full {ringbuf}, \
         precious_dropped {precious}, SM-A001 {}",
        blinded.len()
    ));
    assert!(
        ringbuf > 0,
        "the junk flood lost nothing on a 4 KiB ring: no test"
    );
    assert_eq!(precious, 0, "ordinary names counted as image records");
    assert!(
        blinded.is_empty(),
        "SM-A001 for a flood of junk: {blinded:?}"
    );
    let mut n = 0;
    snapmon_e2e::emit_fixture(
        "SM-A001/negative-junk-flood.jsonl",
        &a.record_lines(|v| {
            let after = v["snapmon"]["metric"]["kernel"]["precious_dropped"].is_null();
            let junk = v["event"]["kind"] == "event"
                && v["file"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with('n'));
            let loss = v["event"]["kind"] == "metric" && v["event"]["action"] == "lost";
            after && (junk || loss)
        })
        .into_iter()
        .filter(|l| {
            n += 1;
            n <= 40 || l.contains("\"lost\"")
        })
        .collect::<Vec<_>>(),
    );
    stops_within_2s(&mut a);
}

/// An alert about `img` after `mark`: its own `unlink` event, or SM-A001 naming it.
fn unlink_or_blinded(v: &Value, img: &Path) -> bool {
    let path = img.to_str().unwrap();
    let name = img.file_name().unwrap().to_str().unwrap();
    let unlink = v["event"]["kind"] == "event"
        && v["event"]["action"] == "unlink"
        && v["file"]["path"] == path;
    let blinded = v["event"]["kind"] == "alert"
        && v["rule"]["id"] == "SM-A001"
        && v["message"].as_str().is_some_and(|m| m.contains(name));
    unlink || blinded
}

#[test]
fn an_image_deleted_by_name_in_a_floods_shadow_is_alerted_within_1s() {
    let (mut a, store) = small_ring_agent("flood-shadow-unlink");
    // nobody's own image in the 1777 store: nobody may delete it, and its unlink record (by
    // name, no watched inode) goes to the shared lane, behind nobody's flood of junk names.
    let img = quiet_image(&store, "mine.qcow2");
    snapmon_e2e::run("chown", &["nobody:nogroup", img.to_str().unwrap()]);
    // Held open, so tmpfs cannot give the freed inode number to a junk file mid-flood. That
    // reuse (the junk file's create then retires the image's name) is a separate open gap of
    // #14; it made this test fail 1 run in 3, and it is not what this test asks.
    let _pinned = std::fs::File::open(&img).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mark = a.mark();
    let mut flooder = std::process::Command::new("setpriv")
        .args(snapmon_e2e::SETPRIV)
        .arg(snapmon_e2e::SYSTEM_PYTHON)
        .arg("-c")
        .arg(format!(
            "import os, sys, time\n\
             os.chdir({:?})\n\
             for i in range({BLIND_FLOOD}):\n\
             \x20   os.close(os.open('n%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))\n\
             \x20   os.unlink('n%d' % i)\n\
             \x20   if i == {}:\n\
             \x20       os.unlink('mine.qcow2')\n\
             \x20       print(time.time_ns(), flush=True)",
            store.to_str().unwrap(),
            BLIND_FLOOD / 2,
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read as the agent writes, from where the last read stopped (10 ms polls): the flood's
    // records are a large file, and reading it again from the mark each poll lags.
    let mut seen = None;
    let mut ended: Option<Instant> = None;
    let mut out = std::fs::File::open(&a.out).unwrap();
    {
        use std::io::Seek as _;
        out.seek(std::io::SeekFrom::Start(mark)).unwrap();
    }
    let mut buf = Vec::new();
    while seen.is_none() && ended.is_none_or(|e| e.elapsed() < Duration::from_millis(1500)) {
        use std::io::Read as _;
        out.read_to_end(&mut buf).unwrap();
        if let Some(last) = buf.iter().rposition(|&b| b == b'\n') {
            let found = buf[..last]
                .split(|&b| b == b'\n')
                .filter(|l| l.windows(10).any(|w| w == b"mine.qcow2"))
                .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                .find(|v| unlink_or_blinded(v, &img));
            if let Some(v) = found {
                seen = Some((v, now_unix_ns()));
            }
            buf.drain(..=last);
        }
        if ended.is_none() && flooder.try_wait().unwrap().is_some() {
            ended = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = flooder.wait_with_output().unwrap();
    assert!(out.status.success(), "the flood failed");
    assert!(!img.exists(), "nobody did not delete its image");
    let unlinked: i128 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    snapmon_e2e::note(&format!(
        "junk flood of {BLIND_FLOOD} by nobody with an unlink of its image: kernel \
         ringbuf_full {}, precious_dropped {}, namespace_dropped {}; seen {}",
        kernel_lost_after(&a, mark, "ringbuf_full"),
        kernel_lost_after(&a, mark, "precious_dropped"),
        kernel_lost_after(&a, mark, "namespace_dropped"),
        seen.as_ref()
            .map(|(v, _)| format!("{} {}", v["event"]["action"], v["message"]))
            .unwrap_or_else(|| "nothing".into())
    ));
    let (v, at) = seen.expect("the image's unlink in the flood's shadow went unreported");
    let latency = Duration::from_nanos((at - unlinked).max(0) as u64);
    snapmon_e2e::note(&format!("reported {latency:?} after the unlink"));
    assert!(
        latency < Duration::from_secs(1),
        "reported {latency:?} after the unlink"
    );
    if v["event"]["kind"] == "alert" {
        assert_eq!(v["event"]["action"], "blinded", "{v}");
        assert_eq!(v["file"]["path"], img.to_str().unwrap(), "{v}");
    }
    stops_within_2s(&mut a);
}
