//! End-to-end outputs through the live kernel agent: one agent writing to a size-rotated,
//! keyed file set, a TCP consumer process, a real rsyslogd (its own config, pid file, UDP
//! port and output file) and stdout at once. Real attacks on qcow2 images; the consumer is
//! killed mid-stream and restarted; every alert must reach every sink, the per-hook counters
//! must count the attack writes, and `verify-log` must accept the file set and catch each
//! kind of tampering at the right line.
// xtask-suite: host-only

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{bin, python, run, Agent, Setup};

const RULE: &str = "SM-Q002";
const ATTACKS: usize = 9;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns Some, or fail with `what` and the last state.
fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > end => panic!("{what} within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The socket consumer: a separate python3 process that appends every line it reads, one
/// unbuffered write per line, so SIGKILL loses nothing it has read.
fn consumer(port: u16, out: &Path) -> Proc {
    const SRC: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4)
out = open(sys.argv[2], "ab", buffering=0)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    for line in c.makefile("rb"):
        out.write(line)
"#;
    let mut child = Command::new("python3")
        .args(["-c", SRC, &port.to_string()])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "consumer did not start");
    Proc(child)
}

/// A real rsyslogd with its own minimal config: UDP input on `udp` (TCP on `probe` only to
/// know when it is up), every message written as `PRI MSGID MSG` to `out`.
fn rsyslogd(dir: &Path, udp: u16, probe: u16, out: &Path) -> Proc {
    let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("rsyslogd is missing: run `cargo xtask setup`");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{probe}")
template(name="t" type="string" string="%pri% %msgid% %msg%\n")
*.* action(type="omfile" file="{o}" template="t" flushOnTXEnd="on" asyncWriting="off")
"#,
            d = dir.display(),
            o = out.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting rsyslogd");
    let p = Proc(child);
    eventually(Duration::from_secs(15), "rsyslogd listening", || {
        std::net::TcpStream::connect(("127.0.0.1", probe))
            .map(drop)
            .map_err(|e| e.to_string())
    });
    p
}

/// JSON records in a file of lines (lines that are not JSON are skipped).
fn json_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// rsyslog lines (`PRI MSGID MSG`): the MSG of each `alert` message, parsed.
fn syslog_alerts(p: &Path) -> Vec<(u32, Value)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let pri = it.next()?.parse().ok()?;
            (it.next()? == "alert").then_some(())?;
            let msg = it.next()?;
            Some((pri, serde_json::from_str(&msg[msg.find('{')?..]).ok()?))
        })
        .collect()
}

/// Our alerts in `records`, as the image path each is about, in order.
fn alert_paths(records: &[Value], images: &[PathBuf]) -> Vec<String> {
    records
        .iter()
        .filter(|v| v["event"]["kind"] == "alert" && v["rule"]["id"] == RULE)
        .filter_map(|v| v["file"]["path"].as_str())
        .filter(|p| images.iter().any(|i| i.to_str() == Some(p)))
        .map(String::from)
        .collect()
}

fn names(images: &[PathBuf]) -> Vec<String> {
    images
        .iter()
        .map(|i| i.to_str().unwrap().to_string())
        .collect()
}

/// Every image's alert exactly once, in attack order.
fn assert_all_once(sink: &str, got: &[String], images: &[PathBuf]) {
    assert_eq!(
        got,
        names(images),
        "{sink}: alerts missing, repeated or out of order"
    );
}

/// The rotated file set: `PATH` and `PATH.N`, oldest first.
fn file_set(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let n = p.to_str()?.strip_prefix(&format!("{}.", path.display()))?;
            Some((n.parse().ok()?, p))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut v: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    v.push(path.to_path_buf());
    v
}

fn metrics(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    c.read_to_string(&mut body).unwrap();
    body
}

/// The value of one series line (`NAME{LABELS} VALUE`) whose name and labels start with `prefix`.
fn series(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn verify_log(files: &[PathBuf], key: &Path) -> (i32, String) {
    let o = Command::new(bin())
        .arg("verify-log")
        .arg("--key")
        .arg(key)
        .args(files)
        .output()
        .expect("snapmon verify-log");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// A qcow2 image with one snapshot, then an untrusted writer zeroing `nb_snapshots`.
fn attack(dir: &Path, i: usize) -> PathBuf {
    let img = dir.join(format!("vm{i}.qcow2"));
    let s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
    run("qemu-img", &["snapshot", "-c", "s1", s]);
    python(&format!(
        "import os; fd=os.open({s:?}, os.O_RDWR); os.pwrite(fd, (0).to_bytes(4,'big'), 60)"
    ));
    img
}

#[test]
fn alerts_reach_every_sink_across_a_consumer_restart_and_the_log_proves_tampering() {
    let work = std::env::temp_dir().join(format!("snapmon-outputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("rsyslog")).unwrap();
    let (tcp, udp, probe, mport) = (free_port(), free_port(), free_port(), free_port());
    let syslog_out = work.join("rsyslog/out.log");
    let _rsyslog = rsyslogd(&work.join("rsyslog"), udp, probe, &syslog_out);
    let consumed = work.join("consumer.jsonl");
    let mut cons = Some(consumer(tcp, &consumed));

    let log = work.join("alerts.jsonl");
    let key = work.join("log.key");
    std::fs::write(&key, "e2e-outputs-key-0123456789abcdef\n").unwrap();
    // The embedded policy (trusted actors, rules) plus the sinks under test.
    let policy = run(bin().to_str().unwrap(), &["policy", "default"]).stdout
        + &format!(
            r#"
[[sink]]
type = "file"
path = "{log}"
alerts_only = true
rotate_size = "24K"
keep = 100
flush = "record"
key_file = "{key}"

[[sink]]
type = "tcp"
address = "127.0.0.1:{tcp}"
alerts_only = true
spill_dir = "{spill}"
backoff_min = "50ms"
backoff_max = "300ms"

[[sink]]
type = "syslog"
transport = "udp"
address = "127.0.0.1:{udp}"
alerts_only = true

[[sink]]
type = "stdout"
format = "json"
"#,
            log = log.display(),
            key = key.display(),
            spill = work.join("spill").display(),
        );
    let policy_path = work.join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let stdout = work.join("stdout.jsonl");
    let mut agent = Agent::start(&Setup {
        args: vec![
            "--config".into(),
            policy_path.display().to_string(),
            "--metrics".into(),
            format!("127.0.0.1:{mport}"),
            "--stats-interval".into(),
            "2".into(),
            "--hook-stats".into(),
        ],
        stdout: Some(stdout.clone()),
        ..Default::default()
    })
    .expect("agent with four sinks failed to start");
    let dir = agent.dir("outputs");
    let tcp_sink = format!("tcp:127.0.0.1:{tcp}");

    // Per-hook counters: every pwrite we make is a run of the pwrite64 tracepoint program,
    // or in raw mode of `syscall_enter` (its handlers run by tail call, which the kernel
    // does not count, so they have no series).
    let hook_stats = agent.started["snapmon"]["state"]["hook_stats"].clone();
    let program = if agent.started["snapmon"]["state"]["syscall_hook"] == "raw" {
        "syscall_enter"
    } else {
        "sys_enter_pwrite64"
    };
    let pwrite = format!("snapmon_hook_runs_total{{program=\"{program}\",");
    let pwrite = pwrite.as_str();
    if hook_stats["enabled"] == true {
        let before = eventually(Duration::from_secs(15), "pwrite64 run counter", || {
            series(&metrics(mport), pwrite).ok_or_else(|| metrics(mport))
        });
        let f = dir.join("counted.raw");
        python(&format!(
            "import os; fd=os.open({:?}, os.O_RDWR|os.O_CREAT)\nfor i in range(200): os.pwrite(fd, b'x', i)",
            f.to_str().unwrap()
        ));
        eventually(
            Duration::from_secs(15),
            "pwrite64 runs to grow by 200",
            || {
                let now = series(&metrics(mport), pwrite).unwrap_or(0.0);
                (now - before >= 200.0)
                    .then_some(())
                    .ok_or(format!("{before} → {now}"))
            },
        );
        let body = metrics(mport);
        let secs = series(
            &body,
            &format!("snapmon_hook_run_seconds_total{{program=\"{program}\","),
        )
        .unwrap();
        assert!(secs > 0.0, "no run time counted for 200+ runs");
        assert!(!body.contains("program=\"raw_pwrite64\""), "{body}");
    } else {
        // The kernel would not count: say so, and show no numbers.
        let body = metrics(mport);
        assert!(body.contains("\nsnapmon_hook_stats_enabled 0\n"), "{body}");
        assert!(!body.contains("snapmon_hook_runs_total"), "{body}");
        assert!(
            hook_stats["note"].as_str().is_some_and(|n| !n.is_empty()),
            "{hook_stats}"
        );
    }

    // Phase 1: consumer up.
    let mut images = Vec::new();
    for i in 0..3 {
        images.push(attack(&dir, i));
    }
    eventually(Duration::from_secs(30), "consumer to get 3 alerts", || {
        let got = alert_paths(&json_lines(&consumed), &images);
        (got.len() == 3).then_some(()).ok_or(format!("{got:?}"))
    });
    // Phase 2: the consumer dies mid-stream; the sink spills to disk.
    drop(cons.take());
    for i in 3..6 {
        images.push(attack(&dir, i));
    }
    let sink_line = format!("snapmon_sink_spill_bytes{{sink=\"{tcp_sink}\"}}");
    eventually(
        Duration::from_secs(30),
        "alerts spilled while the consumer is down",
        || {
            let body = metrics(mport);
            match series(&body, &sink_line) {
                Some(b) if b > 0.0 => Ok(()),
                _ => Err(body),
            }
        },
    );
    // Phase 3: the consumer is back (same port); the spill replays before new records.
    cons = Some(consumer(tcp, &consumed));
    for i in 6..ATTACKS {
        images.push(attack(&dir, i));
    }
    // Enough alerts for rotate_size=24K to make at least three files, whatever an alert
    // weighs on this host: attack until the rotated set holds three files' worth.
    let set_bytes = || -> u64 {
        file_set(&log)
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum()
    };
    let in_set = |images: &[PathBuf]| -> usize {
        let all: Vec<Value> = file_set(&log).iter().flat_map(|f| json_lines(f)).collect();
        alert_paths(&all, images).len()
    };
    eventually(
        Duration::from_secs(30),
        "the file sink to have every alert",
        || {
            let n = in_set(&images);
            (n == images.len()).then_some(()).ok_or(format!("{n}"))
        },
    );
    while set_bytes() < 3 * 24 * 1024 {
        assert!(
            images.len() < 40,
            "40 alerts made only {} bytes",
            set_bytes()
        );
        images.push(attack(&dir, images.len()));
        eventually(
            Duration::from_secs(30),
            "the extra alert in the file sink",
            || {
                let n = in_set(&images);
                (n == images.len()).then_some(()).ok_or(format!("{n}"))
            },
        );
    }
    let attacks = images.len();

    // The agent's own record of the attacks (the classic --output file).
    let truth = eventually(Duration::from_secs(30), "every attack alerted", || {
        let got = alert_paths(&agent.records(), &images);
        (got.len() == attacks)
            .then_some(got.clone())
            .ok_or(format!("{got:?}"))
    });
    assert_all_once("--output", &truth, &images);
    eventually(
        Duration::from_secs(60),
        "consumer to have every alert",
        || {
            let got = alert_paths(&json_lines(&consumed), &images);
            (got.len() >= attacks)
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    );
    assert_all_once(
        "tcp consumer",
        &alert_paths(&json_lines(&consumed), &images),
        &images,
    );
    let syslog = eventually(
        Duration::from_secs(30),
        "rsyslog to have every alert",
        || {
            let got = syslog_alerts(&syslog_out);
            let paths: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
            let p = alert_paths(&paths, &images);
            (p.len() >= attacks).then_some(got).ok_or(format!("{p:?}"))
        },
    );
    let (pris, vals): (Vec<u32>, Vec<Value>) = syslog.into_iter().unzip();
    assert_all_once("rsyslog", &alert_paths(&vals, &images), &images);
    // Critical alerts at local0 (16 × 8) + crit (2).
    assert!(pris.iter().all(|p| *p == 130), "{pris:?}");

    // A periodic stats record from after the consumer's death (it counts the disconnect)
    // comes after the 200 counted pwrites too.
    let stats = eventually(
        Duration::from_secs(30),
        "a stats record counting the disconnect on stdout",
        || {
            json_lines(&stdout)
                .into_iter()
                .find(|v| {
                    v["event"]["action"] == "stats"
                        && v["snapmon"]["metric"]["sinks"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|s| {
                                s["name"] == tcp_sink.as_str()
                                    && s["disconnects"].as_u64().is_some_and(|n| n >= 1)
                            })
                })
                .ok_or_else(|| "none yet".to_string())
        },
    );
    let m = &stats["snapmon"]["metric"];
    assert_eq!(m["hooks"]["enabled"], hook_stats["enabled"], "{m}");
    // Per-program counters come in their own small `hook_runs` records before each `stats`.
    let programs: Vec<Value> = json_lines(&stdout)
        .into_iter()
        .filter(|v| v["event"]["action"] == "hook_runs")
        .flat_map(|v| {
            v["snapmon"]["metric"]["programs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    if hook_stats["enabled"] == true {
        assert!(
            programs
                .iter()
                .filter(|p| p["program"] == program)
                .filter_map(|p| p["runs"].as_u64())
                .any(|n| n >= 200),
            "{programs:?}"
        );
    } else {
        assert!(programs.is_empty(), "{programs:?}");
        assert_eq!(m["hooks"]["busiest"], serde_json::json!([]), "{m}");
    }

    // Stop: every sink drains; the file set closes with log_closed.
    assert!(
        agent.stop(Duration::from_secs(15)),
        "agent did not stop cleanly"
    );
    drop(cons.take());
    assert_all_once(
        "stdout",
        &alert_paths(&json_lines(&stdout), &images),
        &images,
    );
    let files = file_set(&log);
    assert!(
        files.len() >= 3,
        "rotate_size=24K did not rotate: {files:?}"
    );
    let in_set: Vec<Value> = files.iter().flat_map(|f| json_lines(f)).collect();
    assert_all_once("rotated file set", &alert_paths(&in_set, &images), &images);

    // verify-log: the untouched set (given in any order) is intact.
    let mut shuffled = files.clone();
    shuffled.reverse();
    let (code, out) = verify_log(&shuffled, &key);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact: "), "{out}");

    tamper_cases(&work, &files, &key);
    if std::env::var_os("SNAPMON_E2E_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// Copy the set, apply one change to a copy of one file, and expect `verify-log` to name the
/// kind of tampering, the file and the line first.
fn tamper_cases(work: &Path, files: &[PathBuf], key: &Path) {
    let lines_of = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let seq = |l: &str| -> u64 {
        serde_json::from_str::<Value>(l).unwrap()["snapmon.chain"]["seq"]
            .as_u64()
            .unwrap()
    };
    // A rotated file with at least two records between its header and its footer.
    let victim = files[..files.len() - 1]
        .iter()
        .position(|f| lines_of(f).len() >= 4)
        .expect("a rotated file with two records");
    let orig = lines_of(&files[victim]);
    let (s1, s2) = (seq(&orig[1]), seq(&orig[2]));
    let newest = files.len() - 1;
    let last_line = lines_of(&files[newest]).len();
    // Edits on the file's text; line 1 (0-based) is the first record after the header.
    let on_lines = |f: fn(&mut Vec<String>)| {
        move |text: &str| {
            let mut l: Vec<String> = text.lines().map(String::from).collect();
            f(&mut l);
            l.join("\n") + "\n"
        }
    };
    type Edit = Box<dyn Fn(&str) -> String>;
    // (what, file, edit, first finding, exit code): a cut tail is truncation, not tampering.
    let cases: Vec<(&str, usize, Edit, String, i32)> = vec![
        (
            "delete a record",
            victim,
            Box::new(on_lines(|l| {
                l.remove(1);
            })),
            format!(":2: seq {s2}: removed:"),
            1,
        ),
        (
            "alter a byte",
            victim,
            Box::new(on_lines(|l| {
                // The first digit of the record (in its timestamp) becomes another digit.
                let i = l[1].find(|c: char| c.is_ascii_digit()).unwrap();
                let d = l[1].as_bytes()[i] - b'0';
                l[1].replace_range(i..i + 1, &((d + 1) % 10).to_string());
            })),
            format!(":2: seq {s1}: altered:"),
            1,
        ),
        (
            "swap two lines",
            victim,
            Box::new(on_lines(|l| l.swap(1, 2))),
            format!(":2: seq {s2}: reordered:"),
            1,
        ),
        (
            "truncate",
            newest,
            // Cut mid-way through the last record, as a crash or `truncate -s` would.
            Box::new(|t: &str| {
                let last = t.trim_end().rsplit('\n').next().unwrap().len();
                t[..t.len() - 1 - last / 2].to_string()
            }),
            format!(":{last_line}: truncated: last line is incomplete"),
            3,
        ),
    ];
    for (n, (what, which, edit, want, exit)) in cases.into_iter().enumerate() {
        let d = work.join(format!("tamper{n}"));
        std::fs::create_dir_all(&d).unwrap();
        let copies: Vec<PathBuf> = files
            .iter()
            .map(|f| {
                let c = d.join(f.file_name().unwrap());
                std::fs::copy(f, &c).unwrap();
                c
            })
            .collect();
        let text = std::fs::read_to_string(&copies[which]).unwrap();
        let changed = edit(&text);
        assert_ne!(changed, text, "{what}: the edit changed nothing");
        std::fs::write(&copies[which], changed).unwrap();
        let (code, out) = verify_log(&copies, key);
        assert_eq!(code, exit, "{what}: {out}");
        let want = format!("{}{want}", copies[which].display());
        assert!(
            out.lines().next().is_some_and(|f| f.starts_with(&want)),
            "{what}: the first finding should start with {want}\n{out}"
        );
    }
}
