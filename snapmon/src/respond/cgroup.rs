//! cgroup v2 freezing for `mode = "freeze"`: find the process's cgroup, refuse one that
//! would stop the host or a trusted tool, and write `cgroup.freeze`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FreezeError {
    #[error("no cgroup v2 hierarchy is mounted (cgroup.freeze needs one)")]
    NoHierarchy,
    #[error("the cgroup of pid {0} is unknown (exited, or not in cgroup v2)")]
    Unknown(u32),
    #[error("{0} is the root cgroup, which cannot be frozen")]
    Root(String),
    #[error("{cgroup} holds {what}")]
    Refused { cgroup: String, what: String },
    #[error("writing {path}: {msg}")]
    Write { path: String, msg: String },
}

/// The cgroup v2 mount.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mount: PathBuf,
}

impl Hierarchy {
    /// The first `cgroup2` mount in this process's mount table (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on hybrid hosts).
    pub fn find() -> Result<Hierarchy, FreezeError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_mountinfo(&text).ok_or(FreezeError::NoHierarchy)
    }

    fn from_mountinfo(text: &str) -> Option<Hierarchy> {
        text.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mp = pre.split(' ').nth(4)?;
            Some(Hierarchy {
                mount: PathBuf::from(mp.replace("\\040", " ")),
            })
        })
    }

    /// `pid`'s cgroup v2 path relative to the hierarchy (`/user.slice/…`).
    pub fn cgroup_of(pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_string)
    }

    fn dir(&self, cg: &str) -> PathBuf {
        self.mount.join(cg.trim_start_matches('/'))
    }

    /// Freeze `pid`'s cgroup (and so its subtree). Refused for the root cgroup, one that
    /// holds the agent or init, or any process `trusted` says must not stop.
    pub fn freeze(
        &self,
        pid: u32,
        trusted: &dyn Fn(u32) -> Option<String>,
    ) -> Result<String, FreezeError> {
        let cg = Self::cgroup_of(pid).ok_or(FreezeError::Unknown(pid))?;
        if cg == "/" || cg.is_empty() {
            return Err(FreezeError::Root(cg));
        }
        let inside = |other: u32| {
            Self::cgroup_of(other).is_some_and(|o| {
                o == cg || o.starts_with(&format!("{}/", cg.trim_end_matches('/')))
            })
        };
        if inside(std::process::id()) {
            return Err(FreezeError::Refused {
                cgroup: cg,
                what: "the agent itself".into(),
            });
        }
        if inside(1) {
            return Err(FreezeError::Refused {
                cgroup: cg,
                what: "init (pid 1)".into(),
            });
        }
        let dir = self.dir(&cg);
        for p in procs(&dir) {
            if let Some(what) = trusted(p) {
                return Err(FreezeError::Refused {
                    cgroup: cg,
                    what: format!("the trusted {what} (pid {p})"),
                });
            }
        }
        let f = dir.join("cgroup.freeze");
        std::fs::write(&f, b"1").map_err(|e| FreezeError::Write {
            path: f.display().to_string(),
            msg: e.to_string(),
        })?;
        Ok(cg)
    }

    /// `cgroup.events` says the cgroup is frozen.
    pub fn is_frozen(&self, cg: &str) -> bool {
        std::fs::read_to_string(self.dir(cg).join("cgroup.events"))
            .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
    }
}

/// Every pid in the cgroup at `dir` and below (bounded).
fn procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if out.len() > 65536 || todo.len() > 4096 {
            break;
        }
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            todo.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(unified).unwrap().mount,
            PathBuf::from("/sys/fs/cgroup")
        );
        let hybrid = "30 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                      31 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Hierarchy::from_mountinfo(hybrid).unwrap().mount,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        assert!(Hierarchy::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/sda rw\n").is_none());
    }

    #[test]
    fn refuses_the_agents_own_cgroup() {
        let Ok(h) = Hierarchy::find() else { return };
        let e = h.freeze(std::process::id(), &|_| None).unwrap_err();
        assert!(
            matches!(e, FreezeError::Root(_) | FreezeError::Refused { .. }),
            "{e}"
        );
    }
}
