#!/bin/bash
# snapmon vm-test: run one test binary ("$@") with real ZFS. Loads the OpenZFS modules xtask
# built for this kernel ($VM_ZFS/modules, in the order it computed), then, in a private mount
# namespace, puts its userland's zfs/zpool/zdb into /usr/sbin (a tmpfs copy of the host's:
# the root is read-only 9p), so the policy's trusted `zfs` actor is the real /usr/sbin/zfs
# for the agent and the tests alike, while the other suites keep the host's /usr/sbin.
set -u
. /run/snapmon-vm.env
while read -r m; do
    case $m in
    kernel:*) modprobe -d "$VM_MODROOT" "${m#kernel:}" || echo "SNAPMON-VM-WARN modprobe ${m#kernel:} failed" ;;
    *) insmod "$VM_ZFS/modules/$m.ko" || { echo "SNAPMON-VM-ZFS insmod $m failed"; exit 1; } ;;
    esac
done <"$VM_ZFS/modules/order"
[ -c /dev/zfs ] || { echo "SNAPMON-VM-ZFS no /dev/zfs after loading the modules"; exit 1; }
echo "SNAPMON-VM-ZFS modules $(cat /sys/module/zfs/version) loaded"
export VM_ZFS LD_LIBRARY_PATH="$VM_ZFS/userland/lib/x86_64-linux-gnu:$VM_ZFS/userland/usr/lib/x86_64-linux-gnu"
exec unshare -m --propagation private /bin/bash -c '
    set -e
    s=/run/snapmon-zfs-sbin
    mkdir -p $s
    mount -t tmpfs tmpfs $s
    cp -a /usr/sbin/. $s/
    for d in sbin usr/sbin; do
        if [ -d "$VM_ZFS/userland/$d" ]; then cp -a "$VM_ZFS/userland/$d/." $s/; fi
    done
    mount --bind $s /usr/sbin
    [ -x /usr/sbin/zfs ] && [ -x /usr/sbin/zpool ] || { echo "SNAPMON-VM-ZFS no zfs/zpool in /usr/sbin"; exit 1; }
    exec "$@"' zfs-ns "$@"
