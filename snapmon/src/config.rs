//! Config: the policy file (TOML), parsed and validated with no side effects before anything
//! is built. Unknown keys and bad values are errors with file, line and column.
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

/// `[respond]`: the circuit breaker (any kernel; see `crate::respond`). Takes effect on SIGHUP.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    /// `off`, `stop` (SIGSTOP), `kill` (SIGKILL in the kernel; the agent's own responses
    /// stop), `freeze` (SIGSTOP, then the process's cgroup v2 is frozen).
    #[serde(default)]
    pub mode: crate::respond::Mode,
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
    pub actors: Vec<crate::rules::policy::ActorSpec>,
    #[serde(default)]
    pub detection: crate::rules::policy::DetectionSection,
    #[serde(default, rename = "rule")]
    pub rules: Vec<crate::rules::policy::RuleSettings>,
    #[serde(default, rename = "exception")]
    pub exceptions: Vec<crate::rules::policy::ExceptionSpec>,
    #[serde(default, rename = "maintenance")]
    pub windows: Vec<crate::rules::policy::WindowSpec>,
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
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
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
        crate::rules::policy::validate(&p.rules_policy()).map_err(|e| {
            if e.span.is_empty() && e.span.start == 0 {
                ConfigError::Invalid {
                    file: file.into(),
                    msg: e.msg,
                }
            } else {
                let (line, col) = line_col(text, e.span.start);
                ConfigError::Parse {
                    file: file.into(),
                    line,
                    col,
                    msg: e.msg,
                }
            }
        })?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let f = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| ConfigError::Io {
            file: f.clone(),
            source,
        })?;
        let text = String::from_utf8(text).map_err(|e| ConfigError::Invalid {
            file: f.clone(),
            msg: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        })?;
        Self::parse(&text, &f)
    }

    /// The rules part, borrowed, for validation and the engine.
    pub fn rules_policy(&self) -> crate::rules::policy::RulesPolicy<'_> {
        crate::rules::policy::RulesPolicy {
            actors: &self.actors,
            rules: &self.rules,
            exceptions: &self.exceptions,
            windows: &self.windows,
            detection: Some(&self.detection),
        }
    }

    pub fn embedded() -> Self {
        Self::parse(DEFAULT_POLICY, "<embedded default policy>").expect("embedded policy is valid")
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        if let Err(e) = crate::enforce::parse_ops(&self.enforce.deny.join(",")) {
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
        crate::respond::validate(&self.respond).map_err(|e| ConfigError::Invalid {
            file: file.into(),
            msg: format!("respond: {e}"),
        })?;
        if !self.evidence.dir.is_absolute() {
            return Err(ConfigError::Invalid {
                file: file.into(),
                msg: format!(
                    "evidence.dir `{}` must be absolute",
                    self.evidence.dir.display()
                ),
            });
        }
        crate::sink::config::validate_all(&self.sinks).map_err(|e| ConfigError::Invalid {
            file: file.into(),
            msg: format!("sink: {e}"),
        })?;
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
