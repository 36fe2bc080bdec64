//! Rules policy model: trusted actors, per-rule settings, exceptions and maintenance windows
//! as written in the policy file, their validation (with spans for file:line:col errors),
//! and their compilation into what the engine consults on the hot path.

use std::{collections::BTreeMap, path::Path};

use toml::Spanned;

use super::glob::Glob;
// Engines are built with these; they stay reachable where the policy's other parts are.
pub use super::window::{FixedOffset, HostLocalTime, LocalTime, Window};
use crate::event::Action;

pub use crate::config::{
    ActorSpec, DetectionSection, ExceptionSpec, PinSpec, RuleSettings, RulesPolicy, WindowSpec,
};

/// A semantic error at a byte span of the policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanError {
    pub span: std::ops::Range<usize>,
    pub msg: String,
}

fn at<T>(s: &Spanned<T>, msg: impl Into<String>) -> SpanError {
    SpanError {
        span: s.span(),
        msg: msg.into(),
    }
}

/// `HH:MM` → minutes since midnight (`24:00` allowed as an end).
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

pub const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// An action an exception may name: any the agent emits (`Action`), never the empty one.
pub fn exception_action(s: &str) -> Option<Action> {
    s.parse().ok().filter(|a| *a != Action::Unset)
}

/// Validate everything the rules part of a policy says, without touching the host.
pub fn validate(p: &RulesPolicy) -> Result<(), SpanError> {
    let known = |id: &str| super::registry::find(id).is_some();
    let mut groups = std::collections::HashSet::new();
    for a in p.actors {
        if a.name.get_ref().is_empty() {
            return Err(at(&a.name, "actor name must not be empty"));
        }
        if !groups.insert(a.name.get_ref().clone()) {
            return Err(at(
                &a.name,
                format!("actor `{}` defined twice", a.name.get_ref()),
            ));
        }
        if a.executables.is_empty() && a.pinned.is_empty() {
            return Err(at(
                &a.name,
                format!("actor `{}` lists no executables", a.name.get_ref()),
            ));
        }
        for e in a.executables.iter().chain(a.pinned.iter().map(|p| &p.path)) {
            check_exe_path(e)?;
        }
        for pn in &a.pinned {
            let h = pn.sha256.get_ref();
            if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(at(&pn.sha256, "sha256 must be 64 hex digits"));
            }
        }
        for g in a.parent.iter().chain(&a.ancestor).chain(&a.systemd_units) {
            Glob::new(g.get_ref()).map_err(|e| at(g, format!("bad glob: {e}")))?;
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in p.rules {
        let id = r.id.get_ref();
        let Some(def) = super::registry::find(id) else {
            return Err(at(&r.id, format!("unknown rule id `{id}`")));
        };
        if !seen.insert(id.clone()) {
            return Err(at(&r.id, format!("rule `{id}` configured twice")));
        }
        if let Some(t) = &r.threshold {
            if def.rate.is_none() {
                return Err(at(
                    t,
                    format!("rule `{id}` is not a rate rule; `threshold` does not apply"),
                ));
            }
            if *t.get_ref() == 0 || *t.get_ref() > 100_000 {
                return Err(at(t, "threshold must be within 1..=100000"));
            }
        }
        if let Some(w) = &r.window_seconds {
            if def.rate.is_none() && !def.windowed {
                return Err(at(w, format!("rule `{id}` has no window")));
            }
            if *w.get_ref() == 0 || *w.get_ref() > 86_400 {
                return Err(at(w, "window_seconds must be within 1..=86400"));
            }
        }
    }
    for x in p.exceptions {
        if x.rules.is_empty() {
            return Err(SpanError {
                span: x
                    .actor
                    .as_ref()
                    .or(x.executable.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0),
                msg: "exception names no rules".into(),
            });
        }
        for r in &x.rules {
            if !known(r.get_ref()) {
                return Err(at(r, format!("unknown rule id `{}`", r.get_ref())));
            }
        }
        match (&x.actor, &x.executable) {
            (None, None) => {
                return Err(at(
                    &x.rules[0],
                    "exception needs `actor` or `executable` (who is excepted)",
                ))
            }
            (Some(a), _) if !groups.contains(a.get_ref()) => {
                return Err(at(
                    a,
                    format!("unknown actor `{}` (define it with [[actor]])", a.get_ref()),
                ))
            }
            _ => {}
        }
        if let Some(e) = &x.executable {
            Glob::new(e.get_ref()).map_err(|m| at(e, format!("bad glob: {m}")))?;
        }
        if let Some(t) = &x.target {
            Glob::new(t.get_ref()).map_err(|m| at(t, format!("bad glob: {m}")))?;
            if !t.get_ref().starts_with('/') {
                return Err(at(t, "target glob must be absolute"));
            }
        }
        for a in &x.actions {
            if exception_action(a.get_ref()).is_none() {
                return Err(at(a, format!("unknown action `{}`", a.get_ref())));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for w in p.windows {
        if !names.insert(w.name.get_ref().clone()) {
            return Err(at(
                &w.name,
                format!("window `{}` defined twice", w.name.get_ref()),
            ));
        }
        let s = parse_hhmm(w.start.get_ref())
            .filter(|&m| m < 24 * 60)
            .ok_or_else(|| {
                at(
                    &w.start,
                    format!("`{}` is not a time HH:MM (00:00–23:59)", w.start.get_ref()),
                )
            })?;
        let e = parse_hhmm(w.end.get_ref()).ok_or_else(|| {
            at(
                &w.end,
                format!("`{}` is not a time HH:MM (00:00–24:00)", w.end.get_ref()),
            )
        })?;
        if s == e {
            return Err(at(&w.end, "window is empty: start equals end"));
        }
        for d in &w.days {
            if !DAYS.contains(&d.get_ref().to_ascii_lowercase().as_str()) {
                return Err(at(
                    d,
                    format!("`{}` is not a day (sun, mon, … sat)", d.get_ref()),
                ));
            }
        }
        for r in &w.suppress {
            if !known(r.get_ref()) {
                return Err(at(r, format!("unknown rule id `{}`", r.get_ref())));
            }
        }
    }
    if let Some(d) = p.detection {
        for g in d.volatile_paths.iter().chain(&d.suspicious_ancestors) {
            Glob::new(g.get_ref()).map_err(|m| at(g, format!("bad glob: {m}")))?;
        }
        for g in &d.ransom_note_names {
            Glob::new_nocase(g.get_ref()).map_err(|m| at(g, format!("bad glob: {m}")))?;
        }
        if d.dedupe_seconds > 86_400 {
            return Err(SpanError {
                span: 0..0,
                msg: "detection.dedupe_seconds must be at most 86400".into(),
            });
        }
    }
    Ok(())
}

fn check_exe_path(e: &Spanned<String>) -> Result<(), SpanError> {
    let p = e.get_ref();
    if !p.starts_with('/') {
        return Err(at(e, format!("executable `{p}` must be an absolute path")));
    }
    let (dir, leaf) = p.rsplit_once('/').unwrap_or(("", p));
    if dir.contains(['*', '?', '[']) {
        return Err(at(e, "only the last path component may be a glob"));
    }
    Glob::new(leaf).map_err(|m| at(e, format!("bad glob: {m}")))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Compiled form.

/// How trusted paths become identities. The host's filesystem in production; a recorded
/// table in fixture tests (identities are per host).
pub trait Resolver {
    /// (kernel dev, inode) of the file at `path`, following symlinks.
    fn identity(&self, path: &str) -> Option<(u32, u64)>;
    /// Paths in `dir` (for glob expansion).
    fn list(&self, dir: &str) -> Vec<String>;
    fn sha256(&self, path: &str) -> Option<String>;
}

pub struct HostResolver;

/// Where the host's root is mounted when the agent runs in a container (`SNAPMON_HOST_ROOT`,
/// e.g. `/host` in deploy/kubernetes): trusted executables are the node's, not the image's.
/// Device and inode are the same through a bind mount, so identities match the kernel's.
fn host_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        std::env::var_os("SNAPMON_HOST_ROOT")
            .filter(|r| !r.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/".into())
    })
}

/// `path` (absolute, as the policy says) under `root`.
fn under(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The host's files seen from `root` (`/` outside containers).
pub struct RootedResolver<'a>(pub &'a Path);

impl Resolver for HostResolver {
    fn identity(&self, path: &str) -> Option<(u32, u64)> {
        RootedResolver(host_root()).identity(path)
    }
    fn list(&self, dir: &str) -> Vec<String> {
        RootedResolver(host_root()).list(dir)
    }
    fn sha256(&self, path: &str) -> Option<String> {
        RootedResolver(host_root()).sha256(path)
    }
}

impl Resolver for RootedResolver<'_> {
    fn identity(&self, path: &str) -> Option<(u32, u64)> {
        use std::os::unix::fs::MetadataExt;
        // Absolute symlinks on the host (/bin/qemu-img -> /usr/bin/…) point into the host's
        // root too.
        let mut p = under(self.0, path);
        for _ in 0..40 {
            match std::fs::read_link(&p) {
                Ok(t) if t.is_absolute() && self.0 != Path::new("/") => {
                    p = under(self.0, &t.to_string_lossy())
                }
                _ => break,
            }
        }
        let m = std::fs::metadata(&p).ok()?;
        m.is_file()
            .then(|| (crate::paths::kernel_dev(m.dev()), m.ino()))
    }
    fn list(&self, dir: &str) -> Vec<String> {
        std::fs::read_dir(under(self.0, dir))
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let name = e.file_name();
                        format!("{}/{}", dir.trim_end_matches('/'), name.to_string_lossy())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    fn sha256(&self, path: &str) -> Option<String> {
        use sha2::Digest;
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt as _;
        // Follows symlinks (the policy names executables by path) but never blocks on a
        // FIFO or opens a device.
        let p = under(self.0, path);
        if !std::fs::metadata(&p).ok()?.is_file() {
            return None;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&p)
            .ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Some(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod rooted_tests {
    use super::*;

    #[test]
    fn a_rooted_resolver_names_the_hosts_files_by_their_host_paths() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("snapmon-rooted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/qemu-img"), b"#!").unwrap();
        std::os::unix::fs::symlink("/usr/bin/qemu-img", root.join("usr/bin/qemu-img-link"))
            .unwrap();
        let r = RootedResolver(&root);
        let m = std::fs::metadata(root.join("usr/bin/qemu-img")).unwrap();
        let want = Some((crate::paths::kernel_dev(m.dev()), m.ino()));
        assert_eq!(r.identity("/usr/bin/qemu-img"), want);
        // An absolute link resolves inside the host root, not the container's.
        assert_eq!(r.identity("/usr/bin/qemu-img-link"), want);
        let mut l = r.list("/usr/bin");
        l.sort();
        assert_eq!(l, ["/usr/bin/qemu-img", "/usr/bin/qemu-img-link"]);
        assert!(r.sha256("/usr/bin/qemu-img").is_some());
        assert_eq!(r.identity("/usr/bin/missing"), None);
        // Outside a container the root is `/`: plain host paths.
        let sh = std::fs::metadata("/bin/sh").unwrap();
        assert_eq!(
            RootedResolver(Path::new("/")).identity("/bin/sh"),
            Some((crate::paths::kernel_dev(sh.dev()), sh.ino()))
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[derive(Debug, Clone)]
pub struct ActorGroup {
    pub name: String,
    /// (dev, ino) → the configured path it came from.
    pub ids: BTreeMap<(u32, u64), String>,
    pub parent: Vec<Glob>,
    pub ancestor: Vec<Glob>,
    pub users: Vec<u32>,
    pub units: Vec<Glob>,
    pub container: Option<bool>,
}

impl ActorGroup {
    /// Is this executable identity one of the group's (lineage constraints not applied)?
    pub fn has_identity(&self, dev: u32, ino: u64) -> bool {
        ino != 0 && self.ids.contains_key(&(dev, ino))
    }

    /// Trust depends on more than the identity (lineage, user, unit, container).
    pub fn constrained(&self) -> bool {
        !self.parent.is_empty()
            || !self.ancestor.is_empty()
            || !self.users.is_empty()
            || !self.units.is_empty()
            || self.container.is_some()
    }

    /// Identity and every lineage constraint.
    pub fn trusts(&self, p: &crate::event::ProcessInfo) -> bool {
        if !self.has_identity(p.exe_dev, p.exe_ino) {
            return false;
        }
        if !self.parent.is_empty() {
            let pe = p
                .parent
                .as_ref()
                .map(|a| a.executable.as_str())
                .or_else(|| p.ancestors.first().map(|a| a.executable.as_str()))
                .unwrap_or("");
            if !self.parent.iter().any(|g| g.matches(pe.as_bytes())) {
                return false;
            }
        }
        if !self.ancestor.is_empty()
            && !p.ancestors.iter().any(|a| {
                self.ancestor
                    .iter()
                    .any(|g| g.matches(a.executable.as_bytes()))
            })
        {
            return false;
        }
        if !self.users.is_empty() && !self.users.contains(&p.uid) {
            return false;
        }
        if !self.units.is_empty() {
            let u = p.systemd_unit.as_deref().unwrap_or("");
            if !self.units.iter().any(|g| g.matches(u.as_bytes())) {
                return false;
            }
        }
        match self.container {
            Some(want) if want != p.container_id.is_some() => return false,
            _ => {}
        }
        true
    }
}

/// Resolve actor groups to identities. Missing paths are warnings, not errors: a policy is
/// shared between hosts that do not all have every tool.
pub fn build_actors(specs: &[ActorSpec], r: &dyn Resolver) -> (Vec<ActorGroup>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    let globs = |v: &[Spanned<String>]| -> Vec<Glob> {
        v.iter()
            .filter_map(|g| Glob::new(g.get_ref()).ok())
            .collect()
    };
    for a in specs {
        let name = a.name.get_ref().clone();
        let mut ids = BTreeMap::new();
        for e in &a.executables {
            let p = e.get_ref();
            let (dir, leaf) = p.rsplit_once('/').unwrap_or(("", p));
            let candidates: Vec<String> = match Glob::new(leaf) {
                Ok(g) if !g.is_literal() => {
                    let dir = if dir.is_empty() { "/" } else { dir };
                    let mut v: Vec<String> = r
                        .list(dir)
                        .into_iter()
                        .filter(|c| {
                            Path::new(c)
                                .file_name()
                                .is_some_and(|n| g.matches(n.as_encoded_bytes()))
                        })
                        .collect();
                    v.sort();
                    v
                }
                _ => vec![p.clone()],
            };
            if candidates.is_empty() {
                warnings.push(format!(
                    "actor `{name}`: nothing on this host matches `{p}`"
                ));
            }
            for c in candidates {
                match r.identity(&c) {
                    Some(id) => {
                        ids.entry(id).or_insert(c);
                    }
                    None => {
                        warnings.push(format!("actor `{name}`: `{c}` does not exist on this host"))
                    }
                }
            }
        }
        for pn in &a.pinned {
            let p = pn.path.get_ref();
            match (r.identity(p), r.sha256(p)) {
                (Some(id), Some(h)) if h.eq_ignore_ascii_case(pn.sha256.get_ref()) => {
                    ids.entry(id).or_insert_with(|| p.clone());
                }
                (Some(_), Some(h)) => warnings.push(format!(
                    "actor `{name}`: `{p}` has SHA-256 {h}, not the pinned one; not trusted"
                )),
                _ => warnings.push(format!("actor `{name}`: `{p}` does not exist on this host")),
            }
        }
        out.push(ActorGroup {
            name,
            ids,
            parent: globs(&a.parent),
            ancestor: globs(&a.ancestor),
            users: a.users.clone(),
            units: globs(&a.systemd_units),
            container: a.container,
        });
    }
    (out, warnings)
}

#[derive(Debug, Clone)]
pub struct Exception {
    pub rules: Vec<String>,
    pub actor: Option<String>,
    pub executable: Option<Glob>,
    pub actions: Vec<Action>,
    pub target: Option<Glob>,
}

impl Exception {
    pub fn compile(x: &ExceptionSpec) -> Exception {
        Exception {
            rules: x.rules.iter().map(|r| r.get_ref().clone()).collect(),
            actor: x.actor.as_ref().map(|a| a.get_ref().clone()),
            executable: x
                .executable
                .as_ref()
                .and_then(|e| Glob::new(e.get_ref()).ok()),
            // Validated already: an unknown name cannot reach here.
            actions: x
                .actions
                .iter()
                .filter_map(|a| exception_action(a.get_ref()))
                .collect(),
            target: x.target.as_ref().and_then(|t| Glob::new(t.get_ref()).ok()),
        }
    }
}

impl Window {
    /// A `[[maintenance]]` window as the engine consults it; `None` if it does not parse.
    pub fn compile(w: &WindowSpec) -> Option<Window> {
        let mut days = 0u8;
        for d in &w.days {
            let i = DAYS
                .iter()
                .position(|x| *x == d.get_ref().to_ascii_lowercase())?;
            days |= 1 << i;
        }
        Some(Window {
            name: w.name.get_ref().clone(),
            start: parse_hhmm(w.start.get_ref())?,
            end: parse_hhmm(w.end.get_ref())?,
            days: if days == 0 { 0x7f } else { days },
            suppress: w.suppress.iter().map(|s| s.get_ref().clone()).collect(),
        })
    }
}
