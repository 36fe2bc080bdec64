//! The Debian package (`cargo xtask package`), installed for real.
//!
//! On the host (`host_*`): `dpkg -i` into an overlay of a clean debootstrap root, the installed
//! binary's `doctor` and `policy check`, then `dpkg --purge`, after which nothing but the log
//! dir may be left; the postinst's start decision; the unit's `systemd-analyze` verdicts.
//! In the systemd guest (`cargo xtask vm-test`, systemd as PID 1 on the same root): install,
//! `systemctl start`/`reload`/`stop`, a tamper reaching /var/log/snapmon/, and the watchdog's
//! kill and restart. `cargo xtask test` builds the package and the root and sets
//! `SNAPMON_DEB`/`SNAPMON_ROOTFS`.
// xtask-suite: systemd
// xtask-suite: host-prefix=host_

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;

fn deb() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("SNAPMON_DEB").expect(
        "SNAPMON_DEB (the .deb from `cargo xtask package`) is unset: run through `cargo xtask test`",
    ));
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

fn sh(cmd: &str) -> Output {
    Command::new("/bin/sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("sh -c {cmd}: {e}"))
}

/// Run, insist on success, return stdout.
fn ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// On the host: a clean root, as an overlay so the cached one stays clean.

/// An overlay of the cached debootstrap root, mounted in a mount namespace of this test's
/// own thread (commands it spawns see it; nothing leaks into the host's mounts).
struct Root {
    tmp: PathBuf,
    merged: PathBuf,
    upper: PathBuf,
    lower: PathBuf,
}

impl Root {
    fn new(tag: &str) -> Root {
        let lower = PathBuf::from(std::env::var_os("SNAPMON_ROOTFS").expect(
            "SNAPMON_ROOTFS (the debootstrap root) is unset: run through `cargo xtask test`",
        ));
        assert!(
            lower.join(".done").exists(),
            "{} is not a finished root",
            lower.display()
        );
        // SAFETY: unshare and mount only change this thread's view of the mounts.
        unsafe {
            assert_eq!(
                libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS),
                0,
                "unshare: {}",
                std::io::Error::last_os_error()
            );
        }
        ok("mount --make-rprivate /");
        let tmp = std::env::temp_dir().join(format!("snapmon-pkg-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let (upper, work, merged) = (tmp.join("upper"), tmp.join("work"), tmp.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        ok(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
            lower.display(),
            upper.display(),
            work.display(),
            merged.display()
        ));
        Root {
            tmp,
            merged,
            upper,
            lower,
        }
    }

    /// proc, sys (BTF, tracefs, bpffs) and dev, for the agent inside.
    fn kernel_filesystems(&self) {
        let m = self.merged.display();
        ok(&format!("mount -t proc proc {m}/proc && mount --rbind /sys {m}/sys && mount --rbind /dev {m}/dev"));
    }

    fn chroot(&self, cmd: &str) -> Output {
        Command::new("chroot")
            .arg(&self.merged)
            .args(["/bin/sh", "-c", cmd])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap()
    }

    fn chroot_ok(&self, cmd: &str) -> String {
        let o = self.chroot(cmd);
        assert!(
            o.status.success(),
            "chroot: `{cmd}` failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    fn install_deb(&self) -> String {
        std::fs::copy(deb(), self.merged.join("tmp/snapmon.deb")).unwrap();
        let out = self.chroot_ok("dpkg -i /tmp/snapmon.deb");
        std::fs::remove_file(self.merged.join("tmp/snapmon.deb")).unwrap();
        out
    }

    /// What the upper layer holds that the clean root did not: new files, links and
    /// directories, and whiteouts (something of the clean root removed).
    fn changes(&self) -> Vec<String> {
        let mut out = vec![];
        walk(&self.upper, &self.upper, &self.lower, &mut out);
        out.sort();
        out
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // The namespace goes with the thread; the lazy unmount lets the temp dir go now.
        let _ = sh(&format!("umount -R -l {}", self.merged.display()));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        } else {
            eprintln!("kept {}", self.tmp.display());
        }
    }
}

fn walk(dir: &Path, upper: &Path, lower: &Path, out: &mut Vec<String>) {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p
            .strip_prefix(upper)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let in_lower = std::fs::symlink_metadata(lower.join(&rel)).is_ok();
        if m.file_type().is_char_device() && m.rdev() == 0 {
            out.push(format!("removed {rel}"));
        } else if m.is_dir() {
            if !in_lower {
                out.push(format!("new dir {rel}"));
            }
            walk(&p, upper, lower, out);
        } else {
            out.push(format!(
                "{} {rel}",
                if in_lower { "changed" } else { "new" }
            ));
        }
    }
}

/// What dpkg itself keeps about any package it has seen, and the agent's logs (evidence,
/// kept on purge by design).
fn expected_leftover(change: &str) -> bool {
    let path = change.rsplit(' ').next().unwrap_or("");
    path.starts_with("var/lib/dpkg/")
        || path == "var/log/dpkg.log"
        || path == "var/log/snapmon"
        || path.starts_with("var/log/snapmon/")
}

#[test]
fn host_dpkg_installs_into_a_clean_root_and_purges_to_nothing_but_the_log_dir() {
    let r = Root::new("install");
    r.kernel_filesystems();
    let before = r.changes();
    assert!(before.is_empty(), "the overlay starts clean: {before:?}");
    r.install_deb();

    // What the package put where the issue says.
    let m = &r.merged;
    for f in [
        "usr/sbin/snapmon",
        "etc/snapmon/snapmon.toml",
        "usr/lib/systemd/system/snapmon.service",
        "usr/share/bash-completion/completions/snapmon",
        "usr/share/zsh/vendor-completions/_snapmon",
        "usr/share/fish/vendor_completions.d/snapmon.fish",
        "usr/share/man/man1/snapmon.1.gz",
        "usr/share/man/man1/snapmon-run.1.gz",
    ] {
        assert!(m.join(f).exists(), "/{f} not installed");
    }
    let conffiles = r.chroot_ok("cat /var/lib/dpkg/info/snapmon.conffiles");
    assert_eq!(conffiles.trim(), "/etc/snapmon/snapmon.toml");
    let logdir =
        std::fs::metadata(m.join("var/log/snapmon")).expect("postinst makes /var/log/snapmon");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(logdir.permissions().mode() & 0o7777, 0o750);
    }
    // Enabled (the postinst ran deb-systemd-helper), not started (no systemd in a chroot).
    assert!(
        std::fs::symlink_metadata(
            m.join("etc/systemd/system/multi-user.target.wants/snapmon.service")
        )
        .is_ok(),
        "snapmon.service is not enabled"
    );
    // Stripped: no DWARF left in the installed binary; its build id names the -dbgsym file.
    let sections = ok(&format!(
        "readelf -S --wide {}",
        m.join("usr/sbin/snapmon").display()
    ));
    assert!(
        !sections.contains(".debug_info"),
        "installed binary still has .debug_info"
    );
    let id = ok(&format!(
        "readelf -n {}",
        m.join("usr/sbin/snapmon").display()
    ));
    let id = id
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("binary has a GNU build id")
        .to_string();
    let dbgsym = std::fs::read_dir(deb().parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("snapmon-dbgsym_"))
        .expect("a snapmon-dbgsym package next to the .deb");
    let listing = ok(&format!("dpkg-deb -c {}", dbgsym.display()));
    let want = format!("usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    assert!(listing.contains(&want), "dbgsym lacks {want}:\n{listing}");

    // The installed binary, as an operator would first run it.
    let version = r.chroot_ok("snapmon --version");
    assert!(
        version.contains("(commit ") && version.contains(", built "),
        "{version}"
    );
    let doctor = r.chroot_ok("snapmon doctor");
    assert!(
        doctor.contains(" live ") || doctor.contains("live     "),
        "{doctor}"
    );
    let check = r.chroot_ok("snapmon policy check /etc/snapmon/snapmon.toml");
    assert!(check.contains("/etc/snapmon/snapmon.toml: ok"), "{check}");
    let man = r.chroot_ok("zcat /usr/share/man/man1/snapmon-run.1.gz");
    assert!(
        man.contains(r"\-\-min\-severity"),
        "snapmon-run(1) does not document run's flags"
    );

    r.chroot_ok("dpkg --purge snapmon");
    let left: Vec<String> = r
        .changes()
        .into_iter()
        .filter(|c| !expected_leftover(c) && !c.ends_with(" tmp"))
        .collect();
    assert!(left.is_empty(), "purge left behind: {left:#?}");
    assert!(
        m.join("var/log/snapmon").is_dir(),
        "purge keeps the log dir"
    );
    assert!(!m.join("etc/snapmon").exists());
}

#[test]
fn host_postinst_starts_the_service_only_where_the_agent_can_run() {
    // With systemd "running" (its runtime dir) and deb-systemd-invoke replaced by a spy, the
    // postinst starts the unit where doctor passes, and says why not where it fails.
    let spy = |r: &Root| {
        std::fs::create_dir_all(r.merged.join("run/systemd/system")).unwrap();
        std::fs::write(
            r.merged.join("usr/bin/deb-systemd-invoke"),
            "#!/bin/sh\necho \"$@\" >> /tmp/invoked\n",
        )
        .unwrap();
        ok(&format!(
            "chmod 755 {}",
            r.merged.join("usr/bin/deb-systemd-invoke").display()
        ));
    };
    let can = Root::new("can-run");
    can.kernel_filesystems();
    spy(&can);
    can.install_deb();
    let invoked = std::fs::read_to_string(can.merged.join("tmp/invoked")).unwrap_or_default();
    assert_eq!(
        invoked.trim(),
        "start snapmon.service",
        "postinst did not start the unit"
    );
    drop(can);

    // No /sys in this root: no BTF, no tracefs; the agent cannot load.
    let cannot = Root::new("cannot-run");
    ok(&format!(
        "mount -t proc proc {}/proc",
        cannot.merged.display()
    ));
    spy(&cannot);
    let out = cannot.install_deb();
    assert!(
        !cannot.merged.join("tmp/invoked").exists(),
        "postinst started the unit where the agent cannot run"
    );
    assert!(
        out.contains("snapmon.service is enabled but not started: the agent cannot run here"),
        "postinst does not say why: {out}"
    );
    assert!(out.contains("snapmon doctor"), "{out}");
}

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../snapmon/debian/snapmon.service")
}

#[test]
fn host_unit_file_verifies_and_scores_what_the_docs_say() {
    let r = Root::new("unit");
    r.install_deb();
    let root = r.merged.display().to_string();
    let v = sh(&format!(
        "systemd-analyze verify --man=no --root={root} snapmon.service"
    ));
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(
        v.status.success() && !err.contains("snapmon.service"),
        "systemd-analyze verify: {err}"
    );
    let sec = ok(&format!(
        "systemd-analyze security --offline=true --root={root} snapmon.service"
    ));
    let line = sec
        .lines()
        .find(|l| l.contains("Overall exposure level for snapmon.service"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{sec}"));
    // `→ Overall exposure level for snapmon.service: 3.4 OK :-)`
    let score = line
        .split(": ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/install.md"))
            .unwrap();
    assert!(
        docs.contains(&format!("exposure level **{score}**")),
        "docs/install.md does not state the current score {score} ({line})"
    );
    // The shipped unit is the one in the tree.
    assert_eq!(
        std::fs::read_to_string(r.merged.join("usr/lib/systemd/system/snapmon.service")).unwrap(),
        std::fs::read_to_string(unit_file()).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// The container image and the Kubernetes manifests, up to where no cluster runs here.

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The image's filesystem: its layers (oci-archive from `cargo xtask image`) applied in order.
fn unpack_oci(archive: &Path, into: &Path) -> Value {
    let blobs = into.join("archive");
    std::fs::create_dir_all(&blobs).unwrap();
    ok(&format!(
        "tar -xf {} -C {}",
        archive.display(),
        blobs.display()
    ));
    let blob = |digest: &str| {
        blobs
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let json =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = json(blobs.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let rootfs = into.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        ok(&format!(
            "tar -xf {} -C {}",
            blob(l["digest"].as_str().unwrap()).display(),
            rootfs.display()
        ));
    }
    json(blob(manifest["config"]["digest"].as_str().unwrap()))
}

#[test]
fn host_oci_image_runs_the_packaged_binary() {
    let archive = PathBuf::from(std::env::var_os("SNAPMON_OCI").expect(
        "SNAPMON_OCI (target/oci/snapmon-*.oci.tar from `cargo xtask image`) is unset: run through `cargo xtask test`",
    ));
    let r = Root::new("oci");
    let dir = r.tmp.join("oci");
    let config = unpack_oci(&archive, &dir);
    let rootfs = dir.join("rootfs");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/sbin/snapmon"])
    );
    assert_eq!(config["config"]["Cmd"][0], "run");
    let labels = &config["config"]["Labels"];
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|c| c.len() == 40),
        "{labels}"
    );
    // The same binary as the package's.
    let pkg = r.tmp.join("deb");
    ok(&format!(
        "dpkg-deb -x {} {}",
        deb().display(),
        pkg.display()
    ));
    assert_eq!(
        std::fs::read(rootfs.join("usr/sbin/snapmon")).unwrap(),
        std::fs::read(pkg.join("usr/sbin/snapmon")).unwrap(),
        "the image's binary is not the package's"
    );
    // No shell in the image: what runs is the agent alone, on the image's own libraries.
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists());
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    ok(&format!(
        "mount -t proc proc {0}/proc && mount --rbind /sys {0}/sys && mount --rbind /dev {0}/dev",
        rootfs.display()
    ));
    let run = |args: &[&str]| {
        let o = Command::new("chroot")
            .arg(&rootfs)
            .arg("/usr/sbin/snapmon")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "snapmon {args:?} in the image: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(run(&["--version"]).contains("(commit "));
    assert!(run(&["policy", "check", "/etc/snapmon/snapmon.toml"]).contains(": ok"));
    assert!(
        run(&["doctor"]).contains("hooks ("),
        "doctor in the image's root"
    );
}

#[test]
fn host_kubernetes_manifests_match_the_schema_and_the_policy() {
    let validate = std::env::var("SNAPMON_KUBERNETES_VALIDATE").expect(
        "SNAPMON_KUBERNETES_VALIDATE (set up by `cargo xtask setup`) is unset: run through `cargo xtask test`",
    );
    let manifest = repo("deploy/kubernetes/snapmon.yaml");
    let o = Command::new(&validate)
        .arg("--strict")
        .arg(&manifest)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    for kind in [
        "namespace/snapmon",
        "configmap/snapmon-policy",
        "daemonset/snapmon",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind} not validated: {out}"
        );
    }
    // The validator is not vacuous: a field the schema does not have, and a wrong type, fail.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let dir = std::env::temp_dir().join(format!("snapmon-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bad) in [
        (
            "unknown-field",
            text.replace(
                "      hostPID: true",
                "      hostPID: true
      hostPIDs: true",
            ),
        ),
        (
            "wrong-type",
            text.replace("      hostPID: true", "      hostPID: \"yes\""),
        ),
    ] {
        assert_ne!(bad, text);
        let p = dir.join(format!("{name}.yaml"));
        std::fs::write(&p, bad).unwrap();
        let o = Command::new(&validate)
            .arg("--strict")
            .arg(&p)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{name} passed validation");
    }
    let _ = std::fs::remove_dir_all(&dir);

    // What the DaemonSet must have, beyond the schema.
    for needle in [
        "hostPID: true",
        "privileged: true",
        "path: /sys/kernel/btf",
        "path: /sys/fs/bpf",
        "path: /sys/kernel/tracing",
        "path: /var/lib/libvirt",
        "path: /etc/lvm",
        "prometheus.io/scrape: \"true\"",
        "prometheus.io/port: \"9464\"",
        "- 0.0.0.0:9464",
        "name: SNAPMON_HOST_ROOT",
    ] {
        assert!(
            text.contains(needle),
            "deploy/kubernetes/snapmon.yaml lacks `{needle}`"
        );
    }
    // The ConfigMap's policy is the embedded default, and the agent accepts it.
    let policy: String = text
        .split("  snapmon.toml: |\n")
        .nth(1)
        .unwrap()
        .split("\n---")
        .next()
        .unwrap()
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let default = Command::new(snapmon_e2e::bin())
        .args(["policy", "default"])
        .output()
        .unwrap();
    assert_eq!(
        policy,
        String::from_utf8_lossy(&default.stdout),
        "ConfigMap drifted from `snapmon policy default`"
    );
}

// ---------------------------------------------------------------------------------------
// In the systemd guest: the service under systemd as PID 1.

const LOG: &str = "/var/log/snapmon/snapmon.jsonl";
const IMAGE: &str = "/var/lib/libvirt/images/vm1.qcow2";

fn records() -> Vec<Value> {
    std::fs::read_to_string(LOG)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(action: &str) -> usize {
    records()
        .iter()
        .filter(|v| v["event"]["kind"] == "state" && v["event"]["action"] == action)
        .count()
}

fn show(prop: &str) -> String {
    ok(&format!("systemctl show -p {prop} --value snapmon.service"))
        .trim()
        .to_string()
}

/// Several properties from one `systemctl show`: one snapshot of the unit. Separate calls
/// can straddle a change (`active` read before a SIGKILL is reaped, `MainPID` after it).
fn show_all<const N: usize>(props: [&str; N]) -> [String; N] {
    let args: String = props.iter().map(|p| format!(" -p {p}")).collect();
    let out = ok(&format!("systemctl show{args} snapmon.service"));
    props.map(|p| {
        out.lines()
            .find_map(|l| l.strip_prefix(p)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    })
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; journal:\n{}",
            journal()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn journal() -> String {
    let o = sh("journalctl -u snapmon.service --no-pager -n 40 -o short-monotonic");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// nb_snapshots (header offset 60, big-endian u32) set by `dd` running as nobody.
fn set_nb_snapshots(n: u8) {
    ok(&format!(
        "printf '\\000\\000\\000\\{n:03o}' | setpriv --reuid=nobody --regid=nogroup --clear-groups \
         dd of={IMAGE} bs=4 seek=15 count=1 conv=notrunc status=none"
    ));
}

/// The SM-Q002 alert about IMAGE from dd among records `from` on.
fn hidden_alert(from: usize) -> Option<Value> {
    records().into_iter().skip(from).find(|v| {
        v["event"]["kind"] == "alert"
            && v["rule"]["id"] == "SM-Q002"
            && v["file"]["path"] == IMAGE
            && v["process"]["name"] == "dd"
    })
}

fn guest() -> bool {
    let in_guest = std::env::var_os("SNAPMON_E2E_SYSTEMD").is_some_and(|v| v == "1");
    assert!(
        in_guest,
        "runs in the systemd guest of `cargo xtask vm-test` (SNAPMON_E2E_SYSTEMD=1), which boots systemd as PID 1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/1/comm").unwrap().trim(),
        "systemd"
    );
    true
}

#[test]
fn systemd_runs_the_packaged_service_supervised_and_sandboxed() {
    assert!(guest());
    let start_timeout = Duration::from_secs(300);

    // dpkg -i: enabled, and started by the postinst (doctor passes on this kernel).
    let t0 = Instant::now();
    let out = ok(&format!("dpkg -i {} 2>&1", deb().display()));
    eprintln!("dpkg -i took {:.1} s:\n{out}", t0.elapsed().as_secs_f64());
    assert_eq!(ok("systemctl is-enabled snapmon.service").trim(), "enabled");
    assert_eq!(
        show("ActiveState"),
        "active",
        "postinst did not start it:\n{out}\n{}",
        journal()
    );
    assert_eq!(count("started"), 1, "one started record after the install");
    let status = show("StatusText");
    assert!(
        status.ends_with("hooks attached"),
        "STATUS= from the agent: {status:?}"
    );

    // The sandbox costs no hook: the same agent in a plain transient unit attaches as many.
    ok(
        "systemd-run --quiet --unit=snapmon-plain -p Type=notify /usr/sbin/snapmon run \
        --config /etc/snapmon/snapmon.toml --sink file:/run/snapmon-plain.jsonl",
    );
    let plain = ok("systemctl show -p StatusText --value snapmon-plain.service");
    ok("systemctl stop snapmon-plain.service");
    assert_eq!(
        status,
        plain.trim(),
        "sandboxed agent vs the same agent unsandboxed"
    );

    // stop: a `stopped` record.
    ok("systemctl stop snapmon.service");
    assert_eq!(count("stopped"), 1, "stop leaves a stopped record");
    assert_eq!(show("ActiveState"), "inactive");

    // The watchdog, shortened by a drop-in to keep the guest short (each start is most of a
    // minute under TCG, so the rest of the test runs under it rather than restarting for it).
    // A stopped process does not take the watchdog's SIGABRT: TimeoutAbortSec bounds the wait
    // for the SIGKILL that follows.
    ok("mkdir -p /run/systemd/system/snapmon.service.d && printf '[Service]\\nWatchdogSec=10s\\nTimeoutAbortSec=3s\\n' > /run/systemd/system/snapmon.service.d/watchdog.conf && systemctl daemon-reload");

    // start: `systemctl start` returns once READY=1, and READY comes after `started` is in the log.
    let t1 = Instant::now();
    ok("systemctl start snapmon.service");
    assert_eq!(
        (show("ActiveState"), show("SubState")),
        ("active".into(), "running".into())
    );
    assert_eq!(
        count("started"),
        2,
        "active (running) before the started record was written"
    );
    eprintln!("systemctl start took {:.1} s", t1.elapsed().as_secs_f64());
    let main_pid = show("MainPID");

    // A tamper in the libvirt store reaches /var/log/snapmon/, with its lineage.
    let mark = records().len();
    set_nb_snapshots(0);
    let mut alert = None;
    wait_until(
        "SM-Q002 from dd in the log",
        Duration::from_secs(30),
        || {
            alert = hidden_alert(mark);
            alert.is_some()
        },
    );
    let alert = alert.unwrap();
    assert_eq!(
        alert["process"]["user"]["id"]
            .as_u64()
            .or(alert["process"]["user"]["id"]
                .as_str()
                .and_then(|s| s.parse().ok())),
        Some(65534),
        "{alert}"
    );
    assert!(
        alert["process"]["parent"]["name"].is_string(),
        "lineage: {alert}"
    );

    // reload: an exception for dd takes effect; a broken policy is refused and the old stays.
    ok("cat >> /etc/snapmon/snapmon.toml <<'EOF'\n\n[[exception]]\nrules = [\"SM-Q001\", \"SM-Q002\"]\nexecutable = \"/usr/bin/dd\"\ntarget = \"/var/lib/libvirt/images/*.qcow2\"\ncomment = \"systemd test\"\nEOF");
    let reloaded = count("reloaded");
    ok("systemctl reload snapmon.service");
    wait_until("a reloaded record", Duration::from_secs(30), || {
        count("reloaded") == reloaded + 1
    });
    set_nb_snapshots(3);
    let mark = records().len();
    set_nb_snapshots(0);
    // The write is seen (its event is logged), and no alert follows it.
    wait_until("dd's write event", Duration::from_secs(30), || {
        records().iter().skip(mark).any(|v| {
            v["event"]["kind"] == "event"
                && v["file"]["path"] == IMAGE
                && v["process"]["name"] == "dd"
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        hidden_alert(mark).is_none(),
        "the reloaded exception did not take effect"
    );
    ok("cp /etc/snapmon/snapmon.toml /run/snapmon-good.toml");
    ok("printf '\\n[[rule]]\\nid = 42\\n' >> /etc/snapmon/snapmon.toml");
    let failed = count("reload_failed");
    ok("systemctl reload snapmon.service");
    wait_until("a reload_failed record", Duration::from_secs(30), || {
        count("reload_failed") == failed + 1
    });
    assert_eq!(show("ActiveState"), "active");
    assert_eq!(
        show("MainPID"),
        main_pid,
        "a bad reload must not restart the agent"
    );
    // Back to the good policy: a restart with the broken one would (rightly) fail.
    ok("mv /run/snapmon-good.toml /etc/snapmon/snapmon.toml");

    // Watchdog: the agent's keep-alives held it past WatchdogSec through all of the above
    // (at least twice that), and a stopped reader is killed and restarted (Restart=on-failure).
    assert_eq!(show("WatchdogUSec"), "10s");
    if let Some(left) = Duration::from_secs(20).checked_sub(t1.elapsed()) {
        std::thread::sleep(left);
    }
    assert_eq!(
        (show("MainPID"), show("NRestarts")),
        (main_pid.clone(), "0".to_string()),
        "killed by the watchdog while alive:\n{}",
        journal()
    );
    let started = count("started");
    let t2 = Instant::now();
    ok(&format!("kill -STOP {main_pid}"));
    wait_until("the watchdog's restart", start_timeout, || {
        let [n, active, sub, main] = show_all(["NRestarts", "ActiveState", "SubState", "MainPID"]);
        n == "1" && active == "active" && sub == "running" && main != main_pid && main != "0"
    });
    eprintln!(
        "the watchdog's restart took {:.1} s",
        t2.elapsed().as_secs_f64()
    );
    assert!(
        journal().contains("Watchdog timeout"),
        "restarted, but not by the watchdog:\n{}",
        journal()
    );
    assert_eq!(
        count("started"),
        started + 1,
        "restarted agent wrote started; journal:\n{}",
        journal()
    );
    let restarted = records()
        .into_iter()
        .rfind(|v| v["event"]["kind"] == "state" && v["event"]["action"] == "started")
        .unwrap();
    assert_eq!(
        restarted["snapmon"]["state"]["previous_run"]["clean"], false,
        "the killed run's log is reported unclosed: {restarted}"
    );
    ok("rm -r /run/systemd/system/snapmon.service.d && systemctl daemon-reload");

    // Purge: stopped (a stopped record), unit gone, the log stays.
    let stopped = count("stopped");
    ok("dpkg --purge snapmon");
    assert_eq!(
        count("stopped"),
        stopped + 1,
        "purge stops the agent cleanly"
    );
    assert!(Path::new(LOG).exists(), "the log stays");
    assert!(!Path::new("/usr/lib/systemd/system/snapmon.service").exists());
    let gone = sh("systemctl cat snapmon.service");
    assert!(!gone.status.success(), "unit still known after purge");
}
