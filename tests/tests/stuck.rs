//! Issue #15, "never block on a watched file": a store on a filesystem that stops answering
//! (a hung NFS server, a FUSE daemon that never replies) must not stall the pipeline. The
//! store here is `tests/stuckfs.py`, a FUSE filesystem whose READs (or every request) go
//! unanswered on demand; a read the kernel has handed to it cannot even be killed. Each test
//! has an agent of its own; a tamper in a healthy store is timed against the 1 s bound.
// xtask-suite: host-only

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{
    action, hide_snapshots, image_with_3_snapshots, open_store, python, q002, Agent, Expect,
    SYSTEM_PYTHON,
};

const STUCKFS: &str = include_str!("../stuckfs.py");
/// When a stuckfs answers everything, whatever the test does (see [`StuckFs::mount`]).
const SAFETY_NET: Duration = Duration::from_secs(60);

/// A mounted stuckfs serving `vm.qcow2` (three snapshots); answered again and unmounted when
/// dropped.
struct StuckFs {
    mnt: PathBuf,
    ctl: PathBuf,
    child: Child,
}

impl StuckFs {
    fn mount(tag: &str) -> StuckFs {
        let base = std::env::temp_dir().join(format!("snapmon-e2e-{}-{tag}", std::process::id()));
        let _ = Command::new("umount")
            .arg("-l")
            .arg(base.join("mnt"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&base);
        let (mnt, ctl) = (base.join("mnt"), base.join("ctl"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&ctl).unwrap();
        let src = image_with_3_snapshots(&base, "src.qcow2");
        let script = base.join("stuckfs.py");
        std::fs::write(&script, STUCKFS).unwrap();
        let child = Command::new(SYSTEM_PYTHON)
            .arg(&script)
            .args([&mnt, &src, &ctl])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3");
        // A failing agent can be held for good in a read the kernel handed to the daemon,
        // and a test waiting for it with it: whatever happens, everything is answered after
        // a minute.
        let c = ctl.clone();
        std::thread::spawn(move || {
            std::thread::sleep(SAFETY_NET);
            for f in ["hang-reads", "hang-all"] {
                let _ = std::fs::remove_file(c.join(f));
            }
        });
        let fs = StuckFs { mnt, ctl, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs.ctl.join("ready").exists() {
            assert!(
                Instant::now() < deadline,
                "stuckfs did not mount (is /dev/fuse there?)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    fn image(&self) -> PathBuf {
        self.mnt.join("vm.qcow2")
    }

    /// From now on READs (`"hang-reads"`) or all requests (`"hang-all"`) go unanswered.
    fn hang(&self, what: &str) {
        std::fs::write(self.ctl.join(what), b"").unwrap();
    }

    /// Answer everything held, and all that comes.
    fn answer(&self) {
        for f in ["hang-reads", "hang-all"] {
            let _ = std::fs::remove_file(self.ctl.join(f));
        }
    }
}

/// Answers a [`StuckFs`] when dropped. Declared after the agent, it drops first: the agent's
/// process cannot end while one of its threads waits in a read the kernel handed to the
/// filesystem.
struct AnswerOnDrop<'a>(&'a StuckFs);

impl Drop for AnswerOnDrop<'_> {
    fn drop(&mut self) {
        self.0.answer();
    }
}

impl Drop for StuckFs {
    fn drop(&mut self) {
        self.answer();
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Root rewrites the first 4 KiB of the image on the stuck store with nb_snapshots zeroed,
/// from a copy of its header on local disk (reading it back would hang): the write is
/// larger than the agent's capture, so judging it needs a read of the file.
fn rewrite_stuck_header(fs: &StuckFs, local_copy: &Path) -> u32 {
    python(&format!(
        "import os\n\
         h = bytearray(open({src:?}, 'rb').read(4096)); h[60:64] = bytes(4)\n\
         fd = os.open({dst:?}, os.O_WRONLY); os.pwrite(fd, bytes(h), 0); os.close(fd)",
        src = local_copy.to_str().unwrap(),
        dst = fs.image().to_str().unwrap(),
    ))
    .pid
}

fn detail<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v["snapmon"]["detail"][key].as_str()
}

/// The healthy store's SM-Q002 came (within the 5 s looked for) and within 1 s of the tamper.
fn prompt(alert: &Option<Value>, took: Duration, why: &str) {
    assert!(
        alert.is_some(),
        "no SM-Q002 for a healthy store's tamper {why}"
    );
    assert!(
        took < Duration::from_secs(1),
        "SM-Q002 took {took:?} {why} (bound: 1 s)"
    );
}

#[test]
fn a_store_that_stops_answering_delays_no_alert_elsewhere_nor_the_stop() {
    let fs = StuckFs::mount("stuck-reads");
    let local = fs.mnt.parent().unwrap().join("src.qcow2");
    let mut a = Agent::spawn("stuck-reads", &[], std::slice::from_ref(&fs.mnt)).unwrap();
    let _answer = AnswerOnDrop(&fs);
    let store = open_store(&a);
    let img = image_with_3_snapshots(&store, "vm1.qcow2");
    std::thread::sleep(Duration::from_millis(300));

    fs.hang("hang-reads");
    let t0 = Instant::now();
    let stuck_pid = rewrite_stuck_header(&fs, &local);
    let (pid, mark) = hide_snapshots(&a, &img);
    let alert = q002(&mut a, mark, pid, Duration::from_secs(5));
    let took = t0.elapsed();
    prompt(&alert, took, "while the other store's reads hang");

    // The stuck store's write is reported, saying what went unread.
    let rec = a.expect(
        Expect::event("pwrite64").pid(stuck_pid).path(fs.image()),
        Duration::from_secs(5),
    );
    let why = detail(&rec, "read_stalled").unwrap_or_else(|| panic!("no read_stalled: {rec}"));
    assert!(why.contains("vm.qcow2"), "{why}");

    // Again, now that its filesystem is known to be stuck: no budget spent on it.
    let img2 = image_with_3_snapshots(&store, "vm2.qcow2");
    std::thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    rewrite_stuck_header(&fs, &local);
    let (pid, mark) = hide_snapshots(&a, &img2);
    assert!(
        q002(&mut a, mark, pid, Duration::from_secs(1)).is_some(),
        "no SM-Q002 within 1 s for a tamper after the stuck store was quarantined"
    );
    eprintln!(
        "first tamper alerted in {took:?}, the second in {:?}",
        t1.elapsed()
    );

    // A stop is heeded while a read is still stuck: the `stopped` record comes at once.
    let mark = a.mark();
    let t2 = Instant::now();
    a.signal(libc::SIGTERM);
    let stopped = a
        .wait_from(mark, Duration::from_secs(1), |v| action(v) == "stopped")
        .expect("no `stopped` record within 1 s of SIGTERM while a read is stuck");
    let stats = &stopped["snapmon"]["state"]["stats"]["reads"];
    assert!(stats["stalled"].as_u64() >= Some(1), "{stats}");
    assert!(stats["stuck"].as_u64() >= Some(1), "{stats}");
    eprintln!("stopped {:?} after SIGTERM; reads {stats}", t2.elapsed());
    // A thread the kernel holds in the stuck read keeps the process until it is answered.
    fs.answer();
    assert!(
        a.stop(Duration::from_secs(10)),
        "the agent did not exit once answered"
    );
}

#[test]
fn an_agent_starts_on_a_store_that_does_not_answer() {
    let fs = StuckFs::mount("stuck-start");
    fs.hang("hang-reads");
    let t0 = Instant::now();
    let mut a = Agent::spawn("stuck-start", &[], std::slice::from_ref(&fs.mnt)).unwrap();
    let _answer = AnswerOnDrop(&fs);
    let up = t0.elapsed();
    let store = open_store(&a);
    let img = image_with_3_snapshots(&store, "vm1.qcow2");
    std::thread::sleep(Duration::from_millis(200));
    let (pid, mark) = hide_snapshots(&a, &img);
    assert!(
        q002(&mut a, mark, pid, Duration::from_secs(1)).is_some(),
        "no SM-Q002 within 1 s while a store does not answer"
    );
    eprintln!("started in {up:?} with a store that does not answer");
    // A debug agent starts in ~5 s here; the stuck store may cost it one read budget.
    assert!(
        up < Duration::from_secs(20),
        "start took {up:?} with a store that does not answer"
    );

    // Once it answers, its image is read again (not remembered as "not an image"): a tamper
    // there is judged against its header. The first write, of the bytes already there,
    // makes the agent load it; the second hides the snapshots.
    fs.answer();
    std::thread::sleep(Duration::from_millis(500));
    let stuck = fs.image();
    let pwrite = |data: &str| {
        python(&format!(
            "import os; fd = os.open({:?}, os.O_WRONLY); os.pwrite(fd, {data}, 60)",
            stuck.to_str().unwrap()
        ))
        .pid
    };
    pwrite("(3).to_bytes(4, 'big')");
    std::thread::sleep(Duration::from_millis(300));
    let mark = a.mark();
    let pid = pwrite("bytes(4)");
    assert!(
        q002(&mut a, mark, pid, Duration::from_secs(1)).is_some(),
        "no SM-Q002 on the store that answers again"
    );
    assert!(a.stop(Duration::from_secs(10)));
}

#[test]
fn a_store_that_hangs_every_request_delays_no_alert_elsewhere() {
    let fs = StuckFs::mount("stuck-all");
    let mut a = Agent::spawn("stuck-all", &[], std::slice::from_ref(&fs.mnt)).unwrap();
    let _answer = AnswerOnDrop(&fs);
    let store = open_store(&a);
    let img = image_with_3_snapshots(&store, "vm1.qcow2");
    std::thread::sleep(Duration::from_millis(300));

    // The writer opens the image first, then lookups, stats, opens, reads and writes all go
    // unanswered: its pwrite hangs (the syscall is seen on entry), and so would any stat,
    // readlink or read the agent makes of that filesystem.
    use std::io::{BufRead as _, Write as _};
    let img_stuck = fs.image();
    let mut writer = Command::new(SYSTEM_PYTHON)
        .args([
            "-c",
            &format!(
                "import os, sys\nfd = os.open({:?}, os.O_WRONLY)\nprint('open', flush=True)\n\
                 sys.stdin.readline()\nos.pwrite(fd, bytes(4096), 0)",
                img_stuck.to_str().unwrap()
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    fs.hang("hang-all");
    // Past the kernel's 1 s attribute and entry cache: a stat asks the daemon.
    std::thread::sleep(Duration::from_millis(1100));
    writeln!(writer.stdin.take().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let (pid, mark) = hide_snapshots(&a, &img);
    let alert = q002(&mut a, mark, pid, Duration::from_secs(5));
    let took = t0.elapsed();
    fs.answer();
    let _ = writer.wait();
    prompt(&alert, took, "while another store hangs every request");
    eprintln!("alerted in {took:?} while a store hung every request");
    assert!(a.stop(Duration::from_secs(10)));
}
