//! Sink stage, JSON Lines: one ECS object per line (ECS 9.4.0; `snapmon.*` layout version 2).
//!
//! # Format
//! Every line is one JSON object with nested ECS field sets. Every record validates against
//! the vendored ECS field definitions plus the declared `snapmon.*` custom field set
//! (`schema/ecs/snapmon_fields.json`, checked by `snapmon-schema` in unit and e2e tests): no
//! undeclared field, no wrong type, no value outside an allowed list, and no data used as an
//! object key (sink and program names are array members).
//!
//! | field | meaning |
//! |---|---|
//! | `@timestamp` | RFC 3339 UTC with nanoseconds, when the kernel saw the operation |
//! | `ecs.version` | `9.4.0` |
//! | `agent.type`, `agent.version`, `agent.id` | `snapmon`, its version, a stable per-host id derived from `/etc/machine-id` (not the machine id itself) |
//! | `host.hostname`, `host.name`, `host.id` | this host; `host.id` is `/etc/machine-id` |
//! | `event.kind` | `event` (an observed operation), `alert` (a rule fired), `state` (agent lifecycle: `started` and its detail records, `stopped`, `reloaded`, `reload_failed`), `metric` (loss and counters) |
//! | `event.category` | `["file"]` or `["process"]`; enforcement decisions add `intrusion_detection` |
//! | `event.type` | `["change"]`, `["creation"]`, `["deletion"]`, `["access"]`, `["info"]`, `["start"]`, `["end"]`, `["denied"]`/`["allowed"]` (decisions) |
//! | `event.action` | operation (enforcement decisions: `deny_<op>` / `would_deny_<op>`): `write`, `pwrite64`, `writev`, `pwritev`, `pwritev2`, `io_uring_write`, `io_uring_writev`, `io_uring_register_files`, `aio_pwrite`, `aio_pwritev`, `copy_file_range`, `splice`, `sendfile`, `fallocate`, `punch_hole`, `zero_range`, `truncate`, `mmap_shared_write`, `create`, `open_write`, `open_truncate`, `rename`, `unlink`, `rmdir`, `link`, `symlink`, `mkdir`, `chmod`, `chown`, `utimes`, `ioctl`, `loop_detached` (the agent found a loop device over a watched file detached at its last close: `loop_watch: ended`, no actor), `fork`, `exec`, `exit`; for state/metric records the record's name (`started`, `hooks`, `stopped`, `lost`, `stats` …) |
//! | `event.sequence` | agent-assigned, increasing |
//! | `event.id` | file, network and syslog sinks: the record's id, `RUN-N` (RUN random per agent start, N counting records), the same in every sink and every re-send, for de-duplication |
//! | `event.severity`, `event.risk_score`, `event.reason` | alerts only: 21/47/73/99 for low/medium/high/critical (0 for info); the alert sentence |
//! | `event.module`, `event.dataset` | `snapmon`, `snapmon.<category>` (`snapmon.agent` for state/metric, `snapmon.chain` for the chain's records) |
//! | `file.path`, `file.name`, `file.directory` | the file (display form, `text::escape_bytes`: invalid UTF-8, control and bidi characters and `\\` as `\xNN`); for an ioctl, the entry the descriptor was opened by |
//! | `file.inode`, `file.device`, `file.size`, `file.type` | identity (`MAJOR:MINOR` of the kernel superblock), size when seen, `dir` (mkdir/rmdir) or `symlink` (symlink; the link's target string is not captured, so `file.target_path` is never set) |
//! | `process.pid`, `process.thread.id`, `process.name`, `process.executable`, `process.args`, `process.entity_id`, `process.user.id`, `process.group.id`, `process.working_directory` | the actor; absent (with `snapmon.process`) on a record no process made (`loop_detached`) |
//! | `process.parent.pid`, `.name`, `.executable`, `.entity_id` | its parent |
//! | `container.id` | the actor's container, when it is in one |
//! | `rule.id`, `rule.name`, `message` | alerts only: the rule and one sentence naming actor, action, target and diff |
//! | `threat.framework`, `threat.tactic.{id,name,reference}`, `threat.technique.{id,name,reference}`, `threat.technique.subtechnique.{id,name,reference}` | alerts only: MITRE ATT&CK, tactics and techniques apart from sub-techniques (`T1565.001` is `technique.id` `T1565` + `subtechnique.id` `T1565.001`) |
//! | `snapmon.schema_version` | `2` |
//! | `snapmon.backend` | hook family that saw it: `tracepoint`, `fentry` or `lsm` |
//! | `snapmon.severity`, `snapmon.related_sequence` | alerts: severity word, sequences of earlier events the rule used |
//! | `snapmon.write.op`, `.offset`, `.length`, `.offset_from_fpos`, `.length_partial`, `.mode` | write details (`offset` −1 when unknown) |
//! | `snapmon.destination.path`, `.path_hex` | rename/link destination (raw bytes in hex when not UTF-8) |
//! | `snapmon.ioctl.cmd`, `.arg`, `.arg_captured`, `.name`, `.summary`, `.decoded` | ioctl number (hex), argument pointer, bytes captured, the bare command name (`DM_DEV_REMOVE`), the decoded one-line summary, the decoded argument (`flattened`) |
//! | `snapmon.classification` | `format`, `regions`, `changes` (`[{field,before,after}]`), `sample_entropy`, `ioctl_name` (decoded summary), `ioctl` (`flattened`), `snapshot_destructive`, `snapshot_create`, `facts` (`[name, value]` pairs read from the file: libvirt domain/snapshot, LVM vg/seqno/description, `snapshot_table` notes; `incoming`/`replaced` for a rename or link judged by its target, `became`/`made` for a file being made, `header_unparseable`) |
//! | `snapmon.process.ancestors` | `[{pid,name,executable,entity_id}]`, parent first (a file sink writes it once per process and ancestry in each file: docs/output.md); `.lineage` `python3 ← bash ← sshd`; `.args_truncated`; `.executable_identity.{device,inode}`; `.systemd_unit`; `.vm.{name,uuid}` |
//! | `snapmon.file_path_hex` | raw path bytes in hex when the path is not valid UTF-8 or has escaped bytes |
//! | `snapmon.detail` | operation specifics: `mode`, `uid`, `gid`, `open_flags`, `rename_flags`, `length`, `recheck` (`late_fill`, `shared_mapping`, `clone`: a follow-up event from a later look at the file), `via` (`io_uring`, `lsm`), `loop_device`, `loop_role` (`backing`: a loop attach of the watched file; `device`: an ioctl on a loop device over it), `loop_offset` (a write through a loop device over the file, mapped to the file's offsets; docs/rules.md SM-K005), `loop_node` (that write went through another node of the device, e.g. a `mknod` twin: its path), `loop_watch` (`ended`: on the attach of another file, or a `loop_detached` event; `refused`, `detach_requested`), `loop_worker` (the kernel thread that wrote, with `loop_role: worker`), `io_uring_register`, `io_uring_slot`, `io_uring_fd`, `io_uring_ring_fd`, `io_uring_cut` (an `io_uring_register_files` event: how a watched file entered a ring's registered-file table, its slot, the fd, the ring's fd, and `64 of N` when the call passed more fds than the kernel reads; SM-U001; on a write through a registered file, `io_uring_slot` is the slot it named), `overlay_mount`, `overlay_path` (the record is about a file in a store written or opened through an overlay's merged view: the overlay's mount point and the path used; docs/rules.md, Overlays), `link_path` (a namespace operation named the file through a symlinked or bind-mounted store, or from another mount namespace: the path as given, `file.path`/`snapmon.destination.path` being the store's name; docs/rules.md), `path_truncated` (`file`, `target`, `file,target`: that path is the kernel's cut copy with `…`, unresolved; docs/output.md), `inode_reused` (`true`: the record is about an earlier file with this inode number, read after the current one was created; named by its own name, never judged), `dropped`, `dropped_record` (on a `blinded` event: records about images or metadata the kernel dropped since the last one, and what the last was; SM-A001), `read_stalled` (a file the judgement needed did not answer within `[agent] read_budget_ms`: `FILE: why`; docs/rules.md, Stuck filesystems); decisions: `operation`, `outcome`, `protected`, `actor_exe_identity`, `aux` |
//! | `snapmon.state` / `snapmon.metric` | state and metric payloads (docs/output.md, "Agent records"): start-up detail records `hooks` (`hooks: [{program, attached_to, covers, error, enforcement_only}]`, `part`/`parts`), `coverage` (`paths: [{path, covered, by, impact}]`), `stores`, `stores_skipped`, `kernel_fields`, `enforcement`, `rule_warnings`, `sinks`, then the `started` summary; `stopped` (final `stats`, `sinks: [{name, …}]`, `hooks.programs: [{program, attach, runs, run_ns}]`); `lost` (`kernel`/`decoder`/`watch`/`agent` `{cause: n}`, `sinks: [{sink, cause, count}]`); `filtered`; `stats`; `evidence` (`image`, `rule`, `sequence`, `dir`, `evidence_files: [{path, sha256, bytes}]`) and `evidence_failed` (`image`, `rule`, `sequence`, `error`) after a high or critical alert on an image |
//! | `snapmon.chain` | file sinks only, a top-level dotted key, last member of the line: `{seq, prev, hash}` of the tamper-evident hash chain (see `sink::chain` and docs/output.md) |

use crate::event::Action;

use std::io::Write;

use serde_json::{json, Map, Value};

use crate::{
    clock::{now_unix_ns, rfc3339, write_rfc3339},
    event::{Bytes, Event, FileInfo, ProcessInfo},
    paths::dev_display,
    record::Record,
};

/// Version of the `snapmon.*` layout: 2 moved rename/link destinations out of
/// `file.target_path` (`snapmon.destination`), `process.args_truncated` into
/// `snapmon.process`, and object keys that were data (sink and program names) into arrays.
pub const SCHEMA_VERSION: u32 = 2;

/// The ECS release the records follow (and are validated against: schema/ecs).
pub const ECS_VERSION: &str = "9.4.0";

fn file_json(f: &FileInfo, snap: &mut Map<String, Value>, hex_key: &str) -> Value {
    let mut o = Map::new();
    if let Some(p) = &f.path {
        let disp = p.display();
        let path = p.as_path();
        o.insert("path".into(), json!(disp));
        if let Some(n) = path.file_name() {
            o.insert(
                "name".into(),
                json!(Bytes(n.as_encoded_bytes().to_vec()).display()),
            );
        }
        if let Some(d) = path.parent() {
            o.insert("directory".into(), json!(Bytes::from_path(d).display()));
        }
        if !p.is_utf8() || disp.contains("\\x") {
            snap.insert(hex_key.into(), json!(p.hex()));
        }
    }
    if f.ino != 0 {
        o.insert("inode".into(), json!(f.ino.to_string()));
        o.insert("device".into(), json!(dev_display(f.dev)));
    }
    if let Some(s) = f.size {
        o.insert("size".into(), json!(s));
    }
    Value::Object(o)
}

fn event_json(e: &Event, host: &str, kind: &str) -> Map<String, Value> {
    let mut snap = Map::new();
    snap.insert("schema_version".into(), json!(SCHEMA_VERSION));
    snap.insert("backend".into(), json!(e.backend.as_str()));
    let mut root = common(host);
    root.insert("@timestamp".into(), json!(rfc3339(e.ts_unix_ns)));
    let (cat, cat2) = categories(e);
    let mut category = vec![cat];
    category.extend(cat2);
    root.insert(
        "event".into(),
        json!({
            "kind": kind,
            "category": category,
            "type": [e.ecs_type],
            "action": e.action,
            "sequence": e.seq,
            "module": "snapmon",
            "dataset": format!("snapmon.{}", e.category.as_str()),
        }),
    );
    if let Some(f) = &e.file {
        let mut fj = file_json(f, &mut snap, "file_path_hex");
        if let Some(t) = file_type(e) {
            fj["type"] = json!(t);
        }
        root.insert("file".into(), fj);
    }
    if let Some(p) = e.target.as_ref().and_then(|t| t.path.as_ref()) {
        let mut d = json!({"path": p.display()});
        if !p.is_utf8() {
            d["path_hex"] = json!(p.hex());
        }
        snap.insert("destination".into(), d);
    }
    // The agent's own observation has no actor: no `process` at all, not pid 0 / uid 0.
    if !e.no_actor {
        process_json(&e.process, &mut root, &mut snap);
    }
    if let Some(w) = &e.write {
        snap.insert(
            "write".into(),
            serde_json::to_value(w).unwrap_or(Value::Null),
        );
    }
    if let Some(i) = &e.ioctl {
        snap.insert("ioctl".into(), ioctl_json(i, e.classification.as_ref()));
    }
    if let Some(c) = &e.classification {
        snap.insert(
            "classification".into(),
            serde_json::to_value(c).unwrap_or(Value::Null),
        );
    }
    if !e.detail.is_empty() {
        let d: Map<String, Value> = e
            .detail
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), json!(v)))
            .collect();
        snap.insert("detail".into(), Value::Object(d));
    }
    root.insert("snapmon".into(), Value::Object(snap));
    root
}

/// The actor: ECS `process` (and `container`) in `root`, the rest in `snapmon.process`.
fn process_json(p: &ProcessInfo, root: &mut Map<String, Value>, snap: &mut Map<String, Value>) {
    let mut pj = json!({
        "pid": p.pid,
        "thread": {"id": p.tid},
        "name": p.name,
        "executable": p.executable.display(),
        "args": p.args.iter().map(|a| a.display()).collect::<Vec<_>>(),
        "user": {"id": p.uid.to_string()},
        "group": {"id": p.gid.to_string()},
    });
    if !p.entity_id.is_empty() {
        pj["entity_id"] = json!(p.entity_id);
    }
    if let Some(par) = &p.parent {
        pj["parent"] = json!({"pid": par.pid, "name": par.name, "executable": par.executable, "entity_id": par.entity_id});
    } else if p.ppid != 0 {
        pj["parent"] = json!({"pid": p.ppid});
    }
    if let Some(c) = &p.container_id {
        root.insert("container".into(), json!({"id": c}));
    }
    root.insert("process".into(), pj);
    let mut sp = json!({
        "ancestors": &*p.ancestors,
        "lineage": p.lineage(),
    });
    if p.args_truncated {
        sp["args_truncated"] = json!(true);
    }
    if p.exe_ino != 0 {
        sp["executable_identity"] =
            json!({"device": dev_display(p.exe_dev), "inode": p.exe_ino.to_string()});
    }
    if let Some(u) = &p.systemd_unit {
        sp["systemd_unit"] = json!(u);
    }
    if p.vm_name.is_some() || p.vm_uuid.is_some() {
        sp["vm"] = json!({"name": p.vm_name, "uuid": p.vm_uuid});
    }
    if let Some(cwd) = &p.cwd {
        root.get_mut("process").unwrap()["working_directory"] = json!(cwd.display());
    }
    snap.insert("process".into(), sp);
}

/// `snapmon.ioctl`: the number, the bare command name (never its decoded arguments: they are
/// in `summary` and `decoded`), so a terms aggregation on the name has one bucket per command.
fn ioctl_json(i: &crate::event::IoctlRaw, c: Option<&crate::classify::Classification>) -> Value {
    let mut ij = json!({"cmd": format!("{:#010x}", i.cmd), "arg": format!("{:#x}", i.arg), "arg_captured": i.arg_data.len()});
    if let Some(c) = c {
        if let Some(n) = c.ioctl.as_ref().and_then(|d| d["name"].as_str()) {
            ij["name"] = json!(n);
        }
        if let Some(n) = &c.ioctl_name {
            ij["summary"] = json!(n);
        }
        if let Some(d) = &c.ioctl {
            ij["decoded"] = d.clone();
        }
    }
    ij
}

/// `event.category`: the event's own, plus `intrusion_detection` for an enforcement
/// decision (ECS expects `allowed`/`denied` types there, not under `file`).
fn categories(e: &Event) -> (&'static str, Option<&'static str>) {
    use crate::event::EventType as T;
    let cat = e.category.as_str();
    match e.ecs_type {
        T::Denied | T::Allowed => (cat, Some("intrusion_detection")),
        T::Unset
        | T::Change
        | T::Creation
        | T::Deletion
        | T::Access
        | T::Info
        | T::Start
        | T::End => (cat, None),
    }
}

/// ECS `file.type` where the operation tells it: a directory made or removed, a symlink made.
pub fn file_type(e: &Event) -> Option<&'static str> {
    match e.action {
        Action::Mkdir | Action::Rmdir => Some("dir"),
        Action::Symlink => Some("symlink"),
        _ => None,
    }
}

/// `agent`, `ecs` and `host`: the members every record carries.
fn common(host: &str) -> Map<String, Value> {
    let id = super::identity::get();
    let mut agent =
        json!({"type": super::identity::AGENT_TYPE, "version": super::identity::AGENT_VERSION});
    if let Some(a) = &id.agent_id {
        agent["id"] = json!(a);
    }
    let mut h = json!({"hostname": host, "name": host});
    if let Some(i) = &id.host_id {
        h["id"] = json!(i);
    }
    let mut root = Map::new();
    root.insert("agent".into(), agent);
    root.insert("ecs".into(), json!({"version": ECS_VERSION}));
    root.insert("host".into(), h);
    root
}

/// ECS `threat`: tactics, techniques and sub-techniques apart (`T1565.001` is a
/// sub-technique of `T1565`), each as parallel arrays of id, name and reference.
fn threat_json(ids: &[String]) -> Value {
    let s = crate::attack::split(ids);
    let mut technique = json!({
        "id": s.techniques.iter().map(|t| &t.0).collect::<Vec<_>>(),
        "name": s.techniques.iter().map(|t| &t.1).collect::<Vec<_>>(),
        "reference": s.techniques.iter().map(|t| crate::attack::technique_url(&t.0)).collect::<Vec<_>>(),
    });
    if !s.subs.is_empty() {
        technique["subtechnique"] = json!({
            "id": s.subs.iter().map(|t| t.0).collect::<Vec<_>>(),
            "name": s.subs.iter().map(|t| t.1).collect::<Vec<_>>(),
            "reference": s.subs.iter().map(|t| crate::attack::technique_url(t.0)).collect::<Vec<_>>(),
        });
    }
    json!({
        "framework": "MITRE ATT&CK",
        "tactic": {
            "id": s.tactics.iter().map(|t| t.0).collect::<Vec<_>>(),
            "name": s.tactics.iter().map(|t| t.1).collect::<Vec<_>>(),
            "reference": s.tactics.iter().map(|t| crate::attack::tactic_url(t.0)).collect::<Vec<_>>(),
        },
        "technique": technique,
    })
}

/// The ECS object for one record.
pub fn to_value(r: &Record, host: &str) -> Value {
    match r {
        Record::Event(e) => Value::Object(event_json(e, host, "event")),
        Record::Alert(a) => {
            let mut root = event_json(&a.event, host, "alert");
            if let Some(ev) = root.get_mut("event") {
                ev["severity"] = json!(a.severity.ecs());
                ev["risk_score"] = json!(a.severity.ecs());
                ev["reason"] = json!(a.message);
            }
            root.insert("message".into(), json!(a.message));
            root.insert("rule".into(), json!({"id": a.rule_id, "name": a.rule_name}));
            root.insert("threat".into(), threat_json(&a.technique));
            if let Some(s) = root.get_mut("snapmon") {
                s["severity"] = json!(a.severity.as_str());
                if !a.related_seq.is_empty() {
                    s["related_sequence"] = json!(a.related_seq);
                }
            }
            Value::Object(root)
        }
        Record::State(s) => control("state", s.action, "snapmon.agent", "state", &s.detail, host),
        Record::Metric(m) => control(
            "metric",
            m.action,
            "snapmon.agent",
            "metric",
            &m.detail,
            host,
        ),
    }
}

/// A state or metric record: `event.kind` `kind`, its payload in `snapmon.<member>`.
pub fn control(
    kind: &str,
    action: &str,
    dataset: &str,
    member: &str,
    detail: &Value,
    host: &str,
) -> Value {
    let mut root = common(host);
    root.insert("@timestamp".into(), json!(rfc3339(now_unix_ns())));
    root.insert(
        "event".into(),
        json!({"kind": kind, "action": action, "module": "snapmon", "dataset": dataset}),
    );
    root.insert(
        "snapmon".into(),
        json!({"schema_version": SCHEMA_VERSION, member: detail}),
    );
    Value::Object(root)
}

/// `(dataset, action, payload)` of a state or metric record in either format: ECS
/// `event.{dataset,action}` and `snapmon.{state|metric}`, OCSF `unmapped.{…}`.
pub fn control_view(v: &Value) -> (&str, &str, &Value) {
    let ocsf = v.get("class_uid").is_some();
    let (dataset, action, payload) = if ocsf {
        let u = &v["unmapped"];
        (
            &u["dataset"],
            &u["action"],
            if u["state"].is_null() {
                &u["metric"]
            } else {
                &u["state"]
            },
        )
    } else {
        let s = &v["snapmon"];
        (
            &v["event"]["dataset"],
            &v["event"]["action"],
            if s["state"].is_null() {
                &s["metric"]
            } else {
                &s["state"]
            },
        )
    };
    (
        dataset.as_str().unwrap_or(""),
        action.as_str().unwrap_or(""),
        payload,
    )
}

/// The same bytes `serde_json::to_vec(&to_value(r, host))` gives, written straight from the
/// typed record: keys in the sorted order a `serde_json::Map` would give, no intermediate
/// `Value` tree. Events and alerts are the hot path; state and metric records go the long way.
pub fn write_record(out: &mut Vec<u8>, r: &Record, host: &str) {
    write_record_id(out, r, host, None)
}

/// [`write_record`] with the record's id as `event.id`.
pub fn write_record_id(out: &mut Vec<u8>, r: &Record, host: &str, id: Option<&str>) {
    write_record_lean(out, r, host, id, false)
}

/// [`write_record_id`]; with `lean`, an event (never an alert) leaves out
/// `snapmon.process.ancestors`: the file sink's file already carried that process's ancestry
/// as it is (docs/output.md, "Ancestry once per process").
pub fn write_record_lean(out: &mut Vec<u8>, r: &Record, host: &str, id: Option<&str>, lean: bool) {
    match r {
        Record::Event(e) => write_event(out, e, host, None, id, lean),
        Record::Alert(a) => write_event(out, &a.event, host, Some(a), id, false),
        _ => {
            let mut v = to_value(r, host);
            if let Some(id) = id {
                v["event"]["id"] = json!(id);
            }
            let _ = serde_json::to_writer(&mut *out, &v);
        }
    }
}

/// A JSON string exactly as serde_json escapes it.
/// A JSON array of strings, each by [`js`].
fn js_list<S: AsRef<str>>(out: &mut Vec<u8>, items: impl IntoIterator<Item = S>) {
    out.push(b'[');
    for (i, s) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        js(out, s.as_ref());
    }
    out.push(b']');
}

fn js(out: &mut Vec<u8>, v: &str) {
    // serde_json escapes only `"`, `\` and C0 controls: without them the bytes go as they
    // are, skipping its serializer (a dozen strings per record).
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
        return;
    }
    let _ = serde_json::to_writer(&mut *out, v);
}

/// `"key":` (keys are ASCII identifiers: no escaping needed).
fn key(out: &mut Vec<u8>, k: &str, first: &mut bool) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn num(out: &mut Vec<u8>, n: impl serde::Serialize) {
    let _ = serde_json::to_writer(&mut *out, &n);
}

/// `Classification` with its keys in sorted order, as its `Value` tree gives them: this
/// runs for most records, and the detour through a `Value` tree cost a quarter of a render.
fn write_classification(out: &mut Vec<u8>, c: &crate::classify::Classification) {
    let mut first = true;
    out.push(b'{');
    if !c.changes.is_empty() {
        key(out, "changes", &mut first);
        out.push(b'[');
        for (i, ch) in c.changes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut f = true;
            out.push(b'{');
            key(out, "after", &mut f);
            js(out, &ch.after);
            key(out, "before", &mut f);
            js(out, &ch.before);
            key(out, "field", &mut f);
            js(out, &ch.field);
            out.push(b'}');
        }
        out.push(b']');
    }
    if !c.facts.is_empty() {
        key(out, "facts", &mut first);
        let _ = serde_json::to_writer(&mut *out, &c.facts);
    }
    key(out, "format", &mut first);
    js(out, c.format.as_str());
    if let Some(i) = &c.ioctl {
        key(out, "ioctl", &mut first);
        let _ = serde_json::to_writer(&mut *out, i);
    }
    if let Some(n) = &c.ioctl_name {
        key(out, "ioctl_name", &mut first);
        js(out, n);
    }
    if !c.regions.is_empty() {
        key(out, "regions", &mut first);
        // By `js`, not serde's sequence writer: the same bytes, for most records.
        js_list(out, &c.regions);
    }
    if let Some(e) = c.sample_entropy {
        key(out, "sample_entropy", &mut first);
        // Through a Value like the tree: a non-finite float is `null` there too.
        let _ = serde_json::to_writer(&mut *out, &serde_json::json!(e));
    }
    if c.snapshot_create {
        key(out, "snapshot_create", &mut first);
        out.extend_from_slice(b"true");
    }
    if c.snapshot_destructive {
        key(out, "snapshot_destructive", &mut first);
        out.extend_from_slice(b"true");
    }
    out.push(b'}');
}

/// The `file` object; for a named file, whether its path is plain text (`text::plain`):
/// known from the render cache, so `snapmon.file_path_hex` needs no second scan of the path.
fn write_file(out: &mut Vec<u8>, f: &FileInfo, ty: Option<&str>) -> Option<bool> {
    let mut first = true;
    let mut plain = None;
    out.push(b'{');
    match &f.path {
        Some(p) => {
            plain = Some(file_named(out, f.dev, f.ino, p));
            first = false;
        }
        None if f.ino != 0 => {
            key(out, "device", &mut first);
            js(out, &dev_display(f.dev));
            key(out, "inode", &mut first);
            out.push(b'"');
            num(out, f.ino);
            out.push(b'"');
        }
        None => {}
    }
    if let Some(sz) = f.size {
        key(out, "size", &mut first);
        num(out, sz);
    }
    if let Some(t) = ty {
        key(out, "type", &mut first);
        js(out, t);
    }
    out.push(b'}');
    plain
}

/// Files rendered lately by this sink thread: the same image is written over and over, and
/// escaping its path three ways cost more than the rest of the `file` object.
const FILE_CACHE_MAX: usize = 256;

/// A file's path, its members rendered, and whether the path is plain text.
type RenderedFile = std::rc::Rc<(Bytes, Vec<u8>, bool)>;

/// (dev, ino) → the path rendered and its bytes.
type FileCache = std::collections::HashMap<(u32, u64), RenderedFile>;

thread_local! {
    static FILE_CACHE: std::cell::RefCell<FileCache> = Default::default();
    /// The file rendered last: a flood on one image finds it without hashing.
    static LAST_FILE: std::cell::RefCell<Option<((u32, u64), RenderedFile)>> =
        const { std::cell::RefCell::new(None) };
}

/// `"device":…,"directory":…,"inode":…,"name":…,"path":…` of a named file; returns
/// whether the path is plain text.
fn file_named(out: &mut Vec<u8>, dev: u32, ino: u64, p: &Bytes) -> bool {
    let hit = LAST_FILE.with(|l| {
        let l = l.try_borrow().ok()?;
        let (k, r) = l.as_ref()?;
        (*k == (dev, ino) && r.0 == *p).then(|| {
            out.extend_from_slice(&r.1);
            r.2
        })
    });
    if let Some(plain) = hit {
        return plain;
    }
    let (plain, r) = FILE_CACHE.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            file_named_uncached(out, dev, ino, p);
            return (crate::text::plain(&p.0).is_some(), None);
        };
        if let Some(r) = c.get(&(dev, ino)) {
            if r.0 == *p {
                out.extend_from_slice(&r.1);
                return (r.2, Some(r.clone()));
            }
        }
        let mut bytes = Vec::with_capacity(64 + 3 * p.0.len());
        file_named_uncached(&mut bytes, dev, ino, p);
        out.extend_from_slice(&bytes);
        if c.len() >= FILE_CACHE_MAX {
            c.clear();
        }
        let plain = crate::text::plain(&p.0).is_some();
        let r = std::rc::Rc::new((p.clone(), bytes, plain));
        c.insert((dev, ino), r.clone());
        (plain, Some(r))
    });
    if let Some(r) = r {
        LAST_FILE.with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                *l = Some(((dev, ino), r));
            }
        });
    }
    plain
}

fn file_named_uncached(out: &mut Vec<u8>, dev: u32, ino: u64, p: &Bytes) {
    let mut first = true;
    if ino != 0 {
        key(out, "device", &mut first);
        js(out, &dev_display(dev));
    }
    let path = p.as_path();
    if let Some(d) = path.parent() {
        key(out, "directory", &mut first);
        js(out, &Bytes::from_path(d).display());
    }
    if ino != 0 {
        key(out, "inode", &mut first);
        out.push(b'"');
        num(out, ino);
        out.push(b'"');
    }
    if let Some(n) = path.file_name() {
        key(out, "name", &mut first);
        js(out, &Bytes(n.as_encoded_bytes().to_vec()).display());
    }
    key(out, "path", &mut first);
    js(out, &p.display());
}

/// Processes rendered lately by this sink thread, by entity id: every record of a process
/// repeats its `process` members. An entry holds for the build of the process it was rendered
/// from (`ProcessInfo::revision`); a new build replaces it.
const PROCESS_CACHE_MAX: usize = 1024;

thread_local! {
    static PROCESS_CACHE: std::cell::RefCell<
        std::collections::HashMap<String, (u64, std::rc::Rc<RenderedProcess>)>,
    > = Default::default();
}

thread_local! {
    /// The build rendered last: a writer's records come in runs, found without hashing.
    static LAST_PROCESS: std::cell::RefCell<Option<(u64, std::rc::Rc<RenderedProcess>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `p` rendered, from this thread's cache if this build was rendered before; `None` when no
/// build number vouches for the fields (the caller renders them inline).
fn rendered_process(p: &ProcessInfo) -> Option<std::rc::Rc<RenderedProcess>> {
    if p.revision == 0 {
        return None;
    }
    // Revisions are unique in the agent: the same number is the same build.
    let last = LAST_PROCESS.with(|l| {
        l.try_borrow()
            .ok()?
            .as_ref()
            .filter(|(rev, _)| *rev == p.revision)
            .map(|(_, r)| r.clone())
    });
    if last.is_some() {
        return last;
    }
    let r = rendered_process_keyed(p)?;
    LAST_PROCESS.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = Some((p.revision, r.clone()));
        }
    });
    Some(r)
}

fn rendered_process_keyed(p: &ProcessInfo) -> Option<std::rc::Rc<RenderedProcess>> {
    PROCESS_CACHE.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if let Some((rev, r)) = c.get(p.entity_id.as_str()) {
            if *rev == p.revision {
                return Some(r.clone());
            }
        }
        let r = std::rc::Rc::new(RenderedProcess::of(p));
        if c.len() >= PROCESS_CACHE_MAX {
            c.clear();
        }
        c.insert(p.entity_id.clone(), (p.revision, r.clone()));
        Some(r)
    })
}

/// The `process` and `snapmon.process` members of a process as JSON, rendered once per build
/// of the process (`rendered_process`).
#[derive(Debug)]
struct RenderedProcess {
    /// `{"args":…,"pid":N` (up to the thread).
    head: Vec<u8>,
    /// `,"user":…}` (after the thread).
    tail: Vec<u8>,
    /// The whole `snapmon.process` object.
    snapmon: Vec<u8>,
    /// The same without `ancestors` (a lean record).
    snapmon_lean: Vec<u8>,
}

impl RenderedProcess {
    fn of(p: &ProcessInfo) -> Self {
        let mut head = Vec::with_capacity(256);
        process_head(&mut head, p);
        let mut tail = Vec::with_capacity(64);
        process_tail(&mut tail, p);
        let mut snapmon = Vec::with_capacity(1024);
        snapmon_process(&mut snapmon, p, true);
        let mut snapmon_lean = Vec::with_capacity(256);
        snapmon_process(&mut snapmon_lean, p, false);
        RenderedProcess {
            head,
            tail,
            snapmon,
            snapmon_lean,
        }
    }
}

fn process_head(out: &mut Vec<u8>, p: &ProcessInfo) {
    let mut f = true;
    out.push(b'{');
    key(out, "args", &mut f);
    js_list(out, p.args.iter().map(|a| a.display()));
    if !p.entity_id.is_empty() {
        key(out, "entity_id", &mut f);
        js(out, &p.entity_id);
    }
    key(out, "executable", &mut f);
    js(out, &p.executable.display());
    key(out, "group", &mut f);
    out.extend_from_slice(b"{\"id\":\"");
    num(out, p.gid);
    out.extend_from_slice(b"\"}");
    key(out, "name", &mut f);
    js(out, &p.name);
    if let Some(par) = &p.parent {
        key(out, "parent", &mut f);
        let mut g = true;
        out.push(b'{');
        key(out, "entity_id", &mut g);
        js(out, &par.entity_id);
        key(out, "executable", &mut g);
        js(out, &par.executable);
        key(out, "name", &mut g);
        js(out, &par.name);
        key(out, "pid", &mut g);
        num(out, par.pid);
        out.push(b'}');
    } else if p.ppid != 0 {
        key(out, "parent", &mut f);
        out.extend_from_slice(b"{\"pid\":");
        num(out, p.ppid);
        out.push(b'}');
    }
    key(out, "pid", &mut f);
    num(out, p.pid);
}

/// `,"thread":{"id":N}`: the one per-event member inside `process`.
fn write_thread(out: &mut Vec<u8>, tid: u32) {
    out.extend_from_slice(b",\"thread\":{\"id\":");
    num(out, tid);
    out.push(b'}');
}

fn process_tail(out: &mut Vec<u8>, p: &ProcessInfo) {
    let mut f = false;
    key(out, "user", &mut f);
    out.extend_from_slice(b"{\"id\":\"");
    num(out, p.uid);
    out.extend_from_slice(b"\"}");
    if let Some(cwd) = &p.cwd {
        key(out, "working_directory", &mut f);
        js(out, &cwd.display());
    }
    out.push(b'}');
}

fn snapmon_process(out: &mut Vec<u8>, p: &ProcessInfo, ancestors: bool) {
    let mut g = true;
    out.push(b'{');
    if ancestors {
        write_ancestors(out, p, &mut g);
    }
    if p.args_truncated {
        key(out, "args_truncated", &mut g);
        out.extend_from_slice(b"true");
    }
    if p.exe_ino != 0 {
        key(out, "executable_identity", &mut g);
        out.extend_from_slice(b"{\"device\":");
        js(out, &dev_display(p.exe_dev));
        out.extend_from_slice(b",\"inode\":\"");
        num(out, p.exe_ino);
        out.extend_from_slice(b"\"}");
    }
    key(out, "lineage", &mut g);
    js(out, &p.lineage());
    if let Some(u) = &p.systemd_unit {
        key(out, "systemd_unit", &mut g);
        js(out, u);
    }
    if p.vm_name.is_some() || p.vm_uuid.is_some() {
        key(out, "vm", &mut g);
        let _ = serde_json::to_writer(&mut *out, &json!({"name": p.vm_name, "uuid": p.vm_uuid}));
    }
    out.push(b'}');
}

/// `"ancestors":[…]`, the bulk of `snapmon.process`.
fn write_ancestors(out: &mut Vec<u8>, p: &ProcessInfo, g: &mut bool) {
    key(out, "ancestors", g);
    out.push(b'[');
    for (i, a) in p.ancestors.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut h = true;
        out.push(b'{');
        if !a.entity_id.is_empty() {
            key(out, "entity_id", &mut h);
            js(out, &a.entity_id);
        }
        key(out, "executable", &mut h);
        js(out, &a.executable);
        key(out, "name", &mut h);
        js(out, &a.name);
        key(out, "pid", &mut h);
        num(out, a.pid);
        out.push(b'}');
    }
    out.push(b']');
}

/// `"agent":{…}` of this host (constant: rendered once).
fn write_agent(out: &mut Vec<u8>) {
    static AGENT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    out.extend_from_slice(AGENT.get_or_init(|| {
        let id = super::identity::get();
        let mut v =
            json!({"type": super::identity::AGENT_TYPE, "version": super::identity::AGENT_VERSION});
        if let Some(a) = &id.agent_id {
            v["id"] = json!(a);
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }));
}

fn write_host(out: &mut Vec<u8>, host: &str) {
    out.extend_from_slice(b"{\"hostname\":");
    js(out, host);
    if let Some(i) = &super::identity::get().host_id {
        out.extend_from_slice(b",\"id\":");
        js(out, i);
    }
    out.extend_from_slice(b",\"name\":");
    js(out, host);
    out.push(b'}');
}

fn write_event(
    out: &mut Vec<u8>,
    e: &Event,
    host: &str,
    alert: Option<&crate::record::Alert>,
    id: Option<&str>,
    lean: bool,
) {
    let p = &e.process;
    let mut root = true;
    out.push(b'{');
    key(out, "@timestamp", &mut root);
    out.push(b'"');
    write_rfc3339(out, e.ts_unix_ns);
    out.push(b'"');
    key(out, "agent", &mut root);
    write_agent(out);
    if let Some(c) = p.container_id.as_ref().filter(|_| !e.no_actor) {
        key(out, "container", &mut root);
        out.extend_from_slice(b"{\"id\":");
        js(out, c);
        out.push(b'}');
    }
    key(out, "ecs", &mut root);
    out.extend_from_slice(b"{\"version\":");
    js(out, ECS_VERSION);
    out.push(b'}');
    key(out, "event", &mut root);
    {
        let mut f = true;
        out.push(b'{');
        key(out, "action", &mut f);
        js(out, e.action.as_str());
        key(out, "category", &mut f);
        out.push(b'[');
        let (cat, cat2) = categories(e);
        js(out, cat);
        if let Some(c) = cat2 {
            out.push(b',');
            js(out, c);
        }
        out.push(b']');
        key(out, "dataset", &mut f);
        out.extend_from_slice(b"\"snapmon.");
        // `snapmon.` + category as one string; category names are ASCII words (test below).
        out.extend_from_slice(e.category.as_str().as_bytes());
        out.push(b'"');
        if let Some(id) = id {
            key(out, "id", &mut f);
            js(out, id);
        }
        key(out, "kind", &mut f);
        js(out, if alert.is_some() { "alert" } else { "event" });
        key(out, "module", &mut f);
        js(out, "snapmon");
        if let Some(a) = alert {
            key(out, "reason", &mut f);
            js(out, &a.message);
            key(out, "risk_score", &mut f);
            num(out, a.severity.ecs());
        }
        key(out, "sequence", &mut f);
        num(out, e.seq);
        if let Some(a) = alert {
            key(out, "severity", &mut f);
            num(out, a.severity.ecs());
        }
        key(out, "type", &mut f);
        out.push(b'[');
        js(out, e.ecs_type.as_str());
        out.push(b']');
        out.push(b'}');
    }
    let target = e.target.as_ref().and_then(|t| t.path.as_ref());
    let mut file_plain = None;
    if let Some(f) = &e.file {
        key(out, "file", &mut root);
        file_plain = write_file(out, f, file_type(e));
    }
    key(out, "host", &mut root);
    write_host(out, host);
    if let Some(a) = alert {
        key(out, "message", &mut root);
        js(out, &a.message);
    }
    // The agent's own observation has no actor: no `process` at all, not pid 0 / uid 0.
    let cached = if e.no_actor {
        None
    } else {
        rendered_process(p)
    };
    if !e.no_actor {
        key(out, "process", &mut root);
        match &cached {
            Some(r) => {
                out.extend_from_slice(&r.head);
                write_thread(out, p.tid);
                out.extend_from_slice(&r.tail);
            }
            None => {
                process_head(out, p);
                write_thread(out, p.tid);
                process_tail(out, p);
            }
        }
    }
    if let Some(a) = alert {
        key(out, "rule", &mut root);
        out.extend_from_slice(b"{\"id\":");
        js(out, &a.rule_id);
        out.extend_from_slice(b",\"name\":");
        js(out, &a.rule_name);
        out.push(b'}');
    }
    key(out, "snapmon", &mut root);
    {
        let mut f = true;
        out.push(b'{');
        key(out, "backend", &mut f);
        js(out, e.backend.as_str());
        if let Some(c) = &e.classification {
            key(out, "classification", &mut f);
            write_classification(out, c);
        }
        if let Some(t) = target {
            key(out, "destination", &mut f);
            out.extend_from_slice(b"{\"path\":");
            js(out, &t.display());
            if !t.is_utf8() {
                out.extend_from_slice(b",\"path_hex\":");
                js(out, &t.hex());
            }
            out.push(b'}');
        }
        if !e.detail.is_empty() {
            key(out, "detail", &mut f);
            let d: Map<String, Value> = e
                .detail
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json!(v)))
                .collect();
            let _ = serde_json::to_writer(&mut *out, &d);
        }
        if let Some(pth) = e.file.as_ref().and_then(|fi| fi.path.as_ref()) {
            // Invalid UTF-8 or anything escaped, as `file_json` asks, without escaping.
            if file_plain == Some(false) {
                key(out, "file_path_hex", &mut f);
                js(out, &pth.hex());
            }
        }
        if let Some(i) = &e.ioctl {
            key(out, "ioctl", &mut f);
            let _ = serde_json::to_writer(&mut *out, &ioctl_json(i, e.classification.as_ref()));
        }
        if !e.no_actor {
            key(out, "process", &mut f);
            match &cached {
                Some(r) if lean => out.extend_from_slice(&r.snapmon_lean),
                Some(r) => out.extend_from_slice(&r.snapmon),
                None => snapmon_process(out, p, !lean),
            }
        }
        if let Some(a) = alert {
            if !a.related_seq.is_empty() {
                key(out, "related_sequence", &mut f);
                let _ = serde_json::to_writer(&mut *out, &a.related_seq);
            }
        }
        key(out, "schema_version", &mut f);
        num(out, SCHEMA_VERSION);
        if let Some(a) = alert {
            key(out, "severity", &mut f);
            js(out, a.severity.as_str());
        }
        if let Some(w) = &e.write {
            key(out, "write", &mut f);
            let mut g = true;
            out.push(b'{');
            key(out, "length", &mut g);
            num(out, w.length);
            key(out, "length_partial", &mut g);
            out.extend_from_slice(if w.length_partial { b"true" } else { b"false" });
            if !w.mode.is_empty() {
                key(out, "mode", &mut g);
                let _ = serde_json::to_writer(&mut *out, &w.mode);
            }
            key(out, "offset", &mut g);
            num(out, w.offset);
            key(out, "offset_from_fpos", &mut g);
            out.extend_from_slice(if w.offset_from_fpos {
                b"true"
            } else {
                b"false"
            });
            key(out, "op", &mut g);
            js(out, w.op.as_str());
            out.push(b'}');
        }
        out.push(b'}');
    }
    if let Some(a) = alert {
        key(out, "threat", &mut root);
        let _ = serde_json::to_writer(&mut *out, &threat_json(&a.technique));
    }
    out.push(b'}');
}

/// Write one record as a line.
pub fn write_line(w: &mut dyn Write, r: &Record, host: &str) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(2048);
    write_record(&mut out, r, host);
    out.push(b'\n');
    w.write_all(&out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn direct_writer_gives_the_bytes_of_the_value_tree() {
        use crate::sink::fixtures;
        let mut recs = vec![
            Record::Event(fixtures::event(1)),
            fixtures::alert(2, crate::record::Severity::Critical),
        ];
        // Every optional part present, and bytes that need escaping.
        let mut e = fixtures::event(3);
        e.process.container_id = Some("c\"1".into());
        e.process.systemd_unit = Some("x.service".into());
        e.process.vm_name = Some("vm".into());
        e.process.cwd = Some(Bytes(b"/r\xff".to_vec()));
        e.process.args_truncated = true;
        e.process.parent = None;
        e.process.ppid = 9;
        std::sync::Arc::make_mut(&mut e.process.ancestors).push(crate::event::Ancestor {
            pid: 1,
            name: "init".into(),
            executable: "/sbin/init".into(),
            entity_id: String::new(),
        });
        // A key only replay makes (one this build does not know), rendered as read.
        e.detail.push((
            crate::event::DetailKey::Unknown("why".into()),
            "because".into(),
        ));
        if let Some(f) = &mut e.file {
            f.path = Some(Bytes(b"/s/a\x01\xfe.qcow2".to_vec()));
            f.size = None;
        }
        e.target = Some(FileInfo {
            path: Some(Bytes(b"/s/\xff".to_vec())),
            ..Default::default()
        });
        if let Some(w) = &mut e.write {
            w.mode = vec![
                crate::event::FallocMode::PunchHole,
                crate::event::FallocMode::KeepSize,
            ];
            w.offset = -1;
        }
        e.ioctl = Some(crate::event::IoctlRaw {
            cmd: 0x1234,
            arg: 7,
            arg_data: vec![1, 2],
        });
        recs.push(Record::Event(e.clone()));
        // Every classification member, and the ones a float cannot say.
        for entropy in [7.25, f64::NAN] {
            let mut e = e.clone();
            e.classification = Some(crate::classify::Classification {
                format: crate::classify::Format::Dm,
                regions: vec!["header.nb_snapshots".into(), "l1\"table".into()],
                changes: vec![
                    crate::classify::Change::new("nb_snapshots", "3", "0"),
                    crate::classify::Change::new("backing_file", "a\u{1}", "b\u{e9}"),
                ],
                ioctl: Some(serde_json::json!({"name": "x", "b": [1, {"z": 1, "a": 2}]})),
                ioctl_name: Some("DM_DEV_REMOVE".into()),
                snapshot_destructive: true,
                snapshot_create: true,
                sample_entropy: Some(entropy),
                facts: vec![("domain".into(), "vm\"1".into()), ("a".into(), "b".into())],
            });
            recs.push(Record::Event(e));
        }
        e.file = None;
        e.write = None;
        e.classification = None;
        recs.push(Record::Event(e));
        // Twice: the second pass renders from this thread's file cache.
        for r in recs.iter().chain(recs.iter()) {
            let want = serde_json::to_vec(&to_value(r, "h\"ost")).unwrap();
            let mut got = Vec::new();
            write_record(&mut got, r, "h\"ost");
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
        // With the process members rendered once per build: the same bytes, cached on first
        // use and reused, and the thread stays per record.
        for (i, r) in recs.iter().enumerate() {
            let mut r = r.clone();
            let p = match &mut r {
                Record::Event(e) => &mut e.process,
                Record::Alert(a) => &mut a.event.process,
                _ => continue,
            };
            p.revision = 1_000 + i as u64;
            for tid in [p.tid, p.tid + 7] {
                if let Record::Event(e) = &mut r {
                    e.process.tid = tid;
                }
                if let Record::Alert(a) = &mut r {
                    a.event.process.tid = tid;
                }
                let want = serde_json::to_vec(&to_value(&r, "h")).unwrap();
                let mut got = Vec::new();
                write_record(&mut got, &r, "h");
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want)
                );
            }
            let p = match &r {
                Record::Event(e) => &e.process,
                Record::Alert(a) => &a.event.process,
                _ => continue,
            };
            let held = PROCESS_CACHE.with(|c| c.borrow().get(&p.entity_id).map(|e| e.0));
            assert_eq!(held, Some(p.revision), "filled on first use");
        }
    }

    use super::*;
    use crate::event::{ProcessInfo, WriteInfo};
    use snapmon_schema::record::{Kind, Record as View};

    #[test]
    fn strings_written_straight_are_what_serde_json_writes() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", b as char)).collect();
        cases.extend(
            [
                "",
                "plain",
                "caf\u{e9} \u{202e}x",
                "q\"uote\\",
                "\u{7f}\u{85}",
            ]
            .map(String::from),
        );
        for c in cases {
            let mut got = Vec::new();
            js(&mut got, &c);
            assert_eq!(got, serde_json::to_vec(&c).unwrap(), "{c:?}");
        }
    }

    #[test]
    fn event_has_ecs_shape_and_lossless_paths() {
        let e = Event {
            category: crate::event::Category::File,
            ecs_type: crate::event::EventType::Change,
            action: Action::Pwrite64,
            backend: snapmon_common::Backend::Tracepoint,
            process: ProcessInfo {
                pid: 7,
                ..ProcessInfo::with_names(crate::event::ProcessNames {
                    name: "python3".into(),
                    ..Default::default()
                })
            },
            file: Some(FileInfo {
                path: Some(Bytes(b"/s/bad\xff\x1bname".to_vec())),
                dev: 1 << 20 | 3,
                ino: 99,
                size: Some(10),
            }),
            write: Some(WriteInfo {
                op: crate::event::WriteOp::Pwrite64,
                offset: 60,
                length: 12,
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = to_value(&Record::Event(e), "h");
        let r = View::of(&v).unwrap();
        assert_eq!(r.event.kind, Kind::Event);
        assert_eq!(r.action(), Some("pwrite64"));
        assert_eq!(r.path(), Some("/s/bad\\xff\\x1bname"));
        let f = r.file.as_ref().unwrap();
        assert_eq!(f.inode.as_deref(), Some("99"));
        assert_eq!(f.device.as_deref(), Some("1:3"));
        let w = r.snapmon.write.as_ref().unwrap();
        assert_eq!((w.offset, w.length), (60, 12));
        assert_eq!(
            r.snapmon.file_path_hex,
            Some(Bytes(b"/s/bad\xff\x1bname".to_vec()).hex())
        );
        assert_eq!(r.pid(), Some(7));
        assert_eq!(r.snapmon.schema_version, Some(SCHEMA_VERSION));
        assert_eq!(v["ecs"]["version"], ECS_VERSION);
        assert_eq!(v["host"]["name"], "h");
        assert_eq!(v["agent"]["type"], "snapmon");
    }

    #[test]
    fn a_bidi_override_in_a_path_is_escaped_in_json() {
        let e = Event {
            category: crate::event::Category::File,
            ecs_type: crate::event::EventType::Change,
            action: Action::Pwrite64,
            file: Some(FileInfo {
                path: Some(Bytes("/s/\u{202E}2woqc.gol".into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = View::of(&to_value(&Record::Event(e), "h")).unwrap();
        assert_eq!(r.path(), Some("/s/\\xe2\\x80\\xae2woqc.gol"));
        let name = r.file.as_ref().and_then(|f| f.name.as_deref());
        assert_eq!(name, Some("\\xe2\\x80\\xae2woqc.gol"));
        assert_eq!(
            r.snapmon.file_path_hex,
            Some(Bytes("/s/\u{202E}2woqc.gol".into()).hex())
        );
    }

    #[test]
    fn the_path_hex_follows_the_path_when_its_render_is_cached() {
        // Alternating files, each twice in a row: the `file` render comes from the last-file
        // slot and from the cache, and `file_path_hex` must still match the path's bytes.
        let ev = |path: &[u8], ino: u64| {
            let mut e = crate::sink::fixtures::event(ino);
            if let Some(f) = &mut e.file {
                f.path = Some(Bytes(path.to_vec()));
                f.ino = ino;
            }
            Record::Event(e)
        };
        for _ in 0..2 {
            for (path, ino, hex) in [
                (&b"/s/bad\xff.qcow2"[..], 5, true),
                (&b"/s/good.qcow2"[..], 6, false),
                (&b"/s/back\\slash"[..], 7, true),
            ] {
                for _ in 0..2 {
                    let mut out = Vec::new();
                    write_record(&mut out, &ev(path, ino), "h");
                    let v: Value = serde_json::from_slice(&out).unwrap();
                    let want = hex.then(|| json!(Bytes(path.to_vec()).hex()));
                    assert_eq!(v["snapmon"].get("file_path_hex"), want.as_ref(), "{v}");
                }
            }
        }
    }

    #[test]
    fn dataset_names_need_no_escaping() {
        // `write_event` writes `snapmon.<category>` between quotes as it is.
        use strum::IntoEnumIterator;
        for c in crate::event::Category::iter() {
            let s = c.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }

    /// The ECS record as a consumer would type it: unknown fields are errors, so a field
    /// added without updating the module doc and this struct fails here. (Fields exist to be
    /// accepted, not all to be read.)
    #[allow(dead_code, reason = "fields exist to be accepted, not all to be read")]
    mod typed {
        use serde::Deserialize;

        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Ecs {
            #[serde(rename = "@timestamp")]
            pub timestamp: String,
            pub agent: serde_json::Value,
            pub ecs: serde_json::Value,
            pub event: EcsEvent,
            pub file: Option<EcsFile>,
            pub process: EcsProcess,
            pub host: Host,
            pub rule: Option<Rule>,
            pub message: Option<String>,
            pub threat: Option<serde_json::Value>,
            pub snapmon: Snapmon,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct EcsEvent {
            pub kind: String,
            pub category: Vec<String>,
            #[serde(rename = "type")]
            pub ty: Vec<String>,
            pub action: String,
            pub sequence: u64,
            pub module: String,
            pub dataset: String,
            pub severity: Option<u8>,
            pub risk_score: Option<u8>,
            pub reason: Option<String>,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct EcsFile {
            pub path: String,
            pub name: String,
            pub directory: String,
            pub inode: String,
            pub device: String,
            pub size: Option<u64>,
            #[serde(rename = "type")]
            pub ty: Option<String>,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct EcsProcess {
            pub pid: u32,
            pub thread: Thread,
            pub name: String,
            pub executable: String,
            pub args: Vec<String>,
            pub entity_id: Option<String>,
            pub user: Id,
            pub group: Id,
            pub parent: Option<Parent>,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Thread {
            pub id: u32,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Id {
            pub id: String,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Parent {
            pub pid: u32,
            pub name: String,
            pub executable: String,
            pub entity_id: String,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Host {
            pub hostname: String,
            pub name: String,
            pub id: Option<String>,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Rule {
            pub id: String,
            pub name: String,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Snapmon {
            pub schema_version: u32,
            pub backend: String,
            pub severity: Option<String>,
            pub write: Option<Write>,
            pub classification: Option<Classification>,
            pub process: SnapProcess,
            pub file_path_hex: Option<String>,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Write {
            pub op: String,
            pub offset: i64,
            pub length: u64,
            pub offset_from_fpos: bool,
            pub length_partial: bool,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct Classification {
            pub format: String,
            pub regions: Vec<String>,
            pub changes: Vec<Change>,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct Change {
            pub field: String,
            pub before: String,
            pub after: String,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        pub struct SnapProcess {
            pub ancestors: Vec<serde_json::Value>,
            pub lineage: String,
        }
    }

    #[test]
    fn alert_line_deserializes_into_typed_ecs() {
        let mut buf = Vec::new();
        write_line(
            &mut buf,
            &crate::sink::fixtures::alert(5, crate::record::Severity::Critical),
            "host1",
        )
        .unwrap();
        assert!(buf.ends_with(b"\n") && buf.iter().filter(|b| **b == b'\n').count() == 1);
        let r: typed::Ecs = serde_json::from_slice(&buf).unwrap();
        assert_eq!(r.timestamp, "2026-11-28T17:30:00.128000000Z");
        assert_eq!(r.event.kind, "alert");
        assert_eq!(r.event.category, ["file"]);
        assert_eq!(r.event.ty, ["change"]);
        assert_eq!(r.event.sequence, 5);
        assert_eq!(r.event.severity, Some(99));
        assert_eq!(r.event.dataset, "snapmon.file");
        let f = r.file.unwrap();
        assert_eq!(f.name, "vm1.qcow2");
        assert_eq!(f.directory, "/var/lib/libvirt/images");
        assert_eq!(f.device, "8:1");
        assert_eq!(f.inode, "1234");
        assert_eq!(r.process.parent.unwrap().name, "bash");
        assert_eq!(r.process.args, ["python3", "-c"]);
        assert_eq!(r.process.user.id, "0");
        assert_eq!(r.rule.unwrap().id, "SM001");
        assert_eq!(r.host.hostname, "host1");
        assert_eq!(r.snapmon.schema_version, SCHEMA_VERSION);
        assert_eq!(r.snapmon.severity.as_deref(), Some("critical"));
        assert_eq!(r.snapmon.process.lineage, "python3 ← bash ← sshd");
        let c = r.snapmon.classification.unwrap();
        assert_eq!(c.regions, ["header.nb_snapshots"]);
        assert_eq!(
            c.changes,
            [typed::Change {
                field: "nb_snapshots".into(),
                before: "3".into(),
                after: "0".into()
            }]
        );
        assert_eq!(r.snapmon.write.unwrap().offset, 60);
        assert!(r.snapmon.file_path_hex.is_none());
    }
}
