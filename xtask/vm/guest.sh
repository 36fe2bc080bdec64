#!/bin/bash
# snapmon vm-test: runs inside the guest's chroot of the host root. Loads the device-mapper
# and nbd modules (LVM cannot load them itself when the host has no /lib/modules), then runs each
# test binary serially and prints a result marker per binary.
set -u
. /run/snapmon-vm.env
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "SNAPMON-VM-GUEST $(uname -r) nproc=$(nproc) mem=$(awk '/MemTotal/{print $2}' /proc/meminfo)kB"
for m in loop nbd dm-mod dm-snapshot dm-thin-pool dm-bufio dm-persistent-data; do
    modprobe -d "$VM_MODROOT" "$m" || echo "SNAPMON-VM-WARN modprobe $m failed"
done
for m in ext4 btrfs overlay; do
    modprobe -d "$VM_MODROOT" "$m" || echo "SNAPMON-VM-WARN modprobe $m failed"
done
# cgroup v2, as systemd hosts have it: lineage reads container ids from it, and the rules
# suite starts qemu-img in a container-runtime-style scope.
grep -q " cgroup2 " /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "SNAPMON-VM-WARN no cgroup2"
# Loopback: the outputs suite talks to rsyslog and a socket consumer on 127.0.0.1.
ip link set lo up 2>/dev/null || echo "SNAPMON-VM-WARN no loopback"
# /tmp on ext4, like the host's: tmpfs has no O_DIRECT before 6.6 (fio --direct=1), and a
# copy_file_range from /etc/hostname needs both files on one filesystem (EXDEV from 9p).
mkdir -p /run/snapmon-vm
mount -t tmpfs -o size=3g tmpfs /run/snapmon-vm
truncate -s 2G /run/snapmon-vm/tmp.ext4
mkfs.ext4 -q -F /run/snapmon-vm/tmp.ext4
# Keep a workspace that lives under /tmp reachable across the new mount.
case "$VM_WORKSPACE" in /tmp/*) mkdir -p /run/snapmon-vm/ws && mount --bind "$VM_WORKSPACE" /run/snapmon-vm/ws ;; esac
mount -o loop /run/snapmon-vm/tmp.ext4 /tmp && chmod 1777 /tmp || echo "SNAPMON-VM-WARN no ext4 /tmp"
case "$VM_WORKSPACE" in /tmp/*) mkdir -p "$VM_WORKSPACE" && mount --bind /run/snapmon-vm/ws "$VM_WORKSPACE" ;; esac
mkdir -p /tmp/.snapmon-vm
cp /etc/hostname /tmp/.snapmon-vm/hostname && mount --bind /tmp/.snapmon-vm/hostname /etc/hostname
cd "$VM_WORKSPACE"
for spec in $VM_TESTS; do
    name=${spec%%=*}
    bin=${spec#*=}
    echo "SNAPMON-VM-BEGIN $name"
    start=$(date +%s)
    # Stock kernels have BPF LSM: the enforcement suite runs its enforcing tests here, and
    # every suite expects the LSM-backed observation.
    extra=""
    lsm=0
    grep -qw bpf /sys/kernel/security/lsm 2>/dev/null || mount -t securityfs securityfs /sys/kernel/security
    grep -qw bpf /sys/kernel/security/lsm && lsm=1
    skip="VM_SKIP_$name"
    if [ -n "${!skip:-}" ]; then
        extra="--skip ${!skip}"
    fi
    # zfs: with the modules loaded and the userland in place (zfs.sh) when xtask built them;
    # otherwise the suite reports why not (a skip, or the build's error).
    wrap=""
    zfs=0
    if [ "$name" = zfs ] && [ -n "${VM_ZFS:-}" ]; then
        wrap="/bin/bash ${VM_GUEST_SCRIPT%/*}/zfs.sh"
        zfs=1
    fi
    SNAPMON_BIN="$VM_SNAPMON_BIN" SNAPMON_E2E_START_TIMEOUT="$VM_START_TIMEOUT" SNAPMON_E2E_LVM=1 \
        SNAPMON_E2E_EXPECT_LSM=$lsm SNAPMON_E2E_ZFS=$zfs SNAPMON_E2E_ZFS_SKIP="${VM_ZFS_SKIP:-}" \
        SNAPMON_E2E_ZFS_ERROR="${VM_ZFS_ERROR:-}" RUST_BACKTRACE=1 \
        $wrap "$bin" --test-threads=1 --color never $VM_TEST_ARGS $extra 2>&1
    rc=$?
    echo "SNAPMON-VM-END $name rc=$rc secs=$(( $(date +%s) - start ))"
done
