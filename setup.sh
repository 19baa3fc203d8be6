#!/usr/bin/env bash
# One-time, idempotent set-up of everything the avocado-vhost suite needs on a
# Debian 12 machine (run as root, or with sudo available for apt-get):
#
#   * a QEMU to test: $QEMU_TEST_QEMU_BINARY when set, otherwise Debian's
#     qemu-system-x86 (installed with apt-get when missing);
#   * a virtualenv in .venv with this package, avocado and qemu.qmp from PyPI;
#   * qemu.machine, which is not on PyPI: taken from $QEMU_SRC/python when
#     QEMU_SRC names a QEMU checkout, otherwise from the python/ folder of
#     QEMU's Debian source package (fetched with a private apt state, so the
#     system's apt configuration is left untouched).  Only qemu/machine is
#     installed, so PyPI's qemu.qmp is never shadowed.
#
# A second run finds everything in place and only re-checks it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="$here/.venv"
# Outside the clone, shared with scripts/build-qemu.
src_cache="${AVOCADO_VHOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/avocado-vhost}/src"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
# fetch_qemu_source; its suite (QEMU_SRC_SUITE, default trixie: QEMU 10.0)
# is one whose python/qemu/machine works with PyPI's qemu.qmp (7.2's does
# not: it passes 'args=' to qemu.qmp's cmd()).
. "$here/scripts/qemu-source.sh"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@";
    elif command -v sudo >/dev/null; then sudo "$@";
    else die "need root (or sudo) to run: $*"; fi
}

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq \
            || die "apt-get update failed: no network to Debian's package registry?"
        apt_updated=1
    fi
    say "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# --- system packages -------------------------------------------------------
need=()
command -v xz >/dev/null || need+=(xz-utils)
command -v setpriv >/dev/null || need+=(util-linux)
python=/usr/bin/python3
[ -x "$python" ] || { need+=(python3); }
if [ -x "$python" ] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    need+=(python3-venv)
fi
# DPDK's testpmd (a virtio driver and vhost-user peer nobody here wrote)
# for the interop tests; Debian puts it in dpdk-dev, not in dpdk.
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
command -v stdbuf >/dev/null || need+=(coreutils)
if [ -n "${QEMU_TEST_QEMU_BINARY:-}" ]; then
    say "QEMU under test: $QEMU_TEST_QEMU_BINARY (from QEMU_TEST_QEMU_BINARY)"
elif ! command -v qemu-system-x86_64 >/dev/null; then
    need+=(qemu-system-x86)
fi
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
[ -x "$python" ] || python=$(command -v python3)

# --- virtualenv --------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    say "creating virtualenv $venv"
    "$python" -m venv "$venv" || die "could not create a virtualenv with $python"
fi
stamp="$venv/.installed-$(cat "$here/setup.py" "$here/pyproject.toml" | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
    say "installing the package and its dependencies from PyPI"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev]" \
        || die "pip install failed: no network to PyPI?"
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi

# --- qemu.machine from QEMU's own source ------------------------------------
# It lives in its own folder, added to sys.path by a .pth file; qemu is a
# namespace package, so qemu.machine (here) and qemu.qmp (PyPI) combine.
mdir="$venv/qemu-machine"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$mdir/qemu"
if [ -n "${QEMU_SRC:-}" ]; then
    [ -f "$QEMU_SRC/python/qemu/machine/machine.py" ] \
        || die "QEMU_SRC=$QEMU_SRC has no python/qemu/machine/machine.py"
    want="$(cd "$QEMU_SRC/python/qemu/machine" && pwd)"
    if [ "$(readlink "$mdir/qemu/machine" 2>/dev/null)" != "$want" ]; then
        say "using qemu.machine from $want"
        rm -rf "$mdir/qemu/machine"
        ln -s "$want" "$mdir/qemu/machine"
    fi
elif [ ! -f "$mdir/qemu/machine/machine.py" ] || [ -L "$mdir/qemu/machine" ]; then
    rm -rf "$mdir/qemu/machine"
    # The same cache as scripts/build-qemu: the source is fetched once.
    fetch_qemu_source "$src_cache"
    tarball=$(ls "$src_cache"/qemu_*.orig.tar.* | head -n1)
    tmp=$(mktemp -d "$venv/x.XXXXXX")
    tar -xf "$tarball" -C "$tmp" --wildcards '*/python/qemu/machine/*' \
        || die "could not extract python/qemu/machine from $tarball"
    mv "$tmp"/*/python/qemu/machine "$mdir/qemu/machine"
    rm -rf "$tmp"
    say "qemu.machine installed from $(basename "$tarball")"
fi
echo "$mdir" > "$site/qemu-machine.pth"

"$venv/bin/python" - <<'PY' || die "qemu.machine/qemu.qmp not importable; rerun ./setup.sh, or set QEMU_SRC=<qemu checkout>"
import qemu.machine, qemu.qmp
PY

# --- the real guest's kernel and initramfs ---------------------------------
# From Debian's current packages (never installed on the host), cached
# outside the clone; every run asks apt whether the archive moved on (a new
# kernel after a security update) and makes them again only then.  When
# they cannot be made the reason is printed and recorded, and the guest
# tests CANCEL with it: the rest of the suite still runs.
# Huge pages for membackend=hugetlbfs (test_read_guest_mem.py): a mount and
# enough free 2 MiB pages for one 256 MiB guest and some slack.  Root only,
# and only what is missing; elsewhere those tests CANCEL with the reason.
huge_pages=160
if [ "$(id -u)" -eq 0 ]; then
    if ! grep -q ' hugetlbfs ' /proc/mounts; then
        mkdir -p /dev/hugepages && mount -t hugetlbfs none /dev/hugepages \
            || say "could not mount hugetlbfs: the hugetlbfs tests will CANCEL"
    fi
    free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    total=$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)
    if [ "${free:-0}" -lt "$huge_pages" ]; then
        echo $(( total + huge_pages - free )) > /proc/sys/vm/nr_hugepages \
            || say "could not reserve huge pages: the hugetlbfs tests will CANCEL"
    fi
fi

"$venv/bin/python" -m avocado_vhost.peers.guest.assets \
    || say "error: the guest assets could not be made (above); the guest tests will CANCEL"

# --- Avocado's settings for this machine -------------------------------------
# The tests mostly wait (on QEMU, on a guest under TCG) and Avocado spends
# about half a second starting each one: twice as many parallel tasks as
# CPUs keep the CPUs busy (scripts/bench_jobs.py --profile main: 0.64x of
# the job's wall time with 2 tasks, on 2 CPUs).  Read by the suite's
# settings plugin; ~/.config/avocado/avocado.conf and
# --max-parallel-tasks still win.
mkdir -p "$venv/etc"
printf '%s\n' "# written by ./setup.sh (avocado_vhost/runner/avocado_settings.py reads it)" \
    "[run]" "max_parallel_tasks = $(( 2 * $(nproc) ))" \
    > "$venv/etc/avocado-vhost.conf"

# --- the QEMU under test -----------------------------------------------------
"$venv/bin/python" -m avocado_vhost.peers.qemu.binary --check \
    || die "the QEMU binary cannot be used (see above)"
say "ready: run tests with $venv/bin/avocado run tests/functional"
