//! Start-up: preflight (enforcement decided and refused before anything is loaded), load
//! and attach, register the stores, and the start-up records ending in `started`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind},
};

use super::{
    kernel_maps::KernelMaps,
    memory::allocator_steady,
    mounts::{mount_table_watch, rescan_overlays, seed_loops},
    output::{emit, refresh_hook_runs},
};
use crate::{
    config::Policy,
    kernel::loader::{self, Kernel, LoadOptions, RunStats},
    metrics::Registry,
    pipeline::Pipeline,
    record::Record,
    sink::SinkSet,
    state::{Enforcement, EnforcementSettings},
    watch::{WatchMaps, WatchSet},
};

/// The circuit-breaker options of `policy` under the command line's, and the plan.
pub(super) fn respond_plan(
    opts: &RunOptions,
    policy: &Policy,
) -> Result<Option<crate::respond::Plan>, String> {
    use crate::config::StoreKind as K;
    // Stores of images and devices: not libvirt's or LVM's text metadata, which admins edit.
    let watched: Vec<PathBuf> = policy
        .stores
        .iter()
        .filter(|s| !matches!(s.kind, K::Libvirt | K::Lvm))
        .map(|s| s.path.clone())
        .filter(|p| p.exists())
        .chain(opts.extra_watch.iter().cloned())
        .collect();
    let o = crate::respond::from_policy(
        opts.respond,
        opts.enforce.dry_run,
        &opts.enforce.protect,
        &policy.respond,
        &[
            policy.enforce.trust.as_slice(),
            opts.enforce.trust.as_slice(),
        ]
        .concat(),
        &watched,
    );
    crate::respond::plan(&o, policy).map_err(|e| format!("respond: {e}"))
}

/// The policy's read budget, for every bounded read from now on (start and reload).
pub(super) fn set_read_budget(policy: &Policy) {
    let ms = policy.agent.read_budget_ms;
    crate::classify::fileread::set_budget(Duration::from_millis(ms));
}

/// Register configured stores; missing optional ones are noted, not fatal.
fn register(
    policy: &Policy,
    extra: &[PathBuf],
    maps: &mut dyn WatchMaps,
) -> anyhow::Result<(WatchSet, Vec<String>)> {
    let mut ws = WatchSet::default();
    ws.scan_depth = Some(policy.agent.scan_depth as usize);
    ws.precious = crate::watch::Precious::from_policy(policy);
    maps.set_precious_exts(&ws.precious.ext_hashes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut notes = Vec::new();
    for s in &policy.stores {
        if let Err(e) = ws.add_root(&s.path, maps) {
            if s.required {
                anyhow::bail!("required store {}: {e}", s.path.display());
            }
            notes.push(format!("skipped {e}"));
        }
    }
    for p in extra {
        ws.add_root(p, maps)
            .map_err(|e| anyhow::anyhow!("--watch {e}"))?;
    }
    if ws.stats.too_deep > 0 {
        // Files below are not watched: say so where an admin looks, not only in a record.
        let w = format!(
            "{} director{} deeper than {} levels below a store not scanned: writes to files in them go unreported (raise [agent] scan_depth; `stores_skipped` lists them)",
            ws.stats.too_deep,
            if ws.stats.too_deep == 1 { "y" } else { "ies" },
            policy.agent.scan_depth
        );
        eprintln!("snapmon: warning: {w}");
        crate::state::add_start_warning(w);
    }
    Ok((ws, notes))
}

pub struct RunOptions {
    pub policy: Policy,
    pub policy_path: Option<PathBuf>,
    /// `--insecure-config`: a policy file others could change is used, with a warning.
    pub insecure_config: bool,
    pub extra_watch: Vec<PathBuf>,
    pub status_interval: Duration,
    /// Period of the `stats` metric record; None: only in the `stopped` record.
    pub stats_interval: Option<Duration>,
    /// Turn on kernel BPF run statistics for the per-hook counters.
    pub hook_stats: bool,
    /// Attach the 32-bit syscall hook where fentry is refused (`--no-compat-syscalls`).
    pub compat_syscalls: bool,
    /// `--syscall-hook`: how the syscall entry hooks run.
    pub syscall_hook: loader::SyscallHook,
    pub enforce: crate::enforce::Options,
    /// `--respond MODE` (the policy's `[respond] mode` otherwise).
    pub respond: Option<crate::respond::Mode>,
}

/// What start-up hands the event loop.
pub(super) struct Running {
    pub(super) k: Kernel,
    pub(super) pipe: Pipeline,
    pub(super) responder: crate::respond::act::Responder,
    pub(super) registry: std::sync::Arc<Registry>,
    pub(super) notify: crate::notify::Notifier,
    pub(super) signals: Signals,
    /// The mount table, polled for overlays mounted over a store (None: it cannot be).
    pub(super) mounts: Option<AsyncFd<std::os::fd::OwnedFd>>,
    /// Fanotify marks on the watched directories (None: not needed or not possible).
    pub(super) dirwatch: Option<crate::dirwatch::DirWatch>,
}

/// The signals the loop answers, their handlers installed before `started` is out.
pub(super) struct Signals {
    pub(super) term: Signal,
    pub(super) int: Signal,
    /// logrotate: reopen files (and reconnect sockets).
    pub(super) hup: Signal,
    pub(super) usr1: Signal,
}

/// Preflight, load, register the stores and say `started`: what the event loop runs on.
/// None when the sinks' reader went away before `started` was out.
pub(super) fn start(opts: &RunOptions, sinks: &SinkSet) -> anyhow::Result<Option<Running>> {
    let started_at = Instant::now();
    // Enforcement is decided (and refused) before anything is loaded.
    let enf_opts = crate::enforce::from_policy(&opts.enforce, &opts.policy.enforce);
    let enf = &enf_opts;
    let plan = crate::enforce::plan_for(enf).map_err(anyhow::Error::msg)?;
    let lsm_ok = plan.is_some() && crate::enforce::bpf_lsm_active().unwrap_or(false);
    if enf.mode == crate::enforce::Mode::On && !lsm_ok {
        anyhow::bail!(
            "--enforce needs BPF LSM, which this kernel does not offer (see `snapmon doctor`); use --enforce=best-effort to run detection only"
        );
    }
    let respond_plan = respond_plan(opts, &opts.policy).map_err(anyhow::Error::msg)?;
    let mut k: Kernel = loader::load(&LoadOptions {
        ring_buffer_bytes: opts.policy.agent.ring_buffer_bytes,
        process_events: true,
        lsm: lsm_ok,
        lsm_observe: crate::enforce::bpf_lsm_active().unwrap_or(false),
        hook_stats: opts.hook_stats,
        compat: opts.compat_syscalls,
        syscall_hook: opts.syscall_hook,
    })?;
    let registry = sinks.registry().clone();
    refresh_hook_runs(&k, &registry);
    if let RunStats::Unavailable(why) = &k.counters.run_stats {
        if opts.hook_stats {
            eprintln!("snapmon: no per-hook counters: {why}");
        }
    }
    let enforcement = match (&plan, k.enforce.lsm) {
        (Some(p), true) => {
            k.apply_enforcement(p, enf.dry_run)?;
            if enf.keep_enforcing {
                k.pin_enforcement()
                    .context("--keep-enforcing: pinning the LSM programs")?;
            }
            Enforcement {
                active: true,
                reason: None,
                settings: Some(EnforcementSettings {
                    dry_run: enf.dry_run,
                    monitor_only: enf.monitor_only,
                    protected: p.protected.len(),
                    trusted: p.trusted.iter().map(|(_, t)| t.as_path()).collect(),
                    keep_enforcing: enf.keep_enforcing,
                }),
            }
        }
        (Some(_), false) if enf.mode == crate::enforce::Mode::On => {
            let why = k
                .info
                .hooks
                .iter()
                .find(|h| h.program.starts_with("lsm_") && h.error.is_some())
                .map(|h| format!("{}: {}", h.program, h.error.as_deref().unwrap_or("")))
                .unwrap_or_default();
            anyhow::bail!("--enforce: the BPF LSM hooks did not attach ({why})")
        }
        (Some(_), false) => Enforcement {
            active: false,
            reason: Some("no BPF LSM on this kernel (best-effort: detection only)"),
            settings: None,
        },
        (None, _) => Enforcement::default(),
    };
    // Protected stores are watched: the kernel judges only what its watch filter lets by.
    let mut extra_watch = opts.extra_watch.clone();
    for s in respond_plan.iter().flat_map(|p| &p.stores) {
        let covered = opts
            .policy
            .stores
            .iter()
            .map(|x| &x.path)
            .chain(&extra_watch)
            .any(|w| std::fs::canonicalize(w).is_ok_and(|w| s.path.starts_with(w)));
        if !covered {
            extra_watch.push(s.path.clone());
        }
    }
    set_read_budget(&opts.policy);
    if let Err(e) = crate::classify::fileread::heed_stop_signals() {
        eprintln!("snapmon: a stop during a stuck read waits for the read budget: {e}");
    }
    let (watch, notes) = {
        let mut maps = KernelMaps::of(&mut k);
        register(&opts.policy, &extra_watch, &mut maps)?
    };
    let n_attached = k
        .info
        .hooks
        .iter()
        .filter(|h| h.attached_to.is_some())
        .count();
    if n_attached == 0 {
        anyhow::bail!(
            "no eBPF hook could be attached: {}",
            k.info
                .hooks
                .first()
                .and_then(|h| h.error.clone())
                .unwrap_or_default()
        );
    }
    let mut pipe = Pipeline::new(watch, &opts.policy);
    let files: Vec<_> = pipe
        .enricher
        .watch
        .known()
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    pipe.classifier.preload(files.iter().map(|(k, p)| (k, p)));
    // Overlays over a store mounted before the start, then as the mount table changes.
    rescan_overlays(&mut pipe, &mut k);
    // Loop devices attached to images before the start: their attach was never seen.
    seed_loops(&mut pipe, &mut k);
    let mounts_fd = mount_table_watch();
    pipe.enricher.process_events = opts.policy.agent.process_events;
    // Writers the kernel may filter on classified files (their metadata writes still arrive).
    loader::set_trusted_writers(&mut k.watch.trusted_writers, &pipe.rules.filter_writers())
        .context("loading trusted writers into the kernel")?;
    let mut responder =
        crate::respond::act::Responder::new(crate::evidence::Evidence::new(&opts.policy.evidence));
    let response = responder
        .apply(&mut k, respond_plan, &pipe.classifier)
        .context("loading the circuit breaker into the kernel")?;

    // Names made in a store through another name of it, where no LSM hook sees them.
    let (mut dirwatch, dir_marks) = crate::dirwatch::route(k.info.lsm_observes());
    if let Some(d) = dirwatch.as_mut() {
        let w = &pipe.enricher.watch;
        d.sync(&w.dirs, |k| w.path_of(k).cloned(), true);
        pipe.recent.on = true;
    }
    let dir_marks = crate::dirwatch::describe(&dirwatch, &dir_marks);
    let (stats_on, stats_note) = k.counters.run_stats.describe();
    let started = crate::state::started(&crate::state::StartInfo {
        backend: k.info.backend,
        fd_walk: k.info.fd_walk,
        fixed_files: k.info.fixed_files,
        syscall_hook: k.info.syscall_hook.name(),
        hooks: &k.info.hooks,
        missing: &k.info.missing,
        hook_stats: (stats_on, stats_note),
        watch: &pipe.enricher.watch.stats,
        roots: &pipe.enricher.watch.roots,
        notes: &notes,
        startup_ms: started_at.elapsed().as_millis() as u64,
        enforcement,
        policy: opts
            .policy_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<embedded default>".into()),
        rule_warnings: pipe.rule_warnings(),
        sinks: crate::state::sink_list(&sinks.stats()),
        previous_run: sinks.previous_run(),
        response: response.clone(),
        evidence_dir: responder.evidence.dir().map(|d| d.display().to_string()),
        dir_marks,
    });
    // One line for the LSM family: on a kernel that refuses them they all fail alike.
    let (lsm_bad, other_bad): (Vec<_>, Vec<_>) = k
        .info
        .hooks
        .iter()
        .filter(|h| h.error.is_some())
        .partition(|h| h.program.starts_with("lsm_"));
    for h in other_bad {
        eprintln!(
            "snapmon: hook {} not attached: {}",
            h.program,
            h.error.as_deref().unwrap_or("")
        );
    }
    if let Some(first) = lsm_bad.first() {
        let seen = if dirwatch.is_some() {
            "are observed by watched names and, for new names made by rename or mkdir, by fanotify marks"
        } else {
            "are not observed"
        };
        eprintln!(
            "snapmon: {} BPF LSM hooks not attached ({}): namespace changes through aliases \
             of watched directories {seen}; see `snapmon doctor`",
            lsm_bad.len(),
            first.error.as_deref().unwrap_or("")
        );
    }
    // Handlers first: whoever reads `started` may signal at once (a SIGHUP before them
    // would end the agent).
    let term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // logrotate: reopen files (and reconnect sockets).
    let hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let usr1 = tokio::signal::unix::signal(SignalKind::user_defined1())?;
    if sinks.previous_run()["clean"] == false {
        eprintln!(
            "snapmon: the previous run did not close its log (killed or crashed): see previous_run in the started record"
        );
    }
    for r in started {
        if emit(sinks, Record::State(r)).is_err() {
            return Ok(None);
        }
    }
    // systemd (Type=notify) sees the unit active only once `started` is in the log.
    let notify = crate::notify::Notifier::from_env();
    if !sinks.settle(Duration::from_secs(30)) {
        eprintln!("snapmon: the `started` record is not written after 30 s (a sink is stuck); ready anyway");
    }
    notify.ready(&format!(
        "{} of {} hooks attached",
        n_attached,
        k.info.hooks.len()
    ));
    // Start-up parsed the kernel's BTF (twice: offsets and BTF tracepoints) and read every
    // process in /proc; that memory is free now but still held by the allocator (mimalloc
    // in the agent binary, glibc for anything allocated before it or by C code).
    // SAFETY: both only return free pages to the kernel.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        #[cfg(target_env = "gnu")]
        libc::malloc_trim(0);
    }
    allocator_steady();
    Ok(Some(Running {
        k,
        pipe,
        responder,
        registry,
        notify,
        signals: Signals {
            term,
            int,
            hup,
            usr1,
        },
        mounts: mounts_fd,
        dirwatch,
    }))
}
