//! Results as docs/benchmarks.json (everything, raw) and docs/benchmarks.md (tables with
//! min/median/max, ratios against no agent, and the issue's targets met or not).

use std::{fmt::Write as _, path::Path, process::Command};

use serde::Serialize;

use super::{fio, hook::HookCell, Args, Results, CONFIGS, TARGETS};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_mib: u64,
    pub cpu: String,
    pub kernel: String,
    pub snapmon: String,
    pub snapmon_rev: String,
    pub fio: String,
    pub auditd: String,
    pub qemu_img: String,
    pub bench_dir_fs: String,
    /// Other snapmon processes (other people's agents) alive when the bench started: their
    /// hooks run on every write in all configs, including "no agent".
    pub other_agents: Vec<String>,
    pub bpf_programs_loaded: usize,
    /// 1/5/15-minute load averages at start and end: other work on a shared machine.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    pub fn summary(&self) -> String {
        format!(
            "{} CPUs, {} MiB, kernel {}, {} ({}), {}, auditd {}",
            self.nproc,
            self.mem_total_mib,
            self.kernel,
            self.snapmon,
            self.snapmon_rev,
            self.fio,
            self.auditd
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_pct: f64,
    /// Where the idle RSS is (smaps), when it could be read.
    pub parts: Option<super::agent::MemParts>,
}

impl Idle {
    /// ", of which heap … MiB, …": what a regression of the idle RSS came from.
    pub fn parts_text(&self) -> String {
        let Some(p) = self.parts else {
            return String::new();
        };
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            " (heap and other anonymous {:.1} MiB, BPF ring buffers {:.1} MiB, agent binary {:.1} MiB, libraries {:.1} MiB)",
            mib(p.anon_kib),
            mib(p.bpf_maps_kib),
            mib(p.binary_kib),
            mib(p.files_kib)
        )
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                String::from_utf8_lossy(&o.stderr).trim().to_string()
            } else {
                s
            }
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

pub fn now_rfc3339() -> String {
    sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

/// Filesystem type name of the filesystem holding `dir` (`tmpfs`, `ext2/ext3`, …).
pub fn fs_type(dir: &Path) -> String {
    sh("stat", &["-f", "-c", "%T", &dir.to_string_lossy()])
}

/// The device a directory's filesystem lives on (`/dev/vda`), for the report.
pub fn fs_source(dir: &Path) -> String {
    sh(
        "findmnt",
        &["-n", "-o", "SOURCE", "-T", &dir.to_string_lossy()],
    )
}

pub fn machine(bin: &Path, rev: Option<&str>, dir: &Path) -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let me = std::process::id();
    let mut other = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim().starts_with("snapmon") {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                other.push(format!("{pid}: {}", cmd.trim()));
            }
        }
    }
    let rev = rev.map(str::to_string).unwrap_or_else(|| {
        let ws = crate::workspace();
        let head = sh(
            "git",
            &[
                "-C",
                &ws.to_string_lossy(),
                "rev-parse",
                "--short=12",
                "HEAD",
            ],
        );
        let dirty = !sh(
            "git",
            &[
                "-C",
                &ws.to_string_lossy(),
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
        )
        .is_empty();
        format!(
            "{head}{}",
            if dirty { " + uncommitted changes" } else { "" }
        )
    });
    let fs = fs_type(dir);
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_total_mib: mem_kib / 1024,
        cpu,
        kernel: sh("uname", &["-r"]),
        snapmon: sh(&bin.to_string_lossy(), &["--version"]),
        snapmon_rev: rev,
        fio: fio::version(),
        auditd: sh("auditctl", &["-v"]),
        qemu_img: sh("qemu-img", &["--version"])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        bench_dir_fs: fs,
        other_agents: other,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        bpf_programs_loaded: sh("bpftool", &["prog", "show"])
            .lines()
            .filter(|l| l.contains(": ") && l.contains(" name "))
            .count(),
    }
}

pub fn command(a: &Args) -> String {
    let mut s = String::from("cargo xtask bench");
    if a.reps != 5 {
        write!(s, " --reps {}", a.reps).unwrap();
    }
    if a.runtime != 5 {
        write!(s, " --runtime {}", a.runtime).unwrap();
    }
    if let Some(d) = &a.dir {
        write!(s, " --dir {}", d.display()).unwrap();
    }
    if let Some(d) = &a.disk_dir {
        write!(s, " --disk-dir {}", d.display()).unwrap();
    }
    if a.skip_disk {
        s.push_str(" --skip-disk");
    }
    if a.writers != 4 {
        write!(s, " --writers {}", a.writers).unwrap();
    }
    if a.step_secs != 5.0 {
        write!(s, " --step-secs {}", a.step_secs).unwrap();
    }
    if a.respond_samples != 1000 {
        write!(s, " --respond-samples {}", a.respond_samples).unwrap();
    }
    for (skip, flag) in [
        (a.skip_overhead, "--skip-overhead"),
        (a.skip_hook, "--skip-hook"),
        (a.skip_mix, "--skip-mix"),
        (a.skip_respond, "--skip-respond"),
        (a.skip_capacity, "--skip-capacity"),
        (a.skip_alert_latency, "--skip-alert-latency"),
    ] {
        if skip {
            write!(s, " {flag}").unwrap();
        }
    }
    s
}

pub(super) fn stats(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], median_sorted(v), v[v.len() - 1]))
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    stats(&mut v).map(|s| s.1)
}

/// Per-configuration summary of one (job, target) cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub job: &'static str,
    pub target: &'static str,
    pub config: &'static str,
    pub n: usize,
    pub bw_mib_s: Option<(f64, f64, f64)>,
    pub p99_us: Option<(f64, f64, f64)>,
    /// Median over repetitions of (this config / no agent) from the same repetition.
    pub bw_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub cpu_us_per_io: Option<(f64, f64, f64)>,
    /// Median over repetitions of (fio CPU per I/O − no agent's in the same repetition).
    pub cpu_us_per_io_delta: Option<f64>,
    pub agent_cpu_pct: Option<f64>,
    pub agent_events: Option<f64>,
    pub agent_lost: Option<f64>,
    pub error: Option<String>,
}

pub fn cells(r: &Results) -> Vec<Cell> {
    let mut out = Vec::new();
    for job in fio::JOBS {
        for &target in TARGETS {
            for &config in CONFIGS {
                let runs: Vec<_> = r
                    .overhead
                    .iter()
                    .filter(|x| x.job == job.name && x.target == target && x.config == config)
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let base = |rep: usize| {
                    r.overhead
                        .iter()
                        .find(|x| {
                            x.job == job.name
                                && x.target == target
                                && x.config == "none"
                                && x.rep == rep
                        })
                        .and_then(|x| x.fio)
                };
                let ok: Vec<_> = runs
                    .iter()
                    .filter_map(|x| x.fio.map(|f| (x.rep, f)))
                    .collect();
                let mut bw: Vec<f64> = ok.iter().map(|(_, f)| f.bw_bytes / 1048576.0).collect();
                let mut p99: Vec<f64> = ok.iter().map(|(_, f)| f.clat_p99_ns / 1e3).collect();
                let ratio = |g: fn(&fio::FioResult) -> f64| {
                    median(
                        ok.iter()
                            .filter_map(|(rep, f)| base(*rep).map(|b| g(f) / g(&b)))
                            .filter(|x| x.is_finite())
                            .collect(),
                    )
                };
                let mut cpu: Vec<f64> = ok.iter().map(|(_, f)| f.cpu_us_per_io).collect();
                let cpu_delta = median(
                    ok.iter()
                        .filter_map(|(rep, f)| {
                            base(*rep).map(|b| f.cpu_us_per_io - b.cpu_us_per_io)
                        })
                        .filter(|x| x.is_finite())
                        .collect(),
                );
                out.push(Cell {
                    cpu_us_per_io: stats(&mut cpu),
                    cpu_us_per_io_delta: cpu_delta,
                    job: job.name,
                    target,
                    config,
                    n: ok.len(),
                    bw_mib_s: stats(&mut bw),
                    p99_us: stats(&mut p99),
                    bw_ratio: ratio(|f| f.bw_bytes),
                    p99_ratio: ratio(|f| f.clat_p99_ns),
                    agent_cpu_pct: median(runs.iter().filter_map(|x| x.agent_cpu_pct).collect()),
                    agent_events: median(
                        runs.iter()
                            .filter_map(|x| x.records.as_ref().map(|c| c.events as f64))
                            .collect(),
                    ),
                    agent_lost: median(
                        runs.iter()
                            .filter_map(|x| x.records.as_ref().map(|c| c.lost_kernel as f64))
                            .collect(),
                    ),
                    error: runs.iter().find_map(|x| x.error.clone()),
                });
            }
        }
    }
    out
}

/// One issue target, judged.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub goal: &'static str,
    pub measured: String,
    pub met: Option<bool>,
}

fn pctd(r: f64) -> String {
    format!("{:+.1}%", (r - 1.0) * 100.0)
}

/// "; tight loop: snapmon +X ns/write (+P%), of which …" for a tmpfs target.
fn hook_summary(hooks: &[HookCell], target: &str) -> Option<String> {
    let d = |config: &str| {
        hooks
            .iter()
            .find(|c| c.target == target && c.config == config)
            .and_then(|c| Some((c.delta_ns?, c.delta_pct?)))
    };
    let (sn, sp) = d("snapmon")?;
    let mut out = format!("; tight 4 KiB pwrite loop: snapmon {sn:+.0} ns/write ({sp:+.1}%)");
    if target == "unwatched" {
        let parts: Vec<String> = [
            ("slowpath", "syscall slow path alone"),
            ("floor", "do-nothing program on the write tracepoints"),
            ("floor-raw", "on raw sys_enter"),
        ]
        .iter()
        .filter_map(|(c, what)| d(c).map(|(n, p)| format!("{what} {n:+.0} ns ({p:+.1}%)")))
        .collect();
        if !parts.is_empty() {
            out += &format!("; {}", parts.join(", "));
        }
        let other = hooks
            .iter()
            .find(|c| c.target == "getppid" && c.config == "snapmon")
            .and_then(|c| Some((c.delta_ns?, c.delta_pct?)));
        if let Some((n, p)) = other {
            out +=
                &format!("; on a syscall no hook is on (getppid): snapmon {n:+.0} ns ({p:+.1}%)");
        }
    }
    Some(out)
}

pub fn targets(r: &Results, cells: &[Cell]) -> Vec<Target> {
    let mut t = Vec::new();
    let hooks = super::hook::cells(&r.hook);
    let snap = |target: &str| -> Vec<&Cell> {
        cells
            .iter()
            .filter(|c| c.config == "snapmon" && c.target == target)
            .collect()
    };
    let noise = |job: &str, target: &str| -> Option<f64> {
        let c = cells
            .iter()
            .find(|c| c.job == job && c.target == target && c.config == "none")?;
        let (lo, med, hi) = c.bw_mib_s?;
        Some((hi - lo) / med * 100.0)
    };
    for (target, goal, lim, name) in [
        (
            "unwatched",
            "throughput within noise (≤1%)",
            0.99,
            "overhead on unwatched I/O (tmpfs)",
        ),
        (
            "watched",
            "throughput ≤3% lower",
            0.97,
            "overhead on trusted writes to a watched image (tmpfs)",
        ),
        (
            "unwatched-disk",
            "throughput within noise (≤1%)",
            0.99,
            "overhead on unwatched I/O (disk, O_DIRECT)",
        ),
        (
            "watched-disk",
            "throughput ≤3% lower",
            0.97,
            "overhead on trusted writes to a watched image (disk, O_DIRECT)",
        ),
    ] {
        let cs = snap(target);
        if cs.is_empty() && target.ends_with("-disk") && r.disk.is_none() {
            continue;
        }
        if cs.is_empty() || cs.iter().any(|c| c.bw_ratio.is_none()) {
            t.push(Target {
                name,
                goal,
                measured: "not measured".into(),
                met: None,
            });
            continue;
        }
        let measured = cs
            .iter()
            .map(|c| {
                format!(
                    "{} {}, fio CPU {:+.2} µs/IO (no-agent spread {:.1}%)",
                    c.job,
                    pctd(c.bw_ratio.unwrap()),
                    c.cpu_us_per_io_delta.unwrap_or(f64::NAN),
                    noise(c.job, target).unwrap_or(f64::NAN)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let met = cs.iter().all(|c| c.bw_ratio.unwrap() >= lim);
        // The same writes in the tight loop, split by hook layer.
        let floor = hook_summary(&hooks, target).unwrap_or_default();
        let measured = measured + &floor;
        t.push(Target {
            name,
            goal,
            measured,
            met: Some(met),
        });
    }
    // A paced step counts at its target rate when the writers kept within 1% of it (they
    // stamp and sleep, so 100 000/s comes out as 99 9xx/s); flat-out steps at what they did.
    let paced = |s: &super::load::Step| {
        if s.target_rate > 0 && s.achieved_rate >= 0.99 * s.target_rate as f64 {
            s.target_rate as f64
        } else {
            s.achieved_rate
        }
    };
    let zl = r
        .capacity
        .iter()
        .filter(|s| s.zero_loss)
        .max_by(|a, b| paced(a).total_cmp(&paced(b)));
    t.push(Target {
        name: "zero-loss capacity",
        goal: "≥100,000 relevant events/s with zero loss",
        measured: match zl {
            Some(s) => format!(
                "highest zero-loss step {:.0} events/s ({:.0} written/s)",
                paced(s),
                s.achieved_rate
            ),
            None if r.capacity.is_empty() => "not measured".into(),
            None => "no step was loss-free".into(),
        },
        met: (!r.capacity.is_empty()).then(|| zl.is_some_and(|s| paced(s) >= 100_000.0)),
    });
    // Alert latency from the phase where every write alerts; else (older runs, or the phase
    // skipped) to the event record of the capacity steps.
    let lat_steps = if r.alert_latency.is_empty() {
        &r.capacity
    } else {
        &r.alert_latency
    };
    let lats: Vec<_> = lat_steps
        .iter()
        .filter_map(|s| s.latency.as_ref().map(|l| (s.achieved_rate, l)))
        .collect();
    let worst = lats.iter().map(|(_, l)| l.p99_ms).fold(f64::NAN, f64::max);
    t.push(Target {
        name: "alert latency",
        goal: "p99 ≤10 ms",
        measured: if lats.is_empty() {
            "not measured (no loss-free step)".into()
        } else {
            format!(
                "to the {} line; p99 per loss-free step: {}",
                lats[0].1.to,
                lats.iter()
                    .map(|(rate, l)| format!("{:.1} ms at {:.0}/s", l.p99_ms, rate))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        met: (!lats.is_empty()).then_some(worst <= 10.0),
    });
    t.push(Target {
        name: "idle memory",
        goal: "idle RSS ≤40 MiB",
        measured: r
            .idle
            .as_ref()
            .map(|i| {
                format!(
                    "{:.1} MiB RSS{} (peak {:.1} MiB)",
                    i.rss_kib as f64 / 1024.0,
                    i.parts_text(),
                    i.hwm_kib as f64 / 1024.0
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        met: r.idle.as_ref().map(|i| i.rss_kib <= 40 * 1024),
    });
    t.push(shutdown_target(&r.shutdown, r.shutdown_error.as_deref()));
    t
}

/// Issue #19's hook-cost limits over the do-nothing floor of the same mode, same run
/// (ns per 4 KiB pwrite), and the getppid cost measured before the issue.
const UNWATCHED_OVER_FLOOR_NS: f64 = 60.0;
const WATCHED_OVER_FLOOR_NS: f64 = 150.0;
const GETPPID_BEFORE_NS: f64 = 52.0;
const ZERO_LOSS_RATE: u64 = 150_000;
const CPU_STEP_RATE: u64 = 100_000;
const CPU_S_PER_100K: f64 = 0.5;

/// Issue #19's targets, each judged from this run alone: hook costs paired per repetition
/// against the floor measured beside them, capacity from its 150 000/s and 100 000/s steps.
pub fn issue19_targets(
    hook: &[super::hook::HookRun],
    mix: &[super::hook::HookRun],
    capacity: &[super::load::Step],
    alert_latency: &[super::load::Step],
    idle: Option<&Idle>,
) -> Vec<Target> {
    use super::hook::paired_delta;
    let mut t = Vec::new();
    // Why (config, target) has no delta: the error of one of its runs, if any ran.
    let missing = |config: &str, target: &str| {
        hook.iter()
            .filter(|r| r.config == config && r.target == target)
            .find_map(|r| r.error.clone())
            .map(|e| format!("{config}: {e}"))
            .unwrap_or_else(|| "not measured".into())
    };
    // Tracepoint mode also against `floor+compat`: its 32-bit hook is a raw `sys_enter`
    // program on every syscall, a cost the write tracepoints' floor does not hold.
    const TP_ALSO: &str = "floor+compat";
    for (name, goal, target, config, base, limit) in [
        (
            "unwatched 4 KiB pwrite, tracepoint mode",
            "≤ floor + 60 ns",
            "unwatched",
            "snapmon",
            "floor",
            UNWATCHED_OVER_FLOOR_NS,
        ),
        (
            "unwatched 4 KiB pwrite, raw mode",
            "≤ floor-raw + 60 ns",
            "unwatched",
            "snapmon-raw",
            "floor-raw",
            UNWATCHED_OVER_FLOOR_NS,
        ),
        (
            "trusted 4 KiB pwrite to a watched image (data cluster), tracepoint mode",
            "≤ floor + 150 ns",
            "watched",
            "snapmon",
            "floor",
            WATCHED_OVER_FLOOR_NS,
        ),
        (
            "trusted 4 KiB pwrite to a watched image (data cluster), raw mode",
            "≤ floor-raw + 150 ns",
            "watched",
            "snapmon-raw",
            "floor-raw",
            WATCHED_OVER_FLOOR_NS,
        ),
        (
            "unhooked syscall (getppid), tracepoint mode",
            "≤ none + 52 ns (before #19)",
            "getppid",
            "snapmon",
            "none",
            GETPPID_BEFORE_NS,
        ),
        (
            "unhooked syscall (getppid), raw mode",
            "≤ none + 52 ns (before #19)",
            "getppid",
            "snapmon-raw",
            "none",
            GETPPID_BEFORE_NS,
        ),
    ] {
        let d = paired_delta(hook, target, config, base);
        let mut measured = match d {
            Some(d) => format!("{config} {d:+.0} ns over {base} (median of same-repetition pairs)"),
            None => missing(config, target),
        };
        if config == "snapmon" && base == "floor" {
            let also = paired_delta(hook, target, config, TP_ALSO);
            let compat = paired_delta(hook, target, TP_ALSO, base);
            if let (Some(a), Some(c)) = (also, compat) {
                measured += &format!(
                    "; {a:+.0} ns over {TP_ALSO}, whose 32-bit hook floor alone is {c:+.0} ns"
                );
            }
        }
        t.push(Target {
            name,
            goal,
            measured,
            met: d.map(|d| d <= limit),
        });
    }
    let step = |steps: &[super::load::Step], rate: u64| {
        steps.iter().find(|s| s.target_rate == rate).cloned()
    };
    let zl = step(capacity, ZERO_LOSS_RATE);
    t.push(Target {
        name: "zero loss at 150 000 relevant events/s",
        goal: "no record lost (kernel, decoder or sink)",
        measured: match &zl {
            Some(s) => format!(
                "{:.0} written/s, {} of {} delivered, lost {} (+{} in the sink queue)",
                s.achieved_rate,
                s.delivered,
                s.writes,
                s.lost_kernel + s.lost_decoder,
                s.lost_sink
            ),
            None => "no 150000/s step in this run".into(),
        },
        met: zl.map(|s| {
            s.zero_loss && s.lost_sink == 0 && s.achieved_rate >= 0.99 * ZERO_LOSS_RATE as f64
        }),
    });
    let cpu = step(capacity, CPU_STEP_RATE).and_then(|s| s.cpu_s_per_100k);
    t.push(Target {
        name: "agent CPU per 100k records (100 000/s step)",
        goal: "≤ 0.5 CPU-s per 100 000 records",
        measured: match cpu {
            Some(c) => format!("{c:.2} CPU-s per 100 000 delivered records"),
            None => "no 100000/s step with records in this run".into(),
        },
        met: cpu.map(|c| c <= CPU_S_PER_100K),
    });
    let lat_steps = if alert_latency.is_empty() {
        capacity
    } else {
        alert_latency
    };
    let p99s: Vec<(f64, f64)> = lat_steps
        .iter()
        .filter_map(|s| s.latency.as_ref().map(|l| (s.achieved_rate, l.p99_ms)))
        .collect();
    let worst = p99s.iter().map(|x| x.1).reduce(f64::max);
    t.push(Target {
        name: "p99 alert latency (kept)",
        goal: "p99 ≤ 10 ms",
        measured: match worst {
            Some(w) => format!(
                "worst p99 {w:.1} ms over {} loss-free step(s) ({})",
                p99s.len(),
                p99s.iter()
                    .map(|(r, p)| format!("{p:.1} ms at {r:.0}/s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "not measured (no loss-free step)".into(),
        },
        met: worst.map(|w| w <= 10.0),
    });
    t.push(Target {
        name: "idle RSS (kept)",
        goal: "≤ 40 MiB",
        measured: idle
            .map(|i| format!("{:.1} MiB", i.rss_kib as f64 / 1024.0))
            .unwrap_or_else(|| "not measured".into()),
        met: idle.map(|i| i.rss_kib <= 40 * 1024),
    });
    let v = super::mix::verdict(mix);
    t.push(Target {
        name: "syscall-hook mode on a VM host",
        goal: "raw the default only where it wins the syscall-mix phase",
        measured: mix_verdict_text(&v, mix),
        met: None,
    });
    t
}

/// The mix phase's verdict in words.
fn mix_verdict_text(v: &super::mix::Verdict, mix: &[super::hook::HookRun]) -> String {
    use super::mix::Verdict as V;
    match v {
        V::RawWins {
            by_ns,
            faster_reps,
            reps,
        } => format!("raw wins: {by_ns:.0} ns less per mix iteration than tracepoint mode (faster in {faster_reps} of {reps} repetitions); `auto` picks raw mode where it loads"),
        V::TracepointWins {
            by_ns,
            faster_reps,
            reps,
        } => format!("tracepoint mode wins: raw costs {by_ns:.0} ns more per mix iteration (slower in {faster_reps} of {reps} repetitions); `auto` should not pick raw mode (docs/benchmarks-notes.md: the runs behind it)"),
        V::NoClearWinner {
            raw_minus_tracepoint_ns,
            raw_faster_reps,
            reps,
        } => format!("no clear winner: raw {raw_minus_tracepoint_ns:+.0} ns per mix iteration against tracepoint mode, faster in {raw_faster_reps} of {reps} repetitions (a winner needs ≥5 repetitions and 3 in 4 of them); not a verdict alone (docs/benchmarks-notes.md: the runs behind `auto`)"),
        V::RawNotMeasured => format!(
            "no verdict: snapmon-raw {}",
            super::hook::unmeasured(mix, &["snapmon-raw"])
                .into_iter()
                .next()
                .map(|x| x.1)
                .unwrap_or_else(|| "not measured".into())
        ),
        V::TracepointNotMeasured => "no verdict: the syscall-mix phase did not measure snapmon".into(),
    }
}

/// Longest an idle agent may take to exit on SIGINT (issue 19, item 5).
const SHUTDOWN_GOAL_S: f64 = 0.5;

/// The idle time-to-exit target: met when every stop exited cleanly within the goal and
/// wrote its `stopped` record.
fn shutdown_target(stops: &[super::Shutdown], error: Option<&str>) -> Target {
    let goal = "idle agent exits ≤0.5 s after SIGINT, `stopped` record written";
    let mut v: Vec<f64> = stops.iter().map(|s| s.exit_s).collect();
    let Some((lo, med, hi)) = stats(&mut v) else {
        return Target {
            name: "idle shutdown",
            goal,
            measured: match error {
                Some(e) => format!("not measured ({e})"),
                None => "not measured".into(),
            },
            met: None,
        };
    };
    let bad: Vec<String> = stops
        .iter()
        .filter(|s| !s.stopped_record || !s.exit.contains("exit status: 0"))
        .map(|s| {
            format!(
                "{} (stopped record {})",
                s.exit,
                if s.stopped_record {
                    "written"
                } else {
                    "missing"
                }
            )
        })
        .collect();
    let mut measured = format!(
        "SIGINT to exit over {} stops: p50 {med:.3} / max {hi:.3} s (min {lo:.3})",
        stops.len()
    );
    if !bad.is_empty() {
        measured += &format!("; unclean: {}", bad.join(", "));
    }
    Target {
        name: "idle shutdown",
        goal,
        measured,
        met: Some(hi <= SHUTDOWN_GOAL_S && bad.is_empty()),
    }
}

/// The footprint section's sentence on the idle stops.
fn shutdown_line(stops: &[super::Shutdown]) -> Option<String> {
    let mut v: Vec<f64> = stops.iter().map(|s| s.exit_s).collect();
    let (lo, med, hi) = stats(&mut v)?;
    Some(format!(
        "Exit on SIGINT, idle (2 s after `started`, SIGINT → process gone; {} stops, goal ≤{SHUTDOWN_GOAL_S} s): p50 {med:.3} s / max {hi:.3} s (min {lo:.3} s). The stops under load are in the JSON (`stopped[].exit_s`).\n",
        stops.len()
    ))
}

fn mmm(v: Option<(f64, f64, f64)>, prec: usize) -> String {
    v.map(|(a, b, c)| format!("{a:.prec$} / **{b:.prec$}** / {c:.prec$}"))
        .unwrap_or_else(|| "—".into())
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".into())
}

pub fn write(r: &Results, dir: &Path) -> anyhow::Result<()> {
    let cells = cells(r);
    let targets = targets(r, &cells);
    let hooks = super::hook::cells(&r.hook);
    let mix = super::hook::cells_for(&r.mix, super::mix::TARGETS, super::mix::CONFIGS);
    let verdict = super::mix::verdict(&r.mix);
    let t19 = issue19_targets(
        &r.hook,
        &r.mix,
        &r.capacity,
        &r.alert_latency,
        r.idle.as_ref(),
    );
    let json = serde_json::json!({
        "schema": "snapmon-bench/1",
        "results": r,
        "summary": {"cells": cells, "hook_cells": hooks, "mix_cells": mix, "mix_verdict": verdict, "targets": targets, "targets_19": t19},
    });
    std::fs::write(
        dir.join("benchmarks.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;

    let m = &r.machine;
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "# snapmon benchmarks\n")?;
    writeln!(w, "Generated by `cargo xtask bench` ({}; {:.0} s). Raw numbers: [`benchmarks.json`](benchmarks.json).\n", r.started, r.duration_s)?;
    writeln!(w, "Reproduce (root, Debian 12): `{}`\n", r.command)?;
    writeln!(w, "## Machine\n")?;
    writeln!(w, "| | |\n|---|---|")?;
    writeln!(w, "| CPUs (`nproc`) | {} ({}) |", m.nproc, m.cpu)?;
    writeln!(w, "| memory | {} MiB |", m.mem_total_mib)?;
    writeln!(w, "| kernel | {} |", m.kernel)?;
    writeln!(
        w,
        "| snapmon | {} (commit {}, release build) |",
        m.snapmon, m.snapmon_rev
    )?;
    writeln!(w, "| fio | {} |", m.fio)?;
    writeln!(w, "| auditd | {} |", m.auditd)?;
    writeln!(w, "| qemu-img | {} |", m.qemu_img)?;
    writeln!(w, "| bench files on | {} |", m.bench_dir_fs)?;
    writeln!(
        w,
        "| BPF programs loaded at start | {} |",
        m.bpf_programs_loaded
    )?;
    writeln!(
        w,
        "| load average at start / end | {} / {} |",
        m.loadavg_start, m.loadavg_end
    )?;
    writeln!(
        w,
        "| other snapmon agents running | {} |\n",
        if m.other_agents.is_empty() {
            "none".into()
        } else {
            m.other_agents.join("<br>")
        }
    )?;
    if !m.other_agents.is_empty() {
        writeln!(w, "Other agents were attached during the run (shared development machine); their hooks run on every write in every configuration, \"no agent\" included, so the ratios below are the cost of *one more* agent.\n")?;
    }

    writeln!(w, "## Targets (issue #9)\n")?;
    target_table(w, &targets)?;

    writeln!(w, "## Targets (issue #19)\n")?;
    writeln!(w, "By default (`--syscall-hook auto`) raw mode runs where it loads and no VFS write hook attaches, tracepoint mode elsewhere. Raw mode's floor (`floor-raw`) is lower than tracepoint mode's (`floor`), so the two modes also compare against `none` in the hook-cost table. Each row from this run alone: hook costs are medians over repetitions of (config − its floor) paired within a repetition (the hook-cost phase below), capacity rows from the 150 000/s and 100 000/s capacity steps. Load average at start / end {} / {} on {} CPUs: on a loaded machine these numbers are noisy in both directions, so a verdict close to its limit needs a quiet-machine run to stand.\n", m.loadavg_start, m.loadavg_end, m.nproc)?;
    target_table(w, &t19)?;

    writeln!(w, "## Overhead (fio)\n")?;
    writeln!(w, "{} interleaved repetitions (each: no agent, snapmon, auditd), {} s per run after a 1 s ramp, `--direct=1 --thread --numjobs=1`, writes at offset 64 MiB..320 MiB (guest data clusters of the watched qcow2, preallocated; the unwatched file is a same-size plain file). \"watched\" = the image is in a `--watch` directory (snapmon) / has an `auditctl -w <file> -p wa` rule (auditd); fio is the trusted writer (the agent runs the default policy with fio added to the `qemu` actor group, so its writes outside the image's metadata ranges are dropped in the kernel). Values are min / **median** / max; ratios are the median over repetitions of (config ÷ no agent in the same repetition). Agent columns: its CPU during the run, records written and kernel drops per run (medians).\n", r.args.reps, r.args.runtime)?;
    if let Some(d) = &r.disk {
        writeln!(w, "`-disk` files: the same two files on {d}, for the 4 KiB jobs only. The rows without the suffix are on tmpfs, where a write costs the least and a per-syscall cost shows the most; the `-disk` rows are what images on local storage written with O_DIRECT (QEMU `cache=none`) see.\n")?;
    }
    if let Some(u) = &r.auditd_unavailable {
        writeln!(w, "**auditd unavailable: {u}**\n")?;
    } else {
        writeln!(w, "auditd: {}. Note that `-w … -p wa` audits the *open for write* (and attribute changes), not each write, so its per-write cost is close to nil — and it cannot say what was written.\n", r.auditd_note)?;
    }
    writeln!(w, "| workload | file | config | MiB/s | p99 clat µs | throughput vs none | p99 vs none | fio CPU µs/IO | Δ CPU µs/IO | agent CPU | records | dropped |")?;
    writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for c in &cells {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.job,
            c.target,
            c.config,
            if c.n == 0 {
                c.error
                    .clone()
                    .map(|e| format!("failed: {e}"))
                    .unwrap_or("—".into())
            } else {
                mmm(c.bw_mib_s, 1)
            },
            mmm(c.p99_us, 1),
            if c.config == "none" {
                "—".into()
            } else {
                opt(c.bw_ratio, pctd)
            },
            if c.config == "none" {
                "—".into()
            } else {
                opt(c.p99_ratio, pctd)
            },
            mmm(c.cpu_us_per_io, 2),
            if c.config == "none" {
                "—".into()
            } else {
                opt(c.cpu_us_per_io_delta, |x| format!("{x:+.2}"))
            },
            opt(c.agent_cpu_pct, |x| format!("{x:.0}%")),
            opt(c.agent_events, |x| format!("{x:.0}")),
            opt(c.agent_lost, |x| format!("{x:.0}")),
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## Hook cost (tight pwrite loop)\n")?;
    writeln!(w, "One process does {} timed 4 KiB `pwrite`s (after {} warm-up writes) to the tmpfs files of the overhead table, in fio's region; the figure is its thread CPU time per call. The `getppid` rows make the same number of getppid(2) calls instead: a syscall no hook is on, so they show what each layer costs every other syscall on the host. {} interleaved repetitions, each running every config; Δ = median over repetitions of (config − none in the same repetition). Configs:\n", r.args.hook_writes, r.args.hook_writes / 4, r.args.hook_reps)?;
    for (c, what) in super::hook::LEGEND {
        writeln!(w, "- `{c}`: {what}")?;
    }
    writeln!(w)?;
    if let Some(e) = &r.hook_error {
        writeln!(w, "**hook-cost phase failed: {e}**\n")?;
    }
    if hooks.is_empty() {
        writeln!(w, "Not run.\n")?;
    } else {
        writeln!(
            w,
            "| file | config | ns/call | Δ ns/call | Δ |\n|---|---|---|---|---|"
        )?;
        for c in &hooks {
            writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                c.target,
                c.config,
                mmm(Some(c.ns), 0),
                opt(c.delta_ns, |x| format!("{x:+.0}")),
                opt(c.delta_pct, |x| format!("{x:+.1}%")),
            )?;
        }
        writeln!(w)?;
    }
    if !r.hook_programs.is_empty() {
        writeln!(w, "Inside snapmon's programs (last repetition, one more untimed loop per file with `BPF_ENABLE_STATS` on, programs that ran at least every other write): the kernel's own `run_time_ns` per run, which excludes the call into the program and the tracepoint around it.\n")?;
        writeln!(
            w,
            "| file | program | type | runs per write | ns per run |\n|---|---|---|---|---|"
        )?;
        for p in &r.hook_programs {
            writeln!(
                w,
                "| {} | {} | {} | {:.2} | {:.0} |",
                p.target, p.name, p.kind, p.runs_per_write, p.ns_per_run
            )?;
        }
        writeln!(w)?;
    }

    for (c, e) in super::hook::unmeasured(&r.hook, super::hook::CONFIGS) {
        writeln!(w, "`{c}`: {e}.\n")?;
    }

    writeln!(w, "## VM-host syscall mix\n")?;
    writeln!(w, "One process does {} timed iterations (after {} warm-up ones) of a QEMU-host-like syscall mix, {} syscalls each, on the hook-cost phase's tmpfs files; the figure is its thread CPU time per iteration. {} interleaved repetitions, each running every config; Δ = median over repetitions of (config − none in the same repetition). Per iteration:\n", r.args.mix_iters, r.args.mix_iters / 4, super::mix::syscalls_per_iter(), r.args.mix_reps)?;
    for (call, n) in super::mix::MIX {
        writeln!(w, "- {n} × {call}")?;
    }
    let n = super::mix::syscalls_per_iter();
    writeln!(w, "\nThe proportions are assumed, not traced from a VM doing I/O: a KVM vCPU thread's most frequent syscall is `ioctl(KVM_RUN)` (a cheap FIONREAD ioctl stands in: the hooks see the syscall, not what it does), QEMU's main loop and IO threads wake in `ppoll` on event notifiers, clear them with an eventfd `read`, kick each other with an eventfd `write` and wake each other with `futex`, virtio-blk with `aio=io_uring` submits through `io_uring_enter` and with `aio=threads` writes with `pwrite`. The one trace made (`strace -c -f`, 12 s, `qemu-system-x86_64 -accel tcg` with an iothread and a virtio-blk disk with `aio=io_uring`, no guest OS) was idle QEMU: 929 futex, 449 ppoll, 85 read, 29 write, 6 ioctl; TCG makes no `KVM_RUN` ioctls and the idle guest no disk I/O, so those parts of the mix are assumed. Writes are 3 of the {n} (2 pwrite, the eventfd write). In tracepoint mode snapmon's syscall tracepoints run on 7 of the {n} (the 3 writes, and the 4 ioctls on entry and on exit), and its 32-bit compat hook on raw `sys_enter` on all {n} (unless `--no-compat-syscalls`); the `floor` program is on the write tracepoints only, `floor-raw` on all {n}.\n\nConfigs:\n")?;
    for (c, what) in super::mix::LEGEND {
        writeln!(w, "- `{c}`: {what}")?;
    }
    writeln!(w)?;
    if let Some(e) = &r.mix_error {
        writeln!(w, "**syscall-mix phase failed: {e}**\n")?;
    }
    if mix.is_empty() {
        writeln!(w, "Not run.\n")?;
    } else {
        writeln!(
            w,
            "| config | ns/iteration | Δ ns/iteration | Δ | Δ ns over its floor |\n|---|---|---|---|---|"
        )?;
        for c in &mix {
            // The agent's own work: over the do-nothing program of the same hook mode.
            let floor = match c.config {
                "snapmon" => Some("floor"),
                "snapmon-raw" => Some("floor-raw"),
                _ => None,
            };
            writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                c.config,
                mmm(Some(c.ns), 0),
                opt(c.delta_ns, |x| format!("{x:+.0}")),
                opt(c.delta_pct, |x| format!("{x:+.1}%")),
                opt(
                    floor.and_then(|f| super::hook::paired_delta(&r.mix, "mix", c.config, f)),
                    |x| format!("{x:+.0} ({})", floor.unwrap_or_default())
                ),
            )?;
        }
        writeln!(w)?;
        for (c, e) in super::hook::unmeasured(&r.mix, super::mix::CONFIGS) {
            writeln!(w, "`{c}`: {e}.\n")?;
        }
        writeln!(w, "Verdict: {}.\n", mix_verdict_text(&verdict, &r.mix))?;
    }

    writeln!(w, "## Circuit breaker: syscall to signal\n")?;
    writeln!(w, "`--respond kill` on a store on {}: a worker forks one child per sample; each stamps CLOCK_BOOTTIME right before `pwrite(image, 4 zero bytes, 60)` (zeroing nb_snapshots) and is killed by the tracepoint program in that syscall. *syscall → signal*: the child's stamp to the kernel's stamp after `bpf_send_signal` (from the SM-E003 alert, same clock); *hook → signal*: inside the program (the alert's `syscall_to_signal_ns`); *syscall → reaped*: to the parent's `waitpid` returning. Goal: ≤ 1 ms p99.\n", r.respond.as_ref().map(|l| l.fs.as_str()).unwrap_or("the bench dir"))?;
    if let Some(e) = &r.respond_error {
        writeln!(w, "**circuit-breaker phase failed: {e}**\n")?;
    }
    match &r.respond {
        None => writeln!(w, "Not run.\n")?,
        Some(l) => {
            writeln!(
                w,
                "{} samples: {} killed, {} alerted; image header {}.\n",
                l.samples,
                l.killed,
                l.alerted,
                if l.header_changed {
                    "**changed**"
                } else {
                    "unchanged (every write refused)"
                }
            )?;
            writeln!(w, "| | p50 µs | p99 µs | max µs |\n|---|---|---|---|")?;
            for (name, p) in [
                ("syscall → signal", &l.syscall_to_signal),
                ("hook → signal", &l.hook_to_signal),
                ("syscall → reaped", &l.syscall_to_reaped),
            ] {
                match p {
                    Some(p) => writeln!(
                        w,
                        "| {name} | {:.1} | {:.1} | {:.1} |",
                        p.p50_us, p.p99_us, p.max_us
                    )?,
                    None => writeln!(w, "| {name} | — | — | — |")?,
                }
            }
            writeln!(w)?;
        }
    }

    writeln!(w, "## Capacity and alert latency\n")?;
    writeln!(w, "{} writer processes, one watched qcow2 each, each doing `pwrite(fd, 12 bytes, 60)` (nb_snapshots + snapshots_offset, rewritten with the bytes already there) at a controlled rate for {} s per step; one agent for all steps, JSON to a tmpfs file. *delivered* = records of the writers' pwrite64 in the output (matched by pid); *lost* = drops the agent reported in `lost` records (kernel ring and decoder; drops in the output sink's queue in brackets). Latency: each writer stamps CLOCK_REALTIME when pwrite returns; an inotify tailer stamps when the output file grew past the end of the matching line (k-th record of a pid = k-th write; only computed for loss-free steps). CPU/100k = agent CPU seconds over the step and its drain per 100 000 delivered records.\n", r.args.writers, r.args.step_secs)?;
    if let Some(e) = &r.capacity_error {
        writeln!(w, "**capacity phase failed: {e}**\n")?;
    }
    step_table(w, &r.capacity)?;

    writeln!(w, "### Alert latency\n")?;
    writeln!(w, "The same writers against a second agent whose policy has `dedupe_seconds = 0`, so every write raises an SM-Q001 alert (a non-QEMU process rewrote qcow2 header fields) and the latency is to that alert's line. Two records per write (event and alert).\n")?;
    if let Some(e) = &r.alert_latency_error {
        writeln!(w, "**alert-latency phase failed: {e}**\n")?;
    }
    if r.alert_latency.is_empty() {
        writeln!(w, "Not run.\n")?;
    } else {
        step_table(w, &r.alert_latency)?;
    }

    writeln!(w, "## Footprint\n")?;
    if let Some(i) = &r.idle {
        writeln!(w, "Idle (watching the capacity store, 10 s, nothing happening): RSS {:.1} MiB{}, peak {:.1} MiB, CPU {:.2}%.\n", i.rss_kib as f64 / 1024.0, i.parts_text(), i.hwm_kib as f64 / 1024.0, i.cpu_pct)?;
    }
    let st: Vec<f64> = r.startup.iter().map(|s| s.wall_s).collect();
    if let Some((lo, med, hi)) = stats(&mut st.clone()) {
        writeln!(w, "Start-up to the `started` record (spawn → line visible; {} starts): min {lo:.1} s / median {med:.1} s / max {hi:.1} s (agent-reported `startup_ms`: {}).\n", st.len(), r.startup.iter().filter_map(|s| s.reported_ms).map(|x| x.to_string()).collect::<Vec<_>>().join(", "))?;
    }
    if let Some(l) = shutdown_line(&r.shutdown) {
        writeln!(w, "{l}")?;
    }
    writeln!(w, "Under load: agent CPU per fio run is in the overhead table; RSS after each run and each capacity step is in the JSON (`overhead[].agent_rss_kib`, `capacity[].rss_kib_after`).\n")?;
    // Hand-written analysis (why a target is or is not met) survives re-runs.
    if let Ok(notes) = std::fs::read_to_string(dir.join("benchmarks-notes.md")) {
        w.push_str(&notes);
    }
    std::fs::write(dir.join("benchmarks.md"), s)?;
    Ok(())
}

fn target_table(w: &mut String, targets: &[Target]) -> std::fmt::Result {
    writeln!(w, "| target | goal | measured | met |\n|---|---|---|---|")?;
    for t in targets {
        writeln!(
            w,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            match t.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None => "n/a",
            }
        )?;
    }
    writeln!(w)
}

fn step_table(w: &mut String, steps: &[super::load::Step]) -> std::fmt::Result {
    writeln!(w, "| target/s | written/s | delivered | lost | agent up | agent CPU | CPU-s/100k | RSS after (peak) MiB | bytes/record | drain s | latency to | p50 ms | p99 ms | max ms | p99 from kernel entry ms |")?;
    writeln!(
        w,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for st in steps {
        let l = st.latency.as_ref();
        writeln!(
            w,
            "| {} | {:.0} | {} / {} | {} | {} | {:.0}% | {} | {:.1} ({:.1}) | {:.0} | {:.1} | {} | {} | {} | {} | {} |",
            if st.target_rate == 0 { "max".to_string() } else { st.target_rate.to_string() },
            st.achieved_rate,
            st.delivered,
            st.writes,
            if st.lost_sink > 0 {
                format!(
                    "{} (+{} in the sink queue)",
                    st.lost_kernel + st.lost_decoder,
                    st.lost_sink
                )
            } else {
                (st.lost_kernel + st.lost_decoder).to_string()
            },
            if st.agent_alive { "yes" } else { "**no**" },
            st.agent_cpu_pct,
            opt(st.cpu_s_per_100k, |x| format!("{x:.2}")),
            st.rss_kib_after as f64 / 1024.0,
            st.hwm_kib_after as f64 / 1024.0,
            st.bytes_per_record,
            st.drain_s,
            l.map(|l| l.to).unwrap_or("—"),
            opt(l.map(|l| l.p50_ms), |x| format!("{x:.2}")),
            opt(l.map(|l| l.p99_ms), |x| format!("{x:.2}")),
            opt(l.map(|l| l.max_ms), |x| format!("{x:.2}")),
            opt(l.map(|l| l.from_entry_p99_ms), |x| format!("{x:.2}")),
        )?;
    }
    writeln!(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Shutdown;

    fn stop(exit_s: f64) -> Shutdown {
        Shutdown {
            exit_s,
            exit: "exit status: 0".into(),
            stopped_record: true,
        }
    }

    #[test]
    fn idle_shutdown_target() {
        let t = shutdown_target(&[stop(0.02), stop(0.4), stop(0.01)], None);
        assert_eq!(t.met, Some(true));
        assert!(t.measured.contains("p50 0.020"), "{}", t.measured);
        assert!(t.measured.contains("max 0.400"), "{}", t.measured);
        // One slow stop is enough to miss the goal.
        assert_eq!(
            shutdown_target(&[stop(0.02), stop(3.4)], None).met,
            Some(false)
        );
        // So is a stop that lost its `stopped` record or did not exit cleanly.
        let mut s = stop(0.02);
        s.stopped_record = false;
        let t = shutdown_target(&[stop(0.02), s], None);
        assert_eq!(t.met, Some(false));
        assert!(t.measured.contains("missing"), "{}", t.measured);
        let mut s = stop(0.02);
        s.exit = "killed after 60 s without exiting on SIGINT".into();
        assert_eq!(shutdown_target(&[s], None).met, Some(false));
        // Not run: no verdict, and why.
        let t = shutdown_target(&[], Some("agent exited before `started`"));
        assert_eq!(t.met, None);
        assert!(t.measured.contains("agent exited before"), "{}", t.measured);
    }

    use crate::bench::{
        hook::HookRun,
        load::{Latency, Step},
    };

    fn hr(rep: usize, target: &'static str, config: &'static str, ns: f64) -> HookRun {
        HookRun {
            rep,
            config,
            target,
            ns_per_write: Some(ns),
            error: None,
        }
    }

    fn step(rate: u64, achieved: f64, lost: u64, sink: u64, cpu: f64, p99: Option<f64>) -> Step {
        Step {
            target_rate: rate,
            writers: 4,
            secs: 5.0,
            writes: 1000,
            achieved_rate: achieved,
            delivered: 1000 - lost - sink,
            alerts: 0,
            lost_records: 0,
            lost_kernel: lost,
            lost_decoder: 0,
            lost_sink: sink,
            zero_loss: lost + sink == 0,
            agent_alive: true,
            agent_cpu_s: 0.0,
            cpu_s_per_100k: Some(cpu),
            agent_cpu_pct: 0.0,
            rss_kib_after: 0,
            hwm_kib_after: 0,
            drain_s: 0.0,
            bytes_per_record: 0.0,
            latency: p99.map(|p| Latency {
                to: "event",
                n: 10,
                p50_ms: 0.1,
                p99_ms: p,
                max_ms: p,
                from_entry_p50_ms: 0.1,
                from_entry_p99_ms: p,
            }),
        }
    }

    fn verdict_of<'a>(t: &'a [Target], name: &str) -> &'a Target {
        t.iter().find(|t| t.name == name).unwrap()
    }

    /// The hook rows compare with the floor of the same repetition: rep 2 runs slow for
    /// every config, so unpaired medians (snapmon 1561 vs floor 1500 = +61) would miss the
    /// 60 ns goal that the paired deltas (+59, +59, +61 → +59) meet.
    #[test]
    fn issue19_hook_rows_pair_with_the_floor_of_the_same_repetition() {
        let mut hook = vec![
            hr(1, "unwatched", "floor", 1400.0),
            hr(1, "unwatched", "snapmon", 1459.0),
            hr(2, "unwatched", "floor", 2000.0),
            hr(2, "unwatched", "snapmon", 2059.0),
            hr(3, "unwatched", "floor", 1500.0),
            hr(3, "unwatched", "snapmon", 1561.0),
            hr(1, "watched", "floor", 1400.0),
            hr(1, "watched", "snapmon", 1551.0),
            hr(1, "getppid", "none", 400.0),
            hr(1, "getppid", "snapmon", 452.0),
            hr(1, "getppid", "snapmon-raw", 453.0),
        ];
        let t = issue19_targets(&hook, &[], &[], &[], None);
        let u = verdict_of(&t, "unwatched 4 KiB pwrite, tracepoint mode");
        assert_eq!(u.met, Some(true), "{}", u.measured);
        assert!(u.measured.contains("+59 ns over floor"), "{}", u.measured);
        // 151 over the floor misses the 150 ns goal; exactly 52 over none meets getppid's.
        assert_eq!(
            verdict_of(
                &t,
                "trusted 4 KiB pwrite to a watched image (data cluster), tracepoint mode"
            )
            .met,
            Some(false)
        );
        assert_eq!(
            verdict_of(&t, "unhooked syscall (getppid), tracepoint mode").met,
            Some(true)
        );
        assert_eq!(
            verdict_of(&t, "unhooked syscall (getppid), raw mode").met,
            Some(false)
        );
        // A raw mode the build lacks is no verdict, with the reason, never "met".
        hook.push(HookRun {
            rep: 1,
            config: "snapmon-raw",
            target: "unwatched",
            ns_per_write: None,
            error: Some("not available in this build".into()),
        });
        let t = issue19_targets(&hook, &[], &[], &[], None);
        let r = verdict_of(&t, "unwatched 4 KiB pwrite, raw mode");
        assert_eq!(r.met, None);
        assert!(r.measured.contains("not available"), "{}", r.measured);
    }

    /// Tracepoint mode's rows also name the floor with its 32-bit hook, and what that hook's
    /// floor costs alone; the verdict stays against the write tracepoints' floor.
    #[test]
    fn issue19_tracepoint_rows_name_the_compat_floor() {
        let hook = vec![
            hr(1, "unwatched", "floor", 1400.0),
            hr(1, "unwatched", "floor+compat", 1430.0),
            hr(1, "unwatched", "snapmon", 1470.0),
        ];
        let t = issue19_targets(&hook, &[], &[], &[], None);
        let u = verdict_of(&t, "unwatched 4 KiB pwrite, tracepoint mode");
        assert_eq!(u.met, Some(false), "{}", u.measured);
        assert!(
            u.measured
                .contains("+40 ns over floor+compat, whose 32-bit hook floor alone is +30 ns"),
            "{}",
            u.measured
        );
        // Without a floor+compat run the row says nothing of it.
        let t = issue19_targets(&hook[..1], &[], &[], &[], None);
        let u = verdict_of(&t, "unwatched 4 KiB pwrite, tracepoint mode");
        assert!(!u.measured.contains("compat"), "{}", u.measured);
    }

    #[test]
    fn issue19_capacity_rows() {
        let t = |steps: &[Step]| issue19_targets(&[], &[], steps, &[], None);
        let zl = "zero loss at 150 000 relevant events/s";
        let cpu = "agent CPU per 100k records (100 000/s step)";
        let ok = [
            step(100_000, 99_950.0, 0, 0, 0.49, Some(3.0)),
            step(150_000, 149_900.0, 0, 0, 0.4, Some(9.0)),
        ];
        let v = t(&ok);
        assert_eq!(verdict_of(&v, zl).met, Some(true));
        assert_eq!(verdict_of(&v, cpu).met, Some(true));
        assert_eq!(verdict_of(&v, "p99 alert latency (kept)").met, Some(true));
        // Loss in the sink queue is loss; so is a step whose writers fell short of 150k/s;
        // and the CPU row reads the 100k step, not the cheaper 150k one.
        let v = t(&[
            step(100_000, 99_950.0, 0, 0, 0.51, Some(3.0)),
            step(150_000, 149_900.0, 0, 7, 0.4, None),
        ]);
        assert_eq!(verdict_of(&v, zl).met, Some(false));
        assert_eq!(verdict_of(&v, cpu).met, Some(false));
        assert_eq!(
            verdict_of(&t(&[step(150_000, 120_000.0, 0, 0, 0.4, Some(1.0))]), zl).met,
            Some(false)
        );
        assert_eq!(
            verdict_of(
                &t(&[step(10_000, 9_999.0, 0, 0, 0.4, Some(11.0))]),
                "p99 alert latency (kept)"
            )
            .met,
            Some(false)
        );
        // No such step: no verdict.
        let v = t(&[step(125_000, 124_900.0, 0, 0, 0.4, None)]);
        assert_eq!(verdict_of(&v, zl).met, None);
        assert_eq!(verdict_of(&v, cpu).met, None);
    }

    #[test]
    fn issue19_idle_rss() {
        let idle = |kib| Idle {
            rss_kib: kib,
            hwm_kib: kib,
            cpu_pct: 0.0,
            parts: None,
        };
        let v = issue19_targets(&[], &[], &[], &[], Some(&idle(40 * 1024)));
        assert_eq!(verdict_of(&v, "idle RSS (kept)").met, Some(true));
        let v = issue19_targets(&[], &[], &[], &[], Some(&idle(40 * 1024 + 1)));
        assert_eq!(verdict_of(&v, "idle RSS (kept)").met, Some(false));
    }

    #[test]
    fn idle_shutdown_line() {
        assert_eq!(shutdown_line(&[]), None);
        let l = shutdown_line(&[stop(0.013), stop(0.011), stop(0.2)]).unwrap();
        assert!(l.contains("3 stops"), "{l}");
        assert!(l.contains("p50 0.013 s / max 0.200 s (min 0.011 s)"), "{l}");
    }
}
