//! Counters the agent and its sinks share, and an optional Prometheus text endpoint
//! (`--metrics 127.0.0.1:9464`, `GET /metrics`) served by one small std thread. Each family's
//! samples follow its own HELP/TYPE lines; label values come from closed sets (rule ids,
//! severities, causes, sink states, program names, configured sink names), never error text.
//!
//! Exposed series:
//! - `snapmon_build_info{version}` 1
//! - `snapmon_events_total{action}`: events by operation
//! - `snapmon_alerts_total{rule,severity}`
//! - `snapmon_lost_total{source,cause}`: every cause of [`LOSS_CAUSES`], 0 until it happens
//! - `snapmon_hooks{state}`: programs loaded, `attached`/`missing` (the count `doctor` and the
//!   status line give); `snapmon_hook_attached{program}`: 1 attached, 0 not
//! - `snapmon_hook_runs_total{program,attach}`, `snapmon_hook_run_seconds_total{program,attach}`:
//!   kernel BPF run statistics per attached program (raw mode's tail-called handlers are
//!   counted in `syscall_enter`), refreshed every status interval;
//!   `snapmon_hook_stats_enabled` says whether the kernel is counting (0: those series are absent)
//! - `snapmon_sink_{received,filtered,written,dropped}_total{sink[,cause]}`,
//!   `snapmon_sink_up{sink,state}` (state: open, connected, sending, connecting,
//!   disconnected, error, closed, abandoned, other), `snapmon_sink_spill_bytes{sink}`
//! - `snapmon_watch_ordinary_entries`, `snapmon_watch_ordinary_limit`: ordinary (not image,
//!   not metadata) entries of the kernel's watched-files map, and the share they may hold
//! - `snapmon_uptime_seconds`

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use snapmon_common::lost::LostCause;

use strum::{EnumCount as _, IntoEnumIterator as _};

use crate::{
    event::Action,
    record::{Record, Severity},
    sink::counters::{Cause, SinkCounters},
};

#[derive(Debug)]
pub struct Registry {
    pub events: AtomicU64,
    pub alerts: AtomicU64,
    pub alerts_high: AtomicU64,
    pub lost: AtomicU64,
    pub hooks_attached: AtomicU64,
    pub hooks_total: AtomicU64,
    /// Ordinary entries of the kernel's watched-files map (`snapmon_common::watch_share`).
    pub watch_ordinary: AtomicU64,
    /// Events by `Action` discriminant: counted for every event, so no lock and no map.
    events_by_action: [AtomicU64; Action::COUNT],
    labelled: Mutex<Labelled>,
    sinks: Mutex<Vec<Arc<SinkCounters>>>,
    /// None until the agent has loaded its programs.
    hook_runs: Mutex<Option<HookRuns>>,
    started: Instant,
}

/// One attached program's kernel run statistics (`bpf_prog_info.run_cnt`, `run_time_ns`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HookRun {
    pub program: String,
    /// Where it is attached, e.g. `tracepoint/syscalls/sys_enter_pwrite64`.
    pub attach: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// Per-program counters as of the last refresh, or why there are none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookRuns {
    /// The kernel is counting runs of our programs.
    pub enabled: bool,
    /// Why it is not (or how it is, when a sysctl does it for us).
    pub note: Option<String>,
    pub programs: Vec<HookRun>,
}

impl HookRuns {
    /// `{"enabled": …, "note": …, "programs": [{program, attach, runs, run_ns}]}` for records
    /// (an array: program names are not object keys in a record).
    pub fn to_json(&self) -> serde_json::Value {
        let programs: Vec<_> = self
            .programs
            .iter()
            .filter(|_| self.enabled)
            .map(|h| serde_json::json!({"program": h.program, "attach": h.attach, "runs": h.runs, "run_ns": h.run_ns}))
            .collect();
        serde_json::json!({"enabled": self.enabled, "note": self.note, "programs": programs})
    }
}

#[derive(Debug, Default)]
struct Labelled {
    alerts_by_rule: BTreeMap<(String, &'static str), u64>,
    lost_by_cause: BTreeMap<(&'static str, &'static str), u64>,
    hooks: BTreeMap<String, bool>,
}

/// What the tail status line shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub events: u64,
    pub alerts: u64,
    pub alerts_high: u64,
    pub lost: u64,
    pub hooks_attached: u64,
    pub hooks_total: u64,
    pub sink_drops: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            events: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            alerts_high: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            hooks_attached: AtomicU64::new(0),
            hooks_total: AtomicU64::new(0),
            watch_ordinary: AtomicU64::new(0),
            events_by_action: std::array::from_fn(|_| AtomicU64::new(0)),
            labelled: Mutex::new(Labelled::default()),
            sinks: Mutex::new(Vec::new()),
            hook_runs: Mutex::new(None),
            started: Instant::now(),
        }
    }
}

impl Registry {
    pub fn register_sink(&self, c: Arc<SinkCounters>) {
        if let Ok(mut s) = self.sinks.lock() {
            s.push(c);
        }
    }

    /// Replace the per-program run statistics (the agent refreshes them every status interval).
    pub fn set_hook_runs(&self, h: HookRuns) {
        if let Ok(mut g) = self.hook_runs.lock() {
            *g = Some(h);
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn hook_runs(&self) -> Option<HookRuns> {
        self.hook_runs.lock().ok().and_then(|g| g.clone())
    }

    /// Count one record on its way to the sinks (SinkSet::send calls this).
    pub fn observe(&self, r: &Record) {
        if let Record::Event(e) = r {
            self.events.fetch_add(1, Relaxed);
            self.events_by_action[e.action as usize].fetch_add(1, Relaxed);
            return;
        }
        let Ok(mut l) = self.labelled.lock() else {
            return;
        };
        match r {
            Record::Event(_) => {}
            Record::Alert(a) => {
                self.alerts.fetch_add(1, Relaxed);
                if a.severity >= Severity::High {
                    self.alerts_high.fetch_add(1, Relaxed);
                }
                *l.alerts_by_rule
                    .entry((a.rule_id.clone(), a.severity.as_str()))
                    .or_default() += 1;
            }
            // One count everywhere: the summary's, which `doctor` and the log give too.
            Record::State(s) if s.action == "started" => {
                let n = |k: &str| s.detail[k].as_u64().unwrap_or(0);
                self.hooks_total.store(n("hooks_total"), Relaxed);
                self.hooks_attached.store(n("hooks_attached"), Relaxed);
            }
            Record::State(s) if s.action == "hooks" => {
                for h in s.detail["hooks"].as_array().into_iter().flatten() {
                    if let Some(p) = h["program"].as_str() {
                        l.hooks.insert(p.to_string(), !h["attached_to"].is_null());
                    }
                }
            }
            Record::Metric(m) if m.action == "lost" => {
                // {"kernel": {cause: n}, "decoder": {cause: n}, "sinks": [{sink, cause, count}]}
                let mut add = |source: &'static str, cause: &str, n: u64| {
                    // Only the closed set of causes becomes a label value.
                    let Some(c) = LOSS_CAUSES
                        .iter()
                        .find(|(s, _)| *s == source)
                        .and_then(|(_, cs)| cs.iter().find(|c| **c == cause))
                    else {
                        return;
                    };
                    self.lost.fetch_add(n, Relaxed);
                    *l.lost_by_cause.entry((source, c)).or_default() += n;
                };
                for source in ["kernel", "decoder", "watch", "agent", "dirwatch"] {
                    for (cause, n) in m.detail[source].as_object().into_iter().flatten() {
                        add(source, cause, n.as_u64().unwrap_or(0));
                    }
                }
                for d in m.detail["sinks"].as_array().into_iter().flatten() {
                    add(
                        "sinks",
                        d["cause"].as_str().unwrap_or(""),
                        d["count"].as_u64().unwrap_or(0),
                    );
                }
            }
            _ => {}
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let sink_drops = self
            .sinks
            .lock()
            .map(|s| s.iter().map(|c| c.dropped_total()).sum())
            .unwrap_or(0);
        Snapshot {
            events: self.events.load(Relaxed),
            alerts: self.alerts.load(Relaxed),
            alerts_high: self.alerts_high.load(Relaxed),
            lost: self.lost.load(Relaxed),
            hooks_attached: self.hooks_attached.load(Relaxed),
            hooks_total: self.hooks_total.load(Relaxed),
            sink_drops,
        }
    }

    /// Prometheus text exposition format 0.0.4: each family's samples right after its
    /// HELP and TYPE lines, label values from closed sets (rules, causes, states, programs
    /// and configured sink names; never an error text).
    pub fn render(&self) -> String {
        let mut o = String::new();
        family(
            &mut o,
            "snapmon_build_info",
            "gauge",
            "Always 1; the labels say which snapmon this is.",
        );
        o.push_str(&format!(
            "snapmon_build_info{{version=\"{}\"}} 1\n",
            esc(env!("CARGO_PKG_VERSION"))
        ));
        let l = self.labelled.lock();
        family(
            &mut o,
            "snapmon_events_total",
            "counter",
            "Events by operation.",
        );
        // By name, as the map they were kept in gave them; actions never seen are left out.
        let mut by_action: Vec<(&str, u64)> = Action::iter()
            .map(|a| (a.as_str(), self.events_by_action[a as usize].load(Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        by_action.sort_unstable();
        for (a, n) in by_action {
            o.push_str(&format!(
                "snapmon_events_total{{action=\"{}\"}} {n}\n",
                esc(a)
            ));
        }
        family(
            &mut o,
            "snapmon_alerts_total",
            "counter",
            "Alerts by rule and severity.",
        );
        if let Ok(l) = &l {
            for ((r, s), n) in &l.alerts_by_rule {
                o.push_str(&format!(
                    "snapmon_alerts_total{{rule=\"{}\",severity=\"{s}\"}} {n}\n",
                    esc(r)
                ));
            }
        }
        family(
            &mut o,
            "snapmon_lost_total",
            "counter",
            "Records lost, by source and cause (every cause, 0 until it happens).",
        );
        for (source, causes) in LOSS_CAUSES {
            for cause in *causes {
                let n = l
                    .as_ref()
                    .ok()
                    .and_then(|l| l.lost_by_cause.get(&(*source, *cause)).copied())
                    .unwrap_or(0);
                o.push_str(&format!(
                    "snapmon_lost_total{{source=\"{source}\",cause=\"{cause}\"}} {n}\n"
                ));
            }
        }
        family(
            &mut o,
            "snapmon_hooks",
            "gauge",
            "eBPF programs the agent loaded (state=attached|missing); the count the status line and doctor give.",
        );
        let total = self.hooks_total.load(Relaxed);
        let attached = self.hooks_attached.load(Relaxed);
        o.push_str(&format!(
            "snapmon_hooks{{state=\"attached\"}} {attached}\nsnapmon_hooks{{state=\"missing\"}} {}\n",
            total.saturating_sub(attached)
        ));
        family(
            &mut o,
            "snapmon_hook_attached",
            "gauge",
            "1 if the eBPF program is attached.",
        );
        if let Ok(l) = &l {
            for (h, a) in &l.hooks {
                o.push_str(&format!(
                    "snapmon_hook_attached{{program=\"{}\"}} {}\n",
                    esc(h),
                    u8::from(*a)
                ));
            }
        }
        drop(l);
        if let Some(h) = self.hook_runs() {
            render_hook_runs(&mut o, &h);
        }
        let sinks = self.sinks.lock().map(|s| s.clone()).unwrap_or_default();
        for (name, help, get) in [
            (
                "snapmon_sink_received_total",
                "Records offered to the sink.",
                (|c: &SinkCounters| c.received.load(Relaxed)) as fn(&SinkCounters) -> u64,
            ),
            (
                "snapmon_sink_filtered_total",
                "Records the sink's filter rejected.",
                |c| c.filtered.load(Relaxed),
            ),
            (
                "snapmon_sink_written_total",
                "Records the sink delivered.",
                |c| c.written.load(Relaxed),
            ),
        ] {
            family(&mut o, name, "counter", help);
            for c in &sinks {
                o.push_str(&format!("{name}{{sink=\"{}\"}} {}\n", esc(&c.name), get(c)));
            }
        }
        family(
            &mut o,
            "snapmon_sink_dropped_total",
            "counter",
            "Records the sink lost, by cause.",
        );
        for c in &sinks {
            for cause in Cause::ALL {
                o.push_str(&format!(
                    "snapmon_sink_dropped_total{{sink=\"{}\",cause=\"{}\"}} {}\n",
                    esc(&c.name),
                    cause.as_str(),
                    c.dropped(cause)
                ));
            }
        }
        family(
            &mut o,
            "snapmon_sink_up",
            "gauge",
            "1 if the sink is open or connected; state is one of open, connected, sending, connecting, disconnected, error, closed, abandoned, other.",
        );
        for c in &sinks {
            let st = sink_state(&c.state());
            let up = matches!(st, "open" | "connected" | "sending");
            o.push_str(&format!(
                "snapmon_sink_up{{sink=\"{}\",state=\"{st}\"}} {}\n",
                esc(&c.name),
                u8::from(up)
            ));
        }
        family(
            &mut o,
            "snapmon_sink_spill_bytes",
            "gauge",
            "Bytes waiting in the spill.",
        );
        for c in &sinks {
            o.push_str(&format!(
                "snapmon_sink_spill_bytes{{sink=\"{}\"}} {}\n",
                esc(&c.name),
                c.spill_bytes.load(Relaxed)
            ));
        }
        family(
            &mut o,
            "snapmon_watch_ordinary_entries",
            "gauge",
            "Entries of the kernel's watched-files map held by files other than images and metadata.",
        );
        o.push_str(&format!(
            "snapmon_watch_ordinary_entries {}\n",
            self.watch_ordinary.load(Relaxed)
        ));
        family(
            &mut o,
            "snapmon_watch_ordinary_limit",
            "gauge",
            "Entries such files may hold; past it they are refused and counted as lost (watch_full), the rest is kept for images and metadata.",
        );
        o.push_str(&format!(
            "snapmon_watch_ordinary_limit {}\n",
            snapmon_common::ORDINARY_LIMIT
        ));
        family(
            &mut o,
            "snapmon_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
        );
        o.push_str(&format!(
            "snapmon_uptime_seconds {:.3}\n",
            self.started.elapsed().as_secs_f64()
        ));
        o
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// Every loss cause by source: the kernel's (the agent's `lost` map slots), the decoder's
/// and the sinks'. Each is exported, 0 until it happens, so an alert on `increase()` works
/// from the first scrape.
pub const LOSS_CAUSES: &[(&str, &[&str])] = &[
    ("kernel", &KERNEL_LOSS_CAUSES),
    ("decoder", &["decode_truncated", "decode_unknown_kind"]),
    ("watch", &["watch_full"]),
    ("agent", &["stop_unread"]),
    (
        "dirwatch",
        &["overflow", "parse_errors", "mark_failed", "read_errors"],
    ),
    (
        "sinks",
        &[
            "queue_full",
            "write_error",
            "no_space",
            "spill_full",
            "spill_error",
            "shutdown",
            "sink_dead",
        ],
    ),
];

/// The kernel's loss causes, in `LOST` map slot order (`snapmon_common::lost`).
pub fn kernel_loss_causes() -> &'static [&'static str] {
    &KERNEL_LOSS_CAUSES
}

/// `LostCause` names, by slot: written once, in snapmon-common.
const KERNEL_LOSS_CAUSES: [&str; LostCause::ALL.len()] = {
    let mut names = [""; LostCause::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = LostCause::ALL[i].as_str();
        i += 1;
    }
    names
};

/// A sink's state text (`error: No space left on device`) as a closed-set label value.
pub fn sink_state(s: &str) -> &'static str {
    let word = s.split([':', ' ']).next().unwrap_or("");
    match word {
        "open" => "open",
        "connected" => "connected",
        "sending" => "sending",
        "connecting" => "connecting",
        "disconnected" => "disconnected",
        "error" => "error",
        "closed" => "closed",
        "abandoned" => "abandoned",
        _ => "other",
    }
}

fn render_hook_runs(o: &mut String, h: &HookRuns) {
    o.push_str(
        "# HELP snapmon_hook_stats_enabled 1 if the kernel counts runs of the eBPF programs (BPF_ENABLE_STATS); 0: no snapmon_hook_run* series.\n# TYPE snapmon_hook_stats_enabled gauge\n",
    );
    o.push_str(&format!(
        "snapmon_hook_stats_enabled {}\n",
        u8::from(h.enabled)
    ));
    if !h.enabled {
        return;
    }
    let series = [
        (
            "snapmon_hook_runs_total",
            "Times the eBPF program ran (kernel BPF run statistics).",
            (|r: &HookRun| r.runs.to_string()) as fn(&HookRun) -> String,
        ),
        (
            "snapmon_hook_run_seconds_total",
            "Time spent running the eBPF program (kernel BPF run statistics).",
            // Exact decimal: nanoseconds do not survive a round trip through f64 for long.
            |r| {
                format!(
                    "{}.{:09}",
                    r.run_ns / 1_000_000_000,
                    r.run_ns % 1_000_000_000
                )
            },
        ),
    ];
    for (name, help, value) in series {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for r in &h.programs {
            o.push_str(&format!(
                "{name}{{program=\"{}\",attach=\"{}\"}} {}\n",
                esc(&r.program),
                esc(&r.attach),
                value(r)
            ));
        }
    }
}

/// Label value escaping: backslash, quote, newline.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `GET /metrics` on `addr` from a background thread. Returns the bound address.
pub fn serve(addr: &str, reg: Arc<Registry>) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    let h = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let mut first = String::new();
                let mut r = BufReader::new(match s.try_clone() {
                    Ok(c) => c,
                    Err(_) => continue,
                });
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                // Skip the request headers.
                let mut h = String::new();
                while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = if first.starts_with("GET ")
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    ("200 OK", "text/plain; version=0.0.4", reg.render())
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok((local, h))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_loss_causes_name_every_lost_slot() {
        // agent::report_loss zips the LOST map's slots with these names.
        assert_eq!(
            kernel_loss_causes().len(),
            snapmon_common::lost::COUNT as usize
        );
        assert_eq!(
            kernel_loss_causes()[snapmon_common::lost::WATCH_FULL as usize],
            "watch_full"
        );
        assert_eq!(
            kernel_loss_causes()[snapmon_common::lost::PRECIOUS_DROPPED as usize],
            "precious_dropped"
        );
        for (slot, c) in LostCause::ALL.into_iter().enumerate() {
            assert_eq!(LostCause::from_u32(slot as u32), Some(c));
            assert_eq!(LostCause::from_name(c.as_str()), Some(c));
        }
        assert_eq!(LostCause::from_u32(snapmon_common::lost::COUNT), None);
        assert_eq!(LostCause::from_name("ringbuf"), None);
    }

    use super::*;
    use crate::event::Action;
    use crate::{
        event::Event,
        record::{Alert, MetricRecord, StateRecord},
    };
    use serde_json::json;
    use std::io::Read;

    #[test]
    fn the_watch_maps_ordinary_share_is_a_gauge_with_its_bound() {
        let r = Registry::default();
        r.watch_ordinary.store(58_000, Relaxed);
        let t = r.render();
        assert!(t.contains("# TYPE snapmon_watch_ordinary_entries gauge\n"));
        assert!(t.contains("\nsnapmon_watch_ordinary_entries 58000\n"));
        assert!(t.contains(&format!(
            "\nsnapmon_watch_ordinary_limit {}\n",
            snapmon_common::ORDINARY_LIMIT
        )));
    }

    #[test]
    fn counts_records_and_serves_prometheus_text() {
        let reg = Arc::new(Registry::default());
        reg.observe(&Record::Event(Event {
            action: Action::Pwrite64,
            ..Default::default()
        }));
        reg.observe(&Record::Alert(Box::new(Alert {
            rule_id: "SM001".into(),
            rule_name: "x".into(),
            severity: Severity::Critical,
            technique: vec![],
            message: String::new(),
            event: Event::default(),
            related_seq: vec![],
        })));
        reg.observe(&Record::State(StateRecord {
            action: "hooks",
            detail: json!({"hooks": [{"program": "a", "attached_to": "x"}, {"program": "b", "attached_to": null}]}),
        }));
        reg.observe(&Record::State(StateRecord {
            action: "started",
            detail: json!({"hooks_attached": 1, "hooks_total": 2}),
        }));
        reg.observe(&Record::Metric(MetricRecord {
            action: "lost",
            detail: json!({"kernel": {"ringbuf_full": 3, "made_up": 9}, "kernel_total": [3, 0],
                           "sinks": [{"sink": "tcp:x", "cause": "queue_full", "count": 2}]}),
        }));
        let s = reg.snapshot();
        assert_eq!((s.events, s.alerts, s.alerts_high, s.lost), (1, 1, 1, 5));
        assert_eq!((s.hooks_attached, s.hooks_total), (1, 2));
        let (addr, _) = serve("127.0.0.1:0", reg).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        for want in [
            "snapmon_events_total{action=\"pwrite64\"} 1",
            "snapmon_alerts_total{rule=\"SM001\",severity=\"critical\"} 1",
            "snapmon_lost_total{source=\"kernel\",cause=\"ringbuf_full\"} 3",
            "snapmon_lost_total{source=\"sinks\",cause=\"queue_full\"} 2",
            "snapmon_lost_total{source=\"decoder\",cause=\"decode_truncated\"} 0",
            "snapmon_lost_total{source=\"sinks\",cause=\"sink_dead\"} 0",
            "snapmon_build_info{version=\"0.1.0\"} 1",
            "snapmon_hooks{state=\"missing\"} 1",
            "snapmon_hook_attached{program=\"b\"} 0",
        ] {
            assert!(body.contains(want), "missing {want}\n{body}");
        }
        assert!(
            !body.contains("made_up"),
            "only closed-set causes become labels"
        );
        // Not told about run statistics yet: nothing claimed either way.
        assert!(!body.contains("snapmon_hook_stats_enabled"), "{body}");
    }

    #[test]
    fn every_sink_cause_is_a_loss_cause_and_states_are_a_closed_set() {
        let sinks = LOSS_CAUSES.iter().find(|s| s.0 == "sinks").unwrap().1;
        assert_eq!(sinks, Cause::ALL.map(Cause::as_str));
        assert_eq!(
            sink_state("error: No space left on device (os error 28)"),
            "error"
        );
        assert_eq!(
            sink_state("disconnected: Connection refused"),
            "disconnected"
        );
        assert_eq!(sink_state("closed by reader"), "closed");
        assert_eq!(sink_state("weird"), "other");
    }

    /// Each family's samples follow its own HELP/TYPE lines (the official parser types
    /// samples by the last TYPE line seen).
    #[test]
    fn families_are_grouped() {
        let reg = Registry::default();
        reg.register_sink(Arc::new(SinkCounters::new(
            "file:/x".into(),
            "file",
            "json",
        )));
        let body = reg.render();
        let mut current = String::new();
        for l in body.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                current = t.split(' ').next().unwrap().to_string();
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{l}\n{body}");
            }
        }
        assert!(
            body.contains("snapmon_sink_up{sink=\"file:/x\",state=\"other\"} 0"),
            "{body}"
        );
    }

    fn runs(program: &str, runs: u64, run_ns: u64) -> HookRun {
        HookRun {
            program: program.into(),
            attach: format!("tracepoint/syscalls/{program}"),
            runs,
            run_ns,
        }
    }

    #[test]
    fn hook_run_counters_render_per_program_with_exact_seconds() {
        let reg = Registry::default();
        reg.set_hook_runs(HookRuns {
            enabled: true,
            note: None,
            programs: vec![
                runs("sys_enter_pwrite64", 1234, 2_500_000_123),
                runs("sys_enter_wr\"ite", 7, 999),
            ],
        });
        let body = reg.render();
        let ours: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("snapmon_hook_run") || l.starts_with("snapmon_hook_stats"))
            .collect();
        assert_eq!(
            ours,
            [
                "snapmon_hook_stats_enabled 1",
                "snapmon_hook_runs_total{program=\"sys_enter_pwrite64\",attach=\"tracepoint/syscalls/sys_enter_pwrite64\"} 1234",
                "snapmon_hook_runs_total{program=\"sys_enter_wr\\\"ite\",attach=\"tracepoint/syscalls/sys_enter_wr\\\"ite\"} 7",
                "snapmon_hook_run_seconds_total{program=\"sys_enter_pwrite64\",attach=\"tracepoint/syscalls/sys_enter_pwrite64\"} 2.500000123",
                "snapmon_hook_run_seconds_total{program=\"sys_enter_wr\\\"ite\",attach=\"tracepoint/syscalls/sys_enter_wr\\\"ite\"} 0.000000999",
            ]
        );
        assert!(body.contains("# TYPE snapmon_hook_runs_total counter\n"));
        assert!(body.contains("# TYPE snapmon_hook_run_seconds_total counter\n"));
        let j = reg.hook_runs().unwrap().to_json();
        assert_eq!(j["programs"][0]["program"], "sys_enter_pwrite64");
        assert_eq!(j["programs"][0]["runs"], 1234);
        assert_eq!(j["programs"][0]["run_ns"], 2_500_000_123u64);
        assert_eq!(j["enabled"], true);
    }

    #[test]
    fn hook_runs_are_absent_and_explained_when_the_kernel_does_not_count() {
        let reg = Registry::default();
        reg.set_hook_runs(HookRuns {
            enabled: false,
            note: Some("the kernel refused BPF_ENABLE_STATS (EPERM)".into()),
            // Stale numbers must not be shown as if live.
            programs: vec![runs("sys_enter_pwrite64", 5, 5)],
        });
        let body = reg.render();
        assert!(body.contains("\nsnapmon_hook_stats_enabled 0\n"), "{body}");
        assert!(!body.contains("snapmon_hook_runs_total"), "{body}");
        assert!(!body.contains("snapmon_hook_run_seconds_total"), "{body}");
        let j = reg.hook_runs().unwrap().to_json();
        assert_eq!(j["enabled"], false);
        assert_eq!(j["programs"], serde_json::json!([]));
        assert!(j["note"].as_str().unwrap().contains("EPERM"));
    }
}
