//! The agent's side of the circuit breaker: load a plan into the kernel maps, turn the
//! kernel's response records into alerts (`SM-E003` acted, `SM-E004` would have), freeze
//! cgroups, answer the rules the kernel cannot judge with SIGSTOP or a freeze, and have
//! evidence saved when a high or critical rule fires on an image.

use crate::event::Action;

use std::collections::VecDeque;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};
use snapmon_common::{runtime, FileKey, RespondEntry, RespondTarget};

use super::{cgroup::Hierarchy, Mode, Plan};
use crate::{
    classify::Classifier,
    event::{Bytes, DetailKey, Event},
    evidence::Evidence,
    kernel::loader::Kernel,
    record::{Alert, Record, Severity},
};

/// The circuit breaker's kernel maps (taken from the loaded object).
pub struct Maps {
    targets: BpfHashMap<MapData, FileKey, RespondTarget>,
    paths: BpfHashMap<MapData, u64, u32>,
    entries: BpfHashMap<MapData, RespondEntry, u32>,
    trusted: BpfHashMap<MapData, FileKey, u32>,
}

impl Maps {
    pub fn take(k: &mut Kernel) -> anyhow::Result<Maps> {
        let mut take = |n: &str| {
            k.take_map(n)
                .with_context(|| format!("map {n} missing from the eBPF object"))
        };
        Ok(Maps {
            targets: BpfHashMap::try_from(take("RESPOND")?)?,
            paths: BpfHashMap::try_from(take("RESPOND_PATHS")?)?,
            entries: BpfHashMap::try_from(take("RESPOND_ENTRIES")?)?,
            trusted: BpfHashMap::try_from(take("RESPOND_TRUSTED")?)?,
        })
    }

    fn set_active(k: &mut Kernel, on: bool) -> anyhow::Result<()> {
        let f = k.runtime.get(&0, 0).unwrap_or(0);
        let f = if on {
            f | runtime::RESPOND_ACTIVE
        } else {
            f & !runtime::RESPOND_ACTIVE
        };
        k.runtime.set(0, f, 0)?;
        Ok(())
    }

    /// Replace the maps' contents with `plan` (or nothing), responses off meanwhile: a
    /// half-loaded trust list must not get a trusted tool killed.
    pub fn load(&mut self, k: &mut Kernel, plan: Option<&Plan>) -> anyhow::Result<()> {
        Self::set_active(k, false)?;
        let old: Vec<FileKey> = self.targets.keys().filter_map(Result::ok).collect();
        for x in old {
            let _ = self.targets.remove(&x);
        }
        let old: Vec<u64> = self.paths.keys().filter_map(Result::ok).collect();
        for x in old {
            let _ = self.paths.remove(&x);
        }
        let old: Vec<RespondEntry> = self.entries.keys().filter_map(Result::ok).collect();
        for x in old {
            let _ = self.entries.remove(&x);
        }
        let old: Vec<FileKey> = self.trusted.keys().filter_map(Result::ok).collect();
        for x in old {
            let _ = self.trusted.remove(&x);
        }
        let Some(p) = plan else { return Ok(()) };
        for (key, _) in &p.trusted {
            self.trusted.insert(key, 1, 0).context("RESPOND_TRUSTED")?;
        }
        for (cmd, _) in crate::enforce::DENY_IOCTLS {
            k.enforce
                .deny_ioctls
                .insert(cmd, 1, 0)
                .context("DENY_IOCTLS")?;
        }
        for (key, t, _) in &p.targets {
            self.targets.insert(key, t, 0).context("RESPOND")?;
        }
        for (h, bits, _) in &p.paths {
            self.paths.insert(h, bits, 0).context("RESPOND_PATHS")?;
        }
        for (e, bits, _) in &p.entries {
            self.entries.insert(e, bits, 0).context("RESPOND_ENTRIES")?;
        }
        Self::set_active(k, true)
    }

    /// What `Plan::add_object` added since `from` (targets, paths, entries).
    fn add_from(&mut self, p: &Plan, from: (usize, usize, usize)) {
        for (key, t, _) in &p.targets[from.0..] {
            let _ = self.targets.insert(key, t, 0);
        }
        for (h, b, _) in &p.paths[from.1..] {
            let _ = self.paths.insert(h, b, 0);
        }
        for (e, b, _) in &p.entries[from.2..] {
            let _ = self.entries.insert(e, b, 0);
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Kernel response records (signalled or would have).
    pub kernel: u64,
    /// Responses the agent made (or would have) on a rule.
    pub agent: u64,
    pub frozen: u64,
    pub freeze_refused: u64,
    pub signal_failed: u64,
}

pub struct Responder {
    plan: Option<Plan>,
    maps: Option<Maps>,
    cgroups: Option<Hierarchy>,
    /// Processes the agent already answered, by (pid, start): once each.
    answered: VecDeque<(u32, u64)>,
    /// Writers the kernel killed, by (tgid, dev, ino): the bytes they tried to write never
    /// landed, so the shadow their write record updated is re-read from the file.
    killed: VecDeque<(u32, u32, u64)>,
    pub evidence: Evidence,
    pub stats: Stats,
}

impl Responder {
    pub fn new(evidence: Evidence) -> Responder {
        Responder {
            plan: None,
            maps: None,
            cgroups: Hierarchy::find().ok(),
            answered: VecDeque::new(),
            killed: VecDeque::new(),
            evidence,
            stats: Stats::default(),
        }
    }

    /// Load `plan` into the kernel (taking the maps on first use) with the bootstrap
    /// ranges of the files the classifier already knows. Returns the `started` summary.
    pub fn apply(
        &mut self,
        k: &mut Kernel,
        plan: Option<Plan>,
        classifier: &Classifier,
    ) -> anyhow::Result<serde_json::Value> {
        let mut plan = plan;
        if let Some(p) = &mut plan {
            p.set_ranges(|key| classifier.metadata_filter(key.dev, key.ino));
        }
        if self.maps.is_none() && plan.is_some() {
            self.maps = Some(Maps::take(k)?);
        }
        if let Some(m) = &mut self.maps {
            m.load(k, plan.as_ref())?;
        }
        self.plan = plan;
        Ok(super::describe(self.plan.as_ref()))
    }

    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// The records to send after the ones one kernel record produced (`recs`, in order).
    pub fn after(&mut self, recs: &[Record], classifier: &mut Classifier) -> Vec<Record> {
        let mut out = Vec::new();
        for rec in recs {
            match rec {
                Record::Event(ev) if is_kernel_response(ev) => {
                    self.stats.kernel += 1;
                    let a = self.kernel_alert(ev);
                    if let Some(x) = self.evidence.capture(&a, classifier) {
                        out.push(Record::Alert(Box::new(a)));
                        out.push(x);
                    } else {
                        out.push(Record::Alert(Box::new(a)));
                    }
                }
                Record::Event(ev) => {
                    self.track(ev);
                    if let (Some(f), Some(_)) = (&ev.file, &ev.write) {
                        let k = (ev.process.pid, f.dev, f.ino);
                        if let Some(i) = self.killed.iter().position(|x| *x == k) {
                            self.killed.remove(i);
                            classifier.forget(f.dev, f.ino);
                        }
                    }
                }
                Record::Alert(a) => {
                    if let Some(x) = self.evidence.capture(a, classifier) {
                        out.push(x);
                    }
                    if let Some(x) = self.answer(a) {
                        out.push(Record::Alert(Box::new(x)));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Files that appear in a store later (created, renamed or linked in) are protected too.
    fn track(&mut self, ev: &Event) {
        if !matches!(ev.action, Action::Create | Action::Rename | Action::Link) {
            return;
        }
        let (Some(plan), Some(maps)) = (&mut self.plan, &mut self.maps) else {
            return;
        };
        let named = ev
            .target
            .as_ref()
            .or(ev.file.as_ref())
            .and_then(|f| f.path.as_ref())
            .map(Bytes::as_path);
        let Some(p) = named else { return };
        let Some(store) = plan.store_of(&p).cloned() else {
            return;
        };
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            return;
        };
        if !(md.is_file() || md.is_dir()) {
            return;
        }
        let key = crate::paths::key_for(&p, &md);
        if plan.targets.iter().any(|(k, _, _)| *k == key) {
            return;
        }
        let before = (plan.targets.len(), plan.paths.len(), plan.entries.len());
        if plan.add_object(&store, &p, &md) {
            maps.add_from(plan, before);
        }
    }

    /// SM-E003/SM-E004 for a kernel response record, freezing the cgroup in freeze mode.
    fn kernel_alert(&mut self, ev: &Event) -> Alert {
        let mut ev = ev.clone();
        let pid = ev.process.pid;
        let class = ev
            .detail_value(DetailKey::Operation)
            .unwrap_or("?")
            .to_string();
        let signalled =
            !ev.action.is_dry_run() && ev.detail_value(DetailKey::Outcome) == Some("signalled");
        // An operation matched by path names the image, not the directory it was relative to.
        if let (Some(h), Some(plan)) = (ev.detail_value(DetailKey::PathHash), &self.plan) {
            let dir = ev.file.as_ref().map(|f| (f.dev, f.ino));
            let by_path = plan.paths.iter().find(|(x, _, _)| format!("{x:016x}") == h);
            let by_entry = plan.entries.iter().find(|(e, _, _)| {
                format!("{:016x}", e.name_hash) == h && Some((e.dir.dev, e.dir.ino)) == dir
            });
            if let Some(p) = by_path.map(|x| &x.2).or(by_entry.map(|x| &x.2)) {
                let mut f = crate::event::FileInfo {
                    path: Some(Bytes::from_path(p)),
                    ..Default::default()
                };
                if let Ok(m) = std::fs::metadata(p) {
                    let k = crate::paths::key_for(p, &m);
                    (f.dev, f.ino) = (k.dev, k.ino);
                }
                ev.file = Some(f);
            }
        }
        if class == "metadata_write" && ev.action == Action::Kill && signalled {
            if let Some(f) = &ev.file {
                self.killed.push_back((pid, f.dev, f.ino));
                if self.killed.len() > 256 {
                    self.killed.pop_front();
                }
            }
        }
        let mut what = ev.action;
        if ev.action == Action::Freeze && signalled {
            match self.freeze(pid) {
                Ok(cg) => {
                    ev.detail.push((DetailKey::Cgroup, cg.clone()));
                    ev.detail.push((
                        DetailKey::Resume,
                        format!(
                            "echo 0 > {}/cgroup.freeze; kill -CONT {pid}",
                            self.cgroups
                                .as_ref()
                                .map(|h| h
                                    .mount
                                    .join(cg.trim_start_matches('/'))
                                    .display()
                                    .to_string())
                                .unwrap_or_default()
                        ),
                    ));
                }
                Err(e) => {
                    what = Action::Stop;
                    ev.detail.push((DetailKey::FreezeRefused, e));
                    ev.detail
                        .push((DetailKey::Resume, format!("kill -CONT {pid}")));
                }
            }
        } else if ev.action == Action::Stop && signalled {
            ev.detail
                .push((DetailKey::Resume, format!("kill -CONT {pid}")));
        }
        let target = ev
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.display())
            .unwrap_or_else(|| "a protected object".into());
        let latency = ev
            .detail_value(DetailKey::SyscallToSignalNs)
            .and_then(|v| v.parse::<u64>().ok())
            .map(fmt_ns)
            .unwrap_or_default();
        let sig = ev.detail_value(DetailKey::Signal).unwrap_or("").to_string();
        let deed = match class.as_str() {
            "metadata_write" => "writing the metadata of",
            "snapshot_ioctl" => "a snapshot-destroying ioctl on",
            "rename" => "renaming",
            "truncate" => "truncating",
            "unlink" => "unlinking",
            _ => "touching",
        };
        let message = if ev.action.is_dry_run() {
            format!(
                "{} would have been {} (dry-run/monitor) for {deed} {target}: {} is not a trusted executable",
                ev.process.lineage(),
                past(what),
                ev.process.executable.display()
            )
        } else if signalled {
            format!(
                "{} was {} ({sig} {latency} after the syscall, in the kernel) for {deed} {target}: {} is not a trusted executable",
                ev.process.lineage(),
                past(what),
                ev.process.executable.display()
            )
        } else {
            format!(
                "{} could not be {} for {deed} {target}: the kernel refused the signal ({})",
                ev.process.lineage(),
                past(what),
                ev.detail_value(DetailKey::Outcome).unwrap_or("?")
            )
        };
        let attempted = !ev.action.is_dry_run();
        alert(ev, attempted, message)
    }

    fn freeze(&mut self, pid: u32) -> Result<String, String> {
        let h = self
            .cgroups
            .clone()
            .ok_or_else(|| "no cgroup v2 hierarchy".to_string())?;
        let plan = self.plan.as_ref();
        let trusted = |p: u32| -> Option<String> {
            use std::os::unix::fs::MetadataExt as _;
            let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok()?;
            let m = std::fs::metadata(format!("/proc/{p}/exe")).ok()?;
            let dev = crate::paths::kernel_dev(m.dev());
            plan?
                .is_trusted(dev, m.ino())
                .then(|| exe.display().to_string())
        };
        match h.freeze(pid, &trusted) {
            Ok(cg) => {
                self.stats.frozen += 1;
                Ok(cg)
            }
            Err(e) => {
                self.stats.freeze_refused += 1;
                Err(e.to_string())
            }
        }
    }

    /// A rule the kernel cannot judge fired on a store: stop (or freeze) its actor.
    fn answer(&mut self, a: &Alert) -> Option<Alert> {
        let plan = self.plan.as_ref()?;
        if !plan.selection.agent_rules.contains(&a.rule_id.as_str()) {
            return None;
        }
        let ev = &a.event;
        let in_store = [ev.file.as_ref(), ev.target.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|f| f.path.as_ref())
            .find_map(|p| plan.store_of(&p.as_path()).cloned());
        let store = in_store?;
        let p = &ev.process;
        if p.pid <= 1
            || p.pid == std::process::id()
            || plan.is_trusted(p.exe_dev, p.exe_ino)
            || p.ancestors
                .iter()
                .any(|x| super::PACKAGE_MANAGERS.contains(&x.executable.as_str()))
        {
            return None;
        }
        let id = (p.pid, p.start_ns);
        if self.answered.contains(&id) {
            return None;
        }
        self.answered.push_back(id);
        if self.answered.len() > 4096 {
            self.answered.pop_front();
        }
        self.stats.agent += 1;
        let dry = plan.dry_run || store.dry;
        let freeze = plan.mode == Mode::Freeze;
        let mut out = ev.clone();
        out.detail.push((DetailKey::Responder, "agent".into()));
        out.detail.push((DetailKey::TriggerRule, a.rule_id.clone()));
        let pid = p.pid;
        let verb;
        let mut outcome = Ok(());
        if dry {
            out.action = if freeze {
                Action::WouldFreeze
            } else {
                Action::WouldStop
            };
            verb = if freeze { "frozen" } else { "stopped" };
        } else if freeze {
            match self.freeze(pid) {
                Ok(cg) => {
                    out.action = Action::Freeze;
                    out.detail.push((DetailKey::Cgroup, cg));
                    verb = "frozen";
                }
                Err(e) => {
                    out.detail.push((DetailKey::FreezeRefused, e));
                    out.action = Action::Stop;
                    verb = "stopped";
                    outcome = signal_verified(pid, p.start_ns, libc::SIGSTOP);
                }
            }
        } else {
            out.action = Action::Stop;
            verb = "stopped";
            outcome = signal_verified(pid, p.start_ns, libc::SIGSTOP);
        }
        if !dry && outcome.is_ok() && out.action != Action::Freeze {
            out.detail.push((DetailKey::Signal, "SIGSTOP".into()));
            out.detail
                .push((DetailKey::Resume, format!("kill -CONT {pid}")));
        }
        let lat = boottime_ns().saturating_sub(ev.ts_boot_ns);
        out.detail
            .push((DetailKey::SyscallToSignalNs, lat.to_string()));
        let acted = !dry;
        let message = match (&outcome, dry) {
            (_, true) => format!(
                "{} would have been {verb} (dry-run/monitor) after {}: {}",
                p.lineage(),
                a.rule_id,
                a.message
            ),
            (Ok(()), false) => format!(
                "{} was {verb} by the agent {} after the syscall that completed {}: {}",
                p.lineage(),
                fmt_ns(lat),
                a.rule_id,
                a.message
            ),
            (Err(e), false) => {
                self.stats.signal_failed += 1;
                out.detail.push((DetailKey::Outcome, e.clone()));
                format!(
                    "{} could not be {verb} after {}: {e}",
                    p.lineage(),
                    a.rule_id
                )
            }
        };
        let mut al = alert(out, acted, message);
        al.technique = a.technique.clone();
        al.related_seq = a.related_seq.iter().copied().chain([ev.seq]).collect();
        Some(al)
    }
}

/// What a response did to the actor, in a message (a dry run's as if carried out).
fn past(what: Action) -> &'static str {
    match what {
        Action::Kill | Action::WouldKill => "killed",
        Action::Freeze | Action::WouldFreeze => "frozen",
        // Stop, and what a freeze falls back to.
        _ => "stopped",
    }
}

fn is_kernel_response(ev: &Event) -> bool {
    super::ACTIONS.contains(&ev.action) && ev.detail_value(DetailKey::Responder) == Some("kernel")
}

fn alert(ev: Event, acted: bool, message: String) -> Alert {
    Alert {
        rule_id: if acted { "SM-E003" } else { "SM-E004" }.into(),
        rule_name: if acted {
            "Tampering process stopped by the circuit breaker"
        } else {
            "Tampering process the circuit breaker would have stopped (dry-run or monitor)"
        }
        .into(),
        severity: if acted {
            Severity::High
        } else {
            Severity::Medium
        },
        technique: vec!["T1490".into()],
        message,
        related_seq: vec![ev.seq],
        event: ev,
    }
}

/// CLOCK_BOOTTIME, the clock of the kernel's event timestamps.
pub fn boottime_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// `12.3 µs`, `1.2 ms`.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.1} s", ns as f64 / 1e9),
    }
}

/// Signal `pid` only if it is still the process that started at `start_ns` (a pidfd pins
/// it; its start time is then checked, so a recycled pid is never signalled).
pub fn signal_verified(pid: u32, start_ns: u64, sig: i32) -> Result<(), String> {
    // SAFETY: plain syscalls; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(format!(
            "pid {pid} has exited ({})",
            std::io::Error::last_os_error()
        ));
    }
    let fd = fd as libc::c_int;
    let check = (|| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("pid {pid}: {e}"))?;
        let rest = stat
            .rfind(')')
            .map(|i| &stat[i + 2..])
            .ok_or("unreadable /proc stat")?;
        // Field 22 (starttime) is the 20th after the comm.
        let ticks: u64 = rest
            .split_whitespace()
            .nth(19)
            .and_then(|v| v.parse().ok())
            .ok_or("unreadable /proc stat")?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let tick = 1_000_000_000 / hz;
        let started = ticks.saturating_mul(tick);
        if start_ns != 0 && started.abs_diff(start_ns) > 2 * tick {
            return Err(format!(
                "pid {pid} is now another process (started {started} ns after boot, not {start_ns})"
            ));
        }
        // SAFETY: fd is a pidfd we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(format!(
                "signal refused: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    })();
    // SAFETY: closing the pidfd opened above.
    unsafe { libc::close(fd) };
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapmon_common::respond as r;

    fn kernel_event(signal: u32, flags: u32) -> Event {
        let mut x: snapmon_common::RespondEvent = unsafe { std::mem::zeroed() };
        x.hdr.ts_ns = 1_000;
        x.signal_ns = 9_200;
        x.signal = signal;
        x.flags = flags;
        x.class = r::METADATA_WRITE;
        x.offset = 60;
        x.len = 4;
        x.aux = snapmon_common::WriteOp::Pwrite as u64;
        let mut ev = Event {
            action: crate::actions::response_action(signal, flags),
            seq: 7,
            ..Default::default()
        };
        ev.process.pid = 4242;
        ev.process.name = "python3".into();
        ev.process.executable = Bytes(b"/usr/bin/python3".to_vec());
        ev.file = Some(crate::event::FileInfo {
            path: Some(Bytes(b"/srv/images/vm.qcow2".to_vec())),
            ..Default::default()
        });
        ev.detail = crate::enrich::response_details(&x);
        ev
    }

    fn alerts(recs: Vec<Record>) -> Vec<Alert> {
        recs.into_iter()
            .filter_map(|r| match r {
                Record::Alert(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn kernel_responses_become_acted_or_would_have_alerts() {
        let cfg = crate::config::EvidenceSection {
            enabled: false,
            ..Default::default()
        };
        let mut resp = Responder::new(Evidence::new(&cfg));
        let mut cl = Classifier::new();
        let killed = kernel_event(r::SIGKILL, r::KILL | r::CLASSES);
        let a = alerts(resp.after(&[Record::Event(killed)], &mut cl));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule_id, "SM-E003");
        assert_eq!(a[0].severity, Severity::High);
        assert_eq!(
            a[0].message,
            "python3 was killed (SIGKILL 8.2 µs after the syscall, in the kernel) for writing the metadata of /srv/images/vm.qcow2: /usr/bin/python3 is not a trusted executable"
        );
        assert_eq!(
            a[0].event.detail_value(DetailKey::SyscallToSignalNs),
            Some("8200")
        );
        assert_eq!(
            a[0].event.detail_value(DetailKey::WriteOp),
            Some("pwrite64")
        );
        let stopped = kernel_event(r::SIGSTOP, r::CLASSES);
        let a = alerts(resp.after(&[Record::Event(stopped)], &mut cl));
        assert_eq!(
            a[0].event.detail_value(DetailKey::Resume),
            Some("kill -CONT 4242")
        );
        let dry = kernel_event(0, r::KILL | r::DRY_RUN | r::CLASSES);
        let a = alerts(resp.after(&[Record::Event(dry)], &mut cl));
        assert_eq!(a[0].rule_id, "SM-E004");
        assert_eq!(a[0].event.action, Action::WouldKill);
        assert!(
            a[0].message.contains("would have been killed"),
            "{}",
            a[0].message
        );
        assert_eq!(resp.stats.kernel, 3);
        // A refused helper is said as such.
        let mut failed = kernel_event(r::SIGKILL, r::KILL);
        failed.detail.retain(|(k, _)| *k != DetailKey::Outcome);
        failed
            .detail
            .push((DetailKey::Outcome, "failed: Operation not permitted".into()));
        let a = alerts(resp.after(&[Record::Event(failed)], &mut cl));
        assert!(
            a[0].message.contains("could not be killed"),
            "{}",
            a[0].message
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_ns(800), "800 ns");
        assert_eq!(fmt_ns(12_345), "12.3 µs");
        assert_eq!(fmt_ns(1_500_000), "1.5 ms");
    }

    #[test]
    fn a_recycled_or_gone_pid_is_never_signalled() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = c.id();
        // A start time that is not this process's.
        let e = signal_verified(pid, 1, libc::SIGSTOP).unwrap_err();
        assert!(e.contains("another process"), "{e}");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(!stat.contains(") T "), "must not be stopped: {stat}");
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(signal_verified(pid, 0, libc::SIGSTOP)
            .unwrap_err()
            .contains("exited"));
    }
}
