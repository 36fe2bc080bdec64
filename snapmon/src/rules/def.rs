//! Rules stage, a rule's definition: its stable id, name, default severity and settings, ATT&CK
//! techniques, the event kinds it is indexed by, and its evaluation.

use super::ctx::{Ctx, Hit, Kind};
use crate::record::Severity;

pub struct RuleDef {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub technique: &'static [&'static str],
    pub kinds: &'static [Kind],
    /// Rate rules: default (threshold, window seconds).
    pub rate: Option<(u32, u64)>,
    /// Sequence rules with a timeout: default window seconds.
    pub windowed: bool,
    pub default_window: u64,
    pub default_enabled: bool,
    /// When this rule fires on an event, these (less specific) rules are dropped for it.
    pub supersedes: &'static [&'static str],
    pub eval: fn(&mut Ctx) -> Option<Hit>,
    /// What the rule watches, for docs/rules.md and `snapmon policy check`.
    pub summary: &'static str,
}
