#!/usr/bin/env bash
# Make sure a local libvirtd answers on qemu:///system.
# A libvirtd that already answers is left exactly as it is (it may be a real hypervisor).
# Otherwise, on a machine without systemd, configure QEMU for running as root without
# cgroups or a security driver, start virtlogd and libvirtd, and say what was changed.
set -euo pipefail
URI=qemu:///system
if virsh -c "$URI" version >/dev/null 2>&1; then
  echo "libvirtd already answers on $URI: leaving its configuration alone"
  exit 0
fi
CONF=/etc/libvirt/qemu.conf
MARK="# added by libvirt-snapshot-exporter scripts/libvirtd-up.sh"
if ! grep -qF "$MARK" "$CONF"; then
  cat >>"$CONF" <<CONF
$MARK (no systemd, root, no cgroups)
cgroup_controllers = [ ]
security_driver = "none"
user = "root"
group = "root"
remember_owner = 0
CONF
  echo "changed $CONF: appended cgroup_controllers=[], security_driver=none, user/group=root, remember_owner=0"
fi
# The host's own daemon: its pid file names a live process rooted in /. A name match (pgrep)
# also finds the libvirt 11.3 chroot's daemons (scripts/libvirt11-chroot.sh), which do not
# answer on this URI.
host_daemon() {
  local pid
  pid=$(cat "/run/$1.pid" 2>/dev/null) && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = / ]
}
host_daemon virtlogd || { virtlogd -d; echo "started virtlogd"; }
host_daemon libvirtd || { libvirtd -d; echo "started libvirtd"; }
for _ in $(seq 1 60); do
  if virsh -c "$URI" version >/dev/null 2>&1; then
    echo "libvirtd answers on $URI"
    exit 0
  fi
  sleep 0.5
done
echo "libvirtd did not answer on $URI within 30 s" >&2
exit 1
