//! End-to-end side doors of issue #14 in userspace: what a rename puts in place, content
//! that lands after the first look (copies, shared mappings), header bytes beyond the
//! capture, QEMU's own block-layer tools, and how the actor is named. Attackers run as
//! `nobody` in a 1777 store where root is not needed; each has a benign mirror by the
//! trusted tool that raises nothing at medium or above. On kernels with fentry/LSM a second
//! route sees the same syscalls: each finding must still alert exactly once.
// xtask-suite: newest-guest

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use snapmon_e2e::{agent, changes, dest, loud, run, Agent, Expect, Ran};

const WITHIN: Duration = Duration::from_secs(1);
const QUIET: Duration = Duration::from_millis(800);
const SETPRIV: &[&str] = &["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/// A 1777 directory under the shared agent's root (sticky: nobody owns what it replaces).
fn dir(name: &str) -> PathBuf {
    let d = agent().dir("replace").join(name);
    open_dir(&d);
    d
}

fn open_dir(d: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(d).unwrap();
    let mut p = d.to_path_buf();
    // Every level the attacker walks through must be searchable by nobody.
    while p.parent().is_some() && p.as_os_str().len() > 1 {
        if let Ok(md) = std::fs::metadata(&p) {
            let m = md.permissions().mode();
            if m & 0o001 == 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m | 0o711)).unwrap();
            }
        }
        p.pop();
    }
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

fn chown_nobody(p: &Path) {
    run("chown", &["nobody:nogroup", p.to_str().unwrap()]);
}

/// An image with `snaps`, owned by nobody (the attacker may replace it in a sticky dir).
fn image(d: &Path, name: &str, snaps: &[&str]) -> PathBuf {
    let img = d.join(name);
    let s = img.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", s, "16M"]);
    for sn in snaps {
        run("qemu-img", &["snapshot", "-c", sn, s]);
    }
    chown_nobody(&img);
    // The attack comes after the setup was seen: an agent handling the setup late would
    // re-read the image after the attack and credit its diff to the setup's writer.
    settled();
    img
}

/// Run a command as nobody (`setpriv` execs it: the pid is the command's).
fn as_nobody(cmd: &str, args: &[&str]) -> Ran {
    let mut a: Vec<&str> = SETPRIV.to_vec();
    a.push(cmd);
    a.extend_from_slice(args);
    run("setpriv", &a)
}

fn nobody_py(code: &str) -> Ran {
    as_nobody("/usr/bin/python3", &["-c", code])
}

/// A private scratch dir outside every watched root, writable by nobody.
fn outside(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snapmon-replace-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    open_dir(&d);
    d
}

/// Is this record about `t`: its file, or the destination of its rename or link
/// (`snapmon.destination.path` since schema 2; `file.target_path` is ECS's symlink target)?
fn about_path(v: &Value, t: &str) -> bool {
    v["file"]["path"].as_str() == Some(t) || dest(v) == Some(t)
}

fn is_alert(v: &Value, rule: &str, pid: Option<u32>) -> bool {
    v["event"]["kind"] == "alert"
        && v["rule"]["id"] == rule
        && pid.is_none_or(|p| v["process"]["pid"] == p)
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// Wait (from `mark`) for `rule` about `target`; fail with the near misses.
fn expect_in(a: &mut Agent, mark: u64, rule: &str, pid: Option<u32>, target: &Path) -> Value {
    let mut e = Expect::alert(rule).path(target).since(mark);
    if let Some(p) = pid {
        e = e.pid(p);
    }
    a.expect(e, WITHIN)
}

fn expect_alert(rule: &str, pid: Option<u32>, target: &Path, mark: u64) -> Value {
    expect_in(&mut agent(), mark, rule, pid, target)
}

/// Alerts about `target` since `mark`, once the output is quiet.
fn alerts_since(a: &mut Agent, mark: u64, target: &Path) -> Vec<Value> {
    let t = target.to_string_lossy().into_owned();
    a.settle(QUIET, |_| false);
    let out = std::cell::RefCell::new(Vec::new());
    a.wait_from(mark, Duration::ZERO, |v| {
        if v["event"]["kind"] == "alert" && about_path(v, &t) {
            out.borrow_mut().push(v.clone());
        }
        false
    });
    out.into_inner()
}

/// Exactly one alert of `rule` by `pid` about `target` since `mark` (a second kernel route
/// must not make a second finding).
fn once(a: &mut Agent, mark: u64, rule: &str, pid: u32, target: &Path) {
    let n = alerts_since(a, mark, target)
        .iter()
        .filter(|v| is_alert(v, rule, Some(pid)))
        .count();
    assert_eq!(n, 1, "{rule} about {} fired {n} times", target.display());
}

/// Wait until the agent has handled the setup (see `image`).
fn settled() {
    agent().settle(Duration::from_millis(300), |_| false);
}

// ---------------------------------------------------------------------------------------
// Atomic replace.

#[test]
fn a_doctored_copy_renamed_over_an_image_hides_its_snapshots() {
    let d = dir("hide");
    let img = image(&d, "vm1.qcow2", &["s1", "s2"]);
    let out = outside("hide");
    let doc = out.join("vm1.qcow2");
    // Built outside the store, where nothing watches: both snapshots hidden.
    let mark = agent().mark();
    let r = nobody_py(&format!(
        "import os, shutil; shutil.copyfile({img:?}, {doc:?}); \
         fd=os.open({doc:?}, os.O_RDWR); os.pwrite(fd, (0).to_bytes(4,'big'), 60); os.close(fd); \
         os.rename({doc:?}, {img:?})",
        img = img.to_str().unwrap(),
        doc = doc.to_str().unwrap()
    ));
    let a = expect_alert("SM-Q002", Some(r.pid), &img, mark);
    assert_eq!(a["snapmon"]["severity"], "critical");
    let m = message(&a);
    assert!(
        m.contains("set nb_snapshots 2→0 in vm1.qcow2 by renaming vm1.qcow2 over it")
            && m.contains("(hides s1, s2)"),
        "{m}"
    );
    assert_eq!(a["process"]["user"]["id"], "65534");
    let ch = changes(&a);
    assert!(ch.contains(&"nb_snapshots: 2 → 0".to_string()), "{ch:?}");
    once(&mut agent(), mark, "SM-Q002", r.pid, &img);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn a_replace_that_redirects_the_backing_file_is_critical() {
    let d = dir("backing");
    let img = image(&d, "vm1.qcow2", &[]);
    let tmp = d.join(".vm1.qcow2.tmp");
    let mark = agent().mark();
    // The copy is made in the store (its writes are seen), rebased by nobody's own qemu-img
    // run on its own file, then renamed over the image.
    let r = as_nobody(
        "/bin/sh",
        &[
            "-c",
            &format!(
                "cp {img} {tmp} && qemu-img rebase -u -F qcow2 -b /dev/shm/evil.qcow2 {tmp} && \
                 exec /usr/bin/python3 -c \"import os; os.rename('{tmp}', '{img}')\"",
                img = img.display(),
                tmp = tmp.display()
            ),
        ],
    );
    let a = expect_alert("SM-Q004", Some(r.pid), &img, mark);
    assert_eq!(a["snapmon"]["severity"], "critical", "{}", message(&a));
    assert!(
        message(&a).contains("backing_file (none)→/dev/shm/evil.qcow2"),
        "{}",
        message(&a)
    );
    once(&mut agent(), mark, "SM-Q004", r.pid, &img);
}

#[test]
fn junk_or_a_symlink_renamed_over_an_image_destroys_its_header() {
    let d = dir("junk");
    let img = image(&d, "vm1.qcow2", &["s1"]);
    let mark = agent().mark();
    let junk = d.join("junk.bin");
    let r = nobody_py(&format!(
        "import os; open({j:?}, 'wb').write(os.urandom(65536)); os.rename({j:?}, {i:?})",
        j = junk.to_str().unwrap(),
        i = img.to_str().unwrap()
    ));
    let a = expect_alert("SM-Q005", Some(r.pid), &img, mark);
    assert_eq!(a["snapmon"]["severity"], "critical");
    assert!(message(&a).contains("magic QFI\\xfb→"), "{}", message(&a));
    let img2 = image(&d, "vm2.qcow2", &[]);
    let mark = agent().mark();
    let r = nobody_py(&format!(
        "import os; os.symlink('/dev/zero', {l:?}); os.rename({l:?}, {i:?})",
        l = d.join("ln").to_str().unwrap(),
        i = img2.to_str().unwrap()
    ));
    let a = expect_alert("SM-Q005", Some(r.pid), &img2, mark);
    assert!(
        message(&a).contains("(symlink to /dev/zero)"),
        "{}",
        message(&a)
    );
}

#[test]
fn sed_in_place_on_libvirt_snapshot_xml_is_caught_by_the_target_name() {
    let d = dir("sed").join("home/.config/libvirt/qemu/snapshot/dom1");
    open_dir(&d);
    let xml = d.join("s1.xml");
    std::fs::write(
        &xml,
        "<domainsnapshot>\n  <name>s1</name>\n  <parent><name>s0</name></parent>\n</domainsnapshot>\n",
    )
    .unwrap();
    chown_nobody(&xml);
    settled();
    let mark = agent().mark();
    let r = as_nobody("sed", &["-i", "/<parent>/d", xml.to_str().unwrap()]);
    let a = expect_alert("SM-M001", Some(r.pid), &xml, mark);
    assert_eq!(a["snapmon"]["severity"], "high");
    assert!(
        message(&a).contains("replaced libvirt snapshot metadata s1.xml of domain dom1"),
        "{}",
        message(&a)
    );
    once(&mut agent(), mark, "SM-M001", r.pid, &xml);
}

// ---------------------------------------------------------------------------------------
// Content that lands after the first look.

#[test]
fn cp_of_an_image_to_a_log_name_alerts_every_time() {
    let d = dir("cp");
    let src = outside("cp").join("image.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"],
    );
    run("chmod", &["644", src.to_str().unwrap()]);
    let mut missed = Vec::new();
    for i in 0..60 {
        let dst = d.join(format!("x{i}.log"));
        let mark = agent().mark();
        let r = as_nobody("cp", &[src.to_str().unwrap(), dst.to_str().unwrap()]);
        let got = agent().find(
            &Expect::alert("SM-H002").pid(r.pid).path(&dst).since(mark),
            WITHIN,
        );
        if got.is_none() {
            missed.push(i);
        }
    }
    assert!(missed.is_empty(), "cp runs with no SM-H002: {missed:?}");
    let _ = std::fs::remove_dir_all(src.parent().unwrap());
}

#[test]
fn an_image_written_through_a_shared_mapping_is_caught_when_it_lands() {
    let d = dir("mmap");
    let src = outside("mmap").join("image.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", src.to_str().unwrap(), "16M"],
    );
    run("chmod", &["644", src.to_str().unwrap()]);
    let dst = d.join("notes.log");
    let mark = agent().mark();
    // Mapped while still blank, filled later: every event about the file is judged before
    // the image lands in it, so only a later look can see it.
    let r = nobody_py(&format!(
        "import os, mmap, time\n\
         data = open({src:?}, 'rb').read()\n\
         fd = os.open({dst:?}, os.O_RDWR | os.O_CREAT, 0o644); os.ftruncate(fd, len(data))\n\
         m = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n\
         os.close(fd); time.sleep(0.3)\n\
         m[:] = data; m.flush(); m.close()",
        src = src.to_str().unwrap(),
        dst = dst.to_str().unwrap()
    ));
    let a = expect_alert("SM-H002", Some(r.pid), &dst, mark);
    assert_eq!(a["event"]["action"], "mmap_shared_write");
    assert_eq!(a["snapmon"]["detail"]["recheck"], "shared_mapping", "{a}");
    let _ = std::fs::remove_dir_all(src.parent().unwrap());
}

// ---------------------------------------------------------------------------------------
// Header bytes beyond the capture.

#[test]
fn a_rebase_onto_a_volatile_backing_file_shows_the_new_path() {
    let d = dir("rebase");
    let img = image(&d, "vm1.qcow2", &[]);
    // Trusted qemu-img rewrites the whole header cluster; the name lies past 256 bytes.
    let mark = agent().mark();
    let r = run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-F",
            "qcow2",
            "-b",
            "/dev/shm/x.qcow2",
            img.to_str().unwrap(),
        ],
    );
    let a = expect_alert("SM-Q004", Some(r.pid), &img, mark);
    assert_eq!(a["snapmon"]["severity"], "low", "{}", message(&a));
    let ch = changes(&a);
    assert!(
        ch.contains(&"backing_file: (none) → /dev/shm/x.qcow2".to_string()),
        "{ch:?}"
    );
    // The same header, written by nobody's python: critical, with the path.
    let img2 = image(&d, "vm2.qcow2", &[]);
    let head = std::fs::read(&img).unwrap()[..65536].to_vec();
    let hdr = outside("rebase").join("head.bin");
    std::fs::write(&hdr, &head).unwrap();
    run("chmod", &["644", hdr.to_str().unwrap()]);
    let mark = agent().mark();
    let r = nobody_py(&format!(
        "import os; b=open({h:?},'rb').read(); fd=os.open({i:?}, os.O_RDWR); os.pwrite(fd, b, 0)",
        h = hdr.to_str().unwrap(),
        i = img2.to_str().unwrap()
    ));
    let a = expect_alert("SM-Q004", Some(r.pid), &img2, mark);
    assert_eq!(a["snapmon"]["severity"], "critical", "{}", message(&a));
    assert!(
        message(&a).contains("backing_file (none)→/dev/shm/x.qcow2"),
        "{}",
        message(&a)
    );
    let _ = std::fs::remove_dir_all(hdr.parent().unwrap());
}

// ---------------------------------------------------------------------------------------
// QEMU's block-layer tools.

#[test]
fn qemu_io_through_the_qcow2_driver_is_routine_and_raw_is_not() {
    let d = dir("qemu-io");
    let img = image(&d, "vm1.qcow2", &["s1", "s2"]);
    let mark = agent().mark();
    let r = run(
        "qemu-io",
        &["-c", "write -P 0xab 0 64k", img.to_str().unwrap()],
    );
    let got = alerts_since(&mut agent(), mark, &img);
    assert!(loud(&got).is_empty(), "{:#?}", loud(&got));
    // Noted, not silent: a debugging tool on a production image.
    assert!(
        got.iter().any(|v| v["rule"]["id"] == "SM-Q001"
            && v["snapmon"]["severity"] == "info"
            && v["process"]["pid"] == r.pid),
        "{got:#?}"
    );
    // Raw bytes of the qcow2 file: a header edit like any other.
    let mark = agent().mark();
    let r = as_nobody(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0 60 4", img.to_str().unwrap()],
    );
    let a = expect_alert("SM-Q002", Some(r.pid), &img, mark);
    assert!(message(&a).contains("(hides s1, s2)"), "{}", message(&a));
}

// ---------------------------------------------------------------------------------------
// Naming the actor.

#[test]
fn a_writer_run_from_a_memfd_is_named_memfd_and_its_name() {
    let d = dir("memfd");
    let img = image(&d, "vm1.qcow2", &["s1"]);
    let mark = agent().mark();
    let r = nobody_py(&format!(
        "import os\n\
         fd = os.memfd_create('evil', 0)\n\
         os.write(fd, open('/usr/bin/python3', 'rb').read())\n\
         code = 'import os; f=os.open(' + repr({i:?}) + ', os.O_RDWR); os.pwrite(f, bytes(4), 60)'\n\
         os.execve(fd, ['python3', '-c', code], dict(os.environ))",
        i = img.to_str().unwrap()
    ));
    let a = expect_alert("SM-Q002", Some(r.pid), &img, mark);
    assert!(message(&a).starts_with("memfd:evil "), "{}", message(&a));
    assert_eq!(a["process"]["executable"], "/memfd:evil (deleted)");
}

#[test]
fn a_writer_whose_file_was_deleted_is_named_path_deleted() {
    let d = dir("deleted");
    let img = image(&d, "vm1.qcow2", &["s1"]);
    let bin = outside("deleted").join("tool");
    std::fs::copy("/usr/bin/python3", &bin).unwrap();
    chown_nobody(&bin);
    let mark = agent().mark();
    let r = as_nobody(
        bin.to_str().unwrap(),
        &[
            "-c",
            &format!(
                "import os, time; os.unlink({b:?}); f=os.open({i:?}, os.O_RDWR); \
                 os.pwrite(f, (0).to_bytes(4,'big'), 60); time.sleep(1)",
                b = bin.to_str().unwrap(),
                i = img.to_str().unwrap()
            ),
        ],
    );
    let a = expect_alert("SM-Q002", Some(r.pid), &img, mark);
    let want = format!("{} (deleted) ", bin.display());
    assert!(message(&a).starts_with(&want), "{}", message(&a));
    let _ = std::fs::remove_dir_all(bin.parent().unwrap());
}

// ---------------------------------------------------------------------------------------
// Benign mirrors.

#[test]
fn routine_qemu_img_work_and_a_template_copy_raise_nothing() {
    let d = dir("routine");
    let img = image(&d, "vm1.qcow2", &[]);
    let base = d.join("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"],
    );
    let s = img.to_str().unwrap();
    let mark = agent().mark();
    for args in [
        &["snapshot", "-c", "daily", s][..],
        &[
            "rebase",
            "-u",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            s,
        ],
        &["amend", "-o", "lazy_refcounts=on", s],
        &["snapshot", "-d", "daily", s],
        &["resize", s, "32M"],
    ] {
        run("qemu-img", args);
    }
    // An admin copying a template image into the store (cp tries a clone, then copies).
    let copy = d.join("vm2.qcow2");
    run("cp", &[s, copy.to_str().unwrap()]);
    let mut got = alerts_since(&mut agent(), mark, &img);
    got.extend(alerts_since(&mut agent(), mark, &copy));
    assert!(loud(&got).is_empty(), "{:#?}", loud(&got));
}

/// An agent whose policy makes a copy of python3 the `libvirt` actor (no libvirtd here):
/// the trusted identity writing snapshot XML the way libvirt does.
fn trusted() -> std::sync::MutexGuard<'static, snapmon_e2e::WithLibvirtd> {
    snapmon_e2e::with_libvirtd("replace-trusted")
}

#[test]
fn libvirt_renaming_its_xml_new_over_its_xml_raises_nothing() {
    let mut t = trusted();
    let d = t
        .agent
        .root
        .join("libvirt/home/.config/libvirt/qemu/snapshot/dom1");
    std::fs::create_dir_all(&d).unwrap();
    let xml = d.join("s1.xml");
    std::fs::write(&xml, "<domainsnapshot><name>s1</name></domainsnapshot>\n").unwrap();
    t.agent.settle(Duration::from_millis(300), |_| false);
    let mark = t.agent.mark();
    let helper = t.libvirtd.clone();
    let r = run(
        helper.to_str().unwrap(),
        &[
            "-c",
            &format!(
                "import os\n\
                 new = {x:?} + '.new'\n\
                 fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n\
                 os.write(fd, b'<domainsnapshot><name>s1</name><description>x</description></domainsnapshot>\\n')\n\
                 os.fsync(fd); os.close(fd); os.rename(new, {x:?})",
                x = xml.to_str().unwrap()
            ),
        ],
    );
    // Judged as libvirt metadata.
    t.agent.expect(
        Expect::event("rename")
            .pid(r.pid)
            .format("libvirt")
            .since(mark),
        Duration::from_secs(5),
    );
    let got = alerts_since(&mut t.agent, mark, &xml);
    assert!(loud(&got).is_empty(), "{:#?}", loud(&got));
    // The same rename by an untrusted python3 is SM-M001.
    let mark = t.agent.mark();
    let r = snapmon_e2e::python(&format!(
        "import os; new={x:?}+'.new'; open(new,'w').write('<domainsnapshot><name>s1</name></domainsnapshot>'); os.rename(new, {x:?})",
        x = xml.to_str().unwrap()
    ));
    expect_in(&mut t.agent, mark, "SM-M001", Some(r.pid), &xml);
}

/// LVM's text backups live in /etc/lvm/backup (the path is the classifier's): an agent of
/// this test's own watches it, and a backup replaced by rename is SM-M002.
#[test]
fn an_lvm_backup_replaced_by_rename_is_caught() {
    /// What this test adds to the host's /etc goes again, pass or fail.
    struct Cleanup {
        files: Vec<PathBuf>,
        dir: Option<&'static Path>,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for f in &self.files {
                let _ = std::fs::remove_file(f);
            }
            if let Some(d) = self.dir {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let dir = Path::new("/etc/lvm/backup");
    let made = !dir.exists();
    std::fs::create_dir_all(dir).unwrap();
    let vg = dir.join(format!("snapmon_e2e_{}", std::process::id()));
    let tmp = std::env::temp_dir().join(format!("snapmon-replace-{}-vg", std::process::id()));
    let _cleanup = Cleanup {
        files: vec![vg.clone(), tmp.clone()],
        dir: made.then_some(dir),
    };
    let mut a = Agent::spawn("replace-lvm", &[], &[dir.to_path_buf()]).expect("agent");
    let text = |seq: u32| {
        format!(
            "contents = \"Text Format Volume Group\"\nversion = 1\n\
             description = \"Created *after* executing 'vgcreate vg0 /dev/loop0'\"\n\
             vg0 {{\n\tid = \"abc\"\n\tseqno = {seq}\n\tformat = \"lvm2\"\n\tstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\n}}\n"
        )
    };
    std::fs::write(&vg, text(3)).unwrap();
    std::fs::write(&tmp, text(1)).unwrap();
    a.settle(Duration::from_millis(300), |_| false);
    let mark = a.mark();
    let r = snapmon_e2e::python(&format!(
        "import shutil; shutil.move({t:?}, {v:?})",
        t = tmp.to_str().unwrap(),
        v = vg.to_str().unwrap()
    ));
    let al = expect_in(&mut a, mark, "SM-M002", Some(r.pid), &vg);
    assert!(
        message(&al).contains("replaced LVM metadata"),
        "{}",
        message(&al)
    );
    // The agent goes first: it watches the directory the cleanup removes.
    drop(a);
}
