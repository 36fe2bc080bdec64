//! Pipeline: the pure part of the flow, bytes → decode → enrich → classify → rules → records.
//! No kernel access here, so `replay` and tests drive exactly what the live agent runs.

use std::collections::BTreeMap;

use serde_json::json;

use crate::{
    classify::Classifier,
    config::Policy,
    decode::decode,
    enrich::Enricher,
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
}

pub struct Pipeline {
    seq: u64,
    pub enricher: Enricher,
    pub classifier: Classifier,
    /// Detection engine; replaced as a whole by [`Pipeline::reload`].
    pub rules: Engine,
    pub stats: StageStats,
    decode_errs: BTreeMap<&'static str, u64>,
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
        let path = ev
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.as_path());
        ev.classification = self.classifier.classify(&ev, path.as_deref());
        for (key, f) in self.classifier.take_filter_updates() {
            if let Err(e) = maps.set_write_filter(key, f.as_ref()) {
                // A full map only means more is reported; count it, keep going.
                self.stats.filter_errors += 1;
                let _ = e;
            }
        }
        self.stats.events += 1;
        // Rules see events only, never alerts: no rule can fire on an alert.
        let alerts = self.rules.process(&ev);
        self.stats.alerts += alerts.len() as u64;
        let mut out = Vec::with_capacity(1 + alerts.len());
        out.push(Record::Event(ev));
        out.extend(alerts.into_iter().map(|a| Record::Alert(Box::new(a))));
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
