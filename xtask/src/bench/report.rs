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
                    "{:.1} MiB RSS (peak {:.1} MiB)",
                    i.rss_kib as f64 / 1024.0,
                    i.hwm_kib as f64 / 1024.0
                )
            })
            .unwrap_or_else(|| "not measured".into()),
        met: r.idle.as_ref().map(|i| i.rss_kib <= 40 * 1024),
    });
    t.push(shutdown_target(&r.shutdown, r.shutdown_error.as_deref()));
    t
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
    let json = serde_json::json!({
        "schema": "snapmon-bench/1",
        "results": r,
        "summary": {"cells": cells, "hook_cells": hooks, "targets": targets},
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
    writeln!(w, "| target | goal | measured | met |\n|---|---|---|---|")?;
    for t in &targets {
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
    writeln!(w)?;

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
        writeln!(w, "Idle (watching the capacity store, 10 s, nothing happening): RSS {:.1} MiB, peak {:.1} MiB, CPU {:.2}%.\n", i.rss_kib as f64 / 1024.0, i.hwm_kib as f64 / 1024.0, i.cpu_pct)?;
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

    #[test]
    fn idle_shutdown_line() {
        assert_eq!(shutdown_line(&[]), None);
        let l = shutdown_line(&[stop(0.013), stop(0.011), stop(0.2)]).unwrap();
        assert!(l.contains("3 stops"), "{l}");
        assert!(l.contains("p50 0.013 s / max 0.200 s (min 0.011 s)"), "{l}");
    }
}
