//! Config: the policy file (TOML), parsed and validated with no side effects before anything
//! is built. Unknown keys and bad values are errors with file, line and column. Plain data and
//! the checks of config's own fields: the stages check their sections (`crate::policy_check`).
//!
//! Why TOML: it is what operators of Rust tools already edit (Cargo, rustfmt, Vector), it has
//! no implicit typing traps (YAML's `no` → false, `03:00` → sexagesimal), comments are
//! allowed (JSON has none), arrays of tables (`[[actor]]`, `[[exception]]`) map one-to-one
//! onto the structured lists a policy is made of, and the `toml` crate reports spans for
//! every value, so semantic errors (an unknown rule id, a bad glob, an impossible window)
//! point at file:line:column like syntax errors do.
//!
//! Sections: `[agent]`, `[[store]]` (what to watch), `[[actor]]` (trusted executables by
//! identity, with optional lineage constraints), `[detection]` (lists the rules consult),
//! `[[rule]]` (per-rule enabled/severity/threshold/window), `[[exception]]` (actor + action +
//! target), `[[maintenance]]` (local-time windows), `[enforce]` (BPF LSM), `[respond]` (the
//! circuit breaker), `[evidence]`, `[[sink]]`. `docs/rules.md` is the rules' reference; README
//! has enforcement, the circuit breaker and evidence.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use snapmon_common::deny;
use toml::Spanned;

use crate::record::Severity;

/// The embedded default, used by `snapmon run` without `--config`.
pub const DEFAULT_POLICY: &str = include_str!("../default-policy.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Decide per file from its content (qcow2 magic, LVM label …).
    #[default]
    Auto,
    Qcow2,
    Raw,
    Libvirt,
    Lvm,
    Btrfs,
    Zfs,
    Device,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub path: PathBuf,
    #[serde(default)]
    // Classify still decides per file content; the circuit breaker skips text-metadata stores.
    pub kind: StoreKind,
    /// Missing paths are skipped (with a note) unless required.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    #[serde(default = "default_rb")]
    pub ring_buffer_bytes: u32,
    /// Emit fork/exec/exit records as events too (they always feed lineage).
    #[serde(default)]
    pub process_events: bool,
    /// Directory levels registered below a store (and below a directory made in one): files
    /// deeper are not watched, and the agent warns at start when a store has any.
    #[serde(default = "default_scan_depth")]
    pub scan_depth: u32,
    /// How long the event loop waits for one read of a store file (classification, rechecks,
    /// evidence); past it the record is judged without it and the filesystem is not read
    /// again until the stuck read returns.
    #[serde(default = "default_read_budget")]
    pub read_budget_ms: u64,
}

/// `[agent] read_budget_ms` when unset: a local disk answers, and a header parses, in well
/// under this, even in a debug agent under emulation (100 ms was not: a tmpfs re-read ran
/// out of it in a TCG guest); a tamper behind a stuck read is still judged within 1 s.
pub const DEFAULT_BUDGET_MS: u64 = 250;

fn default_read_budget() -> u64 {
    DEFAULT_BUDGET_MS
}

/// `[agent] scan_depth` when unset: as deep as short names reach within PATH_MAX.
pub const DEFAULT_SCAN_DEPTH: usize = 256;

fn default_scan_depth() -> u32 {
    DEFAULT_SCAN_DEPTH as u32
}

/// 8 MiB: ~22 000 write records, over 200 ms of 100 000 events/s. The agent maps the ring
/// twice (wrap-around reads), so it counts double in RSS.
fn default_rb() -> u32 {
    8 << 20
}

/// `[enforce]`: protected stores (BPF LSM). `mode` and `dry_run` take effect on SIGHUP.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnforceSection {
    /// `off`, `monitor` (report would-be denials), `enforce` (deny), `best-effort`
    /// (enforce where BPF LSM exists, detect elsewhere).
    #[serde(default)]
    pub mode: EnforceModeCfg,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub protect: Vec<PathBuf>,
    /// Stores that only report would-be denials, whatever `mode` says (per-store monitor).
    #[serde(default)]
    pub monitor: Vec<PathBuf>,
    #[serde(default)]
    pub trust: Vec<PathBuf>,
    /// Operations denied (`all`, `write`, `open_write`, `truncate`, `unlink`, `rename`,
    /// `link`, `mmap_write`, `ioctl`).
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub keep_enforcing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EnforceModeCfg {
    #[default]
    Off,
    Monitor,
    Enforce,
    BestEffort,
}

/// `[enforce] deny` / `--deny`: operation names to the kernel's `deny` bits.
pub fn parse_ops(list: &str) -> Result<u32, String> {
    let mut m = 0;
    for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if w == "all" {
            m |= deny::NAMES.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
            continue;
        }
        let b = deny::NAMES.iter().find(|(_, n)| *n == w).map(|(b, _)| *b);
        m |= b.ok_or_else(|| {
            format!(
                "unknown operation `{w}` (one of: all, {})",
                deny::NAMES.map(|(_, n)| n).join(", ")
            )
        })?;
    }
    Ok(m)
}

/// `[respond]`: the circuit breaker (any kernel; see `crate::respond`). Takes effect on SIGHUP.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    /// `off`, `stop` (SIGSTOP), `kill` (SIGKILL in the kernel; the agent's own responses
    /// stop), `freeze` (SIGSTOP, then the process's cgroup v2 is frozen).
    #[serde(default)]
    pub mode: RespondMode,
    /// Report what would be done (SM-E004), do nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Stores (directories or files) whose images are protected; empty: every watched store.
    #[serde(default)]
    pub stores: Vec<PathBuf>,
    /// Stores that only report would-be responses, whatever `mode` says.
    #[serde(default)]
    pub monitor: Vec<PathBuf>,
    /// What draws a response: the kernel's classes (`metadata_write`, `snapshot_ioctl`,
    /// `rename`, `truncate`, `unlink`), rule ids the agent answers (`SM-R001` …), or `all`.
    #[serde(default)]
    pub rules: Vec<String>,
    /// More executables never signalled (trusted actors, package managers and init never are).
    #[serde(default)]
    pub trust: Vec<PathBuf>,
}

/// `[respond] mode` / `--respond`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RespondMode {
    #[default]
    Off,
    /// SIGSTOP: the operator decides (`kill -CONT` or `kill`).
    Stop,
    /// SIGKILL in the kernel; the agent's own (later) responses stop instead.
    Kill,
    /// SIGSTOP in the kernel, then the agent freezes the process's whole cgroup (v2).
    Freeze,
}

impl RespondMode {
    pub fn parse(s: &str) -> Result<RespondMode, String> {
        Ok(match s {
            "off" => RespondMode::Off,
            "stop" => RespondMode::Stop,
            "kill" => RespondMode::Kill,
            "freeze" => RespondMode::Freeze,
            _ => return Err(format!("`{s}` is not one of off, stop, kill, freeze")),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RespondMode::Off => "off",
            RespondMode::Stop => "stop",
            RespondMode::Kill => "kill",
            RespondMode::Freeze => "freeze",
        }
    }
}

/// `[evidence]`: what the agent knew of an image when a high or critical rule fired on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Created 0700 if missing.
    #[serde(default = "default_evidence_dir")]
    pub dir: PathBuf,
    /// Stop saving (and say so) once the directory holds this much.
    #[serde(default = "default_evidence_mb")]
    pub max_mb: u64,
}

fn yes() -> bool {
    true
}

fn default_evidence_dir() -> PathBuf {
    PathBuf::from("/var/lib/snapmon/evidence")
}

fn default_evidence_mb() -> u64 {
    1024
}

impl Default for EvidenceSection {
    fn default() -> Self {
        EvidenceSection {
            enabled: true,
            dir: default_evidence_dir(),
            max_mb: default_evidence_mb(),
        }
    }
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            ring_buffer_bytes: default_rb(),
            process_events: false,
            scan_depth: default_scan_depth(),
            read_budget_ms: default_read_budget(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default, rename = "store")]
    pub stores: Vec<Store>,
    /// Trusted actor groups (`qemu`, `libvirt`, `lvm`, `btrfs`, `zfs`, `freeze`).
    #[serde(default, rename = "actor")]
    pub actors: Vec<ActorSpec>,
    #[serde(default)]
    pub detection: DetectionSection,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSettings>,
    #[serde(default, rename = "exception")]
    pub exceptions: Vec<ExceptionSpec>,
    #[serde(default, rename = "maintenance")]
    pub windows: Vec<WindowSpec>,
    #[serde(default)]
    pub enforce: EnforceSection,
    #[serde(default)]
    pub respond: RespondSection,
    #[serde(default)]
    pub evidence: EvidenceSection,
    /// Outputs besides the command line's (`[[sink]]`, see docs/output.md).
    #[serde(default, rename = "sink")]
    pub sinks: Vec<crate::sink::config::SinkConfig>,
}

/// A named group of trusted executables (`qemu`, `libvirt`, `lvm` …), by file identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSpec {
    pub name: Spanned<String>,
    /// Absolute paths; the last component may be a glob (`/usr/bin/qemu-system-*`), expanded
    /// when the policy is built. Each is resolved to (device, inode) then.
    #[serde(default)]
    pub executables: Vec<Spanned<String>>,
    /// Executables trusted only while their content has this SHA-256 (hashed at build time).
    #[serde(default)]
    pub pinned: Vec<PinSpec>,
    /// The parent's executable must match one of these globs.
    #[serde(default)]
    pub parent: Vec<Spanned<String>>,
    /// Some ancestor's executable must match one of these globs.
    #[serde(default)]
    pub ancestor: Vec<Spanned<String>>,
    /// Real uid must be one of these.
    #[serde(default)]
    pub users: Vec<u32>,
    /// systemd unit must match one of these globs.
    #[serde(default)]
    pub systemd_units: Vec<Spanned<String>>,
    /// `false`: only outside containers; `true`: only inside.
    #[serde(default)]
    pub container: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinSpec {
    pub path: Spanned<String>,
    pub sha256: Spanned<String>,
}

/// Per-rule overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    pub id: Spanned<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Rate rules: how many occurrences within `window_seconds` fire the rule.
    #[serde(default)]
    pub threshold: Option<Spanned<u32>>,
    /// Rate and sequence rules: the window.
    #[serde(default)]
    pub window_seconds: Option<Spanned<u64>>,
}

/// A structured exception: this actor may do these actions to these targets (Falco's lesson:
/// never a free-form condition that silently widens).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    pub rules: Vec<Spanned<String>>,
    /// A trusted actor group by name …
    #[serde(default)]
    pub actor: Option<Spanned<String>>,
    /// … or an executable path glob (weaker: a path, not an identity).
    #[serde(default)]
    pub executable: Option<Spanned<String>>,
    /// `event.action` values; empty = any.
    #[serde(default)]
    pub actions: Vec<Spanned<String>>,
    /// File path glob (the file or the rename target); absent = any.
    #[serde(default)]
    pub target: Option<Spanned<String>>,
    /// For the humans reading the policy; kept so `deny_unknown_fields` accepts it.
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "read by humans only; kept so deny_unknown_fields accepts it"
    )]
    pub comment: Option<String>,
}

/// A daily window in host local time, optionally on some weekdays only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub name: Spanned<String>,
    pub start: Spanned<String>,
    pub end: Spanned<String>,
    #[serde(default)]
    pub days: Vec<Spanned<String>>,
    /// Alerts of these rules are expected (suppressed) inside the window.
    #[serde(default)]
    pub suppress: Vec<Spanned<String>>,
}

fn d_image_ext() -> Vec<String> {
    [
        "qcow2", "qcow", "img", "raw", "qed", "vmdk", "vdi", "vhd", "vhdx", "iso",
    ]
    .map(String::from)
    .to_vec()
}
fn d_volatile() -> Vec<Spanned<String>> {
    vec![]
}
fn d_dedupe() -> u64 {
    10
}
fn d_admins() -> Vec<u32> {
    vec![0]
}

/// Lists the rules consult (names, paths, lineages).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionSection {
    /// File extensions that name disk images.
    #[serde(default = "d_image_ext")]
    pub image_extensions: Vec<String>,
    /// World-writable or volatile places a backing file should never point to.
    #[serde(default = "d_volatile")]
    pub volatile_paths: Vec<Spanned<String>>,
    /// Case-insensitive name globs of ransom notes.
    #[serde(default)]
    pub ransom_note_names: Vec<Spanned<String>>,
    /// Extensions that hide files from casual listings (`vss` …).
    #[serde(default)]
    pub hidden_extensions: Vec<String>,
    /// Ancestors a snapshot tool should not have: globs on the executable path (with `/`)
    /// or the process name (without).
    #[serde(default)]
    pub suspicious_ancestors: Vec<Spanned<String>>,
    /// Users whose interactive sessions may run snapshot tools.
    #[serde(default = "d_admins")]
    pub admin_users: Vec<u32>,
    /// The same rule, actor and file alert at most once in this many seconds.
    #[serde(default = "d_dedupe")]
    pub dedupe_seconds: u64,
}

impl Default for DetectionSection {
    fn default() -> Self {
        DetectionSection {
            image_extensions: d_image_ext(),
            volatile_paths: d_volatile(),
            ransom_note_names: vec![],
            hidden_extensions: vec![],
            suspicious_ancestors: vec![],
            admin_users: d_admins(),
            dedupe_seconds: d_dedupe(),
        }
    }
}

/// The rules part of the policy, as parsed.
#[derive(Debug, Clone, Default)]
pub struct RulesPolicy<'a> {
    pub actors: &'a [ActorSpec],
    pub rules: &'a [RuleSettings],
    pub exceptions: &'a [ExceptionSpec],
    pub windows: &'a [WindowSpec],
    pub detection: Option<&'a DetectionSection>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{col}: {msg}")]
    Parse {
        file: String,
        line: usize,
        col: usize,
        msg: String,
    },
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    /// A user other than root could change the file: refused unless `--insecure-config`.
    #[error("{file}: not trusted: {why}")]
    Untrusted { file: String, why: Untrusted },
}

/// Why a user other than root could change a policy file, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// What on the path is writable or owned by someone else.
    pub what: String,
    /// The command that fixes it.
    pub fix: String,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, so a user other than root could rewrite the policy (fix: {}, or pass --insecure-config to trust it anyway)",
            self.what, self.fix
        )
    }
}

/// Who besides root could change what `path` holds, if anyone: the file itself (owned by
/// root, not group/other-writable) and every directory and symlink from `/` down to it,
/// symlinks followed (each directory owned by root and not group/other-writable, unless
/// sticky: then others cannot remove or rename root's entries in it). Strict by design:
/// the policy decides what the agent stays silent about. A read-only mount is no excuse:
/// it may be read-only only in the agent's namespace (systemd's `ProtectSystem=strict`)
/// while users write the same files through their own.
pub fn untrusted(path: &Path) -> std::io::Result<Option<Untrusted>> {
    use std::{
        ffi::OsString,
        os::unix::fs::{MetadataExt as _, PermissionsExt as _},
        path::Component,
    };
    fn parts(p: &Path) -> Vec<OsString> {
        p.components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    }
    let owner = |p: &Path, m: &std::fs::Metadata, kind: &str, chown: &str| {
        (m.uid() != 0).then(|| Untrusted {
            what: format!(
                "{kind} {} is owned by uid {}, not root",
                p.display(),
                m.uid()
            ),
            fix: format!("{chown} root {}", p.display()),
        })
    };
    let writable = |p: &Path, m: &std::fs::Metadata, kind: &str| {
        let mode = m.permissions().mode();
        (mode & 0o022 != 0).then(|| Untrusted {
            what: format!(
                "{kind} {} is writable by group or others (mode {:04o}{})",
                p.display(),
                mode & 0o7777,
                if kind == "directory" {
                    ", not sticky"
                } else {
                    ""
                }
            ),
            fix: format!("chmod go-w {}", p.display()),
        })
    };
    let dir = |p: &Path, m: &std::fs::Metadata| {
        owner(p, m, "directory", "chown").or_else(|| {
            // Sticky: others may add entries but not replace root's.
            if m.permissions().mode() & 0o1000 != 0 {
                None
            } else {
                writable(p, m, "directory")
            }
        })
    };
    let abs = std::path::absolute(path)?;
    let mut todo = parts(&abs);
    let mut cur = PathBuf::from("/");
    if let Some(u) = dir(&cur, &std::fs::metadata(&cur)?) {
        return Ok(Some(u));
    }
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let m = std::fs::symlink_metadata(&next)?;
        if m.file_type().is_symlink() {
            // Whoever owns a symlink in a sticky directory may replace it.
            if let Some(u) = owner(&next, &m, "symlink", "chown -h") {
                return Ok(Some(u));
            }
            hops += 1;
            if hops > 40 {
                return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
            }
            let to = std::fs::read_link(&next)?;
            if to.is_absolute() {
                cur = PathBuf::from("/");
            }
            todo.extend(parts(&to));
            continue;
        }
        let found = if todo.is_empty() {
            owner(&next, &m, "file", "chown").or_else(|| writable(&next, &m, "file"))
        } else {
            dir(&next, &m)
        };
        if found.is_some() {
            return Ok(found);
        }
        cur = next;
    }
    Ok(None)
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

impl Policy {
    /// The policy text as TOML, with the checks of config's own sections (paths absolute,
    /// ranges, `enforce.deny` names). The stages check theirs in [`crate::policy_check`],
    /// which defines `Policy::parse`, `load`, `load_trusted` and `embedded`.
    pub fn parse_own(text: &str, file: &str) -> Result<Self, ConfigError> {
        let p: Policy = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse {
                file: file.into(),
                line,
                col,
                msg: e.message().to_string(),
            }
        })?;
        p.validate(file)?;
        Ok(p)
    }

    /// The text of the policy file `path`. A FIFO or device is refused without being opened:
    /// the agent would wait on a FIFO forever.
    pub fn read_text(path: &Path) -> Result<String, ConfigError> {
        use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
        let f = path.display().to_string();
        let io = |source| ConfigError::Io {
            file: f.clone(),
            source,
        };
        let not_file = || ConfigError::Invalid {
            file: f.clone(),
            msg: "not a regular file".into(),
        };
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(not_file());
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
            .map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(not_file());
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        String::from_utf8(text).map_err(|e| ConfigError::Invalid {
            file: f.clone(),
            msg: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        })
    }

    /// The rules part, borrowed, for validation and the engine.
    pub fn rules_policy(&self) -> RulesPolicy<'_> {
        RulesPolicy {
            actors: &self.actors,
            rules: &self.rules,
            exceptions: &self.exceptions,
            windows: &self.windows,
            detection: Some(&self.detection),
        }
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        if let Err(e) = parse_ops(&self.enforce.deny.join(",")) {
            return Err(ConfigError::Invalid {
                file: file.into(),
                msg: format!("enforce.deny: {e}"),
            });
        }
        for p in self
            .enforce
            .protect
            .iter()
            .chain(&self.enforce.monitor)
            .chain(&self.enforce.trust)
        {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid {
                    file: file.into(),
                    msg: format!("enforce: path `{}` must be absolute", p.display()),
                });
            }
        }
        if !self.evidence.dir.is_absolute() {
            return Err(ConfigError::Invalid {
                file: file.into(),
                msg: format!(
                    "evidence.dir `{}` must be absolute",
                    self.evidence.dir.display()
                ),
            });
        }
        let bad = |msg: String| {
            Err(ConfigError::Invalid {
                file: file.into(),
                msg,
            })
        };
        for s in &self.stores {
            if !s.path.is_absolute() {
                return bad(format!(
                    "store path `{}` must be absolute",
                    s.path.display()
                ));
            }
        }
        // A path of PATH_MAX bytes has at most 2048 levels.
        if !(1..=2048).contains(&self.agent.scan_depth) {
            return bad(format!(
                "agent.scan_depth {} is outside 1..=2048",
                self.agent.scan_depth
            ));
        }
        if !(10..=10_000).contains(&self.agent.read_budget_ms) {
            return bad(format!(
                "agent.read_budget_ms {} is outside 10..=10000",
                self.agent.read_budget_ms
            ));
        }
        if !(4096..=1 << 30).contains(&self.agent.ring_buffer_bytes) {
            return bad(format!(
                "agent.ring_buffer_bytes {} is outside 4096..=1GiB",
                self.agent.ring_buffer_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod trust {
        use super::*;
        use crate::testutil::TmpDir;
        use std::os::unix::fs::PermissionsExt as _;

        const NOBODY: u32 = 65534;

        fn chmod(p: &Path, mode: u32) {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        fn chown(p: &Path, uid: u32) {
            use std::os::unix::ffi::OsStrExt as _;
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            // lchown: a symlink itself, not its target.
            assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) }, 0);
        }
        /// A root-owned 0755 directory under $TMPDIR (root-owned, sticky) with a root-owned
        /// 0644 policy in it; None when not run as root (ownership is the point).
        fn setup(tag: &str) -> Option<(TmpDir, PathBuf)> {
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: needs root to own and chown files");
                return None;
            }
            let d = TmpDir::new(tag);
            chmod(&d, 0o755);
            let p = d.path("policy.toml");
            std::fs::write(&p, DEFAULT_POLICY).unwrap();
            chmod(&p, 0o644);
            assert_eq!(untrusted(&p).unwrap(), None, "the good case must pass");
            Some((d, p))
        }
        fn why(p: &Path) -> String {
            untrusted(p)
                .unwrap()
                .map(|u| u.to_string())
                .unwrap_or_default()
        }

        #[test]
        fn a_file_others_can_write_or_own_is_untrusted() {
            let Some((_d, p)) = setup("trust-file") else {
                return;
            };
            for mode in [0o666, 0o646, 0o664] {
                chmod(&p, mode);
                let w = why(&p);
                assert!(
                    w.contains(&format!("file {} is writable", p.display()))
                        && w.contains(&format!("chmod go-w {}", p.display())),
                    "{mode:o}: {w}"
                );
            }
            chmod(&p, 0o644);
            chown(&p, NOBODY);
            assert!(why(&p).contains("owned by uid 65534"), "{}", why(&p));
        }

        #[test]
        fn a_directory_on_the_path_others_can_write_or_own_is_untrusted() {
            let Some((d, p)) = setup("trust-dir") else {
                return;
            };
            let sub = d.path("etc");
            std::fs::create_dir(&sub).unwrap();
            chmod(&sub, 0o755);
            let q = sub.join("policy.toml");
            std::fs::copy(&p, &q).unwrap();
            // Relative paths and `..` walk the same directories.
            let rel = sub.join("..").join("etc").join("policy.toml");
            assert_eq!(untrusted(&rel).unwrap(), None);
            chmod(&sub, 0o777);
            let w = why(&rel);
            assert!(
                w.contains(&format!("directory {} is writable", sub.display()))
                    && w.contains("0777, not sticky"),
                "{w}"
            );
            chmod(&sub, 0o775);
            assert!(why(&q).contains("writable by group"), "{}", why(&q));
            // Sticky and root's: others cannot replace root's file in it (/tmp's case).
            chmod(&sub, 0o1777);
            assert_eq!(untrusted(&q).unwrap(), None);
            chmod(&sub, 0o755);
            chown(&sub, NOBODY);
            let w = why(&q);
            assert!(
                w.contains(&format!(
                    "directory {} is owned by uid 65534",
                    sub.display()
                )),
                "{w}"
            );
            // Even sticky, a directory nobody owns is theirs to change.
            chmod(&sub, 0o1777);
            assert!(why(&q).contains("owned by uid 65534"));
        }

        #[test]
        fn symlinks_are_followed_and_judged_where_they_live() {
            let Some((d, p)) = setup("trust-link") else {
                return;
            };
            let open = d.path("open");
            std::fs::create_dir(&open).unwrap();
            chmod(&open, 0o777);
            // A root-owned link to a good file, but in a directory anyone can write.
            let link = open.join("policy.toml");
            std::os::unix::fs::symlink(&p, &link).unwrap();
            assert!(why(&link).contains("0777, not sticky"), "{}", why(&link));
            // In a good directory, a link into the open one: judged at its target.
            let good = d.path("good.toml");
            std::os::unix::fs::symlink("open/policy.toml", &good).unwrap();
            assert!(why(&good).contains("0777, not sticky"), "{}", why(&good));
            // A link nobody owns in a sticky directory: nobody may replace it.
            chmod(&open, 0o1777);
            assert_eq!(untrusted(&good).unwrap(), None);
            chown(&link, NOBODY);
            assert!(
                why(&good).contains(&format!("symlink {} is owned by uid 65534", link.display())),
                "{}",
                why(&good)
            );
        }

        #[test]
        fn load_trusted_refuses_unless_insecure_and_never_opens_a_fifo() {
            let Some((d, p)) = setup("trust-load") else {
                return;
            };
            assert!(Policy::load_trusted(&p, false).unwrap().1.is_none());
            chmod(&p, 0o666);
            let e = Policy::load_trusted(&p, false).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}: not trusted: ", p.display()))
                    && e.contains("--insecure-config"),
                "{e}"
            );
            let (_, why) = Policy::load_trusted(&p, true).unwrap();
            assert!(why.unwrap().what.contains("mode 0666"));
            // No writer ever comes: a blocking open would hang the suite.
            let fifo = d.path("fifo.toml");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                tx.send(Policy::load(&fifo).map(|_| ()).unwrap_err().to_string())
            });
            let e = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("load blocked on a FIFO");
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    /// Policy snippets users copy from the docs must be what the parser takes (output.md
    /// once said `[[sinks]]`, which the policy refuses as an unknown field).
    #[test]
    fn toml_examples_in_the_docs_parse_as_policies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = 0;
        for doc in ["docs/output.md", "README.md"] {
            let text = std::fs::read_to_string(root.join(doc)).unwrap();
            for block in text.split("```toml\n").skip(1) {
                let toml = block.split("```").next().unwrap();
                // Deserialise only: validation would open the key files the examples name.
                let p: Result<Policy, _> = toml::from_str(toml);
                assert!(p.is_ok(), "{doc}: example does not parse: {p:?}\n{toml}");
                seen += 1;
            }
        }
        assert!(seen >= 2, "the toml examples moved: found {seen}");
        let sinks: Policy = toml::from_str(
            std::fs::read_to_string(root.join("docs/output.md"))
                .unwrap()
                .split("```toml\n")
                .nth(1)
                .unwrap()
                .split("```")
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(sinks.sinks.len(), 2, "the sink example defines two sinks");
    }

    #[test]
    fn embedded_default_is_valid_and_watches_libvirt_and_lvm() {
        let p = Policy::embedded();
        let paths: Vec<_> = p
            .stores
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        for want in [
            "/var/lib/libvirt/images",
            "/var/lib/libvirt/qemu/snapshot",
            "/var/lib/libvirt/qemu/checkpoint",
            "/etc/lvm",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_report_line_and_column() {
        let text = "[agent]\nring_buffer_bytes = 65536\nbogus = 1\n";
        match Policy::parse(text, "p.toml") {
            Err(ConfigError::Parse {
                file,
                line,
                col,
                msg,
            }) => {
                assert_eq!((file.as_str(), line, col), ("p.toml", 3, 1));
                assert!(msg.contains("bogus"), "{msg}");
            }
            other => panic!("expected parse error, got {other:?}"),
        }
    }

    #[test]
    fn bad_types_and_values_are_errors() {
        assert!(matches!(
            Policy::parse("[agent]\nring_buffer_bytes = \"x\"\n", "p"),
            Err(ConfigError::Parse { line: 2, .. })
        ));
        assert!(matches!(
            Policy::parse("[[store]]\npath = \"rel/x\"\n", "p"),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            Policy::parse("[[store]]\npath = \"/x\"\nkind = \"floppy\"\n", "p"),
            Err(ConfigError::Parse { line: 3, .. })
        ));
    }
}
