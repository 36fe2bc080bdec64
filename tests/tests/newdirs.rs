//! End-to-end: issue #14's leftover, directories made at runtime. The namespace hooks report
//! a mkdir at syscall entry and the agent watches the new directory only once it sees the
//! name land; until then the kernel filter does not know it. Operations inside it named by a
//! dirfd on it, or relative to a cwd in it, must still be reported: the filter judges such a
//! base by its nearest registered ancestor. The agent is stopped (SIGSTOP) across the whole
//! sequence, so the window is as wide as it can be, not left to the scheduler.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use serde_json::Value;
use snapmon_e2e::{action, agent, dest, nobody_py, run, Agent, Expect};

const N: usize = 12;
const QUIET: Duration = Duration::from_millis(800);

/// Sends SIGCONT to a stopped agent when dropped (also when the test fails).
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

fn settled(a: &mut Agent) {
    a.settle(Duration::from_millis(300), |_| false);
}

/// The record of `act` by `pid` about `path` (its file, or with `to` its destination).
fn find<'a>(evs: &'a [Value], act: &str, pid: u32, path: &Path, to: Option<&Path>) -> &'a Value {
    let p = path.to_str().unwrap();
    evs.iter()
        .find(|v| {
            action(v) == act
                && v["process"]["pid"] == pid
                && v["file"]["path"] == p
                && to.is_none_or(|t| dest(v) == t.to_str())
        })
        .unwrap_or_else(|| {
            let mine: Vec<String> = evs
                .iter()
                .filter(|v| v["process"]["pid"] == pid)
                .map(|v| format!("{} {} → {:?}", action(v), v["file"]["path"], dest(v)))
                .collect();
            panic!(
                "no {act} of {p} by {pid} (to {to:?}); its records:\n{}",
                mine.join("\n")
            )
        })
}

/// nobody, in a 1777 store, N times without a pause: mkdir d; mv img d/; then inside d, by
/// a dirfd on it, renameat, linkat, mkdirat and unlinkat; and from a cwd in it, unlink.
#[test]
fn ops_in_a_directory_made_a_moment_ago_are_reported() {
    let store = agent().dir("newdirs");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o1777)).unwrap();
    for i in 0..N {
        let img = store.join(format!("img{i}.qcow2"));
        let s = img.to_str().unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
        run("chown", &["nobody", s]);
    }
    let mut a = agent();
    settled(&mut a);
    a.signal(libc::SIGSTOP);
    let resume = Resume(a.pid());
    let r = nobody_py(&format!(
        "import os\n\
         os.chdir({store:?})\n\
         for i in range({N}):\n\
         \x20   d = f'd{{i}}'\n\
         \x20   os.mkdir(d)\n\
         \x20   os.rename(f'img{{i}}.qcow2', f'{{d}}/img{{i}}.qcow2')\n\
         \x20   fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n\
         \x20   os.rename(f'img{{i}}.qcow2', f'x{{i}}.qcow2', src_dir_fd=fd, dst_dir_fd=fd)\n\
         \x20   os.link(f'x{{i}}.qcow2', f'l{{i}}.qcow2', src_dir_fd=fd, dst_dir_fd=fd)\n\
         \x20   os.mkdir('sub', dir_fd=fd)\n\
         \x20   os.unlink(f'x{{i}}.qcow2', dir_fd=fd)\n\
         \x20   os.close(fd)\n\
         \x20   os.chdir(d)\n\
         \x20   os.unlink(f'l{{i}}.qcow2')\n\
         \x20   os.chdir('..')\n",
        store = store.to_str().unwrap()
    ));
    drop(resume);
    // The last mkdir, made from the store (so seen by any agent), then what followed it.
    let last = store.join(format!("d{}", N - 1));
    a.expect(
        Expect::event("mkdir").pid(r.pid).path(&last),
        Duration::from_secs(10),
    );
    a.settle(QUIET, |_| false);
    let evs: Vec<Value> = a
        .records()
        .into_iter()
        .filter(|v| v["process"]["pid"] == r.pid)
        .collect();
    drop(a);
    for i in 0..N {
        let d = store.join(format!("d{i}"));
        let (img, x, l) = (
            d.join(format!("img{i}.qcow2")),
            d.join(format!("x{i}.qcow2")),
            d.join(format!("l{i}.qcow2")),
        );
        find(&evs, "mkdir", r.pid, &d, None);
        find(
            &evs,
            "rename",
            r.pid,
            &store.join(format!("img{i}.qcow2")),
            Some(&img),
        );
        // By the dirfd on the new directory.
        find(&evs, "rename", r.pid, &img, Some(&x));
        find(&evs, "link", r.pid, &x, Some(&l));
        find(&evs, "mkdir", r.pid, &d.join("sub"), None);
        find(&evs, "unlink", r.pid, &x, None);
        // From a cwd in it.
        find(&evs, "unlink", r.pid, &l, None);
    }
}
