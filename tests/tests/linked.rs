//! Namespace operations that reach a store through another name of it (#14, side doors): a
//! symlink to the store, a bind mount of it. The kernel's path filter matched no watched
//! prefix there, so a mass rename to `.locked` or a snapshot XML removed that way went
//! unheard on the tracepoint backend. Now the last component is matched against the watched
//! names (`WATCHED_LEAVES`) and the agent resolves the directory by identity. The guests' LSM
//! hooks see these operations by the directory's identity already; this suite is the
//! syscall route's.
// xtask-suite: host-only

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{loud, nobody_py, open_store, run, Agent, Expect, WithLibvirtd};

const SOON: Duration = Duration::from_secs(5);

/// One agent for the suite, on the default policy with a copy of python3 in the `libvirt`
/// group (the trusted side of the benign tests).
fn suite() -> std::sync::MutexGuard<'static, WithLibvirtd> {
    snapmon_e2e::with_libvirtd("linked")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh path in /tmp (sticky, as any user's scratch place is) for a link to a store.
fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("snapmon-linked-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A libvirt snapshot XML of domain `dom` under the agent's root, its directory watched.
fn snapshot_xml(a: &mut Agent, dom: &str, name: &str) -> PathBuf {
    let d = a
        .root
        .join("libvirt/home/.config/libvirt/qemu/snapshot")
        .join(dom);
    let me = std::process::id();
    let mark = a.mark();
    std::fs::create_dir_all(&d).unwrap();
    a.expect(Expect::event("mkdir").pid(me).path(&d).since(mark), SOON);
    // A new directory is watched once its mkdir landed, at the latest when the agent handles
    // a later record: this one's.
    let sync = a.root.join(format!("made-{dom}"));
    let mark = a.mark();
    std::fs::write(&sync, b"").unwrap();
    a.expect(Expect::any_event().pid(me).path(&sync).since(mark), SOON);
    let xml = d.join(format!("{name}.xml"));
    let mark = a.mark();
    std::fs::write(
        &xml,
        format!("<domainsnapshot><name>{name}</name></domainsnapshot>\n"),
    )
    .unwrap();
    a.expect(Expect::any_event().pid(me).path(&xml).since(mark), SOON);
    xml
}

/// The path as the process gave it, beside the store's name (empty when absent).
fn link_path(v: &Value) -> &str {
    v["snapmon"]["detail"]["link_path"].as_str().unwrap_or("")
}

fn alerts_about(a: &mut Agent, mark: u64, p: &Path) -> Vec<Value> {
    a.settle(Duration::from_millis(500), |_| false);
    a.since(mark)
        .into_iter()
        .filter(|v| v["event"]["kind"] == "alert")
        .filter(|v| {
            v["file"]["path"].as_str() == p.to_str()
                || v["snapmon"]["destination"]["path"].as_str() == p.to_str()
        })
        .collect()
}

/// The finding: `nobody` renamed five of its images in a 1777 store to `.locked` through a
/// symlink it made in /tmp, and nothing was reported.
#[test]
fn nobody_renaming_images_through_a_symlink_to_the_store_is_a_mass_rename() {
    let mut t = suite();
    let store = open_store(&t.agent);
    let imgs: Vec<PathBuf> = (0..5)
        .map(|i| {
            let p = store.join(format!("locked-{i}.qcow2"));
            run("qemu-img", &["create", "-q", "-f", "qcow2", s(&p), "1M"]);
            run("chown", &["nobody:nogroup", s(&p)]);
            p
        })
        .collect();
    let via = scratch("via");
    let names: Vec<&str> = imgs
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    let mark = t.agent.mark();
    let r = nobody_py(&format!(
        "import os\nos.symlink({store:?}, {via:?})\n\
         for n in {names:?}: os.rename({via:?} + '/' + n, {via:?} + '/' + n + '.locked')\n\
         os.unlink({via:?})",
        store = s(&store),
        via = s(&via),
    ));
    let alert = t
        .agent
        .expect(Expect::alert("SM-R001").pid(r.pid).since(mark), SOON);
    // Named by the store's names, with the path as given kept beside.
    let file = alert["file"]["path"].as_str().unwrap_or("");
    assert!(
        file.starts_with(s(&store)) && file.ends_with(".qcow2"),
        "the alert names {file}, not a store image: {alert}"
    );
    let given = link_path(&alert);
    assert!(given.starts_with(s(&via)), "link_path {given:?}: {alert}");
    // Every rename is there, by the store's names.
    for p in &imgs {
        t.agent
            .expect(Expect::event("rename").pid(r.pid).path(p).since(mark), SOON);
    }
}

/// Root removes a snapshot's libvirt XML through a bind mount of its directory: SM-M001,
/// as by its own name.
#[test]
fn root_removing_snapshot_metadata_through_a_bind_mount_is_caught() {
    let mut t = suite();
    let xml = snapshot_xml(&mut t.agent, "dom-bind", "s1");
    let bind = scratch("bind");
    std::fs::create_dir_all(&bind).unwrap();
    run("mount", &["--bind", s(xml.parent().unwrap()), s(&bind)]);
    let mark = t.agent.mark();
    let rm = Command::new("rm")
        .arg(bind.join("s1.xml"))
        .status()
        .unwrap();
    let _ = Command::new("umount").arg(&bind).status();
    let _ = std::fs::remove_dir(&bind);
    assert!(rm.success());
    let a = t
        .agent
        .expect(Expect::alert("SM-M001").path(&xml).since(mark), SOON);
    assert_eq!(
        a["snapmon"]["detail"]["link_path"],
        s(&bind.join("s1.xml")),
        "{a}"
    );
}

/// `exe` writes `s2.xml.new` and renames it over a snapshot XML of `dom` through a symlink
/// to its directory, then the symlink goes. With `held`, the agent is stopped (SIGSTOP)
/// across all of it, so it handles every record after the symlink is gone: the order a busy
/// agent met about 1 run in 6. Returns the XML, the symlink, the writer's pid and the mark.
fn replace_through_link(
    t: &mut WithLibvirtd,
    exe: &str,
    dom: &str,
    held: bool,
) -> (PathBuf, PathBuf, u32, u64) {
    let xml = snapshot_xml(&mut t.agent, dom, "s2");
    let via = scratch(dom);
    std::os::unix::fs::symlink(xml.parent().unwrap(), &via).unwrap();
    let mark = t.agent.mark();
    let resume = held.then(|| t.agent.hold());
    let r = run(
        exe,
        &[
            "-c",
            &format!(
                "import os\n\
                 x = {x:?}\n\
                 fd = os.open(x + '.new', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n\
                 os.write(fd, b'<domainsnapshot><name>s2</name><description>y</description></domainsnapshot>\\n')\n\
                 os.fsync(fd); os.close(fd); os.rename(x + '.new', x)",
                x = s(&via.join("s2.xml"))
            ),
        ],
    );
    let _ = std::fs::remove_file(&via);
    drop(resume);
    (xml, via, r.pid, mark)
}

/// The benign mirror: libvirt writing `s2.xml.new` and renaming it over its XML, through a
/// symlink to its snapshot directory, is seen (as the store's names) and raises nothing at
/// medium or above, also when the agent handles it after the symlink is gone.
#[test]
fn libvirt_replacing_its_xml_through_a_symlinked_directory_raises_nothing() {
    let mut t = suite();
    for (dom, held) in [("dom-link", false), ("dom-link-held", true)] {
        let helper = t.libvirtd.clone();
        let (xml, via, pid, mark) = replace_through_link(&mut t, s(&helper), dom, held);
        let ev = t.agent.expect(
            Expect::event("rename").pid(pid).path(&xml).since(mark),
            SOON,
        );
        assert!(link_path(&ev).contains(s(&via)), "held {held}: {ev}");
        let got = alerts_about(&mut t.agent, mark, &xml);
        assert!(loud(&got).is_empty(), "held {held}: {:#?}", loud(&got));
    }
}

/// The same replace by a program outside the libvirt group, the agent held until the
/// symlink is gone: the target's old file no longer has its name, so that name places the
/// rename in the store, and the replace is SM-M001. Before, the rename was dropped as
/// outside every store.
#[test]
fn an_untrusted_replace_through_a_symlink_gone_before_the_agent_looked_is_caught() {
    let mut t = suite();
    let (xml, via, pid, mark) = replace_through_link(&mut t, "/usr/bin/python3", "dom-gone", true);
    let a = t.agent.expect(
        Expect::alert("SM-M001").pid(pid).path(&xml).since(mark),
        SOON,
    );
    assert!(link_path(&a).contains(s(&via)), "{a}");
}

/// A file merely named like a watched image, elsewhere, is not the image: its removal is
/// not reported, and the image stays watched.
#[test]
fn a_file_named_like_an_image_elsewhere_is_not_reported() {
    let mut t = suite();
    let store = open_store(&t.agent);
    let img = store.join("twin.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "1M"]);
    let other = scratch("twin-dir");
    let mark = t.agent.mark();
    let r = nobody_py(&format!(
        "import os\nos.mkdir({d:?})\nopen({d:?} + '/twin.qcow2', 'w').write('x')\n\
         os.unlink({d:?} + '/twin.qcow2')\nos.rmdir({d:?})",
        d = s(&other)
    ));
    t.agent.settle(Duration::from_millis(500), |_| false);
    let said: Vec<Value> = t
        .agent
        .since(mark)
        .into_iter()
        .filter(|v| v["process"]["pid"] == r.pid)
        .collect();
    assert!(said.is_empty(), "{said:#?}");
    // The image is still the image: root hiding its (no) snapshots is still judged.
    let mark = t.agent.mark();
    let w = snapmon_e2e::python(&format!(
        "import os; fd = os.open({:?}, os.O_RDWR); os.pwrite(fd, b'QFI\\xfa', 0)",
        s(&img)
    ));
    t.agent.expect(
        Expect::alert("SM-Q005").pid(w.pid).path(&img).since(mark),
        SOON,
    );
}

/// `nobody` plants a hidden entry in the store through a symlink it makes in /tmp and removes
/// at once (T1564): `how` is `create` (a dot-file), `rename` (one from /tmp renamed in) or
/// `mkdir` (a dot-directory). It must be SM-H001 on the store's name.
fn plant_through_a_symlink(t: &mut WithLibvirtd, how: &str) {
    let store = open_store(&t.agent);
    let via = scratch(&format!("hide-{how}"));
    let outside = scratch(&format!("hide-{how}-src"));
    let leaf = format!(".{how}-{}", std::process::id());
    let body = match how {
        "create" => "open(v + '/' + n, 'w').write('x')",
        "rename" => "open(o, 'w').write('x'); os.rename(o, v + '/' + n)",
        _ => "os.mkdir(v + '/' + n)",
    };
    let mark = t.agent.mark();
    let r = nobody_py(&format!(
        "import os\nv = {v:?}\no = {o:?}\nn = {leaf:?}\nos.symlink({store:?}, v)\n{body}\nos.unlink(v)",
        v = s(&via),
        o = s(&outside),
        store = s(&store),
    ));
    t.agent.expect(
        Expect::alert("SM-H001")
            .pid(r.pid)
            .path(store.join(&leaf))
            .since(mark),
        SOON,
    );
}

/// A dot-file created through a symlink to the store: the open hook judges a create by its
/// directory's identity, whatever name reached it.
#[test]
fn nobody_creating_a_hidden_file_through_a_symlink_is_caught() {
    plant_through_a_symlink(&mut suite(), "create");
}

/// Renamed in, or made as a directory, through a symlink: the syscall route judges the
/// rename's and mkdir's paths at entry by prefix or by a watched last component, and a new
/// hidden name is neither. The fanotify marks on the store's directories see both (as the
/// guests' LSM hooks do, by the directory's identity).
#[test]
fn nobody_renaming_or_mkdiring_a_hidden_entry_through_a_symlink_is_caught() {
    let mut t = suite();
    plant_through_a_symlink(&mut t, "rename");
    plant_through_a_symlink(&mut t, "mkdir");
}

/// Root's untrusted python makes a hidden directory in the store through a bind mount of it:
/// SM-H001 on the store's name, by the fanotify route.
#[test]
fn a_hidden_directory_made_through_a_bind_mount_of_the_store_is_caught() {
    let mut t = suite();
    let store = open_store(&t.agent);
    let bind = scratch("bind-mkdir");
    std::fs::create_dir_all(&bind).unwrap();
    run("mount", &["--bind", s(&store), s(&bind)]);
    let leaf = format!(".bind-mkdir-{}", std::process::id());
    let mark = t.agent.mark();
    let r = snapmon_e2e::python(&format!("import os; os.mkdir({:?})", s(&bind.join(&leaf))));
    let _ = Command::new("umount").arg(&bind).status();
    let _ = std::fs::remove_dir(&bind);
    let a = t.agent.expect(
        Expect::alert("SM-H001")
            .pid(r.pid)
            .path(store.join(&leaf))
            .since(mark),
        SOON,
    );
    assert_eq!(a["snapmon"]["detail"]["via"], "fanotify", "{a}");
}

/// A hidden name made in the store by the store's own path is the syscall route's: the
/// fanotify route must not say it again. One alert and one event each, not two.
#[test]
fn a_hidden_entry_made_by_the_store_path_is_reported_once() {
    let mut t = suite();
    let store = open_store(&t.agent);
    let outside = scratch("once-src");
    let (file, dir) = (
        store.join(format!(".once-{}", std::process::id())),
        store.join(format!(".once-dir-{}", std::process::id())),
    );
    let mark = t.agent.mark();
    let r = nobody_py(&format!(
        "import os\nopen({o:?}, 'w').write('x')\nos.rename({o:?}, {f:?})\nos.mkdir({d:?})",
        o = s(&outside),
        f = s(&file),
        d = s(&dir),
    ));
    for (p, action) in [(&file, "rename"), (&dir, "mkdir")] {
        t.agent.expect(
            Expect::alert("SM-H001").pid(r.pid).path(p).since(mark),
            SOON,
        );
        // Past the fanotify route's hold: a duplicate would be out by now.
        let alerts: Vec<Value> = alerts_about(&mut t.agent, mark, p)
            .into_iter()
            .filter(|v| v["rule"]["id"] == "SM-H001")
            .collect();
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let events: Vec<Value> = t
            .agent
            .since(mark)
            .into_iter()
            .filter(|v| v["event"]["kind"] == "event" && v["event"]["action"] == action)
            .filter(|v| snapmon_e2e::about(v, p))
            .collect();
        assert_eq!(events.len(), 1, "{events:#?}");
        assert!(
            events[0]["snapmon"]["detail"]["via"].is_null(),
            "{:#}",
            events[0]
        );
    }
}

/// Sets `fs.fanotify.max_queued_events` for the groups made while it lives (the kernel reads
/// it at `fanotify_init`), and puts the old value back.
struct FanQueue(String);

impl FanQueue {
    const PATH: &str = "/proc/sys/fs/fanotify/max_queued_events";
    fn set(n: u32) -> FanQueue {
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, n.to_string()).unwrap();
        FanQueue(old)
    }
}

impl Drop for FanQueue {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

/// `nobody` blinds the fanotify route by flooding a 1777 store with file creates until the
/// group's queue overflows (`FAN_Q_OVERFLOW`): a rename-in or mkdir made through a symlink
/// meanwhile is lost. That is SM-A001 naming the route and the store, and the `lost` record
/// counts it. The agent's queue is made 256 events long so the flood is short; the default
/// 16 384 takes the same flood, longer.
#[test]
fn a_fanotify_queue_overflow_by_nobody_is_sm_a001() {
    // The suite's lock: one flood at a time on the host.
    let _t = suite();
    let agent = {
        let _small = FanQueue::set(256);
        Agent::spawn("fanov", &[], &[]).expect("agent")
    };
    let mut agent = agent;
    let store = open_store(&agent);
    // Marks come as the watch set grows (checked after every drain pass and each tick).
    std::thread::sleep(Duration::from_secs(1));
    let mark = agent.mark();
    let r = nobody_py(&format!(
        "import os\nd = {d:?}\nfor i in range(20000):\n    os.close(os.open(d + '/f%d' % i, os.O_CREAT | os.O_WRONLY, 0o600))",
        d = s(&store),
    ));
    let a = agent
        .wait_from(mark, Duration::from_secs(10), |v| {
            v["rule"]["id"] == "SM-A001"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("fanotify route"))
                && v["file"]["path"] == s(&store)
        })
        .unwrap_or_else(|| {
            panic!(
                "no SM-A001 for the fanotify overflow: {:#?}",
                agent
                    .since(mark)
                    .into_iter()
                    .filter(|v| v["event"]["action"] == "lost" || v["rule"]["id"].is_string())
                    .collect::<Vec<_>>()
            )
        });
    let m = a["message"].as_str().unwrap();
    assert!(m.contains(s(&store)), "{m}");
    assert!(m.contains(&format!("pid {}", r.pid)), "{m}");
    assert_eq!(a["snapmon"]["detail"]["dropped_record"], "fanotify", "{a}");
    let lost: u64 = agent
        .since(mark)
        .into_iter()
        .filter(|v| v["event"]["action"] == "lost")
        .filter_map(|v| v["snapmon"]["metric"]["dirwatch"]["overflow"].as_u64())
        .sum();
    assert!(lost > 0, "no dirwatch overflow in `lost`");
}
