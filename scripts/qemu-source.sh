# Shared by setup.sh and scripts/build-qemu (sourced, not run).
#
# fetch_qemu_source DIR: make sure DIR holds QEMU's Debian source package
# (the .orig tarball and the .debian.tar.xz) of suite $QEMU_SRC_SUITE
# (default trixie: QEMU 10.0, whose python/qemu/machine works with PyPI's
# qemu.qmp).  It uses a private apt state under DIR, so the system's apt
# configuration is never changed, and reuses the mirror that this machine's
# apt already uses.  A second call finds the files and does nothing.
#
# Needs: say, die (from the caller).

qemu_src_suite="${QEMU_SRC_SUITE:-trixie}"

fetch_qemu_source() {
    local dir=$1
    if ls "$dir"/qemu_*.orig.tar.* "$dir"/qemu_*.debian.tar.* >/dev/null 2>&1; then
        return 0
    fi
    say "fetching QEMU's Debian source package ($qemu_src_suite) into $dir"
    local apt_dir="$dir/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/parts"
    local mirror
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
             /etc/apt/sources.list.d/*.list 2>/dev/null \
             | sed -nE '/security/d; s/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
             | head -n1 || true)
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt to fetch QEMU's source from"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $qemu_src_suite main" \
        > "$apt_dir/sources.list"
    local aptopts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
                   -o "Dir::Etc::SourceParts=$apt_dir/parts"
                   -o "Dir::State::Lists=$apt_dir/lists" -qq)
    apt-get "${aptopts[@]}" update 2>/dev/null \
        || die "cannot reach $mirror to fetch QEMU's source package (no network?); or set QEMU_SRC=<qemu checkout>"
    (cd "$dir" && apt-get "${aptopts[@]}" source --download-only qemu >/dev/null 2>&1) \
        || die "apt-get source qemu failed; set QEMU_SRC=<qemu checkout> instead"
    rm -rf "$apt_dir"
}
