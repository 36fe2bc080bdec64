//! Circuit breaker setup: which stores and rule classes draw which response, and the plan
//! the kernel maps are loaded from, decided and refused before anything is touched.
//!
//! Where BPF LSM is absent, enforcement cannot refuse an operation; the circuit breaker
//! stops the process instead. The kernel judges what it can see at the syscall (a write to a
//! metadata range, a snapshot-destroying ioctl, a rename/unlink/truncate of a protected
//! image) and signals in the same program run (`snapmon-ebpf/src/respond.rs`); the agent
//! answers the rules the kernel cannot judge (rates, sequences) with SIGSTOP or a cgroup
//! freeze (`act`). Never signalled: init, the agent, package managers, trusted actors.

pub mod act;
pub mod cgroup;

use std::path::{Path, PathBuf};

use snapmon_common::{fnv1a, respond as r, FileKey, RespondEntry, RespondTarget};

use crate::{config::RespondSection, rules::registry};

pub use crate::config::RespondMode as Mode;

/// Rules the kernel cannot judge, answered by the agent unless the policy lists others: a
/// mass rename and a burst of snapshot deletions are rates, a freeze never thawed is a
/// sequence.
pub const DEFAULT_AGENT_RULES: &[&str] = &["SM-B001", "SM-K004", "SM-R001"];

/// Rules whose event's actor is not who did it: SM-A001 names the last actor whose record
/// a flood dropped, not the flooder. Never answered (not even with `all`).
pub const UNANSWERABLE_RULES: &[&str] = &["SM-A001"];

/// Package managers: never signalled, whatever they touch.
pub const PACKAGE_MANAGERS: &[&str] = &[
    "/usr/bin/dpkg",
    "/usr/bin/apt",
    "/usr/bin/apt-get",
    "/usr/bin/aptitude",
    "/usr/lib/apt/methods/http",
    "/usr/lib/apt/methods/https",
    "/usr/lib/apt/methods/file",
    "/usr/lib/apt/methods/copy",
    "/usr/lib/apt/methods/store",
    "/usr/bin/rpm",
    "/usr/bin/dnf",
    "/usr/bin/dnf5",
    "/usr/bin/yum",
    "/usr/bin/zypper",
    "/usr/bin/pacman",
    "/usr/bin/snap",
    "/usr/lib/snapd/snapd",
    "/usr/bin/flatpak",
];

/// What draws a response: kernel classes (`respond::*` bits) and rule ids the agent answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub classes: u32,
    pub agent_rules: Vec<&'static str>,
}

/// Parse `[respond] rules`: class names, rule ids, `all`; empty means every class plus
/// [`DEFAULT_AGENT_RULES`].
pub fn parse_rules(list: &[String]) -> Result<Selection, String> {
    let mut s = Selection::default();
    if list.is_empty() {
        s.classes = r::CLASSES;
        s.agent_rules = DEFAULT_AGENT_RULES.to_vec();
        return Ok(s);
    }
    for w in list.iter().map(|w| w.trim()) {
        if w == "all" {
            s.classes |= r::CLASSES;
            s.agent_rules.extend(
                registry::RULES
                    .iter()
                    .map(|d| d.id)
                    .filter(|id| !UNANSWERABLE_RULES.contains(id)),
            );
        } else if let Some((b, _)) = r::NAMES.iter().find(|(_, n)| *n == w) {
            s.classes |= b;
        } else if UNANSWERABLE_RULES.contains(&w) {
            return Err(format!(
                "rule `{w}` cannot draw a response: its actor is not the one who caused it"
            ));
        } else if let Some(d) = registry::find(w) {
            s.agent_rules.push(d.id);
        } else {
            return Err(format!(
                "unknown rule or class `{w}` (classes: {}; or a rule id such as SM-R001; or all)",
                r::NAMES.map(|(_, n)| n).join(", ")
            ));
        }
    }
    s.agent_rules.sort_unstable();
    s.agent_rules.dedup();
    Ok(s)
}

/// The policy section alone, no file system access (`Policy::parse`).
pub fn validate(s: &RespondSection) -> Result<(), String> {
    parse_rules(&s.rules)?;
    for p in s.stores.iter().chain(&s.monitor).chain(&s.trust) {
        if !p.is_absolute() {
            return Err(format!("path `{}` must be absolute", p.display()));
        }
    }
    Ok(())
}

/// Circuit-breaker options, after the command line and the policy are merged.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub mode: Mode,
    pub dry_run: bool,
    /// Stores answered with `mode`; those in `monitor` only report.
    pub stores: Vec<PathBuf>,
    pub monitor: Vec<PathBuf>,
    pub rules: Vec<String>,
    pub trust: Vec<PathBuf>,
}

/// `--respond MODE` wins over the policy's mode; `--dry-run` adds to it. Stores: the
/// policy's, plus `--protect`; with neither, every watched store (`watched`).
pub fn from_policy(
    cli_mode: Option<Mode>,
    cli_dry_run: bool,
    cli_protect: &[PathBuf],
    cfg: &RespondSection,
    extra_trust: &[PathBuf],
    watched: &[PathBuf],
) -> Options {
    let mut stores: Vec<PathBuf> = cfg.stores.iter().chain(cli_protect).cloned().collect();
    if stores.is_empty() && cfg.monitor.is_empty() {
        stores = watched.to_vec();
    }
    Options {
        mode: cli_mode.unwrap_or(cfg.mode),
        dry_run: cfg.dry_run || cli_dry_run,
        stores,
        monitor: cfg.monitor.clone(),
        rules: cfg.rules.clone(),
        trust: cfg.trust.iter().chain(extra_trust).cloned().collect(),
    }
}

/// One protected store as planned.
#[derive(Debug, Clone)]
pub struct Store {
    pub path: PathBuf,
    /// Report only (monitor store or dry-run).
    pub dry: bool,
}

/// What the kernel maps will hold, and what the agent answers itself.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub mode: Mode,
    pub dry_run: bool,
    pub selection: Selection,
    pub stores: Vec<Store>,
    /// Images, devices and store directories by identity (directories with `respond::DIR`).
    pub targets: Vec<(FileKey, RespondTarget, PathBuf)>,
    /// Images by the FNV-1a hash of their absolute path …
    pub paths: Vec<(u64, u32, PathBuf)>,
    /// … and by directory and name.
    pub entries: Vec<(RespondEntry, u32, PathBuf)>,
    /// Extensions that make a file an image (the policy's `detection.image_extensions`).
    pub image_extensions: Vec<String>,
    /// Never signalled.
    pub trusted: Vec<(FileKey, PathBuf)>,
    pub notes: Vec<String>,
}

/// Most files and directories planned per store tree.
const MAX_OBJECTS: usize = 16384;
const MAX_DEPTH: usize = 8;

impl Plan {
    /// The `respond::*` bits an object in `store` gets.
    fn bits(&self, store: &Store) -> u32 {
        let mut b = self.selection.classes;
        match self.mode {
            Mode::Kill => b |= r::KILL,
            Mode::Freeze => b |= r::FREEZE,
            _ => {}
        }
        if store.dry || self.dry_run {
            b |= r::DRY_RUN;
        }
        b
    }

    /// The store holding `path`, if any.
    pub fn store_of(&self, path: &Path) -> Option<&Store> {
        self.stores.iter().find(|s| path.starts_with(&s.path))
    }

    pub fn is_trusted(&self, dev: u32, ino: u64) -> bool {
        ino != 0
            && self
                .trusted
                .iter()
                .any(|(k, _)| k.dev == dev && k.ino == ino)
    }

    /// Is this regular file a disk image (by extension, or qcow2 magic)?
    pub fn is_image(&self, dev: Option<u32>, path: &Path) -> bool {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if ext.is_some_and(|e| self.image_extensions.contains(&e)) {
            return true;
        }
        let p = path.to_path_buf();
        // Files appear in a store as users make them: a FIFO or a stuck filesystem must not
        // stall the agent (unread in time: not known to be an image).
        crate::classify::fileread::bounded_io(dev, path, move || {
            use std::io::Read as _;
            let mut magic = [0u8; 4];
            crate::classify::fileread::open(&p)
                .map_err(std::io::Error::from)
                .and_then(|mut f| f.read_exact(&mut magic))
                .map(|_| magic == *b"QFI\xfb")
        })
        .unwrap_or(false)
    }

    /// Add one object of `store` (also for files that appear later): images by identity,
    /// path and entry name; devices and directories by identity. Other files are the
    /// agent's business (editing a config file in a store must not kill the editor).
    /// Returns whether anything was added.
    pub fn add_object(&mut self, store: &Store, path: &Path, md: &std::fs::Metadata) -> bool {
        let mut bits = self.bits(store);
        let dev = crate::paths::key_for(path, md).dev;
        let image = md.is_file() && self.is_image(Some(dev), path);
        if md.is_dir() {
            bits |= r::DIR;
        } else if md.is_file() && !image {
            return false;
        }
        let key = crate::paths::key_for(path, md);
        let t = RespondTarget {
            flags: bits,
            ..Default::default()
        };
        self.targets.push((key, t, path.to_path_buf()));
        if !image {
            return true;
        }
        use std::os::unix::ffi::OsStrExt;
        for p in path_forms(path) {
            self.paths
                .push((fnv1a(p.as_os_str().as_bytes()), bits, path.to_path_buf()));
        }
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            if let Ok(dm) = std::fs::metadata(dir) {
                let e = RespondEntry {
                    dir: crate::paths::key_for(dir, &dm),
                    name_hash: fnv1a(name.as_bytes()),
                };
                self.entries.push((e, bits, path.to_path_buf()));
            }
        }
        true
    }

    /// Bootstrap metadata ranges of the files the classifier knows (until it publishes the
    /// write filter itself on a file's first event).
    pub fn set_ranges(&mut self, ranges: impl Fn(FileKey) -> Option<snapmon_common::WriteFilter>) {
        for (k, t, _) in &mut self.targets {
            if t.flags & r::DIR == 0 {
                if let Some(f) = ranges(*k) {
                    t.count = f.count;
                    t.ranges = f.ranges;
                }
            }
        }
    }
}

/// The absolute forms a path may be named by: as given (normalized) and canonical.
fn path_forms(p: &Path) -> Vec<PathBuf> {
    let mut v = vec![p.to_path_buf()];
    if let Ok(c) = std::fs::canonicalize(p) {
        if c != p {
            v.push(c);
        }
    }
    v
}

/// Identities never signalled: the enforcement list, every policy actor group, `trust`,
/// package managers and snapmon itself.
fn trusted(o: &Options, policy: &crate::config::Policy) -> Result<Vec<(FileKey, PathBuf)>, String> {
    let mut out: Vec<(FileKey, PathBuf)> = Vec::new();
    let mut add = |p: PathBuf, required: bool| -> Result<(), String> {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => {
                let k = crate::paths::key_for(&p, &m);
                if !out.iter().any(|(x, _)| *x == k) {
                    out.push((k, p));
                }
                Ok(())
            }
            Ok(_) if required => Err(format!(
                "trusted executable {} is not a regular file",
                p.display()
            )),
            Err(e) if required => Err(format!("trusted executable {}: {e}", p.display())),
            _ => Ok(()),
        }
    };
    for p in crate::enforce::DEFAULT_TRUSTED
        .iter()
        .chain(PACKAGE_MANAGERS)
    {
        add(PathBuf::from(p), false)?;
    }
    for p in &o.trust {
        add(p.clone(), true)?;
    }
    // snapmon itself (`recover --in-place` rewrites a header). Init is spared by pid in the
    // kernel, not by executable: in a container it may be a shell or an interpreter.
    if let Ok(t) = std::fs::read_link("/proc/self/exe") {
        add(t, false)?;
    }
    let (groups, _) =
        crate::rules::policy::build_actors(&policy.actors, &crate::rules::policy::HostResolver);
    for g in &groups {
        for ((dev, ino), path) in &g.ids {
            let k = FileKey {
                dev: *dev,
                _pad: 0,
                ino: *ino,
            };
            if !out.iter().any(|(x, _)| *x == k) {
                out.push((k, PathBuf::from(path)));
            }
        }
    }
    Ok(out)
}

/// Build and check the plan: no side effects beyond `stat` and `readdir`. None when off.
pub fn plan(o: &Options, policy: &crate::config::Policy) -> Result<Option<Plan>, String> {
    if o.mode == Mode::Off {
        return Ok(None);
    }
    let selection = parse_rules(&o.rules)?;
    if o.stores.is_empty() && o.monitor.is_empty() {
        return Err(
            "no store to protect: list `stores` in [respond], or pass --protect or --watch".into(),
        );
    }
    if o.mode == Mode::Freeze {
        cgroup::Hierarchy::find().map_err(|e| format!("mode freeze: {e}"))?;
    }
    let mut p = Plan {
        mode: o.mode,
        dry_run: o.dry_run,
        selection,
        trusted: trusted(o, policy)?,
        image_extensions: policy
            .detection
            .image_extensions
            .iter()
            .map(|e| e.to_ascii_lowercase())
            .collect(),
        ..Default::default()
    };
    let stores = o
        .stores
        .iter()
        .map(|s| (s, false))
        .chain(o.monitor.iter().map(|s| (s, true)));
    for (path, dry) in stores {
        let canon = match std::fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) => {
                p.notes
                    .push(format!("store {} skipped: {e}", path.display()));
                continue;
            }
        };
        if crate::enforce::NEVER_PROTECT
            .iter()
            .any(|n| canon == Path::new(n))
        {
            return Err(format!(
                "refusing to respond on {}: it would stop the package manager or the init system; name the snapshot store itself",
                canon.display()
            ));
        }
        if let Some((_, t)) = p
            .trusted
            .iter()
            .find(|(_, t)| std::fs::canonicalize(t).is_ok_and(|t| t.starts_with(&canon)))
        {
            return Err(format!(
                "refusing to respond on {}: it contains the trusted executable {}",
                canon.display(),
                t.display()
            ));
        }
        let store = Store { path: canon, dry };
        p.stores.push(store.clone());
        walk(&mut p, &store, &store.path.clone(), 0)?;
    }
    if p.stores.is_empty() {
        return Err(format!("none of the stores exists: {}", p.notes.join("; ")));
    }
    if p.dry_run {
        p.notes
            .push("dry-run: responses are reported (SM-E004), nothing is signalled".into());
    }
    Ok(Some(p))
}

fn walk(p: &mut Plan, store: &Store, path: &Path, depth: usize) -> Result<(), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if p.targets.len() >= MAX_OBJECTS {
        p.notes.push(format!(
            "more than {MAX_OBJECTS} objects: {} and later ones are judged by the agent only",
            path.display()
        ));
        return Ok(());
    }
    // Devices (ZFS, dm control) are stores too: their ioctls are what is judged.
    if !(md.is_dir() || md.is_file() || is_block_or_char(&md)) {
        return Ok(());
    }
    p.add_object(store, path, &md);
    if md.is_dir() && depth < MAX_DEPTH {
        let rd = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            // Symlinks are not followed: the store is what is in it.
            if std::fs::symlink_metadata(&n).is_ok_and(|m| !m.file_type().is_symlink()) {
                walk(p, store, &n, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn is_block_or_char(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    md.file_type().is_block_device() || md.file_type().is_char_device()
}

/// The plan summary for `started`/`reloaded` and `snapmon policy check`.
pub fn describe(p: Option<&Plan>) -> serde_json::Value {
    let Some(p) = p else {
        return serde_json::json!({"active": false});
    };
    serde_json::json!({
        "active": true,
        "mode": p.mode.as_str(),
        "dry_run": p.dry_run,
        "stores": p.stores.iter().map(|s| serde_json::json!({"path": s.path, "monitor": s.dry})).collect::<Vec<_>>(),
        "kernel_classes": r::NAMES.iter().filter(|(b, _)| p.selection.classes & b != 0).map(|(_, n)| *n).collect::<Vec<_>>(),
        "agent_rules": p.selection.agent_rules,
        "objects": p.targets.len(),
        "images": p.entries.len(),
        "trusted_count": p.trusted.len(),
        "notes": p.notes,
    })
}

/// Every action a response record or alert event can carry.
pub const ACTIONS: &[crate::event::Action] = &[
    crate::event::Action::Kill,
    crate::event::Action::Stop,
    crate::event::Action::Freeze,
    crate::event::Action::WouldKill,
    crate::event::Action::WouldStop,
    crate::event::Action::WouldFreeze,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_classes_rule_ids_and_all() {
        let s = parse_rules(&[]).unwrap();
        assert_eq!(s.classes, r::CLASSES);
        assert_eq!(s.agent_rules, DEFAULT_AGENT_RULES);
        let s = parse_rules(&["metadata_write".into(), "SM-K004".into()]).unwrap();
        assert_eq!(s.classes, r::METADATA_WRITE);
        assert_eq!(s.agent_rules, vec!["SM-K004"]);
        // Every rule but those whose actor is not the culprit (SM-A001).
        let all = parse_rules(&["all".into()]).unwrap().agent_rules;
        assert_eq!(all.len(), registry::RULES.len() - UNANSWERABLE_RULES.len());
        assert!(!all.contains(&"SM-A001"));
        let e = parse_rules(&["SM-A001".into()]).unwrap_err();
        assert!(
            e.contains("SM-A001") && e.contains("cannot draw a response"),
            "{e}"
        );
        let e = parse_rules(&["metadata_wrte".into()]).unwrap_err();
        assert!(
            e.contains("metadata_wrte") && e.contains("metadata_write"),
            "{e}"
        );
    }

    #[test]
    fn modes_parse_and_policy_sections_validate() {
        assert_eq!(Mode::parse("freeze").unwrap(), Mode::Freeze);
        assert!(Mode::parse("nuke")
            .unwrap_err()
            .contains("off, stop, kill, freeze"));
        let rel = RespondSection {
            stores: vec!["rel/x".into()],
            ..Default::default()
        };
        assert!(validate(&rel).unwrap_err().contains("absolute"));
        let p = crate::config::Policy::parse(
            "[respond]\nmode = \"kill\"\nrules = [\"rename\", \"SM-R001\"]\nstores = [\"/srv/images\"]\n",
            "p",
        )
        .unwrap();
        assert_eq!(p.respond.mode, Mode::Kill);
        assert!(crate::config::Policy::parse("[respond]\nmode = \"nuke\"\n", "p").is_err());
        assert!(crate::config::Policy::parse("[respond]\nrules = [\"bogus\"]\n", "p").is_err());
    }

    #[test]
    fn command_line_mode_wins_and_stores_default_to_the_watched_ones() {
        let cfg = RespondSection {
            mode: Mode::Stop,
            ..Default::default()
        };
        let w = vec![PathBuf::from("/srv/a")];
        let o = from_policy(Some(Mode::Kill), false, &[], &cfg, &[], &w);
        assert_eq!((o.mode, o.stores.clone()), (Mode::Kill, w.clone()));
        let o = from_policy(None, true, &["/srv/b".into()], &cfg, &[], &w);
        assert_eq!(o.mode, Mode::Stop);
        assert!(o.dry_run);
        assert_eq!(o.stores, vec![PathBuf::from("/srv/b")]);
    }

    fn opts(stores: &[&Path], mode: Mode) -> Options {
        Options {
            mode,
            stores: stores.iter().map(|p| p.to_path_buf()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plans_refuse_host_paths_and_stores_holding_trusted_tools() {
        let pol = crate::config::Policy::embedded();
        for p in ["/usr", "/etc", "/"] {
            let e = plan(&opts(&[Path::new(p)], Mode::Kill), &pol).unwrap_err();
            assert!(e.contains("refusing"), "{p}: {e}");
        }
        let e = plan(&opts(&[Path::new("/usr/bin")], Mode::Kill), &pol).unwrap_err();
        assert!(e.contains("trusted executable"), "{e}");
        assert!(plan(&opts(&[], Mode::Kill), &pol)
            .unwrap_err()
            .contains("no store"));
        assert!(plan(&opts(&[Path::new("/x")], Mode::Off), &pol)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_store_plans_its_files_by_identity_and_path_with_mode_bits() {
        let d = crate::testutil::TmpDir::new("respond-plan");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.qcow2"), b"x").unwrap();
        std::fs::write(d.join("sub/b.qcow2"), b"x").unwrap();
        let pol = crate::config::Policy::embedded();
        let p = plan(&opts(&[&d.0], Mode::Kill), &pol).unwrap().unwrap();
        assert_eq!(p.targets.len(), 4, "{:?}", p.targets);
        assert!(p.targets.iter().all(|(_, t, _)| t.flags & r::KILL != 0));
        let dirs = p.targets.iter().filter(|(_, t, _)| t.flags & r::DIR != 0);
        assert_eq!(dirs.count(), 2);
        use std::os::unix::ffi::OsStrExt;
        let h = fnv1a(d.join("sub/b.qcow2").as_os_str().as_bytes());
        assert!(p.paths.iter().any(|(x, b, _)| *x == h && b & r::DIR == 0));
        assert!(p.is_trusted(p.trusted[0].0.dev, p.trusted[0].0.ino));
        // qemu-img is trusted by identity; so is this test binary's init.
        assert!(p.trusted.iter().any(|(_, t)| t.ends_with("qemu-img")));
        // Not an image: left to the agent (an editor saving a file must not be killed).
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let p = plan(&opts(&[&d.0], Mode::Kill), &pol).unwrap().unwrap();
        assert_eq!(p.targets.len(), 4);
        assert_eq!(p.entries.len(), 2);
        let mut dry = opts(&[], Mode::Kill);
        dry.monitor = vec![d.0.clone()];
        let p = plan(&dry, &pol).unwrap().unwrap();
        assert!(p.targets.iter().all(|(_, t, _)| t.flags & r::DRY_RUN != 0));
    }

    #[test]
    fn actions_name_what_was_done() {
        use crate::actions::response_action as action_name;
        assert_eq!(action_name(9, r::KILL).as_str(), "kill");
        assert_eq!(action_name(0, r::KILL).as_str(), "would_kill");
        assert_eq!(action_name(19, r::FREEZE).as_str(), "freeze");
        assert_eq!(action_name(19, 0).as_str(), "stop");
        assert_eq!(action_name(0, 0).as_str(), "would_stop");
        for a in ACTIONS {
            assert_eq!(crate::rules::Kind::of(*a), crate::rules::Kind::Other, "{a}");
        }
    }
}
