#!/usr/bin/env bash
# shellcheck disable=SC2016 # Go templates and argon2 hashes hold `$` that must stay as written.
# Builds the smtp2oauth container image without a Docker engine or a registry, and optionally
# runs a real relay test inside it.
#
#   deploy/build-image.sh [--binary PATH | --features LIST] [--arch ARCH] [--tag NAME] [--test]
#                         [--storage DIR] [--rmi] [--size-limit MB]
#
# It builds the Dockerfile's final stage from a binary built here (the earlier stages compile
# in a rust image, which cannot be pulled here):
#   1. builds the release binary (cargo build --release --locked -p smtp2oauth), unless --binary;
#   2. deploy/assemble-rootfs.sh BINARY ROOTFS (the script the Dockerfile's `rootfs` stage runs);
#   3. `buildah bud` of the Dockerfile from its last FROM, with the rootfs stage's tree added as
#      an archive (owners kept, like COPY --from), in Docker format (OCI has no HEALTHCHECK), as
#      localhost/smtp2oauth:dev; the resulting configuration must equal the IMAGE_* block below.
#
# buildah runs with --storage-driver vfs and chroot isolation (BUILDAH_ISOLATION=chroot), which
# work without overlayfs, fuse or a container runtime. Run as root (or inside `buildah unshare`).
#
# Options:
#   --binary PATH     use this smtp2oauth binary instead of building the release binary
#   --features LIST   build the release binary with these cargo features, e.g. legacy-tls
#                     (TLS 1.0 listeners for old devices; links OpenSSL, whose libraries the
#                     root filesystem then carries); the Dockerfile's FEATURES build argument
#   --arch ARCH       the image's architecture, amd64 or arm64 (default: the binary's). An
#                     image for another architecture than this machine's needs --binary (e.g. one
#                     from deploy/release.sh) and that architecture's C library from Debian's
#                     cross packages (arm64: libc6-arm64-cross, libgcc-s1-arm64-cross); its root
#                     filesystem is checked under qemu-user-static, and --test is refused (there
#                     is no emulation for `buildah run`: deploy/release.sh tests such an image)
#   --tag NAME        image name (default localhost/smtp2oauth:dev)
#   --test            run the relay in the image and test it from the host: a message through
#                     each SMTP port (curl, AUTH) is captured in the container's /data, the
#                     process runs as uid 65532 without capabilities, a wrong password is
#                     refused, a configuration from the environment alone with a client secret
#                     file under /run/secrets passes check-config, `smtp2oauth health` works
#                     inside, /healthz and /metrics answer, SIGTERM stops it cleanly; with a
#                     binary that links OpenSSL (legacy-tls, dynamically or compiled in), a
#                     message also arrives over TLS 1.0 on a tls_profile = "legacy" listener
#   --storage DIR     keep buildah's storage under DIR (DIR/root, DIR/run) instead of the default
#                     (/var/lib/containers/storage): for tests that must leave nothing behind
#   --rmi             remove the image when done (with --test: test, then remove)
#   --size-limit MB   fail if the image is larger (default 30; 0: no limit)
#
# Exit status: 0 all passed; 1 a step or check failed; 2 usage; 77 this machine cannot build or
# run containers (not root, no buildah, or the sandbox refuses chroot/mounts); the reason is
# printed as "SKIP: ...".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
export BUILDAH_ISOLATION=chroot
export BUILDAH_FORMAT=docker

# --- The final stage. Keep in step with the last stage of the Dockerfile: -----------------------
# --- tests/e2e/deploy.rs compares the two texts, and step 3 the image built from the Dockerfile. --
IMAGE_USER="65532:65532"
IMAGE_WORKDIR="/data"
IMAGE_PORTS=(2525/tcp 4650/tcp 8025/tcp)
IMAGE_VOLUMES=(/data)
IMAGE_ENV=(SMTP2OAUTH_STORE__DIR=/data SMTP2OAUTH_ADMIN__LISTEN=0.0.0.0:8025)
IMAGE_HEALTHCHECK=(/usr/local/bin/smtp2oauth health)
IMAGE_HEALTHCHECK_INTERVAL="30s"
IMAGE_HEALTHCHECK_TIMEOUT="5s"
IMAGE_HEALTHCHECK_START_PERIOD="10s"
IMAGE_HEALTHCHECK_RETRIES="3"
IMAGE_STOPSIGNAL="SIGTERM"
IMAGE_ENTRYPOINT=(/usr/local/bin/smtp2oauth)
IMAGE_CMD=(serve)
# --- End of the final stage. ----------------------------------------------------------------------

APP_UID=65532

usage() {
    sed -n '3,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

binary=""
features=""
tag="localhost/smtp2oauth:dev"
run_test=false
arch=""
storage=""
remove_image=false
size_limit_mb=30
while [ "$#" -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --features) features=${2:?--features needs a list}; shift 2 ;;
        --tag) tag=${2:?--tag needs a name}; shift 2 ;;
        --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
        --test) run_test=true; shift ;;
        --storage) storage=${2:?--storage needs a directory}; shift 2 ;;
        --rmi) remove_image=true; shift ;;
        --size-limit) size_limit_mb=${2:?--size-limit needs a number of MB}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$binary" ] && [ -n "$features" ]; then
    echo "build-image: --features applies to the binary this script builds, not to --binary" >&2
    exit 2
fi
case "$size_limit_mb" in '' | *[!0-9]*) echo "build-image: --size-limit takes a whole number of MB" >&2; exit 2 ;; esac
case "$arch" in '' | amd64 | arm64) ;; *) echo "build-image: --arch takes amd64 or arm64, not '$arch'" >&2; exit 2 ;; esac

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
die() { echo "FAIL: $*"; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
step() { echo "== $*"; }

[ "$(id -u)" -eq 0 ] || skip "must run as root (or inside 'buildah unshare'): the image's /data is owned by uid $APP_UID"
command -v buildah >/dev/null || skip "buildah is not installed (Debian: apt-get install buildah)"
if [ -n "$binary" ]; then
    [ -x "$binary" ] || die "--binary $binary is not an executable file"
    binary=$(cd "$(dirname "$binary")" && pwd -P)/$(basename "$binary")
fi

bh_opts=(--storage-driver vfs)
if [ -n "$storage" ]; then
    mkdir -p "$storage"
    storage=$(cd "$storage" && pwd -P)
    bh_opts=(--root "$storage/root" --runroot "$storage/run" --storage-driver vfs)
fi
bh() { buildah "${bh_opts[@]}" "$@"; }

# --- Cleanup: everything this run made, whatever happens. -----------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-image.XXXXXX")
containers=()
image_made=false
relay_run_pid=""
cleanup() {
    local status=$?
    set +e
    if [ -n "$relay_run_pid" ] && kill -0 "$relay_run_pid" 2>/dev/null; then
        # shellcheck disable=SC2046 # one word per process id
        kill -KILL $(descendants "$relay_run_pid") "$relay_run_pid" 2>/dev/null
        wait "$relay_run_pid" 2>/dev/null
    fi
    for c in "${containers[@]}"; do
        bh rm "$c" >/dev/null 2>&1
    done
    if $remove_image && $image_made; then
        bh rmi "$tag" >/dev/null 2>&1 && echo "== removed image $tag"
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Process ids of every descendant of $1 (from /proc: no ps needed).
descendants() {
    local parent=$1 pid ppid stat children=""
    for stat in /proc/[0-9]*/stat; do
        pid=${stat#/proc/}
        pid=${pid%/stat}
        # field 4 of /proc/PID/stat is the parent; the command name (field 2) may hold spaces
        ppid=$(sed -e 's/^.*) [A-Za-z] //' -e 's/ .*//' "$stat" 2>/dev/null) || continue
        [ "$ppid" = "$parent" ] && children="$children $pid"
    done
    for pid in $children; do
        echo "$pid"
        descendants "$pid"
    done
}

# --- 1. The binary. --------------------------------------------------------------------------------
if [ -z "$binary" ]; then
    step "building the release binary${features:+ with features $features}"
    (cd "$repo" && cargo build --release --locked -p smtp2oauth ${features:+--features "$features"})
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/smtp2oauth"
fi
step "binary: $binary ($(wc -c <"$binary") bytes)"
# Everything below uses one copy: a build running beside us (another cargo command in the same
# target directory) may replace the file, and the libraries found must belong to the binary used.
cp "$binary" "$work/smtp2oauth"
binary="$work/smtp2oauth"

# The image's architecture is the binary's; another one than this machine's takes its C library
# from Debian's cross packages and runs under qemu-user-static.
debian_arch() {
    case "$1" in
        x86_64 | *X86-64*) echo amd64 ;;
        aarch64 | AArch64) echo arm64 ;;
        *) echo "unknown($1)" ;;
    esac
}
binary_arch=$(debian_arch "$(LC_ALL=C readelf -h "$binary" | sed -n 's/^ *Machine: *//p')")
[ -z "$arch" ] || [ "$arch" = "$binary_arch" ] || die "--arch $arch, but $binary is built for $binary_arch"
arch=$binary_arch
foreign=false
if [ "$arch" != "$(debian_arch "$(uname -m)")" ]; then
    foreign=true
    case "$arch" in
        arm64) libdir=/usr/aarch64-linux-gnu/lib qemu=qemu-aarch64-static cross="libc6-arm64-cross libgcc-s1-arm64-cross" ;;
        amd64) libdir=/usr/x86_64-linux-gnu/lib qemu=qemu-x86_64-static cross="libc6-amd64-cross libgcc-s1-amd64-cross" ;;
        *) die "no image for the architecture of $binary ($arch)" ;;
    esac
    [ -d "$libdir" ] || die "an $arch image needs that architecture's C library in $libdir (Debian: apt-get install $cross)"
    command -v "$qemu" >/dev/null || die "an $arch image is checked with $qemu (Debian: apt-get install qemu-user-static)"
    ! $run_test || { echo "build-image: --test runs the image, which needs its own architecture ($arch is not this machine's)" >&2; exit 2; }
fi
if $foreign; then
    step "architecture: $arch (not this machine's: libraries from $libdir)"
else
    step "architecture: $arch"
fi

# --- 2. The root filesystem (the same script as the Dockerfile's rootfs stage). --------------------
step "assembling the root filesystem"
rootfs="$work/rootfs"
if $foreign; then
    bash "$here/assemble-rootfs.sh" "$binary" "$rootfs" "$libdir"
else
    bash "$here/assemble-rootfs.sh" "$binary" "$rootfs"
fi
# The tree must run as it is: chroot exits 125 when it cannot change root (this sandbox refuses),
# 126/127 when the binary or its program interpreter cannot be run (a broken tree: our bug).
set +e
if $foreign; then
    # qemu -L: the binary's loader and libraries come from the tree, as they will in the image.
    chroot_out=$("$qemu" -L "$rootfs" "$rootfs/usr/local/bin/smtp2oauth" --version 2>&1)
    chroot_status=$?
    [ "$chroot_status" -ne 0 ] || chroot_out="$chroot_out (under $qemu)"
else
    chroot_out=$(chroot --userspec="$APP_UID:$APP_UID" "$rootfs" /usr/local/bin/smtp2oauth --version 2>&1)
    chroot_status=$?
fi
set -e
case "$chroot_status" in
    0) pass "the root filesystem runs the binary$($foreign || echo " as uid $APP_UID (chroot)"): $chroot_out" ;;
    125) skip "chroot is refused here: $chroot_out" ;;
    *) die "the root filesystem cannot run the binary (chroot exit $chroot_status): $chroot_out" ;;
esac

# One layer, owners and modes as assembled (buildah add of an archive keeps them, as COPY --from
# does in the Dockerfile; buildah copy would make everything root's).
(cd "$rootfs" && tar --sort=name --numeric-owner --format=gnu -cf "$work/rootfs.tar" .)

# --- 3. The image. ---------------------------------------------------------------------------------
# Can buildah make containers here at all? (Sandboxes may refuse its mounts: that is a skip, while
# a failure of the build below is ours.)
set +e
probe=$(bh from scratch 2>&1)
probe_status=$?
set -e
[ "$probe_status" -eq 0 ] || skip "buildah cannot create a container here: $probe"
bh rm "$probe" >/dev/null

# The Dockerfile's final stage as written (from its last FROM on), built by buildah's Dockerfile
# parser: the one change is that the root filesystem comes from the archive made above instead of
# the `rootfs` stage; ADD of a local archive keeps owners and modes, as COPY --from does.
step "building image $tag from the Dockerfile's final stage (buildah bud, vfs, chroot isolation)"
context="$work/context"
mkdir "$context"
mv "$work/rootfs.tar" "$context/rootfs.tar"
awk '/^FROM[[:space:]]/ { stage = "" } { stage = stage $0 "\n" } END { printf "%s", stage }' \
    "$repo/Dockerfile" >"$context/Dockerfile.final"
copy_line='COPY --from=rootfs /rootfs/ /'
grep -qxF "$copy_line" "$context/Dockerfile.final" \
    || die "the Dockerfile's final stage has no line '$copy_line'; update build-image.sh to match"
sed -i "s#^$copy_line\$#ADD rootfs.tar /#" "$context/Dockerfile.final"
if grep -v '^[[:space:]]*#' "$context/Dockerfile.final" | grep -Eq -- '--from|^(RUN|ARG|ONBUILD)'; then
    die "the final stage needs more than the root filesystem (RUN, ARG or another --from): build-image.sh cannot build it from a local binary:
$(cat "$context/Dockerfile.final")"
fi
if ! bh bud --quiet --format docker --layers=false --arch "$arch" --os linux \
    -f "$context/Dockerfile.final" -t "$tag" \
    "$context" >"$work/bud.log" 2>&1; then
    die "buildah bud of the final stage failed:
$(cat "$work/bud.log")"
fi
image_made=true

layer_bytes=$(wc -c <"$context/rootfs.tar")
gzip_bytes=$(gzip -6 -c "$context/rootfs.tar" | wc -c)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
echo "image $tag: $layer_bytes bytes ($(mb "$layer_bytes")) uncompressed, one layer; $(mb "$gzip_bytes") gzip-compressed (what a registry would transfer); buildah reports $(bh images --format '{{.Size}}' "$tag")"
if [ "$size_limit_mb" -gt 0 ]; then
    if [ "$layer_bytes" -le $((size_limit_mb * 1000000)) ]; then
        pass "image size $(mb "$layer_bytes") is within ${size_limit_mb} MB"
    else
        fail "image size $(mb "$layer_bytes") is over ${size_limit_mb} MB"
    fi
fi

# The configuration as a runtime reads it, against the IMAGE_* block: a Dockerfile parser's view
# of the final stage (tests/e2e/deploy.rs holds the Dockerfile text to the same block). Builders
# give an image from scratch a default PATH (Docker does too); it is not ours to compare.
inspect() { bh inspect --type image --format "$1" "$tag"; }
nanoseconds() {
    case "$1" in
        *m) echo $((${1%m} * 60 * 1000000000)) ;;
        *s) echo $((${1%s} * 1000000000)) ;;
        *) die "IMAGE_HEALTHCHECK_*: write durations as Ns or Nm, not '$1'" ;;
    esac
}
got="user=$(inspect '{{.Docker.Config.User}}')
workdir=$(inspect '{{.Docker.Config.WorkingDir}}')
ports=$(inspect '{{range $p, $_ := .Docker.Config.ExposedPorts}}{{$p}} {{end}}')
volumes=$(inspect '{{range $v, $_ := .Docker.Config.Volumes}}{{$v}} {{end}}')
env=$(inspect '{{range .Docker.Config.Env}}{{println .}}{{end}}' | grep -v '^PATH=' | tr '\n' ' ')
healthcheck=$(inspect '{{with .Docker.Config.Healthcheck}}{{range .Test}}{{.}} {{end}}interval={{.Interval.Nanoseconds}} timeout={{.Timeout.Nanoseconds}} start-period={{.StartPeriod.Nanoseconds}} retries={{.Retries}}{{end}}')
stopsignal=$(inspect '{{.Docker.Config.StopSignal}}')
entrypoint=$(inspect '{{range .Docker.Config.Entrypoint}}{{.}} {{end}}')
cmd=$(inspect '{{range .Docker.Config.Cmd}}{{.}} {{end}}')"
sorted() { printf '%s\n' "$@" | LC_ALL=C sort | tr '\n' ' '; }
want="user=$IMAGE_USER
workdir=$IMAGE_WORKDIR
ports=$(sorted "${IMAGE_PORTS[@]}")
volumes=$(sorted "${IMAGE_VOLUMES[@]}")
env=${IMAGE_ENV[*]} 
healthcheck=CMD ${IMAGE_HEALTHCHECK[*]} interval=$(nanoseconds "$IMAGE_HEALTHCHECK_INTERVAL") timeout=$(nanoseconds "$IMAGE_HEALTHCHECK_TIMEOUT") start-period=$(nanoseconds "$IMAGE_HEALTHCHECK_START_PERIOD") retries=$IMAGE_HEALTHCHECK_RETRIES
stopsignal=$IMAGE_STOPSIGNAL
entrypoint=${IMAGE_ENTRYPOINT[*]} 
cmd=${IMAGE_CMD[*]} "
if [ "$got" = "$want" ]; then
    pass "image configuration matches the IMAGE_* block: $(echo "$got" | tr '\n' ';')"
else
    fail "image configuration differs from the IMAGE_* block:
--- wanted
$want
--- got
$got"
fi

if ! $run_test; then
    echo "built $tag"
    echo "image: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
fi

# --- 4. The relay in the image, tested from the host. ----------------------------------------------
step "testing the relay inside $tag"
command -v curl >/dev/null || die "curl is needed for --test"

# A free port below the kernel's ephemeral range, so that tests binding port 0 at the same time
# cannot take it between our check and the relay's bind.
used_ports() {
    local _sl local_addr _rest
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | while read -r _sl local_addr _rest; do
        case "$local_addr" in *:*) echo $((16#${local_addr##*:})) ;; esac
    done
}
taken=" "
free_port() {
    local p used
    used=" $(used_ports | tr '\n' ' ')"
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        case "$used$taken" in *" $p "*) continue ;; esac
        taken="$taken$p "
        echo "$p"
        return
    done
}
smtp_port=$(free_port)
smtps_port=$(free_port)
admin_port=$(free_port)
unused_port=$(free_port)
legacy_port=$(free_port)
# A binary built with the legacy-tls feature links OpenSSL: then the image must also serve TLS 1.0
# (the OpenSSL libraries came into the root filesystem through ldd).
# (ldd's output is taken whole first: with pipefail, `ldd | grep -q` fails when grep stops early.)
legacy=false
libraries=$(LC_ALL=C ldd "$binary" 2>/dev/null || true)
case "$libraries" in *libssl.so*) legacy=true ;; esac
# A release build compiles OpenSSL in (legacy-tls-vendored): its version text is in the binary.
if grep -aqE 'OpenSSL [0-9]+\.[0-9]+\.[0-9]+ +[0-9]+ [A-Z][a-z][a-z] [0-9]{4}' "$binary"; then
    legacy=true
fi

test_ctr=$(bh from "$tag")
containers+=("$test_ctr")
# What a runtime would start: the image's entrypoint and command, as its user, with its env.
mapfile -t run_argv < <(inspect '{{range .Docker.Config.Entrypoint}}{{println .}}{{end}}{{range .Docker.Config.Cmd}}{{println .}}{{end}}' | sed '/^$/d')

set +e
version=$(bh run "$test_ctr" -- /usr/local/bin/smtp2oauth --version 2>&1)
status=$?
set -e
# The root filesystem ran under chroot above, so a failure here is buildah's.
[ "$status" -eq 0 ] || skip "buildah run (chroot isolation) is refused here: $version"
pass "buildah run works: $version"

password="Scan-to-email-$RANDOM$RANDOM"
set +e
hash=$(printf '%s\n' "$password" | bh run "$test_ctr" -- /usr/local/bin/smtp2oauth hash-password)
status=$?
set -e
case "$status:$hash" in
    '0:$argon2id$'*) pass "smtp2oauth hash-password in the image made a device password hash" ;;
    *) die "smtp2oauth hash-password failed (exit $status): $hash" ;;
esac

# Configuration from the environment alone (nothing at /etc/smtp2oauth/smtp2oauth.toml) with the
# client secret as a Docker secret: a file mounted under /run/secrets, named by
# client_secret_file, read as uid 65532 (docs/deploy.md: the file must be readable by 65532).
# check-config loads the credential as `serve` does, without going to the network.
secret_value="image-test-client-secret-$RANDOM$RANDOM"
secret_file="$work/client_secret"
printf '%s\n' "$secret_value" >"$secret_file"
env_only=(
    --env "SMTP2OAUTH_LISTENERS__SMTP__ADDRESS=0.0.0.0:2525"
    --env "SMTP2OAUTH_ACCOUNTS__SCANNER__MAILBOX=scanner@example.com"
    --env "SMTP2OAUTH_ACCOUNTS__SCANNER__TENANT=contoso.onmicrosoft.com"
    --env "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_ID=11111111-2222-3333-4444-555555555555"
    --env "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET_FILE=/run/secrets/smtp2oauth_client_secret"
    --env "SMTP2OAUTH_DEVICES__MFP__USERNAME=mfp-test"
    --env "SMTP2OAUTH_DEVICES__MFP__PASSWORD_HASH=$hash"
    --env "SMTP2OAUTH_DEVICES__MFP__ACCOUNT=scanner"
    --volume "$secret_file:/run/secrets/smtp2oauth_client_secret:ro"
)
# Good: root-owned, readable by the image's group only (docs/deploy.md); bad: root's alone.
for mode in 0440 0400; do
    chown "0:$APP_UID" "$secret_file"
    [ "$mode" = 0400 ] && chown 0:0 "$secret_file"
    chmod "$mode" "$secret_file"
    set +e
    out=$(bh run "${env_only[@]}" "$test_ctr" -- /usr/local/bin/smtp2oauth check-config 2>&1)
    status=$?
    set -e
    if printf '%s' "$out" | grep -qF "$secret_value"; then
        fail "check-config printed the client secret"
    elif [ "$mode" = 0440 ] && [ "$status" -eq 0 ] \
        && printf '%s' "$out" | grep -q 'configuration OK: 1 listener(s), 1 account(s), 1 device(s)'; then
        pass "configuration from the environment alone, client secret from /run/secrets (root:$APP_UID $mode): check-config OK"
    elif [ "$mode" = 0400 ] && [ "$status" -eq 1 ] \
        && printf '%s' "$out" | grep -q 'client_secret_file.*Permission denied'; then
        pass "a secret file uid $APP_UID cannot read (root, mode $mode) is reported by key: client_secret_file ... Permission denied"
    else
        fail "environment-only configuration, secret file mode $mode: check-config exit $status: $out"
    fi
done

# /data as a host directory owned by the image's user, as a fresh Docker volume would be.
data="$work/data"
mkdir -p "$data"
chown "$APP_UID:$APP_UID" "$data"
chmod 0750 "$data"
config_file="$work/smtp2oauth.toml"
cat >"$config_file" <<EOF
# Written by deploy/build-image.sh --test. [store] dir comes from the image (SMTP2OAUTH_STORE__DIR).
[server]
hostname = "relay.image-test"

[[listeners]]
name = "plain"
address = "127.0.0.1:$smtp_port"
tls = "starttls"
allow_insecure_auth = true

[[listeners]]
name = "ssl"
address = "127.0.0.1:$smtps_port"
tls = "implicit"

[[accounts]]
name = "scanner"
mailbox = "scanner@example.com"
route = "capture"
capture_dir = "/data/capture"

[[devices]]
username = "mfp-test"
password_hash = "$hash"
account = "scanner"
EOF
if $legacy; then
    cat >>"$config_file" <<EOF

[[listeners]]
name = "legacy"
address = "127.0.0.1:$legacy_port"
tls = "implicit"
tls_profile = "legacy"
EOF
fi
# As docs/deploy.md says to install it: readable by the image's group, by no one else.
chown "0:$APP_UID" "$config_file"
chmod 0640 "$config_file"

# The relay: the image's entrypoint and command, host network, the config file at the default
# path (no --config, no SMTP2OAUTH_CONFIG), the admin server moved off 8025 the way a user would.
run_common=(--network host
    --volume "$config_file:/etc/smtp2oauth/smtp2oauth.toml:ro"
    --volume "$data:/data")
log="$work/relay.log"
bh run "${run_common[@]}" --env "SMTP2OAUTH_ADMIN__LISTEN=127.0.0.1:$admin_port" \
    "$test_ctr" -- "${run_argv[@]}" >"$log" 2>&1 &
relay_run_pid=$!
echo "started: ${run_argv[*]} (ports: smtp $smtp_port, ssl $smtps_port, admin $admin_port)"

started=false
for _ in $(seq 1 300); do
    if grep -q 'smtp2oauth started' "$log"; then started=true; break; fi
    kill -0 "$relay_run_pid" 2>/dev/null || break
    sleep 0.1
done
if ! $started; then
    echo "--- relay log"; cat "$log"
    die "the relay did not start in the image (log above)"
fi
pass "the relay started from the image's entrypoint with /etc/smtp2oauth/smtp2oauth.toml"
# The relay warns about configuration, store or secrets every user can read; the modes above
# (and a fresh volume) must not draw that warning.
if grep -q 'readable by every user' "$log"; then
    fail "the relay warns about permissions: $(grep 'readable by every user' "$log")"
else
    pass "no permission warning for the configuration (root:$APP_UID 0640) or the store"
fi

relay_pid=""
for pid in $(descendants "$relay_run_pid"); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^${run_argv[0]} "; then
        relay_pid=$pid
    fi
done
[ -n "$relay_pid" ] || die "cannot find the relay process under buildah run (pid $relay_run_pid)"
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$relay_pid/status")
gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$relay_pid/status")
if [ "$uids" = "$APP_UID $APP_UID $APP_UID $APP_UID" ] && [ "$gids" = "$APP_UID $APP_UID $APP_UID $APP_UID" ]; then
    pass "the relay (pid $relay_pid) runs as uid/gid $APP_UID (real, effective, saved, fs)"
else
    fail "the relay runs as uids '$uids' gids '$gids', not $APP_UID"
fi
caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$relay_pid/status")
if [ "$caps" = "0000000000000000" ]; then
    pass "the relay has no effective capabilities"
else
    fail "the relay has effective capabilities $caps"
fi

message() {
    printf 'From: Scanner <scanner@example.com>\r\nTo: you@example.com\r\nSubject: %s\r\n\r\nScanned document.\r\n' "$1" >"$work/$2"
}
message "image test plain" plain.eml
message "image test ssl" ssl.eml
message "image test legacy" legacy.eml
expected=2
if curl -sS --max-time 60 --url "smtp://127.0.0.1:$smtp_port" --user "mfp-test:$password" \
    --mail-from scanner@example.com --mail-rcpt you@example.com \
    --upload-file "$work/plain.eml" >"$work/curl-plain.out" 2>&1; then
    pass "curl sent a message with AUTH on the plain port $smtp_port"
else
    fail "curl could not send on the plain port: $(cat "$work/curl-plain.out")"
fi
if curl -sS --max-time 60 --insecure --url "smtps://127.0.0.1:$smtps_port" --user "mfp-test:$password" \
    --mail-from scanner@example.com --mail-rcpt you@example.com \
    --upload-file "$work/ssl.eml" >"$work/curl-ssl.out" 2>&1; then
    pass "curl sent a message with AUTH over implicit TLS on port $smtps_port (self-signed certificate)"
else
    fail "curl could not send over implicit TLS: $(cat "$work/curl-ssl.out")"
fi
if $legacy; then
    expected=3
    # What a printer from before 2015 does: TLS 1.0 at most, old ciphers (security level 0 lets
    # the host's OpenSSL offer them).
    if curl -sS -v --max-time 60 --insecure --tlsv1.0 --tls-max 1.0 --ciphers 'DEFAULT:@SECLEVEL=0' \
        --url "smtps://127.0.0.1:$legacy_port" --user "mfp-test:$password" \
        --mail-from scanner@example.com --mail-rcpt you@example.com \
        --upload-file "$work/legacy.eml" >"$work/curl-legacy.out" 2>&1 \
        && grep -q 'TLSv1\.0' "$work/curl-legacy.out"; then
        pass "curl sent a message over TLS 1.0 to the tls_profile = \"legacy\" listener (OpenSSL in the image)"
    else
        fail "TLS 1.0 to the legacy listener: $(grep -i 'tls\|curl:' "$work/curl-legacy.out" | head -5)"
    fi
fi
# curl exits 67 (CURLE_LOGIN_DENIED) when the server refuses AUTH; any other failure (connection
# refused, TLS) would not show that the relay checked the password.
set +e
curl -sS --max-time 30 --url "smtp://127.0.0.1:$smtp_port" --user "mfp-test:wrong-$password" \
    --mail-from scanner@example.com --mail-rcpt you@example.com \
    --upload-file "$work/plain.eml" >"$work/curl-bad.out" 2>&1
status=$?
set -e
case "$status" in
    67) pass "a wrong password is refused (curl: login denied)" ;;
    0) fail "a wrong password was accepted" ;;
    *) fail "a wrong password: curl exit $status, not 67 (login denied): $(cat "$work/curl-bad.out")" ;;
esac

captured=""
for _ in $(seq 1 100); do
    captured=$(grep -l -e 'Subject: image test' "$data"/capture/*.eml 2>/dev/null | wc -l)
    [ "$captured" -ge "$expected" ] && break
    sleep 0.1
done
if [ "$captured" -eq "$expected" ] && grep -q 'Subject: image test plain' "$data"/capture/*.eml \
    && grep -q 'Subject: image test ssl' "$data"/capture/*.eml \
    && { ! $legacy || grep -q 'Subject: image test legacy' "$data"/capture/*.eml; }; then
    pass "all $expected messages were captured in the container's /data/capture ($(cd "$data/capture" && printf '%s ' *))"
else
    fail "the messages were not captured in /data/capture: $(ls -la "$data" "$data/capture" 2>&1)"
fi
owner=$(stat -c '%u:%g' "$data/spool")
if [ "$owner" = "$APP_UID:$APP_UID" ] && [ -f "$data/tls/self-signed-key.pem" ]; then
    pass "the store in /data is written as $owner (spool, capture, tls/self-signed-key.pem)"
else
    fail "the store in /data: spool owned by $owner; $(ls -la "$data" "$data/tls" 2>&1)"
fi

# `smtp2oauth health` inside the container, as the HEALTHCHECK runs it (a second process in the
# same container, the same environment; only the admin address moved off 8025 as for the relay).
for mode in "" "--ready"; do
    set +e
    out=$(bh run "${run_common[@]}" --env "SMTP2OAUTH_ADMIN__LISTEN=127.0.0.1:$admin_port" \
        "$test_ctr" -- "${IMAGE_HEALTHCHECK[@]}" $mode 2>&1)
    status=$?
    set -e
    if [ "$status" -eq 0 ]; then
        pass "'${IMAGE_HEALTHCHECK[*]}${mode:+ $mode}' inside the container exits 0${out:+: $out}"
    else
        fail "'${IMAGE_HEALTHCHECK[*]}${mode:+ $mode}' inside the container exits $status: $out"
    fi
done
set +e
out=$(bh run "${run_common[@]}" --env "SMTP2OAUTH_ADMIN__LISTEN=127.0.0.1:$unused_port" \
    "$test_ctr" -- "${IMAGE_HEALTHCHECK[@]}" 2>&1)
status=$?
set -e
if [ "$status" -eq 1 ]; then
    pass "'${IMAGE_HEALTHCHECK[*]}' exits 1 when no admin server answers"
else
    fail "'${IMAGE_HEALTHCHECK[*]}' exits $status (wanted 1) when no admin server answers: $out"
fi

# The admin server from the host.
if body=$(curl -sS --max-time 10 --fail "http://127.0.0.1:$admin_port/healthz" 2>&1); then
    pass "GET /healthz from the host: $body"
else
    fail "GET /healthz from the host: $body"
fi
if curl -sS --max-time 10 --fail "http://127.0.0.1:$admin_port/metrics" >"$work/metrics" 2>&1 \
    && grep -Eq "^smtp2oauth_messages_received_total\\{account=\"scanner\"\\} $expected(\\.0)?\$" "$work/metrics"; then
    pass "GET /metrics from the host counts the $expected messages (smtp2oauth_messages_received_total)"
else
    fail "GET /metrics from the host: $(grep -i 'received_total\|^curl' "$work/metrics" | head -5)"
fi

# SIGTERM, as `docker stop` sends it to the container's first process: the relay itself.
kill -TERM "$relay_pid"
stopped=false
for _ in $(seq 1 600); do
    if ! kill -0 "$relay_run_pid" 2>/dev/null; then stopped=true; break; fi
    sleep 0.1
done
if $stopped; then
    set +e
    wait "$relay_run_pid"
    status=$?
    set -e
    relay_run_pid=""
    if [ "$status" -eq 0 ] && grep -q 'SIGTERM: shutting down' "$log" && grep -q 'INFO .*stopped' "$log"; then
        pass "SIGTERM: the relay stopped cleanly (exit 0, 'stopped' logged)"
    else
        fail "SIGTERM: exit status $status; log tail: $(tail -5 "$log")"
    fi
else
    fail "SIGTERM: the relay was still running 60 s later"
fi

if [ "$failed" -ne 0 ]; then
    echo "--- relay log"
    cat "$log"
fi
echo "image test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
