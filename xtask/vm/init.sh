#!/bin/busybox sh
# snapmon vm-test: PID 1 of the guest. Loads the 9p modules shipped in this initramfs, mounts the
# host root read-only over virtio-9p and runs xtask/vm/guest.sh from it in a chroot with fresh
# tmpfs/proc/sysfs/devtmpfs/tracefs/bpffs. Results go to the serial console; the host parses
# the SNAPMON-VM-* markers and enforces the timeout.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /vm.env
echo "SNAPMON-VM-BOOTED $(uname -r)"
for m in $(cat /mods/order); do
    insmod "/mods/$m.ko" || echo "SNAPMON-VM-WARN insmod $m failed"
done
R=/newroot
mkdir -p $R
# cache=loose: the host root does not change during a run, and TCG makes every 9p walk costly.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R; then
    echo "SNAPMON-VM-FATAL cannot mount the host root over 9p"
    poweroff -f
fi
# A workspace under one of the dirs that get fresh tmpfs (CI may clone into /tmp) is carried
# over with a bind mount, so the binaries and scripts stay reachable.
ws_hidden=0
case "$VM_WORKSPACE" in /tmp/*|/run/*|/var/tmp/*) ws_hidden=1 ;; esac
if [ $ws_hidden = 1 ]; then mkdir -p /ws && mount --bind "$R$VM_WORKSPACE" /ws; fi
for d in tmp run var/tmp dev/shm; do mount -t tmpfs tmpfs $R/$d 2>/dev/null || true; done
if [ $ws_hidden = 1 ]; then mkdir -p "$R$VM_WORKSPACE" && mount --bind /ws "$R$VM_WORKSPACE"; fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t bpf bpf $R/sys/fs/bpf
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null || true
# The guest kernel's own modules (depmod'ed on the host) replace the host's /lib/modules when
# the host has one to mount over; guest.sh also passes `modprobe -d` so none is needed.
if [ -d $R/lib/modules ]; then
    mount -t tmpfs tmpfs $R/lib/modules
    mkdir -p "$R/lib/modules/$VM_KVER"
    mount --bind "$R$VM_MODROOT/lib/modules/$VM_KVER" "$R/lib/modules/$VM_KVER"
fi
# The host's agent state is not the guest's: each start walks the evidence dir to size it, and
# host runs leave hundreds of entries there (11-20 s per start over 9p under TCG).
[ -d $R/var/lib/snapmon ] && mount -t tmpfs tmpfs $R/var/lib/snapmon
# LVM writes backup/archive under /etc/lvm: give it a writable copy of the host's.
mkdir -p /lvm-etc
cp -a $R/etc/lvm/. /lvm-etc/ 2>/dev/null
mount -t tmpfs tmpfs $R/etc/lvm
cp -a /lvm-etc/. $R/etc/lvm/
cp /vm.env $R/run/snapmon-vm.env
# Kernel threads resolve paths from this (initramfs) root, not the chroot's: ZFS opens file
# vdevs from a taskq, so /tmp here must be the guest's /tmp too.
ln -s $R/tmp /tmp
chroot $R /bin/bash "$VM_GUEST_SCRIPT"
echo "SNAPMON-VM-DONE"
sync
poweroff -f
