#!/usr/bin/env bash
# Builds the minimal root filesystem of the smtp2oauth container image from a built binary.
#
#   deploy/assemble-rootfs.sh BINARY ROOTFS_DIR
#
# Used by both the Dockerfile (stage `rootfs`) and deploy/build-image.sh (the local buildah path),
# so the two images cannot drift. The result is everything the final `FROM scratch` stage holds:
#
#   /usr/local/bin/smtp2oauth   the binary (mode 0755)
#   <shared libraries>          what `ldd BINARY` lists, at the paths it lists (none for a
#                               static binary); symlinks are resolved into plain files
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

[ "$#" -eq 2 ] || die "usage: $0 BINARY ROOTFS_DIR"
binary=$1
rootfs=$2

[ -f "$binary" ] || die "$binary is not a file"
[ -x "$binary" ] || die "$binary is not executable"
[ "$(id -u)" -eq 0 ] || die "must run as root (it sets the owner of /data to $APP_UID); for rootless buildah run it inside 'buildah unshare'"
command -v ldd >/dev/null || die "ldd is needed (Debian package libc-bin)"
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

# Copies a file (following symlinks) to the same path under the rootfs, keeping its mode.
copy_file() {
    local src=$1 dst=$rootfs$1 mode
    mode=$(stat -L -c '%a' "$src")
    mkdir -p "$(dirname "$dst")"
    cp -L "$src" "$dst"
    chmod "$mode" "$dst"
}

# The binary.
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/smtp2oauth"

# Its shared libraries, at the paths ldd resolves them to (the program interpreter included).
# `ldd` prints "not a dynamic executable" (status 1) or "statically linked" for a static binary.
ldd_out=$(LC_ALL=C ldd "$binary" 2>&1) || ldd_out=""
if printf '%s\n' "$ldd_out" | grep -q 'not found'; then
    die "ldd cannot resolve every library of $binary:
$ldd_out"
fi
libs=$(printf '%s\n' "$ldd_out" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }   # libc.so.6 => /lib/.../libc.so.6 (0x...)
    $1 ~ /^\// { print $1 }                        # /lib64/ld-linux-x86-64.so.2 (0x...)
' | LC_ALL=C sort -u)
for lib in $libs; do
    copy_file "$lib"
done

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
