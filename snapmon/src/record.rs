//! Records the pipeline hands to sinks: events, alerts, agent state and loss metrics.

use serde::Serialize;

use crate::event::Event;

/// Severity ladder with ECS `event.severity` numbers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn ecs(self) -> u8 {
        match self {
            // Elastic's detection ladder; info sits below it.
            Severity::Info => 0,
            Severity::Low => 21,
            Severity::Medium => 47,
            Severity::High => 73,
            Severity::Critical => 99,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

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
