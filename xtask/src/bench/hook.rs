//! Hook cost: what each layer under snapmon's write hooks adds to one 4 KiB `pwrite` on
//! tmpfs, measured in a tight loop (thread CPU time, no fio) so the layers can be told apart:
//! the syscall slow path any enabled syscall tracepoint turns on, a do-nothing program on
//! the write tracepoints or on raw `sys_enter`, and snapmon itself. Configs alternate within
//! each repetition, so drift on this shared host hits them all alike.

use std::{
    os::unix::fs::FileExt as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{agent, fio, floor};

pub const CONFIGS: &[&str] = &[
    "none",
    "slowpath",
    "floor",
    "floor-raw",
    "floor+compat",
    "snapmon",
    "snapmon-raw",
    "snapmon-probe",
    "snapmon+stats",
];
/// `getppid`: a syscall no hook is on, for what each layer taxes every other syscall.
pub const TARGETS: &[&str] = &["unwatched", "watched", "getppid"];

/// What each config is, for the report.
pub const LEGEND: &[(&str, &str)] = &[
    ("none", "no agent, no BPF program"),
    (
        "slowpath",
        "a do-nothing program on `syscalls/sys_enter_sync`, which the loop never calls: only \
         the syscall entry slow path that any enabled syscall tracepoint turns on for every task",
    ),
    (
        "floor",
        "the same program on the write syscalls' tracepoints snapmon uses (perf trace buffer, \
         then the program)",
    ),
    (
        "floor-raw",
        "the same program on raw `sys_enter` (every syscall, no trace buffer)",
    ),
    (
        "floor+compat",
        "`floor` and `floor-raw` together: the floor of tracepoint mode with its 32-bit hook \
         (the syscall tracepoints skip ia32 syscalls, so tracepoint mode sees `int 0x80` \
         through a program on raw `sys_enter`, which runs on every syscall)",
    ),
    (
        "snapmon",
        "the agent in tracepoint mode (`SNAPMON_SYSCALL_HOOK=tracepoint`), default policy with \
         the loop's executable as a trusted `qemu` writer; `watched` is the preallocated qcow2 \
         in a watched store, written in its data clusters",
    ),
    (
        "snapmon-raw",
        "the same agent started with `--syscall-hook raw`: its syscall hooks as one program on \
         raw `sys_enter` that picks the syscalls by number (only where the build has the flag)",
    ),
    (
        "snapmon-probe",
        "the same agent with `SNAPMON_FD_WALK=probe_read`: the fd → inode walk as a chain of \
         `bpf_probe_read_kernel` calls (kernels without `bpf_rdonly_cast`) instead of BTF loads",
    ),
    (
        "snapmon+stats",
        "the same with `--hook-stats`: the kernel's BPF run-time counting on, the agent's \
         default until the hook-cost phase measured it",
    ),
];

/// What one BPF program of the agent cost during a stats-on loop (not timed).
#[derive(Debug, Clone, Serialize)]
pub struct ProgCost {
    pub target: &'static str,
    pub name: String,
    pub kind: String,
    pub runs_per_write: f64,
    pub ns_per_run: f64,
}

/// `bpftool prog show -j`: id → (name, type, run_cnt, run_time_ns) for programs with stats.
fn prog_stats() -> anyhow::Result<std::collections::HashMap<u64, (String, String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bpftool prog show -j output")?;
    let mut m = std::collections::HashMap::new();
    for p in v.as_array().into_iter().flatten() {
        let Some(id) = p["id"].as_u64() else { continue };
        m.insert(
            id,
            (
                p["name"].as_str().unwrap_or("?").to_string(),
                p["type"].as_str().unwrap_or("?").to_string(),
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(m)
}

/// One untimed loop per target with run-time stats on: which of the agent's programs ran
/// per write and what each cost inside the program (the call into it is not counted).
fn program_costs(s: &Setup, writes: u64) -> anyhow::Result<Vec<ProgCost>> {
    let _stats = floor::enable_stats()?;
    let mut out = Vec::new();
    for &target in TARGETS.iter().filter(|t| **t != "getppid") {
        let file = s.file(target);
        let before = prog_stats()?;
        run_loop(s.loopgen, file, writes)?;
        let after = prog_stats()?;
        // Warm-up writes run too: count per write over both.
        let total = (writes + writes / 4) as f64;
        for (id, (name, kind, cnt, ns)) in after {
            let (c0, t0) = before.get(&id).map_or((0, 0), |b| (b.2, b.3));
            let runs = cnt.saturating_sub(c0);
            if runs as f64 >= total / 2.0 {
                out.push(ProgCost {
                    target,
                    name,
                    kind,
                    runs_per_write: runs as f64 / total,
                    ns_per_run: ns.saturating_sub(t0) as f64 / runs as f64,
                });
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct HookRun {
    pub rep: usize,
    pub config: &'static str,
    pub target: &'static str,
    pub ns_per_write: Option<f64>,
    pub error: Option<String>,
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One loop process (`xtask bench --hookloop FILE N`): N/4 warm-up writes, then N timed
/// 4 KiB pwrites walking fio's region of FILE; prints CPU ns per write. FILE `getppid`:
/// the same with getppid(2) calls.
pub fn worker(args: &[String]) -> anyhow::Result<()> {
    let [file, n] = args else {
        bail!("--hookloop FILE N");
    };
    let n: u64 = n.parse().context("N")?;
    let ns = if file == "getppid" {
        time_calls(n, |_| {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
            Ok(())
        })?
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .with_context(|| format!("opening {file}"))?;
        let buf = [0xa5u8; 4096];
        time_calls(n, |i| {
            f.write_all_at(&buf, fio::OFFSET + (i * 4096) % fio::SIZE)
        })?
    };
    println!("{ns:.2}");
    Ok(())
}

/// N/4 untimed warm-up calls, then the thread CPU ns per call over N timed ones.
pub(super) fn time_calls(
    n: u64,
    mut call: impl FnMut(u64) -> std::io::Result<()>,
) -> anyhow::Result<f64> {
    for i in 0..n / 4 {
        call(i)?;
    }
    let t0 = thread_cpu_ns();
    for i in 0..n {
        call(i)?;
    }
    Ok((thread_cpu_ns() - t0) as f64 / n.max(1) as f64)
}

pub(super) fn run_loop(loopgen: &Path, file: &Path, n: u64) -> anyhow::Result<f64> {
    let mut cmd = Command::new(loopgen);
    cmd.args(["bench", "--hookloop"])
        .arg(file)
        .arg(n.to_string());
    ns_from(cmd, "write loop")
}

/// Run a timing loop of `cargo xtask bench` (stdin closed) and read the ns it prints.
pub(super) fn ns_from(mut cmd: Command, what: &str) -> anyhow::Result<f64> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running the {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("{what} output"))
}

pub struct Setup<'a> {
    pub bin: &'a Path,
    pub policy: &'a Path,
    pub store: &'a Path,
    pub unwatched: &'a Path,
    pub watched: &'a Path,
    pub loopgen: &'a Path,
    pub dir: &'a Path,
}

impl Setup<'_> {
    fn file(&self, target: &str) -> &Path {
        match target {
            "watched" => self.watched,
            "unwatched" => self.unwatched,
            _ => Path::new("getppid"),
        }
    }
}

/// What one config of a timed phase puts in place; dropped (detached, stopped) after it.
pub(super) struct Armed {
    pub _floor: Option<floor::Floor>,
    pub agent: Option<agent::Agent>,
    /// Why the config cannot run here (a floor that would not attach, no raw mode).
    pub skip: Option<String>,
}

/// Put `config` in place: its do-nothing floor, or the agent with its flags (output in
/// `DIR/NAME.jsonl`), unless it cannot run here. `raw`: whether the agent has raw mode.
pub(super) fn arm(
    s: &Setup,
    config: &str,
    raw: &Result<(), String>,
    name: &str,
) -> anyhow::Result<Armed> {
    let mut a = Armed {
        _floor: None,
        agent: None,
        skip: None,
    };
    let f = match config {
        "slowpath" => Some(floor::Floor::attach_to(&["syscalls/sys_enter_sync"])),
        "floor" => Some(floor::Floor::attach()),
        "floor-raw" => Some(floor::Floor::attach_raw()),
        "floor+compat" => Some(floor::Floor::attach_with_compat()),
        _ => None,
    };
    match f {
        Some(Ok(f)) => a._floor = Some(f),
        Some(Err(e)) => a.skip = Some(format!("{e:#}")),
        None => {}
    }
    if config == "snapmon-raw" {
        if let Err(e) = raw {
            a.skip = Some(e.clone());
        }
    }
    if config.starts_with("snapmon") && a.skip.is_none() {
        let extra: &[&str] = match config {
            "snapmon+stats" => &["--hook-stats"],
            "snapmon-raw" => &agent::RAW_HOOK_ARGS,
            _ => &[],
        };
        // The tracepoint configs pin their mode: the agent's default (`auto`) is raw where
        // raw runs. An environment variable, so a build from before the flag takes it too.
        const TP: (&str, &str) = ("SNAPMON_SYSCALL_HOOK", "tracepoint");
        let env: &[(&str, &str)] = match config {
            "snapmon-probe" => &[("SNAPMON_FD_WALK", "probe_read"), TP],
            "snapmon-raw" => &[],
            _ => &[TP],
        };
        a.agent = Some(agent::Agent::start_env(
            s.bin,
            s.policy,
            &[s.store],
            &s.dir.join(format!("{name}.jsonl")),
            &s.dir.join(format!("{name}-agent.log")),
            extra,
            env,
        )?);
    }
    Ok(a)
}

pub fn phase(
    s: &Setup,
    reps: usize,
    writes: u64,
    runs: &mut Vec<HookRun>,
    costs: &mut Vec<ProgCost>,
) -> anyhow::Result<()> {
    let raw = agent::raw_hook_support(s.bin);
    for rep in 1..=reps {
        for &config in CONFIGS {
            let Armed {
                _floor,
                agent: ag,
                skip,
            } = arm(s, config, &raw, "hook")?;
            for &target in TARGETS {
                let file = s.file(target);
                let r = match &skip {
                    Some(e) => Err(anyhow::anyhow!("{e}")),
                    None => run_loop(s.loopgen, file, writes),
                };
                if let Ok(ns) = &r {
                    println!(
                        "bench: hook rep {rep}/{reps} {config:<13} {target:<9} {ns:>8.1} ns/call"
                    );
                }
                runs.push(HookRun {
                    rep,
                    config,
                    target,
                    ns_per_write: r.as_ref().ok().copied(),
                    error: r.err().map(|e| format!("{e:#}")),
                });
            }
            if let Some(mut g) = ag {
                if rep == reps && config == "snapmon" {
                    match program_costs(s, writes) {
                        Ok(c) => *costs = c,
                        Err(e) => eprintln!("bench: per-program costs not measured: {e:#}"),
                    }
                }
                if !g.alive() {
                    bail!("the agent died in the hook-cost phase");
                }
                g.stop()?;
            }
        }
    }
    Ok(())
}

/// Per (target, config): min/median/max ns per write, and the median over repetitions of
/// (this config − none) in the same repetition.
#[derive(Debug, Clone, Serialize)]
pub struct HookCell {
    pub target: &'static str,
    pub config: &'static str,
    pub ns: (f64, f64, f64),
    pub delta_ns: Option<f64>,
    pub delta_pct: Option<f64>,
}

pub fn cells(runs: &[HookRun]) -> Vec<HookCell> {
    cells_for(runs, TARGETS, CONFIGS)
}

/// `cells` over these targets and configs (the syscall-mix phase has its own).
pub fn cells_for(
    runs: &[HookRun],
    targets: &[&'static str],
    configs: &[&'static str],
) -> Vec<HookCell> {
    let mut out = Vec::new();
    for &target in targets {
        for &config in configs {
            let ok: Vec<(usize, f64)> = runs
                .iter()
                .filter(|r| r.target == target && r.config == config)
                .filter_map(|r| r.ns_per_write.map(|v| (r.rep, v)))
                .collect();
            let mut v: Vec<f64> = ok.iter().map(|x| x.1).collect();
            let Some(ns) = super::report::stats(&mut v) else {
                continue;
            };
            let base = |rep: usize| {
                runs.iter()
                    .find(|r| r.target == target && r.config == "none" && r.rep == rep)
                    .and_then(|r| r.ns_per_write)
            };
            let d: Vec<f64> = ok
                .iter()
                .filter_map(|(rep, v)| base(*rep).map(|b| v - b))
                .collect();
            let p: Vec<f64> = ok
                .iter()
                .filter_map(|(rep, v)| base(*rep).map(|b| (v / b - 1.0) * 100.0))
                .collect();
            let nonzero = config != "none";
            out.push(HookCell {
                target,
                config,
                ns,
                delta_ns: super::report::median(d).filter(|_| nonzero),
                delta_pct: super::report::median(p).filter(|_| nonzero),
            });
        }
    }
    out
}

/// Median over repetitions of (`config` − `base`) on `target`, each pair from one
/// repetition: the cost of `config` over a floor measured beside it, not over one
/// measured minutes apart.
pub fn paired_delta(runs: &[HookRun], target: &str, config: &str, base: &str) -> Option<f64> {
    let ns = |c: &str, rep: usize| {
        runs.iter()
            .find(|r| r.target == target && r.config == c && r.rep == rep)
            .and_then(|r| r.ns_per_write)
    };
    super::report::median(
        runs.iter()
            .filter(|r| r.target == target && r.config == config)
            .filter_map(|r| Some(r.ns_per_write? - ns(base, r.rep)?))
            .collect(),
    )
}

/// Why a config has no measurement at all (every run of it failed or was skipped).
pub fn unmeasured(runs: &[HookRun], configs: &[&'static str]) -> Vec<(&'static str, String)> {
    configs
        .iter()
        .filter(|c| {
            runs.iter().any(|r| r.config == **c)
                && runs
                    .iter()
                    .filter(|r| r.config == **c)
                    .all(|r| r.ns_per_write.is_none())
        })
        .filter_map(|c| {
            let e = runs.iter().find(|r| r.config == *c)?.error.clone()?;
            Some((*c, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rep: usize, config: &'static str, ns: Option<f64>) -> HookRun {
        HookRun {
            rep,
            config,
            target: "unwatched",
            ns_per_write: ns,
            error: ns.is_none().then(|| "failed".into()),
        }
    }

    /// Deltas pair each config with `none` from its own repetition, so a slow repetition
    /// shifts both and cancels; a failed run is left out, not counted as zero.
    #[test]
    fn deltas_are_taken_within_each_repetition() {
        let runs = vec![
            run(1, "none", Some(1000.0)),
            run(1, "floor", Some(1150.0)),
            run(2, "none", Some(2000.0)),
            run(2, "floor", Some(2130.0)),
            run(3, "none", Some(1100.0)),
            run(3, "floor", None),
            run(3, "snapmon", Some(1500.0)),
        ];
        let c = cells(&runs);
        let none = c.iter().find(|c| c.config == "none").unwrap();
        assert_eq!(none.ns, (1000.0, 1100.0, 2000.0));
        assert_eq!(none.delta_ns, None);
        let floor = c.iter().find(|c| c.config == "floor").unwrap();
        assert_eq!(floor.ns, (1150.0, 1640.0, 2130.0));
        assert_eq!(floor.delta_ns, Some(140.0));
        assert!((floor.delta_pct.unwrap() - 10.75).abs() < 1e-9);
        let snap = c.iter().find(|c| c.config == "snapmon").unwrap();
        assert_eq!(snap.delta_ns, Some(400.0));
        assert!(c.iter().all(|c| c.target == "unwatched"));
    }
}
