//! Records the pipeline hands to sinks: events, alerts, agent state and loss metrics.

use serde::Serialize;

use crate::event::Event;

pub use snapmon_formats::Severity;

#[derive(Debug, Clone)]
pub struct Alert {
    pub rule_id: String,
    pub rule_name: String,
    pub severity: Severity,
    pub technique: Vec<String>,
    pub message: String,
    /// The event that completed the rule (earlier ones are referenced by `related_seq`).
    pub event: Event,
    pub related_seq: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateRecord {
    /// `started`, `stopped`, `reloaded`, `reload_failed`.
    pub action: &'static str,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricRecord {
    /// `lost`, `stats`.
    pub action: &'static str,
    pub detail: serde_json::Value,
}

#[allow(
    clippy::large_enum_variant,
    reason = "events are the bulk of records: boxing them would cost an allocation each"
)]
#[derive(Debug, Clone)]
pub enum Record {
    Event(Event),
    Alert(Box<Alert>),
    State(StateRecord),
    Metric(MetricRecord),
}
