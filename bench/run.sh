#!/usr/bin/env bash
# Issue 3's figure: spooling throughput with fsync on vs off (10 KiB messages, 50 concurrent
# clients, upstream a local STARTTLS + XOAUTH2 sink), as medians of 3 alternating pairs.
#
#   bench/run.sh                      # build release, then the comparison
#   bench/run.sh --runs 5 --json      # extra arguments go to `smtp2oauth-bench compare`;
#                                     # they come last, so they override the defaults below
#
# Where the spool lives decides what an fsync costs, so this script chooses it on purpose
# (see docs/benchmarks.md, "Which filesystem"):
#   BENCH_SPOOL=loop    (default when root) a fresh journaled ext4 on a loop device, made and
#                       removed by this script: what a relay's disk normally is.
#   BENCH_SPOOL=tmpdir  the temporary directory ($TMPDIR or /tmp) as it is.
#   BENCH_WORK_DIR=DIR  this directory (implies BENCH_SPOOL=tmpdir with DIR).
# The loop filesystem falls back to tmpdir, with a warning, when it cannot be made.
#
# Devices are recognised by address (--device-auth address), not by AUTH PLAIN, so the figure is
# the spool's alone. Pass --device-auth password to include logins (cached after each device's
# first one; see docs/benchmarks.md, "Device logins").
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

echo "== building (release) ==" >&2
cargo build --release -p smtp2oauth -p smtp2oauth-bench >&2

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
        # 2 GiB sparse image; inode tables and journal initialised now, so no background
        # ext4lazyinit thread writes during the measurement.
        truncate -s 2G "$scratch/spool.img"
        if mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$scratch/spool.img" \
            && mkdir -p "$scratch/mnt" \
            && mount -o loop "$scratch/spool.img" "$scratch/mnt"; then
            mounted="$scratch/mnt"
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
# The context goes with the figures: on stdout, unless stdout is JSON.
header_to=1
for a in "$@"; do
    if [ "$a" = "--json" ]; then header_to=2; fi
done
{
    echo "== smtp2oauth-bench compare =="
    echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit:   $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' (work tree has changes)')"
    echo "machine:  $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "spool:    $work_dir ($mode: $fs_desc; $journal)"
    echo "command:  smtp2oauth-bench compare --sessions 50 --messages 8000 --size 10240 --runs 3 --device-auth address --work-dir $work_dir $*"
    echo
} >&"$header_to"

"$bench" compare \
    --relay "$relay" \
    --sessions 50 \
    --messages 8000 \
    --size 10240 \
    --runs 3 \
    --device-auth address \
    --work-dir "$work_dir" \
    "$@"
