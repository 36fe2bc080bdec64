//! Block-storage fixtures of the VM-only suites (`lvm`, `dm_rules`, `zfs`): an LVM volume
//! group on a loop device over a sparse file, or a ZFS pool on a file vdev, taken down when
//! dropped.

use std::{path::PathBuf, process::Command, sync::Mutex};

use crate::{run, Ran};

/// No udev in the guest: LVM creates the nodes itself and does not wait for udev.
const LVM_CONFIG: &str = "activation { udev_sync=0 udev_rules=0 monitoring=0 } \
     devices { obtain_device_list_from_udev=0 }";

/// `lvm <cmd> --config … args`, with udev out of the picture; then the device nodes the
/// next step needs (`/dev/<vg>/<lv>`, `/dev/mapper/…`), which udev would have made.
pub fn lvm(cmd: &str, args: &[&str]) -> Ran {
    let mut a = vec![cmd, "--config", LVM_CONFIG];
    a.extend_from_slice(args);
    std::env::set_var("DM_DISABLE_UDEV", "1");
    std::env::set_var("LVM_SUPPRESS_FD_WARNINGS", "1");
    let r = run("lvm", &a);
    run("dmsetup", &["mknodes"]);
    r
}

/// What a [`LoopVg`] holds.
#[derive(Debug)]
enum Kind {
    /// An LVM VG on a loop device; also removes device-mapper devices named with these
    /// prefixes (a suite's own tables beside the VG's).
    Lvm {
        dev: String,
        dm_prefixes: Vec<String>,
    },
    /// A ZFS pool on the file itself.
    Zfs,
}

/// A VG (or pool) named `name` on a sparse file: made by [`LoopVg::lvm`] or
/// [`LoopVg::zfs`], destroyed with its devices and file when dropped.
#[derive(Debug)]
#[must_use = "dropping the fixture destroys it"]
pub struct LoopVg {
    name: String,
    img: PathBuf,
    kind: Kind,
}

impl LoopVg {
    /// A loop-backed PV of `size` (`truncate -s`) holding VG `vg`. Only in the VM, which
    /// sets `SNAPMON_E2E_LVM=1`: elsewhere it fails the test.
    pub fn lvm(vg: &str, size: &str) -> LoopVg {
        assert_eq!(
            std::env::var("SNAPMON_E2E_LVM").as_deref(),
            Ok("1"),
            "these tests create loop devices and device-mapper tables and rewrite /etc/lvm: \
             they run only in the VM (`cargo xtask vm-test`), which sets SNAPMON_E2E_LVM=1"
        );
        let img = sparse(vg, size);
        let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()])
            .stdout
            .trim()
            .to_string();
        let fx = LoopVg {
            name: vg.into(),
            img,
            kind: Kind::Lvm {
                dev: dev.clone(),
                dm_prefixes: vec![],
            },
        };
        lvm("pvcreate", &["-ff", "-y", &dev]);
        lvm("vgcreate", &[vg, &dev]);
        fx
    }

    /// A ZFS pool `pool` on a file vdev of `size`, with no cachefile (the guest's /etc is
    /// the host's, read-only) and nothing mounted until a dataset says where.
    pub fn zfs(pool: &str, size: &str) -> LoopVg {
        let fx = LoopVg {
            name: pool.into(),
            img: sparse(pool, size),
            kind: Kind::Zfs,
        };
        run(
            "/usr/sbin/zpool",
            &[
                "create",
                "-f",
                "-o",
                "cachefile=none",
                "-m",
                "none",
                pool,
                fx.img.to_str().unwrap(),
            ],
        );
        fx
    }

    /// Also remove the device-mapper devices named `prefix…` at teardown.
    pub fn removing(mut self, prefix: &str) -> LoopVg {
        if let Kind::Lvm { dm_prefixes, .. } = &mut self.kind {
            dm_prefixes.push(prefix.into());
        }
        self
    }

    /// The loop device under the VG (the pool's file for ZFS).
    pub fn dev(&self) -> PathBuf {
        match &self.kind {
            Kind::Lvm { dev, .. } => PathBuf::from(dev),
            Kind::Zfs => self.img.clone(),
        }
    }

    /// Keep the fixture until the test binary exits, then drop it (the shared agent and the
    /// statics that hold a suite's fixture are never dropped); returns [`LoopVg::dev`].
    pub fn keep(self) -> PathBuf {
        static KEPT: Mutex<Vec<LoopVg>> = Mutex::new(Vec::new());
        extern "C" fn drop_kept() {
            let kept = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|e| e.into_inner()));
            drop(kept);
        }
        let dev = self.dev();
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_empty() {
            // SAFETY: registering a plain extern "C" function.
            unsafe { libc::atexit(drop_kept) };
        }
        kept.push(self);
        dev
    }
}

/// A sparse file of `size` for `name` under the temp dir (the guest's root is read-only).
fn sparse(name: &str, size: &str) -> PathBuf {
    let img = std::env::temp_dir().join(format!("snapmon-{name}-{}.img", std::process::id()));
    run("truncate", &["-s", size, img.to_str().unwrap()]);
    img
}

impl Drop for LoopVg {
    fn drop(&mut self) {
        match &self.kind {
            // Device by device, in rounds (a snapshot holds its origin and COW): the attacks
            // leave LVM's metadata out of step with the kernel, so `vgremove` is no option.
            // The suites after this one in the same guest must not find the VG scanning.
            Kind::Lvm { dev, dm_prefixes } => {
                let pat = std::iter::once(format!("^{}-", self.name))
                    .chain(dm_prefixes.iter().map(|p| format!("^{p}")))
                    .collect::<Vec<_>>()
                    .join("|");
                let _ = Command::new("bash")
                    .args([
                        "-c",
                        &format!(
                            "for i in 1 2 3 4 5 6; do for d in $(dmsetup ls | awk '/{pat}/{{print $1}}'); \
                             do dmsetup remove \"$d\" 2>/dev/null; done; done; losetup -d {dev}; \
                             echo \"teardown: $(dmsetup ls | grep -c '^{vg}-') {vg} devices left\"",
                            vg = self.name
                        ),
                    ])
                    .status();
            }
            Kind::Zfs => {
                let _ = Command::new("/usr/sbin/zpool")
                    .args(["destroy", "-f", &self.name])
                    .status();
            }
        }
        let _ = std::fs::remove_file(&self.img);
    }
}
