//! Enforcement setup: which objects are protected, which executables are trusted, and the
//! safety checks that refuse a dangerous plan — all decided before the kernel maps are
//! touched. The kernel (BPF LSM) then decides alone, with no userspace round-trip.

use std::path::{Path, PathBuf};

use snapmon_common::{deny, FileKey};

pub use crate::config::parse_ops;

use crate::{
    event::{Decision, DetailKey, Event},
    record::{Alert, Severity},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Enforcement required: refuse to start without BPF LSM.
    On,
    /// Enforce where possible, otherwise detect only.
    BestEffort,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// Report what would be denied; deny nothing.
    pub dry_run: bool,
    /// Per-store: report only (monitor) rather than deny.
    pub monitor_only: bool,
    pub protect: Vec<PathBuf>,
    /// Stores that only report (SM-E002) whatever the global mode: per-store monitor mode.
    pub monitor: Vec<PathBuf>,
    pub trust: Vec<PathBuf>,
    pub deny: u32,
    /// Leave the LSM programs pinned (enforcing) if the agent dies.
    pub keep_enforcing: bool,
}

/// Executables trusted by default (when present): the tools that legitimately rewrite
/// snapshot stores.
pub const DEFAULT_TRUSTED: &[&str] = &[
    "/usr/bin/qemu-img",
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-aarch64",
    "/usr/bin/qemu-nbd",
    "/usr/bin/qemu-io",
    "/usr/libexec/qemu-kvm",
    "/usr/sbin/libvirtd",
    "/usr/sbin/virtqemud",
    "/usr/sbin/lvm",
    "/sbin/lvm",
    "/usr/sbin/dmeventd",
    "/usr/bin/btrfs",
    "/usr/sbin/zfs",
];

/// Snapshot-destroying or protection-removing ioctls judged by the LSM hook.
pub const DENY_IOCTLS: &[(u32, &str)] = &[
    (0x5000_940f, "BTRFS_IOC_SNAP_DESTROY"),
    (0x5000_943f, "BTRFS_IOC_SNAP_DESTROY_V2"),
    (0x4008_941a, "BTRFS_IOC_SUBVOL_SETFLAGS"),
    (0x4008_6602, "FS_IOC_SETFLAGS"),
    (0x401c_5820, "FS_IOC_FSSETXATTR"),
    (0x4004_9409, "FICLONE"),
    (0x4020_940d, "FICLONERANGE"),
    (0xc018_9436, "FIDEDUPERANGE"),
    (0x5a18, "ZFS_IOC_DESTROY"),
    (0x5a19, "ZFS_IOC_ROLLBACK"),
    (0x5a3b, "ZFS_IOC_DESTROY_SNAPS"),
];

/// Paths whose protection would break the host (package manager, init, all binaries).
pub(crate) const NEVER_PROTECT: &[&str] = &[
    "/",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc",
    "/boot",
    "/var/lib/dpkg",
    "/var/lib/rpm",
    "/proc",
    "/sys",
    "/dev",
    "/run",
];

/// Enforcement options from the policy's `[enforce]` section, unless the command line set
/// `--enforce` (then the command line wins; its --protect/--trust add to the policy's).
pub fn from_policy(cli: &Options, cfg: &crate::config::EnforceSection) -> Options {
    use crate::config::EnforceModeCfg as M;
    if cli.mode != Mode::Off {
        let mut o = cli.clone();
        o.protect.extend(cfg.protect.iter().cloned());
        o.monitor.extend(cfg.monitor.iter().cloned());
        o.trust.extend(cfg.trust.iter().cloned());
        return o;
    }
    let deny = if cfg.deny.is_empty() {
        parse_ops("all").unwrap_or(0)
    } else {
        parse_ops(&cfg.deny.join(",")).unwrap_or(0)
    };
    Options {
        mode: match cfg.mode {
            M::Off => Mode::Off,
            M::Monitor | M::Enforce => Mode::On,
            M::BestEffort => Mode::BestEffort,
        },
        dry_run: cfg.dry_run || cli.dry_run,
        monitor_only: cfg.mode == M::Monitor,
        protect: cfg.protect.iter().chain(&cli.protect).cloned().collect(),
        monitor: cfg.monitor.clone(),
        trust: cfg.trust.iter().chain(&cli.trust).cloned().collect(),
        deny,
        keep_enforcing: cfg.keep_enforcing || cli.keep_enforcing,
    }
}

/// What the kernel maps will hold.
#[derive(Debug, Default)]
pub struct Plan {
    pub protected: Vec<(FileKey, u32, PathBuf)>,
    pub trusted: Vec<(FileKey, PathBuf)>,
    pub notes: Vec<String>,
}

/// Build and check the plan: no side effects beyond `stat`.
pub fn plan(o: &Options) -> Result<Plan, String> {
    let mut p = Plan::default();
    if o.protect.is_empty() && o.monitor.is_empty() {
        return Err("enforcement needs at least one --protect PATH (a snapshot store)".into());
    }
    for t in DEFAULT_TRUSTED
        .iter()
        .map(PathBuf::from)
        .chain(o.trust.iter().cloned())
    {
        match std::fs::metadata(&t) {
            Ok(m) if m.is_file() => p.trusted.push((crate::paths::key_for(&t, &m), t)),
            Ok(_) => {
                return Err(format!(
                    "trusted executable {} is not a regular file",
                    t.display()
                ))
            }
            Err(_) if !o.trust.contains(&t) => {}
            Err(e) => return Err(format!("trusted executable {}: {e}", t.display())),
        }
    }
    if !p.trusted.iter().any(|(_, t)| {
        t.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("qemu"))
    }) {
        return Err("no QEMU executable is trusted: protecting images would block all of QEMU (install qemu or add --trust /path/to/qemu-img)".into());
    }
    let mode_bit = if o.monitor_only {
        0
    } else {
        deny::MODE_ENFORCE
    };
    let stores = o
        .protect
        .iter()
        .map(|p| (p, mode_bit))
        .chain(o.monitor.iter().map(|p| (p, 0)));
    for (path, mode_bit) in stores {
        let canon = std::fs::canonicalize(path)
            .map_err(|e| format!("--protect {}: {e}", path.display()))?;
        if NEVER_PROTECT.iter().any(|n| canon == Path::new(n)) {
            return Err(format!(
                "refusing to protect {}: it would block the package manager or the init system; protect the snapshot store itself",
                canon.display()
            ));
        }
        for (_, t) in &p.trusted {
            if t.starts_with(&canon) {
                return Err(format!(
                    "refusing to protect {}: it contains the trusted executable {}",
                    canon.display(),
                    t.display()
                ));
            }
        }
        let md = std::fs::metadata(&canon).map_err(|e| e.to_string())?;
        if md.is_dir() {
            p.protected.push((
                crate::paths::key_for(&canon, &md),
                (o.deny & deny::DIR_OPS) | mode_bit,
                canon.clone(),
            ));
            let rd = std::fs::read_dir(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_file() {
                        p.protected.push((
                            crate::paths::key_for(&e.path(), &m),
                            o.deny | mode_bit,
                            e.path(),
                        ));
                    }
                }
            }
        } else {
            p.protected.push((
                crate::paths::key_for(&canon, &md),
                o.deny | mode_bit,
                canon.clone(),
            ));
        }
    }
    if o.dry_run {
        p.notes
            .push("dry-run: decisions are reported, nothing is denied".into());
    }
    Ok(p)
}

/// The plan for these options, or none when enforcement is off.
pub fn plan_for(o: &Options) -> Result<Option<Plan>, String> {
    match o.mode {
        Mode::Off => Ok(None),
        _ => plan(o).map(Some).map_err(|e| format!("enforcement: {e}")),
    }
}

/// Is BPF LSM active? Mounts securityfs when it is missing (read-only information).
pub fn bpf_lsm_active() -> Result<bool, String> {
    let lsm = "/sys/kernel/security/lsm";
    if !Path::new(lsm).exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "securityfs", "securityfs", "/sys/kernel/security"])
            .status();
    }
    let list = std::fs::read_to_string(lsm).map_err(|e| format!("{lsm}: {e}"))?;
    Ok(list.trim().split(',').any(|m| m == "bpf"))
}

/// The alert for a kernel decision on a protected store.
pub fn decision_alert(ev: &Event) -> Option<Alert> {
    let denied = match ev.action.decision() {
        Some(Decision::Denied) => true,
        Some(Decision::WouldDeny) => false,
        Some(Decision::UnknownDeny | Decision::Responded | Decision::WouldRespond) | None => {
            return None
        }
    };
    let op = ev.detail_value(DetailKey::Operation).unwrap_or("?");
    let target = ev
        .file
        .as_ref()
        .and_then(|f| f.path.as_ref())
        .map(|p| p.display())
        .unwrap_or_else(|| "a protected file".into());
    let actor = ev.process.lineage();
    let exe = ev.process.executable.display();
    let message = if denied {
        format!("{actor} was denied {op} on {target}: {exe} is not a trusted executable")
    } else {
        format!("{actor} would have been denied {op} on {target} (monitor/dry-run): {exe} is not a trusted executable")
    };
    Some(Alert {
        rule_id: if denied { "SM-E001" } else { "SM-E002" }.into(),
        rule_name: if denied {
            "Tampering with a protected snapshot store blocked"
        } else {
            "Tampering with a protected snapshot store (not blocked: monitor mode)"
        }
        .into(),
        severity: if denied {
            Severity::High
        } else {
            Severity::Medium
        },
        technique: vec!["T1490".into()],
        message,
        event: ev.clone(),
        related_seq: vec![ev.seq],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(protect: &[&str]) -> Options {
        Options {
            mode: Mode::On,
            dry_run: false,
            monitor_only: false,
            protect: protect.iter().map(PathBuf::from).collect(),
            monitor: vec![],
            trust: vec![],
            deny: parse_ops("all").unwrap(),
            keep_enforcing: false,
        }
    }

    #[test]
    fn refuses_plans_that_would_break_the_host() {
        for p in ["/usr", "/etc", "/"] {
            let e = plan(&opts(&[p])).unwrap_err();
            assert!(
                e.contains("package manager") || e.contains("trusted executable"),
                "{p}: {e}"
            );
        }
        let e = plan(&opts(&["/usr/bin"])).unwrap_err();
        assert!(e.contains("contains the trusted executable"), "{e}");
        assert!(plan(&opts(&[])).unwrap_err().contains("--protect"));
    }

    #[test]
    fn protects_a_store_and_its_files_with_the_mode_bit() {
        let d = crate::testutil::TmpDir::new("enf");
        std::fs::write(d.join("a.qcow2"), b"x").unwrap();
        let p = plan(&opts(&[d.to_str().unwrap()])).unwrap();
        assert_eq!(p.protected.len(), 2);
        let dir = p
            .protected
            .iter()
            .find(|(_, _, path)| *path == d.0)
            .unwrap();
        assert_eq!(dir.1 & !deny::MODE_ENFORCE, deny::DIR_OPS);
        assert!(p
            .protected
            .iter()
            .all(|(_, m, _)| m & deny::MODE_ENFORCE != 0));
        assert!(p.trusted.iter().any(|(_, t)| t.ends_with("qemu-img")));
        let mut mon = opts(&[d.to_str().unwrap()]);
        mon.monitor_only = true;
        assert!(plan(&mon)
            .unwrap()
            .protected
            .iter()
            .all(|(_, m, _)| m & deny::MODE_ENFORCE == 0));
    }

    #[test]
    fn policy_section_drives_mode_unless_the_command_line_does() {
        use crate::config::{EnforceModeCfg, EnforceSection};
        let cfg = EnforceSection {
            mode: EnforceModeCfg::Monitor,
            protect: vec!["/srv/a".into()],
            ..Default::default()
        };
        let off = Options {
            mode: Mode::Off,
            protect: vec![],
            ..opts(&[])
        };
        let o = from_policy(&off, &cfg);
        assert_eq!((o.mode, o.monitor_only), (Mode::On, true));
        assert_eq!(o.protect, vec![PathBuf::from("/srv/a")]);
        assert_eq!(o.deny, parse_ops("all").unwrap());
        let cli = Options {
            protect: vec!["/srv/b".into()],
            ..opts(&[])
        };
        let o = from_policy(&cli, &cfg);
        assert!(!o.monitor_only);
        assert_eq!(
            o.protect,
            vec![PathBuf::from("/srv/b"), PathBuf::from("/srv/a")]
        );
    }

    #[test]
    fn stores_can_be_monitored_while_others_are_enforced() {
        let base = crate::testutil::TmpDir::new("enf-mixed");
        let (a, b) = (base.join("enforced"), base.join("monitored"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let mut o = opts(&[a.to_str().unwrap()]);
        o.monitor = vec![b.clone()];
        let p = plan(&o).unwrap();
        for (_, m, path) in &p.protected {
            let enforced = m & deny::MODE_ENFORCE != 0;
            assert_eq!(enforced, path.starts_with(&a), "{}", path.display());
        }
        assert_eq!(p.protected.len(), 2);
    }

    #[test]
    fn operation_lists_parse_and_reject_unknown_names() {
        assert_eq!(
            parse_ops("write,unlink").unwrap(),
            deny::WRITE | deny::UNLINK
        );
        assert!(parse_ops("write,explode").unwrap_err().contains("explode"));
    }
}
