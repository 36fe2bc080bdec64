//! Pipeline: the pure part of the flow, bytes → decode → enrich → classify → rules → records.
//! No kernel access here, so `replay` and tests drive exactly what the live agent runs.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use serde_json::json;

use crate::{
    classify::{recheck::Hold, Classifier, Verdict},
    config::Policy,
    decode::decode,
    enrich::Enricher,
    event::Event,
    lineage_bridge::Lineage,
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
    deleted_exe: crate::lineage_bridge::DeletedExe,
}

impl Pipeline {
    pub fn new(watch: WatchSet, policy: &Policy) -> Self {
        Self::with_lineage(watch, policy, crate::lineage_bridge::default_lineage())
    }

    pub fn with_lineage(watch: WatchSet, policy: &Policy, lineage: Box<dyn Lineage>) -> Self {
        let classifier = Classifier::new(policy);
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
        }
    }

    /// One ring-buffer record in, zero or more output records out.
    pub fn handle(&mut self, bytes: &[u8], maps: &mut dyn WatchMaps) -> Vec<Record> {
        self.stats.received += 1;
        let raw = match decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.stats.decode_errors += 1;
                *self.decode_errs.entry(e.cause()).or_default() += 1;
                return Vec::new();
            }
        };
        self.stats.decoded += 1;
        let Some(mut ev) = self.enricher.enrich(&raw, maps) else {
            return Vec::new();
        };
        self.seq += 1;
        ev.seq = self.seq;
        let now = Instant::now();
        // Held events on the same file go first, judged as they stand: this event must
        // not be diffed against a shadow they have not updated yet.
        let mut out = self.complete_held(now, Some(&ev), maps);
        let path = ev
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.as_path());
        match self.classifier.judge(&ev, path.as_deref(), now) {
            Verdict::Now(c) => {
                ev.classification = c;
                self.finish(ev, now, maps, &mut out);
            }
            Verdict::Hold(h) => {
                self.stats.held += 1;
                self.held.push_back((ev, h));
                if self.held.len() > crate::classify::recheck::MAX_HELD {
                    if let Some((ev, h)) = self.held.pop_front() {
                        self.complete_one(ev, h, maps, &mut out);
                    }
                }
            }
        }
        out
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
            .is_some_and(|c| c.format != "file")
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
        let done = self.classifier.complete(&ev, path.as_deref(), h);
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
        let touches = |h: &Hold| {
            let Some(ev) = next else { return false };
            let keys = h.keys();
            let paths = h.paths();
            [ev.file.as_ref(), ev.target.as_ref()]
                .into_iter()
                .flatten()
                .any(|f| {
                    (f.ino != 0 && keys.contains(&(f.dev, f.ino)))
                        || f.path
                            .as_ref()
                            .is_some_and(|p| paths.contains(&p.as_path().as_path()))
                })
        };
        let mut keep = VecDeque::with_capacity(self.held.len());
        let held = std::mem::take(&mut self.held);
        for (ev, mut h) in held {
            let due = h.next_check <= now;
            let go = touches(&h) || now >= h.deadline || (due && h.landed(now));
            if go {
                self.complete_one(ev, h, maps, &mut out);
            } else {
                if due {
                    h.next_check = now + crate::classify::recheck::HOLD_STEP;
                }
                keep.push_back((ev, h));
            }
        }
        // Events held while completing (none today) keep their place behind the rest.
        keep.extend(std::mem::take(&mut self.held));
        self.held = keep;
        out
    }

    /// Work that is due without an event to carry it: held events whose syscall landed
    /// or ran out of time, and files looked at again (shared mappings, late fills).
    pub fn poll(&mut self, now: Instant, maps: &mut dyn WatchMaps) -> Vec<Record> {
        let mut out = self.complete_held(now, None, maps);
        for mut ev in self.classifier.rechecks_due(now) {
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
        match (held, self.classifier.next_recheck()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
    /// any error the running rules (and their state) stay as they were.
    pub fn reload(&mut self, policy: Policy) -> Result<(), String> {
        let e = Engine::build(&policy, &HostResolver, Box::new(HostLocalTime))?;
        self.rules = e;
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
        })
    }
}

/// Cost of one relevant event through the whole userspace path, stage by stage:
/// `cargo test --release -p snapmon pipeline_cost -- --ignored --nocapture`.
#[cfg(test)]
mod cost {
    use std::time::Instant;

    use snapmon_common::{EventKind, FileWriteEvent, WriteOp, DATA_LEN};

    use super::*;
    use crate::watch::MemMaps;

    fn raw_write(key: snapmon_common::FileKey, pid: u32, data: &[u8]) -> Vec<u8> {
        // SAFETY: plain-data wire struct; all zeroes is a valid value.
        let mut ev: FileWriteEvent = unsafe { std::mem::zeroed() };
        ev.hdr.kind = EventKind::FileWrite as u32;
        ev.hdr.backend = 1;
        ev.hdr.pid = pid;
        ev.hdr.tgid = pid;
        // Stamped now, after the process started, as the kernel would.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ev.hdr.ts_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        ev.hdr.comm[..6].copy_from_slice(b"python");
        ev.op = WriteOp::Pwrite as u16;
        ev.fd = 3;
        ev.file = key;
        ev.offset = 60;
        ev.len = data.len() as u64;
        ev.size = 196_616;
        ev.data_len = data.len().min(DATA_LEN) as u32;
        ev.data[..data.len()].copy_from_slice(data);
        // SAFETY: reading the struct's bytes.
        unsafe {
            std::slice::from_raw_parts(
                &ev as *const _ as *const u8,
                std::mem::size_of::<FileWriteEvent>(),
            )
        }
        .to_vec()
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
        let key = crate::watch::key_for(&img, &md);
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
