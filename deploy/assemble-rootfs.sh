#!/usr/bin/env bash
# Builds the minimal root filesystem of the smtp2oauth container image from a built binary.
#
#   deploy/assemble-rootfs.sh BINARY ROOTFS_DIR [LIBDIR]
#
# Used by both the Dockerfile (stage `rootfs`) and deploy/build-image.sh (the local buildah path),
# so the two images cannot drift. The result is everything the final `FROM scratch` stage holds:
#
#   /usr/local/bin/smtp2oauth   the binary (mode 0755)
#   <shared libraries>          what `ldd BINARY` lists, at the paths it lists (none for a
#                               static binary); symlinks are resolved into plain files
#
# LIBDIR is for a binary of another architecture than this machine's, which ldd cannot run: the
# directory holding that architecture's C library (for arm64 on Debian, /usr/aarch64-linux-gnu/lib
# from the packages libc6-arm64-cross and libgcc-s1-arm64-cross). The libraries the binary needs
# (its DT_NEEDED entries, and theirs, read with readelf) are then taken from LIBDIR and laid out
# as that architecture's Debian system has them: the program interpreter at the path the binary
# names, the others in /lib/<multiarch triplet>/, where its dynamic loader looks by default.
#   /etc/passwd, /etc/group     root, and the user `smtp2oauth` uid/gid 65532 (home /data)
#   /etc/nsswitch.conf          passwd/group from files; `hosts: files dns`
#   /etc/hosts                  localhost entries (container runtimes usually mount their own)
#   /etc/smtp2oauth/            empty: mount the configuration here
#   /data                       the store (spool, captures, generated TLS key), owned by
#                               65532:65532, mode 0750: the image's volume
#   /tmp                        mode 1777
#
# TLS roots are compiled into the binary (webpki-roots), so no CA bundle is needed; with glibc
# 2.34 or later the `files` and `dns` NSS modules are part of libc, so host name resolution needs
# only the files above (plus the /etc/resolv.conf the container runtime provides).
#
# Deterministic and idempotent: every run on the same inputs gives the same tree (same contents,
# owners, modes, and mtimes set to SOURCE_DATE_EPOCH, default 0). ROOTFS_DIR may be missing, empty,
# or a tree this script made earlier (which is rebuilt from nothing); anything else is refused, so
# a mistyped path cannot wipe a directory. Needs to run as root (ownership of /data); for rootless
# buildah, run it inside `buildah unshare`.
set -euo pipefail

APP_UID=65532
APP_GID=65532
# The top-level entries this script creates (and may therefore remove when it runs again).
OURS="data etc lib lib32 lib64 libx32 tmp usr"

die() {
    echo "assemble-rootfs: $*" >&2
    exit 1
}

[ "$#" -eq 2 ] || [ "$#" -eq 3 ] || die "usage: $0 BINARY ROOTFS_DIR [LIBDIR]"
binary=$1
rootfs=$2
libdir=${3:-}

[ -f "$binary" ] || die "$binary is not a file"
[ -x "$binary" ] || die "$binary is not executable"
[ "$(id -u)" -eq 0 ] || die "must run as root (it sets the owner of /data to $APP_UID); for rootless buildah run it inside 'buildah unshare'"
command -v ldd >/dev/null || die "ldd is needed (Debian package libc-bin)"
if [ -n "$libdir" ]; then
    [ -d "$libdir" ] || die "LIBDIR $libdir is not a directory"
    command -v readelf >/dev/null || die "readelf is needed with LIBDIR (Debian package binutils)"
fi
epoch=${SOURCE_DATE_EPOCH:-0}
case "$epoch" in
    '' | *[!0-9]*) die "SOURCE_DATE_EPOCH must be a number of seconds, not '$epoch'" ;;
esac

mkdir -p "$rootfs"
rootfs=$(cd "$rootfs" && pwd -P)
[ "$rootfs" != "/" ] || die "refusing to use / as ROOTFS_DIR"

# Refuse a directory that holds anything we did not make; clear one we did.
for entry in "$rootfs"/* "$rootfs"/.[!.]* "$rootfs"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    name=${entry##*/}
    case " $OURS " in
        *" $name "*) ;;
        *) die "$rootfs holds '$name', which this script does not create; give an empty or new directory" ;;
    esac
done
for name in $OURS; do
    rm -rf "${rootfs:?}/$name"
done

# The binary.
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/smtp2oauth"

# The program interpreter a dynamically linked ELF file names (empty for a static one).
interpreter() {
    LC_ALL=C readelf -l -W "$1" 2>/dev/null | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p'
}

# The DT_NEEDED entries of an ELF file.
needed() {
    LC_ALL=C readelf -d -W "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
}

# The libraries of a binary this machine runs, at the paths ldd resolves them to (the program
# interpreter included). `ldd` prints "not a dynamic executable" (status 1) or "statically
# linked" for a static binary, but also for a binary of another architecture: readelf tells
# the two apart where it is installed.
native_libraries() {
    local ldd_out
    ldd_out=$(LC_ALL=C ldd "$binary" 2>&1) || ldd_out=""
    if printf '%s\n' "$ldd_out" | grep -q 'not found'; then
        die "ldd cannot resolve every library of $binary:
$ldd_out"
    fi
    if [ -z "$ldd_out" ] && command -v readelf >/dev/null && [ -n "$(interpreter "$binary")" ]; then
        die "ldd cannot run $binary, which is dynamically linked (another architecture?): give the directory of its C library as LIBDIR"
    fi
    printf '%s\n' "$ldd_out" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }   # libc.so.6 => /lib/.../libc.so.6 (0x...)
        $1 ~ /^\// { print $1 }                        # /lib64/ld-linux-x86-64.so.2 (0x...)
    ' | LC_ALL=C sort -u
}

# The multiarch triplet of an ELF file's architecture (where Debian keeps its libraries).
triplet() {
    case "$(LC_ALL=C readelf -h "$1" | sed -n 's/^ *Machine: *//p')" in
        AArch64) echo aarch64-linux-gnu ;;
        *X86-64*) echo x86_64-linux-gnu ;;
        *) die "$1: an architecture this script does not know: $(LC_ALL=C readelf -h "$1" | grep Machine)" ;;
    esac
}

# The libraries of a binary of another architecture, found in LIBDIR by their DT_NEEDED names
# (recursively), copied to where that architecture's loader looks for them.
foreign_libraries() {
    local interp dest todo=() seen=" " name
    interp=$(interpreter "$binary")
    [ -n "$interp" ] || return 0
    [ -f "$libdir/${interp##*/}" ] || die "$libdir has no ${interp##*/} (the program interpreter of $binary)"
    dest=/lib/$(triplet "$binary")
    copy_lib "$libdir/${interp##*/}" "$interp"
    mapfile -t todo < <(needed "$binary")
    while [ "${#todo[@]}" -gt 0 ]; do
        name=${todo[0]}
        todo=("${todo[@]:1}")
        case "$seen" in *" $name "*) continue ;; esac
        seen="$seen$name "
        [ "$name" = "${interp##*/}" ] && continue
        [ -f "$libdir/$name" ] || die "$binary needs $name, which $libdir does not have"
        copy_lib "$libdir/$name" "$dest/$name"
        mapfile -t -O "${#todo[@]}" todo < <(needed "$libdir/$name")
    done
}

# Copies a library (following symlinks) to a path under the rootfs, keeping its mode.
copy_lib() {
    local mode
    mode=$(stat -L -c '%a' "$1")
    mkdir -p "$(dirname "$rootfs$2")"
    cp -L "$1" "$rootfs$2"
    chmod "$mode" "$rootfs$2"
}

if [ -n "$libdir" ]; then
    foreign_libraries
else
    # (an assignment, so that set -e stops here when native_libraries fails)
    libs=$(native_libraries)
    for lib in $libs; do
        copy_lib "$lib" "$lib"
    done
fi

# Users, groups, name service.
mkdir -p "$rootfs/etc/smtp2oauth" "$rootfs/data" "$rootfs/tmp"
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
smtp2oauth:x:$APP_UID:$APP_GID:smtp2oauth:/data:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
smtp2oauth:x:$APP_GID:
EOF
cat >"$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF

# Owners and modes: root everywhere, except the store.
chown -R 0:0 "$rootfs"
find "$rootfs" -type d -exec chmod 0755 {} +
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf" "$rootfs/etc/hosts"
chmod 1777 "$rootfs/tmp"
chown "$APP_UID:$APP_GID" "$rootfs/data"
chmod 0750 "$rootfs/data"

# Timestamps: all the same, so the tree (and an image layer made from it) depends only on its
# contents. -h: symlinks themselves (there are none today, but a future library layout may add
# some).
find "$rootfs" -mindepth 1 -exec touch -h -d "@$epoch" {} +
touch -d "@$epoch" "$rootfs"

echo "assemble-rootfs: $rootfs: $(find "$rootfs" -type f | wc -l) files, $(du -sk "$rootfs" | cut -f1) KiB"
