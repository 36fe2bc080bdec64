//! The end-to-end suites, found on disk: each `tests/tests/*.rs` is one, so a new suite is one
//! new file and no edit here. A marker line in a suite's file says where it runs:
//! - `// xtask-suite: vm-only`: it needs what only the VM guests have (device-mapper, ZFS …);
//! - `// xtask-suite: host-only`: it tests userspace (sinks, transports, the log), not the
//!   kernel, so another kernel adds nothing and the guests skip it (`cargo xtask vm-test`
//!   still runs it when named with `--test`);
//! - `// xtask-suite: host-prefix=P`: its tests named `P…` run on the host only, the others in
//!   the VM guests only (enforcement: refusal here, enforcing where BPF LSM is);
//! - `// xtask-suite: systemd`: its guest tests run in the systemd guest (systemd as PID 1 on a
//!   debootstrap root), not in the chroot guests (the package: dpkg, systemctl);
//! - `// xtask-suite: newest-guest`: of the guests it runs in the newest kernel's only. The
//!   older guest (6.1, Debian 12's kernel) keeps the suites whose kernel side differs between
//!   the guests: the tracepoint fd walks (e2e, uring, loopdev, overlay: 6.1 has no
//!   `bpf_rdonly_cast`) and BPF LSM enforcement; what a suite adds on top of those (rules,
//!   device-mapper, ZFS, rename judgements, responses) is the same programs on the same
//!   hooks, so a second guest under TCG costs minutes of the CI budget and tests nothing new.

use std::path::Path;

use anyhow::Context as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    pub name: String,
    pub vm_only: bool,
    pub host_only: bool,
    pub host_prefix: Option<String>,
    pub systemd: bool,
    pub newest_guest: bool,
}

const MARKER: &str = "// xtask-suite:";

/// Every suite under `tests/tests`, sorted by name.
pub fn discover() -> anyhow::Result<Vec<Suite>> {
    discover_in(&crate::workspace().join("tests/tests"))
}

fn discover_in(dir: &Path) -> anyhow::Result<Vec<Suite>> {
    let mut v = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        let (Some(name), Some("rs")) = (
            p.file_stem().and_then(|s| s.to_str()),
            p.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        v.push(parse(name, &text).with_context(|| format!("{}", p.display()))?);
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn parse(name: &str, text: &str) -> anyhow::Result<Suite> {
    let mut s = Suite {
        name: name.to_string(),
        vm_only: false,
        host_only: false,
        host_prefix: None,
        systemd: false,
        newest_guest: false,
    };
    for m in text.lines().filter_map(|l| l.trim().strip_prefix(MARKER)) {
        match m.trim() {
            "vm-only" => s.vm_only = true,
            "host-only" => s.host_only = true,
            "systemd" => s.systemd = true,
            "newest-guest" => s.newest_guest = true,
            m => match m.strip_prefix("host-prefix=") {
                Some(p) if !p.is_empty() => s.host_prefix = Some(p.to_string()),
                _ => {
                    anyhow::bail!(
                        "unknown marker `{MARKER} {m}` (vm-only, host-only, host-prefix=P, systemd, newest-guest)"
                    )
                }
            },
        }
    }
    if s.host_only && (s.vm_only || s.host_prefix.is_some() || s.systemd || s.newest_guest) {
        anyhow::bail!(
            "`{MARKER} host-only` runs nowhere but the host: it cannot go with vm-only, host-prefix, systemd or newest-guest"
        );
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_decide_where_a_suite_runs() {
        let plain = parse("e2e", "//! doc\nfn x() {}\n").unwrap();
        assert!(!plain.vm_only && !plain.host_only && plain.host_prefix.is_none());
        let faults = parse("faults", "//! doc\n// xtask-suite: host-only\n").unwrap();
        assert!(faults.host_only && !faults.vm_only && !faults.systemd);
        assert!(parse("x", "// xtask-suite: host_only\n").is_err());
        assert!(parse("x", "// xtask-suite: host-only\n// xtask-suite: vm-only\n").is_err());
        assert!(
            parse("lvm", "//! doc\n// xtask-suite: vm-only\n")
                .unwrap()
                .vm_only
        );
        assert_eq!(
            parse("enforce", "// xtask-suite: host-prefix=host_\n")
                .unwrap()
                .host_prefix
                .as_deref(),
            Some("host_")
        );
        assert!(parse("x", "// xtask-suite: vm_only\n").is_err());
        let pkg = parse(
            "package",
            "// xtask-suite: systemd\n// xtask-suite: host-prefix=host_\n",
        )
        .unwrap();
        assert!(pkg.systemd && pkg.host_prefix.as_deref() == Some("host_") && !pkg.vm_only);
        let slow = parse("unblind", "//! doc\n// xtask-suite: newest-guest\n").unwrap();
        assert!(slow.newest_guest && !slow.host_only && !slow.vm_only);
        assert!(!plain.newest_guest);
        assert!(parse(
            "x",
            "// xtask-suite: host-only\n// xtask-suite: newest-guest\n"
        )
        .is_err());
    }

    #[test]
    fn every_suite_in_the_tree_is_found() {
        let all = discover().unwrap();
        let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
        for n in ["e2e", "rules", "lvm", "enforce", "zfs"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(all.iter().any(|s| s.vm_only));
        // The transport and output-format suites run on the host only.
        for n in ["crash", "faults", "nats", "syslog", "formats", "outputs"] {
            let s = all.iter().find(|s| s.name == n).unwrap();
            assert!(s.host_only, "{n} is not marked host-only");
        }
        // The fd-walk side doors and the broad suite run on the host and in every guest
        // (their kernel side is the tracepoint hooks, which differ between the 6.1 and 6.12
        // fd walks); enforcement runs in every guest (BPF LSM on Debian 12's kernel too).
        for n in ["e2e", "uring", "loopdev", "overlay"] {
            let s = all.iter().find(|s| s.name == n).unwrap();
            assert!(
                !s.host_only && !s.vm_only && !s.newest_guest && s.host_prefix.is_none(),
                "{n} does not run everywhere"
            );
        }
        let enforce = all.iter().find(|s| s.name == "enforce").unwrap();
        assert!(!enforce.newest_guest && !enforce.host_only);
        // The rest boot in the newest guest only.
        for n in [
            "unblind", "reload", "replace", "respond", "rules", "btrfs", "dm_rules", "lvm", "zfs",
        ] {
            let s = all.iter().find(|s| s.name == n).unwrap();
            assert!(
                s.newest_guest && !s.host_only,
                "{n} is not marked newest-guest"
            );
        }
    }
}
