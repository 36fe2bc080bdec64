//! Pipeline: the pure part of the flow, bytes → decode → enrich → classify → rules → records.
//! No kernel access here, so `replay` and tests drive exactly what the live agent runs.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use serde_json::json;

use crate::{
    classify::{fileread, recheck::Hold, Classifier, Verdict},
    config::Policy,
    decode::decode,
    enrich::lineage::Lineage,
    enrich::Enricher,
    event::Event,
    record::Record,
    rules::{
        policy::{HostLocalTime, HostResolver},
        Engine,
    },
    watch::{WatchMaps, WatchSet},
};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StageStats {
    pub received: u64,
    pub decoded: u64,
    pub decode_errors: u64,
    pub events: u64,
    pub alerts: u64,
    /// Write-filter updates the kernel map refused (the file stays fully reported).
    pub filter_errors: u64,
    /// Events judged only once their syscall landed (renames, header tails, first fills).
    pub held: u64,
    /// Follow-up events from files looked at again (shared mappings, late fills, clones).
    pub rechecked: u64,
}

pub struct Pipeline {
    seq: u64,
    pub enricher: Enricher,
    pub classifier: Classifier,
    /// Detection engine; replaced as a whole by [`Pipeline::reload`].
    pub rules: Engine,
    pub stats: StageStats,
    decode_errs: BTreeMap<&'static str, u64>,
    /// Events judged once their syscall landed (see `classify::recheck`), oldest first.
    held: VecDeque<(Event, Hold)>,
    deleted_exe: crate::enrich::lineage::DeletedExe,
    /// Names made lately, so the fanotify route (`dirwatch`) adds only what this one missed.
    pub recent: crate::dirwatch::Recent,
}

impl Pipeline {
    pub fn new(watch: WatchSet, policy: &Policy) -> Self {
        Self::with_lineage(watch, policy, crate::enrich::lineage::default_lineage())
    }

    pub fn with_lineage(watch: WatchSet, policy: &Policy, lineage: Box<dyn Lineage>) -> Self {
        let classifier = Classifier::new();
        // Policies are validated when parsed; a build error here means one was assembled in
        // code. Run without rules rather than not at all, and say so in the warnings.
        let rules = match Engine::build(policy, &HostResolver, Box::new(HostLocalTime)) {
            Ok(e) => e,
            Err(msg) => {
                let mut e = Engine::empty();
                e.warnings.push(format!("rules disabled: {msg}"));
                e
            }
        };
        Pipeline {
            seq: 0,
            enricher: Enricher::new(watch, lineage),
            classifier,
            rules,
            stats: StageStats::default(),
            decode_errs: BTreeMap::new(),
            held: VecDeque::new(),
            deleted_exe: Default::default(),
            recent: Default::default(),
        }
    }

    /// One ring-buffer record in, zero or more output records out.
    pub fn handle(&mut self, bytes: &[u8], maps: &mut dyn WatchMaps) -> Vec<Record> {
        let mut out = Vec::new();
        self.handle_into(bytes, maps, &mut out);
        out
    }

    /// [`Pipeline::handle`], its records appended to `out`: the event loop reuses one buffer
    /// rather than allocate one per ring-buffer record.
    pub fn handle_into(&mut self, bytes: &[u8], maps: &mut dyn WatchMaps, out: &mut Vec<Record>) {
        self.stats.received += 1;
        let raw = match decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.stats.decode_errors += 1;
                *self.decode_errs.entry(e.cause()).or_default() += 1;
                return;
            }
        };
        self.stats.decoded += 1;
        // Under a flood of names the gone ones are withdrawn as we go, not only when idle.
        self.enricher.settle(Instant::now(), maps);
        let ev = self.enricher.enrich(&raw, maps);
        // A name this record made is matched by its last component from the next syscall on
        // (a rename through a symlinked store right after the create).
        self.enricher.watch.publish_leaves(maps);
        let Some(mut ev) = ev else {
            return;
        };
        self.seq += 1;
        ev.seq = self.seq;
        let now = Instant::now();
        self.recent.note(&ev, now);
        // Held events on the same file go first, judged as they stand: this event must
        // not be diffed against a shadow they have not updated yet.
        out.extend(self.complete_held(now, Some(&ev), maps));
        let path = ev
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.as_path());
        fileread::take_stall();
        let verdict = self.classifier.judge(&ev, path.as_deref(), now);
        note_stall(&mut ev);
        match verdict {
            Verdict::Now(c) => {
                ev.classification = c;
                self.finish(ev, now, maps, out);
            }
            Verdict::Hold(h) => {
                self.stats.held += 1;
                self.held.push_back((ev, h));
                if self.held.len() > crate::classify::recheck::MAX_HELD {
                    if let Some((ev, h)) = self.held.pop_front() {
                        self.complete_one(ev, h, maps, out);
                    }
                }
            }
        }
    }

    /// Filter updates, rules, records: the tail every judged event goes through.
    fn finish(
        &mut self,
        mut ev: Event,
        now: Instant,
        maps: &mut dyn WatchMaps,
        out: &mut Vec<Record>,
    ) {
        for (key, f) in self.classifier.take_filter_updates() {
            if let Err(e) = maps.set_write_filter(key, f.as_ref()) {
                // A full map only means more is reported; count it, keep going.
                self.stats.filter_errors += 1;
                let _ = e;
            }
        }
        self.stats.events += 1;
        // An event that may alert names an actor whose file was removed as such.
        if ev
            .classification
            .as_ref()
            .is_some_and(|c| c.format != crate::classify::Format::File)
        {
            self.deleted_exe.amend(&mut ev.process, now);
        }
        // Rules see events only, never alerts: no rule can fire on an alert.
        let alerts = self.rules.process(&ev);
        self.stats.alerts += alerts.len() as u64;
        out.push(Record::Event(ev));
        out.extend(alerts.into_iter().map(|a| Record::Alert(Box::new(a))));
    }

    fn complete_one(
        &mut self,
        mut ev: Event,
        h: Hold,
        maps: &mut dyn WatchMaps,
        out: &mut Vec<Record>,
    ) {
        let path = ev
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.as_path());
        fileread::take_stall();
        let done = self.classifier.complete(&ev, path.as_deref(), h);
        note_stall(&mut ev);
        ev.classification = done.classification;
        if let Some((target, key, link)) = done.placed {
            // What a rename or link put in place is watched under its new name, even when
            // the enrich stage looked before the name changed.
            self.enricher.watch.placed(&target, key, link, maps);
        }
        self.finish(ev, Instant::now(), maps, out);
    }

    /// Judge held events that landed, ran out of time, or (with `next`) concern the same
    /// file or name as the event about to be judged.
    fn complete_held(
        &mut self,
        now: Instant,
        next: Option<&Event>,
        maps: &mut dyn WatchMaps,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        if self.held.is_empty() {
            return out;
        }
        // About the same file or name as the event to come: judged before it.
        let touches = |h: &Hold| {
            next.is_some_and(|ev| {
                [ev.file.as_ref(), ev.target.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|f| {
                        let key = (f.ino != 0).then_some((f.dev, f.ino));
                        h.concerns(key, f.path.as_ref().map(|p| p.0.as_slice()))
                    })
            })
        };
        // No allocation unless something is due: this runs for every event while any is held.
        let mut go = Vec::new();
        for (i, (_, h)) in self.held.iter_mut().enumerate() {
            let due = h.next_check <= now;
            if touches(h) || now >= h.deadline || (due && h.landed(now)) {
                go.push(i);
            } else if due {
                h.next_check = now + crate::classify::recheck::HOLD_STEP;
            }
        }
        let mut taken = Vec::with_capacity(go.len());
        for &i in go.iter().rev() {
            taken.extend(self.held.remove(i));
        }
        // Oldest first.
        for (ev, h) in taken.into_iter().rev() {
            self.complete_one(ev, h, maps, &mut out);
        }
        out
    }

    /// Work that is due without an event to carry it: held events whose syscall landed
    /// or ran out of time, and files looked at again (shared mappings, late fills).
    pub fn poll(&mut self, now: Instant, maps: &mut dyn WatchMaps) -> Vec<Record> {
        self.enricher.settle(now, maps);
        let mut out = self.complete_held(now, None, maps);
        let due = self.classifier.rechecks_due(now);
        // A recheck that went unread makes no record; the stall is counted in `reads`.
        fileread::take_stall();
        for mut ev in due {
            self.seq += 1;
            ev.seq = self.seq;
            self.stats.rechecked += 1;
            self.finish(ev, now, maps, &mut out);
        }
        out
    }

    /// Judge everything held now (shutdown: nothing is lost).
    pub fn flush_held(&mut self, maps: &mut dyn WatchMaps) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some((ev, h)) = self.held.pop_front() {
            self.complete_one(ev, h, maps, &mut out);
        }
        out
    }

    /// When [`Pipeline::poll`] next has work.
    pub fn next_due(&self) -> Option<Instant> {
        let held = self
            .held
            .iter()
            .map(|(_, h)| h.next_check.min(h.deadline))
            .min();
        [
            held,
            self.classifier.next_recheck(),
            self.enricher.watch.next_settle(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The kernel dropped `dropped` records about images or metadata files since the last
    /// call, `last` the newest (`Kernel::last_blinded`): one `blinded` event for all of them,
    /// judged by the rules (SM-A001) like any other. Nothing when none was dropped.
    pub fn blinded(
        &mut self,
        last: &snapmon_common::Blinded,
        dropped: u64,
        maps: &mut dyn WatchMaps,
    ) -> Vec<Record> {
        if dropped == 0 {
            return Vec::new();
        }
        let ev = self.enricher.blinded(last, dropped);
        self.judge_own([ev], maps)
    }

    /// The kernel dropped `dropped` path records in watched trees since the last call, `last`
    /// the newest (`Kernel::last_blinded`, slot `NAMESPACE`): a `blinded` event, judged by
    /// the rules (SM-A001), for each watched image or metadata file of its store whose name
    /// went unheard (`Enricher::blinded_names`). Nothing when none did.
    pub fn blinded_names(
        &mut self,
        last: &snapmon_common::Blinded,
        dropped: u64,
        maps: &mut dyn WatchMaps,
    ) -> Vec<Record> {
        if dropped == 0 {
            return Vec::new();
        }
        let evs = self.enricher.blinded_names(last, dropped);
        self.judge_own(evs, maps)
    }

    /// Fanotify events were lost (`dirwatch`: a full queue): `blinded` events, judged by
    /// the rules (SM-A001), for the directories known to be affected (else one naming none).
    /// Nothing when none was lost.
    pub fn blinded_fanotify(
        &mut self,
        loss: &crate::dirwatch::DirWatchLoss,
        maps: &mut dyn WatchMaps,
    ) -> Vec<Record> {
        if !loss.blinding() {
            return Vec::new();
        }
        let evs = self.enricher.blinded_fanotify(&loss.unheard, loss.overflow);
        self.judge_own(evs, maps)
    }

    /// Events the agent makes itself (no ring record): numbered and judged like any other.
    fn judge_own(
        &mut self,
        evs: impl IntoIterator<Item = Event>,
        maps: &mut dyn WatchMaps,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        for mut ev in evs {
            self.seq += 1;
            ev.seq = self.seq;
            self.finish(ev, Instant::now(), maps, &mut out);
        }
        out
    }

    /// Loop devices found no longer over their image (a detach at last close): one
    /// `loop_detached` event each, judged like any other (`Enricher::check_loops`).
    pub fn check_loops(
        &mut self,
        sys_dev_block: &std::path::Path,
        maps: &mut dyn WatchMaps,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        for mut ev in self.enricher.check_loops(sys_dev_block, maps) {
            self.seq += 1;
            ev.seq = self.seq;
            self.finish(ev, Instant::now(), maps, &mut out);
        }
        out
    }

    /// Timed-out sequences (a freeze never thawed) when no event arrives to carry them.
    pub fn tick(&mut self, now_unix_ns: i128) -> Vec<Record> {
        let alerts = self.rules.expire(now_unix_ns);
        self.stats.alerts += alerts.len() as u64;
        alerts
            .into_iter()
            .map(|a| Record::Alert(Box::new(a)))
            .collect()
    }

    /// SIGHUP: swap in a new policy's rules, transactionally. Everything is built first; on
    /// any error the running rules (and their state) stay as they were. The new rules take
    /// over the state of the unchanged ones (`Engine::inherit`).
    pub fn reload(&mut self, policy: Policy) -> Result<(), String> {
        let e = Engine::build(&policy, &HostResolver, Box::new(HostLocalTime))?;
        let old = std::mem::replace(&mut self.rules, e);
        self.rules.inherit(old);
        Ok(())
    }

    /// Build-time notes of the current rules (trusted tools missing on this host …).
    pub fn rule_warnings(&self) -> &[String] {
        &self.rules.warnings
    }

    /// Decoder errors since the last call, by cause.
    pub fn take_decode_errors(&mut self) -> serde_json::Map<String, serde_json::Value> {
        std::mem::take(&mut self.decode_errs)
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    }

    pub fn stats(&self) -> serde_json::Value {
        json!({
            "pipeline": self.stats,
            "enrich": self.enricher.stats,
            "lineage": self.enricher.lineage.stats(),
            "rules": self.rules.stats,
            "rule_state": self.rules.state_sizes(),
            "reads": fileread::stats(),
        })
    }
}

/// Say on the record that a file its judgement needed did not answer in time.
fn note_stall(ev: &mut Event) {
    if let Some(s) = fileread::take_stall() {
        ev.detail.push((crate::event::DetailKey::ReadStalled, s));
    }
}

/// Wire records as the kernel writes them, for driving the pipeline in tests.
#[cfg(test)]
mod wire {
    use snapmon_common::{EventKind, FileWriteEvent, WriteOp, DATA_LEN};

    /// A `pwrite64` of `len` bytes at `off`, the first DATA_LEN of them captured.
    pub fn raw_write(
        key: snapmon_common::FileKey,
        pid: u32,
        off: i64,
        len: u64,
        data: &[u8],
    ) -> Vec<u8> {
        // SAFETY: plain-data wire struct; all zeroes is a valid value.
        let mut ev: FileWriteEvent = unsafe { std::mem::zeroed() };
        ev.hdr.kind = EventKind::FileWrite as u32;
        ev.hdr.backend = 1;
        ev.hdr.pid = pid;
        ev.hdr.tgid = pid;
        // Stamped now, after the process started, as the kernel would.
        ev.hdr.ts_ns = crate::lineage::boottime_ns();
        ev.hdr.comm[..6].copy_from_slice(b"python");
        ev.op = WriteOp::Pwrite as u16;
        ev.fd = 3;
        ev.file = key;
        ev.offset = off;
        ev.len = len;
        ev.size = 196_616;
        let n = data.len().min(DATA_LEN);
        ev.data_len = n as u32;
        ev.data[..n].copy_from_slice(&data[..n]);
        // SAFETY: reading the struct's bytes.
        unsafe {
            std::slice::from_raw_parts(&ev as *const _ as *const u8, size_of::<FileWriteEvent>())
        }
        .to_vec()
    }
}

/// Events judged once their syscall landed, through the whole pure path.
#[cfg(test)]
mod held {
    use super::*;
    use crate::{
        classify::qcow2::testutil::{qemu_img, rebase_unsafe, TmpDir},
        watch::MemMaps,
    };

    fn events(recs: &[Record]) -> Vec<&Event> {
        recs.iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// A header cluster rewrite is held until it lands; the next write to the same image
    /// forces it out first, judged from the file, so the order and each diff are right.
    /// A pipeline on the embedded policy watching `root`, lineage from record headers only.
    pub(super) fn header_only_pipe(root: &std::path::Path) -> (MemMaps, Pipeline) {
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(root, &mut maps).unwrap();
        let pipe = Pipeline::with_lineage(
            ws,
            &Policy::embedded(),
            Box::new(crate::enrich::lineage::HeaderOnly),
        );
        (maps, pipe)
    }

    #[test]
    fn a_held_write_is_judged_before_the_next_event_on_its_file() {
        let d = TmpDir::new("held");
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("vm.qcow2"), "16M"]);
        qemu_img(&["create", "-q", "-f", "qcow2", &d.s("r.qcow2"), "16M"]);
        rebase_unsafe(&d.s("r.qcow2"), "/dev/shm/x.qcow2");
        let head = std::fs::read(d.path("r.qcow2")).unwrap()[..65536].to_vec();
        let img = d.path("vm.qcow2");
        let key = crate::paths::key_for(&img, &std::fs::metadata(&img).unwrap());
        let (mut maps, mut pipe) = header_only_pipe(&d.0);
        pipe.classifier.preload(std::iter::once((&key, &img)));
        let me = std::process::id();
        let out = pipe.handle(&wire::raw_write(key, me, 0, 65536, &head), &mut maps);
        assert!(events(&out).is_empty(), "judged before it landed: {out:?}");
        assert!(pipe.next_due().is_some());
        // It lands; the same writer's next write (the size) comes in.
        std::fs::write(
            &img,
            [&head[..], &std::fs::read(&img).unwrap()[65536..]].concat(),
        )
        .unwrap();
        let size = 32u64 << 20;
        let out = pipe.handle(
            &wire::raw_write(key, me, 24, 8, &size.to_be_bytes()),
            &mut maps,
        );
        let ev = events(&out);
        assert_eq!(ev.len(), 2, "{out:?}");
        assert!(ev[0].seq < ev[1].seq);
        let ch = |e: &Event| -> Vec<String> {
            e.classification
                .as_ref()
                .map(|c| c.changes.iter().map(ToString::to_string).collect())
                .unwrap_or_default()
        };
        assert!(
            ch(ev[0]).contains(&"backing_file: (none) → /dev/shm/x.qcow2".to_string()),
            "{:?}",
            ch(ev[0])
        );
        assert_eq!(ch(ev[1]), ["size: 16777216 → 33554432"]);
        assert!(pipe.next_due().is_none());
        assert_eq!(pipe.stats.held, 1);
    }
}

/// Records about images the kernel dropped: the `blinded` event and its SM-A001 alert.
#[cfg(test)]
mod blinded {
    use super::held::header_only_pipe;
    use super::*;
    use crate::{record::Severity, rules::replay, testutil::TmpDir, watch::MemMaps};
    use snapmon_common::{Blinded, EventKind};

    fn dropped_write(key: snapmon_common::FileKey, pid: u32) -> Blinded {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        Blinded {
            ts_ns: 1_000_000,
            file: key,
            kind: EventKind::FileWrite as u32,
            pid,
            tgid: pid,
            uid: 65534,
            gid: 65534,
            comm,
            ..Default::default()
        }
    }

    fn alerts(recs: &[Record]) -> Vec<&crate::record::Alert> {
        recs.iter()
            .filter_map(|r| match r {
                Record::Alert(a) => Some(a.as_ref()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_tick_with_dropped_image_records_is_one_alert_naming_the_file() {
        let d = TmpDir::new("blinded");
        let (vm1, vm2) = (d.path("vm1.qcow2"), d.path("vm2.qcow2"));
        std::fs::write(&vm1, b"QFI\xfb").unwrap();
        std::fs::write(&vm2, b"QFI\xfb").unwrap();
        let key = |p: &std::path::Path| crate::paths::key_for(p, &std::fs::metadata(p).unwrap());
        let (mut maps, mut pipe) = header_only_pipe(&d.0);
        // Nothing dropped: nothing said.
        assert!(pipe
            .blinded(&dropped_write(key(&vm1), 1234), 0, &mut maps)
            .is_empty());
        let out = pipe.blinded(&dropped_write(key(&vm1), 1234), 12, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert_eq!(a[0].rule_id, "SM-A001");
        assert_eq!(a[0].severity, Severity::High);
        assert_eq!(a[0].technique, ["T1562.001"]);
        assert_eq!(
            a[0].message,
            "events lost on vm1.qcow2 while the ring buffer was full (12 records about images or \
             metadata dropped; last actor python3 uid 65534 pid 1234): tampering may be hidden"
        );
        // The event it judged is in the output too, so a replay of the log finds it again.
        let ev = &a[0].event;
        assert_eq!(ev.action, crate::event::Action::Blinded);
        let path = ev.file.as_ref().and_then(|f| f.path.as_ref());
        assert_eq!(path.map(|p| p.display()), Some(vm1.display().to_string()));
        let line = crate::sink::json::to_value(&out[0], "h").to_string();
        let mut e = Engine::build(
            &Policy::embedded(),
            &HostResolver,
            Box::new(crate::rules::policy::FixedOffset(0)),
        )
        .unwrap();
        let (again, _) = replay::run(&mut e, line.as_bytes());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message, a[0].message);
        // The next tick's drops, about another image: one alert again, naming that one.
        let out = pipe.blinded(&dropped_write(key(&vm2), 1234), 3, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert!(
            a[0].message.starts_with("events lost on vm2.qcow2"),
            "{}",
            a[0].message
        );
        assert!(a[0].message.contains("(3 records"), "{}", a[0].message);
    }

    /// The fanotify route's queue overflowed (`dirwatch`): SM-A001 naming the route, that
    /// namespace events were lost, the flooded directory and its last actor; with no
    /// directory known, the marked directories. Nothing without an overflow.
    #[test]
    fn a_fanotify_overflow_is_sm_a001_naming_the_route_and_directory() {
        let d = TmpDir::new("blinded-fanotify");
        let (mut maps, mut pipe) = header_only_pipe(&d.0);
        let dir = crate::paths::key_for(&d.0, &std::fs::metadata(&d.0).unwrap());
        // Not the agent's own pid (its own events are not judged), and gone: the lineage's.
        let me = 4_000_001;
        let mut loss = crate::dirwatch::DirWatchLoss {
            parse_errors: 3,
            mark_failed: 1,
            ..Default::default()
        };
        assert!(pipe.blinded_fanotify(&loss, &mut maps).is_empty());
        loss.overflow = 2;
        loss.unheard.push(crate::dirwatch::Unheard {
            dir,
            pid: me,
            ts_ns: crate::lineage::boottime_ns(),
        });
        let out = pipe.blinded_fanotify(&loss, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert_eq!(a[0].rule_id, "SM-A001");
        assert_eq!(a[0].severity, Severity::High);
        let m = &a[0].message;
        assert!(
            m.starts_with(&format!(
                "namespace events lost on the fanotify route in {} (and any other marked \
                 directory) (its event queue was full: 2 overflows and events dropped; last \
                 actor ",
                d.0.display()
            )),
            "{m}"
        );
        assert!(m.contains(&format!("pid {me})")), "{m}");
        assert!(
            m.ends_with("through a symlink or bind mount may be hidden"),
            "{m}"
        );
        let ev = &a[0].event;
        assert_eq!(
            ev.detail_value(crate::event::DetailKey::Via),
            Some("fanotify")
        );
        assert_eq!(
            ev.detail_value(crate::event::DetailKey::DroppedRecord),
            Some(crate::event::DROPPED_FANOTIFY)
        );
        // No event read before the overflow: no directory or actor to name, still said.
        loss.unheard.clear();
        let out = pipe.blinded_fanotify(&loss, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert_eq!(
            a[0].message,
            "namespace events lost on the fanotify route in the marked directories (its event \
             queue was full: 2 overflows and events dropped): a name renamed or made in a store \
             through a symlink or bind mount may be hidden"
        );
    }

    /// A path record the kernel dropped in the store `dir` (`blinded_slot::NAMESPACE`).
    fn dropped_name(dir: snapmon_common::FileKey, pid: u32) -> Blinded {
        Blinded {
            kind: EventKind::Namespace as u32,
            op: snapmon_common::NsOp::Unlink as u32,
            ..dropped_write(dir, pid)
        }
    }

    #[test]
    fn an_image_gone_by_a_dropped_name_is_one_alert_per_image_and_junk_is_none() {
        let d = TmpDir::new("blinded-names");
        let (vm1, vm2, junk) = (d.path("vm1.qcow2"), d.path("vm2.qcow2"), d.path("n1"));
        for p in [&vm1, &vm2, &junk] {
            std::fs::write(p, b"QFI\xfb").unwrap();
        }
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.precious = crate::watch::Precious::from_policy(&Policy::embedded());
        ws.add_root(&d.0, &mut maps).unwrap();
        let mut pipe = Pipeline::with_lineage(
            ws,
            &Policy::embedded(),
            Box::new(crate::enrich::lineage::HeaderOnly),
        );
        let key = |p: &std::path::Path| crate::paths::key_for(p, &std::fs::metadata(p).unwrap());
        let store = key(&d.0);
        // Junk names went (a flood of them): loss, no blinding.
        std::fs::remove_file(&junk).unwrap();
        assert!(alerts(&pipe.blinded_names(&dropped_name(store, 9), 500, &mut maps)).is_empty());
        // An image deleted, another replaced by a rename over it: one alert each.
        std::fs::remove_file(&vm1).unwrap();
        std::fs::write(d.path("x"), b"").unwrap();
        std::fs::rename(d.path("x"), &vm2).unwrap();
        let out = pipe.blinded_names(&dropped_name(store, 9), 500, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 2, "{out:?}");
        let mut msgs: Vec<&str> = a.iter().map(|a| a.message.as_str()).collect();
        msgs.sort();
        assert_eq!(
            msgs[0],
            "vm1.qcow2 went from its store unheard while the ring buffer was full (500 records \
             naming paths in watched stores dropped; last actor python3 uid 65534 pid 9): a \
             delete or rename of it may be hidden"
        );
        assert!(
            msgs[1].starts_with("vm2.qcow2 went from its store"),
            "{}",
            msgs[1]
        );
        assert_eq!(a[0].rule_id, "SM-A001");
        assert_eq!(a[0].event.process.pid, 9);
        // Said once: the names are no longer watched.
        assert!(pipe.enricher.watch.key_at(&vm1).is_none());
        assert!(alerts(&pipe.blinded_names(&dropped_name(store, 9), 5, &mut maps)).is_empty());
        // An absolute path (no store known): every store is looked at.
        std::fs::write(d.path("vm3.qcow2"), b"QFI\xfb").unwrap();
        let vm3 = d.path("vm3.qcow2");
        let k3 = key(&vm3);
        pipe.enricher.watch.learn(k3, vm3.clone());
        std::fs::remove_file(&vm3).unwrap();
        let none = snapmon_common::FileKey::default();
        let out = pipe.blinded_names(&dropped_name(none, 9), 1, &mut maps);
        // Its alert may be deduplicated (tmpfs hands vm1's inode on): the event is there.
        let named = |r: &Record| match r {
            Record::Event(e) => e
                .file
                .as_ref()
                .and_then(|f| f.path.as_ref())
                .map(|p| p.display()),
            _ => None,
        };
        let vm3s = vm3.display().to_string();
        assert!(
            out.iter().any(|r| named(r) == Some(vm3s.clone())),
            "{out:?}"
        );
    }

    #[test]
    fn an_image_whose_create_was_lost_too_is_found_in_its_store() {
        let d = TmpDir::new("blinded-unheard");
        let (mut maps, mut pipe) = header_only_pipe(&d.0);
        // Made after the scan, and the agent never heard of it.
        let mine = d.path("mine.qcow2");
        std::fs::write(&mine, b"x").unwrap();
        let key = crate::paths::key_for(&mine, &std::fs::metadata(&mine).unwrap());
        let out = pipe.blinded(&dropped_write(key, 9), 2, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert!(
            a[0].message.starts_with("events lost on mine.qcow2 "),
            "{}",
            a[0].message
        );
        assert_eq!(pipe.enricher.watch.path_of(&key), Some(&mine));
    }

    #[test]
    fn a_file_the_agent_cannot_name_is_named_by_its_identity() {
        let mut maps = MemMaps::default();
        let mut pipe = Pipeline::with_lineage(
            WatchSet::default(),
            &Policy::embedded(),
            Box::new(crate::enrich::lineage::HeaderOnly),
        );
        let key = snapmon_common::FileKey {
            dev: (8 << 20) | 1,
            _pad: 0,
            ino: 77,
        };
        let out = pipe.blinded(&dropped_write(key, 9), 1, &mut maps);
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{out:?}");
        assert!(
            a[0].message.starts_with("events lost on 8:1:77 "),
            "{}",
            a[0].message
        );
    }
}

/// Cost of one relevant event through the whole userspace path, stage by stage:
/// `cargo test --release -p snapmon pipeline_cost -- --ignored --nocapture`.
#[cfg(test)]
mod cost {
    use std::time::Instant;

    use super::*;
    use crate::watch::MemMaps;

    fn raw_write(key: snapmon_common::FileKey, pid: u32, data: &[u8]) -> Vec<u8> {
        wire::raw_write(key, pid, 60, data.len() as u64, data)
    }

    #[test]
    #[ignore = "timing, not a check"]
    fn pipeline_cost() {
        let d = crate::classify::qcow2::testutil::TmpDir::new("cost");
        crate::classify::qcow2::testutil::qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            &d.s("a.qcow2"),
            "16M",
        ]);
        let img = d.path("a.qcow2");
        let bytes = std::fs::read(&img).unwrap();
        let md = std::fs::metadata(&img).unwrap();
        let key = crate::paths::key_for(&img, &md);
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.add_root(&d.0, &mut maps).unwrap();
        let policy = Policy::embedded();
        let mut pipe = Pipeline::new(ws, &policy);
        // A live process so lineage has something real to look up.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // First sight reads /proc; events stamped after that are what a busy writer sends.
        pipe.handle(&raw_write(key, child.id(), &bytes[60..72]), &mut maps);
        let raw = raw_write(key, child.id(), &bytes[60..72]);
        let n = 50_000u32;
        for _ in 0..1000 {
            pipe.handle(&raw, &mut maps);
        }
        let t = Instant::now();
        let mut recs = Vec::new();
        for _ in 0..n {
            recs = pipe.handle(&raw, &mut maps);
        }
        let handle = t.elapsed() / n;
        let rec = recs.into_iter().next().unwrap();
        let t = Instant::now();
        let mut len = 0;
        for _ in 0..n {
            len = crate::sink::render(crate::sink::Format::Json, &rec, "host", false).len();
        }
        let render = t.elapsed() / n;
        let body = crate::sink::render(crate::sink::Format::Json, &rec, "host", false);
        if std::env::var_os("SNAPMON_COST_SHOW").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&body));
        }
        let mut chain = crate::sink::chain::Chain::new(None, 1 << 30, 0, [0; 32]);
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(chain.seal(&body));
        }
        let seal = t.elapsed() / n;
        let _ = child.kill();
        let _ = child.wait();
        eprintln!(
            "per event: handle {handle:?}, render json {render:?} ({len} bytes), chain seal {seal:?}; \
             total {:?} → {:.0} events/s on one core",
            handle + render + seal,
            1e9 / (handle + render + seal).as_nanos() as f64
        );
    }
}

/// A loop device over an image detached at its last close: found on the tick by sysfs.
#[cfg(test)]
mod loops {
    use super::held::header_only_pipe;
    use crate::{enrich::LoopAlias, testutil::TmpDir};

    /// A pipeline watching `vm.qcow2`, with `node` (a plain file: device number 0:0, so
    /// its sysfs entry is `sys/0:0/loop`) as a loop device over it.
    fn aliased(
        d: &TmpDir,
    ) -> (
        crate::watch::MemMaps,
        super::Pipeline,
        snapmon_common::FileKey,
        std::path::PathBuf,
    ) {
        let key = |p: &std::path::Path| crate::paths::key_for(p, &std::fs::metadata(p).unwrap());
        let store = d.path("store");
        std::fs::create_dir_all(&store).unwrap();
        let img = store.join("vm.qcow2");
        std::fs::write(&img, b"QFI\xfb").unwrap();
        std::fs::write(d.path("loop7"), b"").unwrap();
        let (mut maps, mut pipe) = header_only_pipe(&store);
        let node = key(&d.path("loop7"));
        assert!(pipe
            .enricher
            .watch
            .watch_alias(node, Some(&d.path("loop7")), &img, &mut maps));
        pipe.enricher.loops.insert(
            node,
            LoopAlias {
                image: key(&img),
                offset: 0,
                node: Some(d.path("loop7")),
            },
        );
        std::fs::create_dir_all(d.path("sys/0:0/loop")).unwrap();
        std::fs::write(
            d.path("sys/0:0/loop/backing_file"),
            format!("{}\n", img.display()),
        )
        .unwrap();
        (maps, pipe, node, img)
    }

    fn ended(recs: &[crate::record::Record]) -> Vec<&crate::event::Event> {
        recs.iter()
            .filter_map(|r| match r {
                crate::record::Record::Event(e)
                    if e.action == crate::event::Action::LoopDetached =>
                {
                    Some(e)
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_device_still_over_its_image_stays_aliased() {
        let d = TmpDir::new("loops-kept");
        let (mut maps, mut pipe, node, img) = aliased(&d);
        assert!(pipe.check_loops(&d.path("sys"), &mut maps).is_empty());
        // By a name the agent does not know (a hard link outside the store): same identity.
        std::fs::hard_link(&img, d.path("alias.img")).unwrap();
        let b = d.path("sys/0:0/loop/backing_file");
        std::fs::write(&b, format!("{}\n", d.path("alias.img").display())).unwrap();
        assert!(pipe.check_loops(&d.path("sys"), &mut maps).is_empty());
        // Deleted while attached: nothing to compare, the device still writes it.
        std::fs::write(&b, "/somewhere/vm.qcow2 (deleted)\n").unwrap();
        assert!(pipe.check_loops(&d.path("sys"), &mut maps).is_empty());
        assert!(pipe.enricher.loops.contains_key(&node));
        assert!(maps.files.contains(&node));
    }

    #[test]
    fn a_detached_device_ends_the_alias_with_one_record_on_the_image() {
        let d = TmpDir::new("loops-detached");
        let (mut maps, mut pipe, node, img) = aliased(&d);
        std::fs::remove_dir_all(d.path("sys/0:0/loop")).unwrap();
        let out = pipe.check_loops(&d.path("sys"), &mut maps);
        let e = ended(&out);
        assert_eq!(e.len(), 1, "{out:?}");
        let f = e[0].file.as_ref().unwrap();
        assert_eq!(
            f.path.as_ref().unwrap().0,
            img.as_os_str().as_encoded_bytes()
        );
        assert!(e[0]
            .detail
            .contains(&(crate::event::DetailKey::LoopWatch, "ended".to_string())));
        assert!(e[0].detail.contains(&(
            crate::event::DetailKey::LoopDevice,
            d.path("loop7").display().to_string()
        )));
        assert!(!pipe.enricher.loops.contains_key(&node));
        assert!(!maps.files.contains(&node), "the node is still watched");
        // Said once.
        assert!(pipe.check_loops(&d.path("sys"), &mut maps).is_empty());
    }

    #[test]
    fn a_device_over_another_file_ends_the_alias() {
        let d = TmpDir::new("loops-other");
        let (mut maps, mut pipe, node, _) = aliased(&d);
        std::fs::write(d.path("other"), b"").unwrap();
        std::fs::write(
            d.path("sys/0:0/loop/backing_file"),
            format!("{}\n", d.path("other").display()),
        )
        .unwrap();
        assert_eq!(ended(&pipe.check_loops(&d.path("sys"), &mut maps)).len(), 1);
        assert!(!maps.files.contains(&node));
    }

    /// Header lineage, but `KTHREAD` is a kernel thread (a child of kthreadd, no executable).
    struct WithKthread;
    const KTHREAD: u32 = 77_777;
    impl crate::enrich::lineage::Lineage for WithKthread {
        fn observe(&mut self, _raw: &crate::decode::RawEvent) {}
        fn process(
            &mut self,
            _tgid: u32,
            _tid: u32,
            _ts: u64,
            hdr: &snapmon_common::Header,
        ) -> crate::event::ProcessInfo {
            let mut p = crate::enrich::lineage::header_process(hdr);
            if hdr.tgid == KTHREAD {
                p.ppid = 2;
            }
            p
        }
    }

    /// The loop worker writes the image after the write through the device, and the agent
    /// may read that only after its tick found the device detached (a busy host, a lagging
    /// agent): the write is still the front writer's, not a kernel thread's.
    #[test]
    fn the_workers_write_read_after_the_detach_is_the_front_writers() {
        let d = TmpDir::new("loops-replay");
        let (mut maps, mut pipe, node, img) = aliased(&d);
        pipe.enricher.lineage = Box::new(WithKthread);
        let image = crate::paths::key_for(&img, &std::fs::metadata(&img).unwrap());
        let data = [0u8; 512];
        let front = 4_242;
        pipe.handle(
            &super::wire::raw_write(node, front, 1 << 20, 512, &data),
            &mut maps,
        );
        std::fs::remove_dir_all(d.path("sys/0:0/loop")).unwrap();
        assert_eq!(ended(&pipe.check_loops(&d.path("sys"), &mut maps)).len(), 1);
        let mut out = pipe.handle(
            &super::wire::raw_write(image, KTHREAD, 1 << 20, 512, &data),
            &mut maps,
        );
        out.extend(pipe.flush_held(&mut maps));
        let worker: Vec<_> = out
            .iter()
            .filter_map(|r| match r {
                crate::record::Record::Event(e) if e.seq > 1 => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(worker.len(), 1, "{out:?}");
        assert_eq!(worker[0].process.pid, front, "{:?}", worker[0]);
        assert!(
            worker[0]
                .detail
                .contains(&(crate::event::DetailKey::LoopRole, "worker".to_string())),
            "{:?}",
            worker[0]
        );
    }
}

/// Namespace operations through a symlinked store: matched in the kernel by the watched
/// names' last components (`WATCHED_LEAVES`), resolved here to the store's names.
#[cfg(test)]
mod linked {
    use super::*;
    use crate::{classify::qcow2::testutil::TmpDir, watch::MemMaps};
    use snapmon_common::{ns_flags, EventKind, NamespaceEvent, NsOp, PATH_LEN};
    use std::path::Path;

    /// The ids of the alerts among `out`.
    fn rule_ids(out: &[Record]) -> Vec<&str> {
        out.iter()
            .filter_map(|r| match r {
                Record::Alert(a) => Some(a.rule_id.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The record of `op` on `p1` (and `p2`) by pid `pid`, as the kernel sends it when the
    /// paths matched by their last component only (`leaf`, `leaf2`).
    fn ns(op: NsOp, pid: u32, p1: &Path, p2: Option<&Path>, flags: u16) -> Vec<u8> {
        // SAFETY: plain-data wire struct; all zeroes is a valid value.
        let mut ev: NamespaceEvent = unsafe { std::mem::zeroed() };
        ev.hdr.kind = EventKind::Namespace as u32;
        ev.hdr.backend = 1;
        ev.hdr.pid = pid;
        ev.hdr.tgid = pid;
        ev.hdr.uid = 65534;
        ev.hdr.ts_ns = crate::lineage::boottime_ns();
        ev.hdr.comm[..7].copy_from_slice(b"python3");
        ev.op = op as u16;
        ev.flags = flags;
        let put = |buf: &mut [u8; PATH_LEN], p: &Path| {
            let b = p.as_os_str().as_encoded_bytes();
            buf[..b.len()].copy_from_slice(b);
            b.len() as u16
        };
        ev.path1_len = put(&mut ev.path1, p1);
        if let Some(p) = p2 {
            ev.path2_len = put(&mut ev.path2, p);
        }
        // SAFETY: reading the struct's bytes.
        unsafe {
            std::slice::from_raw_parts(&ev as *const _ as *const u8, size_of::<NamespaceEvent>())
        }
        .to_vec()
    }

    fn pipe_on(store: &Path) -> (MemMaps, Pipeline) {
        let mut maps = MemMaps::default();
        let mut ws = WatchSet::default();
        ws.precious = crate::watch::Precious::from_policy(&Policy::embedded());
        ws.add_root(store, &mut maps).unwrap();
        let mut pipe = Pipeline::with_lineage(
            ws,
            &Policy::embedded(),
            Box::new(crate::enrich::lineage::HeaderOnly),
        );
        pipe.poll(Instant::now(), &mut maps);
        (maps, pipe)
    }

    /// `from` renamed to `to` on disk, and the record of it as the kernel sends it when the
    /// store's own names were used, handled.
    fn renamed_in_sight(pipe: &mut Pipeline, maps: &mut MemMaps, from: &Path, to: &Path) {
        std::fs::rename(from, to).unwrap();
        let r = ns(
            NsOp::Rename,
            9,
            from,
            Some(to),
            ns_flags::ABS_PREFIX_MATCH | ns_flags::PATH2_MATCH,
        );
        pipe.handle(&r, maps);
        pipe.poll(Instant::now(), maps);
    }

    fn path_of(f: Option<&crate::event::FileInfo>) -> Option<String> {
        f.and_then(|f| f.path.as_ref()).map(|p| p.display())
    }

    #[test]
    fn the_kernel_gets_the_last_components_of_image_names_only() {
        let d = TmpDir::new("leaves");
        let s = d.path("store");
        std::fs::create_dir(&s).unwrap();
        for n in ["vm1.qcow2", "notes.txt"] {
            std::fs::write(s.join(n), b"x").unwrap();
        }
        let (mut maps, mut pipe) = pipe_on(&s);
        let h = |n: &str| snapmon_common::leaf_hash(n.as_bytes());
        assert!(maps.leaves.contains(&h("vm1.qcow2")), "{:?}", maps.leaves);
        assert!(!maps.leaves.contains(&h("notes.txt")));
        // Its name gone (seen), it is withdrawn; a new image's name comes in.
        renamed_in_sight(
            &mut pipe,
            &mut maps,
            &s.join("vm1.qcow2"),
            &s.join("vm2.qcow2"),
        );
        assert!(!maps.leaves.contains(&h("vm1.qcow2")), "{:?}", maps.leaves);
        assert!(maps.leaves.contains(&h("vm2.qcow2")), "{:?}", maps.leaves);
    }

    /// The by-leaf fallback looks only at names with that last component (a flood of junk
    /// unlinks named like a watched image scanned every watched name before: 2.1 s of agent
    /// CPU for 20 000 by nobody with 5 000 images watched), and follows renames.
    #[test]
    fn gone_by_leaf_finds_the_vanished_name_among_those_of_its_last_component() {
        let d = TmpDir::new("byleaf");
        let s = d.path("store");
        for sub in ["a", "b"] {
            std::fs::create_dir_all(s.join(sub)).unwrap();
            std::fs::write(s.join(sub).join("vm1.qcow2"), b"x").unwrap();
        }
        for i in 0..50 {
            std::fs::write(s.join(format!("other-{i}.qcow2")), b"x").unwrap();
        }
        let (mut maps, mut pipe) = pipe_on(&s);
        let gone = |pipe: &Pipeline, leaf: &str| -> Vec<std::path::PathBuf> {
            let mut v: Vec<_> = pipe
                .enricher
                .watch
                .gone_by_leaf(std::ffi::OsStr::new(leaf))
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            v.sort();
            v
        };
        assert!(gone(&pipe, "vm1.qcow2").is_empty());
        // Removed behind the agent's back (as through a symlink since undone): found.
        std::fs::remove_file(s.join("b/vm1.qcow2")).unwrap();
        assert_eq!(gone(&pipe, "vm1.qcow2"), vec![s.join("b/vm1.qcow2")]);
        assert!(gone(&pipe, "other-1.qcow2").is_empty());
        // A rename the agent saw moves the name to its new last component.
        renamed_in_sight(
            &mut pipe,
            &mut maps,
            &s.join("a/vm1.qcow2"),
            &s.join("a/vm9.qcow2"),
        );
        std::fs::remove_file(s.join("a/vm9.qcow2")).unwrap();
        assert_eq!(gone(&pipe, "vm9.qcow2"), vec![s.join("a/vm9.qcow2")]);
        assert!(!gone(&pipe, "vm1.qcow2").contains(&s.join("a/vm1.qcow2")));
    }

    /// The finding: renames through a symlink to the store matched no watched prefix and
    /// went unheard, five images to `.locked` included.
    #[test]
    fn renames_through_a_symlinked_store_are_the_stores_and_a_mass_rename_alerts() {
        let d = TmpDir::new("linked");
        let s = d.path("store");
        std::fs::create_dir(&s).unwrap();
        for i in 0..5 {
            std::fs::write(s.join(format!("vm{i}.qcow2")), b"QFI\xfb").unwrap();
        }
        let via = d.path("via");
        std::os::unix::fs::symlink(&s, &via).unwrap();
        let (mut maps, mut pipe) = pipe_on(&s);
        let mut out = Vec::new();
        for i in 0..5 {
            let (a, b) = (format!("vm{i}.qcow2"), format!("vm{i}.qcow2.locked"));
            std::fs::rename(via.join(&a), via.join(&b)).unwrap();
            let r = ns(
                NsOp::Rename,
                4242,
                &via.join(&a),
                Some(&via.join(&b)),
                ns_flags::LEAF_MATCH,
            );
            out.extend(pipe.handle(&r, &mut maps));
        }
        let evs: Vec<&Event> = out
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) if e.action == crate::event::Action::Rename => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(evs.len(), 5, "{out:?}");
        let e = evs[0];
        assert_eq!(
            path_of(e.file.as_ref()),
            Some(s.join("vm0.qcow2").display().to_string())
        );
        assert_eq!(
            path_of(e.target.as_ref()),
            Some(s.join("vm0.qcow2.locked").display().to_string())
        );
        assert_eq!(
            e.detail_value(crate::vocab::DetailKey::LinkPath),
            Some(
                format!(
                    "{},{}",
                    via.join("vm0.qcow2").display(),
                    via.join("vm0.qcow2.locked").display()
                )
                .as_str()
            )
        );
        let rules = rule_ids(&out);
        assert!(rules.contains(&"SM-R001"), "{rules:?}");
    }

    #[test]
    fn a_name_like_an_images_elsewhere_is_not_the_image() {
        let d = TmpDir::new("leaf-elsewhere");
        let s = d.path("store");
        let other = d.path("other");
        std::fs::create_dir(&s).unwrap();
        std::fs::create_dir(&other).unwrap();
        std::fs::write(s.join("vm1.qcow2"), b"QFI\xfb").unwrap();
        std::fs::write(other.join("vm1.qcow2"), b"QFI\xfb").unwrap();
        let (mut maps, mut pipe) = pipe_on(&s);
        std::fs::remove_file(other.join("vm1.qcow2")).unwrap();
        let r = ns(
            NsOp::Unlink,
            9,
            &other.join("vm1.qcow2"),
            None,
            ns_flags::LEAF_MATCH,
        );
        assert!(pipe.handle(&r, &mut maps).is_empty());
        assert!(pipe.enricher.watch.key_at(&s.join("vm1.qcow2")).is_some());
    }

    /// The symlink removed before the agent looks: an unlink is matched to the one watched
    /// name of that last component that is gone.
    #[test]
    fn an_unlink_whose_symlink_is_gone_too_is_matched_to_the_gone_name() {
        let d = TmpDir::new("leaf-gone");
        let s = d.path("store");
        std::fs::create_dir(&s).unwrap();
        std::fs::write(s.join("vm1.qcow2"), b"QFI\xfb").unwrap();
        let via = d.path("via");
        std::os::unix::fs::symlink(&s, &via).unwrap();
        let (mut maps, mut pipe) = pipe_on(&s);
        std::fs::remove_file(via.join("vm1.qcow2")).unwrap();
        std::fs::remove_file(&via).unwrap();
        let r = ns(
            NsOp::Unlink,
            9,
            &via.join("vm1.qcow2"),
            None,
            ns_flags::LEAF_MATCH,
        );
        let out = pipe.handle(&r, &mut maps);
        let e = out
            .iter()
            .find_map(|r| match r {
                Record::Event(e) if e.action == crate::event::Action::Unlink => Some(e),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no unlink: {out:?}"));
        assert_eq!(
            path_of(e.file.as_ref()),
            Some(s.join("vm1.qcow2").display().to_string())
        );
        assert!(pipe.enricher.watch.key_at(&s.join("vm1.qcow2")).is_none());
    }

    /// A fanotify event's record (`dirwatch`): a hidden name renamed or made in the store
    /// through another name of it is the store's, said `via: fanotify`, and SM-H001; a name
    /// the syscall route reported is noted, so the fanotify route leaves it alone.
    #[test]
    fn fanotify_records_are_the_stores_names_and_the_syscall_routes_are_noted() {
        let d = TmpDir::new("fanotify");
        let s = d.path("store");
        std::fs::create_dir(&s).unwrap();
        let (mut maps, mut pipe) = pipe_on(&s);
        pipe.recent.on = true;
        std::fs::write(s.join(".x"), b"x").unwrap();
        std::fs::create_dir(s.join(".d")).unwrap();
        let mut hdr: snapmon_common::Header = unsafe { std::mem::zeroed() };
        (hdr.kind, hdr.backend, hdr.pid, hdr.tgid, hdr.uid) =
            (EventKind::Namespace as u32, 1, 4343, 4343, 65534);
        hdr.ts_ns = crate::lineage::boottime_ns();
        let mut out = pipe.handle(
            &crate::dirwatch::record(NsOp::Rename, &s.join(".x"), hdr),
            &mut maps,
        );
        out.extend(pipe.handle(
            &crate::dirwatch::record(NsOp::Mkdir, &s.join(".d"), hdr),
            &mut maps,
        ));
        out.extend(pipe.flush_held(&mut maps));
        let evs: Vec<&Event> = out
            .iter()
            .filter_map(|r| match r {
                Record::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(evs.len(), 2, "{out:?}");
        assert_eq!(
            path_of(evs[0].target.as_ref()),
            Some(s.join(".x").display().to_string())
        );
        assert_eq!(path_of(evs[0].file.as_ref()), None);
        assert_eq!(
            path_of(evs[1].file.as_ref()),
            Some(s.join(".d").display().to_string())
        );
        for e in &evs {
            assert_eq!(
                e.detail_value(crate::vocab::DetailKey::Via),
                Some("fanotify")
            );
            assert_eq!(e.process.pid, 4343);
        }
        let rules = rule_ids(&out);
        assert_eq!(rules, ["SM-H001", "SM-H001"], "{out:?}");
        // The syscall route's rename by the store's own path: its name is noted.
        let now = Instant::now();
        assert!(!pipe
            .recent
            .seen(s.join(".y").as_os_str().as_encoded_bytes(), now));
        let outside = d.path("y-src");
        std::fs::write(&outside, b"y").unwrap();
        renamed_in_sight(&mut pipe, &mut maps, &outside, &s.join(".y"));
        assert!(pipe
            .recent
            .seen(s.join(".y").as_os_str().as_encoded_bytes(), Instant::now()));
    }
}
