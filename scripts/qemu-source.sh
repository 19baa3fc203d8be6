# Shared by setup.sh and scripts/build-qemu (sourced, not run).
#
# fetch_qemu_source DIR [SERIES]: make sure DIR holds QEMU's Debian source
# package (the .orig tarball and the .debian.tar.xz) of release series
# SERIES (default 10.0):
#
#   10.0   Debian 13 "trixie" (QEMU 10.0.x; its python/qemu/machine works
#          with PyPI's qemu.qmp, so setup.sh takes qemu.machine from it)
#   10.2   Debian "sid" and "experimental" (QEMU 10.2.x)
#
# The newest version of the series that the archive lists is taken, so a
# Debian upload of the next point release does not break a fresh set-up;
# which one was taken is in the tarball's name.  A private apt state under
# DIR is used, so the system's apt configuration is never changed, with the
# mirror this machine's apt already uses.  A second call finds the files
# and does nothing.
#
# Needs: say, die (from the caller).

qemu_series_suites() {
    case "$1" in
        10.0) echo "trixie" ;;
        10.2) echo "sid experimental" ;;
        *) die "unknown QEMU series '$1' (known: 10.0, 10.2)" ;;
    esac
}

fetch_qemu_source() {
    local dir=$1 series=${2:-10.0}
    if ls "$dir"/qemu_*.orig.tar.* "$dir"/qemu_*.debian.tar.* >/dev/null 2>&1; then
        return 0
    fi
    local suites
    suites=$(qemu_series_suites "$series")
    say "fetching QEMU $series's Debian source package ($suites) into $dir"
    local apt_dir="$dir/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/parts"
    local mirror
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
             /etc/apt/sources.list.d/*.list 2>/dev/null \
             | sed -nE '/security/d; s/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
             | head -n1 || true)
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt to fetch QEMU's source from"
    : > "$apt_dir/sources.list"
    local suite
    for suite in $suites; do
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
            >> "$apt_dir/sources.list"
    done
    local aptopts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
                   -o "Dir::Etc::SourceParts=$apt_dir/parts"
                   -o "Dir::State::Lists=$apt_dir/lists" -qq)
    apt-get "${aptopts[@]}" update 2>/dev/null \
        || die "cannot reach $mirror to fetch QEMU's source package (no network?); or set QEMU_SRC=<qemu checkout>"
    # The newest listed version of the series (epoch 1: "1:10.2.2+ds-1")
    # whose files the mirror really serves (an index may list a version
    # whose files are gone or not there yet).
    local versions version got=
    versions=$(apt-cache "${aptopts[@]}" showsrc qemu 2>/dev/null \
               | sed -nE "s/^Version: (1:${series//./\\.}\.[^[:space:]]+)$/\1/p" \
               | sort -uV -r)
    [ -n "$versions" ] || die "the archive ($suites) lists no QEMU $series source package"
    for version in $versions; do
        if (cd "$dir" && apt-get "${aptopts[@]}" source --download-only "qemu=$version" >/dev/null 2>&1); then
            got=$version; break
        fi
        say "qemu=$version is listed but could not be downloaded; trying an older one"
        rm -f "$dir"/qemu_*
    done
    [ -n "$got" ] || die "no QEMU $series source package could be downloaded ($(echo $versions)); set QEMU_SRC=<qemu checkout> instead"
    rm -rf "$apt_dir"
}
