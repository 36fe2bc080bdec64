//! The agent under test: start it, wait for `started`, sample /proc for CPU and memory,
//! count what it wrote, stop it with SIGINT and read its `stopped` statistics.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Deserialize;
use serde_json::Value;

pub struct Agent {
    child: Child,
    pub pid: u32,
    pub out: PathBuf,
    log: PathBuf,
    /// Spawn to the `started` line becoming visible.
    pub startup: Duration,
    pub startup_ms_reported: Option<u64>,
}

/// CPU seconds (user+system) and memory of one process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu_s: ticks as f64 / hz,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// Where an agent's resident memory is, from /proc/PID/smaps, in KiB: so an idle RSS over
/// its target says whether heap, the kernel's ring buffers or the binary grew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemParts {
    /// Heap, thread stacks and every other anonymous mapping.
    pub anon_kib: u64,
    /// BPF maps the agent mmaps: the ring buffers (each mapped twice for wrap-around reads).
    pub bpf_maps_kib: u64,
    /// The agent's executable: text, read-only data (the embedded eBPF object among it).
    pub binary_kib: u64,
    /// Shared libraries and any other file.
    pub files_kib: u64,
}

/// `MemParts` of the smaps text of a process whose executable is `exe`.
pub fn mem_parts(smaps: &str, exe: &Path) -> MemParts {
    let exe = exe.to_string_lossy();
    let mut p = MemParts::default();
    let mut part: Option<fn(&mut MemParts) -> &mut u64> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some(kib) = first.strip_suffix(':').and(f.next()) {
            if first == "Rss:" {
                if let (Some(get), Ok(k)) = (part, kib.parse::<u64>()) {
                    *get(&mut p) += k;
                }
            }
            continue;
        }
        // A mapping's header: range perms offset dev inode [name].
        let name = map_name(line);
        part = Some(match name {
            Some(n) if n.starts_with("anon_inode:bpf-map") => |p| &mut p.bpf_maps_kib,
            Some(n) if n == exe || n.strip_suffix(" (deleted)") == Some(&exe) => {
                |p| &mut p.binary_kib
            }
            Some(n) if n.starts_with('/') => |p| &mut p.files_kib,
            _ => |p| &mut p.anon_kib,
        });
    }
    p
}

/// The name field of an smaps header line, if it has one (a path may hold spaces).
fn map_name(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    Some(rest.trim()).filter(|n| !n.is_empty())
}

pub fn mem_parts_of(pid: u32, exe: &Path) -> Option<MemParts> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    Some(mem_parts(&text, &exe))
}

impl Agent {
    pub fn start(
        bin: &Path,
        policy: &Path,
        watch: &[&Path],
        out: &Path,
        log: &Path,
    ) -> anyhow::Result<Agent> {
        Self::start_with(bin, policy, watch, out, log, &[])
    }

    /// `start` with extra `snapmon run` arguments.
    pub fn start_with(
        bin: &Path,
        policy: &Path,
        watch: &[&Path],
        out: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        Self::start_env(bin, policy, watch, out, log, extra, &[])
    }

    /// `start_with`, the agent's environment extended by `env`.
    pub fn start_env(
        bin: &Path,
        policy: &Path,
        watch: &[&Path],
        out: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let _ = std::fs::remove_file(out);
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--config").arg(policy).args(extra);
        cmd.envs(env.iter().copied());
        for w in watch {
            cmd.arg("--watch").arg(w);
        }
        cmd.args(["--format", "json", "--output"]).arg(out);
        let t0 = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).context("agent log")?)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut a = Agent {
            pid: child.id(),
            child,
            out: out.to_path_buf(),
            log: log.to_path_buf(),
            startup: Duration::ZERO,
            startup_ms_reported: None,
        };
        loop {
            if let Some(st) = a.child.try_wait()? {
                bail!("agent exited before `started` ({st}): {}", a.log_tail());
            }
            if let Some(line) = find_line(out, 0, "\"action\":\"started\"") {
                a.startup = t0.elapsed();
                let v: Value = serde_json::from_str(&line).unwrap_or_default();
                a.startup_ms_reported = v["snapmon"]["state"]["startup_ms"].as_u64();
                let attached = &v["snapmon"]["state"]["hooks_attached"];
                let total = &v["snapmon"]["state"]["hooks_total"];
                println!(
                    "bench: agent pid {} started in {:.1} s ({attached}/{total} hooks)",
                    a.pid,
                    a.startup.as_secs_f64()
                );
                return Ok(a);
            }
            if t0.elapsed() > Duration::from_secs(300) {
                let _ = a.child.kill();
                bail!("agent not started after 300 s: {}", a.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sample(&self) -> ProcSample {
        sample(self.pid).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
    }

    pub fn out_len(&self) -> u64 {
        std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0)
    }

    /// Wait until the agent has written everything for a finished load: at least `min`
    /// (so a loss tick gets its chance) and then no growth for 400 ms.
    pub fn quiesce(&self, min: Duration) {
        let t0 = Instant::now();
        let mut last = (self.out_len(), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let n = self.out_len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if t0.elapsed() >= min && last.1.elapsed() >= Duration::from_millis(400) {
                return;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                eprintln!("bench: agent output still growing after 120 s; moving on");
                return;
            }
        }
    }

    /// SIGINT, wait for exit, return the `stopped` record's detail, the exit status and the
    /// time from the signal to the process being gone (to within 2 ms).
    pub fn stop(mut self) -> anyhow::Result<(Value, String, Duration)> {
        unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait()? {
                break st.to_string();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break "killed after 60 s without exiting on SIGINT".to_string();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let took = t0.elapsed();
        let from = self.out_len().saturating_sub(1 << 20);
        let detail = find_line(&self.out, from, "\"action\":\"stopped\"")
            .and_then(|l| serde_json::from_str::<Value>(&l).ok())
            .map(|v| v["snapmon"]["state"].clone())
            .unwrap_or(Value::Null);
        Ok((detail, st, took))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_secs(1));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find_line(path: &Path, from: u64, needle: &str) -> Option<String> {
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains(needle))
}

/// The few fields the bench needs from a record; serde skips the rest.
#[derive(Deserialize)]
pub struct Line<'a> {
    #[serde(rename = "@timestamp", borrow)]
    pub ts: Option<&'a str>,
    #[serde(borrow)]
    pub event: Ev<'a>,
    pub process: Option<Proc>,
}
#[derive(Deserialize)]
pub struct Ev<'a> {
    #[serde(borrow)]
    pub kind: &'a str,
    #[serde(borrow, default)]
    pub action: &'a str,
}
#[derive(Deserialize)]
pub struct Proc {
    pub pid: Option<u32>,
}

/// What one stretch of output holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Count {
    pub lines: u64,
    pub events: u64,
    pub alerts: u64,
    pub lost_records: u64,
    /// Sum of per-cause kernel drops and decoder errors reported in `lost` records.
    pub lost_kernel: u64,
    pub lost_decoder: u64,
    pub bytes: u64,
}

/// Sum the kernel and decoder drop counts of one `lost` record.
pub fn lost_of(v: &Value) -> (u64, u64) {
    let sum = |x: &Value| {
        x.as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let m = &v["snapmon"]["metric"];
    (sum(&m["kernel"]), sum(&m["decoder"]))
}

/// Count records in `[from, EOF)` streaming, parsing only the small metric lines fully.
pub fn count(path: &Path, from: u64) -> anyhow::Result<Count> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut c = Count::default();
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        c.lines += 1;
        c.bytes += n as u64;
        let s = String::from_utf8_lossy(&line);
        if s.contains("\"kind\":\"metric\"") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                if v["event"]["action"] == "lost" {
                    c.lost_records += 1;
                    let (k, d) = lost_of(&v);
                    c.lost_kernel += k;
                    c.lost_decoder += d;
                }
            }
        } else if s.contains("\"kind\":\"alert\"") {
            c.alerts += 1;
        } else if s.contains("\"kind\":\"event\"") {
            c.events += 1;
        }
    }
    Ok(c)
}

/// Read `[from, EOF)` as text (for the capacity analysis, which needs every line).
pub fn read_from(path: &Path, from: u64) -> anyhow::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// `snapmon run` arguments for the raw `sys_enter` syscall hook.
pub const RAW_HOOK_ARGS: [&str; 2] = ["--syscall-hook", "raw"];

/// Whether this agent build takes `--syscall-hook` (named in `snapmon run --help`); the
/// error says why the raw configs are not measured.
pub fn raw_hook_support(bin: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .args(["run", "--help"])
        .output()
        .map_err(|e| format!("running {} run --help: {e}", bin.display()))?;
    if help_has_flag(&String::from_utf8_lossy(&out.stdout), RAW_HOOK_ARGS[0]) {
        Ok(())
    } else {
        Err("not available in this build (`snapmon run --help` has no --syscall-hook)".into())
    }
}

/// `flag` as an option of its own in clap help text, not as a prefix of a longer one.
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .any(|w| w == flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_flag_is_matched_whole() {
        assert!(help_has_flag(
            "      --syscall-hook <MODE>\n          Which hook",
            "--syscall-hook"
        ));
        assert!(help_has_flag("  --syscall-hook=<MODE>", "--syscall-hook"));
        assert!(!help_has_flag(
            "      --syscall-hooks-off\n  --no-compat-syscalls",
            "--syscall-hook"
        ));
        assert!(!help_has_flag("uses the syscall hook", "--syscall-hook"));
    }

    #[test]
    fn smaps_is_split_into_heap_ring_buffers_binary_and_files() {
        let smaps = "\
20000000000-20040000000 rw-p 00000000 00:00 0 
Size:            1048576 kB
Rss:               12008 kB
VmFlags: rd wr mr mw me ac sd
5639faae0000-5639fb05c000 r--p 00000000 fe:00 10010762                   /opt/snap mon/snapmon
Rss:                5168 kB
5639fb05c000-5639fb6e9000 r-xp 0057b000 fe:00 10010762                   /opt/snap mon/snapmon (deleted)
Rss:                5872 kB
7fc336615000-7fc337616000 r--s 00001000 00:10 20                         anon_inode:bpf-map
Rss:               16388 kB
7fc337a8f000-7fc337be5000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 964 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 108 kB
";
        assert_eq!(
            mem_parts(smaps, Path::new("/opt/snap mon/snapmon")),
            MemParts {
                anon_kib: 12008 + 108,
                bpf_maps_kib: 16388,
                binary_kib: 5168 + 5872,
                files_kib: 964,
            }
        );
    }
}
