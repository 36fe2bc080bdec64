//! btrfs end-to-end: snapshot ioctls on a real loop-mounted btrfs, and writes inside a
//! subvolume (whose `stat` device differs from the superblock's) are seen and decoded.

use std::{path::PathBuf, process::Command, time::Duration};

use snapmon_e2e::{action, agent_with, brief, run};

fn sh(cmd: &str) {
    let st = Command::new("bash").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

#[test]
fn btrfs_snapshot_ioctls_and_subvolume_writes_are_reported() {
    let base = std::env::temp_dir().join(format!("snapmon-btrfs-{}", std::process::id()));
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let img = base.join("fs.img");
    sh(&format!(
        "truncate -s 256M {0} && mkfs.btrfs -q -f {0} && mount -o loop {0} {1}",
        img.display(),
        mnt.display()
    ));
    struct Unmount(PathBuf, PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _guard = Unmount(mnt.clone(), base.clone());
    let vol = mnt.join("vol");
    run("btrfs", &["subvolume", "create", vol.to_str().unwrap()]);
    std::fs::write(vol.join("disk.qcow2"), b"data").unwrap();

    let mut a = agent_with(&[mnt.clone()]);
    let snap = mnt.join("snap1");
    let c = run(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            "-r",
            vol.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    );
    let p = run(
        "btrfs",
        &[
            "property",
            "set",
            "-f",
            snap.to_str().unwrap(),
            "ro",
            "false",
        ],
    );
    let d = run("btrfs", &["subvolume", "delete", snap.to_str().unwrap()]);
    let f = vol.join("disk.qcow2");
    let w = run(
        "python3",
        &[
            "-c",
            &format!(
                "import os; fd=os.open('{}', os.O_RDWR); os.pwrite(fd, b'xx', 2)",
                f.display()
            ),
        ],
    );
    let evs = a.settle(Duration::from_millis(800), |v| {
        v["event"]["kind"] == "event"
            && v["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(mnt.to_str().unwrap()))
    });
    let ioctl_name = |pid: u32, prefix: &str| {
        evs.iter().any(|v| {
            action(v) == "ioctl"
                && v["process"]["pid"] == pid
                && v["snapmon"]["ioctl"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
    };
    assert!(
        ioctl_name(c.pid, "BTRFS_IOC_SNAP_CREATE_V2"),
        "no snapshot create ioctl:\n{}",
        brief(&evs)
    );
    assert!(
        ioctl_name(p.pid, "BTRFS_IOC_SUBVOL_SETFLAGS"),
        "no read-only clear ioctl:\n{}",
        brief(&evs)
    );
    assert!(
        ioctl_name(d.pid, "BTRFS_IOC_SNAP_DESTROY"),
        "no snapshot destroy ioctl:\n{}",
        brief(&evs)
    );
    let destroy = evs
        .iter()
        .find(|v| {
            v["process"]["pid"] == d.pid
                && v["snapmon"]["ioctl"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("BTRFS_IOC_SNAP_DESTROY"))
        })
        .unwrap();
    assert_eq!(
        destroy["snapmon"]["classification"]["snapshot_destructive"], true,
        "{destroy}"
    );
    assert!(
        evs.iter().any(|v| v["process"]["pid"] == w.pid
            && action(v) == "pwrite64"
            && v["file"]["path"] == f.to_str().unwrap()),
        "write inside the subvolume not seen:\n{}",
        brief(&evs)
    );
}
