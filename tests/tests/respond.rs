//! Circuit breaker end to end: an untrusted process tampering with a protected image is
//! killed (or stopped, or its cgroup frozen) in the BPF program run that sees the syscall,
//! on the tracepoint backend; trusted tools are untouched; every response is an alert with
//! the syscall-to-signal time; evidence is hashed into the log; `snapmon recover` gives the
//! hidden snapshots back from the agent's log.
//!
//! One agent for the suite (loading takes minutes under emulation), reconfigured per test
//! through its policy and SIGHUP (which is also what proves `[respond]` reloads). In the VM
//! guests, where BPF LSM exists, the same agent also enforces on the stores the attacks hit,
//! so every test here also proves the two agree.
// xtask-suite: newest-guest

use std::{
    io::{BufRead as _, BufReader},
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{expect_lsm, note, Agent, Expect, Setup};

/// Stores: plain temp dirs, plus a private tmpfs and a loop-mounted ext4, so the kill's
/// effect on the triggering write is measured on both.
const STORES: &[&str] = &[
    "kill", "tmpfs", "ext4", "stop", "freeze", "trusted", "names", "rate", "dry",
];
/// Stores that must let the attack land: the agent-side rate rule and dry-run, and the
/// monitor store whose hidden snapshots `recover` gives back.
const NOT_ENFORCED: &[&str] = &["rate", "dry", "recover"];

struct Env {
    agent: Agent,
    root: PathBuf,
    policy: PathBuf,
    base: String,
    markers: PathBuf,
}

static ENV: OnceLock<Mutex<Env>> = OnceLock::new();

fn env() -> MutexGuard<'static, Env> {
    ENV.get_or_init(|| Mutex::new(Env::start()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "`{cmd}` failed: {st}");
}

/// Where `mount`s of this suite are undone at exit (the agent is a static: no Drop).
static MOUNTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn unmount_all() {
    for m in MOUNTS.lock().map(|v| v.clone()).unwrap_or_default() {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
}

/// The cgroup v2 hierarchy (mounted if the guest has none, as the VM's init does not).
fn cgroup2() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if let Some(mp) = mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split(' ').next()? == "cgroup2").then(|| pre.split(' ').nth(4).unwrap().to_string())
    }) {
        return PathBuf::from(mp);
    }
    sh("mount -t cgroup2 cgroup2 /sys/fs/cgroup");
    PathBuf::from("/sys/fs/cgroup")
}

impl Env {
    fn start() -> Env {
        assert_eq!(unsafe { libc::geteuid() }, 0, "end-to-end tests need root");
        let root = std::env::temp_dir().join(format!("snapmon-respond-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in STORES.iter().chain(NOT_ENFORCED) {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        unsafe { libc::atexit(unmount_all) };
        sh(&format!(
            "mount -t tmpfs snapmon-respond {}",
            root.join("tmpfs").display()
        ));
        MOUNTS.lock().unwrap().push(root.join("tmpfs"));
        let ext4 = root.join("ext4.fs");
        sh(&format!(
            "truncate -s 64M {0} && mkfs.ext4 -q -F {0} && mount -o loop {0} {1}",
            ext4.display(),
            root.join("ext4").display()
        ));
        MOUNTS.lock().unwrap().push(root.join("ext4"));
        // The attacker runs as nobody: it may enter the stores and write the images in them.
        for d in STORES.iter().chain(NOT_ENFORCED) {
            std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Outside the watched root: the attackers' own files are not what is being tested.
        let markers = root.with_extension("markers");
        let _ = std::fs::remove_dir_all(&markers);
        std::fs::create_dir_all(&markers).unwrap();
        std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o777)).unwrap();
        cgroup2();
        let base = String::from_utf8(
            Command::new(snapmon_e2e::bin())
                .args(["policy", "default"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let policy = root.join("policy.toml");
        write_policy(&root, &policy, &base, r#"mode = "kill""#);
        let agent = Agent::start(&Setup {
            args: vec!["--config".into(), policy.display().to_string()],
            root: Some(root.clone()),
            ..Default::default()
        })
        .expect("agent failed to start");
        let st = &agent.started["snapmon"]["state"];
        assert_eq!(st["response_active"], true, "{}", agent.started);
        // The plan and the enforcement state are detail records written before `started`.
        let resp = &st["detail"]["response"];
        assert_eq!(resp["active"], true, "{resp}");
        assert_eq!(resp["mode"], "kill", "{resp}");
        let enf = &st["detail"]["enforcement"];
        assert_eq!(enf["active"], expect_lsm(), "{enf}");
        Env {
            agent,
            root,
            policy,
            base,
            markers,
        }
    }

    fn dir(&self, store: &str) -> PathBuf {
        self.root.join(store)
    }

    /// Reconfigure the circuit breaker (and re-plan the stores' images) through SIGHUP.
    fn configure(&mut self, respond: &str) -> Value {
        write_policy(&self.root, &self.policy, &self.base, respond);
        let mark = self.mark();
        assert_eq!(
            unsafe { libc::kill(self.agent.pid() as i32, libc::SIGHUP) },
            0
        );
        let r = self
            .wait(mark, Duration::from_secs(60), |v| {
                matches!(
                    v["event"]["action"].as_str(),
                    Some("reloaded" | "reload_failed")
                )
            })
            .expect("no reload record after SIGHUP");
        assert_eq!(r["event"]["action"], "reloaded", "{r}");
        assert_eq!(r["snapmon"]["state"]["response"]["active"], true, "{r}");
        r
    }

    fn mark(&self) -> u64 {
        self.agent.mark()
    }

    /// The first record after `mark` matching `pred` (state records: alerts and events are
    /// waited for with [`Env::expect`]).
    fn wait(
        &mut self,
        mark: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.agent.wait_from(mark, timeout, pred)
    }

    fn since(&mut self, mark: u64) -> Vec<Value> {
        self.agent.since(mark)
    }

    fn expect(&mut self, e: Expect, within: Duration) -> Value {
        self.agent.expect(e, within)
    }

    /// A qcow2 image with two snapshots, writable by the attacker, known to the agent
    /// (its creation seen) before the caller re-plans.
    fn image(&mut self, store: &str, name: &str) -> PathBuf {
        let img = self.dir(store).join(name);
        let s = img.to_str().unwrap();
        let mark = self.mark();
        run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
        run("qemu-img", &["snapshot", "-c", "s1", s]);
        run("qemu-img", &["snapshot", "-c", "s2", s]);
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
        self.expect(
            Expect::event("pwrite64").path(&img).since(mark),
            Duration::from_secs(60),
        );
        img
    }

    fn alert(&mut self, mark: u64, rule: &str, pid: u32) -> Value {
        self.expect(
            Expect::alert(rule).pid(pid).since(mark),
            Duration::from_secs(30),
        )
    }

    fn no_alerts_from(&mut self, mark: u64, name: &str) {
        let bad: Vec<_> = self
            .since(mark)
            .into_iter()
            .filter(|v| {
                v["event"]["kind"] == "alert"
                    && v["process"]["name"] == name
                    && matches!(v["rule"]["id"].as_str(), Some("SM-E003" | "SM-E004"))
            })
            .collect();
        assert!(bad.is_empty(), "{name} drew a response: {bad:?}");
    }
}

/// The default policy plus `[respond]` (`respond` lines, the suite's stores), evidence in
/// the temp root and, where BPF LSM is, enforcement on the stores the attacks must not pass.
fn write_policy(root: &Path, policy: &Path, base: &str, respond: &str) {
    let list = |v: &mut dyn Iterator<Item = &&str>| {
        v.map(|d| format!("{:?}", root.join(d).display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let stores = list(&mut STORES.iter());
    let enforced = list(&mut STORES.iter().filter(|s| !NOT_ENFORCED.contains(s)));
    let mut p = format!(
        "{base}\n[respond]\n{respond}\nstores = [{stores}]\nmonitor = [{:?}]\n\n[evidence]\ndir = {:?}\n",
        root.join("recover").display().to_string(),
        root.join("evidence").display().to_string()
    );
    // Everything but opens for write: the attacker gets its fd, so both act on the write.
    if expect_lsm() {
        p.push_str(&format!(
            "\n[enforce]\nmode = \"enforce\"\nprotect = [{enforced}]\ndeny = [\"write\", \"truncate\", \"unlink\", \"rename\", \"link\", \"mmap_write\", \"ioctl\"]\n"
        ));
    }
    std::fs::write(policy, p).unwrap();
}

/// Snapshot names in `qemu-img snapshot -l` output (the TAG column).
fn snap_names(list: &str) -> Vec<String> {
    list.lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// python3 as `nobody`: the attacker needs no privilege to write an image it can open.
fn nobody_cmd(code: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        code,
    ]);
    c
}

fn nobody_python(code: &str) -> Child {
    nobody_cmd(code)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Zero nb_snapshots, then try to write a marker 100 ms later.
fn hide_then_mark(img: &Path, marker: &Path, flags: &str) -> String {
    format!(
        "import os, time\n\
         fd = os.open({img:?}, os.O_RDWR{flags})\n\
         try:\n    os.pwrite(fd, b'\\0\\0\\0\\0', 60)\n\
         except OSError as e:\n    print('pwrite:', e, flush=True)\n\
         time.sleep(0.1)\n\
         open({marker:?}, 'w').write('alive')\n",
        img = img.display().to_string(),
        marker = marker.display().to_string(),
    )
}

fn header(img: &Path) -> Vec<u8> {
    let b = std::fs::read(img).unwrap();
    b[..b.len().min(65536)].to_vec()
}

fn wait_exit(c: &mut Child, t: Duration) -> ExitStatus {
    let end = Instant::now() + t;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < end, "process {} still running", c.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// /proc state letter of `pid` (`T` stopped).
fn state(pid: u32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rfind(')')
        .and_then(|i| s[i + 2..].chars().next())
        .unwrap_or('?')
}

fn latency_ns(a: &Value) -> u64 {
    a["snapmon"]["detail"]["syscall_to_signal_ns"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no syscall_to_signal_ns: {a}"))
}

#[test]
fn kill_stops_a_python_hiding_snapshots_before_it_writes_its_marker() {
    let mut e = env();
    let stores = ["kill", "tmpfs", "ext4"];
    let imgs: Vec<PathBuf> = stores.iter().map(|s| e.image(s, "vm.qcow2")).collect();
    e.configure(r#"mode = "kill""#);
    for (store, img) in stores.iter().zip(&imgs) {
        let before = header(img);
        let marker = e.markers.join(format!("kill-{store}"));
        let mark = e.mark();
        let mut p = nobody_python(&hide_then_mark(img, &marker, ""));
        let pid = p.id();
        let st = wait_exit(&mut p, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{store}: {st}");
        assert!(
            !marker.exists(),
            "{store}: the killed process wrote its marker"
        );
        // SIGKILL pending at syscall entry: the buffered write stops before copying a byte.
        assert!(header(img) == before, "{store}: the header changed");
        let a = e.alert(mark, "SM-E003", pid);
        assert_eq!(a["event"]["action"], "kill", "{a}");
        let d = &a["snapmon"]["detail"];
        assert_eq!(d["signal"], "SIGKILL", "{a}");
        assert_eq!(d["operation"], "metadata_write", "{a}");
        assert_eq!(d["responder"], "kernel", "{a}");
        assert_eq!(a["file"]["path"], img.to_str().unwrap(), "{a}");
        assert!(a["message"].as_str().unwrap().contains("was killed"), "{a}");
        let ns = latency_ns(&a);
        assert!(ns > 0 && ns < 1_000_000_000, "{ns}");
        // With BPF LSM the same write is also denied: both act, neither undoes the other.
        if expect_lsm() {
            let d = e.alert(mark, "SM-E001", pid);
            assert_eq!(d["snapmon"]["detail"]["operation"], "write", "{d}");
        }
        note(&format!(
            "respond kill on {store}: syscall-to-signal {ns} ns (hook entry to helper return)"
        ));
    }
    // linux-aio (io_submit) and io_uring, as QEMU's aio=native and aio=io_uring write:
    // judged in the same run too.
    let img = &imgs[0];
    for (engine, op) in [("libaio", "aio_pwrite"), ("io_uring", "io_uring_write")] {
        let before = header(img);
        let mark = e.mark();
        let o = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "fio",
                "--name=t",
            ])
            .arg(format!("--ioengine={engine}"))
            .args(["--rw=write", "--bs=4k", "--size=4k", "--offset=0"])
            .arg(format!("--filename={}", img.display()))
            .arg("--output=/dev/null")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{engine}: fio's writer must die");
        let a = e.expect(
            Expect::alert("SM-E003").detail("write_op", op).since(mark),
            Duration::from_secs(30),
        );
        assert_eq!(a["snapmon"]["detail"]["signal"], "SIGKILL", "{a}");
        assert!(header(img) == before, "{engine}: the header changed");
    }
    // O_DIRECT bypasses the page cache loop that checks for a fatal signal: killed all
    // the same, and what reached the disk is reported, not assumed.
    let img = &imgs[2];
    let before = header(img);
    let marker = e.markers.join("kill-direct");
    let code = format!(
        "import os, mmap, time\n\
         fd = os.open({img:?}, os.O_RDWR | os.O_DIRECT)\n\
         b = mmap.mmap(-1, 4096)\n\
         os.preadv(fd, [b], 0)\n\
         b[60:64] = b'\\0\\0\\0\\0'\n\
         os.pwritev(fd, [b], 0)\n\
         time.sleep(0.1)\n\
         open({m:?}, 'w').write('alive')\n",
        img = img.display().to_string(),
        m = marker.display().to_string()
    );
    let mut p = nobody_python(&code);
    let st = wait_exit(&mut p, Duration::from_secs(20));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "O_DIRECT: {st}");
    assert!(!marker.exists());
    note(&format!(
        "respond kill, O_DIRECT 4 KiB header write on ext4{}: {}",
        if expect_lsm() {
            " (BPF LSM denies writes too)"
        } else {
            ""
        },
        if header(img) == before {
            "nothing written"
        } else {
            "the write landed before the process died"
        }
    ));
}

#[test]
fn evidence_is_saved_hashed_into_the_log_and_an_edit_is_caught() {
    let mut e = env();
    let img = e.image("kill", "evidence.qcow2");
    e.configure(r#"mode = "kill""#);
    let mark = e.mark();
    let mut p = nobody_python(&hide_then_mark(&img, &e.markers.join("evidence"), ""));
    let pid = p.id();
    wait_exit(&mut p, Duration::from_secs(20));
    let a = e.alert(mark, "SM-E003", pid);
    let img_s = img.display().to_string();
    let rec = e
        .wait(mark, Duration::from_secs(30), |v| {
            v["event"]["action"] == "evidence" && v["snapmon"]["state"]["image"] == img_s.as_str()
        })
        .unwrap_or_else(|| panic!("no evidence record after {a}"));
    let files = rec["snapmon"]["state"]["evidence_files"]
        .as_array()
        .unwrap()
        .clone();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            Path::new(f["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for want in ["pre-header.bin", "pre.json", "post-header.bin", "post.json"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let dir = PathBuf::from(rec["snapmon"]["state"]["dir"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(e.root.join("evidence"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    // What the agent knew before: both snapshots and where their L1 tables are.
    let pre: Value = serde_json::from_slice(&std::fs::read(dir.join("pre.json")).unwrap()).unwrap();
    assert_eq!(pre["header"]["nb_snapshots"], 2, "{pre}");
    let l1s: Vec<u64> = pre["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["l1_table_offset"].as_u64().unwrap())
        .collect();
    assert!(l1s.len() == 2 && l1s.iter().all(|&o| o > 0), "{pre}");
    let verify = |e: &Env| {
        Command::new(snapmon_e2e::bin())
            .args(["verify-log", "--live"])
            .arg(&e.agent.out)
            .output()
            .unwrap()
    };
    let o = verify(&e);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("evidence:") && text.contains("match their logged SHA-256"),
        "{text}"
    );
    // Editing an evidence file is tampering with the log's content.
    let pre_json = dir.join("pre.json");
    let orig = std::fs::read(&pre_json).unwrap();
    std::fs::write(
        &pre_json,
        String::from_utf8_lossy(&orig).replace("\"nb_snapshots\": 2", "\"nb_snapshots\": 9"),
    )
    .unwrap();
    let o = verify(&e);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("pre.json was altered"), "{text}");
    std::fs::write(&pre_json, &orig).unwrap();
    assert_eq!(verify(&e).status.code(), Some(0));
}

#[test]
fn stop_leaves_the_process_stopped_until_the_operator_resumes_it() {
    let mut e = env();
    let img = e.image("stop", "vm.qcow2");
    e.configure(r#"mode = "stop""#);
    let before = header(&img);
    let marker = e.markers.join("stop");
    let mark = e.mark();
    let mut p = nobody_python(&hide_then_mark(&img, &marker, ""));
    let pid = p.id();
    let end = Instant::now() + Duration::from_secs(10);
    while state(pid) != 'T' {
        assert!(Instant::now() < end, "not stopped: state {}", state(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let a = e.alert(mark, "SM-E003", pid);
    assert_eq!(a["event"]["action"], "stop", "{a}");
    assert_eq!(a["snapmon"]["detail"]["signal"], "SIGSTOP", "{a}");
    assert_eq!(
        a["snapmon"]["detail"]["resume"],
        format!("kill -CONT {pid}"),
        "{a}"
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(state(pid), 'T', "resumed by itself");
    assert!(!marker.exists(), "wrote its marker while stopped");
    // SIGSTOP is taken on the way back to user space: the triggering write is done (unless
    // BPF LSM refused it), what comes after is not.
    let changed = header(&img) != before;
    assert_eq!(changed, !expect_lsm(), "header changed: {changed}");
    // The operator's choice: resume it.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
    let st = wait_exit(&mut p, Duration::from_secs(20));
    assert!(st.success(), "{st}");
    assert!(marker.exists(), "resumed process did not go on");
}

#[test]
fn freeze_freezes_the_writers_whole_cgroup() {
    let mut e = env();
    let img = e.image("freeze", "vm.qcow2");
    e.configure(r#"mode = "freeze""#);
    let cg = cgroup2().join(format!("snapmon-respond-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let _gone = CgroupGuard(cg.clone());
    let beat = e.markers.join("heartbeat");
    let marker = e.markers.join("freeze-child");
    // A parent beating every 20 ms forks the writer: freezing the cgroup stops both.
    let code = format!(
        "import os, time\n\
         pid = os.fork()\n\
         if pid == 0:\n    time.sleep(0.3)\n{child}    os._exit(0)\n\
         print(pid, flush=True)\n\
         n = 0\n\
         while True:\n    n += 1\n    open({beat:?}, 'w').write(str(n))\n    time.sleep(0.02)\n",
        child = hide_then_mark(&img, &marker, "")
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
        beat = beat.display().to_string()
    );
    let procs = cg.join("cgroup.procs");
    let mark = e.mark();
    let mut parent = nobody_cmd(&code);
    parent.stdout(Stdio::piped()).stderr(Stdio::null());
    // Into the test cgroup before exec: the writer and its parent, nothing else.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        let procs = procs.clone();
        parent.pre_exec(move || std::fs::write(&procs, "0"));
    }
    let mut parent = parent.spawn().unwrap();
    let ppid = parent.id();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: u32 = line.trim().parse().unwrap();
    let a = e.alert(mark, "SM-E003", child);
    assert_eq!(a["event"]["action"], "freeze", "{a}");
    let cgname = a["snapmon"]["detail"]["cgroup"]
        .as_str()
        .unwrap_or_else(|| panic!("{a}"))
        .to_string();
    assert!(
        cgname.ends_with(cg.file_name().unwrap().to_str().unwrap()),
        "{a}"
    );
    let events = cg.join("cgroup.events");
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&events)
        .unwrap()
        .contains("frozen 1")
    {
        assert!(
            Instant::now() < end,
            "cgroup not frozen: {}",
            std::fs::read_to_string(&events).unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let n1 = std::fs::read_to_string(&beat).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        std::fs::read_to_string(&beat).unwrap_or_default(),
        n1,
        "the parent kept beating"
    );
    assert!(!marker.exists());
    // Thaw (and resume the stopped writer): both go on.
    std::fs::write(cg.join("cgroup.freeze"), "0").unwrap();
    unsafe { libc::kill(child as i32, libc::SIGCONT) };
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&beat).unwrap_or_default() == n1 {
        assert!(Instant::now() < end, "parent not resumed after thaw");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(ppid as i32, libc::SIGKILL) };
    let _ = parent.wait();
}

/// Kills whatever is left in a test cgroup and removes it, even when the test failed: a
/// writer left running would flood the agent for the tests after.
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let end = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn trusted_tools_are_untouched_with_kill_on() {
    let mut e = env();
    let img = e.image("trusted", "guest.qcow2");
    e.configure(r#"mode = "kill""#);
    let s = img.to_str().unwrap();
    let mark = e.mark();
    run("qemu-img", &["snapshot", "-c", "t1", s]);
    run("qemu-img", &["snapshot", "-d", "s1", s]);
    // A guest writing its disk through QEMU's block layer, then an internal snapshot.
    let drive = format!("file={s},if=virtio,format=qcow2,id=disk0");
    let script = format!(
        "printf 'qemu-io disk0 \"write -P 0x5a 0 1M\"\\nsavevm vmsnap\\nquit\\n' | qemu-system-x86_64 -nodefaults -display none -accel tcg -m 64 -drive {drive} -monitor stdio >/dev/null"
    );
    let st = Command::new("bash").args(["-c", &script]).status().unwrap();
    assert!(st.success(), "QEMU: {st}");
    let names = snap_names(&run("qemu-img", &["snapshot", "-l", s]));
    assert_eq!(names, ["s2", "t1", "vmsnap"], "{names:?}");
    run("qemu-io", &["-f", "qcow2", "-c", "read -P 0x5a 0 1M", s]);
    let evs = e.since(mark);
    assert!(
        evs.iter()
            .any(|v| v["process"]["name"] == "qemu-system-x86_64"
                && v["file"]["path"] == s
                && v["snapmon"]["write"]["offset"] == 60),
        "QEMU's header write was not seen"
    );
    std::thread::sleep(Duration::from_millis(500));
    e.no_alerts_from(mark, "qemu-img");
    e.no_alerts_from(mark, "qemu-system-x86_64");
}

#[test]
fn rename_unlink_and_truncate_of_a_protected_image_are_killed() {
    let mut e = env();
    let dir = e.dir("names");
    let imgs: Vec<PathBuf> = ["a.qcow2", "b.qcow2", "c.qcow2"]
        .iter()
        .map(|n| e.image("names", n))
        .collect();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "x").unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o666)).unwrap();
    e.configure(r#"mode = "kill""#);
    let cases = [
        (
            "rename",
            format!(
                "import os\nos.rename({:?}, {:?})\nprint('went on')",
                imgs[0].display().to_string(),
                format!("{}.locked", imgs[0].display())
            ),
        ),
        (
            "unlink",
            format!(
                "import os\nos.chdir({:?})\nos.unlink('b.qcow2')\nprint('went on')",
                dir.display().to_string()
            ),
        ),
        (
            "truncate",
            format!(
                "import os\nos.truncate({:?}, 0)\nprint('went on')",
                imgs[2].display().to_string()
            ),
        ),
    ];
    for (op, code) in &cases {
        let mark = e.mark();
        let mut p = nobody_python(code);
        let pid = p.id();
        let st = wait_exit(&mut p, Duration::from_secs(20));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{op}: {st}");
        let a = e.alert(mark, "SM-E003", pid);
        assert_eq!(a["snapmon"]["detail"]["operation"], *op, "{a}");
        assert!(
            a["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(dir.to_str().unwrap())),
            "{a}"
        );
    }
    // Not an image: renaming a note in the store is not the circuit breaker's business.
    let mark = e.mark();
    let mut p = nobody_python(&format!(
        "import os\nos.rename({:?}, {:?})",
        notes.display().to_string(),
        dir.join("notes.old").display().to_string()
    ));
    let st = wait_exit(&mut p, Duration::from_secs(20));
    assert!(st.success() || expect_lsm(), "{st}");
    assert_eq!(st.signal(), None, "{st}");
    std::thread::sleep(Duration::from_millis(500));
    e.no_alerts_from(mark, "python3");
}

#[test]
fn a_mass_rename_rule_is_answered_by_the_agent_with_stop() {
    let mut e = env();
    let dir = e.dir("rate");
    for i in 0..6 {
        let f = dir.join(format!("disk{i}.qcow2"));
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    // The kernel's rename class off: only the agent's rate rule answers.
    e.configure("mode = \"kill\"\nrules = [\"SM-R001\"]");
    let marker = e.markers.join("rate");
    // Exactly the threshold (5), then quiet: a rename read before it lands (slow guests) is
    // held, so the alerting one may be released by the agent's timer with no next event.
    // That path once skipped the responder (6.12 guest: the alert came, the stop never did).
    let code = format!(
        "import os, time\n\
         d = {d:?}\n\
         for i in range(5):\n    os.rename(f'{{d}}/disk{{i}}.qcow2', f'{{d}}/disk{{i}}.qcow2.locked')\n    time.sleep(0.05)\n\
         time.sleep(1.5)\n\
         open({m:?}, 'w').write('alive')\n",
        d = dir.display().to_string(),
        m = marker.display().to_string()
    );
    let mark = e.mark();
    let mut p = nobody_python(&code);
    let pid = p.id();
    let a = e.alert(mark, "SM-E003", pid);
    assert_eq!(a["snapmon"]["detail"]["responder"], "agent", "{a}");
    assert_eq!(a["snapmon"]["detail"]["trigger_rule"], "SM-R001", "{a}");
    assert_eq!(a["event"]["action"], "stop", "{a}");
    let ns = latency_ns(&a);
    note(&format!(
        "respond stop by the agent on SM-R001: syscall-to-signal {ns} ns"
    ));
    assert_eq!(state(pid), 'T');
    std::thread::sleep(Duration::from_millis(1800));
    assert!(!marker.exists(), "stopped process wrote its marker");
    let _ = p.kill();
    let _ = p.wait();
}

#[test]
fn an_alert_found_by_a_later_look_is_answered_too() {
    let mut e = env();
    let dir = e.dir("rate");
    // A qcow2 image built outside the stores, copied in through a shared mapping of a
    // blank `.log`: only the agent's timed re-look sees it land (SM-H002), with no
    // syscall event to carry the alert. That path once bypassed the responder.
    let src = e.markers.join("late-src.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"],
    );
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dst = dir.join("late.log");
    let _ = std::fs::remove_file(&dst);
    e.configure("mode = \"kill\"\nrules = [\"SM-H002\"]");
    let marker = e.markers.join("late");
    let code = format!(
        "import os, mmap, time\n\
         data = open({src:?}, 'rb').read()\n\
         fd = os.open({dst:?}, os.O_RDWR | os.O_CREAT, 0o644); os.ftruncate(fd, len(data))\n\
         m = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n\
         os.close(fd); time.sleep(0.3)\n\
         m[:] = data; m.flush(); m.close()\n\
         time.sleep(3)\n\
         open({m:?}, 'w').write('alive')\n",
        src = src.display().to_string(),
        dst = dst.display().to_string(),
        m = marker.display().to_string()
    );
    let mark = e.mark();
    let mut p = nobody_python(&code);
    let pid = p.id();
    let a = e.alert(mark, "SM-E003", pid);
    assert_eq!(a["snapmon"]["detail"]["trigger_rule"], "SM-H002", "{a}");
    assert_eq!(a["event"]["action"], "stop", "{a}");
    assert_eq!(state(pid), 'T');
    let _ = p.kill();
    let _ = p.wait();
    assert!(!marker.exists(), "stopped process wrote its marker");
}

#[test]
fn dry_run_reports_what_it_would_kill_and_signals_nothing() {
    let mut e = env();
    let img = e.image("dry", "vm.qcow2");
    e.configure("mode = \"kill\"\ndry_run = true");
    let marker = e.markers.join("dry");
    let mark = e.mark();
    let mut p = nobody_python(&hide_then_mark(&img, &marker, ""));
    let pid = p.id();
    let st = wait_exit(&mut p, Duration::from_secs(20));
    assert!(st.success(), "{st}");
    assert!(marker.exists());
    let a = e.alert(mark, "SM-E004", pid);
    assert_eq!(a["event"]["action"], "would_kill", "{a}");
    assert_eq!(a["snapmon"]["detail"]["signal"], "none", "{a}");
    assert!(e.since(mark).iter().all(|v| v["rule"]["id"] != "SM-E003"));
}

#[test]
fn recover_gives_hidden_snapshots_back_from_the_agents_log() {
    let mut e = env();
    let img = e.dir("recover").join("vm.qcow2");
    let s = img.to_str().unwrap().to_string();
    let mark = e.mark();
    run("qemu-img", &["create", "-q", "-f", "qcow2", &s, "64M"]);
    let pats = [("r1", 0x11), ("r2", 0x22), ("r3", 0x33)];
    for (name, pat) in pats {
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", &format!("write -P {pat:#x} 0 64k"), &s],
        );
        run("qemu-img", &["snapshot", "-c", name, &s]);
    }
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x44 0 64k", &s]);
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The agent logged the third snapshot.
    e.expect(
        Expect::any_event()
            .path(&img)
            .change("nb_snapshots", "3")
            .since(mark),
        Duration::from_secs(60),
    );
    e.configure(r#"mode = "kill""#);
    // A monitor store: the attack lands, the agent logs it (SM-E004), the header is lost.
    let mark = e.mark();
    let mut p = nobody_python(&format!(
        "import os\nfd = os.open({s:?}, os.O_RDWR)\nos.pwrite(fd, b'\\0' * 4, 60)\nos.pwrite(fd, (0x7fff0000).to_bytes(8, 'big'), 64)\n"
    ));
    let pid = p.id();
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    e.alert(mark, "SM-E004", pid);
    // The pointer overwrite was logged.
    e.expect(
        Expect::any_event().path(&img).offset(64).since(mark),
        Duration::from_secs(30),
    );
    assert!(snap_names(&run("qemu-img", &["snapshot", "-l", "-U", &s])).is_empty());
    let fixed = e.dir("recover").join("fixed.qcow2");
    let o = Command::new(snapmon_e2e::bin())
        .args(["recover", &s, "--out"])
        .arg(&fixed)
        .arg("--from-log")
        .arg(&e.agent.out)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("restored 3 snapshot(s)") && text.contains("log"),
        "{text}"
    );
    let f = fixed.to_str().unwrap();
    let check = Command::new("qemu-img")
        .args(["check", f])
        .output()
        .unwrap();
    let ct = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && ct.contains("No errors were found") && !ct.contains("leaked"),
        "{ct}"
    );
    let names = snap_names(&run("qemu-img", &["snapshot", "-l", f]));
    assert_eq!(names, ["r1", "r2", "r3"]);
    for (name, pat) in pats {
        run("qemu-img", &["snapshot", "-a", name, f]);
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", &format!("read -P {pat:#x} 0 64k"), f],
        );
    }
}

#[test]
fn policy_check_validates_the_respond_section_without_side_effects() {
    let d = std::env::temp_dir().join(format!("snapmon-respond-check-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("p.toml");
    std::fs::write(&p, "[respond]\nmode = \"freeze\"\nstores = [\"/srv/images\"]\nrules = [\"metadata_write\", \"SM-R001\"]\n").unwrap();
    let o = Command::new(snapmon_e2e::bin())
        .args(["policy", "check"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("respond: freeze on /srv/images; kernel: metadata_write; agent: SM-R001"),
        "{text}"
    );
    std::fs::write(
        &p,
        "[respond]\nmode = \"kill\"\nrules = [\"metadata_writes\"]\n",
    )
    .unwrap();
    let o = Command::new(snapmon_e2e::bin())
        .args(["policy", "check"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("metadata_writes") && err.contains("respond"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
