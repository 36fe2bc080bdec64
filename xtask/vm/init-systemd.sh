#!/bin/busybox sh
# snapmon vm-test, systemd guest: PID 1 of the initramfs. Loads virtio/ext4/9p, mounts the
# throw-away qcow2 overlay of the debootstrap root (/dev/vda) and the host root read-only at
# /host (test binaries, the .deb), installs the test unit, then hands PID 1 to systemd.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /vm.env
echo "SNAPMON-VM-BOOTED $(uname -r) (systemd guest)"
for m in $(cat /mods/order); do
    insmod "/mods/$m.ko" || echo "SNAPMON-VM-WARN insmod $m failed"
done
R=/newroot
mkdir -p $R
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 /dev/vda $R; then
    echo "SNAPMON-VM-FATAL cannot mount the guest root (/dev/vda)"
    poweroff -f
fi
mkdir -p $R/host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R/host; then
    echo "SNAPMON-VM-FATAL cannot mount the host root over 9p"
    poweroff -f
fi
# The guest kernel's modules, for systemd's and the agent's needs.
mkdir -p "$R/lib/modules/$VM_KVER"
mount --bind "$R/host$VM_MODROOT/lib/modules/$VM_KVER" "$R/lib/modules/$VM_KVER"
cp /vm.env $R/etc/snapmon-vm.env
# No login prompts on the console the host parses.
for u in serial-getty@ttyS0.service getty@tty1.service; do ln -sf /dev/null "$R/etc/systemd/system/$u"; done
# A libvirt image store with a qcow2 that has snapshots (made on the host with qemu-img).
mkdir -p $R/var/lib/libvirt/images
cp "$R/host$VM_QCOW2" $R/var/lib/libvirt/images/vm1.qcow2
chmod 0666 $R/var/lib/libvirt/images/vm1.qcow2
cat > $R/etc/systemd/system/snapmon-vm-test.service <<UNIT
[Unit]
Description=snapmon vm-test: the systemd suites, then power off
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/bash /host$VM_GUEST_SCRIPT
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
UNIT
ln -sf ../snapmon-vm-test.service $R/etc/systemd/system/multi-user.target.wants/snapmon-vm-test.service
umount /proc /sys
mount --move /dev $R/dev
exec switch_root $R /lib/systemd/systemd
