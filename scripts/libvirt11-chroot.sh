#!/usr/bin/env bash
# A second libvirt for the integration tests: Debian trixie (libvirt 11.3, QEMU 10.0) in a
# chroot, its own virtlogd and libvirtd answering on a socket of their own, beside the host's
# libvirt 9.0. The tests and the exporter stay on the host and connect with
#   qemu+unix:///system?socket=$DIR/run/libvirt/libvirt-sock
#
#   scripts/libvirt11-chroot.sh [up]   build once, mount, start the daemons (idempotent)
#   scripts/libvirt11-chroot.sh build  build once, nothing started (CI builds it during make test)
#   scripts/libvirt11-chroot.sh env    print the LSE_* variables the tests read (for eval)
#   scripts/libvirt11-chroot.sh down   stop the chroot's daemons and unmount (host's untouched)
#
# DIR is $LSE_CHROOT (default /var/lib/lse-trixie). The host's libvirtd is never touched:
# every daemon this script stops is found through a pid file under DIR and checked to run
# inside DIR first.
set -euo pipefail

DIR=${LSE_CHROOT:-/var/lib/lse-trixie}
MIRROR=${LSE_TRIXIE_MIRROR:-http://deb.debian.org/debian}
PACKAGES=(libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-clients)
# Test guests' disks and consoles, apart from the host tests' directory: a test session
# removes leftover lse-* files in its image directory, so runs against the two daemons at the
# same time keep to their own files.
IMAGES=/var/lib/libvirt/images/lse-testbed-libvirt11
# Guest XML names these paths: they must be the same files inside the chroot.
SAME_PATHS=("$IMAGES" /var/lib/libvirt/images/lse-testbed /var/cache/libvirt-snapshot-exporter-testbed)
SOCK=$DIR/run/libvirt/libvirt-sock
URI="qemu+unix:///system?socket=$SOCK"
MARK="# added by libvirt-snapshot-exporter scripts/libvirt11-chroot.sh"

case "$DIR" in
  /tmp|/tmp/*|/) echo "LSE_CHROOT=$DIR: must not be / or under /tmp (/tmp is bound into it)" >&2
                 exit 2 ;;
esac

log() { echo "libvirt11-chroot: $*"; }

print_env() {
  echo "export LSE_TEST_URI='$URI'"
  echo "export LSE_LIBVIRTD_PIDFILE='$DIR/run/libvirtd.pid'"
  echo "export LSE_LIBVIRTD_START='chroot $DIR libvirtd -d'"
  echo "export LSE_LIBVIRTD_UP='bash $(cd "$(dirname "$0")" && pwd)/libvirt11-chroot.sh up'"
  echo "export LSE_PID_DIRECTORY='$DIR/run/libvirt/qemu'"
  echo "export LSE_SNAPSHOT_DIRECTORY='$DIR/var/lib/libvirt/qemu/snapshot'"
  echo "export LSE_TESTBED_IMAGES='$IMAGES'"
}

# The pid in DIR's pid file, if that process is alive and rooted in DIR (a stale file could
# name a reused pid, even the host's libvirtd).
chroot_pid() {
  local file=$DIR/run/$1.pid pid
  [ -r "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$(readlink -f "$DIR")" ] \
    && echo "$pid"
}

bind() {  # bind SRC TARGET [--rbind]: once
  mkdir -p "$2"
  mountpoint -q "$2" || mount "${3:---bind}" "$1" "$2"
}

# /tmp must reach the chroot *including tmpfs mounted under it later* (the disk-full test
# mounts one at /tmp/lse-full-*). / is a private mount here (no systemd), so a plain bind
# would not see later mounts: make /tmp a mount of its own with shared propagation and give
# the chroot a slave copy (host mounts and unmounts reach it, nothing goes back).
share_tmp() {
  local prop
  prop=$(findmnt -n -o PROPAGATION --target /tmp)
  if ! mountpoint -q /tmp; then
    # Binding /tmp onto itself hides what is mounted under it at that moment: wait for none.
    for _ in $(seq 1 120); do
      findmnt -n -l -o TARGET | grep -q '^/tmp/' || break
      sleep 1
    done
    mount --rbind /tmp /tmp
    log "made /tmp a bind mount of itself (host change) to share it with the chroot"
    prop=private
  fi
  case "$prop" in
    shared*) ;;
    *) mount --make-shared /tmp; log "made /tmp a shared mount (host change)" ;;
  esac
  if ! mountpoint -q "$DIR/tmp"; then
    mount --bind /tmp "$DIR/tmp"
    mount --make-slave "$DIR/tmp"
  fi
}

mount_all() {
  local root=$1
  bind /proc "$root/proc"
  bind /sys "$root/sys" --rbind
  bind /dev "$root/dev" --rbind  # with /dev/pts and /dev/shm
  mkdir -p "$root/run"
  mountpoint -q "$root/run" || mount -t tmpfs -o mode=755 tmpfs "$root/run"
}

unmount_all() {  # every mount under $1, deepest first; none of them reaches the host
  local root target
  root=$(readlink -f "$1")
  { findmnt -n -l -o TARGET | grep -E "^$root(/|\$)" || true; } | sort -r |
    while read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target"
    done
}

build() {
  [ -e "$DIR/.lse-built" ] && return 0
  local start=$SECONDS work=$DIR.partial LOG=$DIR.build.log
  command -v debootstrap >/dev/null || {
    log "installing debootstrap on the host"
    apt-get install -y -qq debootstrap >/dev/null
  }
  # Build aside and rename when complete, so a half-built tree is never taken for a cached one
  # and `rm -rf` never runs over live bind mounts.
  unmount_all "$work"
  rm -rf "$work"
  trap 'unmount_all "$work"' EXIT
  log "debootstrap trixie into $work"
  debootstrap --variant=minbase trixie "$work" "$MIRROR" >"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; exit 1; }
  # Keep package scripts from starting services inside the chroot: we start what we need.
  printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
  chmod 755 "$work/usr/sbin/policy-rc.d"
  mount_all "$work"
  log "apt-get install ${PACKAGES[*]}"
  chroot "$work" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -q \
    --no-install-recommends "${PACKAGES[@]}" >>"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; exit 1; }
  chroot "$work" apt-get clean
  cat >>"$work/etc/libvirt/qemu.conf" <<CONF
$MARK (no systemd, root, no cgroups, no mount namespace: the tests' paths must be the host's)
cgroup_controllers = [ ]
security_driver = "none"
user = "root"
group = "root"
remember_owner = 0
namespaces = [ ]
CONF
  unmount_all "$work"
  trap - EXIT
  touch "$work/.lse-built"
  mv "$work" "$DIR"
  log "built $DIR in $((SECONDS - start)) s ($(du -sh "$DIR" | cut -f1))"
}

up() {
  build
  mount_all "$DIR"
  for path in "${SAME_PATHS[@]}"; do
    mkdir -p "$path"
    bind "$path" "$DIR$path"
  done
  share_tmp
  chroot_pid virtlogd >/dev/null || { chroot "$DIR" virtlogd -d; log "started virtlogd"; }
  chroot_pid libvirtd >/dev/null || { chroot "$DIR" libvirtd -d; log "started libvirtd"; }
  for _ in $(seq 1 60); do
    if virsh -c "$URI" version >/dev/null 2>&1; then
      log "libvirtd $(chroot "$DIR" libvirtd --version | awk '{print $NF}') answers on $URI"
      return 0
    fi
    sleep 0.5
  done
  echo "libvirtd in $DIR did not answer on $URI within 30 s" >&2
  exit 1
}

down() {
  local name pid
  for name in libvirtd virtlogd; do
    if pid=$(chroot_pid "$name"); then
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      log "stopped $name ($pid)"
    fi
  done
  # QEMUs of guests left running would keep the mounts busy: they are the chroot's own.
  for file in "$DIR"/run/libvirt/qemu/*.pid; do
    [ -e "$file" ] || continue
    pid=$(cat "$file")
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$(readlink -f "$DIR")" ] && kill -9 "$pid"
  done
  [ -d "$DIR" ] && unmount_all "$DIR"
  log "unmounted $DIR"
}

case "${1:-up}" in
  build) build ;;
  up) up ;;
  env) print_env ;;
  down) down ;;
  *) echo "usage: $0 [build|up|env|down]" >&2; exit 2 ;;
esac
