//! `cargo xtask bench`: what the release agent costs on I/O it ignores and on trusted writes it
//! watches (fio, side by side with no agent and with auditd, interleaved repetitions), how many
//! relevant events/s it carries with zero loss, how fast an alert line appears, and its
//! footprint. Results go to docs/benchmarks.md and docs/benchmarks.json.

mod agent;
mod audit;
mod fio;
mod floor;
mod hook;
mod load;
mod mix;
mod report;
mod respond;
mod shutdown;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::{check, workspace};

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct Args {
    /// Interleaved repetitions of the overhead matrix (no agent, snapmon, auditd each time).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Seconds per fio run (after a 1 s ramp that is not counted).
    #[arg(long, default_value_t = 5)]
    pub runtime: u64,
    /// Directory for the fio targets, images and agent output. Default: a private tmpfs, so
    /// the virtual disk's noise does not drown the hooks' cost (the strictest setting, too).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Directory on a block-device filesystem for the on-disk overhead targets (O_DIRECT,
    /// as QEMU's cache=none writes images). Default: a fresh directory under /var/tmp.
    #[arg(long)]
    pub disk_dir: Option<PathBuf>,
    /// Skip the on-disk overhead targets.
    #[arg(long)]
    pub skip_disk: bool,
    /// Relevant-event rates (events/s) the capacity phase steps through; 0 = flat out.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,25000,50000,75000,100000,125000,150000,200000,0"
    )]
    pub rates: Vec<u64>,
    /// Rates (events/s) of the alert-latency phase, where every write raises an alert
    /// (rule dedupe off).
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,25000")]
    pub alert_rates: Vec<u64>,
    /// Writer processes in the capacity phase (one watched image each).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Seconds per capacity step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    #[arg(long)]
    pub skip_overhead: bool,
    #[arg(long)]
    pub skip_capacity: bool,
    #[arg(long)]
    pub skip_alert_latency: bool,
    /// Skip the hook-cost phase (tight pwrite loop under each hook layer).
    #[arg(long)]
    pub skip_hook: bool,
    /// Interleaved repetitions of the hook-cost phase.
    #[arg(long, default_value_t = 10)]
    pub hook_reps: usize,
    /// Timed 4 KiB pwrites per hook-cost run.
    #[arg(long, default_value_t = 300_000)]
    pub hook_writes: u64,
    /// Skip the VM-host syscall-mix phase (QEMU-like ppoll/read/ioctl/io_uring_enter
    /// traffic beside the writes, under each hook mode).
    #[arg(long)]
    pub skip_mix: bool,
    /// Interleaved repetitions of the syscall-mix phase.
    #[arg(long, default_value_t = 10)]
    pub mix_reps: usize,
    /// Timed iterations per syscall-mix run (15 syscalls each).
    #[arg(long, default_value_t = 40_000)]
    pub mix_iters: u64,
    /// Skip the circuit-breaker phase (syscall-to-signal latency of `--respond kill`).
    #[arg(long)]
    pub skip_respond: bool,
    /// Killed children timed in the circuit-breaker phase.
    #[arg(long, default_value_t = 1000)]
    pub respond_samples: usize,
    /// Skip the idle-shutdown phase (SIGINT to exit of an idle agent).
    #[arg(long)]
    pub skip_shutdown: bool,
    /// Idle agents stopped in the idle-shutdown phase.
    #[arg(long, default_value_t = 10)]
    pub shutdown_stops: usize,
    /// Run only this phase (the others as if skipped). The report then holds that phase
    /// alone: pass --out elsewhere than docs/ unless that is what is wanted.
    #[arg(long, value_enum)]
    pub only: Option<Phase>,
    /// Use this agent binary instead of building target/release/snapmon from the tree.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Commit the --agent binary was built from (for the report).
    #[arg(long)]
    pub agent_rev: Option<String>,
    /// Where benchmarks.md / benchmarks.json go.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: be one load-generator process (FILE RATE SECS OUT).
    #[arg(long, hide = true, num_args = 4)]
    #[serde(skip)]
    pub loadgen: Option<Vec<String>>,
    /// Internal: be one hook-cost write loop (FILE N).
    #[arg(long, hide = true, num_args = 2)]
    #[serde(skip)]
    pub hookloop: Option<Vec<String>>,
    /// Internal: be one syscall-mix loop (UNWATCHED WATCHED N).
    #[arg(long, hide = true, num_args = 3)]
    #[serde(skip)]
    pub mixloop: Option<Vec<String>>,
    /// Internal: be the circuit-breaker worker (IMAGE N).
    #[arg(long, hide = true, num_args = 2)]
    #[serde(skip)]
    pub respondloop: Option<Vec<String>>,
}

/// The phases, for `--only`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Overhead,
    Hook,
    /// The VM-host syscall mix.
    Mix,
    Respond,
    /// With its alert-latency steps (unless --skip-alert-latency).
    Capacity,
    Shutdown,
}

impl Args {
    /// `--only P`: every `--skip-*` but P's set.
    fn select(&mut self) {
        let Some(p) = self.only else { return };
        self.skip_overhead = p != Phase::Overhead;
        self.skip_hook = p != Phase::Hook;
        self.skip_mix = p != Phase::Mix;
        self.skip_respond = p != Phase::Respond;
        self.skip_capacity = p != Phase::Capacity;
        self.skip_shutdown = p != Phase::Shutdown;
    }
}

pub const CONFIGS: &[&str] = &["none", "snapmon", "auditd"];
/// The `-disk` targets are the same two files on a block-device filesystem.
pub const TARGETS: &[&str] = &["unwatched", "watched", "unwatched-disk", "watched-disk"];

#[derive(Debug, Clone, Serialize)]
pub struct OverheadRun {
    pub rep: usize,
    pub config: &'static str,
    pub job: &'static str,
    pub target: &'static str,
    pub fio: Option<fio::FioResult>,
    pub error: Option<String>,
    /// snapmon only: agent CPU during the run (and its drain), output counts, memory after.
    pub agent_cpu_pct: Option<f64>,
    pub agent_rss_kib: Option<u64>,
    pub records: Option<agent::Count>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub phase: String,
    pub wall_s: f64,
    pub reported_ms: Option<u64>,
}

/// One idle agent stopped with SIGINT.
#[derive(Debug, Clone, Serialize)]
pub struct Shutdown {
    /// SIGINT to the process gone.
    pub exit_s: f64,
    pub exit: String,
    /// The `stopped` record was found in its output.
    pub stopped_record: bool,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: report::Machine,
    pub args: Args,
    pub command: String,
    pub started: String,
    pub duration_s: f64,
    pub auditd_unavailable: Option<String>,
    pub auditd_note: String,
    /// Where the on-disk targets ran: "<fs type> on <device> (<dir>)".
    pub disk: Option<String>,
    pub overhead: Vec<OverheadRun>,
    /// Tight pwrite loop under each hook layer.
    pub hook: Vec<hook::HookRun>,
    /// The agent's programs that ran per write in the loop, with stats on (last rep).
    pub hook_programs: Vec<hook::ProgCost>,
    pub hook_error: Option<String>,
    /// The VM-host syscall mix under each hook mode (target "mix", ns per iteration).
    pub mix: Vec<hook::HookRun>,
    pub mix_error: Option<String>,
    /// Circuit breaker: untrusted tamperer's syscall to its SIGKILL.
    pub respond: Option<respond::Latency>,
    pub respond_error: Option<String>,
    pub stopped: Vec<serde_json::Value>,
    pub startup: Vec<Startup>,
    pub idle: Option<report::Idle>,
    /// SIGINT to exit of an idle agent, one per stop (`idle_shutdown`).
    pub shutdown: Vec<Shutdown>,
    pub shutdown_error: Option<String>,
    pub capacity: Vec<load::Step>,
    pub capacity_error: Option<String>,
    /// Every write alerting: latency to the alert line.
    pub alert_latency: Vec<load::Step>,
    pub alert_latency_error: Option<String>,
}

/// A tmpfs we mounted (and unmount when done).
struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a 9p-exported root (VM tests on this host) can keep it busy for a while.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn qemu_img(args: &[&str]) -> anyhow::Result<()> {
    check(
        Command::new("qemu-img")
            .args(args)
            .stdout(std::process::Stdio::null()),
    )
}

pub fn main(mut a: Args) -> anyhow::Result<()> {
    a.select();
    if let Some(lg) = &a.loadgen {
        return load::worker(lg);
    }
    if let Some(hl) = &a.hookloop {
        return hook::worker(hl);
    }
    if let Some(ml) = &a.mixloop {
        return mix::worker(ml);
    }
    if let Some(rl) = &a.respondloop {
        return respond::worker(rl);
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (the agent loads eBPF programs, auditctl adds rules)");
    }
    let t_all = Instant::now();
    // The shutdown phase alone needs only the agent (and fio's path for the policy): no
    // package installs for a 1-minute measurement.
    if a.only != Some(Phase::Shutdown) {
        crate::setup::setup()?;
    }
    sweep_stale();
    let bin = match &a.agent {
        Some(b) => b.clone(),
        None => {
            check(crate::cargo().args(["build", "--release", "-p", "snapmon"]))?;
            workspace().join("target/release/snapmon")
        }
    };
    let _mount;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let d = PathBuf::from(format!("/tmp/snapmon-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            check(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "size=16g", "snapmon-bench"])
                    .arg(&d),
            )?;
            _mount = Tmpfs(d.clone());
            d
        }
    };
    // Writers run from a private copy: a concurrent `cargo build` may replace our binary.
    let exe = dir.join("xtask-loadgen");
    std::fs::copy(std::env::current_exe()?, &exe).context("copying the load generator")?;
    let machine = report::machine(&bin, a.agent_rev.as_deref(), &dir);
    println!("bench: {}", machine.summary());
    let mut res = Results {
        machine,
        command: report::command(&a),
        args: a.clone(),
        started: report::now_rfc3339(),
        duration_s: 0.0,
        auditd_unavailable: None,
        auditd_note: String::new(),
        disk: None,
        overhead: Vec::new(),
        hook: Vec::new(),
        hook_programs: Vec::new(),
        hook_error: None,
        mix: Vec::new(),
        mix_error: None,
        respond: None,
        respond_error: None,
        stopped: Vec::new(),
        startup: Vec::new(),
        idle: None,
        shutdown: Vec::new(),
        shutdown_error: None,
        capacity: Vec::new(),
        capacity_error: None,
        alert_latency: Vec::new(),
        alert_latency_error: None,
    };
    let out_dir = a.out.clone().unwrap_or_else(|| workspace().join("docs"));
    std::fs::create_dir_all(&out_dir)?;
    let mut audit = audit::Audit::probe();
    res.auditd_note = if audit.was_running {
        "auditd was already running before the bench and was left running in every phase".into()
    } else {
        "auditd started for its phase only, stopped (and new tasks opted out with a never,task rule) outside it".into()
    };
    if !a.skip_overhead {
        audit.off();
        let r = overhead(&a, &bin, &dir, &mut audit, &mut res);
        audit.restore();
        r?;
    }
    res.auditd_unavailable = audit.unavailable.clone();
    if !a.skip_hook {
        if let Err(e) = hook_cost(&a, &bin, &dir, &exe, &mut res) {
            eprintln!("bench: hook-cost phase failed: {e:#}");
            res.hook_error = Some(format!("{e:#}"));
        }
    }
    if !a.skip_mix {
        if let Err(e) = syscall_mix(&a, &bin, &dir, &exe, &mut res) {
            eprintln!("bench: syscall-mix phase failed: {e:#}");
            res.mix_error = Some(format!("{e:#}"));
        }
    }
    if !a.skip_respond {
        match respond::phase(&bin, &dir, &exe, a.respond_samples) {
            Ok(l) => res.respond = Some(l),
            Err(e) => {
                eprintln!("bench: circuit-breaker phase failed: {e:#}");
                res.respond_error = Some(format!("{e:#}"));
            }
        }
    }
    if !a.skip_capacity {
        if let Err(e) = capacity(&a, &bin, &dir, &mut res) {
            eprintln!("bench: capacity phase failed: {e:#}");
            res.capacity_error = Some(format!("{e:#}"));
        }
        if !a.skip_alert_latency && !a.alert_rates.is_empty() {
            if let Err(e) = alert_latency(&a, &bin, &dir, &mut res) {
                eprintln!("bench: alert-latency phase failed: {e:#}");
                res.alert_latency_error = Some(format!("{e:#}"));
            }
        }
    }
    // Last: the kernel finishes detaching a stopped agent's hooks after it has exited,
    // which must not overlap a measured phase.
    if !a.skip_shutdown {
        match bench_policy(&dir).and_then(|p| shutdown::phase(&bin, &p, &dir, a.shutdown_stops)) {
            Ok(s) => res.shutdown = s,
            Err(e) => {
                eprintln!("bench: idle-shutdown phase failed: {e:#}");
                res.shutdown_error = Some(format!("{e:#}"));
            }
        }
    }
    res.duration_s = t_all.elapsed().as_secs_f64();
    res.machine.loadavg_end = report::loadavg();
    report::write(&res, &out_dir)?;
    println!(
        "bench: done in {:.0} s; wrote {}/benchmarks.{{md,json}}",
        res.duration_s,
        out_dir.display()
    );
    Ok(())
}

/// The embedded default policy with fio in the `qemu` actor group: fio stands in for the
/// VM's QEMU as the trusted writer of the watched image.
/// The bench policy with rule dedupe off: every untrusted header write is an alert.
fn alert_policy(dir: &Path) -> anyhow::Result<PathBuf> {
    let p = bench_policy(dir)?;
    let text = std::fs::read_to_string(&p)?;
    let anchor = "dedupe_seconds = 10";
    if !text.contains(anchor) {
        bail!("default policy has no `{anchor}` to turn dedupe off");
    }
    let q = dir.join("alert-policy.toml");
    std::fs::write(&q, text.replacen(anchor, "dedupe_seconds = 0", 1))?;
    Ok(q)
}

fn bench_policy(dir: &Path) -> anyhow::Result<PathBuf> {
    let fio = which("fio").context("fio not found")?;
    trusted_policy(&dir.join("bench-policy.toml"), &fio)
}

/// The embedded default policy, written to `p`, with `exe` in the `qemu` actor group.
fn trusted_policy(p: &Path, exe: &Path) -> anyhow::Result<PathBuf> {
    const DEFAULT: &str = include_str!("../../../snapmon/default-policy.toml");
    let anchor = "\"/usr/bin/qemu-img\",";
    if !DEFAULT.contains(anchor) {
        bail!("default policy has no qemu-img entry to add a trusted writer next to");
    }
    let text = DEFAULT.replacen(
        anchor,
        &format!("{anchor}\n  {:?},", exe.display().to_string()),
        1,
    );
    std::fs::write(p, text)?;
    Ok(p.to_path_buf())
}

/// The tight-loop phases' files (tmpfs) and policy, with the loop's executable trusted.
fn with_setup(
    bin: &Path,
    dir: &Path,
    loopgen: &Path,
    run: impl FnOnce(&hook::Setup) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let f = files(dir)?;
    let policy = trusted_policy(&dir.join("hook-policy.toml"), loopgen)?;
    run(&hook::Setup {
        bin,
        policy: &policy,
        store: &f.store,
        unwatched: &f.plain,
        watched: &f.image,
        loopgen,
        dir,
    })
}

/// The hook-cost phase.
fn hook_cost(
    a: &Args,
    bin: &Path,
    dir: &Path,
    loopgen: &Path,
    res: &mut Results,
) -> anyhow::Result<()> {
    with_setup(bin, dir, loopgen, |s| {
        hook::phase(
            s,
            a.hook_reps,
            a.hook_writes,
            &mut res.hook,
            &mut res.hook_programs,
        )
    })
}

/// The syscall-mix phase, on the hook-cost phase's files.
fn syscall_mix(
    a: &Args,
    bin: &Path,
    dir: &Path,
    loopgen: &Path,
    res: &mut Results,
) -> anyhow::Result<()> {
    with_setup(bin, dir, loopgen, |s| {
        mix::phase(s, a.mix_reps, a.mix_iters, &mut res.mix)
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn overhead(
    a: &Args,
    bin: &Path,
    dir: &Path,
    audit: &mut audit::Audit,
    res: &mut Results,
) -> anyhow::Result<()> {
    let tmp = files(dir)?;
    let disk = if a.skip_disk {
        None
    } else {
        let d = disk_dir(a)?;
        res.disk = Some(format!(
            "{} on {} ({})",
            report::fs_type(&d.0),
            report::fs_source(&d.0),
            d.0.display()
        ));
        println!(
            "bench: on-disk targets in {}",
            res.disk.as_deref().unwrap_or("")
        );
        Some((files(&d.0)?, d))
    };
    let target_path = |t: &str| -> Option<&PathBuf> {
        match t {
            "watched" => Some(&tmp.image),
            "unwatched" => Some(&tmp.plain),
            "watched-disk" => disk.as_ref().map(|d| &d.0.image),
            "unwatched-disk" => disk.as_ref().map(|d| &d.0.plain),
            _ => None,
        }
    };
    let stores: Vec<&Path> = std::iter::once(tmp.store.as_path())
        .chain(disk.as_ref().map(|d| d.0.store.as_path()))
        .collect();
    let audited: Vec<&Path> = TARGETS
        .iter()
        .filter_map(|t| target_path(t))
        .map(|p| p.as_path())
        .collect();
    let agent_out = dir.join("overhead.jsonl");
    let fio_out = dir.join("fio.json");
    for rep in 1..=a.reps {
        for &config in CONFIGS {
            println!("bench: overhead rep {rep}/{} config {config}", a.reps);
            let mut ag = None;
            let mut skip = None;
            match config {
                "snapmon" => {
                    let ag_ = agent::Agent::start(
                        bin,
                        &bench_policy(dir)?,
                        &stores,
                        &agent_out,
                        &dir.join("agent.log"),
                    )?;
                    res.startup.push(Startup {
                        phase: format!("overhead rep {rep}"),
                        wall_s: ag_.startup.as_secs_f64(),
                        reported_ms: ag_.startup_ms_reported,
                    });
                    ag = Some(ag_);
                }
                "auditd" => {
                    if let Err(e) = audit.on(&audited) {
                        skip = Some(format!("{e:#}"));
                    }
                }
                _ => {}
            }
            for job in fio::JOBS {
                for &target in TARGETS {
                    let Some(file) = target_path(target) else {
                        continue;
                    };
                    if target.ends_with("-disk") && !job.on_disk {
                        continue;
                    }
                    let mut run = OverheadRun {
                        rep,
                        config,
                        job: job.name,
                        target,
                        fio: None,
                        error: skip.clone(),
                        agent_cpu_pct: None,
                        agent_rss_kib: None,
                        records: None,
                    };
                    if skip.is_none() {
                        let from = ag.as_ref().map(|g: &agent::Agent| g.out_len()).unwrap_or(0);
                        let s0 = ag.as_ref().map(|g| g.sample());
                        let t0 = Instant::now();
                        match fio::run(job, file, a.runtime, &fio_out) {
                            Ok(r) => run.fio = Some(r),
                            Err(e) => run.error = Some(format!("{e:#}")),
                        }
                        if let Some(g) = ag.as_mut() {
                            g.quiesce(Duration::from_millis(1500));
                            let s1 = g.sample();
                            let s0 = s0.unwrap_or_default();
                            run.agent_cpu_pct =
                                Some((s1.cpu_s - s0.cpu_s) / t0.elapsed().as_secs_f64() * 100.0);
                            run.agent_rss_kib = Some(s1.rss_kib);
                            run.records = agent::count(&g.out, from).ok();
                            if !g.alive() {
                                bail!("the agent died during {} on {target}", job.name);
                            }
                            // The agent appends: emptying the file keeps tmpfs small.
                            std::fs::OpenOptions::new()
                                .write(true)
                                .open(&g.out)?
                                .set_len(0)?;
                        } else {
                            // Same pause as the agent's drain wait, so every config gets it.
                            std::thread::sleep(Duration::from_millis(1500));
                        }
                        if let Some(f) = &run.fio {
                            println!(
                                "bench:   {:<22} {:<9} {:>9.1} MiB/s  p99 {:>8.1} µs{}",
                                job.name,
                                target,
                                f.bw_bytes / 1048576.0,
                                f.clat_p99_ns / 1e3,
                                run.records
                                    .as_ref()
                                    .map(|c| format!(
                                        "  agent {:.0}% cpu, {} events, {} lost",
                                        run.agent_cpu_pct.unwrap_or(0.0),
                                        c.events,
                                        c.lost_kernel
                                    ))
                                    .unwrap_or_default()
                            );
                        }
                    }
                    res.overhead.push(run);
                }
            }
            if let Some(g) = ag {
                let (detail, st, took) = g.stop()?;
                res.stopped.push(serde_json::json!({"phase": format!("overhead rep {rep}"), "exit": st, "exit_s": took.as_secs_f64(), "detail": detail}));
            }
            if config == "auditd" {
                audit.off();
            }
        }
    }
    Ok(())
}

/// One watched qcow2 per writer process in `store` (kept between runs).
/// The overhead phase's files in one directory: a watched store with a preallocated qcow2,
/// and a plain file of the same size that nothing watches.
struct Files {
    store: PathBuf,
    image: PathBuf,
    plain: PathBuf,
}

fn files(dir: &Path) -> anyhow::Result<Files> {
    let plain_dir = dir.join("unwatched");
    let store = dir.join("store");
    std::fs::create_dir_all(&plain_dir)?;
    std::fs::create_dir_all(&store)?;
    let plain = plain_dir.join("data.raw");
    let image = store.join("vm-bench.qcow2");
    let total = fio::OFFSET + fio::SIZE;
    // Both fully allocated, same size: only the watch differs.
    if !image.exists() {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=full",
            &image.to_string_lossy(),
            &total.to_string(),
        ])?;
    }
    let len = std::fs::metadata(&image)?.len();
    if !plain.exists() {
        let f = std::fs::File::create(&plain)?;
        let chunk = vec![0u8; 1 << 20];
        use std::io::Write as _;
        let mut w = std::io::BufWriter::new(f);
        for _ in 0..len.div_ceil(1 << 20) {
            w.write_all(&chunk)?;
        }
        w.into_inner()?.sync_all()?;
    }
    Ok(Files {
        store,
        image,
        plain,
    })
}

/// Remove what an interrupted bench left (its tmpfs mount, the on-disk files): a signal
/// ends it without running the guards' `Drop`.
fn sweep_stale() {
    for (parent, prefix) in [
        ("/tmp", "snapmon-bench-"),
        ("/var/tmp", "snapmon-bench-disk-"),
    ] {
        let Ok(rd) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let p = e.path();
            if report::fs_type(&p) == "tmpfs" && report::fs_source(&p) == "snapmon-bench" {
                let _ = Command::new("umount").arg("-l").arg(&p).status();
            }
            match std::fs::remove_dir_all(&p) {
                Ok(()) => println!(
                    "bench: removed {} (left by an interrupted run)",
                    p.display()
                ),
                Err(e) => eprintln!("bench: cannot remove {}: {e}", p.display()),
            }
        }
    }
}

/// A directory for the on-disk targets (removed when done unless the user named it).
struct DiskDir(PathBuf, bool);
impl Drop for DiskDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn disk_dir(a: &Args) -> anyhow::Result<DiskDir> {
    let (d, ours) = match &a.disk_dir {
        Some(d) => (d.clone(), false),
        None => (
            PathBuf::from(format!(
                "/var/tmp/snapmon-bench-disk-{}",
                std::process::id()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let d = DiskDir(d, ours);
    let fs = report::fs_type(&d.0);
    if fs == "tmpfs" || fs == "ramfs" {
        bail!(
            "--disk-dir {} is on {fs}: the on-disk targets need a block-device filesystem",
            d.0.display()
        );
    }
    Ok(d)
}

fn writer_images(store: &Path, writers: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(store)?;
    let mut images = Vec::new();
    for i in 0..writers.max(1) {
        let p = store.join(format!("vm{i}.qcow2"));
        if !p.exists() {
            qemu_img(&["create", "-q", "-f", "qcow2", &p.to_string_lossy(), "64M"])?;
        }
        images.push(p);
    }
    Ok(images)
}

/// Keep a finished load step; stop if the agent died; empty the output for the next step.
fn end_step(
    steps: &mut Vec<load::Step>,
    st: load::Step,
    out: &Path,
    rate: u64,
) -> anyhow::Result<()> {
    let alive = st.agent_alive;
    steps.push(st);
    if !alive {
        bail!("the agent died at {rate}/s");
    }
    // Keep tmpfs small between steps; the agent appends.
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)?
        .set_len(0)?;
    Ok(())
}

fn capacity(a: &Args, bin: &Path, dir: &Path, res: &mut Results) -> anyhow::Result<()> {
    let store = dir.join("cap-store");
    let images = writer_images(&store, a.writers)?;
    let out = dir.join("capacity.jsonl");
    let mut ag = agent::Agent::start(
        bin,
        &bench_policy(dir)?,
        &[&store],
        &out,
        &dir.join("agent-cap.log"),
    )?;
    res.startup.push(Startup {
        phase: "capacity".into(),
        wall_s: ag.startup.as_secs_f64(),
        reported_ms: ag.startup_ms_reported,
    });
    // Let start-up work (preload, first ticks) settle before calling it idle.
    std::thread::sleep(Duration::from_secs(2));
    let (s, cpu) = load::idle(&ag, 10.0);
    let idle = report::Idle {
        rss_kib: s.rss_kib,
        hwm_kib: s.hwm_kib,
        cpu_pct: cpu,
        parts: agent::mem_parts_of(ag.pid, bin),
    };
    println!(
        "bench: idle RSS {:.1} MiB{} (peak {:.1}), CPU {cpu:.2}%",
        s.rss_kib as f64 / 1024.0,
        idle.parts_text(),
        s.hwm_kib as f64 / 1024.0
    );
    res.idle = Some(idle);
    let work = dir.join("loadgen");
    std::fs::create_dir_all(&work)?;
    for &rate in &a.rates {
        let st = load::step(
            &mut ag,
            &images,
            rate,
            a.step_secs,
            &work,
            &dir.join("xtask-loadgen"),
        )
        .with_context(|| format!("capacity step at {rate}/s"))?;
        println!(
            "bench: capacity {:>7}/s → {:>9.0}/s written, {} delivered, lost {} (kernel) {} (decoder) {} (sink), agent {:.0}% cpu, {:.2} cpu-s/100k, RSS {:.1} MiB{}",
            if rate == 0 { "max".into() } else { rate.to_string() },
            st.achieved_rate,
            st.delivered,
            st.lost_kernel,
            st.lost_decoder,
            st.lost_sink,
            st.agent_cpu_pct,
            st.cpu_s_per_100k.unwrap_or(f64::NAN),
            st.rss_kib_after as f64 / 1024.0,
            st.latency
                .as_ref()
                .map(|l| format!(", latency p50 {:.2} p99 {:.2} max {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms))
                .unwrap_or_default()
        );
        end_step(&mut res.capacity, st, &out, rate)?;
    }
    let (detail, st, took) = ag.stop()?;
    res.stopped.push(
        serde_json::json!({"phase": "capacity", "exit": st, "exit_s": took.as_secs_f64(), "detail": detail}),
    );
    Ok(())
}

/// Alert latency: the capacity writers again, with an agent whose rules alert on every
/// write (dedupe off), so each write's alert line can be timed.
fn alert_latency(a: &Args, bin: &Path, dir: &Path, res: &mut Results) -> anyhow::Result<()> {
    let store = dir.join("alert-store");
    let images = writer_images(&store, a.writers)?;
    let out = dir.join("alerts.jsonl");
    let mut ag = agent::Agent::start(
        bin,
        &alert_policy(dir)?,
        &[&store],
        &out,
        &dir.join("agent-alert.log"),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let work = dir.join("loadgen-alert");
    std::fs::create_dir_all(&work)?;
    for &rate in &a.alert_rates {
        let st = load::step(
            &mut ag,
            &images,
            rate,
            a.step_secs,
            &work,
            &dir.join("xtask-loadgen"),
        )
        .with_context(|| format!("alert-latency step at {rate}/s"))?;
        println!(
            "bench: alerts {:>6}/s → {} alerts for {} writes{}",
            rate,
            st.alerts,
            st.writes,
            st.latency
                .as_ref()
                .map(|l| format!(
                    ", latency to the {} p50 {:.2} p99 {:.2} max {:.2} ms",
                    l.to, l.p50_ms, l.p99_ms, l.max_ms
                ))
                .unwrap_or_default()
        );
        end_step(&mut res.alert_latency, st, &out, rate)?;
    }
    let (detail, st, took) = ag.stop()?;
    res.stopped.push(
        serde_json::json!({"phase": "alert_latency", "exit": st, "exit_s": took.as_secs_f64(), "detail": detail}),
    );
    Ok(())
}
