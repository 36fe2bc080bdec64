//! Rules stage, the engine: builds the enabled rules from a policy, indexes them by event
//! kind, runs them over each event, and turns their hits into alerts (exceptions, maintenance
//! windows, dedupe, supersession, sequence timeouts).

use std::collections::HashMap;

use super::{
    ctx::{dedupe_fresh, dedupe_key, Ctx, Detection, Hit, Kind, State, Trust, KINDS, STATE_CAP},
    def::RuleDef,
    family::kernel,
    glob::Glob,
    helpers::file_path,
    policy::{self, ActorGroup, Exception, Resolver},
    qemu_tools, registry,
    state::Bounded,
    window::{HostLocalTime, LocalTime, Window},
};
use crate::{
    config::Policy,
    event::{Action, Event},
    record::{Alert, Severity},
};

struct RuleRt {
    def: &'static RuleDef,
    severity: Severity,
    severity_set: bool,
    threshold: u32,
    window_s: u64,
}

impl RuleRt {
    /// The same rule with the same settings: what it has counted still means the same.
    fn same_as(&self, o: &RuleRt) -> bool {
        self.def.id == o.def.id
            && (
                self.severity,
                self.severity_set,
                self.threshold,
                self.window_s,
            ) == (o.severity, o.severity_set, o.threshold, o.window_s)
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct EngineStats {
    pub evaluated: u64,
    pub alerts: u64,
    pub excepted: u64,
    pub in_window: u64,
    pub deduped: u64,
    pub superseded: u64,
}

pub struct Engine {
    rules: Vec<RuleRt>,
    index: [Vec<usize>; KINDS],
    actors: Vec<ActorGroup>,
    exceptions: Vec<Exception>,
    windows: Vec<Window>,
    det: Detection,
    local: Box<dyn LocalTime>,
    st: State,
    /// Trusted paths missing on this host, pins that did not match …
    pub warnings: Vec<String>,
    pub stats: EngineStats,
    /// The agent's own pid: it never alerts on itself (no loops through its own output).
    own_pid: u32,
    /// The trust of the process build (`ProcessInfo::revision`) judged last: a writer's
    /// events come in runs, and a build's fields, so its trust, do not change.
    trust_memo: Option<(u64, std::sync::Arc<Trust>)>,
    /// `process`'s hits of one event, kept between events for its allocation.
    fired: Vec<(usize, Hit)>,
}

impl Engine {
    /// Build from a policy. Validation errors are errors; missing trusted tools are warnings.
    pub fn build(
        p: &Policy,
        resolver: &dyn Resolver,
        local: Box<dyn LocalTime>,
    ) -> Result<Engine, String> {
        policy::validate(&p.rules_policy()).map_err(|e| e.msg)?;
        let (actors, warnings) = policy::build_actors(&p.actors, resolver);
        let set: HashMap<&str, &policy::RuleSettings> = p
            .rules
            .iter()
            .map(|r| (r.id.get_ref().as_str(), r))
            .collect();
        let mut rules = Vec::new();
        let mut index: [Vec<usize>; KINDS] = Default::default();
        for def in registry::RULES {
            let s = set.get(def.id);
            if !s.and_then(|s| s.enabled).unwrap_or(def.default_enabled) {
                continue;
            }
            let (t, w) = def.rate.unwrap_or((1, def.default_window));
            let rt = RuleRt {
                def,
                severity: s.and_then(|s| s.severity).unwrap_or(def.severity),
                severity_set: s.is_some_and(|s| s.severity.is_some()),
                threshold: s
                    .and_then(|s| s.threshold.as_ref())
                    .map(|t| *t.get_ref())
                    .unwrap_or(t),
                window_s: s
                    .and_then(|s| s.window_seconds.as_ref())
                    .map(|w| *w.get_ref())
                    .unwrap_or(w),
            };
            for k in def.kinds {
                index[k.idx()].push(rules.len());
            }
            rules.push(rt);
        }
        let d = &p.detection;
        let det = Detection {
            image_extensions: d.image_extensions.clone(),
            volatile: d
                .volatile_paths
                .iter()
                .filter_map(|g| Glob::new(g.get_ref()).ok())
                .collect(),
            ransom: d
                .ransom_note_names
                .iter()
                .filter_map(|g| Glob::new_nocase(g.get_ref()).ok())
                .collect(),
            hidden_extensions: d.hidden_extensions.clone(),
            suspicious: d
                .suspicious_ancestors
                .iter()
                .filter_map(|g| Some((Glob::new(g.get_ref()).ok()?, g.get_ref().contains('/'))))
                .collect(),
            admin_users: d.admin_users.clone(),
            dedupe_ns: d.dedupe_seconds as i128 * 1_000_000_000,
        };
        Ok(Engine {
            rules,
            index,
            actors,
            exceptions: p.exceptions.iter().map(Exception::compile).collect(),
            windows: p.windows.iter().filter_map(Window::compile).collect(),
            det,
            local,
            st: State::new(),
            warnings,
            stats: EngineStats::default(),
            own_pid: std::process::id(),
            trust_memo: None,
            fired: Vec::new(),
        })
    }

    /// Take over a running engine's state on reload: the rate and sequence windows and
    /// dedupe of every rule whose settings did not change, so a SIGHUP between an attack's
    /// steps resets nothing. A rule added, dropped or changed starts afresh; counters carry on.
    pub fn inherit(&mut self, old: Engine) {
        let mut st = old.st;
        let kept = |r: &RuleRt| self.rules.iter().position(|n| n.same_as(r));
        for r in &old.rules {
            if kept(r).is_none() {
                st.forget(r.def.id);
            }
        }
        for r in &self.rules {
            if !old.rules.iter().any(|o| o.same_as(r)) {
                st.forget(r.def.id);
            }
        }
        // Dedupe is keyed by rule index, which enabling or disabling a rule shifts.
        let remap: Vec<Option<usize>> = old.rules.iter().map(kept).collect();
        let mut dedupe = Bounded::new(STATE_CAP);
        for ((i, pid, dev, ino), t) in
            std::mem::replace(&mut st.dedupe, Bounded::new(1)).into_ordered()
        {
            if let Some(Some(n)) = remap.get(i) {
                dedupe.insert((*n, pid, dev, ino), t);
            }
        }
        st.dedupe = dedupe;
        self.st = st;
        self.stats = old.stats;
    }

    /// An engine with no rules (used when none could be built).
    pub fn empty() -> Engine {
        empty_engine()
    }

    pub fn enabled_rules(&self) -> Vec<&'static str> {
        self.rules.iter().map(|r| r.def.id).collect()
    }

    pub fn state_sizes(&self) -> serde_json::Value {
        self.st.sizes()
    }

    #[cfg(test)]
    pub fn set_own_pid(&mut self, pid: u32) {
        self.own_pid = pid;
    }

    /// Executable identities whose writes the kernel may filter, with their
    /// `filter_actor` bits. Only groups the format rules trust by identity alone qualify:
    /// lineage, user, unit and container constraints cannot be checked in the kernel, so a
    /// constrained group is never filtered (its writes all reach the rules).
    pub fn filter_writers(&self) -> Vec<(snapmon_common::FileKey, u32)> {
        use snapmon_common::filter_actor;
        let mut out: std::collections::BTreeMap<(u32, u64), u32> = Default::default();
        for g in &self.actors {
            let bit = match g.name.as_str() {
                "qemu" => filter_actor::QEMU,
                "lvm" => filter_actor::LVM,
                _ => continue,
            };
            if g.constrained() {
                continue;
            }
            for id in g.ids.keys() {
                *out.entry(*id).or_default() |= bit;
            }
        }
        out.into_iter()
            .map(|((dev, ino), bits)| (snapmon_common::FileKey { dev, _pad: 0, ino }, bits))
            .collect()
    }

    pub fn trust_of(&self, p: &crate::event::ProcessInfo) -> Trust {
        let mut groups: Vec<String> = self
            .actors
            .iter()
            .filter(|g| g.trusts(p))
            .map(|g| g.name.clone())
            .collect();
        // Which QEMU tool the `qemu` identity is, by the trusted path it resolved from.
        let tool = self
            .actors
            .iter()
            .filter(|g| g.name == "qemu")
            .find_map(|g| g.ids.get(&(p.exe_dev, p.exe_ino)))
            .and_then(|path| qemu_tools::Tool::of_path(path));
        let mut qemu_tool = None;
        let block_tool = tool.filter(|t| qemu_tools::BLOCK_TOOLS.contains(t));
        if let Some(t) = block_tool {
            let args: Vec<&[u8]> = p.args.iter().map(|a| a.0.as_slice()).collect();
            if qemu_tools::opens_raw(&args) {
                // Raw bytes of the image, not the qcow2 driver: a header edit like any other.
                groups.retain(|g| g != "qemu");
            } else if groups.iter().any(|g| g == "qemu") {
                qemu_tool = Some(t);
            }
        }
        Trust {
            groups,
            identity: self
                .actors
                .iter()
                .any(|g| g.has_identity(p.exe_dev, p.exe_ino)),
            qemu_tool,
            block_tool,
        }
    }

    /// [`Engine::trust_of`], remembered for the last build judged: an unnumbered process
    /// (revision 0, built or changed elsewhere) is judged afresh every time.
    pub(crate) fn trust_for(&mut self, p: &crate::event::ProcessInfo) -> std::sync::Arc<Trust> {
        if let Some((rev, t)) = &self.trust_memo {
            if p.revision != 0 && *rev == p.revision {
                return t.clone();
            }
        }
        let t = std::sync::Arc::new(self.trust_of(p));
        if p.revision != 0 {
            self.trust_memo = Some((p.revision, t.clone()));
        }
        t
    }

    /// Evaluate one event. Alerts come back in rule order, after any timed-out sequences.
    pub fn process(&mut self, ev: &Event) -> Vec<Alert> {
        let mut out = self.expire(ev.ts_unix_ns);
        if ev.process.pid == self.own_pid && self.own_pid != 0 {
            return out;
        }
        self.stats.evaluated += 1;
        let kind = Kind::of(ev.action);
        // Take the pieces apart so a rule can borrow state mutably while reading the rest.
        let trust = self.trust_for(&ev.process);
        // Reused: a rule fires (if only as a deduped repeat) on most records of a flood.
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        {
            let st = &mut self.st;
            observe_into(st, ev, &trust);
            for &i in &self.index[kind.idx()] {
                let r = &self.rules[i];
                let mut ctx = Ctx {
                    ev,
                    trust: &trust,
                    det: &self.det,
                    st,
                    threshold: r.threshold,
                    window_ns: r.window_s as i128 * 1_000_000_000,
                    windows: &self.windows,
                    local: self.local.as_ref(),
                    rule: i,
                    dedupes: r.def.rate.is_none(),
                };
                if let Some(h) = (r.def.eval)(&mut ctx) {
                    fired.push((i, h));
                }
            }
        }
        // Most specific wins on one event.
        let superseded: Vec<&str> = fired
            .iter()
            .flat_map(|(i, _)| self.rules[*i].def.supersedes.iter().copied())
            .collect();
        let before = fired.len();
        fired.retain(|(i, _)| !superseded.contains(&self.rules[*i].def.id));
        self.stats.superseded += (before - fired.len()) as u64;
        for (i, h) in fired.drain(..) {
            if let Some(a) = self.finish(i, ev, h, &trust) {
                out.push(a);
            }
        }
        self.fired = fired;
        out
    }

    /// Sequence timeouts (freeze without thaw). Called on every event; `Pipeline::tick` lets
    /// the agent call it when the host is quiet.
    pub fn expire(&mut self, now: i128) -> Vec<Alert> {
        // Called per event: nothing frozen, nothing to look up.
        if self.st.freezes.is_empty() {
            return Vec::new();
        }
        let Some(i) = self.rules.iter().position(|r| r.def.id == "SM-K004") else {
            return Vec::new();
        };
        let w = self.rules[i].window_s as i128 * 1_000_000_000;
        let mut due = Vec::new();
        self.st.freezes.retain(|_, ev| {
            if now - ev.ts_unix_ns > w {
                due.push(ev.as_ref().clone());
                false
            } else {
                true
            }
        });
        let mut out = Vec::new();
        for ev in due {
            let h = Hit::msg(kernel::k004_message(&ev, self.rules[i].window_s));
            let trust = self.trust_of(&ev.process);
            if let Some(a) = self.finish(i, &ev, h, &trust) {
                out.push(a);
            }
        }
        out
    }

    fn excepted(&self, id: &str, ev: &Event, trust: &Trust) -> bool {
        let (p, t) = (file_path(ev.file.as_ref()), file_path(ev.target.as_ref()));
        self.exceptions.iter().any(|x| {
            x.rules.iter().any(|r| r == id)
                && x.actor.as_ref().is_none_or(|a| trust.by(a))
                && x.executable
                    .as_ref()
                    .is_none_or(|g| g.matches(&ev.process.executable.0))
                && (x.actions.is_empty() || x.actions.contains(&ev.action))
                && x.target
                    .as_ref()
                    .is_none_or(|g| g.matches(p) || (!t.is_empty() && g.matches(t)))
        })
    }

    fn finish(&mut self, i: usize, ev: &Event, h: Hit, trust: &Trust) -> Option<Alert> {
        let r = &self.rules[i];
        let id = r.def.id;
        if self.excepted(id, ev, trust) {
            self.stats.excepted += 1;
            return None;
        }
        // Local time only when a window could suppress this rule: most hits have none.
        let mut suppressing = self
            .windows
            .iter()
            .filter(|w| w.suppress.iter().any(|s| s == id))
            .peekable();
        let suppressed = suppressing.peek().is_some() && {
            let (wday, minute) = self
                .local
                .local(ev.ts_unix_ns.div_euclid(1_000_000_000) as i64);
            suppressing.any(|w| w.contains(wday, minute))
        };
        if suppressed {
            self.stats.in_window += 1;
            return None;
        }
        // Rate rules already aggregate; everything else alerts once per actor and file.
        if r.def.rate.is_none() {
            let key = dedupe_key(i, ev);
            if dedupe_fresh(&self.st, &self.det, &key, ev) {
                self.stats.deduped += 1;
                return None;
            }
            self.st.dedupe.insert(key, ev.ts_unix_ns);
        }
        let severity = match (r.severity_set, h.severity) {
            (false, Some(s)) => s,
            _ => r.severity,
        };
        let mut related = h.related;
        related.retain(|&s| s != ev.seq);
        related.sort_unstable();
        related.dedup();
        self.stats.alerts += 1;
        Some(Alert {
            rule_id: id.to_string(),
            rule_name: r.def.name.to_string(),
            severity,
            technique: r.def.technique.iter().map(|t| t.to_string()).collect(),
            message: h.message,
            event: ev.clone(),
            related_seq: related,
        })
    }
}

/// Facts every rule may lean on, recorded whatever rules are enabled.
fn observe_into(st: &mut State, ev: &Event, trust: &Trust) {
    let Some(f) = &ev.file else { return };
    let key = (f.dev, f.ino);
    let c = ev.classification.as_ref();
    if c.is_some_and(|c| c.format == crate::classify::Format::Qcow2) && f.ino != 0 {
        st.known_qcow2.insert(key, ());
    }
    if !trust.by("qemu") && c.is_some_and(|c| c.regions.iter().any(|r| r == "snapshot_table")) {
        st.table_writes.insert(key, (ev.seq, ev.ts_unix_ns));
    }
    if ev.action == Action::Create {
        if let Some(p) = &f.path {
            st.created
                .insert((ev.process.pid, p.0.clone()), ev.ts_unix_ns);
        }
    }
    if ev.action == Action::Unlink && f.ino != 0 {
        st.known_qcow2.remove(&key);
    }
}

fn empty_engine() -> Engine {
    Engine {
        rules: Vec::new(),
        index: Default::default(),
        actors: Vec::new(),
        exceptions: Vec::new(),
        windows: Vec::new(),
        det: Detection {
            image_extensions: Vec::new(),
            volatile: Vec::new(),
            ransom: Vec::new(),
            hidden_extensions: Vec::new(),
            suspicious: Vec::new(),
            admin_users: vec![0],
            dedupe_ns: 0,
        },
        local: Box::new(HostLocalTime),
        st: State::new(),
        warnings: Vec::new(),
        stats: EngineStats::default(),
        own_pid: std::process::id(),
        trust_memo: None,
        fired: Vec::new(),
    }
}
