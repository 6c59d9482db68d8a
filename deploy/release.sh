#!/usr/bin/env bash
# Builds the release artifacts of smtp2oauth into dist/, tests them, and prints their SHA-256.
#
#   deploy/release.sh [--allow-dirty] [--platform linux|windows]...
#                                       everything below, from a clean checkout (docs/deploy.md);
#                                       --platform: only that platform's artifacts and smoke
#                                       tests (repeatable; default: all), to rebuild one quickly
#   deploy/release.sh --check           fast: the build tools are present and the packaging
#                                       metadata is valid (CI runs this, not the build)
#   deploy/release.sh setup             installs the build tools (Debian packages, Rust targets,
#                                       cargo-zigbuild and zig from PyPI)
#   deploy/release.sh deb --binary PATH --arch amd64|arm64 --out DIR [--version V] [--fast]
#                                       one Debian package from a built binary (--fast: gzip -1
#                                       instead of xz, for tests)
#   deploy/release.sh deb-test FILE.deb installs the package on this machine, checks it, purges it
#
# What the build makes, with v the version in Cargo.toml:
#   smtp2oauth-<v>-x86_64-linux.tar.gz   the binary, the example configuration, README, LICENSE,
#   smtp2oauth-<v>-aarch64-linux.tar.gz  docs/, the systemd unit and its low-ports drop-in
#   smtp2oauth_<v>_amd64.deb             Debian/Ubuntu packages (user, store, unit, conffile)
#   smtp2oauth_<v>_arm64.deb
#   smtp2oauth-<v>-oci.tar               the container image for linux/amd64 and linux/arm64:
#                                        one manifest list, as an OCI archive
#   smtp2oauth-<v>-x86_64-windows.zip    smtp2oauth.exe (x86_64-pc-windows-gnu, mingw-w64), the
#                                        example configuration with Windows paths, README,
#                                        LICENSE, docs\ (docs/windows.md: install as a service)
#   SHA256SUMS
#
# The Linux binaries have the legacy-tls feature with OpenSSL compiled in (legacy-tls-vendored:
# no libssl to match, Debian 11 has 1.1 and Debian 12 has 3) and link glibc dynamically, built
# with cargo-zigbuild against glibc GLIBC_FLOOR below: they run on Debian 11 and later, Ubuntu
# 20.04 and later, Raspberry Pi OS (64-bit) bullseye and later. The build checks every binary's
# GLIBC_ symbol versions and shared libraries against that floor. The container image holds the
# same binaries with the few glibc libraries they load (from this machine for amd64, from
# Debian's libc6-arm64-cross for arm64).
#
# Smoke tests, each printing PASS/FAIL: every binary checks the example configuration, from its
# tarball and on Debian 11's glibc 2.31 (a bullseye tree made by debootstrap: a chroot for amd64,
# qemu-user-static -L for arm64; arm64 always runs under qemu); the amd64 image with deploy/build-image.sh --test (messages
# over plain SMTP, implicit TLS and TLS 1.0, health checks, SIGTERM); the arm64 image, taken from
# the OCI archive, running its relay under qemu-aarch64-static: a curl AUTH PLAIN message lands in
# the capture directory, and one over TLS 1.0; the amd64 package installed, checked and purged on
# this machine (deb-test); the Windows zip's exe under Wine (deploy/windows/wine-smoke.sh: in a
# console and as a service, a curl AUTH PLAIN message captured, Ctrl-C and the service's stop
# control each shutting it down cleanly). The build needs root (buildah, dpkg) and an x86_64
# Debian 12 machine.
#
# Exit status: 0 built and all passed; 1 a step or check failed; 2 usage; 77 (deb-test only) this
# machine cannot install packages (not root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")

# The oldest glibc the Linux binaries need: Debian 11's.
GLIBC_FLOOR=2.31
# Build tools from PyPI, pinned: cargo-zigbuild drives zig's linker and C compiler for each
# target's glibc version.
ZIGBUILD_VERSION=0.24.0
ZIG_VERSION=0.17.0
TOOLS_DIR=${SMTP2OAUTH_RELEASE_TOOLS:-${HOME:-/root}/.cache/smtp2oauth-release}
# Debian packages of the build and its smoke tests (deploy/release.sh setup installs them):
# buildah + netavark: the image; qemu-user-static: runs arm64 binaries; libc6-arm64-cross +
# libgcc-s1-arm64-cross: the arm64 image's C library; binutils: readelf; perl + make: OpenSSL's
# build; python3-venv: the tools' virtual environment; curl + openssl: smoke tests; systemd:
# systemd-analyze verify; adduser + init-system-helpers: what the package's scripts call;
# debootstrap: Debian 11's C library, to run the binaries on it; gcc-mingw-w64-x86-64: the
# Windows exe's linker and OpenSSL's compiler for it; wine64: runs the exe in the smoke test;
# zip + unzip: the Windows archive.
APT_PACKAGES="buildah netavark qemu-user-static libc6-arm64-cross libgcc-s1-arm64-cross binutils perl make python3-venv curl openssl systemd adduser init-system-helpers debootstrap gcc-mingw-w64-x86-64 wine64 zip unzip"
# Libraries a Linux binary may load, with the Debian package that holds each.
# (The release binaries load glibc alone; libssl3 is for a package of a binary linked to the
# system's OpenSSL, such as the test build.)
ALLOWED_LIBS="libc.so.6:libc6 libm.so.6:libc6 libpthread.so.0:libc6 libdl.so.2:libc6 librt.so.1:libc6 libutil.so.1:libc6 ld-linux-x86-64.so.2:libc6 ld-linux-aarch64.so.1:libc6 libgcc_s.so.1:libgcc-s1 libssl.so.3:libssl3 libcrypto.so.3:libssl3"
# Every Linux architecture: name in file names, Rust target, Debian and OCI architecture.
LINUX_ARCHES="x86_64 aarch64"
# Every Rust target the release builds (the Windows one: deploy/windows/release-windows.sh).
RUST_TARGETS="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-pc-windows-gnu"

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }
usage_error() { echo "release: $*" >&2; exit 2; }
step() { echo "== $*"; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --- Architectures ---------------------------------------------------------------------------------

rust_target() {
    case "$1" in x86_64) echo x86_64-unknown-linux-gnu ;; aarch64) echo aarch64-unknown-linux-gnu ;; esac
}
deb_arch() {
    case "$1" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) return 1 ;; esac
}
arch_of_deb() {
    case "$1" in amd64) echo x86_64 ;; arm64) echo aarch64 ;; *) return 1 ;; esac
}
# What readelf -h says of a binary of that architecture.
elf_machine() {
    case "$1" in x86_64) echo "Advanced Micro Devices X86-64" ;; aarch64) echo AArch64 ;; esac
}
# How this (x86_64) machine runs a program of that architecture.
runner() {
    case "$1" in x86_64) ;; aarch64) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;; esac
}

# --- Small helpers ---------------------------------------------------------------------------------

workspace_version() {
    (cd "$repo" && cargo metadata --no-deps --format-version 1 --offline) | python3 -c '
import json, sys
packages = json.load(sys.stdin)["packages"]
print(next(p["version"] for p in packages if p["name"] == "smtp2oauth"))'
}

# Replaces the one occurrence of $2 in the text $1 with $3; fails (naming $4) if it occurs
# zero or several times, so that a changed source cannot slip through unadjusted.
replace_once() {
    local text=$1 old=$2 new=$3 what=$4 rest
    rest=${text#*"$old"}
    if [ "$rest" = "$text" ] || [ "${rest#*"$old"}" != "$rest" ]; then
        echo "release: $what: expected exactly one '$old'" >&2
        return 1
    fi
    printf '%s' "${text%%"$old"*}$new$rest"
}

# Runs a program built for an architecture (under qemu for aarch64).
run_arch() {
    local arch=$1
    shift
    # shellcheck disable=SC2046 # the runner is a command and its options
    $(runner "$arch") "$@"
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

# --- The packaged configuration and unit (also checked by --check) ---------------------------------

# config/smtp2oauth.example.toml with the package's paths: the store in /var/lib/smtp2oauth
# (the unit's state directory) and listeners named so that the environment can move them.
packaged_config() {
    local text
    text=$(cat "$repo/config/smtp2oauth.example.toml")
    text=$(replace_once "$text" "$(sed -n '1,/^$/p' "$repo/config/smtp2oauth.example.toml")" '# smtp2oauth configuration, installed by the smtp2oauth package.
#
# As shipped it works at once: the account below uses route = "capture", which writes every
# accepted message to /var/lib/smtp2oauth/capture/ instead of sending it, so you can point a
# printer at the relay and see what it sends before you connect Microsoft 365. Give the example
# device a password of your own first: everyone knows this one (see [[devices]] below).
#
# After an edit: `smtp2oauth check-config`, then `systemctl restart smtp2oauth`. Upgrades keep
# your changes (a conffile). Every key is described in
# /usr/share/doc/smtp2oauth/docs/configuration.md; every key can also be set from the
# environment, e.g. SMTP2OAUTH_SERVER__HOSTNAME=relay.example.lan.' config) || return 1
    text=$(replace_once "$text" '[[listeners]]
address = "0.0.0.0:2525"' '[[listeners]]
name = "smtp"
address = "0.0.0.0:2525"' config) || return 1
    text=$(replace_once "$text" '[[listeners]]
address = "0.0.0.0:4650"' '[[listeners]]
name = "smtps"
address = "0.0.0.0:4650"' config) || return 1
    text=$(replace_once "$text" 'dir = "./data"                        # relative to the working directory' \
        'dir = "/var/lib/smtp2oauth"           # the unit'"'"'s StateDirectory: owned by the smtp2oauth user' config) || return 1
    text=$(replace_once "$text" '# capture_dir = "./data/capture"      # default: <store dir>/capture' \
        '# capture_dir = "/var/lib/smtp2oauth/capture"   # the default: <store dir>/capture' config) || return 1
    printf '%s\n' "$text"
}

# deploy/smtp2oauth.service with the package's binary and its system user instead of a dynamic
# one (so that the store belongs to a user the admin can run commands as).
packaged_unit() {
    local text header
    text=$(cat "$here/smtp2oauth.service")
    header=${text%%"[Unit]"*}
    text=$(replace_once "$text" "$header" '# systemd unit of the smtp2oauth Debian package: deploy/smtp2oauth.service with the package'"'"'s
# binary (/usr/bin/smtp2oauth) and its system user smtp2oauth instead of a dynamic one.
#
# The package enables the unit but does not start it: edit /etc/smtp2oauth/smtp2oauth.toml, run
# `smtp2oauth check-config`, then `systemctl start smtp2oauth`. Change the unit with
# `systemctl edit smtp2oauth` (a drop-in that upgrades keep), not here.

' unit) || return 1
    text=$(replace_once "$text" 'ExecStart=/usr/local/bin/smtp2oauth serve' 'ExecStart=/usr/bin/smtp2oauth serve' unit) || return 1
    text=$(replace_once "$text" 'DynamicUser=yes' 'User=smtp2oauth
Group=smtp2oauth' unit) || return 1
    text=$(replace_once "$text" 'StateDirectoryMode=0750' 'StateDirectoryMode=0700' unit) || return 1
    text=$(replace_once "$text" '# (deploy/smtp2oauth.service.d/low-ports.conf is that drop-in.)' \
        '# (/usr/share/doc/smtp2oauth/examples/low-ports.conf is that drop-in.)' unit) || return 1
    printf '%s\n' "$text"
}

# --- Debian package --------------------------------------------------------------------------------

# The Depends field for a binary: the package of each library it loads, glibc at the newest
# symbol version the binary needs (as dpkg-shlibdeps would say).
deb_depends() {
    local binary=$1 lib entry pkg deps="adduser" glibc
    for lib in $(needed_libs "$binary"); do
        pkg=""
        for entry in $ALLOWED_LIBS; do
            [ "${entry%%:*}" = "$lib" ] && pkg=${entry#*:}
        done
        [ -n "$pkg" ] || { echo "release: $binary loads $lib, which the package cannot depend on" >&2; return 1; }
        if [ "$pkg" = libc6 ]; then
            glibc=$(glibc_versions "$binary" | tail -1)
            pkg="libc6${glibc:+ (>= $glibc)}"
        fi
        case ", $deps, " in *", $pkg, "*) ;; *) deps="$deps, $pkg" ;; esac
    done
    echo "$deps"
}

# The GLIBC_ symbol versions an ELF file requires, oldest first.
glibc_versions() {
    LC_ALL=C readelf -V -W "$1" | grep -oE 'Name: GLIBC_[0-9.]+' | sed 's/.*GLIBC_//' | sort -uV
}

needed_libs() {
    LC_ALL=C readelf -d -W "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
}

# Lays out the package's tree in DIR: files, modes, DEBIAN/ with control and scripts.
stage_deb() {
    local binary=$1 arch=$2 version=$3 dir=$4 doc depends
    doc=$dir/usr/share/doc/smtp2oauth
    install -d -m 0755 "$dir/DEBIAN" "$dir/usr/bin" "$dir/lib/systemd/system" "$dir/etc/smtp2oauth" "$doc/examples" "$doc/docs"
    install -m 0755 "$binary" "$dir/usr/bin/smtp2oauth"
    packaged_unit >"$dir/lib/systemd/system/smtp2oauth.service"
    packaged_config >"$dir/etc/smtp2oauth/smtp2oauth.toml"
    chmod 0644 "$dir/lib/systemd/system/smtp2oauth.service"
    # root's until postinst gives the group smtp2oauth read access (dpkg-statoverride).
    chmod 0600 "$dir/etc/smtp2oauth/smtp2oauth.toml"
    install -m 0644 "$repo/README.md" "$here/debian/copyright" "$doc/"
    install -m 0644 "$repo"/docs/*.md "$doc/docs/"
    install -m 0644 "$repo/config/smtp2oauth.example.toml" "$here/smtp2oauth.service.d/low-ports.conf" "$doc/examples/"
    install -m 0644 "$here/debian/conffiles" "$dir/DEBIAN/conffiles"
    install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$dir/DEBIAN/"
    depends=$(deb_depends "$binary") || return 1
    (cd "$dir" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\n' | LC_ALL=C sort \
        | xargs md5sum >DEBIAN/md5sums)
    chmod 0644 "$dir/DEBIAN/md5sums"
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
        -e "s/@INSTALLED_SIZE@/$(du -sk --exclude=DEBIAN "$dir" | cut -f1)/" \
        "$here/debian/control.in" >"$dir/DEBIAN/control"
    find "$dir" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
}

# deploy/release.sh deb --binary PATH --arch amd64|arm64 --out DIR [--version V] [--fast]
cmd_deb() {
    local binary="" arch="" out="" version="" compress=(-Zxz) work file
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --binary) binary=${2:?--binary needs a path}; shift 2 ;;
            --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
            --out) out=${2:?--out needs a directory}; shift 2 ;;
            --version) version=${2:?--version needs a version}; shift 2 ;;
            --fast) compress=(-Zgzip -z1); shift ;;
            *) usage_error "deb: unknown argument '$1'" ;;
        esac
    done
    [ -n "$binary" ] && [ -n "$arch" ] && [ -n "$out" ] || usage_error "deb needs --binary, --arch and --out"
    arch_of_deb "$arch" >/dev/null || usage_error "deb: --arch is amd64 or arm64, not '$arch'"
    [ -f "$binary" ] && [ -x "$binary" ] || die "$binary is not an executable file"
    check_machine "$binary" "$(arch_of_deb "$arch")" || die "$binary is not built for $arch"
    [ -n "$version" ] || version=$(workspace_version)
    work=$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-deb.XXXXXX")
    if ! stage_deb "$binary" "$arch" "$version" "$work/root"; then
        rm -rf "$work"
        die "cannot lay out the package"
    fi
    mkdir -p "$out"
    file="$out/smtp2oauth_${version}_${arch}.deb"
    dpkg-deb --root-owner-group "${compress[@]}" --build "$work/root" "$file" >/dev/null
    rm -rf "$work"
    echo "$file"
}

check_machine() {
    [ "$(LC_ALL=C readelf -h "$1" | sed -n 's/^ *Machine: *//p')" = "$(elf_machine "$2")" ]
}

# --- deb-test: the package installed on this machine ------------------------------------------------

# shellcheck source=deploy/debian/deb-test.sh
. "$here/debian/deb-test.sh"

# --- Windows: the exe, the zip, their checks and the Wine smoke test ---------------------------------

# shellcheck source=deploy/windows/release-windows.sh
. "$here/windows/release-windows.sh"

# --- Setup and check ---------------------------------------------------------------------------------

venv_bin() { echo "$TOOLS_DIR/venv-zigbuild-$ZIGBUILD_VERSION-zig-$ZIG_VERSION/bin"; }

cmd_setup() {
    local missing="" p t
    for p in $APT_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        step "installing Debian packages:$missing"
        apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    fi
    for t in $RUST_TARGETS; do
        rustup target list --installed | grep -qx "$t" || rustup target add "$t"
    done
    if [ ! -x "$(venv_bin)/cargo-zigbuild" ]; then
        step "installing cargo-zigbuild $ZIGBUILD_VERSION and zig $ZIG_VERSION (PyPI) into $(dirname "$(venv_bin)")"
        python3 -m venv "$(dirname "$(venv_bin)")"
        "$(venv_bin)/pip" install --quiet --disable-pip-version-check \
            "cargo-zigbuild==$ZIGBUILD_VERSION" "ziglang==$ZIG_VERSION"
    fi
    echo "release setup: done"
}

# The tools a full build needs, each present.
check_tools() {
    local p t
    for p in $APT_PACKAGES; do
        if dpkg -s "$p" >/dev/null 2>&1; then
            pass "Debian package $p is installed"
        else
            fail "Debian package $p is missing (deploy/release.sh setup installs it)"
        fi
    done
    for t in $RUST_TARGETS; do
        if rustup target list --installed 2>/dev/null | grep -qx "$t"; then
            pass "Rust target $t is installed"
        else
            fail "Rust target $t is missing (deploy/release.sh setup adds it)"
        fi
    done
    if [ "$("$(venv_bin)/cargo-zigbuild" --version 2>/dev/null)" = "cargo-zigbuild $ZIGBUILD_VERSION" ] \
        && [ "$("$(venv_bin)/python" -m ziglang version 2>/dev/null)" = "$ZIG_VERSION" ]; then
        pass "cargo-zigbuild $ZIGBUILD_VERSION and zig $ZIG_VERSION are in $(dirname "$(venv_bin)")"
    else
        fail "cargo-zigbuild $ZIGBUILD_VERSION / zig $ZIG_VERSION are missing (deploy/release.sh setup installs them)"
    fi
}

# The packaging metadata, built around a stand-in binary: control, conffiles, scripts, unit,
# configuration; then the tree as dpkg-deb builds it.
check_packaging() {
    local work=$1 version root out
    version=$(workspace_version) && pass "version $version from Cargo.toml" || fail "cannot read the version from Cargo.toml"
    (cd "$repo" && cargo metadata --no-deps --format-version 1 --offline) \
        | grep -q '"legacy-tls-vendored"' && pass "the feature legacy-tls-vendored exists" \
        || fail "crates/smtp2oauth has no feature legacy-tls-vendored"
    for f in README.md LICENSE config/smtp2oauth.example.toml deploy/smtp2oauth.service \
        deploy/smtp2oauth.service.d/low-ports.conf deploy/debian/copyright; do
        [ -s "$repo/$f" ] && pass "$f is there" || fail "$f is missing"
    done
    for f in postinst prerm postrm; do
        if sh -n "$here/debian/$f" && [ -x "$here/debian/$f" ]; then
            pass "maintainer script $f: executable, sh -n clean"
        else
            fail "maintainer script $f: not executable, or sh -n fails"
        fi
    done
    root=$work/deb-root
    if stage_deb /bin/true amd64 "${version:-0}" "$root"; then
        pass "the package tree lays out (stand-in binary)"
    else
        fail "the package tree does not lay out"
        return
    fi
    check_conffiles "$root"
    check_config_toml "$root/etc/smtp2oauth/smtp2oauth.toml"
    check_unit "$root/lib/systemd/system/smtp2oauth.service" "$work"
    out=$(dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$work/check.deb" 2>&1) \
        && out=$(dpkg-deb --field "$work/check.deb" Package Version Architecture Depends 2>&1) \
        && pass "dpkg-deb builds the package: $(echo "$out" | tr '\n' ';')" \
        || fail "dpkg-deb refuses the package: $out"
}

check_conffiles() {
    local root=$1 f n=0
    while read -r f; do
        n=$((n + 1))
        [ -f "$root$f" ] && pass "conffile $f is in the package" || fail "conffile $f is not in the package"
    done <"$root/DEBIAN/conffiles"
    [ "$n" -gt 0 ] || fail "DEBIAN/conffiles is empty"
}

check_config_toml() {
    local out
    if out=$(python3 -c '
import sys, tomllib
config = tomllib.load(open(sys.argv[1], "rb"))
assert config["store"]["dir"] == "/var/lib/smtp2oauth", config["store"]
names = [l.get("name") for l in config["listeners"]]
assert names == ["smtp", "smtps"], names
assert all(a["route"] == "capture" for a in config["accounts"]), "every account captures"
print(len(config["listeners"]), "listeners,", len(config["accounts"]), "account(s)")' "$1" 2>&1); then
        pass "the packaged configuration parses: store /var/lib/smtp2oauth, $out"
    else
        fail "the packaged configuration: $out"
    fi
}

# systemd-analyze verify, with the binary path pointing at a program that exists here.
check_unit() {
    local unit=$1 work=$2 copy out
    grep -qx 'User=smtp2oauth' "$unit" && grep -qx 'StateDirectoryMode=0700' "$unit" \
        && ! grep -q '^DynamicUser=' "$unit" && grep -q '^ExecStart=/usr/bin/smtp2oauth serve' "$unit" \
        && pass "the packaged unit runs /usr/bin/smtp2oauth as User=smtp2oauth, store mode 0700" \
        || fail "the packaged unit: $(grep -E '^(User|DynamicUser|StateDirectoryMode|ExecStart)=' "$unit" | tr '\n' ' ')"
    if ! command -v systemd-analyze >/dev/null; then
        fail "systemd-analyze is missing (Debian package systemd)"
        return
    fi
    copy=$work/unit/smtp2oauth.service
    mkdir -p "$work/unit"
    sed 's#^ExecStart=/usr/bin/smtp2oauth #ExecStart=/bin/true #' "$unit" >"$copy"
    out=$(systemd-analyze verify --man=no "$copy" 2>&1 | grep smtp2oauth || true)
    [ -z "$out" ] && pass "systemd-analyze verify: the packaged unit is clean" \
        || fail "systemd-analyze verify: $out"
}

cmd_check() {
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-check.XXXXXX")
    # shellcheck disable=SC2064 # the directory is known now
    trap "rm -rf '$work'" EXIT
    step "tools"
    check_tools
    step "packaging metadata"
    check_packaging "$work"
    for f in release.sh build-image.sh assemble-rootfs.sh debian/deb-test.sh; do
        bash -n "$here/$f" && pass "bash -n deploy/$f" || fail "bash -n deploy/$f"
    done
    # The scripts the docs tell admins to run as commands (`sudo deploy/release.sh`) must be
    # executable in a fresh checkout; the sourced ones need not be.
    for f in release.sh build-image.sh assemble-rootfs.sh windows/wine-smoke.sh; do
        [ -x "$here/$f" ] && pass "deploy/$f is executable" \
            || fail "deploy/$f is not executable (git update-index --chmod=+x deploy/$f)"
    done
    step "Windows"
    check_windows
    echo "release check: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# --- The build ---------------------------------------------------------------------------------------

# Per platform: the steps that add its artifacts to $dist, then the smoke tests of what they made.
# A new platform is one more pair here and in PLATFORMS.
PLATFORMS="linux windows"
linux_STEPS="linux_binaries linux_tarballs debian_packages container_image"
linux_SMOKE_TESTS="smoke_tarballs smoke_debian11 smoke_debian_packages smoke_arm64_image"
windows_STEPS="windows"
windows_SMOKE_TESTS="smoke_windows"

cmd_build() {
    local allow_dirty=false start fn platforms="" p var steps="" smoke_tests=""
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --allow-dirty) allow_dirty=true; shift ;;
            --platform)
                case " $PLATFORMS " in *" ${2:-none} "*) ;; *) usage_error "--platform is one of: $PLATFORMS" ;; esac
                case " $platforms " in *" $2 "*) ;; *) platforms="${platforms:+$platforms }$2" ;; esac
                shift 2
                ;;
            *) usage_error "unknown argument '$1'" ;;
        esac
    done
    platforms=${platforms:-$PLATFORMS}
    for p in $platforms; do
        var=${p}_STEPS
        steps="$steps ${!var}"
        var=${p}_SMOKE_TESTS
        smoke_tests="$smoke_tests ${!var}"
    done
    start=$(date +%s)
    preflight "$allow_dirty"
    cmd_setup
    version=$(workspace_version)
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct)
    export SOURCE_DATE_EPOCH
    dist=$repo/dist
    work=$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-release.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # uid 65532 runs the arm64 relay from a copy of the image in here.
    chmod 0711 "$work"
    bins=$work/bin
    step "smtp2oauth $version ($(git -C "$repo" describe --always --dirty)), into $dist, for $platforms"
    check_packaging "$work/check"
    rm -rf "$dist"
    mkdir -p "$dist"
    for fn in $steps $smoke_tests; do
        "$fn"
    done
    checksums
    step "artifacts"
    (cd "$dist" && for f in *; do printf '  %-44s %10s bytes  %s\n' "$f" "$(stat -c %s "$f")" "$(mb "$(stat -c %s "$f")")"; done)
    echo "release: $passed passed, $failed failed in $(($(date +%s) - start)) s"
    [ "$failed" -eq 0 ]
}

preflight() {
    [ "$(id -u)" -eq 0 ] || die "the build runs as root (buildah with vfs storage, dpkg for the package test)"
    [ "$(uname -m)" = x86_64 ] || die "the build runs on an x86_64 machine (this is $(uname -m))"
    if [ -n "$(git -C "$repo" status --porcelain)" ] && [ "$1" != true ]; then
        die "the checkout has uncommitted changes: commit them, or pass --allow-dirty:
$(git -C "$repo" status --short)"
    fi
}

linux_binaries() {
    local arch
    for arch in $LINUX_ARCHES; do
        linux_binary "$arch"
        check_binary "$arch" "$bins/$arch/smtp2oauth"
    done
}

# cargo-zigbuild links against the glibc of the target's suffix, and compiles OpenSSL for it.
linux_binary() {
    local arch=$1 triple
    triple=$(rust_target "$arch")
    step "building the $arch binary ($triple, glibc $GLIBC_FLOOR, features legacy-tls-vendored)"
    (cd "$repo" && PATH="$(venv_bin):$PATH" OPENSSL_NO_VENDOR=0 \
        cargo zigbuild --release --locked -p smtp2oauth --features legacy-tls-vendored \
        --target "$triple.$GLIBC_FLOOR")
    install -D -m 0755 "${CARGO_TARGET_DIR:-$repo/target}/$triple/release/smtp2oauth" "$bins/$arch/smtp2oauth"
}

# Architecture, glibc floor, libraries, OpenSSL compiled in, and that it runs.
check_binary() {
    local arch=$1 bin=$2 newest libs openssl out
    check_machine "$bin" "$arch" && pass "$arch binary: ELF machine $(elf_machine "$arch")" \
        || fail "$arch binary: ELF machine is not $(elf_machine "$arch")"
    newest=$(glibc_versions "$bin" | tail -1)
    if [ -n "$newest" ] && [ "$(printf '%s\n' "$newest" "$GLIBC_FLOOR" | sort -V | tail -1)" = "$GLIBC_FLOOR" ]; then
        pass "$arch binary: needs glibc $newest at most (the floor is $GLIBC_FLOOR: Debian 11)"
    else
        fail "$arch binary: needs glibc ${newest:-?}, above the floor $GLIBC_FLOOR"
    fi
    libs=$(needed_libs "$bin" | tr '\n' ' ')
    if deb_depends "$bin" >/dev/null && ! printf '%s' "$libs" | grep -qE 'libssl|libcrypto'; then
        pass "$arch binary: loads only $libs(no libssl)"
    else
        fail "$arch binary: loads a library outside glibc and libgcc_s: $libs"
    fi
    openssl=$(grep -aoE 'OpenSSL [0-9]+\.[0-9]+\.[0-9]+ +[0-9]+ [A-Z][a-z][a-z] [0-9]{4}' "$bin" | head -1 || true)
    [ -n "$openssl" ] && pass "$arch binary: $openssl compiled in (legacy-tls)" \
        || fail "$arch binary: no OpenSSL compiled in"
    out=$(run_arch "$arch" "$bin" --version 2>&1) || true
    [ "$out" = "smtp2oauth $version" ] && pass "$arch binary runs$(runner "$arch" | sed 's/^./ under &/;s/ -L.*//'): $out" \
        || fail "$arch binary --version: $out"
}

linux_tarballs() {
    local arch name stage
    for arch in $LINUX_ARCHES; do
        name="smtp2oauth-$version-$arch-linux"
        step "$name.tar.gz"
        stage="$work/tar/$name"
        install -d "$stage/docs" "$stage/smtp2oauth.service.d"
        install -m 0755 "$bins/$arch/smtp2oauth" "$stage/"
        install -m 0644 "$repo/README.md" "$repo/LICENSE" "$repo/config/smtp2oauth.example.toml" \
            "$here/smtp2oauth.service" "$stage/"
        install -m 0644 "$here/smtp2oauth.service.d/low-ports.conf" "$stage/smtp2oauth.service.d/"
        install -m 0644 "$repo"/docs/*.md "$stage/docs/"
        find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
        tar --sort=name --owner=0 --group=0 --numeric-owner --format=gnu -C "$work/tar" -cf - "$name" \
            | gzip -9n >"$dist/$name.tar.gz"
    done
}

debian_packages() {
    local arch
    for arch in $LINUX_ARCHES; do
        step "smtp2oauth_${version}_$(deb_arch "$arch").deb"
        cmd_deb --binary "$bins/$arch/smtp2oauth" --arch "$(deb_arch "$arch")" --out "$dist" --version "$version" >/dev/null
    done
}

bh() { buildah --root "$work/buildah/root" --runroot "$work/buildah/run" --storage-driver vfs "$@"; }

# One image per architecture (deploy/build-image.sh: the Dockerfile's final stage around the
# binary; the amd64 one is run and tested there), then the manifest list as an OCI archive.
container_image() {
    local arch oci list="localhost/smtp2oauth:$version" test
    for arch in $LINUX_ARCHES; do
        oci=$(deb_arch "$arch")
        test=""
        [ "$arch" = x86_64 ] && test=--test
        step "image linux/$oci (deploy/build-image.sh${test:+ $test})"
        # shellcheck disable=SC2086 # $test: one option or none
        if bash "$here/build-image.sh" --binary "$bins/$arch/smtp2oauth" --arch "$oci" \
            --tag "$list-$oci" --storage "$work/buildah" --size-limit 30 $test >"$work/image-$oci.log" 2>&1; then
            pass "image linux/$oci: $(grep -c '^PASS' "$work/image-$oci.log") checks of build-image.sh passed; $(grep -o 'image .*: [0-9]* bytes ([0-9.]* MB) uncompressed' "$work/image-$oci.log")"
        else
            cat "$work/image-$oci.log"
            fail "image linux/$oci: deploy/build-image.sh failed (its log is above)"
            return
        fi
    done
    step "manifest list $list (linux/amd64, linux/arm64) into smtp2oauth-$version-oci.tar"
    bh manifest create "$list" >/dev/null
    for arch in $LINUX_ARCHES; do
        bh manifest add "$list" "containers-storage:$list-$(deb_arch "$arch")" >/dev/null
    done
    # Docker's manifest format inside the OCI layout: OCI image configurations have no field for
    # the HEALTHCHECK, which the image declares.
    bh manifest push --quiet --all --format v2s2 "$list" "oci-archive:$work/oci.tar:smtp2oauth:$version"
    name_archive "$work/oci.tar" "$dist/smtp2oauth-$version-oci.tar"
}

# Adds to the archive's index.json the name Docker and containerd give the image when they load
# it (io.containerd.image.name); the index is the one file of an OCI layout that no digest
# covers. Entries are written in a fixed order with fixed times.
name_archive() {
    python3 - "$1" "$2" "$version" "$SOURCE_DATE_EPOCH" <<'PY'
import io, json, sys, tarfile
src, dst, version, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with tarfile.open(src) as tar:
    members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as out:
    for member, data in sorted(members, key=lambda md: md[0].name):
        if member.name.lstrip("./") == "index.json":
            index = json.loads(data)
            for m in index["manifests"]:
                m.setdefault("annotations", {})["io.containerd.image.name"] = f"docker.io/library/smtp2oauth:{version}"
            data = json.dumps(index, separators=(",", ":")).encode()
            member.size = len(data)
        member.mtime, member.uid, member.gid, member.uname, member.gname = epoch, 0, 0, "", ""
        out.addfile(member, io.BytesIO(data) if data is not None else None)
PY
}

checksums() {
    step "SHA-256"
    (cd "$dist" && rm -f SHA256SUMS && sha256sum -- * >"$work/SHA256SUMS" && mv "$work/SHA256SUMS" SHA256SUMS && cat SHA256SUMS)
}

# --- Smoke tests of the artifacts ----------------------------------------------------------------------

# Every tarball unpacks to a binary that runs and accepts the example configuration.
smoke_tarballs() {
    local arch name dir out
    for arch in $LINUX_ARCHES; do
        name="smtp2oauth-$version-$arch-linux"
        dir="$work/unpacked"
        rm -rf "$dir"
        mkdir -p "$dir"
        tar -C "$dir" -xzf "$dist/$name.tar.gz"
        if out=$(cd "$dir/$name" && run_arch "$arch" ./smtp2oauth check-config --config smtp2oauth.example.toml 2>&1) \
            && [ -f "$dir/$name/LICENSE" ] && [ -f "$dir/$name/smtp2oauth.service" ] && [ -f "$dir/$name/README.md" ]; then
            pass "$name.tar.gz: the binary checks the example configuration: $(echo "$out" | tail -1)"
        else
            fail "$name.tar.gz: $out; $(tar -tzf "$dist/$name.tar.gz" | tr '\n' ' ')"
        fi
    done
}

# The amd64 package installed on this machine (deb-test); the arm64 one holds the arm64 binary.
smoke_debian_packages() {
    local deb out status
    deb="$dist/smtp2oauth_${version}_arm64.deb"
    mkdir -p "$work/arm64-deb"
    dpkg-deb --extract "$deb" "$work/arm64-deb"
    if [ "$(dpkg-deb --field "$deb" Architecture)" = arm64 ] && cmp -s "$work/arm64-deb/usr/bin/smtp2oauth" "$bins/aarch64/smtp2oauth"; then
        pass "smtp2oauth_${version}_arm64.deb: Architecture arm64, the aarch64 binary; Depends: $(dpkg-deb --field "$deb" Depends)"
    else
        fail "smtp2oauth_${version}_arm64.deb does not hold the aarch64 binary"
    fi
    step "installing smtp2oauth_${version}_amd64.deb on this machine (deb-test)"
    status=0
    out=$(bash "$here/release.sh" deb-test "$dist/smtp2oauth_${version}_amd64.deb" 2>&1) || status=$?
    printf '%s\n' "$out" | sed 's/^/  /'
    if [ "$status" -eq 0 ]; then
        pass "smtp2oauth_${version}_amd64.deb installed, checked, purged: $(printf '%s\n' "$out" | tail -1)"
    else
        fail "smtp2oauth_${version}_amd64.deb: deb-test exit $status"
    fi
}

# Each binary on Debian 11's own glibc 2.31: a Debian 11 tree (debootstrap's first stage, kept in
# $TOOLS_DIR), entered with chroot for this machine's architecture and through qemu-user's -L for
# the other (qemu emulating x86_64 on x86_64 crashes in Debian 11's libc). The dynamic loader
# checks every GLIBC_ version the binary names before main runs.
smoke_debian11() {
    local arch root out
    for arch in $LINUX_ARCHES; do
        root=$TOOLS_DIR/debian11-$(deb_arch "$arch")
        if [ ! -e "$root/lib/$arch-linux-gnu/libc.so.6" ]; then
            step "Debian 11 C library for $arch (debootstrap --foreign bullseye into $root)"
            rm -rf "$root"
            debootstrap --variant=minbase --foreign --arch="$(deb_arch "$arch")" bullseye "$root" \
                >"$work/debootstrap-$arch.log" 2>&1 \
                || { fail "debootstrap of Debian 11 ($arch): $(tail -3 "$work/debootstrap-$arch.log")"; continue; }
        fi
        if out=$(on_debian11 "$arch" "$root" 2>&1) && [ -e "$root/lib/$arch-linux-gnu/libc-2.31.so" ]; then
            pass "$arch binary on Debian 11's glibc 2.31: $(printf '%s\n' "$out" | tail -1)"
        else
            fail "$arch binary on Debian 11's glibc: $out"
        fi
    done
}

# check-config of the example configuration by the binary of $1 in the Debian 11 tree $2.
on_debian11() {
    local arch=$1 root=$2 status=0
    if [ "$arch" = "$(uname -m)" ]; then
        mkdir -p "$root/tmp/smtp2oauth-release"
        cp "$bins/$arch/smtp2oauth" "$repo/config/smtp2oauth.example.toml" "$root/tmp/smtp2oauth-release/"
        chroot "$root" /tmp/smtp2oauth-release/smtp2oauth check-config \
            --config /tmp/smtp2oauth-release/smtp2oauth.example.toml || status=$?
        rm -rf "$root/tmp/smtp2oauth-release"
        return "$status"
    fi
    (cd "$repo/config" && "qemu-$arch-static" -L "$root" "$bins/$arch/smtp2oauth" check-config \
        --config smtp2oauth.example.toml)
}

# A free TCP port below the ephemeral range that nothing listens on.
taken_ports=" "
free_port() {
    local p used
    used=" $(awk 'FNR > 1 { split($2, a, ":"); printf "%d ", strtonum("0x" a[2]) }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)"
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        case "$used$taken_ports" in *" $p "*) continue ;; esac
        taken_ports="$taken_ports$p "
        echo "$p"
        return
    done
}

# Waits up to $2 seconds for the text $3 in the file $1, while the process $4 lives.
wait_for_log() {
    local i
    for i in $(seq 1 $(($2 * 10))); do
        grep -q "$3" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# The images as a registry would serve them: taken from the OCI archive by architecture; the
# arm64 one's relay runs under qemu-aarch64-static as the image's user, with the capture route.
smoke_arm64_image() {
    local ctr mnt arch oci health
    step "the images in smtp2oauth-$version-oci.tar; the arm64 relay under qemu-aarch64-static"
    for arch in $LINUX_ARCHES; do
        oci=$(deb_arch "$arch")
        ctr=$(bh from --quiet --arch "$oci" "oci-archive:$dist/smtp2oauth-$version-oci.tar")
        mnt=$(bh mount "$ctr")
        if cmp -s "$mnt/usr/local/bin/smtp2oauth" "$bins/$arch/smtp2oauth" \
            && [ "$(bh inspect --format '{{.OCIv1.Architecture}}' "$ctr")" = "$oci" ]; then
            pass "the OCI archive's linux/$oci image holds the $arch binary"
        else
            fail "the OCI archive's linux/$oci image does not hold the $arch binary"
        fi
        health=$(bh inspect --format '{{with .Docker.Config.Healthcheck}}{{range .Test}}{{.}} {{end}}{{end}}' "$ctr")
        [ "$health" = "CMD /usr/local/bin/smtp2oauth health " ] \
            && pass "the OCI archive's linux/$oci image keeps its HEALTHCHECK: $health" \
            || fail "the OCI archive's linux/$oci image has no HEALTHCHECK ('$health')"
        if [ "$arch" = aarch64 ]; then
            relay_under_qemu "$mnt"
        fi
        bh umount "$ctr" >/dev/null
        bh rm "$ctr" >/dev/null
    done
}

relay_under_qemu() {
    local root dir=$work/qemu smtp legacy admin pid status
    # A copy of the image's tree where uid 65532 may read it (buildah's storage is root's alone).
    root=$dir/root
    mkdir -p "$root" "$dir/data"
    cp -a "$1/." "$root/"
    chown 65532:65532 "$dir/data"
    chmod 0750 "$dir/data"
    smtp=$(free_port)
    legacy=$(free_port)
    admin=$(free_port)
    arm64_config "$dir" "$smtp" "$legacy" "$admin" >"$dir/smtp2oauth.toml"
    chown 0:65532 "$dir/smtp2oauth.toml"
    chmod 0640 "$dir/smtp2oauth.toml"
    setpriv --reuid=65532 --regid=65532 --clear-groups \
        qemu-aarch64-static -L "$root" "$root/usr/local/bin/smtp2oauth" serve --config "$dir/smtp2oauth.toml" \
        >"$dir/relay.log" 2>&1 &
    pid=$!
    if wait_for_log "$dir/relay.log" 120 'smtp2oauth started' "$pid"; then
        pass "arm64 relay started under qemu-aarch64-static, as uid 65532, with the capture route"
        send_under_qemu "$dir" "$smtp" "$legacy"
    else
        fail "arm64 relay did not start: $(tail -5 "$dir/relay.log")"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    status=0
    wait "$pid" || status=$?
    if [ "$status" -eq 0 ] && grep -q 'stopped' "$dir/relay.log"; then
        pass "arm64 relay: SIGTERM, exit 0"
    else
        fail "arm64 relay: exit $status after SIGTERM; $(tail -3 "$dir/relay.log")"
    fi
}

# The example's first device (mfp-3f, password scan-to-email) and account, on loopback ports.
arm64_config() {
    cat <<CONFIG
[server]
hostname = "relay.release-test"

[[listeners]]
name = "plain"
address = "127.0.0.1:$2"
tls = "starttls"
allow_insecure_auth = true

[[listeners]]
name = "legacy"
address = "127.0.0.1:$3"
tls = "implicit"
tls_profile = "legacy"

[store]
dir = "$1/data"

[admin]
listen = "127.0.0.1:$4"

[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
route = "capture"

$(sed -n '/^\[\[devices\]\]/,/^account/p' "$repo/config/smtp2oauth.example.toml" | head -4)
CONFIG
}

# A message with AUTH PLAIN over plain SMTP, one over TLS 1.0, both captured.
send_under_qemu() {
    local dir=$1 smtp=$2 legacy=$3 n
    printf 'From: Scanner <scanner@contoso.com>\r\nTo: you@example.com\r\nSubject: arm64 %s\r\n\r\nScanned.\r\n' plain >"$dir/plain.eml"
    printf 'From: Scanner <scanner@contoso.com>\r\nTo: you@example.com\r\nSubject: arm64 %s\r\n\r\nScanned.\r\n' legacy >"$dir/legacy.eml"
    if curl -sS -v --max-time 120 --url "smtp://127.0.0.1:$smtp" --user mfp-3f:scan-to-email \
        --login-options AUTH=PLAIN --mail-from scanner@contoso.com --mail-rcpt you@example.com \
        --upload-file "$dir/plain.eml" >"$dir/curl-plain.log" 2>&1 && grep -q '^> AUTH PLAIN' "$dir/curl-plain.log"; then
        pass "arm64 relay: curl sent a message with AUTH PLAIN"
    else
        fail "arm64 relay: curl AUTH PLAIN: $(grep -E '^(<|curl:)' "$dir/curl-plain.log" | tail -3)"
    fi
    if curl -sS -v --max-time 120 --insecure --tlsv1.0 --tls-max 1.0 --ciphers 'DEFAULT:@SECLEVEL=0' \
        --url "smtps://127.0.0.1:$legacy" --user mfp-3f:scan-to-email \
        --mail-from scanner@contoso.com --mail-rcpt you@example.com \
        --upload-file "$dir/legacy.eml" >"$dir/curl-legacy.log" 2>&1 && grep -q 'TLSv1\.0' "$dir/curl-legacy.log"; then
        pass "arm64 relay: curl sent a message over TLS 1.0 (tls_profile = \"legacy\", OpenSSL compiled in)"
    else
        fail "arm64 relay: TLS 1.0: $(grep -iE 'tls|curl:' "$dir/curl-legacy.log" | tail -3)"
    fi
    n=$(grep -l 'Subject: arm64 ' "$dir"/data/capture/*.eml 2>/dev/null | wc -l)
    if [ "$n" -eq 2 ] && [ "$(stat -c %u "$dir/data/capture")" = 65532 ]; then
        pass "arm64 relay: both messages are in the capture directory, written as uid 65532"
    else
        fail "arm64 relay: $n of 2 messages captured: $(ls -la "$dir/data" "$dir/data/capture" 2>&1 | tr '\n' ' ')"
    fi
}

# --- Main --------------------------------------------------------------------------------------------

case "${1:-}" in
    --check | check) cmd_check ;;
    setup) cmd_setup ;;
    deb) shift; cmd_deb "$@" ;;
    deb-test) shift; cmd_deb_test "$@" ;;
    -h | --help) usage ;;
    "" | --allow-dirty | --platform) cmd_build "$@" ;;
    *) usage_error "unknown argument '$1' (see --help)" ;;
esac
