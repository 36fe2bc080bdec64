//! Replays of synthetic fork/exec/exit sequences and procfs trees.

use super::procfs::{parse_cgroup, parse_stat, parse_status_ids, split_cmdline};
use super::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};

const BOOT: &str = "8a6f0c2e-boot";
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn fork(t: &mut ProcessTable, ts: u64, parent: u32, child: u32) {
    t.observe_fork(&ForkInfo {
        ts_ns: ts,
        parent_tgid: parent,
        child_tgid: child,
        child_start_ns: ts,
    });
}

fn exec(t: &mut ProcessTable, ts: u64, pid: u32, ppid: u32, start: u64, exe: &str, argv: &[&str]) {
    t.observe_exec(&ExecInfo {
        ts_ns: ts,
        tgid: pid,
        ppid,
        uid: 1000,
        euid: 1000,
        gid: 1000,
        start_ns: start,
        exe_path: exe.as_bytes().to_vec(),
        exe_dev: 0x803,
        exe_ino: ts,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        comm: exe.rsplit('/').next().unwrap().as_bytes().to_vec(),
        cgroup_id: 0,
    });
}

fn exit(t: &mut ProcessTable, ts: u64, pid: u32, start: u64, code: i32) {
    t.observe_exit(&ExitInfo {
        ts_ns: ts,
        tgid: pid,
        start_ns: start,
        exit_code: code,
    });
}

fn name_at(t: &mut ProcessTable, pid: u32, ts: u64) -> Option<String> {
    t.lookup(pid, ts).map(|v| v.name.display())
}

/// systemd(1) → sshd(100) → bash(200) → python3(300); returns the table.
fn chain() -> ProcessTable {
    let mut t = ProcessTable::new(BOOT);
    exec(
        &mut t,
        MS,
        1,
        0,
        1000,
        "/usr/lib/systemd/systemd",
        &["/sbin/init"],
    );
    fork(&mut t, 10 * MS, 1, 100);
    exec(
        &mut t,
        11 * MS,
        100,
        1,
        10 * MS,
        "/usr/sbin/sshd",
        &["sshd", "-D"],
    );
    fork(&mut t, 20 * MS, 100, 200);
    exec(
        &mut t,
        21 * MS,
        200,
        100,
        20 * MS,
        "/usr/bin/bash",
        &["-bash"],
    );
    fork(&mut t, 30 * MS, 200, 300);
    exec(
        &mut t,
        31 * MS,
        300,
        200,
        30 * MS,
        "/usr/bin/python3",
        &["python3", "x.py"],
    );
    t
}

#[test]
fn simple_chain_lineage() {
    let mut t = chain();
    let v = t.lookup(300, 40 * MS).expect("python3 known");
    assert_eq!(v.name.display(), "python3");
    assert_eq!(v.exe.as_bytes(), b"/usr/bin/python3");
    assert_eq!(v.ppid, 200);
    assert_eq!(v.command_line(), "python3 x.py");
    let pids: Vec<u32> = v.ancestors.iter().map(|a| a.pid).collect();
    assert_eq!(pids, vec![200, 100, 1]);
    assert!(!v.ancestors_truncated);
    let parent = v.parent.as_ref().unwrap();
    assert_eq!((parent.pid, parent.ppid), (200, 100));
    assert_eq!(parent.name.display(), "bash");
    assert_eq!(parent.entity_id, v.ancestors[0].entity_id);
    assert_eq!(v.lineage_string(), "python3 ← bash ← sshd ← systemd");
    let mut ids: Vec<&str> = v.ancestors.iter().map(|a| a.entity_id.as_str()).collect();
    ids.push(&v.entity_id);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "entity ids unique");
    assert_eq!(v.entity_id.len(), 16);
    let s = t.stats();
    assert_eq!(
        (s.forks, s.execs, s.exits, s.entries, s.live_entries),
        (3, 4, 0, 4, 4)
    );
    // serialisable for the sinks
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["exe"], "/usr/bin/python3");
    assert_eq!(j["ancestors"][1]["name"], "sshd");
    assert_eq!(j["parent"]["args"][0], "-bash");
}

#[test]
fn lineage_string_is_capped() {
    let mut t = ProcessTable::new(BOOT);
    exec(&mut t, MS, 1, 0, 1000, "/sbin/init", &[]);
    let mut parent = 1;
    for pid in 2..=8u32 {
        let ts = pid as u64 * 10 * MS;
        fork(&mut t, ts, parent, pid);
        exec(
            &mut t,
            ts + 1,
            pid,
            parent,
            ts,
            &format!("/bin/p{pid}"),
            &[],
        );
        parent = pid;
    }
    let v = t.lookup(8, SEC).unwrap();
    assert_eq!(v.ancestors.len(), 7);
    assert_eq!(v.lineage_string(), "p8 ← p7 ← p6 ← p5 ← p4 ← …");
}

#[test]
fn exec_replaces_running_image() {
    let mut t = chain();
    fork(&mut t, 50 * MS, 200, 400);
    let pre = t.lookup(400, 51 * MS).unwrap();
    assert_eq!(
        pre.name.display(),
        "bash",
        "pre-exec child runs the parent's image"
    );
    assert_eq!(
        (pre.origin, pre.exec_seq, pre.exec_ts_ns),
        (Origin::Fork, 0, None)
    );
    exec(
        &mut t,
        60 * MS,
        400,
        200,
        50 * MS,
        "/usr/bin/curl",
        &["curl", "x"],
    );
    exec(&mut t, 70 * MS, 400, 200, 50 * MS, "/bin/sh", &["sh"]);
    assert_eq!(name_at(&mut t, 400, 55 * MS).as_deref(), Some("bash"));
    let curl = t.lookup(400, 65 * MS).unwrap();
    assert_eq!((curl.name.display().as_str(), curl.exec_seq), ("curl", 1));
    assert_eq!(curl.exec_ts_ns, Some(60 * MS));
    let sh = t.lookup(400, 75 * MS).unwrap();
    assert_eq!((sh.name.display().as_str(), sh.exec_seq), ("sh", 2));
    let pre_again = t.lookup(400, 52 * MS).unwrap();
    assert_eq!(pre_again.entity_id, pre.entity_id, "stable");
    assert_ne!(pre.entity_id, curl.entity_id);
    assert_ne!(curl.entity_id, sh.entity_id);
    assert_ne!(pre.entity_id, pre.ancestors[0].entity_id);
    // the parent's image is not affected by the child's exec
    assert_eq!(name_at(&mut t, 200, 75 * MS).as_deref(), Some("bash"));
}

#[test]
fn out_of_order_exec_fork_and_exit() {
    let mut t = chain();
    fork(&mut t, 80 * MS, 200, 42);
    // exec@110 arrives before exec@90
    exec(&mut t, 110 * MS, 42, 200, 80 * MS, "/bin/b", &["b"]);
    assert_eq!(name_at(&mut t, 42, 100 * MS).as_deref(), Some("bash"));
    let b_before = t.lookup(42, 120 * MS).unwrap();
    exec(&mut t, 90 * MS, 42, 200, 80 * MS, "/bin/a", &["a"]);
    assert_eq!(name_at(&mut t, 42, 100 * MS).as_deref(), Some("a"));
    assert_eq!(name_at(&mut t, 42, 85 * MS).as_deref(), Some("bash"));
    let b_after = t.lookup(42, 120 * MS).unwrap();
    assert_eq!(b_after.name.display(), "b");
    assert_eq!(
        b_after.entity_id, b_before.entity_id,
        "late exec must not renumber ids"
    );
    assert_eq!((b_before.exec_seq, b_after.exec_seq), (1, 2));
    // duplicate delivery changes nothing
    exec(&mut t, 90 * MS, 42, 200, 80 * MS, "/bin/a", &["a"]);
    assert_eq!(t.lookup(42, 120 * MS).unwrap().exec_seq, 2);

    // exit observed before the process's last event
    exit(&mut t, 200 * MS, 42, 80 * MS, 3);
    let v = t
        .lookup(42, 195 * MS)
        .expect("exited process still resolves");
    assert_eq!(v.name.display(), "b");
    assert_eq!(
        v.exit,
        Some(ExitView {
            ts_ns: 200 * MS,
            code: Some(3)
        })
    );
    assert!(t.lookup(42, 200 * MS + EXIT_SLACK_NS + 1).is_none());
    // grace period is event time: 5 s later the entry is gone
    exec(
        &mut t,
        200 * MS + DEFAULT_EXIT_GRACE_NS - MS,
        300,
        200,
        30 * MS,
        "/x",
        &[],
    );
    assert!(t.lookup(42, 195 * MS).is_some(), "still in grace");
    exec(
        &mut t,
        200 * MS + DEFAULT_EXIT_GRACE_NS + MS,
        300,
        200,
        30 * MS,
        "/y",
        &[],
    );
    assert!(t.lookup(42, 195 * MS).is_none(), "purged after grace");
    assert_eq!(t.stats().purged_exited, 1);
}

#[test]
fn late_fork_merges_with_exec_created_entry() {
    let mut t = chain();
    // exec of 77 (forked by bash at 80 ms) arrives before its fork
    exec(&mut t, 85 * MS, 77, 200, 80 * MS, "/usr/bin/id", &["id"]);
    let len = t.len();
    assert_eq!(
        name_at(&mut t, 77, 82 * MS).as_deref(),
        Some("bash"),
        "pre-exec via parent"
    );
    fork(&mut t, 80 * MS, 200, 77);
    assert_eq!(t.len(), len, "merged, not a second generation");
    let pre = t.lookup(77, 82 * MS).unwrap();
    assert_eq!(
        (pre.name.display().as_str(), pre.origin),
        ("bash", Origin::Fork)
    );
    let v = t.lookup(77, 90 * MS).unwrap();
    assert_eq!(v.lineage_string(), "id ← bash ← sshd ← systemd");
    // an exit of an unknown process is counted, not invented
    exit(&mut t, 91 * MS, 9999, 5, 0);
    assert_eq!(t.stats().unknown_exits, 1);
    assert_eq!(t.len(), len);
}

#[test]
fn pid_reuse_attributes_by_time() {
    let mut t = chain();
    fork(&mut t, SEC, 200, 500);
    exec(&mut t, SEC + MS, 500, 200, SEC, "/bin/first", &[]);
    // the second process's fork arrives before the first one's exit
    fork(&mut t, 3 * SEC, 300, 500);
    exec(&mut t, 3 * SEC + MS, 500, 300, 3 * SEC, "/bin/second", &[]);
    assert_eq!(name_at(&mut t, 500, 2 * SEC).as_deref(), Some("first"));
    exit(&mut t, 2 * SEC + 500 * MS, 500, SEC, 0);
    let a = t.lookup(500, 2 * SEC).unwrap();
    let b = t.lookup(500, 4 * SEC).unwrap();
    assert_eq!((a.name.display().as_str(), a.ppid), ("first", 200));
    assert_eq!((b.name.display().as_str(), b.ppid), ("second", 300));
    assert_ne!(a.entity_id, b.entity_id);
    assert_eq!(
        b.lineage_string(),
        "second ← python3 ← bash ← sshd ← systemd"
    );
    assert!(
        t.lookup(500, 2 * SEC + 800 * MS).is_none(),
        "between the two"
    );
    assert!(b.exit.is_none());
    // a missed exit is implied by the next generation
    fork(&mut t, 6 * SEC, 1, 600);
    fork(&mut t, 7 * SEC, 1, 600);
    let old = t.lookup(600, 6 * SEC + MS).unwrap();
    assert_eq!(
        old.exit,
        Some(ExitView {
            ts_ns: 7 * SEC,
            code: None
        })
    );
    assert_eq!(t.lookup(600, 8 * SEC).unwrap().start_ns, 7 * SEC);
}

#[test]
fn exited_parent_is_kept_while_children_live() {
    let mut t = chain();
    fork(&mut t, SEC, 200, 700); // bash -c '...'
    exec(
        &mut t,
        SEC + 1,
        700,
        200,
        SEC,
        "/bin/sh",
        &["sh", "-c", "miner &"],
    );
    fork(&mut t, SEC + 2 * MS, 700, 701);
    exec(
        &mut t,
        SEC + 3 * MS,
        701,
        700,
        SEC + 2 * MS,
        "/tmp/miner",
        &["miner"],
    );
    exit(&mut t, SEC + 4 * MS, 700, SEC, 0);
    let before = t.len();
    // 20 s of unrelated activity
    for i in 0..20u64 {
        exec(
            &mut t,
            (2 + i) * SEC,
            300,
            200,
            30 * MS,
            "/usr/bin/python3",
            &[],
        );
    }
    let v = t.lookup(701, 30 * SEC).expect("daemon alive");
    assert_eq!(v.lineage_string(), "miner ← sh ← bash ← sshd ← systemd");
    assert_eq!(t.len(), before, "sh pinned by its child");
    assert!(
        t.lookup(700, 30 * SEC).is_none(),
        "but sh itself is not alive then"
    );
    exit(&mut t, 31 * SEC, 701, SEC + 2 * MS, 0);
    exec(&mut t, 40 * SEC, 300, 200, 30 * MS, "/usr/bin/python3", &[]);
    assert_eq!(t.len(), before - 2, "child purged, then its pinned parent");
    assert_eq!(t.stats().purged_exited, 2);
}

#[test]
fn capacity_evicts_exited_first_then_counts_live() {
    let mut t = ProcessTable::with_capacity(BOOT, 3);
    exec(&mut t, MS, 10, 0, 1, "/a", &[]);
    exec(&mut t, 2 * MS, 11, 0, 2, "/b", &[]);
    exec(&mut t, 3 * MS, 12, 0, 3, "/c", &[]);
    exit(&mut t, 4 * MS, 12, 3, 0); // c exited but most recently used
    exec(&mut t, 5 * MS, 13, 0, 5, "/d", &[]);
    assert_eq!(t.len(), 3);
    assert!(t.lookup(12, 3 * MS).is_none(), "exited entry evicted first");
    assert_eq!(t.stats().evicted_live, 0);
    assert_eq!(t.stats().evicted_exited, 1);
    // a is LRU among live ones, but a lookup makes it recent
    assert!(t.lookup(10, 6 * MS).is_some());
    exec(&mut t, 7 * MS, 14, 0, 7, "/e", &[]);
    assert_eq!(t.len(), 3);
    assert_eq!(t.stats().evicted_live, 1);
    assert!(t.lookup(11, 8 * MS).is_none(), "b was least recently used");
    assert!(t.lookup(10, 8 * MS).is_some());
    assert!(t.lookup(13, 8 * MS).is_some());
    assert!(t.lookup(14, 8 * MS).is_some());
    let s = t.stats();
    assert_eq!(
        (s.lookups, s.lookup_misses, s.entries, s.live_entries),
        (6, 2, 3, 3)
    );
}

#[test]
fn fork_storm_stays_bounded() {
    let mut t = ProcessTable::with_capacity(BOOT, 10_000);
    exec(&mut t, MS, 1, 0, 1000, "/sbin/init", &["init"]);
    fork(&mut t, 2 * MS, 1, 500);
    exec(&mut t, 3 * MS, 500, 1, 2 * MS, "/bin/bash", &["bash"]);
    let argv: Vec<Vec<u8>> = vec![b"worker".to_vec(), b"--job".to_vec()];
    let started = std::time::Instant::now();
    let mut long_lived = Vec::new();
    for i in 0..100_000u64 {
        let start = SEC + i * 10_000; // 10 µs apart: all within the grace period
        let keep = i % 1000 == 0;
        let pid = if keep {
            200_000 + (i / 1000) as u32
        } else {
            10_000 + (i % 30_000) as u32 // pids wrap and get reused
        };
        fork(&mut t, start, 500, pid);
        t.observe_exec(&ExecInfo {
            ts_ns: start + 2_000,
            tgid: pid,
            ppid: 500,
            start_ns: start,
            exe_path: b"/usr/bin/worker".to_vec(),
            argv: argv.clone(),
            exe_ino: i,
            ..Default::default()
        });
        let v = t
            .lookup(pid, start + 5_000)
            .expect("running process resolves");
        assert_eq!(v.exe_ino, i);
        if keep {
            long_lived.push((pid, start, i));
        } else {
            exit(&mut t, start + 8_000, pid, start, 0);
        }
        assert!(t.len() <= 10_000);
    }
    let elapsed = started.elapsed();
    let s = t.stats();
    // lazily deleted queue pairs stay bounded too
    assert!(t.lru_live.len() + t.lru_exited.len() <= 4 * t.len() + 4096 + 2);
    assert!(t.purge_queue.len() <= 4 * t.len() + 4096 + 1);
    assert_eq!(s.evicted_live, 0, "{s:?}");
    assert!(s.evicted_exited >= 90_000 - 10_000, "{s:?}");
    assert_eq!(s.forks, 100_001);
    for (pid, start, i) in long_lived {
        let v = t
            .lookup(pid, 3 * SEC)
            .expect("long-lived survives the storm");
        assert_eq!((v.start_ns, v.exe_ino), (start, i));
        assert_eq!(v.lineage_string(), "worker ← bash ← init");
    }
    // the most recent short-lived one is still resolvable (exited, in grace)
    let last = t
        .lookup(10_000 + 99_999 % 30_000, SEC + 99_999 * 10_000 + 5_000)
        .unwrap();
    assert_eq!(last.exe_ino, 99_999);
    // Speed is for `cargo xtask bench`; a wall-clock bound here fails only on a busy machine.
    eprintln!("fork storm: {elapsed:?}");
}

#[test]
fn container_and_unit_from_realistic_cgroups() {
    let id = "3f1c7e0b2a9d4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e";
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, Option<&'a str>);
    let cases: &[Case] = &[
        (
            &format!("/system.slice/docker-{id}.scope"),
            Some(("docker", id)),
            Some(&format!("docker-{id}.scope")),
        ),
        (&format!("/docker/{id}"), Some(("docker", id)), None),
        (
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c.slice/cri-containerd-{id}.scope"
            ),
            Some(("containerd", id)),
            Some(&format!("cri-containerd-{id}.scope")),
        ),
        (
            &format!("/kubepods.slice/kubepods-pod7d.slice/crio-{id}.scope"),
            Some(("cri-o", id)),
            Some(&format!("crio-{id}.scope")),
        ),
        (
            &format!("/kubepods.slice/kubepods-pod7d.slice/crio-conmon-{id}.scope"),
            None,
            Some(&format!("crio-conmon-{id}.scope")),
        ),
        (
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope/container"),
            Some(("podman", id)),
            Some(&format!("libpod-{id}.scope")),
        ),
        (&format!("/kubepods/besteffort/pod0a1b-22/{id}"), Some(("cri", id)), None),
        (
            "/machine.slice/machine-debian\\x2dtest.scope/payload",
            Some(("systemd-nspawn", "debian-test")),
            Some("machine-debian\\x2dtest.scope"),
        ),
        (
            "/machine.slice/machine-qemu\\x2d3\\x2dweb01.scope/libvirt/vcpu0",
            None,
            Some("machine-qemu\\x2d3\\x2dweb01.scope"),
        ),
        ("/system.slice/libvirtd.service", None, Some("libvirtd.service")),
        ("/user.slice/user-1000.slice/session-3.scope", None, Some("session-3.scope")),
        ("/init.scope", None, Some("init.scope")),
        ("/", None, None),
        ("/system.slice/docker-abc.scope", None, Some("docker-abc.scope")),
    ];
    for (path, container, unit) in cases {
        let c = container_from_cgroup(path);
        let got = c.as_ref().map(|c| (c.runtime, c.id.as_str()));
        assert_eq!(got, *container, "container of {path}");
        assert_eq!(
            systemd_unit_from_cgroup(path).as_deref(),
            *unit,
            "unit of {path}"
        );
    }
}

#[test]
fn cgroup_registry_resolves_exec_cgroup_ids() {
    let mut t = chain();
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    t.register_cgroup(4242, &format!("/system.slice/docker-{id}.scope"));
    t.observe_exec(&ExecInfo {
        ts_ns: 90 * MS,
        tgid: 300,
        ppid: 200,
        start_ns: 30 * MS,
        exe_path: b"/usr/bin/nginx".to_vec(),
        cgroup_id: 4242,
        ..Default::default()
    });
    let v = t.lookup(300, 91 * MS).unwrap();
    assert_eq!(v.container_id.as_deref(), Some(id));
    assert_eq!(v.container_runtime.as_deref(), Some("docker"));
    assert_eq!(v.cgroup_id, 4242);
    // the image before that exec ran in no known cgroup
    assert_eq!(t.lookup(300, 50 * MS).unwrap().container_id, None);
}

fn libvirt_argv(name_arg: &str) -> Vec<String> {
    [
        "/usr/bin/qemu-system-x86_64",
        "-name",
        name_arg,
        "-S",
        "-object",
        "secret,id=masterKey0,format=raw,file=/var/lib/libvirt/qemu/domain-3-web01/master-key.aes",
        "-machine",
        "pc-q35-8.2,usb=off,vmport=off,dump-guest-core=off",
        "-accel",
        "kvm",
        "-m",
        "4096",
        "-uuid",
        "6c0f9f2c-3c7e-4c27-9d55-0b4f8a6b2e11",
        "-no-user-config",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn qemu_vm_identity() {
    let a = libvirt_argv("guest=web01,debug-threads=on");
    let vm = parse_qemu_vm(b"/usr/bin/qemu-system-x86_64", &a).unwrap();
    assert_eq!(vm.name.as_deref(), Some("web01"));
    assert_eq!(
        vm.uuid.as_deref(),
        Some("6c0f9f2c-3c7e-4c27-9d55-0b4f8a6b2e11")
    );
    let plain = parse_qemu_vm(
        b"/usr/libexec/qemu-kvm",
        &libvirt_argv("db,,primary,process=qemu:db"),
    )
    .unwrap();
    assert_eq!(
        plain.name.as_deref(),
        Some("db,primary"),
        "`,,` is a literal comma"
    );
    let no_name = parse_qemu_vm(
        b"/usr/bin/qemu-system-aarch64",
        &["qemu-system-aarch64", "-m", "1G"],
    )
    .unwrap();
    assert_eq!(
        no_name,
        VmIdentity {
            name: None,
            uuid: None
        }
    );
    assert!(parse_qemu_vm(b"/usr/bin/qemu-img", &["qemu-img", "-name", "x"]).is_none());
    assert!(parse_qemu_vm(b"/usr/bin/python3", &["python3", "-name", "x"]).is_none());

    // in the table: QEMU and its children carry the VM; libvirtd does not
    let mut t = ProcessTable::new(BOOT);
    exec(&mut t, MS, 1, 0, 1000, "/sbin/init", &[]);
    fork(&mut t, 10 * MS, 1, 900);
    exec(
        &mut t,
        11 * MS,
        900,
        1,
        10 * MS,
        "/usr/sbin/libvirtd",
        &["libvirtd"],
    );
    fork(&mut t, 20 * MS, 900, 901);
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    exec(
        &mut t,
        21 * MS,
        901,
        900,
        20 * MS,
        "/usr/bin/qemu-system-x86_64",
        &argv,
    );
    fork(&mut t, 30 * MS, 901, 902);
    exec(
        &mut t,
        31 * MS,
        902,
        901,
        30 * MS,
        "/usr/bin/qemu-pr-helper",
        &["qemu-pr-helper"],
    );
    let q = t.lookup(901, 40 * MS).unwrap();
    assert_eq!(q.vm.as_ref().and_then(|v| v.name.as_deref()), Some("web01"));
    assert_eq!(q.lineage_string(), "qemu-system-x86_64 ← libvirtd ← init");
    let child = t.lookup(902, 40 * MS).unwrap();
    assert_eq!(child.vm, q.vm, "inherited from nearest QEMU ancestor");
    assert_eq!(t.lookup(900, 40 * MS).unwrap().vm, None);
    assert_eq!(
        t.lookup(901, 20 * MS + 1).unwrap().vm,
        None,
        "before exec it was libvirtd"
    );
}

#[test]
fn argv_is_bounded() {
    let many: Vec<Vec<u8>> = (0..100).map(|i| format!("a{i}").into_bytes()).collect();
    let (args, trunc) = bound_args(&many);
    assert_eq!((args.len(), trunc), (MAX_ARGS, true));
    let big: Vec<Vec<u8>> = (0..10).map(|_| vec![b'x'; 1000]).collect();
    let (args, trunc) = bound_args(&big);
    assert!(trunc);
    assert_eq!(
        args.iter().map(|a| a.as_bytes().len()).sum::<usize>(),
        MAX_ARGS_BYTES
    );
    assert_eq!(args.len(), 5);
    let exact: Vec<Vec<u8>> = (0..4).map(|_| vec![b'y'; 1024]).collect();
    assert!(!bound_args(&exact).1, "exactly 4 KiB is not truncated");
    assert!(!bound_args(&many[..MAX_ARGS]).1);
}

#[test]
fn non_utf8_and_control_chars_are_escaped() {
    let raw: &[u8] = b"/tmp/\xff\xfe\x1b[31mevil\n\\x\x7f\xe2\x80\xaegpj.exe";
    let s = escape_bytes(raw);
    assert_eq!(
        s,
        "/tmp/\\xff\\xfe\\x1b[31mevil\\x0a\\x5cx\\x7f\\xe2\\x80\\xaegpj.exe"
    );
    assert!(!s.chars().any(|c| c.is_control()));
    assert_eq!(unescape_bytes(&s), raw, "lossless");
    assert_eq!(
        escape_bytes("/usr/bin/zähler".as_bytes()),
        "/usr/bin/zähler"
    );

    let mut t = ProcessTable::new(BOOT);
    t.observe_exec(&ExecInfo {
        ts_ns: 10,
        tgid: 77,
        start_ns: 5,
        exe_path: raw.to_vec(),
        argv: vec![b"ev\x00il".to_vec(), b"\xc3\x28".to_vec()],
        ..Default::default()
    });
    let v = t.lookup(77, 11).unwrap();
    assert_eq!(v.exe.as_bytes(), raw, "bytes kept");
    assert_eq!(v.name.display(), &s["/tmp/".len()..], "basename, escaped");
    assert_eq!(v.command_line(), "ev\\x00il \\xc3(");
    let j = serde_json::to_string(&v).unwrap();
    assert!(
        j.contains(r#""exe":"/tmp/\\xff\\xfe\\x1b[31mevil\\x0a"#),
        "{j}"
    );
    assert!(!j.contains("\\u001b"));
}

#[test]
fn ancestor_loops_and_deep_chains_terminate() {
    // corrupt ppids: 10 → 11 → 12 → 10, none forked in view
    let mut t = ProcessTable::new(BOOT);
    exec(&mut t, 100, 10, 11, 50, "/a", &[]);
    exec(&mut t, 101, 11, 12, 50, "/b", &[]);
    exec(&mut t, 102, 12, 10, 50, "/c", &[]);
    let v = t.lookup(10, 200).unwrap();
    let pids: Vec<u32> = v.ancestors.iter().map(|a| a.pid).collect();
    assert_eq!(pids, vec![11, 12]);
    assert!(v.ancestors_truncated);
    // self-parent
    exec(&mut t, 103, 13, 13, 50, "/d", &[]);
    let v = t.lookup(13, 200).unwrap();
    assert!(v.ancestors.is_empty() && v.ancestors_truncated);

    // a 100-deep chain is cut at MAX_ANCESTORS
    let mut t = ProcessTable::new(BOOT);
    exec(&mut t, 1, 1, 0, 1, "/init", &[]);
    for pid in 2..=100u32 {
        fork(&mut t, pid as u64 * 10, pid - 1, pid);
    }
    let v = t.lookup(100, 5000).unwrap();
    assert_eq!(v.ancestors.len(), MAX_ANCESTORS);
    assert!(v.ancestors_truncated);
    assert_eq!(v.name.display(), "init", "inherited through 99 forks");
}

// ----- procfs -----

static TMP: AtomicUsize = AtomicUsize::new(0);

struct FakeProc {
    root: PathBuf,
}

impl FakeProc {
    fn new() -> Self {
        let n = TMP.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("lineage-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        FakeProc { root }
    }
    fn proc_root(&self) -> PathBuf {
        self.root.join("proc")
    }
    fn bin(&self, name: &str) -> PathBuf {
        let p = self.root.join("bin").join(name);
        fs::write(&p, name).unwrap();
        p
    }
    #[allow(
        clippy::too_many_arguments,
        reason = "a fake /proc entry: one argument per file the real one has"
    )]
    fn add(
        &self,
        pid: u32,
        ppid: u32,
        comm: &str,
        exe: Option<&str>,
        cmdline: &[u8],
        start_ticks: u64,
        tty: u32,
        cgroup: &str,
    ) {
        let d = self.proc_root().join(pid.to_string());
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("stat"),
            format!("{pid} ({comm}) S {ppid} {pid} {pid} {tty} -1 4194560 1 0 0 0 3 1 0 0 20 0 1 0 {start_ticks} 1000 100 18446744073709551615\n"),
        )
        .unwrap();
        fs::write(
            d.join("status"),
            format!("Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nPPid:\t{ppid}\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n"),
        )
        .unwrap();
        fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(d.join("cmdline"), cmdline).unwrap();
        fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        fs::write(
            d.join("sessionid"),
            if tty != 0 { "3" } else { "4294967295" },
        )
        .unwrap();
        if let Some(exe) = exe {
            std::os::unix::fs::symlink(self.bin(exe), d.join("exe")).unwrap();
            std::os::unix::fs::symlink("/home/user", d.join("cwd")).unwrap();
        }
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn fake_host() -> FakeProc {
    let f = FakeProc::new();
    f.add(
        1,
        0,
        "systemd",
        Some("systemd"),
        b"/sbin/init\0splash\0",
        10,
        0,
        "/init.scope",
    );
    f.add(2, 0, "kthreadd", None, b"", 10, 0, "/");
    f.add(
        50,
        1,
        "sshd",
        Some("sshd"),
        b"sshd: /usr/sbin/sshd -D\0",
        500,
        0,
        "/system.slice/ssh.service",
    );
    f.add(
        60,
        50,
        "b) (ash",
        Some("bash"),
        b"-bash\0",
        1000,
        34816,
        "/user.slice/user-1000.slice/session-3.scope",
    );
    // a pid that vanished between readdir and read: directory without stat
    fs::create_dir_all(f.proc_root().join("99")).unwrap();
    fs::create_dir_all(f.proc_root().join("self")).unwrap();
    f
}

#[test]
fn seed_from_fake_procfs_then_fork() {
    let f = fake_host();
    let hz = clock_ticks_per_sec();
    let tick = 1_000_000_000 / hz;
    let mut t = ProcessTable::new(BOOT);
    let s = t.seed_from_procfs(&f.proc_root()).unwrap();
    assert_eq!((s.seeded, s.skipped), (4, 1));
    let bash_start = ticks_to_ns(1000, hz);
    let v = t.lookup(60, bash_start + SEC).unwrap();
    assert_eq!(v.origin, Origin::Procfs);
    assert_eq!(v.comm.display(), "b) (ash");
    assert_eq!(v.name.display(), "bash");
    let bin = f.root.join("bin").join("bash");
    assert_eq!(v.exe.as_bytes(), bin.as_os_str().as_encoded_bytes());
    let m = fs::metadata(&bin).unwrap();
    assert_eq!((v.exe_dev, v.exe_ino), (m.dev(), m.ino()));
    assert_eq!((v.uid, v.euid, v.gid), (Some(1000), Some(0), Some(100)));
    assert_eq!(v.args.len(), 1);
    assert_eq!(
        v.cwd.as_ref().map(|c| c.display()).as_deref(),
        Some("/home/user")
    );
    assert_eq!(v.systemd_unit.as_deref(), Some("session-3.scope"));
    assert_eq!(v.session_id, Some(3));
    assert_eq!(
        v.tty.as_ref().and_then(|t| t.name.as_deref()),
        Some("pts/0")
    );
    assert_eq!(v.lineage_string(), "bash ← sshd ← systemd");
    let kt = t.lookup(2, SEC).unwrap();
    assert_eq!(
        (kt.name.display().as_str(), kt.exe.is_empty()),
        ("kthreadd", true)
    );
    assert_eq!(t.lookup(50, bash_start).unwrap().session_id, None);

    // kernel events carry the exact start; it matches the tick-rounded one
    let exact = bash_start + tick / 2;
    let len = t.len();
    fork(&mut t, bash_start + 2 * SEC, 60, 61);
    exec(
        &mut t,
        bash_start + 2 * SEC + 1,
        61,
        60,
        bash_start + 2 * SEC,
        "/usr/bin/vim",
        &["vim"],
    );
    let child = t.lookup(61, bash_start + 3 * SEC).unwrap();
    assert_eq!(child.lineage_string(), "vim ← bash ← sshd ← systemd");
    assert_eq!(child.session_id, Some(3), "inherited at fork");
    assert_eq!(child.systemd_unit.as_deref(), Some("session-3.scope"));
    assert_eq!(child.parent.as_ref().unwrap().entity_id, v.entity_id);
    exec(
        &mut t,
        bash_start + 4 * SEC,
        60,
        50,
        exact,
        "/usr/bin/zsh",
        &["zsh"],
    );
    assert_eq!(t.len(), len + 1, "exec matched the seeded entry");
    assert_eq!(
        name_at(&mut t, 60, bash_start + 5 * SEC).as_deref(),
        Some("zsh")
    );
    assert_eq!(
        name_at(&mut t, 60, bash_start + 3 * SEC).as_deref(),
        Some("bash")
    );
    exit(&mut t, bash_start + 6 * SEC, 60, exact, 0);
    assert_eq!(
        t.lookup(60, bash_start + 5 * SEC)
            .unwrap()
            .exit
            .map(|e| e.code),
        Some(Some(0))
    );

    // the same process learnt from kernel events gets the same entity id
    let mut k = ProcessTable::new(BOOT);
    k.observe_fork(&ForkInfo {
        ts_ns: exact,
        parent_tgid: 50,
        child_tgid: 60,
        child_start_ns: exact,
    });
    assert_eq!(k.lookup(60, exact + 1).unwrap().entity_id, v.entity_id);
    assert_eq!(entity_id(BOOT, 60, exact / tick, 0), v.entity_id);
    assert_ne!(entity_id("other-boot", 60, exact / tick, 0), v.entity_id);

    // a process that appears later is filled in on demand, with ancestry
    f.add(
        80,
        60,
        "curl",
        Some("curl"),
        b"curl\0http://x\0",
        1200,
        0,
        "/user.slice",
    );
    assert!(t.lookup(80, ticks_to_ns(1200, hz) + 1).is_none());
    assert!(t.refresh_from_procfs(80));
    let c = t.lookup(80, ticks_to_ns(1200, hz) + 1).unwrap();
    assert_eq!(c.command_line(), "curl http://x");
    assert_eq!(
        c.ancestors.iter().map(|a| a.pid).collect::<Vec<_>>(),
        vec![60, 50, 1]
    );
    assert!(!t.refresh_from_procfs(4242));
}

#[test]
fn refresh_pulls_in_unknown_ancestors() {
    let f = fake_host();
    let hz = clock_ticks_per_sec();
    let mut t = ProcessTable::new(BOOT);
    t.seed_from_procfs(&f.proc_root()).unwrap();
    // a table that never saw these processes rebuilds the chain on demand
    let mut fresh = ProcessTable::new(BOOT);
    fresh.procfs_root = f.proc_root();
    assert!(fresh.refresh_from_procfs(60));
    assert_eq!(fresh.len(), 3, "bash, sshd, systemd");
    let v = fresh.lookup(60, ticks_to_ns(1000, hz) + 1).unwrap();
    assert_eq!(v.lineage_string(), "bash ← sshd ← systemd");
    assert_eq!(
        v,
        t.peek(60, ticks_to_ns(1000, hz) + 1).unwrap(),
        "same as full seeding"
    );
}

#[test]
fn seeds_from_real_proc_and_finds_itself() {
    let mut t =
        ProcessTable::new(read_boot_id().unwrap_or_default()).with_cgroupfs_root("/sys/fs/cgroup");
    let s = t.seed_from_procfs(Path::new("/proc")).unwrap();
    assert!(s.seeded >= 2, "{s:?}");
    let me = std::process::id();
    let v = t.lookup(me, u64::MAX / 2).expect("test process seeded");
    let exe = std::env::current_exe().unwrap();
    assert_eq!(v.exe.as_bytes(), exe.as_os_str().as_encoded_bytes());
    let m = fs::metadata(&exe).unwrap();
    assert_eq!((v.exe_dev, v.exe_ino), (m.dev(), m.ino()));
    assert_eq!(v.ppid, std::os::unix::process::parent_id());
    // SAFETY: getuid cannot fail.
    assert_eq!(v.uid, Some(unsafe { libc::getuid() }));
    assert!(!v.args.is_empty());
    let chain: Vec<u32> = v.ancestors.iter().map(|a| a.pid).collect();
    assert_eq!(chain.first(), Some(&v.ppid));
    assert_eq!(chain.last(), Some(&1), "chain {chain:?} reaches pid 1");
    assert!(!v.ancestors_truncated);
    eprintln!("real lineage: {}", v.lineage_string());
}

#[test]
fn procfs_parsers() {
    let st = parse_stat(
        "4242 (a) b) (c) S 17 4242 4242 34817 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0",
    )
    .unwrap();
    assert_eq!((st.ppid, st.tty_nr, st.starttime), (17, 34817, 987654));
    assert!(parse_stat("12 (x) S 1 2").is_none(), "truncated stat");
    assert_eq!(
        parse_status_ids("Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n"),
        Some((1, 2, 5))
    );
    assert_eq!(parse_status_ids("Uid:\t1\n"), None);
    assert_eq!(
        parse_cgroup("0::/system.slice/a.service\n").as_deref(),
        Some("/system.slice/a.service")
    );
    let v1 = "12:memory:/m\n1:name=systemd:/system.slice/b.service\n";
    assert_eq!(parse_cgroup(v1).as_deref(), Some("/system.slice/b.service"));
    let hybrid = "1:name=systemd:/x.service\n0::/y.service\n";
    assert_eq!(parse_cgroup(hybrid).as_deref(), Some("/y.service"));
    assert_eq!(
        split_cmdline(b"a\0b c\0\0d\0"),
        vec![b"a".to_vec(), b"b c".to_vec(), vec![], b"d".to_vec()]
    );
    assert!(split_cmdline(b"").is_empty());
    assert_eq!(Tty::from_nr(34817).unwrap().name.as_deref(), Some("pts/1"));
    assert_eq!(
        Tty::from_nr((136 << 8) | (1 << 20))
            .unwrap()
            .name
            .as_deref(),
        Some("pts/256")
    );
    assert_eq!(
        Tty::from_nr((4 << 8) | 1).unwrap().name.as_deref(),
        Some("tty1")
    );
    assert_eq!(
        Tty::from_nr((4 << 8) | 64).unwrap().name.as_deref(),
        Some("ttyS0")
    );
    assert_eq!(Tty::from_nr(0), None);
    assert_eq!(ticks_to_ns(250, 100), 2_500_000_000);
}

#[test]
fn entity_id_is_fnv1a_of_documented_input() {
    // FNV-1a-64 of the empty input is the offset basis; check one byte too
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"b\xff\x07\0\0\0\x02\0\0\0\0\0\0\0\x03\0\0\0\0\0\0\0" {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    assert_eq!(entity_id("b", 7, 2, 3), format!("{h:016x}"));
    assert_ne!(entity_id("b", 7, 2, 3), entity_id("b", 7, 2, 4));
    assert_ne!(entity_id("b", 7, 2, 3), entity_id("c", 7, 2, 3));
}

#[test]
fn cgroup2_mount_on_unified_and_hybrid_hosts() {
    use super::procfs::parse_cgroup2_mount;
    let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
    assert_eq!(
        parse_cgroup2_mount(unified).as_deref(),
        Some(Path::new("/sys/fs/cgroup"))
    );
    let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                  cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
    assert_eq!(
        parse_cgroup2_mount(hybrid).as_deref(),
        Some(Path::new("/sys/fs/cgroup/unified"))
    );
    assert_eq!(parse_cgroup2_mount("cgroup /x cgroup rw 0 0\n"), None);
}

/// A cgroup made after the table was seeded resolves from the id an exec carries. Needs root
/// (mkdir in cgroupfs, open_by_handle_at), like the end-to-end tests.
#[test]
fn exec_in_a_cgroup_created_later_resolves_its_container() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
    let root = cgroup2_mount(Path::new("/proc/self/mounts")).expect("a cgroup2 mount");
    let id64 = format!("{:0>64}", format!("{:x}", std::process::id()));
    let rel = format!("/snapmon-unit-{}/docker-{id64}.scope", std::process::id());
    let dir = root.join(rel.trim_start_matches('/'));
    fs::create_dir_all(&dir).unwrap();
    let ino = fs::metadata(&dir).unwrap().ino();
    let resolved = cgroup_path_by_id(&root, ino);
    let mut t = ProcessTable::new("b".to_string()).with_cgroupfs_root(&root);
    t.observe_exec(&ExecInfo {
        ts_ns: 10,
        tgid: 77,
        ppid: 1,
        start_ns: 5,
        exe_path: b"/usr/bin/qemu-img".to_vec(),
        cgroup_id: ino,
        ..Default::default()
    });
    let v = t.lookup(77, 20).unwrap();
    let _ = fs::remove_dir(&dir);
    let _ = fs::remove_dir(dir.parent().unwrap());
    assert_eq!(resolved.as_deref(), Some(rel.as_str()));
    assert_eq!(v.cgroup_path.as_deref(), Some(rel.as_str()));
    assert_eq!(v.container_id.as_deref(), Some(id64.as_str()));
    assert_eq!(v.container_runtime.as_deref(), Some("docker"));
}
