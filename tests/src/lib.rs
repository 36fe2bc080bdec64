//! Privileged end-to-end harness: start the real agent on a temp store, trigger real tools,
//! then expect records from the triggering pid (pulsar's "trigger, then expect" shape).
//!
//! One agent per test binary (loading and verifying the programs takes seconds); every test
//! gets its own subdirectory of the watched root from [`Agent::dir`], made on first use.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

mod expect;
mod loopvg;
pub use expect::{line, Expect, Severity};
pub use loopvg::{lvm, LoopVg};

pub struct Agent {
    child: Child,
    pub root: PathBuf,
    pub out: PathBuf,
    /// The `started` summary record, with the start-up detail records written before it
    /// under `snapmon.state.detail.<action>` (lists spread over parts joined again).
    pub started: Value,
    /// Reaped by `stop`: its pid may belong to someone else now.
    stopped: bool,
    /// The output parsed so far: a poll parses only what was written since the last one.
    parsed: Mutex<Parsed>,
}

/// The agent's output file read up to `off`; a partial last line is kept back in `tail`.
#[derive(Default)]
struct Parsed {
    /// (dev, ino) of the file read: another file at the same path starts over.
    id: (u64, u64),
    off: u64,
    tail: Vec<u8>,
    recs: Vec<Value>,
}

/// What an agent runs with besides the defaults (`run --format json --watch ROOT --output OUT`).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// More paths to watch (devices, `/etc/lvm` …).
    pub watch: Vec<PathBuf>,
    /// More `run` arguments: `--config` with `[[sink]]` sections, `--metrics` …
    pub args: Vec<String>,
    /// Where the agent's stdout goes (default: nowhere).
    pub stdout: Option<PathBuf>,
    /// Temp root `snapmon-e2e-<pid>-<tag>` instead of `snapmon-e2e-<pid>`, so a test's own
    /// agent does not share the shared agent's.
    pub tag: String,
    /// A root the caller prepared (mounts, modes, a policy naming its paths) instead of a
    /// fresh temp one: watched as it is, not emptied first.
    pub root: Option<PathBuf>,
}

/// Set by `cargo xtask vm-test` on kernels that allow BPF LSM (and fentry with it).
pub fn expect_lsm() -> bool {
    std::env::var_os("SNAPMON_E2E_EXPECT_LSM").is_some_and(|v| v == "1")
}

pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SNAPMON_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    root.join("target/debug/snapmon")
}

static AGENT: OnceLock<Mutex<Agent>> = OnceLock::new();

/// The shared agent (started on first use).
pub fn agent() -> std::sync::MutexGuard<'static, Agent> {
    agent_with(&[])
}

/// The shared agent, also watching `extra` (devices, `/etc/lvm` …). Only the first call of a
/// test binary starts the agent, so a binary that needs extra paths passes the same ones everywhere.
pub fn agent_with(extra: &[PathBuf]) -> std::sync::MutexGuard<'static, Agent> {
    AGENT
        .get_or_init(|| {
            let setup = Setup {
                watch: extra.to_vec(),
                ..Default::default()
            };
            // SAFETY: registering a plain extern "C" function.
            unsafe { libc::atexit(check_shared_agent_at_exit) };
            Mutex::new(Agent::start(&setup).expect("agent failed to start"))
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Start an agent owned by the caller (the shared one is [`agent`]); it is stopped when
    /// dropped, or by [`Agent::stop`].
    pub fn start(setup: &Setup) -> anyhow::Result<Agent> {
        Agent::launch(setup)
    }

    /// An agent of the calling test's own (not the shared one), on its own temp root
    /// `snapmon-e2e-<pid>-<tag>`, with extra `run` arguments (`--config FILE` …). Stopped
    /// with SIGINT when dropped.
    pub fn spawn(tag: &str, args: &[&str], extra: &[PathBuf]) -> anyhow::Result<Agent> {
        assert!(!tag.is_empty());
        Agent::launch(&Setup {
            tag: tag.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            watch: extra.to_vec(),
            ..Default::default()
        })
    }

    fn launch(setup: &Setup) -> anyhow::Result<Agent> {
        assert_eq!(unsafe { libc::geteuid() }, 0, "end-to-end tests need root");
        let mut name = format!("snapmon-e2e-{}", std::process::id());
        if !setup.tag.is_empty() {
            name = format!("{name}-{}", setup.tag);
        }
        let root = match &setup.root {
            Some(r) => r.clone(),
            None => {
                let root = std::env::temp_dir().join(name);
                let _ = std::fs::remove_dir_all(&root);
                std::fs::create_dir_all(&root)?;
                root
            }
        };
        let out = root.with_extension("jsonl");
        let _ = std::fs::remove_file(&out);
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--format", "json"])
            .args(&setup.args)
            .arg("--watch")
            .arg(&root);
        for p in &setup.watch {
            cmd.arg("--watch").arg(p);
        }
        let stdout = match &setup.stdout {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        cmd.arg("--output")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit());
        let child = spawn_tied(cmd)?;
        let mut a = Agent {
            child,
            root,
            out,
            started: Value::Null,
            stopped: false,
            parsed: Mutex::default(),
        };
        // Verifying the programs is CPU-bound: under emulation (`cargo xtask vm-test`) it can
        // take several minutes, so the wait is configurable.
        let secs = std::env::var("SNAPMON_E2E_START_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180);
        let t = Instant::now();
        a.wait_for(Duration::from_secs(secs), is_started)
            .ok_or_else(|| anyhow::anyhow!("no `started` record within {secs} s"))?;
        // The start is most of what a guest suite costs: said, for the CI budget.
        note(&format!(
            "agent started in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        a.started = started_view(&a.records());
        Ok(a)
    }

    /// Every hook the agent loaded, from its `hooks` start-up records.
    pub fn hooks(&self) -> Vec<Value> {
        self.started["snapmon"]["state"]["detail"]["hooks"]["hooks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Did `program` attach, per the start-up records?
    pub fn hook_live(&self, program: &str) -> bool {
        self.hooks()
            .iter()
            .any(|h| h["program"] == program && h["attached_to"].is_string())
    }

    /// The hooks covering write path `path` (as `snapmon doctor` names it), per the
    /// start-up `coverage` records.
    pub fn covered_by(&self, path: &str) -> Vec<String> {
        let detail = &self.started["snapmon"]["state"]["detail"]["coverage"]["paths"];
        detail
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["path"] == path)
            .flat_map(|c| c["by"].as_array().cloned().unwrap_or_default())
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect()
    }

    /// Check every line this agent wrote against the official schema of its format (ECS, or
    /// OCSF for lines with a `class_uid`): the findings, one per bad line.
    pub fn schema_errors(&self) -> Vec<String> {
        schema_errors(&self.out)
    }

    /// The agent's process id (until `stop` has reaped it).
    pub fn pid(&self) -> u32 {
        assert!(
            !self.stopped,
            "the agent was reaped: its pid may be someone else's"
        );
        self.child.id()
    }

    /// Send a signal to the agent (SIGHUP reloads the policy).
    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Stop the agent (SIGSTOP) until the guard is dropped: it then handles what happened
    /// meanwhile only after all of it, the order a busy agent meets.
    pub fn hold(&self) -> Held {
        self.signal(libc::SIGSTOP);
        Held(self.pid())
    }

    /// The test directory `name` under the watched root, made on first use. Returns once
    /// the agent has recorded the mkdir: from then on it sees what happens inside.
    pub fn dir(&mut self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty() && !name.contains('/'),
            "one directory under the root, not {name:?}"
        );
        let d = self.root.join(name);
        let mark = self.mark();
        match std::fs::create_dir(&d) {
            // Made (and waited for) by an earlier test of this binary.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return d,
            r => r.unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display())),
        }
        let me = std::process::id();
        let within = Duration::from_secs(60);
        if self
            .wait_from(mark, within, |v| records_made(v, &d, me, Made::Dir))
            .is_none()
        {
            panic!(
                "the agent recorded no mkdir of {} by pid {me} within {within:?}",
                d.display()
            );
        }
        // The hook reports the mkdir at entry: the agent may read it before the kernel made
        // the directory, and then watches it as the name lands, at the latest while it
        // handles a later record. This file is made after the mkdir returned, so once its
        // record is out, `d` is watched (relative and LSM-seen changes in it reported).
        // Not a dot-file: a hidden file planted in a store is an alert of its own (T1564).
        let sync = self.root.join(format!("made-{name}"));
        let mark = self.mark();
        std::fs::write(&sync, b"").unwrap_or_else(|e| panic!("{}: {e}", sync.display()));
        if self
            .wait_from(mark, within, |v| records_made(v, &sync, me, Made::File))
            .is_none()
        {
            panic!(
                "the agent recorded no create of {} by pid {me} within {within:?}",
                sync.display()
            );
        }
        d
    }

    /// All records so far.
    pub fn records(&self) -> Vec<Value> {
        self.parsed().recs.clone()
    }

    /// How many records the agent has written so far.
    pub fn count(&self) -> usize {
        self.parsed().recs.len()
    }

    /// The output parsed up to its last complete line. Re-parsing the whole file on every
    /// poll cost the test process more CPU than the agent under emulation, and the agent
    /// shares that CPU.
    fn parsed(&self) -> std::sync::MutexGuard<'_, Parsed> {
        use std::io::{Read as _, Seek as _};
        use std::os::unix::fs::MetadataExt as _;
        let mut p = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(mut f) = std::fs::File::open(&self.out) else {
            return p;
        };
        let Ok(md) = f.metadata() else { return p };
        if (md.dev(), md.ino()) != p.id || md.len() < p.off {
            *p = Parsed {
                id: (md.dev(), md.ino()),
                ..Parsed::default()
            };
        }
        if f.seek(std::io::SeekFrom::Start(p.off)).is_err() {
            return p;
        }
        let mut buf = std::mem::take(&mut p.tail);
        let before = buf.len();
        if f.read_to_end(&mut buf).is_err() {
            buf.truncate(before);
            p.tail = buf;
            return p;
        }
        p.off += (buf.len() - before) as u64;
        let done = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let new: Vec<Value> = buf[..done]
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect();
        p.recs.extend(new);
        p.tail = buf.split_off(done);
        p
    }

    /// The raw output lines (byte-for-byte what the agent wrote) whose record matches `pred`:
    /// fixtures are unmodified agent output, so they are not re-serialised.
    pub fn record_lines(&self, pred: impl Fn(&Value) -> bool) -> Vec<String> {
        let Ok(f) = std::fs::File::open(&self.out) else {
            return vec![];
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v)))
            .collect()
    }

    /// Returns once the agent has reported a write root makes now to a file in its root.
    /// Root's records share one lane, read in order: by then the agent has read those of
    /// everything root did before, however far behind it was (under TCG, seconds).
    pub fn barrier(&mut self) {
        let f = self.root.join("barrier.img");
        let mark = self.mark();
        let r = python(&format!(
            "open({:?}, 'ab').write(b'x')",
            f.to_str().unwrap()
        ));
        self.expect(
            Expect::event("write").pid(r.pid).path(&f).since(mark),
            Duration::from_secs(90),
        );
    }

    /// Where the output ends now; pass it to [`Agent::wait_from`].
    pub fn mark(&self) -> u64 {
        std::fs::metadata(&self.out).map_or(0, |m| m.len())
    }

    /// Like [`Agent::wait_for`], but parses only the records written after `mark`, polling
    /// every 10 ms: cheap enough to time alert latency by, even when the output is megabytes
    /// and the machine is emulated.
    pub fn wait_from(
        &mut self,
        mark: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.wait_from_lines(mark, timeout, b"", pred)
    }

    /// As [`Agent::wait_from`], parsing only the lines that contain `needle`: a debug test
    /// binary parses JSON slower than a flood writes it, and would time itself, not the agent.
    pub fn wait_from_lines(
        &mut self,
        mark: u64,
        timeout: Duration,
        needle: &[u8],
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        use std::io::{Read as _, Seek as _};
        let end = Instant::now() + timeout;
        let mut f = std::fs::File::open(&self.out).ok()?;
        f.seek(std::io::SeekFrom::Start(mark)).ok()?;
        let mut buf = Vec::new();
        loop {
            f.read_to_end(&mut buf).ok()?;
            if let Some(last) = buf.iter().rposition(|&b| b == b'\n') {
                let found = buf[..last]
                    .split(|&b| b == b'\n')
                    .filter(|l| needle.is_empty() || l.windows(needle.len()).any(|w| w == needle))
                    .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                    .find(|v| pred(v));
                if found.is_some() {
                    return found;
                }
                buf.drain(..=last);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited early: {st}");
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let end = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let p = self.parsed();
                if let Some(v) = p.recs[seen..].iter().find(|v| pred(v)) {
                    return Some(v.clone());
                }
                seen = p.recs.len();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited early: {st}");
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until no new record arrives for `quiet`, then return the records matching `pred`.
    pub fn settle(&mut self, quiet: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut n = self.count();
        let mut since = Instant::now();
        // Generous: under QEMU TCG the agent can trail a fork storm by tens of seconds.
        let deadline = Instant::now() + Duration::from_secs(90);
        while since.elapsed() < quiet && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let m = self.count();
            if m != n {
                n = m;
                since = Instant::now();
            }
        }
        self.records().into_iter().filter(|v| pred(v)).collect()
    }
}

/// What [`records_made`] looks for.
#[derive(Clone, Copy, PartialEq)]
enum Made {
    Dir,
    File,
}

/// Is `v` the agent's record of `pid` making `path` (ECS `mkdir`/`create`, or OCSF File
/// System Activity: Create, of a folder for a directory)?
fn records_made(v: &Value, path: &Path, pid: u32, made: Made) -> bool {
    let Some(path) = path.to_str() else {
        return false;
    };
    let (what, actor) = if v.get("class_uid").is_some() {
        let create = v["class_uid"] == 1001 && v["activity_id"] == 1;
        // An OCSF create need not carry a file type: only a folder's is checked.
        let kind = made == Made::File || v["file"]["type_id"] == 2;
        (create && kind, &v["actor"]["process"]["pid"])
    } else {
        let action = if made == Made::Dir { "mkdir" } else { "create" };
        (v["event"]["action"] == action, &v["process"]["pid"])
    };
    what && v["file"]["path"] == path && *actor == pid
}

/// The `started` summary in ECS, or OCSF's Application Lifecycle: Start (`--schema ocsf`).
pub fn is_started(v: &Value) -> bool {
    (v["event"]["kind"] == "state" && v["event"]["action"] == "started")
        || (v["class_uid"] == 6002 && v["activity_id"] == 3)
}

/// The first `started` summary in `records`, with the detail records before it merged in.
pub fn started_view(records: &[Value]) -> Value {
    let Some(i) = records.iter().position(is_started) else {
        return Value::Null;
    };
    if records[i].get("class_uid").is_some() {
        return records[i].clone();
    }
    let mut started = records[i].clone();
    let mut detail = serde_json::Map::new();
    for v in records[..i]
        .iter()
        .filter(|v| v["event"]["kind"] == "state")
    {
        let action = v["event"]["action"].as_str().unwrap_or("").to_string();
        let d = detail
            .entry(action)
            .or_insert_with(|| serde_json::json!({}));
        for (k, x) in v["snapmon"]["state"].as_object().into_iter().flatten() {
            match (d.get_mut(k).and_then(Value::as_array_mut), x.as_array()) {
                (Some(have), Some(more)) => have.extend(more.iter().cloned()),
                _ => d[k] = x.clone(),
            }
        }
    }
    started["snapmon"]["state"]["detail"] = Value::Object(detail);
    started
}

/// Every line of a file a sink wrote, each against the official schema of its format.
pub fn schema_errors(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    let mut errs = Vec::new();
    // A last line with no newline is a write cut short, not a record.
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    for (n, line) in complete.lines().enumerate() {
        let ocsf = line.starts_with('{') && line.contains("\"class_uid\":");
        let res = if ocsf {
            snapmon_schema::ocsf::validate_line(line)
        } else {
            snapmon_schema::ecs::validate_line(line)
        };
        if let Err(e) = res {
            errs.push(format!(
                "{}:{}: {} invalid: {}\n    {}",
                path.display(),
                n + 1,
                if ocsf { "OCSF" } else { "ECS" },
                e.join("; "),
                &line[..line.floor_char_boundary(400)]
            ));
        }
    }
    errs
}

/// Fail the test (or, at exit, the test binary) when an agent wrote a record its schema
/// rejects: every record the suites produce is validated.
fn assert_schema_valid(path: &Path) {
    let errs = schema_errors(path);
    assert!(
        errs.is_empty(),
        "{} record(s) fail schema validation:\n{}",
        errs.len(),
        errs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The shared agent is a static and never dropped: at exit, stop it and validate its output;
/// a bad record fails the whole test binary.
extern "C" fn check_shared_agent_at_exit() {
    let Some(m) = AGENT.get() else { return };
    let mut a = m.lock().unwrap_or_else(|e| e.into_inner());
    a.halt(Duration::from_secs(20));
    let errs = schema_errors(&a.out);
    if !errs.is_empty() {
        eprintln!(
            "the shared agent wrote {} record(s) that fail schema validation:\n{}",
            errs.len(),
            errs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        // SAFETY: ending the process from an exit handler without running the others.
        unsafe { libc::_exit(101) };
    }
    let _ = std::fs::remove_file(&a.out);
    let _ = std::fs::remove_dir_all(&a.root);
}

impl Agent {
    /// SIGTERM, then wait (at most `timeout`, then SIGKILL): sinks drain, files close with
    /// `log_closed`. Returns whether it exited 0 in time.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let ok = self.halt(timeout);
        if !std::thread::panicking() {
            assert_schema_valid(&self.out);
        }
        ok
    }

    /// Wait for the agent to exit on its own (a signal the test sent), then check its output
    /// as [`Agent::stop`] does; past `timeout` it is killed and this is false. No SIGTERM of
    /// the harness's races the test's own signal.
    pub fn exited(&mut self, timeout: Duration) -> bool {
        let ok = self.reap(timeout);
        if !std::thread::panicking() {
            assert_schema_valid(&self.out);
        }
        ok
    }

    /// [`Agent::stop`] without the schema check.
    fn halt(&mut self, timeout: Duration) -> bool {
        if self.stopped {
            return true;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.reap(timeout)
    }

    /// Wait up to `timeout` for the agent to exit (then kill it): did it exit 0?
    fn reap(&mut self, timeout: Duration) -> bool {
        if self.stopped {
            return true;
        }
        let end = Instant::now() + timeout;
        let ok = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st.success(),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break false;
                }
            }
        };
        self.stopped = true;
        ok
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = self.child.wait();
            self.stopped = true;
            if !std::thread::panicking() {
                assert_schema_valid(&self.out);
            }
        }
        // A failed test keeps the agent's output and temp root to be looked at.
        if std::thread::panicking() {
            eprintln!(
                "kept the agent's output {} and temp root {}",
                self.out.display(),
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.out);
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Spawn `cmd` so that it gets SIGTERM when the test binary dies: an agent must not outlive
/// its tests. PDEATHSIG follows the spawning *thread*, so the spawn happens on a thread that
/// lives as long as the process.
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv().map_err(std::io::Error::other)?
}

/// The agent binary run directly (`run --format json --stats-interval 0 --watch WATCH ARGS
/// --output OUT`, stderr to the file `err`), for a test that kills it, restarts it on the same
/// files or starves its sinks, as the harness's [`Agent`] would not let it: the child and its
/// `started` record, once written (a start that fails says what stderr said). The child is
/// killed when dropped, so a failing test leaves no agent writing.
pub fn start_raw(watch: &Path, args: &[&str], out: &Path, err: &Path) -> (Reaped, Value) {
    let child = Command::new(bin())
        .args([
            "run",
            "--format",
            "json",
            "--stats-interval",
            "0",
            "--watch",
        ])
        .arg(watch)
        .args(args)
        .arg("--output")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .unwrap();
    let child = Reaped(child);
    let started = eventually(start_timeout(), "the started record", || {
        json_lines(out)
            .into_iter()
            .find(|v| v["event"]["action"] == "started")
            .ok_or_else(|| std::fs::read_to_string(err).unwrap_or_default())
    });
    (child, started)
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no
/// collector or agent behind (it would keep its ports and sockets, and the lock file a
/// serialised test run holds, since it inherits the descriptor).
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        // A child already waited for is not signalled again (std knows it was reaped).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished trigger: the pid it ran as and its output.
pub struct Ran {
    pub pid: u32,
    pub stdout: String,
}

/// Run a command to completion, failing the test if it fails.
/// A held agent (`Agent::hold`): SIGCONT when dropped, also when the test fails.
pub struct Held(u32);

impl Drop for Held {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// An agent on [`policy_with_libvirtd`]'s policy, and the trusted copy of python3.
pub struct WithLibvirtd {
    pub agent: Agent,
    pub libvirtd: PathBuf,
}

/// The suite's one agent with a trusted libvirtd (a static per test binary: each suite is
/// one), started on first use with `tag` naming its policy and agent.
pub fn with_libvirtd(tag: &str) -> std::sync::MutexGuard<'static, WithLibvirtd> {
    static S: OnceLock<Mutex<WithLibvirtd>> = OnceLock::new();
    S.get_or_init(|| {
        let (p, libvirtd) = policy_with_libvirtd(tag);
        let agent = Agent::spawn(tag, &["--config", p.to_str().unwrap()], &[])
            .expect("agent with a trusted libvirtd");
        Mutex::new(WithLibvirtd { agent, libvirtd })
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

/// The default policy with a copy of python3 (`<temp>/snapmon-<tag>-<pid>-policy/libvirtd`)
/// among the `libvirt` actor's executables: the trusted identity that writes snapshot XML
/// the way libvirt does, on a host without libvirtd. Returns the policy file and the copy.
pub fn policy_with_libvirtd(tag: &str) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("snapmon-{tag}-{}-policy", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let libvirtd = base.join("libvirtd");
    std::fs::copy("/usr/bin/python3", &libvirtd).unwrap();
    let default = run(bin().to_str().unwrap(), &["policy", "default"]).stdout;
    let policy = default.replace(
        "\"/usr/sbin/libvirtd\",",
        &format!("\"/usr/sbin/libvirtd\", {:?},", libvirtd.to_str().unwrap()),
    );
    assert_ne!(
        policy, default,
        "the default policy names no /usr/sbin/libvirtd"
    );
    let p = base.join("policy.toml");
    std::fs::write(&p, policy).unwrap();
    (p, libvirtd)
}

pub fn run(cmd: &str, args: &[&str]) -> Ran {
    let child = Command::new(cmd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (run `cargo xtask setup`)"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ran {
        pid,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Run a Python snippet (the "python writer" of the tests).
pub fn python(code: &str) -> Ran {
    run("python3", &["-c", code])
}

/// Is this record an event about `path` (file or target)?
pub fn about(v: &Value, path: &Path) -> bool {
    let p = path.to_string_lossy();
    v["event"]["kind"] != "state"
        && (v["file"]["path"].as_str() == Some(&p) || dest(v) == Some(&*p))
}

/// A rename's or link's destination path (`snapmon.destination.path`).
pub fn dest(v: &Value) -> Option<&str> {
    v["snapmon"]["destination"]["path"].as_str()
}

pub fn action(v: &Value) -> &str {
    v["event"]["action"].as_str().unwrap_or("")
}

pub fn regions(v: &Value) -> Vec<String> {
    v["snapmon"]["classification"]["regions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Changes as `field: before → after`, or `field: value` when one side is empty (an item
/// added or removed), the way the agent's own tail view prints them.
pub fn changes(v: &Value) -> Vec<String> {
    v["snapmon"]["classification"]["changes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let (f, b, af) = (
                        c["field"].as_str().unwrap_or(""),
                        c["before"].as_str().unwrap_or(""),
                        c["after"].as_str().unwrap_or(""),
                    );
                    match (b.is_empty(), af.is_empty()) {
                        (true, false) => format!("{f}: {af}"),
                        (false, true) => format!("{f}: {b}"),
                        _ => format!("{f}: {b} → {af}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The loss causes a sink counts (`snapmon::sink::set::Cause`): a cause name outside this list
/// is a typo in a test, not a zero.
pub const SINK_CAUSES: &[&str] = &[
    "queue_full",
    "write_error",
    "no_space",
    "spill_full",
    "spill_error",
    "shutdown",
    "sink_dead",
];

/// The payload of a state or metric record (`snapmon.state` / `snapmon.metric`, ECS).
fn payload(record: &Value) -> &Value {
    match record["event"]["kind"].as_str() {
        Some("state") => &record["snapmon"]["state"],
        Some("metric") => &record["snapmon"]["metric"],
        _ => panic!("not a state or metric record: {record:.600}"),
    }
}

/// The one `stopped` record among `records`.
pub fn stopped_record(records: &[Value]) -> &Value {
    let mut it = records
        .iter()
        .filter(|v| v["event"]["kind"] == "state" && v["event"]["action"] == "stopped");
    let st = it.next().expect("no stopped record");
    assert!(it.next().is_none(), "more than one stopped record");
    st
}

/// One sink's counters in a `stopped` record (`snapmon.state.sinks`) or a periodic `stats`
/// record (`snapmon.metric.sinks`): schema 2 lists them as `[{name, received, filtered,
/// written, dropped, dropped_by_cause, state, disconnects, …}]`. A record without that list,
/// or without the sink, fails the test (it is never read as zeros).
pub fn sink_counters<'a>(record: &'a Value, sink: &str) -> &'a Value {
    let sinks = payload(record)["sinks"]
        .as_array()
        .unwrap_or_else(|| panic!("no `sinks` list in {record:.600}"));
    let mut it = sinks.iter().filter(|s| s["name"] == sink);
    let c = it.next().unwrap_or_else(|| {
        let names: Vec<&Value> = sinks.iter().map(|s| &s["name"]).collect();
        panic!("no sink {sink:?} among {names:?}")
    });
    assert!(it.next().is_none(), "sink {sink:?} listed twice");
    c
}

/// A numeric counter of [`sink_counters`] (`received`, `written`, `dropped`, `disconnects` …);
/// an absent or non-numeric one fails the test.
pub fn counter(sink: &Value, key: &str) -> u64 {
    sink[key]
        .as_u64()
        .unwrap_or_else(|| panic!("sink counter `{key}` missing or not a count: {sink}"))
}

/// What a sink of [`sink_counters`] dropped for `cause`, from `dropped_by_cause`
/// (`[{cause, count}]`, listing only causes with drops: an unlisted cause is 0, but the list
/// itself must be there).
pub fn dropped_by(sink: &Value, cause: &str) -> u64 {
    assert!(SINK_CAUSES.contains(&cause), "unknown loss cause {cause:?}");
    let by = sink["dropped_by_cause"]
        .as_array()
        .unwrap_or_else(|| panic!("no `dropped_by_cause` list: {sink}"));
    by.iter()
        .filter(|c| c["cause"] == cause)
        .map(|c| {
            c["count"]
                .as_u64()
                .unwrap_or_else(|| panic!("`dropped_by_cause` entry without a count: {c}"))
        })
        .sum()
}

/// What a `lost` metric record (`snapmon.metric.sinks`: `[{sink, cause, count}]`) reports for
/// `sink` and `cause` (0 when it reports only other sinks or causes). A record that is not a
/// well-formed `lost` record fails the test.
pub fn lost_count(record: &Value, sink: &str, cause: &str) -> u64 {
    assert!(SINK_CAUSES.contains(&cause), "unknown loss cause {cause:?}");
    assert!(
        record["event"]["kind"] == "metric" && record["event"]["action"] == "lost",
        "not a lost record: {record:.600}"
    );
    let entries = record["snapmon"]["metric"]["sinks"]
        .as_array()
        .unwrap_or_else(|| panic!("lost record without a `sinks` list: {record:.600}"));
    entries
        .iter()
        .inspect(|e| {
            assert!(
                e["sink"].is_string() && e["cause"].is_string() && e["count"].is_u64(),
                "lost entry is not {{sink, cause, count}}: {e}"
            )
        })
        .filter(|e| e["sink"] == sink && e["cause"] == cause)
        .map(|e| e["count"].as_u64().unwrap())
        .sum()
}

/// Every sink loss of `cause` for `sink` the `lost` records among `records` reported.
pub fn lost_total(records: &[Value], sink: &str, cause: &str) -> u64 {
    records
        .iter()
        .filter(|v| v["event"]["kind"] == "metric" && v["event"]["action"] == "lost")
        .map(|v| lost_count(v, sink, cause))
        .sum()
}

/// Summary of records for assertion messages.
pub fn brief(vs: &[Value]) -> String {
    vs.iter()
        .map(|v| {
            format!(
                "{} {} @{}+{} pid={} {} {:?} {:?}",
                action(v),
                v["file"]["path"].as_str().unwrap_or("-"),
                v["snapmon"]["write"]["offset"],
                v["snapmon"]["write"]["length"],
                v["process"]["pid"],
                v["process"]["name"].as_str().unwrap_or(""),
                regions(v),
                changes(v)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Hand recorded lines out of a VM guest (whose filesystems vanish at power-off) over the
/// console: `SNAPMON-FIXTURE-BEGIN <rel>`, the lines, `SNAPMON-FIXTURE-END <rel> lines=N`.
/// `cargo xtask vm-test` extracts them into `target/vm-test/<release>/fixtures/<rel>` (and,
/// with `--save-fixtures`, into `snapmon/tests/fixtures/rules/<rel>`). Written to fd 1
/// directly, so libtest's output capture does not swallow them.
/// `{path: "major:minor:inode"}` of the executables that exist here, in the format of the
/// rule fixtures' identities.json (identities are per host; the guest's differ from ours).
pub fn identities_json(paths: &[&str]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut m = serde_json::Map::new();
    for p in paths {
        if let Ok(md) = std::fs::metadata(p) {
            let d = md.dev();
            m.insert(
                (*p).into(),
                Value::from(format!(
                    "{}:{}:{}",
                    libc::major(d),
                    libc::minor(d),
                    md.ino()
                )),
            );
        }
    }
    Value::Object(m).to_string()
}

pub fn emit_fixture(rel: &str, lines: &[String]) {
    use std::io::Write as _;
    assert!(!lines.is_empty(), "fixture {rel} would be empty");
    let mut out = format!("\nSNAPMON-FIXTURE-BEGIN {rel}\n");
    for l in lines {
        assert!(!l.contains('\n'));
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&format!(
        "SNAPMON-FIXTURE-END {rel} lines={}\n",
        lines.len()
    ));
    let mut so = std::io::stdout().lock();
    so.write_all(out.as_bytes()).unwrap();
    so.flush().unwrap();
}

/// A line for the run's log even when the test passes (libtest captures `println!`, not fd 1):
/// measured latencies and the like.
pub fn note(msg: &str) {
    use std::io::Write as _;
    let mut so = std::io::stdout().lock();
    let _ = writeln!(so, "\nNOTE {msg}");
    let _ = so.flush();
}

/// An ephemeral port nobody listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns `Ok`, or fail with `what` and the last error.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > end => panic!("{what} within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Every line of `p` that parses as JSON.
pub fn json_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The agent's Prometheus text (empty when the endpoint is not up).
pub fn metrics(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body
}

/// The value of the first series line (`NAME{LABELS} VALUE`) starting with `prefix`.
pub fn series(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// How long an agent may take to start: verifying the programs takes minutes under emulation.
pub fn start_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("SNAPMON_E2E_START_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    )
}

/// `setpriv` arguments that make the attacker: nobody, nogroup, no supplementary groups.
pub const SETPRIV: &[&str] = &["--reuid=nobody", "--regid=nogroup", "--clear-groups"];
/// The system python, not a pyenv shim that nobody cannot run.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Run `cmd` as nobody (setpriv execs it: the pid is the command's).
pub fn as_nobody(cmd: &str, args: &[&str]) -> Ran {
    run("setpriv", &[SETPRIV, &[cmd], args].concat())
}

/// The system python as nobody.
pub fn nobody_py(code: &str) -> Ran {
    as_nobody(SYSTEM_PYTHON, &["-c", code])
}

/// A 1777 store under the agent's root (as /var/lib/libvirt/images is not, but a shared
/// scratch store may be): nobody can create files in it, not replace root's.
pub fn open_store(a: &Agent) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let d = a.root.join("store");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&a.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// A root-owned qcow2 image with three snapshots, made by qemu-img.
pub fn image_with_3_snapshots(d: &Path, name: &str) -> PathBuf {
    let img = d.join(name);
    let s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
    for sn in ["s1", "s2", "s3"] {
        run("qemu-img", &["snapshot", "-c", sn, s]);
    }
    img
}

/// Root's python zeroes nb_snapshots (offset 60, 4 bytes): SM-Q002. Returns (pid, mark).
pub fn hide_snapshots(a: &Agent, img: &Path) -> (u32, u64) {
    let mark = a.mark();
    let r = python(&format!(
        "import os; fd=os.open({:?}, os.O_RDWR); os.pwrite(fd, bytes(4), 60)",
        img.to_str().unwrap()
    ));
    (r.pid, mark)
}

/// The SM-Q002 alert for `pid` after `mark` (`None` for a test that times it or asserts its
/// absence; [`Agent::expect`] fails with the near misses).
pub fn q002(a: &mut Agent, mark: u64, pid: u32, timeout: Duration) -> Option<Value> {
    a.find(&Expect::alert("SM-Q002").pid(pid).since(mark), timeout)
}

/// Alerts above low, as "RULE severity message" lines (for benign tests' assertions).
pub fn loud(alerts: &[Value]) -> Vec<String> {
    alerts
        .iter()
        .filter(|v| {
            !matches!(
                v["snapmon"]["severity"].as_str(),
                Some("info") | Some("low")
            )
        })
        .map(|v| {
            format!(
                "{} {} {}",
                v["rule"]["id"],
                v["snapmon"]["severity"],
                v["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// `mov r32, imm32` (`op` = 0xb8 + register).
pub fn mov(c: &mut Vec<u8>, op: u8, v: u32) {
    c.push(op);
    c.extend_from_slice(&v.to_le_bytes());
}

/// A static i386 ELF (tests of 32-bit programs: e2e, uring): `code(data_at)` (which must not depend on `data_at` for its length)
/// followed by `data`, then `exit(0)`; every syscall through `int 0x80`: compat syscalls,
/// which the x86-64 syscall tracepoints never see. One writable segment: the code may fill
/// in `data` (fds, pointers) before handing it to a syscall.
pub fn i386_program(code: impl Fn(u32) -> Vec<u8>, data: &[u8]) -> Vec<u8> {
    const BASE: u32 = 0x0804_8000;
    const HDR: u32 = 52 + 32;
    let with_exit = |at: u32| {
        let mut c = code(at);
        mov(&mut c, 0xb8, 1); // eax = exit
        c.extend_from_slice(&[0x31, 0xdb, 0xcd, 0x80]); // ebx = 0; int 0x80
        c
    };
    let data_at = BASE + HDR + with_exit(0).len() as u32;
    let mut body = with_exit(data_at);
    body.extend_from_slice(data);
    let total = HDR + body.len() as u32;
    let mut elf = b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    for h in [2u16, 3] {
        elf.extend_from_slice(&h.to_le_bytes()); // ET_EXEC, EM_386
    }
    for w in [1u32, BASE + HDR, 52, 0, 0] {
        elf.extend_from_slice(&w.to_le_bytes()); // version, entry, phoff, shoff, flags
    }
    for h in [52u16, 32, 1, 0, 0, 0] {
        elf.extend_from_slice(&h.to_le_bytes()); // ehsize, phentsize, phnum, sh*
    }
    for w in [1u32, 0, BASE, BASE, total, total, 7, 0x1000] {
        elf.extend_from_slice(&w.to_le_bytes()); // PT_LOAD, R+W+X
    }
    elf.extend_from_slice(&body);
    elf
}

/// `mov dword [at], v`.
pub fn store(c: &mut Vec<u8>, at: u32, v: u32) {
    c.extend_from_slice(&[0xc7, 0x05]);
    c.extend_from_slice(&at.to_le_bytes());
    c.extend_from_slice(&v.to_le_bytes());
}

pub fn c_string(p: &Path) -> Vec<u8> {
    let mut b = p.as_os_str().as_encoded_bytes().to_vec();
    b.push(0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stopped() -> Value {
        json!({"event": {"kind": "state", "action": "stopped"}, "snapmon": {"state": {"sinks": [
            {"name": "file:/a", "received": 5, "written": 3, "dropped": 2,
             "dropped_by_cause": [{"cause": "no_space", "count": 2}]},
            {"name": "tcp:127.0.0.1:9", "received": 5, "written": 5, "dropped": 0,
             "dropped_by_cause": []},
        ]}}})
    }

    #[test]
    fn schema_2_sink_counters_are_read_by_name() {
        let r = stopped();
        let a = sink_counters(&r, "file:/a");
        assert_eq!((counter(a, "received"), counter(a, "written")), (5, 3));
        assert_eq!(dropped_by(a, "no_space"), 2);
        assert_eq!(dropped_by(a, "write_error"), 0);
        let lost = json!({"event": {"kind": "metric", "action": "lost"}, "snapmon": {"metric": {"sinks": [
            {"sink": "file:/a", "cause": "no_space", "count": 2},
            {"sink": "tcp:127.0.0.1:9", "cause": "spill_full", "count": 7},
        ]}}});
        assert_eq!(lost_count(&lost, "file:/a", "no_space"), 2);
        assert_eq!(lost_total(&[lost.clone(), lost], "file:/a", "no_space"), 4);
    }

    #[test]
    #[should_panic(expected = "no sink")]
    fn a_missing_sink_is_an_error() {
        sink_counters(&stopped(), "file:/b");
    }

    #[test]
    #[should_panic(expected = "no `sinks` list")]
    fn the_schema_1_object_keyed_by_name_is_an_error() {
        let old = json!({"event": {"kind": "state", "action": "stopped"},
                         "snapmon": {"state": {"sinks": {"file:/a": {"written": 3}}}}});
        sink_counters(&old, "file:/a");
    }

    #[test]
    #[should_panic(expected = "missing")]
    fn a_missing_counter_is_an_error() {
        counter(sink_counters(&stopped(), "file:/a"), "disconnects");
    }

    #[test]
    #[should_panic(expected = "unknown loss cause")]
    fn a_misspelt_cause_is_an_error() {
        dropped_by(sink_counters(&stopped(), "file:/a"), "nospace");
    }
}
