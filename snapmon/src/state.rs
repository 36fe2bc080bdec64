//! The agent's start-up state as small records: detail records (`hooks`, `coverage`,
//! `stores`, `kernel_fields`, `enforcement`, `rule_warnings`, `sinks`) and then one compact
//! `started` summary, each well under the 8 KiB a stock syslog daemon takes, so nothing
//! the old 10 KB `started` record carried is cut on the way.
//!
//! The details come first: whoever sees `started` has every detail record already.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    kernel::loader::{enforcement_only, HookStatus},
    kernel::offsets::Missing,
    record::StateRecord,
    watch::WatchStats,
};

/// Budget of one record's payload; the envelope (ECS or OCSF, plus the chain member) adds
/// about 1 KiB.
pub const PAYLOAD_MAX: usize = 5 * 1024;

/// Hook errors are kept to their first line, this long.
const ERROR_MAX: usize = 240;

/// Everything the start-up records say.
pub struct StartInfo<'a> {
    pub backend: &'a str,
    /// The programs' fd → inode walk: `direct` (BTF loads) or `probe_read`.
    pub fd_walk: &'a str,
    /// Writes through io_uring registered files are judged (`LoadInfo::fixed_files`).
    pub fixed_files: bool,
    /// How the syscall entry hooks run: `tracepoint` or `raw` (`--syscall-hook`).
    pub syscall_hook: &'a str,
    pub hooks: &'a [HookStatus],
    pub missing: &'a [Missing],
    /// Per-hook run counters: on, and why not (or how).
    pub hook_stats: (bool, Option<String>),
    pub watch: &'a WatchStats,
    pub roots: &'a [PathBuf],
    pub notes: &'a [String],
    pub startup_ms: u64,
    pub enforcement: Enforcement<'a>,
    pub policy: String,
    pub rule_warnings: &'a [String],
    /// `[{name, type, format}]` of the configured sinks.
    pub sinks: Vec<Value>,
    /// How the previous run ended, from the logs it left (null when none was found).
    pub previous_run: Value,
    /// The circuit breaker's plan (`respond::describe`): its stores go to a `response` record.
    pub response: Value,
    /// Where alert evidence is saved (None: off).
    pub evidence_dir: Option<String>,
    /// The fanotify route (`dirwatch`): on with how many directories, or off and why.
    pub dir_marks: String,
}

/// Enforcement as start-up found it: active or not, why not, and the settings it runs with.
#[derive(Debug, Default, Serialize)]
pub struct Enforcement<'a> {
    pub active: bool,
    /// Why it is off although asked for (best-effort on a kernel without BPF LSM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(flatten)]
    pub settings: Option<EnforcementSettings<'a>>,
}

/// The settings of a loaded enforcement plan.
#[derive(Debug, Serialize)]
pub struct EnforcementSettings<'a> {
    pub dry_run: bool,
    pub monitor_only: bool,
    /// Protected objects in the plan.
    pub protected: usize,
    /// The trusted executables (the `enforcement` detail records list them).
    pub trusted: Vec<&'a Path>,
    pub keep_enforcing: bool,
}

/// The `started` summary; each detail record carries the rest. Fields in the order the
/// record always listed them (serde_json without `preserve_order` sorts keys either way).
#[derive(Serialize)]
struct Started<'a> {
    version: &'static str,
    commit: &'static str,
    build_date: &'static str,
    pid: u32,
    backend: &'a str,
    fd_walk: &'a str,
    syscall_hook: &'a str,
    hooks_attached: usize,
    hooks_total: usize,
    hook_stats: HookStats<'a>,
    gaps: Vec<&'static str>,
    missing_hooks_reason: Option<String>,
    missing_kernel_fields: usize,
    stores: usize,
    /// The first three roots (`stores` records list them all).
    roots: Vec<String>,
    files: usize,
    dirs: usize,
    dir_marks: &'a str,
    startup_ms: u64,
    enforcement_active: bool,
    response_active: bool,
    evidence_dir: Option<&'a str>,
    policy: &'a str,
    rule_warning_count: usize,
    warnings: Vec<String>,
    sink_count: usize,
    details: &'static [&'static str],
    /// Only when a file sink found a log an earlier run left.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_run: Option<&'a Value>,
}

/// Per-hook run counters: on, and why not (or how).
#[derive(Serialize)]
struct HookStats<'a> {
    enabled: bool,
    note: Option<&'a str>,
}

/// The detail records `started` follows, by action.
const DETAILS: &[&str] = &[
    "hooks",
    "coverage",
    "stores",
    "kernel_fields",
    "enforcement",
    "response",
    "rule_warnings",
    "sinks",
];

/// Warnings found before the agent starts (`--metrics` beyond loopback), for `started`.
static START_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub fn add_start_warning(w: String) {
    if let Ok(mut v) = START_WARNINGS.lock() {
        v.push(w);
    }
}

fn start_warnings() -> Vec<String> {
    START_WARNINGS.lock().map(|v| v.clone()).unwrap_or_default()
}

fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.len() > ERROR_MAX {
        format!("{}…", &l[..l.floor_char_boundary(ERROR_MAX)])
    } else {
        l.to_string()
    }
}

/// The reason most missing hooks share (`Operation not permitted (os error 1)` when the
/// kernel refuses fentry/LSM), for a one-line summary.
pub fn common_error(hooks: &[HookStatus]) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for e in hooks.iter().filter_map(|h| h.error.as_deref()) {
        let e = first_line(e);
        match counts.iter_mut().find(|c| c.0 == e) {
            Some(c) => c.1 += 1,
            None => counts.push((e, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.into_iter().next().map(|c| c.0)
}

/// `items` spread over as many `action` records as the budget needs, each
/// `{<key>: [...], "part": i, "parts": n}` plus `extra`'s members in the first.
fn chunked(action: &'static str, key: &str, items: Vec<Value>, extra: Value) -> Vec<StateRecord> {
    let mut parts: Vec<Vec<Value>> = vec![vec![]];
    let mut size = extra.to_string().len();
    for it in items {
        let n = it.to_string().len() + 1;
        if size + n > PAYLOAD_MAX && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(vec![]);
            size = 0;
        }
        size += n;
        parts.last_mut().expect("one part").push(it);
    }
    let total = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, items)| {
            let mut d = if i == 0 { extra.clone() } else { json!({}) };
            d[key] = Value::Array(items);
            d["part"] = json!(i + 1);
            d["parts"] = json!(total);
            StateRecord { action, detail: d }
        })
        .collect()
}

/// The start-up records, details first and the `started` summary last.
pub fn started(i: &StartInfo) -> Vec<StateRecord> {
    // The agent counts what it loaded; `doctor` counts the same set (the detection hooks).
    let live = i.hooks.iter().filter(|h| h.attached_to.is_some()).count();
    let hooks: Vec<Value> = i
        .hooks
        .iter()
        .map(|h| {
            let mut v = json!({"program": h.program, "attached_to": h.attached_to, "covers": h.covers,
                   "error": h.error.as_deref().map(first_line),
                   "enforcement_only": enforcement_only(h.program)});
            // Only in raw mode: the `tp_btf/sys_enter` program that runs the hook's code.
            if let Some(handler) = h.handler {
                v["handler"] = json!(handler);
            }
            v
        })
        .collect();
    let mut out = chunked("hooks", "hooks", hooks, json!({}));
    let cov = crate::doctor::coverage(i.hooks, i.fixed_files);
    let gaps: Vec<&crate::doctor::Coverage> = cov.iter().filter(|c| !c.covered).collect();
    let reason = common_error(i.hooks);
    out.extend(chunked(
        "coverage",
        "paths",
        cov.iter().map(|c| json!(c)).collect(),
        json!({"covered": cov.len() - gaps.len(), "total": cov.len(), "missing_hooks_reason": reason}),
    ));
    out.extend(chunked(
        "stores",
        "roots",
        i.roots
            .iter()
            .map(|r| json!(r.display().to_string()))
            .collect(),
        json!({"files": i.watch.files, "dirs": i.watch.dirs, "skipped_count": i.watch.skipped.len(),
               "notes": i.notes}),
    ));
    if !i.watch.skipped.is_empty() {
        out.extend(chunked(
            "stores_skipped",
            "skipped",
            i.watch.skipped.iter().map(|s| json!(s)).collect(),
            json!({}),
        ));
    }
    if !i.missing.is_empty() {
        out.extend(chunked(
            "kernel_fields",
            "missing",
            i.missing
                .iter()
                .map(|m| json!({"group": m.group, "field": m.field, "effect": m.effect}))
                .collect(),
            json!({}),
        ));
    }
    let mut enf = serde_json::to_value(&i.enforcement).expect("the enforcement summary serializes");
    let trusted = enf
        .as_object_mut()
        .and_then(|o| o.remove("trusted"))
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default();
    out.extend(chunked("enforcement", "trusted", trusted, enf.clone()));
    if !i.rule_warnings.is_empty() {
        out.extend(chunked(
            "rule_warnings",
            "warnings",
            i.rule_warnings.iter().map(|w| json!(w)).collect(),
            json!({}),
        ));
    }
    out.extend(chunked("sinks", "sinks", i.sinks.clone(), json!({})));
    let mut resp = i.response.clone();
    let resp_stores = resp
        .as_object_mut()
        .and_then(|o| o.remove("stores"))
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default();
    out.extend(chunked(
        "response",
        "response_stores",
        resp_stores,
        resp.clone(),
    ));
    let roots_shown: Vec<String> = i
        .roots
        .iter()
        .take(3)
        .map(|r| r.display().to_string())
        .collect();
    let started = Started {
        version: crate::build_info::VERSION,
        commit: crate::build_info::COMMIT,
        build_date: crate::build_info::BUILD_DATE,
        pid: std::process::id(),
        backend: i.backend,
        fd_walk: i.fd_walk,
        syscall_hook: i.syscall_hook,
        hooks_attached: live,
        hooks_total: i.hooks.len(),
        hook_stats: HookStats {
            enabled: i.hook_stats.0,
            note: i.hook_stats.1.as_deref(),
        },
        gaps: gaps.iter().map(|g| g.path).collect(),
        missing_hooks_reason: reason,
        missing_kernel_fields: i.missing.len(),
        stores: i.roots.len(),
        roots: roots_shown,
        files: i.watch.files,
        dirs: i.watch.dirs,
        dir_marks: &i.dir_marks,
        startup_ms: i.startup_ms,
        enforcement_active: enf["active"] == true,
        response_active: resp["active"] == true,
        evidence_dir: i.evidence_dir.as_deref(),
        policy: &i.policy,
        rule_warning_count: i.rule_warnings.len(),
        warnings: start_warnings(),
        sink_count: i.sinks.len(),
        details: DETAILS,
        previous_run: (!i.previous_run.is_null()).then_some(&i.previous_run),
    };
    let started = StateRecord {
        action: "started",
        detail: serde_json::to_value(&started).expect("the started summary serializes"),
    };
    out.push(started);
    out
}

/// Per-program run counters as `hook_runs` metric records (spread over parts: sixty
/// programs do not fit one small record), for `stats` and `stopped` to precede.
fn hook_run_records(h: &crate::metrics::HookRuns) -> Vec<crate::record::Record> {
    let programs = h.to_json()["programs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if programs.is_empty() {
        return vec![];
    }
    chunked("hook_runs", "programs", programs, json!({}))
        .into_iter()
        .map(|r| {
            crate::record::Record::Metric(crate::record::MetricRecord {
                action: r.action,
                detail: r.detail,
            })
        })
        .collect()
}

/// `{enabled, note, busiest: [the three programs that cost the most]}`: what a `stats` or
/// `stopped` record says of the hooks (all of them are in the `hook_runs` records).
fn hook_summary(h: &crate::metrics::HookRuns) -> Value {
    let mut progs: Vec<&crate::metrics::HookRun> =
        h.programs.iter().filter(|_| h.enabled).collect();
    progs.sort_by(|a, b| b.run_ns.cmp(&a.run_ns).then(a.program.cmp(&b.program)));
    json!({"enabled": h.enabled, "note": h.note,
           "busiest": progs.iter().take(3).map(|p| json!({"program": p.program, "attach": p.attach, "runs": p.runs, "run_ns": p.run_ns})).collect::<Vec<_>>()})
}

/// The `hook_runs` records, then `stopped`: why, and the final pipeline, sink and hook
/// counters.
pub fn stopped(
    reason: &str,
    pipe: &crate::pipeline::Pipeline,
    sinks: &crate::sink::SinkSet,
    hooks: &crate::metrics::HookRuns,
    filtered_writes: u64,
    responder: &crate::respond::act::Responder,
) -> Vec<crate::record::Record> {
    let mut out = hook_run_records(hooks);
    out.push(crate::record::Record::State(StateRecord {
        action: "stopped",
        detail: json!({"reason": reason, "stats": pipe.stats(), "sinks": by_name(sinks.stats()),
                       "hooks": hook_summary(hooks), "kernel": {"filtered_writes": filtered_writes},
                       "response": responder.stats, "evidence": responder.evidence.stats}),
    }));
    out
}

/// The `hook_runs` records, then the periodic `stats` record: the status-line numbers, the
/// busiest hooks, pipeline and sinks.
/// `last_lost` is the `lost` total the previous `stats` record carried; it is moved on, so
/// each record also says what was lost since the one before (a heartbeat reader need not
/// keep state).
pub fn stats(
    pipe: &crate::pipeline::Pipeline,
    sinks: &crate::sink::SinkSet,
    last_lost: &mut u64,
) -> Vec<crate::record::Record> {
    let reg = sinks.registry();
    let s = reg.snapshot();
    let lost_since_last = s.lost.saturating_sub(*last_lost);
    *last_lost = s.lost;
    let hooks = reg.hook_runs().unwrap_or_default();
    let mut out = hook_run_records(&hooks);
    out.push(crate::record::Record::Metric(crate::record::MetricRecord {
        action: "stats",
        detail: json!({
            "uptime_s": reg.uptime().as_secs(),
            "events": s.events,
            "alerts": s.alerts,
            "lost": s.lost,
            "lost_since_last": lost_since_last,
            "hooks_attached": s.hooks_attached,
            "hooks_total": s.hooks_total,
            "hooks": hook_summary(&hooks),
            "pipeline": pipe.stats(),
            "sinks": by_name(sinks.stats()),
        }),
    }));
    out
}

/// `[{name, type, format}]` of the sinks, for the `sinks` start-up record.
pub fn sink_list(stats: &Value) -> Vec<Value> {
    by_name(stats.clone())
        .into_iter()
        .map(|s| json!({"name": s["name"], "type": s["type"], "format": s["format"]}))
        .collect()
}

/// `{name: {counters…}}` (how `SinkSet::stats` keys them) as `[{name, counters…}]`: a sink
/// name is data (`file:/var/log/…`), never an object key in a record.
pub fn by_name(v: Value) -> Vec<Value> {
    match v {
        Value::Object(o) => o
            .into_iter()
            .map(|(name, mut c)| {
                if let Value::Object(m) = &mut c {
                    if let Some(Value::Object(by_cause)) = m.remove("dropped_by_cause") {
                        m.insert(
                            "dropped_by_cause".into(),
                            Value::Array(
                                by_cause
                                    .into_iter()
                                    .map(|(cause, n)| json!({"cause": cause, "count": n}))
                                    .collect(),
                            ),
                        );
                    }
                    m.insert("name".into(), json!(name));
                }
                c
            })
            .collect(),
        Value::Array(a) => a,
        _ => vec![],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::loader::HOOKS;

    pub(crate) fn info_fixture<'a>(
        hooks: &'a [HookStatus],
        watch: &'a WatchStats,
        roots: &'a [PathBuf],
        warnings: &'a [String],
    ) -> StartInfo<'a> {
        StartInfo {
            backend: "tracepoint",
            fd_walk: "direct",
            fixed_files: true,
            syscall_hook: "tracepoint",
            hooks,
            missing: &[],
            hook_stats: (false, Some("off".into())),
            watch,
            roots,
            notes: &[],
            startup_ms: 850,
            enforcement: Enforcement {
                active: false,
                reason: None,
                settings: Some(EnforcementSettings {
                    dry_run: false,
                    monitor_only: false,
                    protected: 2,
                    trusted: vec![Path::new("/usr/bin/qemu-img")],
                    keep_enforcing: false,
                }),
            },
            policy: "<embedded default>".into(),
            rule_warnings: warnings,
            sinks: vec![
                json!({"name": "file:/var/log/snapmon.jsonl", "type": "file", "format": "json"}),
            ],
            previous_run: json!({"clean": false, "logs": [{"file": "/var/log/snapmon.jsonl",
                "clean": false, "last_seq": 4211, "last_record_at": "2026-12-04T17:00:00Z"}]}),
            response: json!({"active": true, "mode": "stop", "dry_run": false,
                "stores": [{"path": "/var/lib/libvirt/images", "monitor": false}],
                "kernel_classes": ["header", "ioctl"], "agent_rules": ["SM-R001"], "objects": 3,
                "images": 2, "trusted_count": 4, "notes": ["a note"]}),
            evidence_dir: Some("/var/lib/snapmon/evidence".into()),
            dir_marks: "fanotify (12 directories marked)".into(),
        }
    }

    /// As many hooks and roots as a big host has, with long errors: every record stays small.
    pub(crate) fn big_start() -> (Vec<HookStatus>, WatchStats, Vec<PathBuf>, Vec<String>) {
        let hooks = HOOKS
            .iter()
            .enumerate()
            .map(|(i, s)| HookStatus {
                program: s.program,
                attached_to: (i % 3 != 0).then(|| format!("tracepoint/syscalls/{}", s.program)),
                covers: s.covers,
                error: (i % 3 == 0).then(|| {
                    format!(
                        "{}\nverifier log line\n",
                        "Operation not permitted (os error 1) ".repeat(30)
                    )
                }),
                handler: None,
            })
            .collect();
        let watch = WatchStats {
            roots: 200,
            files: 60_000,
            dirs: 900,
            skipped: (0..300)
                .map(|i| format!("/srv/images/vm{i}/too-deep: depth limit"))
                .collect(),
            too_deep: 300,
        };
        let roots = (0..200)
            .map(|i| PathBuf::from(format!("/srv/images/pool{i}/vm-disks")))
            .collect();
        let warnings = (0..50)
            .map(|i| {
                format!("rule SM-Q00{i}: actor group `backup{i}` names no executable on this host")
            })
            .collect();
        (hooks, watch, roots, warnings)
    }

    #[test]
    fn start_records_are_small_and_lose_nothing() {
        let (hooks, watch, roots, warnings) = big_start();
        let recs = started(&info_fixture(&hooks, &watch, &roots, &warnings));
        assert_eq!(recs.last().unwrap().action, "started", "summary last");
        for r in &recs {
            let n = r.detail.to_string().len();
            assert!(n <= PAYLOAD_MAX + 512, "{} is {n} bytes", r.action);
        }
        let all = |action: &str, key: &str| -> Vec<Value> {
            recs.iter()
                .filter(|r| r.action == action)
                .flat_map(|r| r.detail[key].as_array().cloned().unwrap_or_default())
                .collect()
        };
        assert_eq!(all("hooks", "hooks").len(), hooks.len());
        assert_eq!(all("stores", "roots").len(), roots.len());
        assert_eq!(all("stores_skipped", "skipped").len(), 300);
        assert_eq!(all("rule_warnings", "warnings").len(), 50);
        assert_eq!(all("enforcement", "trusted"), [json!("/usr/bin/qemu-img")]);
        let s = &recs.last().unwrap().detail;
        assert_eq!(s["hooks_total"].as_u64(), Some(hooks.len() as u64));
        assert_eq!(
            s["missing_hooks_reason"]
                .as_str()
                .map(|r| r.len() <= ERROR_MAX + 3),
            Some(true)
        );
    }

    #[test]
    fn previous_run_is_said_only_when_an_earlier_log_was_found() {
        let (hooks, watch, roots, warnings) = big_start();
        let mut i = info_fixture(&hooks, &watch, &roots, &warnings);
        let said = started(&i).pop().unwrap().detail;
        assert_eq!(said["previous_run"]["clean"], false);
        i.previous_run = Value::Null;
        let fresh = started(&i).pop().unwrap().detail;
        assert!(fresh.get("previous_run").is_none(), "{fresh}");
    }

    /// Build and process fields of a `started` summary, checked and blanked.
    fn blank_build_fields(mut s: Value) -> String {
        assert_eq!(s["pid"], std::process::id());
        assert_eq!(s["version"], crate::build_info::VERSION);
        assert_eq!(s["commit"], crate::build_info::COMMIT);
        assert_eq!(s["build_date"], crate::build_info::BUILD_DATE);
        for k in ["pid", "version", "commit", "build_date"] {
            s[k] = json!("*");
        }
        s.to_string()
    }

    /// The start-up records byte for byte as they were when built with `json!` (the typed
    /// summary must not change what a reader of the log sees, keys and their order included).
    #[test]
    fn the_started_summary_keeps_its_bytes() {
        let (hooks, watch, roots, warnings) = big_start();
        let mut i = info_fixture(&hooks, &watch, &roots, &warnings);
        let recs = started(&i);
        let said = blank_build_fields(recs.last().unwrap().detail.clone());
        assert_eq!(said, STARTED);
        let enf = recs.iter().find(|r| r.action == "enforcement").unwrap();
        assert_eq!(enf.detail.to_string(), ENFORCEMENT);
        i.previous_run = Value::Null;
        i.evidence_dir = None;
        let bare = blank_build_fields(started(&i).pop().unwrap().detail);
        assert_eq!(bare, STARTED_BARE);
    }

    #[test]
    fn enforcement_says_only_what_applies() {
        let off = Enforcement::default();
        assert_eq!(serde_json::to_string(&off).unwrap(), r#"{"active":false}"#);
        let refused = Enforcement {
            reason: Some("no BPF LSM"),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&refused).unwrap(),
            json!({"active": false, "reason": "no BPF LSM"})
        );
    }

    const STARTED: &str = r#"{"backend":"tracepoint","build_date":"*","commit":"*","details":["hooks","coverage","stores","kernel_fields","enforcement","response","rule_warnings","sinks"],"dir_marks":"fanotify (12 directories marked)","dirs":900,"enforcement_active":false,"evidence_dir":"/var/lib/snapmon/evidence","fd_walk":"direct","files":60000,"gaps":["shared writable mmap","create/open for write","io_uring rename/unlink/link/mkdir","ioctl (dm, btrfs, zfs, reflink, freeze)","writes through an overlayfs merged view of a store (overlays mounted in other mount namespaces)","kernel-internal reflink (overlayfs copy-up, nfsd CLONE)"],"hook_stats":{"enabled":false,"note":"off"},"hooks_attached":46,"hooks_total":69,"missing_hooks_reason":"Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not perm…","missing_kernel_fields":0,"pid":"*","policy":"<embedded default>","previous_run":{"clean":false,"logs":[{"clean":false,"file":"/var/log/snapmon.jsonl","last_record_at":"2026-12-04T17:00:00Z","last_seq":4211}]},"response_active":true,"roots":["/srv/images/pool0/vm-disks","/srv/images/pool1/vm-disks","/srv/images/pool2/vm-disks"],"rule_warning_count":50,"sink_count":1,"startup_ms":850,"stores":200,"syscall_hook":"tracepoint","version":"*","warnings":[]}"#;
    const STARTED_BARE: &str = r#"{"backend":"tracepoint","build_date":"*","commit":"*","details":["hooks","coverage","stores","kernel_fields","enforcement","response","rule_warnings","sinks"],"dir_marks":"fanotify (12 directories marked)","dirs":900,"enforcement_active":false,"evidence_dir":null,"fd_walk":"direct","files":60000,"gaps":["shared writable mmap","create/open for write","io_uring rename/unlink/link/mkdir","ioctl (dm, btrfs, zfs, reflink, freeze)","writes through an overlayfs merged view of a store (overlays mounted in other mount namespaces)","kernel-internal reflink (overlayfs copy-up, nfsd CLONE)"],"hook_stats":{"enabled":false,"note":"off"},"hooks_attached":46,"hooks_total":69,"missing_hooks_reason":"Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not permitted (os error 1) Operation not perm…","missing_kernel_fields":0,"pid":"*","policy":"<embedded default>","response_active":true,"roots":["/srv/images/pool0/vm-disks","/srv/images/pool1/vm-disks","/srv/images/pool2/vm-disks"],"rule_warning_count":50,"sink_count":1,"startup_ms":850,"stores":200,"syscall_hook":"tracepoint","version":"*","warnings":[]}"#;
    const ENFORCEMENT: &str = r#"{"active":false,"dry_run":false,"keep_enforcing":false,"monitor_only":false,"part":1,"parts":1,"protected":2,"trusted":["/usr/bin/qemu-img"]}"#;
}
