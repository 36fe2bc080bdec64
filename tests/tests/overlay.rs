//! End-to-end: issue #14's overlayfs side door. A store that is the upper dir of an overlay
//! mounted elsewhere is written through the merged view: the syscall hooks see the overlay's
//! inode (another `st_dev`) and the real write happens inside the kernel. The agent must
//! judge such writes as writes to the real image: zeroing nb_snapshots through the merged
//! view is SM-Q002 naming the image, whether the overlay was mounted before the agent
//! started or after. The benign mirror: the trusted `qemu-img` making a snapshot through
//! the merged view raises nothing at medium or above. And the unprivileged variant: nobody,
//! in a user namespace of its own, mounts an overlay whose upper dir is a 1777 store.
//!
//! Every overlay mounted is unmounted in a Drop guard.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{
    agent, image_with_3_snapshots, loud, python, run, Agent, Expect, Severity, SETPRIV,
};

const WITHIN: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(800);

/// Unmounts its overlay when dropped (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// An overlay's directories: `store` is its upper dir (the watched store).
struct Layout {
    store: PathBuf,
    lower: PathBuf,
    work: PathBuf,
    merged: PathBuf,
}

fn layout(base: &Path) -> Layout {
    let l = Layout {
        store: base.join("store"),
        lower: base.join("lower"),
        work: base.join("work"),
        merged: base.join("merged"),
    };
    for d in [&l.store, &l.lower, &l.work, &l.merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    l
}

fn mount(l: &Layout) -> Mounted {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lower.display(),
        l.store.display(),
        l.work.display()
    );
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            l.merged.to_str().unwrap(),
        ],
    );
    Mounted(l.merged.clone())
}

fn dir(name: &str) -> PathBuf {
    let d = agent().dir("overlay").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Wait until the agent has handled the setup.
fn settled(a: &mut Agent) {
    a.settle(Duration::from_millis(300), |_| false);
}

/// A store under the shared agent's root with `images` (three snapshots each), and its
/// overlay mounted: each step once the agent has handled the one before.
fn overlay_store(name: &str, images: &[&str]) -> (Layout, Vec<PathBuf>, Mounted) {
    let l = layout(&dir(name));
    let imgs = images
        .iter()
        .map(|n| image_with_3_snapshots(&l.store, n))
        .collect();
    settled(&mut agent());
    let m = mount(&l);
    settled(&mut agent());
    (l, imgs, m)
}

/// Root's python zeroes nb_snapshots of `path` (a merged-view path). Returns (pid, mark).
fn zero_through(a: &Agent, path: &Path) -> (u32, u64) {
    let mark = a.mark();
    let r = python(&format!(
        "import os; fd=os.open({:?}, os.O_RDWR); os.pwrite(fd, bytes(4), 60); os.fsync(fd)",
        path.to_str().unwrap()
    ));
    (r.pid, mark)
}

/// The SM-Q002 alert, medium or above, for `pid`'s write through the view at `merged`: it
/// names the real image `img`, and the view it went through.
fn hidden_via(a: &mut Agent, mark: u64, pid: u32, img: &Path, merged: &Path) -> Value {
    a.expect(
        Expect::alert("SM-Q002")
            .pid(pid)
            .path(img)
            .detail("overlay_path", merged.to_str().unwrap())
            .severity_at_least(Severity::Medium)
            .since(mark),
        WITHIN,
    )
}

/// Root's python zeroes nb_snapshots through `merged`: the SM-Q002 alert about `img`.
fn hide_through(a: &mut Agent, img: &Path, merged: &Path) -> Value {
    let (pid, mark) = zero_through(a, merged);
    hidden_via(a, mark, pid, img, merged)
}

/// Stopped before the shared agent's binary exits: the harness checks it at exit.
#[test]
fn an_overlay_mounted_before_the_start_over_a_store_is_watched_through_its_merged_view() {
    let base = std::env::temp_dir().join(format!("snapmon-e2e-ovl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let l = layout(&base);
    let img = image_with_3_snapshots(&l.store, "pre.qcow2");
    let _m = mount(&l);
    let mut a = Agent::spawn("ovlpre", &[], std::slice::from_ref(&l.store)).expect("agent");
    hide_through(&mut a, &img, &l.merged.join("pre.qcow2"));
    assert!(a.stop(Duration::from_secs(10)), "the agent did not stop");
    drop(_m);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn an_overlay_mounted_after_the_start_over_a_store_is_watched_through_its_merged_view() {
    let (l, imgs, _m) = overlay_store("after", &["vm.qcow2"]);
    let img = &imgs[0];
    let mut a = agent();
    hide_through(&mut a, img, &l.merged.join("vm.qcow2"));
}

/// The mount table trails the mount: an image made through the view before the agent saw the
/// overlay leaves no record (its create hits an overlay inode with no alias yet). Held still
/// (SIGSTOP) across mount and create, the agent must find the image below the upper dir when
/// it reads the mount table, with its snapshots as they were, and judge the tamper that comes.
#[test]
fn an_image_made_through_a_view_before_the_agent_saw_the_mount_is_found() {
    let l = layout(&dir("unseen"));
    image_with_3_snapshots(&l.store, "vm.qcow2");
    let mut a = agent();
    settled(&mut a);
    let made = l.merged.join("early.qcow2");
    let resume = a.hold();
    let m = mount(&l);
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", made.to_str().unwrap(), "16M"],
    );
    for sn in ["s1", "s2"] {
        run("qemu-img", &["snapshot", "-c", sn, made.to_str().unwrap()]);
    }
    drop(resume);
    settled(&mut a);
    hide_through(&mut a, &l.store.join("early.qcow2"), &made);
    drop(a);
    drop(m);
}

/// The ordinary order: the agent has the overlay's aliases before the image is made.
#[test]
fn an_image_made_through_a_merged_view_mounted_after_the_start_is_watched() {
    let (l, _imgs, _m) = overlay_store("made", &["vm.qcow2"]);
    let made = l.merged.join("new.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", made.to_str().unwrap(), "16M"],
    );
    for sn in ["s1", "s2"] {
        run("qemu-img", &["snapshot", "-c", sn, made.to_str().unwrap()]);
    }
    let mut a = agent();
    settled(&mut a);
    hide_through(&mut a, &l.store.join("new.qcow2"), &made);
    // So is one made in a directory made through the view.
    drop(a);
    let deep = l.merged.join("sub").join("deep.qcow2");
    std::fs::create_dir(l.merged.join("sub")).unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", deep.to_str().unwrap(), "16M"],
    );
    run(
        "qemu-img",
        &["snapshot", "-c", "s1", deep.to_str().unwrap()],
    );
    let mut a = agent();
    settled(&mut a);
    hide_through(&mut a, &l.store.join("sub").join("deep.qcow2"), &deep);
    // Unmounted: the aliases go (a new mount of the same dirs is a new overlay).
    drop(a);
    drop(_m);
}

/// An image made through the view with the inode number of an image deleted a moment ago
/// (a small ext4 hands a freed number to the next file): the kernel first takes the new
/// file by that number, as it would a foreign overlay's; it is still the new image, through
/// this view. Before, the agent dropped its create as a foreign file's and its writes came
/// without a name (seen in the 6.12 guest, whose /tmp is ext4).
#[test]
fn an_image_made_through_a_view_with_a_freed_images_inode_number_is_watched() {
    // The alias bookkeeping is the agent's, the same on every kernel; the guests keep the
    // 'made' test above, which took this path there, and are spared one more agent start
    // (a minute under TCG, against the CI budget).
    if std::env::var("SNAPMON_E2E_LVM").as_deref() == Ok("1") {
        snapmon_e2e::note("skipped in the guests: its own agent start; run on the host");
        return;
    }
    let base = std::env::temp_dir().join(format!("snapmon-e2e-reborn-{}", std::process::id()));
    let fs = base.join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    let img = base.join("fs.img");
    run("truncate", &["-s", "32M", img.to_str().unwrap()]);
    run(
        "mkfs.ext4",
        &["-q", "-F", "-N", "64", img.to_str().unwrap()],
    );
    run(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), fs.to_str().unwrap()],
    );
    let _fs = Mounted(fs.clone());
    let l = layout(&fs);
    let gone = image_with_3_snapshots(&l.store, "gone.qcow2");
    let ino = std::fs::metadata(&gone).unwrap().ino();
    let _m = mount(&l);
    let mut a = Agent::spawn("reborn", &[], std::slice::from_ref(&l.store)).unwrap();
    std::fs::remove_file(l.merged.join("gone.qcow2")).unwrap();
    settled(&mut a);
    let name = (0..64)
        .map(|i| format!("new-{i}.qcow2"))
        .find(|n| {
            let f = std::fs::File::create(l.merged.join(n)).unwrap();
            f.metadata().unwrap().ino() == ino
        })
        .unwrap_or_else(|| panic!("inode {ino} not reused in 64 files"));
    let made = l.merged.join(&name);
    let m = made.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", m, "16M"]);
    for sn in ["s1", "s2"] {
        run("qemu-img", &["snapshot", "-c", sn, m]);
    }
    settled(&mut a);
    hide_through(&mut a, &l.store.join(&name), &made);
    drop(a);
    drop(_m);
    drop(_fs);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn an_image_deleted_or_renamed_through_the_merged_view_is_reported_as_the_stores() {
    let (l, imgs, _m) = overlay_store("names", &["del.qcow2", "mv.qcow2"]);
    let (del, mv) = (&imgs[0], &imgs[1]);
    let mark = agent().mark();
    let p = |n: &str| l.merged.join(n).to_str().unwrap().to_string();
    let r = python(&format!(
        "import os; os.unlink({:?}); os.rename({:?}, {:?})",
        p("del.qcow2"),
        p("mv.qcow2"),
        p("moved.qcow2")
    ));
    let mut a = agent();
    // Reported on the store's images.
    a.expect(
        Expect::event("unlink").pid(r.pid).path(del).since(mark),
        WITHIN,
    );
    let moved = a.expect(
        Expect::event("rename").pid(r.pid).path(mv).since(mark),
        WITHIN,
    );
    assert_eq!(
        snapmon_e2e::dest(&moved),
        Some(l.store.join("moved.qcow2").to_str().unwrap()),
        "{moved}"
    );
}

#[test]
fn trusted_qemu_img_through_the_merged_view_raises_nothing_loud() {
    let (l, imgs, _m) = overlay_store("benign", &["vm.qcow2"]);
    let img = &imgs[0];
    let mark = agent().mark();
    let through = l.merged.join("vm.qcow2");
    run(
        "qemu-img",
        &["snapshot", "-c", "s4", through.to_str().unwrap()],
    );
    let mut a = agent();
    a.settle(QUIET, |_| false);
    let seen: Vec<Value> = a
        .since(mark)
        .into_iter()
        .filter(|v| v["file"]["path"].as_str() == Some(img.to_str().unwrap()))
        .collect();
    let alerts: Vec<Value> = seen
        .iter()
        .filter(|v| v["event"]["kind"] == "alert")
        .cloned()
        .collect();
    let loud = loud(&alerts);
    assert!(
        loud.is_empty(),
        "trusted qemu-img through the merged view alerted:\n{}",
        loud.join("\n")
    );
    // Not vacuous: qemu-img's header write through the view was judged as the image's.
    assert!(
        seen.iter().any(|v| {
            v["event"]["kind"] == "event"
                && v["snapmon"]["detail"]["overlay_path"].as_str() == Some(through.to_str().unwrap())
                && v.to_string().contains("nb_snapshots")
        }),
        "qemu-img's nb_snapshots write through the merged view was not judged as the image's ({} records)",
        seen.len()
    );
}

/// Nobody may mount an overlay in a user namespace of its own (unprivileged overlayfs,
/// 5.11+), with a 1777 store as its upper dir, and write a root-owned 0666 image through it.
#[test]
fn nobody_in_a_user_namespace_writing_through_its_own_overlay_over_a_store_alerts() {
    let base = dir("userns");
    let store = base.join("store");
    let own = base.join("nobody");
    for d in [&store, &own] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o1777)).unwrap();
    run("chown", &["nobody:nogroup", own.to_str().unwrap()]);
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut a = agent();
    settled(&mut a);
    let mark = a.mark();
    drop(a);
    let (l, w, m) = (own.join("lower"), own.join("work"), own.join("merged"));
    let script = format!(
        "mkdir -p {l} {w} {m} && mount -t overlay overlay -o lowerdir={l},upperdir={s},workdir={w} {m} \
         && exec /usr/bin/python3 -c 'import os; fd=os.open(\"{m}/vm.qcow2\", os.O_RDWR); print(os.getpid(), flush=True); os.pwrite(fd, bytes(4), 60)'",
        l = l.display(),
        w = w.display(),
        m = m.display(),
        s = store.display()
    );
    let out = Command::new("setpriv")
        .args(SETPRIV)
        .args(["unshare", "-Urm", "/bin/sh", "-c", &script])
        .output()
        .expect("setpriv");
    if !out.status.success() {
        snapmon_e2e::note(&format!(
            "skipped: this kernel refuses nobody an overlay in a user namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return;
    }
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("python's pid");
    // The kernel let it through: the image's header is zeroed.
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[60..64], &[0, 0, 0, 0], "the write did not land");
    let mut a = agent();
    let hide = hidden_via(&mut a, mark, pid, &img, &m.join("vm.qcow2"));
    // `?` when the writer was gone before the agent could read its mount table.
    snapmon_e2e::note(&format!(
        "nobody's overlay, in its own mount namespace: overlay_mount {}",
        hide["snapmon"]["detail"]["overlay_mount"]
    ));
}

/// The lower side: an overlay whose lower layer is a store and whose upper dir is not. A
/// write through the merged view copies the image up and changes the copy: the image is
/// untouched, and nothing is reported about it.
#[test]
fn a_write_through_an_overlay_whose_lower_layer_is_a_store_raises_nothing_about_the_image() {
    let base = dir("lower");
    let store = base.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let img = image_with_3_snapshots(&store, "vm.qcow2");
    let before = std::fs::read(&img).unwrap();
    // Upper and work dirs outside every store (and on the same filesystem as the store).
    let outside = std::env::temp_dir().join(format!("snapmon-e2e-ovl-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outside);
    let l = Layout {
        store: outside.join("upper"),
        lower: store.clone(),
        work: outside.join("work"),
        merged: outside.join("merged"),
    };
    for d in [&l.store, &l.work, &l.merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut a = agent();
    settled(&mut a);
    drop(a);
    let m = mount(&l);
    let mut a = agent();
    settled(&mut a);
    let (pid, mark) = zero_through(&a, &l.merged.join("vm.qcow2"));
    a.settle(QUIET, |_| false);
    let about: Vec<Value> = a
        .since(mark)
        .into_iter()
        .filter(|v| {
            v["file"]["path"].as_str() == Some(img.to_str().unwrap()) && v["process"]["pid"] == pid
        })
        .collect();
    drop(a);
    drop(m);
    assert_eq!(std::fs::read(&img).unwrap(), before, "the image changed");
    assert!(
        about.is_empty(),
        "the copy-up's write was reported as the image's:\n{}",
        snapmon_e2e::brief(&about)
    );
    let _ = std::fs::remove_dir_all(&outside);
}
