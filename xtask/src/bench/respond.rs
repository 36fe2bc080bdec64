//! Circuit-breaker latency: how long from an untrusted process's tampering syscall to the
//! signal that stops it (`--respond kill`, tracepoint backend). A worker forks one child
//! per sample; the child stamps CLOCK_BOOTTIME into shared memory right before
//! `pwrite(image, 4 zero bytes, 60)` (zeroing nb_snapshots) and is killed in that syscall.
//! The agent's SM-E003 alert carries the kernel's own stamps (hook entry, helper return),
//! in the same clock, so each sample has three figures:
//! - syscall → signal: the child's stamp before the syscall to the signal helper's return;
//! - hook → signal: inside the BPF program (what the alert reports);
//! - syscall → reaped: the child's stamp to the parent's `waitpid` returning (dead).

use std::{
    collections::HashMap,
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::agent;

#[derive(Debug, Clone, Serialize)]
pub struct Pct {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    /// Children that died of SIGKILL (all, or the breaker missed some).
    pub killed: usize,
    /// Children with a matching SM-E003 alert.
    pub alerted: usize,
    /// Header bytes of the image changed by any child (the write is refused at entry).
    pub header_changed: bool,
    pub syscall_to_signal: Option<Pct>,
    pub hook_to_signal: Option<Pct>,
    pub syscall_to_reaped: Option<Pct>,
    pub fs: String,
}

fn pct(mut v: Vec<f64>) -> Option<Pct> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] / 1e3;
    Some(Pct {
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: v[v.len() - 1] / 1e3,
    })
}

fn boottime_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `xtask bench --respondloop IMAGE N`: N children, each killed (or not) in its pwrite.
/// Prints `pid stamp_ns reaped_ns signal` per child.
pub fn worker(args: &[String]) -> anyhow::Result<()> {
    let [image, n] = args else {
        bail!("--respondloop IMAGE N");
    };
    let n: usize = n.parse().context("N")?;
    let path = std::ffi::CString::new(image.as_str())?;
    for _ in 0..n {
        // SAFETY: a fresh shared anonymous page, unmapped below.
        let shared = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u64;
        if shared as *mut libc::c_void == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        // SAFETY: plain syscalls; the child only calls async-signal-safe functions.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                bail!("open {image}: {}", std::io::Error::last_os_error());
            }
            let pid = libc::fork();
            if pid == 0 {
                let zero = [0u8; 4];
                let mut t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t);
                std::ptr::write_volatile(
                    shared,
                    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64,
                );
                libc::pwrite(fd, zero.as_ptr() as *const _, 4, 60);
                libc::_exit(0);
            }
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            let reaped = boottime_ns();
            let stamp = std::ptr::read_volatile(shared);
            let sig = if libc::WIFSIGNALED(st) {
                libc::WTERMSIG(st)
            } else {
                0
            };
            println!("{pid} {stamp} {reaped} {sig}");
            libc::close(fd);
            libc::munmap(shared as *mut _, 4096);
        }
        // Let the agent keep up: this measures the breaker, not the ring buffer.
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The phase: a kill-mode agent on a store in `dir`, `n` samples.
pub fn phase(bin: &Path, dir: &Path, loopgen: &Path, n: usize) -> anyhow::Result<Latency> {
    let store = dir.join("respond-store");
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store)?;
    let img = store.join("vm.qcow2");
    let s = img.to_str().context("path")?;
    super::qemu_img(&["create", "-q", "-f", "qcow2", s, "16M"])?;
    super::qemu_img(&["snapshot", "-c", "s1", s])?;
    let before = std::fs::read(&img)?;
    const DEFAULT: &str = include_str!("../../../snapmon/default-policy.toml");
    let policy = dir.join("respond-policy.toml");
    std::fs::write(
        &policy,
        format!(
            "{DEFAULT}\n[respond]\nmode = \"kill\"\nstores = [{:?}]\n\n[evidence]\ndir = {:?}\n",
            store.display().to_string(),
            dir.join("respond-evidence").display().to_string()
        ),
    )?;
    let out = dir.join("respond.jsonl");
    let ag = agent::Agent::start_with(
        bin,
        &policy,
        &[&store],
        &out,
        &dir.join("respond-agent.log"),
        &[],
    )?;
    let o = Command::new(loopgen)
        .args(["bench", "--respondloop", s, &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running the respond worker")?;
    if !o.status.success() {
        bail!("respond worker failed: {}", o.status);
    }
    ag.quiesce(Duration::from_secs(2));
    let header_changed = std::fs::read(&img)?[..65536] != before[..65536];
    let (_, status, _) = ag.stop()?;
    // pid → (hook→signal ns, signal at boot ns), from the alerts.
    let mut alerts: HashMap<u32, (u64, u64)> = HashMap::new();
    let f = std::fs::File::open(&out)?;
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        if !line.contains("\"SM-E003\"") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let d = &v["snapmon"]["detail"];
        let num = |k: &str| d[k].as_str().and_then(|x| x.parse::<u64>().ok());
        if let (Some(pid), Some(h), Some(at)) = (
            v["process"]["pid"].as_u64(),
            num("syscall_to_signal_ns"),
            num("signal_boottime_ns"),
        ) {
            alerts.insert(pid as u32, (h, at));
        }
    }
    let (mut sys, mut hook, mut reaped) = (vec![], vec![], vec![]);
    let (mut samples, mut killed) = (0, 0);
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<u64> = l.split(' ').filter_map(|x| x.parse().ok()).collect();
        let [pid, stamp, done, sig] = f[..] else {
            continue;
        };
        samples += 1;
        if sig == libc::SIGKILL as u64 {
            killed += 1;
            reaped.push(done.saturating_sub(stamp) as f64);
        }
        if let Some((h, at)) = alerts.get(&(pid as u32)) {
            hook.push(*h as f64);
            sys.push(at.saturating_sub(stamp) as f64);
        }
    }
    println!(
        "bench: respond: {killed}/{samples} killed, {} alerted; agent exit {status}",
        sys.len()
    );
    Ok(Latency {
        samples,
        killed,
        alerted: sys.len(),
        header_changed,
        syscall_to_signal: pct(sys),
        hook_to_signal: pct(hook),
        syscall_to_reaped: pct(reaped),
        fs: super::report::fs_type(dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_microseconds() {
        let p = pct((1..=100).map(|x| x as f64 * 1000.0).collect()).unwrap();
        assert_eq!((p.p50_us, p.p99_us, p.max_us), (51.0, 99.0, 100.0));
        assert!(pct(vec![]).is_none());
    }
}
