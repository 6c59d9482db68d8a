#!/usr/bin/env bash
# Builds the release relay and bench, prepares the filesystem the spool (and Postfix's queue)
# lives on, and runs the benchmark. See docs/benchmarks.md.
#
#   bench/run.sh                      # durable vs non-durable spooling (`compare`)
#   bench/run.sh compare --runs 5     # the same with other arguments (they override the defaults)
#   bench/run.sh peers [ARGS]         # ceiling / relay / Postfix, same load, alternated rounds
#   bench/run.sh memory [ARGS]        # idle RSS, 1,000 idle sessions, one 35 MiB message
#   bench/run.sh run [ARGS]           # one scenario
#   bench/run.sh targets [ARGS]       # every target in turn; ARGS go to each of them;
#                                     # tables and JSON saved under bench/results/<UTC time>/
#   BENCH_TARGETS="t1-10 t6" bench/run.sh targets   # only some targets (names below)
#
# Where the spool lives decides what an fsync costs, so this script chooses it on purpose
# (see docs/benchmarks.md, "Which filesystem"):
#   BENCH_SPOOL=loop    (default when root) a fresh journaled ext4 on a loop device, made and
#                       removed by this script: what a relay's disk normally is.
#   BENCH_SPOOL=tmpdir  the temporary directory ($TMPDIR or /tmp) as it is.
#   BENCH_WORK_DIR=DIR  this directory (implies BENCH_SPOOL=tmpdir with DIR).
# The loop filesystem falls back to tmpdir, with a warning, when it cannot be made.
# BENCH_NO_BUILD=1 skips the build (the binaries in target/release are used as they are).
#
# Postfix (the `postfix` peer) needs root and Debian's packages:
#   apt-get install postfix libsasl2-modules sasl2-bin
# Without them the bench says so and measures the other peers. The script never touches the
# system's Postfix: each run makes a private instance under the work directory.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

sub="compare"
case "${1:-}" in
    compare | peers | memory | run | targets)
        sub="$1"
        shift
        ;;
esac

if [ -z "${BENCH_NO_BUILD:-}" ]; then
    echo "== building (release) ==" >&2
    cargo build --release -p smtp2oauth -p smtp2oauth-bench >&2
fi

bench="$repo/target/release/smtp2oauth-bench"
relay="$repo/target/release/smtp2oauth"

mode="${BENCH_SPOOL:-loop}"
work_dir="${BENCH_WORK_DIR:-}"
if [ -n "$work_dir" ]; then
    mode="tmpdir"
fi

scratch=""
mounted=""
cleanup() {
    if [ -n "$mounted" ]; then
        umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true
    fi
    if [ -n "$scratch" ]; then
        rm -rf "$scratch"
    fi
}
trap cleanup EXIT INT TERM

if [ "$mode" = "loop" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v mkfs.ext4 >/dev/null && command -v mount >/dev/null; then
        scratch="$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-bench-fs.XXXXXX")"
        # 4 GiB sparse image (room for 1 MiB and 35 MiB messages in flight); inode tables and
        # journal initialised now, so no background ext4lazyinit thread writes during the
        # measurement.
        truncate -s 4G "$scratch/spool.img"
        if mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$scratch/spool.img" \
            && mkdir -p "$scratch/mnt" \
            && mount -o loop "$scratch/spool.img" "$scratch/mnt"; then
            mounted="$scratch/mnt"
            # Postfix's daemons (user postfix) must reach their queue under it.
            chmod 755 "$scratch" "$mounted"
            work_dir="$mounted"
        else
            echo "warning: cannot make a loop ext4 filesystem; using the temporary directory" >&2
            mode="tmpdir"
        fi
    else
        echo "warning: BENCH_SPOOL=loop needs root, mkfs.ext4 and mount; using the temporary directory" >&2
        mode="tmpdir"
    fi
fi
if [ -z "$work_dir" ]; then
    work_dir="${TMPDIR:-/tmp}"
fi

fs_desc="$(findmnt -n -o FSTYPE,OPTIONS --target "$work_dir" 2>/dev/null || echo unknown)"
journal="no journal"
if [ "$mode" = "loop" ] || ps -e -o comm= | grep -q "^jbd2/$(basename "$(findmnt -n -o SOURCE --target "$work_dir" 2>/dev/null)")"; then
    journal="journaled"
fi
postfix_version="$(postconf -d -h mail_version 2>/dev/null || echo "not installed")"

# The context of a run, printed before its figures.
context() {
    echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit:   $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (work tree has changes)')"
    echo "machine:  $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "spool:    $work_dir ($mode: $fs_desc; $journal)"
    echo "postfix:  $postfix_version"
}

# The bench is run as a child, never exec'd: the EXIT trap must unmount the loop filesystem.
# With `set -e` a failing run (status 2: messages lost or refused) ends the script with its
# status, and the trap still runs.

# The context goes with the figures: on stdout, unless stdout is JSON.
header_to=1
for a in "$@"; do
    if [ "$a" = "--json" ]; then header_to=2; fi
done

if [ "$sub" = "compare" ]; then
    {
        echo "== smtp2oauth-bench compare =="
        context
        echo "command:  smtp2oauth-bench compare --sessions 50 --messages 8000 --size 10240 --runs 3 --device-auth address --work-dir $work_dir $*"
        echo
    } >&"$header_to"
    "$bench" compare --relay "$relay" --sessions 50 --messages 8000 --size 10240 --runs 3 \
        --device-auth address --work-dir "$work_dir" "$@"
    exit 0
fi

if [ "$sub" != "targets" ]; then
    {
        echo "== smtp2oauth-bench $sub =="
        context
        echo "command:  smtp2oauth-bench $sub --work-dir $work_dir $*"
        echo
    } >&"$header_to"
    "$bench" "$sub" --relay "$relay" --work-dir "$work_dir" "$@"
    exit 0
fi

# The targets (docs/benchmarks.md): name, then the arguments. 10 KiB messages, AUTH PLAIN from the device,
# durable spooling, pacing off (the bench's relay config), in-process fakes upstream.
targets=(
    "t1-10|peers --peers ceiling,relay,postfix --sessions 10 --messages 3000 --per-session 1 --size 10240 --runs 3"
    "t1-50|peers --peers ceiling,relay,postfix --sessions 50 --messages 4000 --per-session 1 --size 10240 --runs 3"
    "t2|peers --peers ceiling,relay --sessions 10 --messages 20000 --per-session 100 --size 10240 --runs 3"
    "t3|peers --peers ceiling,relay,postfix --sessions 10 --messages 300 --per-session 1 --size 1048576 --runs 3"
    "t4|peers --peers ceiling,relay,relay-nopool,postfix --sessions 10 --messages 600 --per-session 1 --size 10240 --reply-delay-ms 20 --max-upstream-connections 3 --runs 3"
    "t5|memory --idle-sessions 1000 --large-size 36700160 --runs 3"
    "t6|run --peer relay --sessions 10 --messages 8000 --per-session 100 --size 10240 --reply-delay-ms 20 --token-lifetime-s 60"
    "t7|peers --peers ceiling,relay,relay-nopool --sessions 1 --messages 500 --per-session 1 --size 10240 --wait-for-upstream 20s --runs 5"
)
results="${BENCH_RESULTS:-$repo/bench/results}/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$results"
{
    echo "== targets =="
    context
    echo "results:  $results"
    echo
} | tee "$results/context.txt"
status=0
for t in "${targets[@]}"; do
    name="${t%%|*}"
    args="${t#*|}"
    if [ -n "${BENCH_TARGETS:-}" ] && ! [[ " $BENCH_TARGETS " == *" $name "* ]]; then
        continue
    fi
    echo "== $name: smtp2oauth-bench $args $* ==" | tee "$results/$name.txt"
    echo "load:     $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results/$name.txt"
    # shellcheck disable=SC2086 # the arguments are split on purpose
    if "$bench" $args --relay "$relay" --work-dir "$work_dir" "$@" --json \
        >"$results/$name.json" 2> >(tee -a "$results/$name.txt" >&2); then
        :
    else
        echo "$name: exit status $?" | tee -a "$results/$name.txt"
        status=1
    fi
done
exit "$status"
