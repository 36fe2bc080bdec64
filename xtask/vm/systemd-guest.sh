#!/bin/bash
# snapmon vm-test, systemd guest: runs as a oneshot unit under systemd (PID 1). Runs each
# systemd suite's guest tests (the package, installed and driven through systemctl), prints
# the result markers on the console the host parses, then powers off.
set -u
. /etc/snapmon-vm.env
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "SNAPMON-VM-GUEST $(uname -r) pid1=$(cat /proc/1/comm) nproc=$(nproc) mem=$(awk '/MemTotal/{print $2}' /proc/meminfo)kB"
cd "/host$VM_WORKSPACE"
for spec in $VM_TESTS; do
    name=${spec%%=*}
    bin=${spec#*=}
    echo "SNAPMON-VM-BEGIN $name"
    start=$(date +%s)
    skip="VM_SKIP_$name"
    extra=""
    if [ -n "${!skip:-}" ]; then extra="--skip ${!skip}"; fi
    SNAPMON_DEB="/host$VM_DEB" SNAPMON_E2E_SYSTEMD=1 RUST_BACKTRACE=1 \
        "/host$bin" --test-threads=1 --color never $VM_TEST_ARGS $extra 2>&1
    rc=$?
    echo "SNAPMON-VM-END $name rc=$rc secs=$(( $(date +%s) - start ))"
done
echo "SNAPMON-VM-DONE"
sync
systemctl poweroff --force --force
