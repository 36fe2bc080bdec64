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
    watch::{WatchMaps, WatchSet},
};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StageStats {
    pub received: u64,
    pub decoded: u64,
    pub decode_errors: u64,
    pub events: u64,
    pub alerts: u64,
}

pub struct Pipeline {
    seq: u64,
    pub enricher: Enricher,
    pub classifier: Classifier,
    pub stats: StageStats,
    decode_errs: BTreeMap<&'static str, u64>,
}

impl Pipeline {
    pub fn new(watch: WatchSet, policy: &Policy) -> Self {
        Self::with_lineage(watch, policy, crate::lineage_bridge::default_lineage())
    }

    pub fn with_lineage(watch: WatchSet, policy: &Policy, lineage: Box<dyn Lineage>) -> Self {
        let classifier = Classifier::new(policy);
        Pipeline {
            seq: 0,
            enricher: Enricher::new(watch, lineage),
            classifier,
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
        self.stats.events += 1;
        vec![Record::Event(ev)]
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
        })
    }
}
