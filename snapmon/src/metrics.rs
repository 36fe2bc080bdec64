//! Counters the agent and its sinks share, and an optional Prometheus text endpoint
//! (`--metrics 127.0.0.1:9464`, `GET /metrics`) served by one small std thread.
//!
//! Exposed series:
//! - `snapmon_events_total{action}`: events by operation (the hook family that saw them)
//! - `snapmon_alerts_total{rule,severity}`
//! - `snapmon_lost_total{source,cause}`: kernel, decoder and sink losses from `lost` records
//! - `snapmon_hook_attached{program}`: 1 attached, 0 not (from the `started` record)
//! - `snapmon_sink_{received,filtered,written,dropped}_total{sink[,cause]}`, `snapmon_sink_up{sink}`,
//!   `snapmon_sink_spill_bytes{sink}`, `snapmon_sink_queued{sink}`
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

use crate::{
    record::{Record, Severity},
    sink::{Cause, SinkCounters},
};

#[derive(Debug)]
pub struct Registry {
    pub events: AtomicU64,
    pub alerts: AtomicU64,
    pub alerts_high: AtomicU64,
    pub lost: AtomicU64,
    pub hooks_attached: AtomicU64,
    pub hooks_total: AtomicU64,
    labelled: Mutex<Labelled>,
    sinks: Mutex<Vec<Arc<SinkCounters>>>,
    started: Instant,
}

#[derive(Debug, Default)]
struct Labelled {
    events_by_action: BTreeMap<String, u64>,
    alerts_by_rule: BTreeMap<(String, &'static str), u64>,
    lost_by_cause: BTreeMap<(String, String), u64>,
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
            labelled: Mutex::new(Labelled::default()),
            sinks: Mutex::new(Vec::new()),
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

    /// Count one record on its way to the sinks (SinkSet::send calls this).
    pub fn observe(&self, r: &Record) {
        let Ok(mut l) = self.labelled.lock() else {
            return;
        };
        match r {
            Record::Event(e) => {
                self.events.fetch_add(1, Relaxed);
                *l.events_by_action.entry(e.action.to_string()).or_default() += 1;
            }
            Record::Alert(a) => {
                self.alerts.fetch_add(1, Relaxed);
                if a.severity >= Severity::High {
                    self.alerts_high.fetch_add(1, Relaxed);
                }
                *l.alerts_by_rule
                    .entry((a.rule_id.clone(), a.severity.as_str()))
                    .or_default() += 1;
            }
            Record::State(s) if s.action == "started" => {
                if let Some(hooks) = s.detail["hooks"].as_array() {
                    l.hooks = hooks
                        .iter()
                        .filter_map(|h| {
                            Some((
                                h["program"].as_str()?.to_string(),
                                !h["attached_to"].is_null(),
                            ))
                        })
                        .collect();
                    self.hooks_total.store(l.hooks.len() as u64, Relaxed);
                    self.hooks_attached
                        .store(l.hooks.values().filter(|a| **a).count() as u64, Relaxed);
                }
            }
            Record::Metric(m) if m.action == "lost" => {
                // {"kernel": {cause: n}, "decoder": {cause: n}, "sinks": {sink: {cause: n}}}
                if let Some(o) = m.detail.as_object() {
                    for (source, v) in o.iter().filter(|(k, _)| !k.ends_with("_total")) {
                        let Some(causes) = v.as_object() else {
                            continue;
                        };
                        for (cause, n) in causes {
                            let pairs: Vec<(String, u64)> = match (n.as_u64(), n.as_object()) {
                                (Some(n), _) => vec![(cause.clone(), n)],
                                (None, Some(inner)) => inner
                                    .iter()
                                    .filter_map(|(c, n)| {
                                        Some((format!("{cause}/{c}"), n.as_u64()?))
                                    })
                                    .collect(),
                                _ => vec![],
                            };
                            for (c, n) in pairs {
                                self.lost.fetch_add(n, Relaxed);
                                *l.lost_by_cause.entry((source.clone(), c)).or_default() += n;
                            }
                        }
                    }
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

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        };
        let l = self.labelled.lock();
        family(
            &mut o,
            "snapmon_events_total",
            "counter",
            "Events by operation.",
        );
        if let Ok(l) = &l {
            for (a, n) in &l.events_by_action {
                o.push_str(&format!(
                    "snapmon_events_total{{action=\"{}\"}} {n}\n",
                    esc(a)
                ));
            }
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
            "Records lost, by source and cause.",
        );
        if let Ok(l) = &l {
            for ((src, c), n) in &l.lost_by_cause {
                o.push_str(&format!(
                    "snapmon_lost_total{{source=\"{}\",cause=\"{}\"}} {n}\n",
                    esc(src),
                    esc(c)
                ));
            }
        }
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
            "1 if the sink is open or connected.",
        );
        family(
            &mut o,
            "snapmon_sink_spill_bytes",
            "gauge",
            "Bytes waiting in the spill.",
        );
        for c in &sinks {
            let st = c.state();
            let up = st == "open" || st == "connected" || st == "sending";
            o.push_str(&format!(
                "snapmon_sink_up{{sink=\"{}\",state=\"{}\"}} {}\n",
                esc(&c.name),
                esc(&st),
                u8::from(up)
            ));
            o.push_str(&format!(
                "snapmon_sink_spill_bytes{{sink=\"{}\"}} {}\n",
                esc(&c.name),
                c.spill_bytes.load(Relaxed)
            ));
        }
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
    use super::*;
    use crate::{
        event::Event,
        record::{Alert, MetricRecord, StateRecord},
    };
    use serde_json::json;
    use std::io::Read;

    #[test]
    fn counts_records_and_serves_prometheus_text() {
        let reg = Arc::new(Registry::default());
        reg.observe(&Record::Event(Event {
            action: "pwrite64",
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
            action: "started",
            detail: json!({"hooks": [{"program": "a", "attached_to": "x"}, {"program": "b", "attached_to": null}]}),
        }));
        reg.observe(&Record::Metric(MetricRecord {
            action: "lost",
            detail: json!({"kernel": {"ringbuf_full": 3}, "kernel_total": [3, 0], "sinks": {"tcp:x": {"queue_full": 2}}}),
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
            "snapmon_lost_total{source=\"sinks\",cause=\"tcp:x/queue_full\"} 2",
            "snapmon_hook_attached{program=\"b\"} 0",
        ] {
            assert!(body.contains(want), "missing {want}\n{body}");
        }
    }
}
