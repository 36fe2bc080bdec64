//! Syslog through stock daemons at their default limits: a real rsyslogd (8.2302, 8 KiB
//! maxMessageSize) and a real syslog-ng (3.38), each started by the test with its own config,
//! ports and sockets, each listening on UDP, TCP and a Unix datagram socket. One live agent
//! sends every record to all six; every record of its file sink (the ~6 KB start-up `hooks`
//! records included, over the 2 KiB UDP limit) must arrive at each of them exactly as valid
//! JSON, and none over the size limit.
//! A syslog sink with no socket behind it refuses to start, or warns loudly with
//! `snapmon_sink_up 0` when told to.
// xtask-suite: host-only

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{bin, eventually, free_port, python, start_timeout, Agent, Reaped};

const SYSLOG_NG_ROOT: &str = "/opt/snapmon-test/syslog-ng";

/// A daemon stopped with SIGTERM (so it flushes its files) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ends {
    udp: u16,
    tcp: u16,
    sock: PathBuf,
    out: PathBuf,
}

fn ends(dir: &Path) -> Ends {
    std::fs::create_dir_all(dir).unwrap();
    Ends {
        udp: free_port(),
        tcp: free_port(),
        sock: dir.join("log.sock"),
        out: dir.join("out.log"),
    }
}

fn wait_up(e: &Ends, what: &str) {
    eventually(Duration::from_secs(20), what, || {
        std::net::TcpStream::connect(("127.0.0.1", e.tcp))
            .map_err(|x| x.to_string())
            .and_then(|_| {
                e.sock
                    .exists()
                    .then_some(())
                    .ok_or_else(|| "no socket".into())
            })
    });
}

/// rsyslogd with nothing but its three inputs and one file; every limit at its default.
fn rsyslogd(dir: &Path) -> (Daemon, Ends) {
    let e = ends(dir);
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{d}")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
input(type="imuxsock" Socket="{sock}")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="t" type="string" string="%inputname% %msg%\n")
*.* action(type="omfile" file="{out}" template="t")
"#,
            d = dir.display(),
            sock = e.sock.display(),
            udp = e.udp,
            tcp = e.tcp,
            out = e.out.display()
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("rsyslogd is missing: run `cargo xtask setup`");
    let c = Command::new(bin)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd");
    let d = Daemon(c);
    wait_up(&e, "rsyslogd listening");
    (d, e)
}

/// syslog-ng (unpacked by `cargo xtask setup`: it conflicts with rsyslog as a package) with
/// its own persist file, control socket and module path; every limit at its default.
fn syslog_ng(dir: &Path) -> (Daemon, Ends) {
    let e = ends(dir);
    let root = Path::new(SYSLOG_NG_ROOT);
    let exe = root.join("usr/sbin/syslog-ng");
    assert!(
        exe.exists(),
        "{} is missing: run `cargo xtask setup`",
        exe.display()
    );
    let conf = dir.join("syslog-ng.conf");
    std::fs::write(
        &conf,
        format!(
            r#"@version: 3.38
source s_udp {{ syslog(transport("udp") ip("127.0.0.1") port({udp})); }};
source s_tcp {{ syslog(transport("tcp") ip("127.0.0.1") port({tcp})); }};
source s_unix {{ unix-dgram("{sock}"); }};
destination d_file {{ file("{out}" template("${{SOURCE}} ${{MSG}}\n")); }};
log {{ source(s_udp); source(s_tcp); source(s_unix); destination(d_file); }};
"#,
            udp = e.udp,
            tcp = e.tcp,
            sock = e.sock.display(),
            out = e.out.display()
        ),
    )
    .unwrap();
    let c = Command::new(&exe)
        .env("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng"))
        .arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("--module-path")
        .arg(root.join("usr/lib/syslog-ng/3.38"))
        .arg("-p")
        .arg(dir.join("pid"))
        .arg("-R")
        .arg(dir.join("persist"))
        .arg("-c")
        .arg(dir.join("ctl"))
        .arg("--no-caps")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("syslog-ng");
    let d = Daemon(c);
    wait_up(&e, "syslog-ng listening");
    (d, e)
}

/// `input → [id …]` from a daemon's file; a line that is not JSON fails the test.
fn received(out: &Path, inputs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let (input, msg) = line.split_once(' ').unwrap_or((line, ""));
        let v: Value = serde_json::from_str(msg.trim())
            .unwrap_or_else(|e| panic!("{}: not valid JSON ({e}): {line}", out.display()));
        let name = inputs
            .iter()
            .find(|(i, _)| *i == input)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| input.to_string());
        by.entry(name)
            .or_default()
            .push(v["event"]["id"].as_str().unwrap_or("").to_string());
    }
    by
}

#[test]
fn every_record_reaches_rsyslog_and_syslog_ng_over_udp_tcp_and_unix_as_valid_json() {
    let work = std::env::temp_dir().join(format!("snapmon-syslog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (rs, rse) = rsyslogd(&work.join("rsyslog"));
    let (ng, nge) = syslog_ng(&work.join("syslog-ng"));
    let mut args: Vec<String> = vec!["--stats-interval".into(), "1".into()];
    for (d, e) in [("rs", &rse), ("ng", &nge)] {
        args.push("--sink".into());
        args.push(format!(
            "syslog:127.0.0.1:{},transport=udp,name={d}-udp",
            e.udp
        ));
        args.push("--sink".into());
        args.push(format!(
            "syslog:127.0.0.1:{},transport=tcp,name={d}-tcp",
            e.tcp
        ));
        args.push("--sink".into());
        args.push(format!("syslog:{},name={d}-unix", e.sock.display()));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn("syslog", &argv, &[]).expect("agent with six syslog sinks");
    // Events with long paths and many of them.
    let dir = agent.dir("outputs");
    let long = dir.join(format!("{}.raw", "n".repeat(200)));
    python(&format!(
        "import os, time\nfd=os.open({:?}, os.O_RDWR|os.O_CREAT)\nfor i in range(40):\n    os.pwrite(fd, b'x', i)\n    time.sleep(0.01)",
        long.to_str().unwrap()
    ));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.stop(Duration::from_secs(15)), "agent did not stop");
    let want: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|v| v["event"]["id"].is_string())
        .collect();
    let ids: HashSet<String> = want
        .iter()
        .map(|v| v["event"]["id"].as_str().unwrap().to_string())
        .collect();
    // The daemons flush and exit on SIGTERM.
    std::thread::sleep(Duration::from_millis(500));
    drop(rs);
    drop(ng);
    let rs_got = received(
        &rse.out,
        &[("imudp", "udp"), ("imtcp", "tcp"), ("imuxsock", "unix")],
    );
    let ng_got = received(
        &nge.out,
        &[("s_udp", "udp"), ("s_tcp", "tcp"), ("s_unix", "unix")],
    );
    for (daemon, got) in [("rsyslog", &rs_got), ("syslog-ng", &ng_got)] {
        for t in ["udp", "tcp", "unix"] {
            let g = got.get(t).cloned().unwrap_or_default();
            let set: HashSet<String> = g.iter().cloned().collect();
            let missing: Vec<&String> = ids.iter().filter(|i| !set.contains(*i)).collect();
            eprintln!(
                "syslog {daemon}/{t}: {} records sent, {} received as JSON, {} missing",
                ids.len(),
                g.len(),
                missing.len()
            );
            assert!(
                missing.is_empty(),
                "{daemon}/{t}: {} of {} records missing: {missing:?}",
                missing.len(),
                ids.len()
            );
            assert_eq!(g.len(), set.len(), "{daemon}/{t}: a record arrived twice");
        }
    }
    // The largest record (a start-up `hooks` part: the start-up records are each kept under
    // the 8 KiB of TCP and the local socket, not under UDP's 2 KiB) arrived shrunk over UDP,
    // saying so and within the limit there, and whole over TCP.
    let biggest = agent
        .record_lines(|v| v["event"]["id"].is_string())
        .into_iter()
        .max_by_key(String::len)
        .unwrap();
    assert!(
        biggest.len() > 4096,
        "the largest record is only {} bytes: nothing tests the UDP limit",
        biggest.len()
    );
    let big: Value = serde_json::from_str(&biggest).unwrap();
    let big_id = big["event"]["id"].as_str().unwrap();
    let rs_text = std::fs::read_to_string(&rse.out).unwrap();
    let copy = |input: &str| -> (usize, Value) {
        rs_text
            .lines()
            .find_map(|l| {
                let msg = l.strip_prefix(&format!("{input} "))?;
                let v: Value = serde_json::from_str(msg.trim()).ok()?;
                (v["event"]["id"] == big_id).then_some((l.len(), v))
            })
            .unwrap_or_else(|| panic!("{big_id} not received on {input}"))
    };
    let (udp_len, v) = copy("imudp");
    assert!(
        v["snapmon"]["truncated"]["original_bytes"]
            .as_u64()
            .is_some_and(|n| n > 4096),
        "{v}"
    );
    assert!(udp_len < 2048, "{udp_len}");
    let (_, v) = copy("imtcp");
    assert!(v["snapmon"].get("truncated").is_none(), "{v}");
    assert_eq!(v["event"]["action"], big["event"]["action"]);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_syslog_sink_with_no_socket_refuses_to_start_or_warns_with_sink_up_0() {
    let dir = std::env::temp_dir().join(format!("snapmon-syslog-nodev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("no-daemon.sock");
    let errf = dir.join("stderr");
    // An agent that ran on regardless would never exit: give it the start-up time, no more.
    let mut c = Reaped(
        Command::new(bin())
            .args(["run", "--watch"])
            .arg(&dir)
            .arg("--sink")
            .arg(format!("syslog:{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errf).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = eventually(start_timeout(), "the agent to refuse to start", || {
        c.try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    let err = std::fs::read_to_string(&errf).unwrap();
    // A start-up error, as every one: exit 2.
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot reach") && err.contains(sock.to_str().unwrap()),
        "{err}"
    );
    // Told to go on: it starts, says so on stderr, and the metric shows the sink down.
    let mport = free_port();
    let errf = dir.join("stderr2");
    let spec = format!("syslog:{},on_unreachable=warn", sock.display());
    let mut child = Reaped(
        Command::new(bin())
            .args(["run", "--format", "json", "--watch"])
            .arg(&dir)
            .args(["--sink", &spec, "--metrics", &format!("127.0.0.1:{mport}")])
            .arg("--output")
            .arg(dir.join("out.jsonl"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&errf).unwrap())
            .spawn()
            .unwrap(),
    );
    let name = format!("syslog:{}", sock.display());
    let body = eventually(
        Duration::from_secs(120),
        "sink_up 0 for the syslog sink",
        || {
            use std::io::{Read as _, Write as _};
            let mut c =
                std::net::TcpStream::connect(("127.0.0.1", mport)).map_err(|e| e.to_string())?;
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut b = String::new();
            c.read_to_string(&mut b).map_err(|e| e.to_string())?;
            b.lines()
                .find(|l| l.starts_with(&format!("snapmon_sink_up{{sink=\"{name}\",")))
                .filter(|l| l.ends_with(" 0"))
                .map(String::from)
                .ok_or(b)
        },
    );
    assert!(body.contains("state="), "{body}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let err = std::fs::read_to_string(&errf).unwrap();
    assert!(
        err.contains("WARNING") && err.contains("cannot reach"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
