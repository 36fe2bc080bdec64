//! Sinks under faults, with the live agent: a file sink on a filesystem that fills up (a
//! small tmpfs the test mounts), TCP collectors that stall and then die (plain and
//! acknowledged mode), a collector socket planted by `nobody`, and the spill's permissions.
//! Every loss must be counted with its cause and said once on stderr, nothing counted as
//! written may be missing beyond what the documented limit allows, and the file must stay on
//! line boundaries.
// xtask-suite: host-only

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{
    bin, counter, dropped_by, eventually, free_port, json_lines, lost_total, python, run, series,
    sink_counters, start_raw, stopped_record, Reaped,
};

/// The agent binary run directly, with its stderr kept in a file.
struct Run {
    child: Reaped,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Run {
    fn start(dir: &Path, watch: &Path, args: &[&str]) -> Run {
        let out = dir.join("truth.jsonl");
        let err = dir.join("stderr");
        let (child, _) = start_raw(watch, args, &out, &err);
        Run { child, out, err }
    }
    fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert!(st.success(), "agent exited {st}");
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
    /// The sink's final counters, from the `stopped` record of the agent's own output.
    fn stopped_sink(&self, name: &str) -> Value {
        sink_counters(stopped_record(&json_lines(&self.out)), name).clone()
    }
}

fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snapmon-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("watch")).unwrap();
    d
}

/// `n` writes to one watched file: `n` event records.
fn writes(watch: &Path, name: &str, n: usize) {
    let f = watch.join(name);
    python(&format!(
        "import os\nfd=os.open({:?}, os.O_RDWR|os.O_CREAT)\nfor i in range({n}): os.pwrite(fd, b'x', i)",
        f.to_str().unwrap()
    ));
}

/// A tmpfs of `size` the test mounts and unmounts.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_counted_said_once_and_the_file_resumes_on_a_line_boundary() {
    let work = workdir("full");
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    );
    let _m = Mount(mnt.clone());
    let log = mnt.join("alerts.jsonl");
    let name = format!("file:{}", log.display());
    let mut agent = Run::start(&work, &work.join("watch"), &["--sink", &name]);
    writes(&work.join("watch"), "before.raw", 20);
    // Fill the filesystem.
    python(&format!(
        "f=open({:?}, 'wb', buffering=0)\ntry:\n    while True: f.write(b'f'*4096)\nexcept OSError: pass",
        mnt.join("filler").to_str().unwrap()
    ));
    writes(&work.join("watch"), "full.raw", 100);
    eventually(Duration::from_secs(120), "no_space drops", || {
        let e = agent.stderr();
        e.contains("write failed").then_some(()).ok_or(e)
    });
    std::fs::remove_file(mnt.join("filler")).unwrap();
    writes(&work.join("watch"), "after.raw", 20);
    eventually(Duration::from_secs(120), "recovery", || {
        let e = agent.stderr();
        e.contains("writing again").then_some(()).ok_or(e)
    });
    // Let the last batch and the last `lost` record be written before the counters are read.
    std::thread::sleep(Duration::from_millis(2500));
    agent.stop();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    for (i, l) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<Value>(l).is_ok(),
            "line {} is not whole JSON: {l:.200}",
            i + 1
        );
    }
    let lines = json_lines(&log);
    let records = lines
        .iter()
        .filter(|v| v["event"]["id"].is_string() && v["event"]["action"] != "stopped")
        .count() as u64;
    let st = agent.stopped_sink(&name);
    let no_space = dropped_by(&st, "no_space");
    let (received, written) = (counter(&st, "received"), counter(&st, "written"));
    eprintln!(
        "full disk: received {received} filtered {} written {written} no_space {no_space} in the file {records}",
        counter(&st, "filtered"),
    );
    assert!(no_space > 0, "{st}");
    assert_eq!(written, records, "written is what the file has: {st}");
    assert_eq!(
        received,
        written + counter(&st, "dropped"),
        "every record written or counted lost: {st}"
    );
    assert_eq!(st["state"], "open", "recovered: {st}");
    // Said once, then once more when it recovered.
    let err = agent.stderr();
    assert_eq!(err.matches("write failed").count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.matches("writing again").count(), 1, "{err}");
    // The file itself says what it lost, and the loss went out in `lost` records.
    // (A disk on the edge flaps: one `log_resumed` per episode, said once on stderr.)
    let resumed: u64 = lines
        .iter()
        .filter(|v| {
            v["event"]["action"] == "log_resumed"
                && v["snapmon"]["state"]["reason"] == "write_error"
        })
        .map(|v| {
            v["snapmon"]["state"]["lost_records"]
                .as_u64()
                .unwrap_or_else(|| panic!("log_resumed without lost_records: {v}"))
        })
        .sum();
    assert_eq!(
        resumed, no_space,
        "log_resumed records account for every loss"
    );
    let lost = lost_total(&json_lines(&agent.out), &name, "no_space");
    assert_eq!(
        lost, no_space,
        "the lost records report every no_space drop"
    );
    // Not tampered: verify-log says what is missing, exit 3.
    let o = Command::new(bin())
        .arg("verify-log")
        .arg(&log)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(
        out.contains(": lost: ") && out.contains("not tampered"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// A collector in its own process: reads lines one byte at a time (no read-ahead that a kill
/// would lose unseen), stores each, acknowledges (`ack N`) if asked, and stops reading after
/// `stall_after` lines with a small receive buffer.
fn collector(port: u16, out: &Path, ack: bool, stall_after: usize) -> Reaped {
    const SRC: &str = r#"
import socket, sys
port, out, ack, stall = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.bind(("127.0.0.1", port))
s.listen(8)
f = open(out, "ab", buffering=0)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    # Byte by byte only before a stall (a kill must not lose read-ahead unseen); buffered
    # otherwise, so a collector under emulation keeps up.
    r = c.makefile("rb", buffering=0 if stall else -1)
    n = 0
    while stall == 0 or n < stall:
        line = r.readline()
        if not line:
            break
        f.write(line)
        n += 1
        if ack:
            c.sendall(b"ack %d\n" % n)
    if stall and n >= stall:
        print("stalled", flush=True)
        import time
        time.sleep(3600)
"#;
    let mut c = Reaped(
        Command::new("python3")
            .args(["-c", SRC, &port.to_string()])
            .arg(out)
            .args([if ack { "1" } else { "0" }, &stall_after.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    c
}

fn ids(p: &Path) -> Vec<String> {
    json_lines(p)
        .iter()
        .filter_map(|v| v["event"]["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_stalled_then_dead_collector_loses_nothing_acknowledged_and_counts_only_what_it_got() {
    let work = workdir("stall");
    let (pp, pa) = (free_port(), free_port());
    let (plain_out, ack_out) = (work.join("plain.jsonl"), work.join("ack.jsonl"));
    let mut cp = collector(pp, &plain_out, false, 50);
    let mut ca = collector(pa, &ack_out, true, 50);
    let (plain, acked) = (format!("tcp:127.0.0.1:{pp}"), format!("tcp:127.0.0.1:{pa}"));
    let sp = format!("{plain},backoff_min=50ms,backoff_max=200ms,write_timeout=3s");
    let sa = format!("{acked},ack=true,backoff_min=50ms,backoff_max=200ms,write_timeout=3s");
    let mport = free_port();
    let mut agent = Run::start(
        &work,
        &work.join("watch"),
        &[
            "--sink",
            &sp,
            "--sink",
            &sa,
            "--metrics",
            &format!("127.0.0.1:{mport}"),
        ],
    );
    writes(&work.join("watch"), "burst.raw", 1600);
    let metrics = || -> String {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut b = String::new();
        c.read_to_string(&mut b).unwrap();
        b
    };
    // A sink missing from the endpoint fails the test rather than reading as 0 written.
    let written = |body: &str, sink: &str| -> u64 {
        series(
            body,
            &format!("snapmon_sink_written_total{{sink=\"{sink}\"}}"),
        )
        .unwrap_or_else(|| panic!("no written_total for {sink}: {body}")) as u64
    };
    // Both collectors stalled after 50 lines: the sinks must not count what sits in buffers.
    std::thread::sleep(Duration::from_secs(3));
    let body = metrics();
    let (wp, wa) = (written(&body, &plain), written(&body, &acked));
    eprintln!("stalled: plain counted {wp} written, acknowledged mode {wa} (collectors read 50)");
    assert!(wa <= 50, "ack mode counted {wa} with 50 acknowledged");
    // Plain mode: only what TCP acknowledged, i.e. what the collector's 4 KiB receive buffer
    // (8 KiB as the kernel doubles it) holds on top of the 50 lines read.
    assert!(
        wp <= 60,
        "plain mode counted {wp} of the 1 600 while the collector read 50"
    );
    // The collectors die with records unread; new ones take over on the same ports.
    for c in [&mut cp, &mut ca] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut cp2 = collector(pp, &plain_out, false, 0);
    let mut ca2 = collector(pa, &ack_out, true, 0);
    let truth_n = || ids(&agent.out).len() as u64;
    eventually(Duration::from_secs(300), "both sinks to catch up", || {
        let body = metrics();
        let n = truth_n();
        (written(&body, &plain) + 2 >= n && written(&body, &acked) + 2 >= n)
            .then_some(())
            .ok_or(format!("{n} records; {body}"))
    });
    agent.stop();
    for c in [&mut cp2, &mut ca2] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let truth: Vec<String> = ids(&agent.out);
    let report = |what: &str, got: &[String]| -> usize {
        let set: HashSet<&String> = got.iter().collect();
        let missing = truth.iter().filter(|i| !set.contains(i)).count();
        eprintln!(
            "{what}: {} written by the agent, {} delivered ({} distinct, {} duplicates), {missing} missing",
            truth.len(),
            got.len(),
            set.len(),
            got.len() - set.len()
        );
        missing
    };
    // The stopped record went out after the stats it carries: compare all but it.
    assert_eq!(report("acknowledged mode", &ids(&ack_out)), 0);
    let lost_plain = report("plain mode", &ids(&plain_out));
    assert!(
        lost_plain <= 10,
        "plain mode lost {lost_plain}: more than the dead collector's receive buffer holds"
    );
    let st = agent.stopped_sink(&acked);
    assert_eq!(counter(&st, "dropped"), 0, "{st}");
    assert!(counter(&st, "disconnects") >= 1, "{st}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_collector_socket_planted_by_nobody_is_refused() {
    let work = workdir("owner");
    let dir = work.join("public");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = dir.join("collector.sock");
    // `nobody` listens where the operator's collector would.
    // (setpriv execs python3: killing the child kills the listener.)
    let mut fake = Reaped(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args(["/usr/bin/python3", "-c"])
            .arg(
                "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(4)\nprint('ready', flush=True)\nc, _ = s.accept()\nprint('got a connection', flush=True)\nimport time; time.sleep(60)",
            )
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(fake.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Told to fail: it refuses to start (exit 2, as every start-up error), naming the owner;
    // syslog on such a socket too (datagram: fails by default).
    for sink in [
        format!("unix:{},on_unreachable=fail", sock.display()),
        format!("syslog:{}", sock.display()),
    ] {
        let o = Command::new(bin())
            .args(["run", "--watch"])
            .arg(work.join("watch"))
            .arg("--sink")
            .arg(&sink)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{sink}: {err}");
        assert!(err.contains("not root"), "{sink}: {err}");
    }
    // By default it starts, warns, spills, and never connects.
    let mut agent = Run::start(
        &work,
        &work.join("watch"),
        &["--sink", &format!("unix:{}", sock.display())],
    );
    writes(&work.join("watch"), "w.raw", 5);
    std::thread::sleep(Duration::from_secs(1));
    agent.stop();
    let err = agent.stderr();
    assert!(
        err.contains("WARNING") && err.contains("uid 65534"),
        "{err}"
    );
    let _ = fake.kill();
    let _ = fake.wait();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    assert!(
        !rest.contains("got a connection"),
        "the agent connected: {rest}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn spill_segments_are_private() {
    let work = workdir("spill");
    let spill = work.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::set_permissions(&spill, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let mut agent = Run::start(
        &work,
        &work.join("watch"),
        &[
            "--sink",
            &format!("tcp:127.0.0.1:{port},spill_dir={}", spill.display()),
        ],
    );
    writes(&work.join("watch"), "w.raw", 20);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    eventually(Duration::from_secs(20), "a spill segment", || {
        std::fs::read_dir(&spill)
            .unwrap()
            .next()
            .map(|_| ())
            .ok_or_else(|| "none".to_string())
    });
    assert_eq!(mode(&spill), 0o700);
    for e in std::fs::read_dir(&spill).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    // `nobody` cannot read the command lines in it.
    let seg = std::fs::read_dir(&spill)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(&seg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    agent.stop();
    let _ = std::fs::remove_dir_all(&work);
}
