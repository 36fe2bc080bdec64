//! Command line: parse arguments and dispatch to the subcommands.

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::kernel::loader::SyscallHook;

use crate::{
    agent::{self, RunOptions},
    config::{Policy, DEFAULT_POLICY},
    record::Severity,
    sink::{config::SinkConfig, Format, SinkSet},
};

/// Exit status of every subcommand.
pub const EXIT_CODES: &str =
    "Exit status: 0 ok; 1 findings (inspect, verify, verify-log, policy check: \
something was found); 2 usage error or an input that could not be read (run: it refused \
to start).";

/// A check ran and found something: exit 1, not 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Findings(pub String);

/// An error chain as one sentence: each cause once (a typed error that already prints its
/// source, such as an OS error, is not followed by that source again).
pub fn one_sentence(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if t.is_empty() || s.contains(&t) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&t);
    }
    s
}

#[derive(Parser)]
#[command(
    name = "snapmon",
    version = crate::build_info::LONG,
    about = "Catch snapshot tampering on virtualization and storage hosts, live, with eBPF",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the agent (root): watch snapshot stores and report what touches them.
    Run(RunArgs),
    /// Policy file tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Offline integrity report for qcow2 images. Exit 0: no findings at --fail-on or
    /// above; 1: findings; 2: an image could not be read.
    Inspect {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Lowest finding severity that makes the exit status 1.
        #[arg(long, default_value = "medium", value_parser = parse_severity)]
        fail_on: Severity,
    },
    /// Explain what this kernel allows: hooks live, write paths covered, gaps. Needs root
    /// (it loads and attaches the probes); as another user it says so and exits 2.
    Doctor {
        #[arg(long)]
        json: bool,
        /// Probe this syscall-hook mode (`auto`, `tracepoint` or `raw`; default:
        /// SNAPMON_SYSCALL_HOOK, else `auto`), as `run --syscall-hook` would load it.
        #[arg(long, value_name = "MODE", value_parser = parse_syscall_hook)]
        syscall_hook: Option<SyscallHook>,
    },
    /// Record SHA-256 and parsed header state of every image under DIRs. Exit 2 when a DIR
    /// does not exist.
    Baseline {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare images against a baseline file. Exit 0: unchanged; 1: anything changed,
    /// vanished or appeared; 2: the baseline could not be read.
    Verify { baseline: PathBuf },
    /// Check the hash chain of snapmon log files (a file and its rotations, any order).
    /// Exit 0: intact; 1: tampered (a record removed, altered or reordered, a file swapped);
    /// 2: a file could not be read; 3: truncated, not tampered (a cut tail, a run that was
    /// killed, records lost to a full disk).
    VerifyLog {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// HMAC key file the sink was configured with: checkpoints must verify under it.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The newest file is still being written (need not end with `log_closed`).
        #[arg(long)]
        live: bool,
    },
    /// Run the rules offline over a recording (the agent's own `--format json` output) and
    /// print the alerts. Alert, state and metric lines in the input are skipped.
    Replay(ReplayArgs),
    /// Undo hidden snapshots: write a copy of IMAGE whose header points at the snapshot
    /// table an attacker hid again (found in the image, or in the agent's log and
    /// evidence), after checking with the refcounts that nothing it needs was reused.
    /// Exit 0: restored; 1: nothing hidden, or not safe to restore; 2: usage, read or
    /// lock error.
    Recover {
        image: PathBuf,
        /// Where the restored copy goes (must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The agent's log (`--format json`, ECS; rotations too, oldest first): the header
        /// states it recorded and the evidence it lists. Repeatable.
        #[arg(long = "from-log", value_name = "LOG")]
        from_log: Vec<PathBuf>,
        /// Restore the image itself (under QEMU's write lock), after copying it to --backup.
        #[arg(long, requires = "backup")]
        in_place: bool,
        /// Where --in-place keeps the image as it was (must not exist).
        #[arg(long)]
        backup: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Record: run the agent with `--format json --output FILE` (a replayable log).
    Record {
        /// JSON Lines file to append to.
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Packaging: write shell completions and man pages under DIR (`cargo xtask package`).
    #[command(hide = true)]
    DistAssets { dir: PathBuf },
}

#[derive(Args)]
pub struct ReplayArgs {
    /// JSON Lines recording (`snapmon record FILE` or `run --format json`); `-` for stdin.
    pub file: PathBuf,
    /// Policy file (TOML). Without it the embedded default policy is used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Output format (default: tail on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Only alerts at or above this severity.
    #[arg(long, value_parser = parse_severity)]
    pub min_severity: Option<Severity>,
    /// Only alerts of these rule ids; repeatable.
    #[arg(long)]
    pub rule: Vec<String>,
    /// Judge maintenance windows in UTC instead of this host's local time.
    #[arg(long)]
    pub utc: bool,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file without side effects. Exit 0: valid; 1: invalid; 2: unreadable.
    Check { file: PathBuf },
    /// Print the embedded default policy.
    Default,
}

#[derive(Args)]
pub struct RunArgs {
    /// Policy file (TOML). Without it the embedded default policy is used. Refused (at start
    /// and on SIGHUP) when a user other than root could change it: the file, or a directory
    /// on its path, not owned by root or writable by group/others (sticky directories such
    /// as /tmp excepted).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Use a --config file that a user other than root could change (with a warning). Such a
    /// user could add exceptions that silence every rule.
    #[arg(long)]
    pub insecure_config: bool,
    /// Extra path (file, directory or device) to watch; repeatable.
    #[arg(long = "watch", short = 'w')]
    pub watch: Vec<PathBuf>,
    /// Output format (default: tail on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Write records to this file instead of stdout (appends).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Only alerts at or above this severity (info, low, medium, high, critical).
    #[arg(long, value_parser = parse_severity)]
    pub min_severity: Option<Severity>,
    /// Only alerts, no plain events.
    #[arg(long)]
    pub alerts_only: bool,
    /// Only alerts of these rule ids; repeatable.
    #[arg(long)]
    pub rule: Vec<String>,
    /// Only records whose file path contains this text; repeatable.
    #[arg(long)]
    pub path: Vec<String>,
    /// Also emit fork/exec/exit records as events.
    #[arg(long)]
    pub process_events: bool,
    /// Seconds between loss/status checks (and per-hook counter refreshes).
    #[arg(long, default_value_t = 1.0)]
    pub status_interval: f64,
    /// Seconds between `stats` records (per-hook runs, pipeline and sink counters); 0: only
    /// in the `stopped` record.
    #[arg(long, default_value_t = 60.0)]
    pub stats_interval: f64,
    /// Turn on the kernel's BPF run statistics (per-hook run counts and run time). Off by
    /// default: while on, every run of every BPF program on the host pays two clock reads
    /// (`cargo xtask bench` measures it: `snapmon+stats` in the hook-cost phase).
    #[arg(long)]
    pub hook_stats: bool,
    /// Do not attach the 32-bit syscall hook (`raw_syscalls/sys_enter`, used only where fentry
    /// is refused). It runs on every syscall of the host; without it 32-bit programs' writes
    /// and renames go unseen there (`snapmon doctor` lists the gap). Harmless where the kernel
    /// has no ia32 emulation.
    #[arg(long)]
    pub no_compat_syscalls: bool,
    /// How the syscall entry hooks run: `tracepoint` (one `syscalls/sys_enter_*` program per
    /// hooked syscall), `raw` (one `tp_btf/sys_enter` program for every syscall, dispatching
    /// by number: cheaper per write, dearer on every other syscall; Linux 6.2+) or `auto`
    /// (raw where it loads and no VFS write hook attaches, else tracepoint). Default:
    /// SNAPMON_SYSCALL_HOOK, else `auto`. `started` and `snapmon doctor` say which runs.
    #[arg(long, value_name = "MODE", value_parser = parse_syscall_hook)]
    pub syscall_hook: Option<SyscallHook>,
    /// Deny tampering with --protect stores in the kernel (BPF LSM). Without BPF LSM the agent
    /// refuses to start, unless `--enforce=best-effort` (then it only detects).
    #[arg(long, num_args = 0..=1, default_missing_value = "on", value_parser = ["on", "best-effort"])]
    pub enforce: Option<String>,
    /// A snapshot store (directory or file) to protect; repeatable.
    #[arg(long = "protect", value_name = "PATH")]
    pub protect: Vec<PathBuf>,
    /// A store to protect in monitor mode only (would-be denials are reported); repeatable.
    #[arg(long = "monitor", value_name = "PATH")]
    pub monitor: Vec<PathBuf>,
    /// An extra trusted executable (qemu, libvirt and lvm tools are trusted by default).
    #[arg(long = "trust", value_name = "EXE")]
    pub trust: Vec<PathBuf>,
    /// Operations denied to untrusted executables (comma list: all, write, open_write,
    /// truncate, unlink, rename, link, mmap_write, ioctl).
    #[arg(long, default_value = "all", value_parser = crate::enforce::parse_ops)]
    pub deny: u32,
    /// Report what would be denied, deny nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Protected stores alert (SM-E002) but are not denied.
    #[arg(long)]
    pub monitor_only: bool,
    /// Circuit breaker, on any kernel: signal an untrusted process that tampers with a
    /// protected image (the policy's `[respond] stores`, --protect, or every watched store),
    /// in the same BPF program run: off, stop (SIGSTOP), kill (SIGKILL), freeze (SIGSTOP,
    /// then its cgroup is frozen). --dry-run reports only (SM-E004).
    #[arg(long, value_name = "MODE", value_parser = crate::respond::Mode::parse)]
    pub respond: Option<crate::respond::Mode>,
    /// Where evidence is saved when a high or critical rule fires on an image (default:
    /// the policy's `[evidence] dir`, /var/lib/snapmon/evidence).
    #[arg(long, value_name = "DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// Keep the LSM programs attached (pinned in /sys/fs/bpf/snapmon) if the agent exits.
    #[arg(long)]
    pub keep_enforcing: bool,
    /// Extra output, repeatable: `TYPE[:ADDRESS][,key=value…]`, e.g.
    /// `file:/var/log/snapmon.jsonl,min_severity=high,rotate_size=100M`,
    /// `tcp:127.0.0.1:9000,spill_dir=/var/lib/snapmon/spill`, `syslog,transport=unix`.
    /// With --sink, stdout is used only when a `stdout` sink is listed.
    #[arg(long = "sink", value_name = "SPEC", value_parser = parse_sink)]
    pub sinks: Vec<SinkConfig>,
    /// JSON schema for json-format outputs: ecs (default) or ocsf (OCSF 1.1).
    #[arg(long, value_parser = ["ecs", "ocsf"])]
    pub schema: Option<String>,
    /// Serve Prometheus metrics on this local address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

fn parse_sink(s: &str) -> Result<SinkConfig, String> {
    SinkConfig::parse_spec(s).map_err(|e| e.to_string())
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    Severity::parse(s)
        .ok_or_else(|| format!("`{s}` is not one of info, low, medium, high, critical"))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run(a) => run_agent(a),
        Cmd::Policy(PolicyCmd::Check { file }) => policy_check(&file),
        Cmd::Replay(r) => replay(r),
        Cmd::Record { file, mut run } => {
            // A recording is what `replay` reads: ECS JSON in FILE. Options that would make it
            // something else are refused, not ignored.
            if let Some(f) = run.format.filter(|f| *f != Format::Json) {
                anyhow::bail!(
                    "record writes JSON that replay reads; --format {} does not apply (use `run --format {}`)",
                    format_name(f),
                    format_name(f)
                );
            }
            if run.output.is_some() {
                anyhow::bail!("record writes to its FILE argument; --output does not apply");
            }
            if run.schema.as_deref() == Some("ocsf") {
                anyhow::bail!(
                    "replay reads ECS recordings; --schema ocsf does not apply to record"
                );
            }
            run.format = Some(Format::Json);
            run.output = Some(file);
            run_agent(run)
        }
        Cmd::Policy(PolicyCmd::Default) => {
            print!("{DEFAULT_POLICY}");
            Ok(())
        }
        Cmd::Inspect {
            images,
            json,
            fail_on,
        } => crate::offline::inspect(&images, json, fail_on),
        Cmd::Doctor { json, syscall_hook } => {
            let mode = match syscall_hook {
                Some(m) => m,
                None => SyscallHook::from_env()?,
            };
            crate::doctor::run(json, mode)
        }
        Cmd::DistAssets { dir } => crate::dist::generate(&Cli::command(), &dir).map(|_| ()),
        Cmd::Baseline { dirs, out } => crate::offline::baseline(&dirs, &out),
        Cmd::Verify { baseline } => crate::offline::verify(&baseline),
        Cmd::VerifyLog { files, key, live } => {
            let code = crate::sink::chain::verify_cmd(&files, key.as_deref(), live);
            // The evidence files the records list are part of what the chain proves.
            let (n, problems) = crate::evidence::verify_logs(&files);
            for p in &problems {
                println!("{p}");
            }
            if n > 0 && problems.is_empty() {
                println!("evidence: {n} file(s) match their logged SHA-256");
            }
            std::process::exit(if code == 0 && !problems.is_empty() {
                1
            } else {
                code
            })
        }
        Cmd::Recover {
            image,
            out,
            from_log,
            in_place,
            backup,
            json,
        } => {
            let req = crate::recover::Request {
                image: &image,
                out: out.as_deref(),
                in_place,
                backup: backup.as_deref(),
                logs: &from_log,
            };
            match crate::recover::recover(&req) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        print!("{r}");
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("snapmon: {e}");
                    std::process::exit(e.exit_code())
                }
            }
        }
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Json => "json",
        Format::Tail => "tail",
        Format::Ocsf => "ocsf",
    }
}

/// Options that only shape the stdout/`--output` sink do nothing when `--sink` alone is
/// given: refuse them rather than ignore them.
fn check_run_args(a: &RunArgs) -> anyhow::Result<()> {
    let classic = a.output.is_some() || a.sinks.is_empty();
    if !classic {
        let given: Vec<&str> = [
            (a.format.is_some(), "--format"),
            (a.min_severity.is_some(), "--min-severity"),
            (a.alerts_only, "--alerts-only"),
            (!a.rule.is_empty(), "--rule"),
            (!a.path.is_empty(), "--path"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if !given.is_empty() {
            anyhow::bail!(
                "{} shape the stdout or --output sink, which --sink alone does not use; set them in the --sink spec (format=, min_severity=, alerts_only=, rule=, path_contains=) or add --output",
                given.join(", ")
            );
        }
    }
    if a.schema.as_deref() == Some("ocsf") && a.format == Some(Format::Tail) && a.sinks.is_empty() {
        anyhow::bail!("--schema ocsf applies to JSON outputs; --format tail has none");
    }
    Ok(())
}

/// `--metrics` on anything but loopback serves unauthenticated counters to the network:
/// allowed, but said loudly (stderr and the `started` record).
fn metrics_exposure(addr: &str) -> Option<String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!("--metrics {addr} is reachable beyond this host: the endpoint has no authentication; bind it to 127.0.0.1 or put it behind a proxy")
    })
}

fn run_agent(a: RunArgs) -> anyhow::Result<()> {
    check_run_args(&a)?;
    if let Some(w) = a.metrics.as_deref().and_then(metrics_exposure) {
        eprintln!("snapmon: warning: {w}");
        crate::state::add_start_warning(w);
    }
    let mut policy = match &a.config {
        Some(p) => {
            let (policy, untrusted) = Policy::load_trusted(p, a.insecure_config)?;
            if let Some(why) = untrusted {
                let w = format!(
                    "--insecure-config: using {} although {}",
                    p.display(),
                    why.what
                );
                eprintln!("snapmon: warning: {w}");
                crate::state::add_start_warning(w);
            }
            policy
        }
        None => Policy::embedded(),
    };
    if let Some(d) = &a.evidence_dir {
        anyhow::ensure!(
            d.is_absolute(),
            "--evidence-dir {} must be absolute",
            d.display()
        );
        policy.evidence.dir = d.clone();
        policy.evidence.enabled = true;
    }
    if a.process_events {
        policy.agent.process_events = true;
    }
    let mut sinks = sink_configs(&a);
    sinks.extend(policy.sinks.iter().cloned());
    let set = SinkSet::start(&sinks, crate::sink::hostname())?;
    if let Some(addr) = &a.metrics {
        crate::metrics::serve(addr, set.registry().clone())
            .with_context(|| format!("--metrics {addr}"))?;
    }
    let opts = RunOptions {
        policy,
        policy_path: a.config,
        insecure_config: a.insecure_config,
        extra_watch: a.watch,
        status_interval: Duration::from_secs_f64(a.status_interval.clamp(0.05, 3600.0)),
        stats_interval: (a.stats_interval > 0.0)
            .then(|| Duration::from_secs_f64(a.stats_interval.clamp(0.05, 86_400.0))),
        hook_stats: a.hook_stats,
        compat_syscalls: !a.no_compat_syscalls,
        syscall_hook: match a.syscall_hook {
            Some(m) => m,
            None => SyscallHook::from_env()?,
        },
        enforce: crate::enforce::Options {
            mode: match a.enforce.as_deref() {
                None => crate::enforce::Mode::Off,
                Some("best-effort") => crate::enforce::Mode::BestEffort,
                Some(_) => crate::enforce::Mode::On,
            },
            dry_run: a.dry_run,
            monitor_only: a.monitor_only,
            protect: a.protect,
            monitor: a.monitor,
            trust: a.trust,
            deny: a.deny,
            keep_enforcing: a.keep_enforcing,
        },
        respond: a.respond,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent::run(opts, set))
}

/// The outputs: `--sink` specs, plus the classic one (`--output` file or stdout, with the
/// global filters) unless `--sink` alone was given.
fn sink_configs(a: &RunArgs) -> Vec<SinkConfig> {
    let mut out = a.sinks.clone();
    if a.output.is_some() || out.is_empty() {
        let o = crate::sink::config::SinkOptions {
            format: a.format,
            path: a.output.clone(),
            min_severity: a.min_severity,
            alerts_only: a.alerts_only,
            rules: a.rule.clone(),
            path_contains: a.path.clone(),
            ..Default::default()
        };
        out.insert(
            0,
            if a.output.is_some() {
                SinkConfig::File(o)
            } else {
                SinkConfig::Stdout(o)
            },
        );
    }
    for c in &mut out {
        let stdout = matches!(c, SinkConfig::Stdout(_));
        let o = c.options_mut();
        if stdout && o.format.is_none() {
            o.format = Some(if std::io::stdout().is_terminal() {
                Format::Tail
            } else {
                Format::Json
            });
        }
        // Only JSON outputs change schema; tail stays human.
        let json = o.format.unwrap_or(Format::Json) == Format::Json;
        if a.schema.as_deref() == Some("ocsf") && json {
            o.format = Some(Format::Ocsf);
        }
    }
    out
}

/// Validate a policy (no side effects: it only reads the files it names) and say what the
/// rules will trust on this host.
fn policy_check(file: &std::path::Path) -> anyhow::Result<()> {
    use crate::rules::{policy, Engine};
    if let Err(e) = std::fs::metadata(file) {
        anyhow::bail!("cannot read {}: {e}", file.display());
    }
    let p = Policy::load(file).map_err(|e| Findings(e.to_string()))?;
    let e = Engine::build(&p, &policy::HostResolver, Box::new(policy::HostLocalTime))
        .map_err(|m| Findings(format!("{}: {m}", file.display())))?;
    println!(
        "{}: ok ({} stores, {} actor groups, {} exceptions, {} maintenance windows)",
        file.display(),
        p.stores.len(),
        p.actors.len(),
        p.exceptions.len(),
        p.windows.len()
    );
    for d in crate::rules::registry::RULES {
        let on = e.enabled_rules().contains(&d.id);
        println!(
            "{} {:<8} {:<3} {} — {}",
            d.id,
            d.severity.as_str(),
            if on { "on" } else { "off" },
            d.name,
            d.summary
        );
    }
    for w in &e.warnings {
        println!("warning: {w}");
    }
    // A warning, not a finding: the file checked is often not the one deployed (a checkout,
    // a ConfigMap's source); the agent itself refuses it.
    if let Ok(Some(why)) = crate::config::untrusted(file) {
        println!(
            "warning: `snapmon run --config` refuses this file: {} (fix: {}, or run with --insecure-config)",
            why.what, why.fix
        );
    }
    let r = &p.respond;
    if r.mode != crate::respond::Mode::Off {
        let sel = crate::respond::parse_rules(&r.rules).map_err(anyhow::Error::msg)?;
        println!(
            "respond: {}{} on {}; kernel: {}; agent: {}",
            r.mode.as_str(),
            if r.dry_run { " (dry-run)" } else { "" },
            if r.stores.is_empty() && r.monitor.is_empty() {
                "every watched store".to_string()
            } else {
                r.stores
                    .iter()
                    .map(|s| s.display().to_string())
                    .chain(
                        r.monitor
                            .iter()
                            .map(|s| format!("{} (monitor)", s.display())),
                    )
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            snapmon_common::respond::NAMES
                .iter()
                .filter(|(b, _)| sel.classes & b != 0)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            sel.agent_rules.join(", ")
        );
        for s in r.stores.iter().chain(&r.monitor) {
            if !s.exists() {
                println!(
                    "warning: respond store {} does not exist on this host",
                    s.display()
                );
            }
        }
    }
    if p.evidence.enabled {
        println!(
            "evidence: {} (high and critical alerts on images)",
            p.evidence.dir.display()
        );
    }
    Ok(())
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    use crate::rules::{policy, replay, Engine};
    let policy = match &a.config {
        Some(p) => Policy::load(p)?,
        None => Policy::embedded(),
    };
    let local: Box<dyn policy::LocalTime> = if a.utc {
        Box::new(policy::FixedOffset(0))
    } else {
        Box::new(policy::HostLocalTime)
    };
    // The input first: a missing file is the one thing to say.
    let input: Box<dyn std::io::BufRead> = if a.file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&a.file)
            .with_context(|| format!("cannot read {}", a.file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut engine = Engine::build(&policy, &policy::HostResolver, local)
        .map_err(|m| anyhow::anyhow!("policy: {m}"))?;
    // Executables missing on this host are expected offline: one line, not one per actor.
    if !engine.warnings.is_empty() {
        eprintln!(
            "snapmon: {} policy warning(s) on this host (`snapmon policy check` lists them)",
            engine.warnings.len()
        );
    }
    let (alerts, st) = replay::run(&mut engine, input);
    let is_tty = std::io::stdout().is_terminal();
    let format = a
        .format
        .unwrap_or(if is_tty { Format::Tail } else { Format::Json });
    let filter = crate::sink::Filter {
        min_severity: a.min_severity,
        alerts_only: true,
        rules: a.rule,
        path_contains: vec![],
    };
    let mut out = crate::sink::Output::new(
        "stdout",
        format,
        is_tty,
        filter,
        Box::new(std::io::stdout()),
    );
    let host = crate::sink::hostname();
    for al in alerts {
        if out
            .emit(&crate::record::Record::Alert(Box::new(al)), &host)
            .is_err()
        {
            return Ok(());
        }
    }
    let _ = out.flush();
    for e in &st.errors {
        eprintln!("snapmon: replay: {e}");
    }
    eprintln!(
        "snapmon: replayed {} events ({} other records skipped, {} bad lines)",
        st.events,
        st.skipped,
        st.errors.len()
    );
    Ok(())
}

/// `--syscall-hook MODE`.
fn parse_syscall_hook(s: &str) -> Result<SyscallHook, String> {
    SyscallHook::parse(s).ok_or_else(|| format!("`{s}`: expected `auto`, `tracepoint` or `raw`"))
}

#[cfg(test)]
mod tests {
    use super::metrics_exposure;

    #[test]
    fn metrics_beyond_loopback_are_warned_about() {
        for quiet in [
            "127.0.0.1:9464",
            "127.0.0.2:9464",
            "[::1]:9464",
            "localhost:9464",
        ] {
            assert_eq!(metrics_exposure(quiet), None, "{quiet}");
        }
        for loud in ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464", "myhost:9464"] {
            let w = metrics_exposure(loud).unwrap_or_else(|| panic!("{loud}: no warning"));
            assert!(w.contains(loud) && w.contains("no authentication"), "{w}");
        }
    }
}
