#!/usr/bin/env bash
# Smoke test of smtp2oauth.exe under Wine (Debian's wine64), headless: no X, a private prefix.
#
#   deploy/windows/wine-smoke.sh --exe PATH [--config FILE]
#
# 1. Console: `smtp2oauth.exe serve` with the capture route; curl (on the Linux side) sends a
#    message with AUTH PLAIN; the .eml is written; then SIGINT, which Wine turns into the console's
#    CTRL_C_EVENT: the relay's Ctrl-C handler runs the clean shutdown ("stopped", exit 0).
# 2. Service: `service install --config ...` (the service manager of the Wine prefix), `sc start`,
#    a curl message captured, `sc stop`: the service's stop control runs the same shutdown (STOP_PENDING
#    with checkpoints, then STOPPED with exit code 0), then `service uninstall` removes it.
#    Wine ends services when no ordinary program runs in the prefix, so a waiting find.exe stands in
#    for a logged-on session throughout.
# 3. With --config: `check-config` accepts that file (the zip's Windows example).
#
# Wine 8 (Debian 12) lacks bcryptprimitives.dll, where Rust's standard library gets random numbers
# on Windows 10 and later; a stand-in (deploy/windows/wine-bcryptprimitives.c, built here with
# x86_64-w64-mingw32-gcc) goes into the test prefix only.
#
# What Wine cannot show is said in NOTE lines, not passed: ACLs (Wine keeps no DACL on its Unix
# drive: it maps one to mode bits and reads Everyone back) and the service's restart on an error
# exit (Wine's service manager lacks SERVICE_CONFIG_FAILURE_ACTIONS_FLAG).
#
# Prints PASS/FAIL/NOTE lines and "wine smoke: N passed, N failed"; exit 0 when all passed, 1
# otherwise, 2 on usage errors.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
WINE=${WINE:-/usr/lib/wine/wine64}
WINESERVER=${WINESERVER:-/usr/lib/wine/wineserver}

exe="" config=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --exe) exe=${2:?--exe needs a path}; shift 2 ;;
        --config) config=${2:?--config needs a file}; shift 2 ;;
        *) echo "wine-smoke: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -f "$exe" ] || { echo "wine-smoke: --exe: no file '$exe'" >&2; exit 2; }

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
# What Wine cannot show, said instead of passed.
note() { echo "NOTE: $*"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-wine.XXXXXX")
export WINEPREFIX=$work/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" DISPLAY=""
cleanup() {
    # Only after the relay was stopped (or failed to): ends the prefix's programs and service
    # manager.
    "$WINESERVER" -k 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A Windows path (Z: is the Linux root in every Wine prefix).
winpath() { printf 'Z:%s' "$1" | tr / '\\'; }
# Runs a Windows program and prints what it wrote, carriage returns removed. The output goes
# through a file, never straight into a pipe: the first program of a Wine session starts
# services.exe and the rest, which keep that program's standard output and error, and a
# `$(...)` or `| grep` reading from them would wait for those to end.
wine() {
    local status=0
    "$WINE" "$@" </dev/null >"$work/wine.out" 2>&1 || status=$?
    tr -d '\r' <"$work/wine.out"
    return "$status"
}

# A free TCP port that nothing listens on.
free_port() {
    local p used
    used=" $(awk 'FNR > 1 { split($2, a, ":"); printf "%d ", strtonum("0x" a[2]) }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)"
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        case "$used${taken:-}" in *" $p "*) continue ;; esac
        taken="${taken:- }$p "
        echo "$p"
        return
    done
}

# Waits up to $2 seconds for the text $3 in the file $1.
wait_for() {
    local i
    for i in $(seq 1 $(($2 * 10))); do
        grep -q "$3" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# A relay on loopback ports with the capture route, the store in $1, and the example's device.
relay_config() {
    cat <<CONFIG
[server]
hostname = "relay.wine-test"

[[listeners]]
name = "plain"
address = "127.0.0.1:$2"
tls = "starttls"
allow_insecure_auth = true

[store]
dir = '$(winpath "$1")'

[admin]
listen = "127.0.0.1:$3"

[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
route = "capture"

[[devices]]
username = "mfp-3f"
password_hash = "\$argon2id\$v=19\$m=19456,t=2,p=1\$xkSolFz4cFMzaJ+l2WEGVQ\$4oJi5pnhTbYQXKPuCiwu1N0ilpQY8JQqmes0yjPMvD0"
account = "scanner"
CONFIG
}

# curl sends one message with AUTH PLAIN to port $1; the capture directory $2 must then hold it.
send_and_capture() {
    local port=$1 capture=$2 what=$3 msg
    msg=$work/$what.eml
    printf 'From: Scanner <scanner@contoso.com>\r\nTo: you@example.com\r\nSubject: wine %s\r\n\r\nScanned.\r\n' "$what" >"$msg"
    if curl -sS -v --max-time 60 --url "smtp://127.0.0.1:$port" --user mfp-3f:scan-to-email \
        --login-options AUTH=PLAIN --mail-from scanner@contoso.com --mail-rcpt you@example.com \
        --upload-file "$msg" >"$work/curl-$what.log" 2>&1 && grep -q '^> AUTH PLAIN' "$work/curl-$what.log"; then
        pass "$what: curl sent a message with AUTH PLAIN: $(grep '^< 250 2.0.0' "$work/curl-$what.log" | tr -d '\r')"
    else
        fail "$what: curl AUTH PLAIN: $(grep -E '^(<|curl:)' "$work/curl-$what.log" | tail -3 | tr '\r\n' '  ')"
    fi
    for _ in $(seq 1 50); do
        grep -l "Subject: wine $what" "$capture"/*.eml >/dev/null 2>&1 && break
        sleep 0.2
    done
    if grep -l "Subject: wine $what" "$capture"/*.eml >/dev/null 2>&1; then
        pass "$what: the message is in the capture directory as $(basename "$(grep -l "Subject: wine $what" "$capture"/*.eml)")"
    else
        fail "$what: no .eml in $capture: $(ls -la "$capture" 2>&1 | tr '\n' ' ')"
    fi
}

prepare_prefix() {
    local start=$SECONDS
    wine wineboot --init >"$work/wineboot.log" 2>&1 || true
    if [ ! -f "$WINEPREFIX/drive_c/windows/system32/kernel32.dll" ]; then
        fail "wineboot did not create a prefix: $(tail -3 "$work/wineboot.log")"
        return 1
    fi
    # Until wineboot's own services.exe has exited, a program started now gets a second one, and
    # the two answer the service manager's calls in turn (a service one installed, the other has
    # never heard of): let the first session end whole.
    "$WINESERVER" -w
    if [ ! -f "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" ]; then
        x86_64-w64-mingw32-gcc -shared -O2 -s -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
            "$here/wine-bcryptprimitives.c" -lbcrypt || { fail "cannot build the bcryptprimitives stand-in"; return 1; }
    fi
    # Keep the prefix's wineserver, and with the program below its service manager, up between
    # commands.
    "$WINESERVER" -p
    pass "Wine prefix ready in $((SECONDS - start)) s ($("$WINE" --version 2>/dev/null))"
    hold_prefix
}

console_relay() {
    local dir=$work/console smtp admin pid status
    mkdir -p "$dir"
    smtp=$(free_port)
    admin=$(free_port)
    relay_config "$dir/data" "$smtp" "$admin" >"$dir/relay.toml"
    # Started directly (not through the wine function) so that $! is the program's own process.
    "$WINE" "$exe" serve --config "$(winpath "$dir/relay.toml")" </dev/null >"$dir/relay.log" 2>&1 &
    pid=$!
    if wait_for "$dir/relay.log" 120 'smtp2oauth started'; then
        pass "console: the relay started under Wine with the capture route"
        send_and_capture "$smtp" "$dir/data/capture" console
    else
        fail "console: the relay did not start: $(tail -5 "$dir/relay.log")"
    fi
    # Wine delivers SIGINT to a console program as CTRL_C_EVENT (its console control handlers).
    kill -INT "$pid" 2>/dev/null || true
    status=0
    timeout 60 tail --pid="$pid" -f /dev/null || { kill -KILL "$pid" 2>/dev/null; status=124; }
    wait "$pid" || status=$?
    if [ "$status" -eq 0 ] && grep -q 'Ctrl-C: shutting down' "$dir/relay.log" && grep -q 'stopped' "$dir/relay.log"; then
        pass "console: Ctrl-C (CTRL_C_EVENT): clean shutdown, exit 0"
    else
        fail "console: exit $status after Ctrl-C; $(tail -3 "$dir/relay.log")"
    fi
}

# The state sc.exe reports for the service (RUNNING, STOPPED, ...), or nothing.
service_state() {
    wine sc query smtp2oauth 2>/dev/null | sed -n 's/.*STATE *: *[0-9]* *\([A-Z_]*\).*/\1/p'
}

wait_state() {
    local i
    for i in $(seq 1 $(($2 * 4))); do
        [ "$(service_state)" = "$1" ] && return 0
        sleep 0.25
    done
    return 1
}

# Wine ends a service's process as soon as no ordinary program runs in the prefix (its service
# dispatcher exits when the last user process does, and services.exe with it: the next program
# starts a new one), where Windows keeps services running with nobody logged on. A program
# waiting on its standard input stands in for that session for the whole test: find.exe, reading
# a FIFO it holds both ends of (so no end of input ever comes); cleanup's wineserver -k ends it.
hold_prefix() {
    mkfifo "$work/hold"
    "$WINE" find.exe never <>"$work/hold" >/dev/null 2>&1 &
    note "Wine stops services when no other program runs in the prefix; find.exe (pid $!) stands in for a logged-on session"
}

service_relay() {
    local dir=$work/service smtp admin out log
    mkdir -p "$dir"
    smtp=$(free_port)
    admin=$(free_port)
    relay_config "$dir/data" "$smtp" "$admin" >"$dir/smtp2oauth.toml"
    log=$dir/logs/smtp2oauth.log
    if out=$(wine "$exe" service install --config "$(winpath "$dir/smtp2oauth.toml")" \
        --log-dir "$(winpath "$dir/logs")" 2>&1) && echo "$out" | grep -q '^installed service smtp2oauth .*NT SERVICE\\smtp2oauth'; then
        pass "service install: $(echo "$out" | grep '^installed' | tr -d '\r')"
    else
        fail "service install: $out"
        return
    fi
    # Wine's service manager has no SERVICE_CONFIG_FAILURE_ACTIONS_FLAG (restart after an error
    # exit as well as after a crash); install warns and goes on, as it would on such a Windows.
    if echo "$out" | grep -q 'cannot set the service to restart after a failure'; then
        note "Wine: $(echo "$out" | grep -o 'cannot set the service to restart.*(os error [0-9]*)' | tr -d '\r')"
    fi
    if wine sc start smtp2oauth >"$dir/sc-start.log" 2>&1; then
        pass "service: sc start: $(grep -o 'STATE.*' "$dir/sc-start.log" | tr -d '\r' | tr -s ' ')"
    else
        fail "service: sc start: $(tr -d '\r' <"$dir/sc-start.log" | tr '\n' ' ')"
    fi
    if wait_state RUNNING 60 && wait_for "$log" 60 'smtp2oauth started'; then
        pass "service: sc start: RUNNING, the relay logs to $(basename "$log")"
        # The store was made by `service install`, so the relay checks who may read it.
        if grep -q 'store directory .*is readable by every user' "$log"; then
            note "Wine: ACLs are not tested here: Wine keeps no DACL on its Unix drive (it maps one to mode bits and reads Everyone back), so the relay warns that the store is readable by every user"
        else
            note "Wine: ACLs are not tested here: Wine keeps no DACL on its Unix drive (it maps one to mode bits)"
        fi
        send_and_capture "$smtp" "$dir/data/capture" service
    else
        fail "service did not start (state $(service_state)): $(tr -d '\r' <"$dir/sc-start.log"); $(tail -5 "$log" 2>&1)"
    fi
    wine sc stop smtp2oauth >"$dir/sc-stop.log" 2>&1 || true
    if wait_state STOPPED 60 && grep -q 'service stop requested' "$log" && grep -q 'smtp2oauth::relay: stopped' "$log" \
        && wine sc query smtp2oauth >"$dir/sc-query.log" 2>&1 && grep -q 'WIN32_EXIT_CODE *: 0 ' "$dir/sc-query.log"; then
        pass "service: sc stop: the stop control ran the clean shutdown ($(grep -o 'STATE.*' "$dir/sc-stop.log" | tr -d '\r' | tr -s ' ')), STOPPED, exit code 0"
    else
        fail "service: sc stop: state $(service_state); $(cat "$dir/sc-stop.log"); $(tail -3 "$log" 2>&1)"
    fi
    if out=$(wine "$exe" service uninstall 2>&1) && ! wine sc query smtp2oauth >/dev/null 2>&1; then
        pass "service uninstall: $(echo "$out" | tail -1 | cut -c1-60 | tr -d '\r')..."
    else
        fail "service uninstall: $out"
    fi
}

check_example() {
    local out dir=$work/example
    mkdir -p "$dir"
    cp "$config" "$dir/smtp2oauth.toml"
    if out=$(cd "$dir" && wine "$exe" check-config --config "$(winpath "$dir/smtp2oauth.toml")" 2>&1); then
        pass "check-config accepts $(basename "$config"): $(echo "$out" | tail -1 | tr -d '\r')"
    else
        fail "check-config $(basename "$config"): $out"
    fi
}

start=$SECONDS
if prepare_prefix; then
    out=$(wine "$exe" --version) && pass "smtp2oauth.exe --version: $out" || fail "smtp2oauth.exe --version: $out"
    [ -z "$config" ] || check_example
    console_relay
    service_relay
fi
echo "wine smoke: $passed passed, $failed failed in $((SECONDS - start)) s"
[ "$failed" -eq 0 ]
