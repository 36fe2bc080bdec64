//! Which records an output takes (`[[sink]]` min_severity, alerts_only, rules, path_contains).

use super::config::SinkConfig;
use crate::record::{Record, Severity};

/// Which records an output takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub min_severity: Option<Severity>,
    pub alerts_only: bool,
    pub rules: Vec<String>,
    pub path_contains: Vec<String>,
}

impl Filter {
    /// What a configured sink takes.
    pub fn of(c: &SinkConfig) -> Filter {
        let o = c.options();
        Filter {
            min_severity: o.min_severity,
            alerts_only: o.alerts_only,
            rules: o.rules.clone(),
            path_contains: o.path_contains.clone(),
        }
    }

    pub fn accepts(&self, r: &Record) -> bool {
        match r {
            Record::Alert(a) => {
                self.min_severity.is_none_or(|m| a.severity >= m)
                    && (self.rules.is_empty() || self.rules.contains(&a.rule_id))
                    && self.path_ok(&a.event)
            }
            Record::Event(e) => {
                !self.alerts_only
                    && self.min_severity.is_none()
                    && self.rules.is_empty()
                    && self.path_ok(e)
            }
            Record::State(_) | Record::Metric(_) => true,
        }
    }
    fn path_ok(&self, e: &crate::event::Event) -> bool {
        if self.path_contains.is_empty() {
            return true;
        }
        let p = e
            .file
            .as_ref()
            .and_then(|f| f.path.as_ref())
            .map(|p| p.display())
            .unwrap_or_default();
        self.path_contains.iter().any(|x| p.contains(x.as_str()))
    }
}
