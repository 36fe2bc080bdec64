//! Heartbeat under a flood (issue #15, item 8): while `nobody` floods a watched 1777 store with
//! header rewrites (the ring buffer never empties, so a drain that runs until it does
//! never ends), the `stats` heartbeat keeps coming every `--stats-interval` and SIGTERM still
//! ends the agent at once; and a closed stdout ends it at once, record or not. The other side
//! of stopping at once: a burst made just before SIGINT is all in the log (issue #19 item 5).
//! A flood of several seconds under emulation measures the guest, not the agent: host only.
// xtask-suite: host-only

use std::{
    os::unix::fs::PermissionsExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use snapmon_e2e::{action, brief, python, Agent};

const SETPRIV: &[&str] = &["--reuid=nobody", "--regid=nogroup", "--clear-groups"];
/// The system python, not a pyenv shim that nobody cannot run.
const PYTHON: &str = "/usr/bin/python3";

/// A `nobody` process; killed (by its pid) when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stats(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|v| v["event"]["kind"] == "metric" && v["event"]["action"] == "stats")
        .collect()
}

#[test]
fn stats_keep_coming_and_sigterm_is_heeded_during_a_flood() {
    let mut a = Agent::spawn("heartbeat-flood", &["--stats-interval", "1"], &[]).unwrap();
    let store = a.root.join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::set_permissions(&a.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // The heartbeat's pace before the flood, by the agent's own clock.
    let first = a
        .wait_for(Duration::from_secs(5), |v| {
            v["event"]["kind"] == "metric" && v["event"]["action"] == "stats"
        })
        .expect("no `stats` record within 5 s with --stats-interval 1");
    let u0 = first["snapmon"]["metric"]["uptime_s"].as_u64().unwrap();
    let flood_s = 20;
    // nobody rewrites the header of its own image as fast as it can: every write is a
    // record the agent classifies (milliseconds each in a debug build), so the ring buffer
    // stays full for as long as the flood lasts.
    let own = store.join("own.qcow2");
    snapmon_e2e::run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", own.to_str().unwrap(), "16M"],
    );
    snapmon_e2e::run("chown", &["nobody:nogroup", own.to_str().unwrap()]);
    let floods: Vec<Background> = (0..2)
        .map(|_| {
            let code = format!(
                "import os, time\n\
                 fd = os.open({:?}, os.O_RDWR); head = os.pread(fd, 4096, 0)\n\
                 end = time.time() + {flood_s}\n\
                 while time.time() < end:\n\
                 \x20   for _ in range(1000): os.pwrite(fd, head, 0)\n",
                own.to_str().unwrap()
            );
            Background(
                Command::new("setpriv")
                    .args(SETPRIV)
                    .args([PYTHON, "-c", &code])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("setpriv (util-linux)"),
            )
        })
        .collect();
    let t0 = Instant::now();
    // 1. Eight seconds into the flood: the heartbeat kept its pace all along.
    std::thread::sleep(Duration::from_secs(8));
    let recs = snapmon_e2e::json_lines(&a.out);
    let beats: Vec<u64> = stats(&recs)
        .iter()
        .filter_map(|v| v["snapmon"]["metric"]["uptime_s"].as_u64())
        .filter(|&u| u >= u0)
        .collect();
    let lost = stats(&recs)
        .last()
        .and_then(|v| v["snapmon"]["metric"]["lost"].as_u64())
        .unwrap_or(0);
    snapmon_e2e::note(&format!(
        "stats at uptime {beats:?} s during the flood; {lost} records lost so far"
    ));
    // The flood must outrun the agent, or it proves nothing about a drain that never ends.
    let full = recs.iter().any(|v| {
        v["event"]["action"] == "lost"
            && v["snapmon"]["metric"]["kernel"]["ringbuf_full"]
                .as_u64()
                .is_some_and(|n| n > 0)
    });
    let gaps: Vec<u64> = beats.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        beats.len() >= 7 && gaps.iter().all(|&g| g <= 2),
        "stats at uptime {beats:?} s in the 8 s of a flood ({} ring-buffer loss reported): a \
         heartbeat every 1 s, at most 2 s apart, was expected",
        if full { "with" } else { "no" }
    );
    // Each carries what was lost since the one before.
    let since: u64 = stats(&recs)
        .iter()
        .filter_map(|v| v["snapmon"]["metric"]["lost_since_last"].as_u64())
        .sum();
    assert_eq!(since, lost, "lost_since_last does not add up to lost");

    // 2. SIGTERM while the flood goes on: `stopped` within 1 s.
    assert!(
        t0.elapsed() < Duration::from_secs(flood_s - 2),
        "the flood ended early"
    );
    let mark = a.mark();
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    let stopped = a.wait_from(mark, Duration::from_secs(1), |v| {
        v["event"]["kind"] == "state" && v["event"]["action"] == "stopped"
    });
    if stopped.is_none() {
        let heeded = a.stop(Duration::from_secs(20));
        panic!(
            "no `stopped` record within 1 s of SIGTERM during a flood (exited in time after SIGTERM: {heeded})"
        );
    }
    let stopped_after = t.elapsed();
    assert!(a.stop(Duration::from_secs(20)), "the agent did not exit");
    // What the kernel had queued at the stop and the short drain left unhandled is loss,
    // counted like any other (before: a line on stderr only).
    let unread: u64 = a
        .records()
        .iter()
        .filter(|v| v["event"]["kind"] == "metric" && v["event"]["action"] == "lost")
        .filter_map(|v| v["snapmon"]["metric"]["agent"]["stop_unread"].as_u64())
        .sum();
    snapmon_e2e::note(&format!(
        "`stopped` {stopped_after:?} and exit {:?} after SIGTERM during the flood; \
         {unread} records queued at the stop counted as agent stop_unread",
        t.elapsed()
    ));
    assert!(
        unread > 0,
        "a stop in a full ring buffer left records unhandled without a `lost` record"
    );
    drop(floods);
}

/// `snapmon run | head`: once the reader has gone the agent exits at once, even on a quiet
/// host where no record would meet the broken pipe.
#[test]
fn a_closed_stdout_ends_the_agent_at_once() {
    use std::io::BufRead as _;
    let root = std::env::temp_dir().join(format!("snapmon-e2e-{}-epipe", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let mut cmd = Command::new(snapmon_e2e::bin());
    cmd.args(["run", "--format", "json", "--watch"])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = snapmon_e2e::spawn_tied(cmd).unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"action\":\"started\"") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "stdout ended before `started`"
        );
    }
    drop(out);
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(3) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent still runs 3 s after its stdout's reader went away");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    snapmon_e2e::note(&format!("exited {:?} after stdout closed", t.elapsed()));
    let _ = std::fs::remove_dir_all(&root);
}

/// Unlinks made in the last instant before SIGINT: more than the 100 ms shutdown drain of
/// before handled in a debug build (2 852), well within the ring buffer.
const IN_FLIGHT: usize = 5000;

/// Issue 19 item 5: a fast exit must not cost what was in flight. A burst of unlinks is made
/// and SIGINT sent by the same process right after the last one, so the burst is still in the
/// ring buffer (or in the pipeline, or queued for the sink) when the signal lands: every one
/// of them is in the log, before `stopped`, which is followed only by `log_closed`.
#[test]
fn nothing_in_flight_at_sigint_is_lost() {
    let mut a = Agent::spawn("inflight", &[], &[]).unwrap();
    let dir = a.dir("names");
    let names: Vec<String> = (0..IN_FLIGHT).map(|i| format!("inflight-{i}")).collect();
    for n in &names {
        std::fs::write(dir.join(n), b"x").unwrap();
    }
    // The creates are reported and out of the way before the burst.
    a.settle(Duration::from_millis(600), |_| false);
    let pid = a.pid();
    python(&format!(
        "import os, signal\n\
         os.chdir({:?})\n\
         for i in range({IN_FLIGHT}):\n\
         \x20   os.unlink('inflight-%d' % i)\n\
         os.kill({pid}, signal.SIGINT)",
        dir.to_str().unwrap()
    ));
    // Not `stop`: its SIGTERM, pending beside our SIGINT on a loaded machine, could be
    // the one the agent's loop takes first.
    assert!(
        a.exited(Duration::from_secs(60)),
        "the agent did not exit 0"
    );
    let recs = a.records();
    let stopped = recs
        .iter()
        .position(|v| action(v) == "stopped" && v["event"]["kind"] == "state")
        .unwrap_or_else(|| panic!("no stopped record: {}", brief(&recs)));
    assert_eq!(
        recs[stopped]["snapmon"]["state"]["reason"], "SIGINT",
        "stopped by our SIGINT, not the harness's SIGTERM"
    );
    let tail: Vec<&str> = recs[stopped..].iter().map(action).collect();
    assert_eq!(
        tail,
        ["stopped", "log_closed"],
        "{}",
        brief(&recs[stopped..])
    );
    let prefix = format!("{}/inflight-", dir.display());
    let mut seen: Vec<&str> = recs[..stopped]
        .iter()
        .filter(|v| v["event"]["kind"] == "event" && action(v) == "unlink")
        .filter_map(|v| v["file"]["path"].as_str()?.strip_prefix(prefix.as_str()))
        .collect();
    seen.sort_unstable();
    seen.dedup();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !seen.contains(&n.trim_start_matches("inflight-")))
        .collect();
    snapmon_e2e::note(&format!(
        "{} of {IN_FLIGHT} unlinks made just before SIGINT reported before `stopped`",
        IN_FLIGHT - missing.len()
    ));
    assert!(
        missing.is_empty(),
        "{} of {IN_FLIGHT} unlinks made just before SIGINT missing from the log: {:?}…",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
