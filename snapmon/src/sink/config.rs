//! Sink configuration: the `[[sink]]` tables of the policy file and `--sink` specs from the
//! command line, parsed with serde (unknown keys are errors) and validated with context.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

use crate::record::Severity;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON Lines, ECS field names.
    Json,
    /// Human lines.
    Tail,
    /// JSON Lines, OCSF 1.1 (File System Activity and friends).
    Ocsf,
}

impl Format {
    /// The name in configuration and in the sink counters: `json`, `tail`, `ocsf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Tail => "tail",
            Format::Ocsf => "ocsf",
        }
    }
}

/// A syslog facility's code by name (`daemon` → 3, `local0` → 16 …).
pub fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "authpriv" => 10,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

/// One output. The `type` tag picks the transport; every type takes the common options
/// (`name`, `format`, `min_severity`, `alerts_only`, `rules`, `path_contains`, `queue`) and
/// validation rejects options that do not apply to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    Stdout(SinkOptions),
    File(SinkOptions),
    Unix(SinkOptions),
    Tcp(SinkOptions),
    Syslog(SinkOptions),
    /// NATS JetStream: publish-acknowledged, de-duplicated by record id.
    Nats(SinkOptions),
}

/// What a sink does when it cannot reach its target when the agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    /// Refuse to start (the default for datagram syslog, which has no spill).
    Fail,
    /// Start anyway: a warning on stderr, `snapmon_sink_up 0`, and records spilled (tcp,
    /// unix, nats, syslog over tcp) or dropped and counted (syslog over unix or udp).
    Warn,
}

/// The syslog message layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    /// `<PRI>1 TIMESTAMP HOST APP PID MSGID [SD] MSG` (default for udp and tcp).
    Rfc5424,
    /// `<PRI>Mmm dd hh:mm:ss APP[PID]: MSG`, what syslog(3) writes to `/dev/log` and what
    /// every local daemon parses by default (default for unix).
    Rfc3164,
}

/// When buffered output reaches the kernel (`flush`) or the disk (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// After every record.
    Record,
    /// Whenever the sink has written everything queued so far (one call per burst).
    #[default]
    Batch,
    /// Every `flush_interval` (and at rotation and shutdown).
    Interval,
    /// Only when the buffer fills, at rotation and at shutdown.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// Local datagram socket (`/dev/log`).
    #[default]
    Unix,
    Udp,
    /// RFC 6587 octet counting, with reconnect and spill like the tcp sink.
    Tcp,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkOptions {
    /// Name in stats and loss records (default: `TYPE:ADDRESS`).
    pub name: Option<String>,
    /// `json` (ECS), `ocsf`, or `tail` (human lines). Default: json (tail for a stdout terminal).
    pub format: Option<Format>,
    pub min_severity: Option<Severity>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub alerts_only: bool,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub path_contains: Vec<String>,
    /// Records buffered between the agent and this sink's thread (default 4096).
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    pub queue: Option<u64>,
    /// Colour for the tail format (default: on when stdout is a terminal).
    #[serde(default, deserialize_with = "lenient_bool_opt")]
    pub colour: Option<bool>,

    // file
    pub path: Option<PathBuf>,
    /// Rotate when the file reaches this size (`100M`, `1G`, bytes).
    #[serde(default, deserialize_with = "lenient_size_opt")]
    pub rotate_size: Option<u64>,
    /// Rotate when the file is this old (`1h`, `1d`, seconds).
    #[serde(default, deserialize_with = "lenient_duration_opt")]
    pub rotate_interval: Option<u64>,
    /// Rotated files kept as `PATH.1` … `PATH.N` (default 5).
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    pub keep: Option<u64>,
    pub flush: Option<SyncPolicy>,
    pub fsync: Option<SyncPolicy>,
    /// Interval for `flush`/`fsync = "interval"` (`1s`, `500ms`; default 1s).
    #[serde(default, deserialize_with = "lenient_millis_opt")]
    pub flush_interval: Option<u64>,
    /// Hash chain in every line (default true for files).
    #[serde(default, deserialize_with = "lenient_bool_opt")]
    pub chain: Option<bool>,
    /// File holding the HMAC key for chain checkpoints.
    pub key_file: Option<PathBuf>,
    /// Records between keyed checkpoints (default 1000).
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    pub checkpoint_every: Option<u64>,

    // unix / tcp / syslog
    /// Socket path (unix, syslog over unix) or `HOST:PORT` (tcp, syslog over udp/tcp).
    pub address: Option<String>,
    /// Directory for the on-disk spill used while the peer is unreachable.
    pub spill_dir: Option<PathBuf>,
    /// Spill bound (default 64M); records beyond it are counted as `spill_full` drops.
    #[serde(default, deserialize_with = "lenient_size_opt")]
    pub spill_size: Option<u64>,
    #[serde(default, deserialize_with = "lenient_millis_opt")]
    pub backoff_min: Option<u64>,
    #[serde(default, deserialize_with = "lenient_millis_opt")]
    pub backoff_max: Option<u64>,
    /// A write that takes longer than this marks the peer as down (default 5s).
    #[serde(default, deserialize_with = "lenient_millis_opt")]
    pub write_timeout: Option<u64>,

    /// `fail` (refuse to start) or `warn` when the target cannot be reached at start.
    pub on_unreachable: Option<Unreachable>,
    /// tcp/unix: count a record written only when the collector acknowledges it (`ack N`
    /// lines, docs/output.md), and resend what it had not acknowledged after a reconnect.
    #[serde(default, deserialize_with = "lenient_bool_opt")]
    pub ack: Option<bool>,
    /// Unacknowledged records in flight before the sink waits (default 1024).
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    pub ack_window: Option<u64>,

    // syslog
    pub transport: Option<SyslogTransport>,
    pub protocol: Option<SyslogProtocol>,
    /// Largest message, header included (default 8K; 2K over udp): longer records are
    /// shrunk, never cut into invalid JSON.
    #[serde(default, deserialize_with = "lenient_size_opt")]
    pub max_message: Option<u64>,

    // nats
    /// More servers of the cluster (`nats://HOST:PORT` or `HOST:PORT`); `server=` in specs.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Subjects are `PREFIX.HOST.KIND` (KIND: event, alert, state, metric); default `snapmon`.
    pub subject_prefix: Option<String>,
    /// The stream the subjects must land in (`Nats-Expected-Stream`).
    pub stream: Option<String>,
    /// Publishes awaiting their acknowledgement (default 256).
    #[serde(default, deserialize_with = "lenient_u64_opt")]
    pub max_inflight: Option<u64>,
    /// `kern`, `user`, `daemon`, `auth`, `authpriv`, `local0` … `local7` (default local0).
    pub facility: Option<String>,
    pub app_name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("sink {sink}: {msg}")]
    Invalid { sink: String, msg: String },
    #[error("--sink `{spec}`: {msg}")]
    Spec { spec: String, msg: String },
}

/// Smallest `max_message`: the syslog header and a record shrunk to its skeleton fit.
pub const MIN_MESSAGE: u64 = 1024;

const COMMON: &[&str] = &[
    "name",
    "format",
    "min_severity",
    "alerts_only",
    "rules",
    "path_contains",
    "queue",
];

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Unix(_) => "unix",
            SinkConfig::Tcp(_) => "tcp",
            SinkConfig::Syslog(_) => "syslog",
            SinkConfig::Nats(_) => "nats",
        }
    }
    pub fn options(&self) -> &SinkOptions {
        match self {
            SinkConfig::Stdout(o)
            | SinkConfig::File(o)
            | SinkConfig::Unix(o)
            | SinkConfig::Tcp(o)
            | SinkConfig::Syslog(o)
            | SinkConfig::Nats(o) => o,
        }
    }
    pub fn options_mut(&mut self) -> &mut SinkOptions {
        match self {
            SinkConfig::Stdout(o)
            | SinkConfig::File(o)
            | SinkConfig::Unix(o)
            | SinkConfig::Tcp(o)
            | SinkConfig::Syslog(o)
            | SinkConfig::Nats(o) => o,
        }
    }

    /// The name used in stats and loss records.
    pub fn name(&self) -> String {
        let o = self.options();
        if let Some(n) = &o.name {
            return n.clone();
        }
        match self {
            SinkConfig::Stdout(_) => "stdout".into(),
            // No `file:` with nothing after it (a message would read `sink file:: …`).
            SinkConfig::File(o) => match &o.path {
                Some(p) => format!("file:{}", p.display()),
                None => "file".into(),
            },
            _ => format!(
                "{}:{}",
                self.kind(),
                o.address.clone().unwrap_or_else(|| "/dev/log".into())
            ),
        }
    }

    /// Options each type accepts besides the common ones.
    fn allowed(&self) -> &'static [&'static str] {
        match self {
            SinkConfig::Stdout(_) => &["colour"],
            SinkConfig::File(_) => &[
                "colour",
                "path",
                "rotate_size",
                "rotate_interval",
                "keep",
                "flush",
                "fsync",
                "flush_interval",
                "chain",
                "key_file",
                "checkpoint_every",
            ],
            SinkConfig::Unix(_) | SinkConfig::Tcp(_) => &[
                "address",
                "spill_dir",
                "spill_size",
                "backoff_min",
                "backoff_max",
                "write_timeout",
                "on_unreachable",
                "ack",
                "ack_window",
            ],
            SinkConfig::Syslog(_) => &[
                "address",
                "transport",
                "protocol",
                "max_message",
                "facility",
                "app_name",
                "spill_dir",
                "spill_size",
                "backoff_min",
                "backoff_max",
                "write_timeout",
                "on_unreachable",
            ],
            SinkConfig::Nats(_) => &[
                "address",
                "servers",
                "subject_prefix",
                "stream",
                "max_inflight",
                "spill_dir",
                "spill_size",
                "backoff_min",
                "backoff_max",
                "write_timeout",
                "on_unreachable",
            ],
        }
    }

    /// Reject missing, misplaced and contradictory options, naming the sink and the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| ConfigError::Invalid {
            sink: self.name(),
            msg,
        };
        let o = self.options();
        let set = serde_json::to_value(o).unwrap_or_default();
        if let Some(m) = set.as_object() {
            for (k, v) in m {
                let present = match v {
                    serde_json::Value::Null => false,
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::Array(a) => !a.is_empty(),
                    _ => true,
                };
                if present && !COMMON.contains(&k.as_str()) && !self.allowed().contains(&k.as_str())
                {
                    return Err(bad(format!(
                        "option `{k}` does not apply to a {} sink",
                        self.kind()
                    )));
                }
            }
        }
        if o.queue == Some(0) {
            return Err(bad("queue must be at least 1".into()));
        }
        match self {
            SinkConfig::File(_) => {
                let Some(p) = &o.path else {
                    return Err(bad("a file sink needs `path`".into()));
                };
                if p.as_os_str().is_empty() {
                    return Err(bad("`path` is empty".into()));
                }
                if o.keep == Some(0) {
                    return Err(bad("keep must be at least 1".into()));
                }
                if o.rotate_size == Some(0) || o.rotate_interval == Some(0) {
                    return Err(bad("rotation thresholds must be positive".into()));
                }
                if o.checkpoint_every == Some(0) {
                    return Err(bad("checkpoint_every must be at least 1".into()));
                }
                if o.key_file.is_some() && o.chain == Some(false) {
                    return Err(bad("key_file needs the hash chain (chain = true)".into()));
                }
                if let Some(k) = &o.key_file {
                    super::key::load_key(k).map_err(|e| bad(e.to_string()))?;
                }
            }
            SinkConfig::Unix(_) | SinkConfig::Tcp(_) => {
                let Some(a) = &o.address else {
                    return Err(bad(format!("a {} sink needs `address`", self.kind())));
                };
                if matches!(self, SinkConfig::Tcp(_)) && !a.contains(':') {
                    return Err(bad(format!("address `{a}` is not HOST:PORT")));
                }
                if o.ack_window == Some(0) {
                    return Err(bad("ack_window must be at least 1".into()));
                }
                if o.ack_window.is_some() && o.ack != Some(true) {
                    return Err(bad("ack_window needs ack = true".into()));
                }
            }
            SinkConfig::Syslog(_) => {
                let t = o.transport.unwrap_or_default();
                if t != SyslogTransport::Unix {
                    match &o.address {
                        Some(a) if a.contains(':') => {}
                        Some(a) => return Err(bad(format!("address `{a}` is not HOST:PORT"))),
                        None => return Err(bad("syslog over udp/tcp needs `address`".into())),
                    }
                }
                if t != SyslogTransport::Tcp && (o.spill_dir.is_some() || o.spill_size.is_some()) {
                    return Err(bad("spill applies to syslog over tcp only".into()));
                }
                if let Some(f) = &o.facility {
                    if facility_code(f).is_none() {
                        return Err(bad(format!("unknown syslog facility `{f}`")));
                    }
                }
                if o.max_message.is_some_and(|m| m < MIN_MESSAGE) {
                    return Err(bad(format!(
                        "max_message must be at least {MIN_MESSAGE} bytes (room for the header and a shrunk record)"
                    )));
                }
            }
            SinkConfig::Nats(_) => {
                let servers = self.nats_servers();
                if servers.is_empty() {
                    return Err(bad("a nats sink needs `address` (or `servers`)".into()));
                }
                for a in &servers {
                    let hp = a.strip_prefix("nats://").unwrap_or(a);
                    let hp = hp.rsplit('@').next().unwrap_or(hp);
                    if !hp.contains(':') || hp.ends_with(':') {
                        return Err(bad(format!("server `{a}` is not [nats://]HOST:PORT")));
                    }
                }
                let p = self.subject_prefix();
                if p.is_empty()
                    || p.split('.').any(str::is_empty)
                    || p.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
                {
                    return Err(bad(format!(
                        "subject_prefix `{p}` is not a NATS subject (dot-separated tokens, no wildcards or spaces)"
                    )));
                }
                if let Some(st) = &o.stream {
                    if st.is_empty()
                        || st.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c))
                    {
                        return Err(bad(format!("stream `{st}` is not a JetStream stream name")));
                    }
                }
                if o.max_inflight == Some(0) {
                    return Err(bad("max_inflight must be at least 1".into()));
                }
            }
            SinkConfig::Stdout(_) => {}
        }
        if let (Some(a), Some(b)) = (o.backoff_min, o.backoff_max) {
            if a > b {
                return Err(bad("backoff_min is larger than backoff_max".into()));
            }
        }
        Ok(())
    }

    /// The NATS servers to try: `address`, then `servers`.
    pub fn nats_servers(&self) -> Vec<String> {
        let o = self.options();
        o.address.iter().chain(o.servers.iter()).cloned().collect()
    }

    pub fn subject_prefix(&self) -> String {
        self.options()
            .subject_prefix
            .clone()
            .unwrap_or_else(|| "snapmon".into())
    }

    /// What to do when the target is unreachable at start: datagram syslog has no spill, so
    /// it fails by default; the others spill and warn.
    pub fn on_unreachable(&self) -> Unreachable {
        let o = self.options();
        o.on_unreachable.unwrap_or(match self {
            SinkConfig::Syslog(_) if o.transport.unwrap_or_default() != SyslogTransport::Tcp => {
                Unreachable::Fail
            }
            _ => Unreachable::Warn,
        })
    }

    /// The syslog size limit: `max_message`, or 8 KiB (2 KiB over UDP, RFC 5426's floor).
    pub fn max_message(&self) -> usize {
        let o = self.options();
        o.max_message
            .unwrap_or(match o.transport.unwrap_or_default() {
                SyslogTransport::Udp => 2048,
                _ => 8192,
            }) as usize
    }

    pub fn queue(&self) -> usize {
        self.options().queue.unwrap_or(16384).clamp(1, 1 << 22) as usize
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.options().flush_interval.unwrap_or(1000).max(1))
    }

    /// Parse a command-line spec: `TYPE[:ADDRESS][,key=value…]`, e.g.
    /// `file:/var/log/snapmon.jsonl,format=json,min_severity=high,rotate_size=100M`.
    /// `rule=` and `path_contains=` may repeat.
    pub fn parse_spec(spec: &str) -> Result<SinkConfig, ConfigError> {
        let err = |msg: String| ConfigError::Spec {
            spec: spec.to_string(),
            msg,
        };
        let mut parts = spec.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, addr) = match head.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (head, None),
        };
        let mut m = serde_json::Map::new();
        m.insert("type".into(), kind.into());
        if let Some(a) = addr.filter(|a| !a.is_empty()) {
            let key = if kind == "file" { "path" } else { "address" };
            m.insert(key.into(), a.into());
        }
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(err(format!("`{kv}` is not key=value")));
            };
            match k {
                "rule" | "rules" | "path_contains" | "server" | "servers" => {
                    let key = match k {
                        "path_contains" => k,
                        "server" | "servers" => "servers",
                        _ => "rules",
                    };
                    let e = m
                        .entry(key)
                        .or_insert_with(|| serde_json::Value::Array(vec![]));
                    if let Some(a) = e.as_array_mut() {
                        a.push(v.into());
                    }
                }
                _ => {
                    m.insert(k.into(), v.into());
                }
            }
        }
        let c: SinkConfig =
            serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| err(e.to_string()))?;
        // The spec already names the sink: the message, not `sink NAME:` again.
        c.validate().map_err(|e| match e {
            ConfigError::Invalid { msg, .. } => err(msg),
            e @ ConfigError::Spec { .. } => err(e.to_string()),
        })?;
        Ok(c)
    }
}

/// Validate a list: each entry, and that names are unique (stats and loss records key on them).
pub fn validate_all(configs: &[SinkConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for c in configs {
        c.validate()?;
        if !seen.insert(c.name()) {
            return Err(ConfigError::Invalid {
                sink: c.name(),
                msg: "two sinks have this name; give one a `name`".into(),
            });
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Num(u64),
    Bool(bool),
    Str(String),
}

fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Lenient>, D::Error> {
    Option::<Lenient>::deserialize(d)
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(lenient_bool_opt(d)?.unwrap_or(false))
}

fn lenient_bool_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    use serde::de::Error;
    match lenient(d)? {
        None => Ok(None),
        Some(Lenient::Bool(b)) => Ok(Some(b)),
        Some(Lenient::Str(s)) if s == "true" => Ok(Some(true)),
        Some(Lenient::Str(s)) if s == "false" => Ok(Some(false)),
        _ => Err(D::Error::custom("expected true or false")),
    }
}

fn lenient_u64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match lenient(d)? {
        None => Ok(None),
        Some(Lenient::Num(n)) => Ok(Some(n)),
        Some(Lenient::Str(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("`{s}` is not a whole number"))),
        Some(Lenient::Bool(_)) => Err(D::Error::custom("expected a number")),
    }
}

/// `512`, `64K`, `100M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// `250ms`, `10s`, `5m`, `1h`, `1d`, or a bare number in `unit` milliseconds.
pub fn parse_duration_ms(s: &str, unit: u64) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let mul = match &s[split..] {
        "" => unit,
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn lenient_size_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match lenient(d)? {
        None => Ok(None),
        Some(Lenient::Num(n)) => Ok(Some(n)),
        Some(Lenient::Str(s)) => parse_size(&s)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("`{s}` is not a size like 100M"))),
        Some(Lenient::Bool(_)) => Err(D::Error::custom("expected a size")),
    }
}

fn duration_with<'de, D: Deserializer<'de>>(d: D, unit: u64) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match lenient(d)? {
        None => Ok(None),
        Some(Lenient::Num(n)) => Ok(Some(n * unit)),
        Some(Lenient::Str(s)) => parse_duration_ms(&s, unit)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("`{s}` is not a duration like 10s"))),
        Some(Lenient::Bool(_)) => Err(D::Error::custom("expected a duration")),
    }
}

/// Stored in seconds; bare numbers are seconds.
fn lenient_duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(duration_with(d, 1000)?.map(|ms| ms.div_ceil(1000)))
}

/// Stored in milliseconds; bare numbers are milliseconds.
fn lenient_millis_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    duration_with(d, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_to_typed_config() {
        let c = SinkConfig::parse_spec(
            "file:/var/log/s.jsonl,format=json,min_severity=high,rotate_size=100M,rule=SM001,rule=SM002,flush=record,rotate_interval=1h",
        )
        .unwrap();
        let SinkConfig::File(o) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(
            o.path.as_deref(),
            Some(std::path::Path::new("/var/log/s.jsonl"))
        );
        assert_eq!(o.format, Some(Format::Json));
        assert_eq!(o.min_severity, Some(Severity::High));
        assert_eq!(o.rotate_size, Some(100 << 20));
        assert_eq!(o.rotate_interval, Some(3600));
        assert_eq!(o.rules, vec!["SM001", "SM002"]);
        assert_eq!(o.flush, Some(SyncPolicy::Record));
        assert_eq!(c.name(), "file:/var/log/s.jsonl");
    }

    #[test]
    fn toml_entries_deny_unknown_and_misplaced_keys() {
        #[derive(Debug, Deserialize)]
        struct P {
            sinks: Vec<SinkConfig>,
        }
        let ok: P = toml::from_str(
            "[[sinks]]\ntype = \"tcp\"\naddress = \"127.0.0.1:9000\"\nspill_dir = \"/tmp/s\"\nspill_size = \"10M\"\nbackoff_max = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(ok.sinks[0].options().backoff_max, Some(30_000));
        validate_all(&ok.sinks).unwrap();
        let unknown = toml::from_str::<P>("[[sinks]]\ntype = \"tcp\"\nadress = \"x:1\"\n");
        assert!(unknown.unwrap_err().to_string().contains("adress"));
        let misplaced = SinkConfig::parse_spec("tcp:127.0.0.1:1,rotate_size=1M").unwrap_err();
        assert!(misplaced.to_string().contains("rotate_size"), "{misplaced}");
        assert!(SinkConfig::parse_spec("file")
            .unwrap_err()
            .to_string()
            .contains("path"));
        assert!(SinkConfig::parse_spec("tcp:localhost").is_err());
        assert!(SinkConfig::parse_spec("syslog,facility=nope").is_err());
        assert!(SinkConfig::parse_spec("stdout,format=xml").is_err());
        // NATS: servers repeat, subjects and stream names are checked, no side effects.
        let n = SinkConfig::parse_spec(
            "nats:127.0.0.1:4222,server=127.0.0.1:4223,server=nats://127.0.0.1:4224,stream=SNAPMON,subject_prefix=ops.snapmon",
        )
        .unwrap();
        assert_eq!(n.nats_servers().len(), 3);
        assert_eq!(n.name(), "nats:127.0.0.1:4222");
        assert_eq!(n.on_unreachable(), Unreachable::Warn);
        assert!(SinkConfig::parse_spec("nats").is_err());
        assert!(SinkConfig::parse_spec("nats:127.0.0.1:4222,subject_prefix=a.*").is_err());
        assert!(SinkConfig::parse_spec("nats:127.0.0.1:4222,stream=a.b").is_err());
        assert!(SinkConfig::parse_spec("nats:127.0.0.1:4222,rotate_size=1M").is_err());
        assert!(SinkConfig::parse_spec("nats:localhost,stream=S").is_err());
        // Syslog: size floor, datagram transports fail when unreachable unless told.
        assert!(SinkConfig::parse_spec("syslog,max_message=100").is_err());
        let u = SinkConfig::parse_spec("syslog:127.0.0.1:514,transport=udp").unwrap();
        assert_eq!(u.max_message(), 2048);
        assert_eq!(u.on_unreachable(), Unreachable::Fail);
        let t = SinkConfig::parse_spec("syslog:127.0.0.1:514,transport=tcp,on_unreachable=fail")
            .unwrap();
        assert_eq!(t.max_message(), 8192);
        assert_eq!(t.on_unreachable(), Unreachable::Fail);
        assert!(SinkConfig::parse_spec("tcp:127.0.0.1:1,ack_window=5").is_err());
        assert!(SinkConfig::parse_spec("tcp:127.0.0.1:1,ack=true,ack_window=5").is_ok());
        let dup = [
            SinkConfig::parse_spec("stdout").unwrap(),
            SinkConfig::parse_spec("stdout").unwrap(),
        ];
        assert!(validate_all(&dup).is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration_ms("250ms", 1), Some(250));
        assert_eq!(parse_duration_ms("2m", 1), Some(120_000));
        assert_eq!(parse_duration_ms("3", 1000), Some(3000));
        assert_eq!(parse_duration_ms("3y", 1), None);
    }
}
