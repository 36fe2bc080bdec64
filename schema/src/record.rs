//! Typed views of snapmon's ECS records (docs/output.md), for tests that read records back:
//! a field is named once here instead of indexed by hand (`v["rule"]["id"]`) in each test.
//!
//! Lenient on purpose: every section but `event` may be missing and unknown fields are
//! ignored, so one view reads events, alerts, state and metric records alike. The strict
//! consumer contract (unknown fields are errors) is snapmon's `sink::json` typed test.

use serde::Deserialize;
use serde_json::Value;

/// `event.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Event,
    Alert,
    State,
    Metric,
    /// A kind this list does not know.
    #[serde(other)]
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Alert => "alert",
            Kind::State => "state",
            Kind::Metric => "metric",
            Kind::Other => "other",
        }
    }
}

/// `snapmon.severity`, in order: the agent's own ladder.
pub use snapmon_formats::Severity;

/// One ECS record.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub event: Event,
    pub rule: Option<Rule>,
    pub process: Option<Process>,
    pub file: Option<File>,
    pub message: Option<String>,
    #[serde(default)]
    pub snapmon: Snapmon,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub kind: Kind,
    /// The operation (`pwrite64`, `rename` …), or a state or metric record's name.
    pub action: Option<String>,
    pub dataset: Option<String>,
    pub id: Option<String>,
    pub sequence: Option<u64>,
    /// ECS `event.severity` (alerts): 0, 21, 47, 73, 99.
    pub severity: Option<u8>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rule {
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Process {
    pub pid: Option<u32>,
    pub name: Option<String>,
    pub executable: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct File {
    pub path: Option<String>,
    pub name: Option<String>,
    pub inode: Option<String>,
    pub device: Option<String>,
}

/// The `snapmon` section (the parts tests read by name; the rest stays JSON).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Snapmon {
    pub schema_version: Option<u32>,
    pub severity: Option<Severity>,
    pub write: Option<Write>,
    /// A rename's or link's destination.
    pub destination: Option<Destination>,
    /// The raw path in hex, when it is not UTF-8 or was escaped.
    pub file_path_hex: Option<String>,
    /// Free-form detail (`loop_device`, `overlay_path`, `write_op` …).
    #[serde(default)]
    pub detail: Value,
    #[serde(default)]
    pub classification: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Write {
    pub offset: i64,
    pub length: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Destination {
    pub path: Option<String>,
}

impl Record {
    /// The view of a parsed line (an error names what does not fit).
    pub fn of(v: &Value) -> Result<Record, serde_json::Error> {
        Record::deserialize(v)
    }

    /// The view of one rendered line.
    pub fn parse(line: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(line)
    }

    pub fn rule_id(&self) -> Option<&str> {
        self.rule.as_ref().map(|r| r.id.as_str())
    }

    pub fn action(&self) -> Option<&str> {
        self.event.action.as_deref()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref()?.pid
    }

    pub fn path(&self) -> Option<&str> {
        self.file.as_ref()?.path.as_deref()
    }

    /// The destination of a rename or link.
    pub fn dest(&self) -> Option<&str> {
        self.snapmon.destination.as_ref()?.path.as_deref()
    }

    /// Is it about `p`: its `file.path`, or the destination of its rename or link?
    pub fn is_about(&self, p: &str) -> bool {
        self.path() == Some(p) || self.dest() == Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alert_reads_by_name() {
        let v = json!({
            "event": {"kind": "alert", "action": "pwrite64", "severity": 99, "x": 1},
            "rule": {"id": "SM-Q002", "name": "n"},
            "process": {"pid": 7, "name": "python3"},
            "file": {"path": "/s/vm.qcow2"},
            "snapmon": {"severity": "critical", "detail": {"loop_device": "/dev/loop0"}},
        });
        let r = Record::of(&v).unwrap();
        assert_eq!(r.event.kind, Kind::Alert);
        assert_eq!(r.rule_id(), Some("SM-Q002"));
        assert_eq!(r.pid(), Some(7));
        assert!(r.is_about("/s/vm.qcow2"));
        assert_eq!(r.snapmon.severity, Some(Severity::Critical));
        assert!(r.snapmon.severity > Some(Severity::High));
        assert_eq!(r.snapmon.detail["loop_device"], "/dev/loop0");
    }

    #[test]
    fn a_state_record_reads_too_and_an_unknown_severity_does_not() {
        let r = Record::parse(br#"{"event":{"kind":"state","action":"started"}}"#).unwrap();
        assert_eq!((r.event.kind, r.action()), (Kind::State, Some("started")));
        assert!(r.rule.is_none() && r.pid().is_none());
        let bad = json!({"event": {"kind": "alert"}, "snapmon": {"severity": "severe"}});
        assert!(Record::of(&bad).is_err());
    }
}
