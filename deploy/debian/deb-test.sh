# shellcheck shell=bash
# `deploy/release.sh deb-test FILE.deb`: installs the smtp2oauth package on this machine, checks
# what an admin relies on, removes it, purges it, and checks what is left after each. Sourced by
# deploy/release.sh (which defines pass, fail, step, free_port, wait_for_log); run as root.
#
# Checks, each a PASS or FAIL line, then "deb test: N passed, M failed":
#   dpkg -i: the postinst says the relay is enabled but not started; `smtp2oauth --version` is
#   the package's version; the system user and group smtp2oauth; /var/lib/smtp2oauth is
#   smtp2oauth:smtp2oauth 0700; the configuration is a conffile, root:smtp2oauth 0640;
#   `smtp2oauth check-config` passes on it as root and as the user smtp2oauth; the unit is
#   enabled and nothing started the relay; the installed unit passes systemd-analyze verify; the
#   installed configuration runs the relay as the unit would (user smtp2oauth, its store, umask
#   0077) and a curl AUTH PLAIN message lands in /var/lib/smtp2oauth/capture;
#   dpkg -i again: an edited configuration is kept, without a question;
#   dpkg -r: binary and unit gone; user, store (with the captured message) and configuration kept;
#   dpkg -P: user, group, store, configuration, permission override and unit links gone.
#
# Exit status 77 when this machine cannot take the test (not root, no dpkg). It refuses to run
# while smtp2oauth is installed other than by an earlier run of this test (whose marker file,
# /var/lib/smtp2oauth/.deb-test, survives a failed run): it would replace a real installation.
# Runs are serialised with a lock, so that several test suites on one machine take turns.

DEB_TEST_MARKER=/var/lib/smtp2oauth/.deb-test
DEB_TEST_LOCK=/run/lock/smtp2oauth-deb-test.lock

cmd_deb_test() {
    local deb=${1:-}
    [ -f "$deb" ] || usage_error "deb-test needs the .deb file to install"
    deb=$(cd "$(dirname "$deb")" && pwd -P)/$(basename "$deb")
    if [ "$(id -u)" -ne 0 ] || ! command -v dpkg >/dev/null; then
        echo "SKIP: deb-test installs a package: it needs root and dpkg"
        exit 77
    fi
    mkdir -p "$(dirname "$DEB_TEST_LOCK")"
    exec 9>"$DEB_TEST_LOCK"
    flock --timeout 600 9 || die "another deb-test held $DEB_TEST_LOCK for 10 minutes"
    deb_test_clean_slate
    deb_test_install "$deb"
    deb_test_installed "$deb"
    deb_test_relay
    deb_test_reinstall "$deb"
    deb_test_remove
    deb_test_purge
    echo "deb test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

# dpkg, retried while another dpkg or apt holds its lock (other work on the same machine).
deb_dpkg() {
    local out i
    for i in $(seq 1 120); do
        if out=$(dpkg --force-confold "$@" </dev/null 2>&1); then
            printf '%s\n' "$out"
            return 0
        fi
        case "$out" in *"lock"*) sleep 1 ;; *) printf '%s\n' "$out"; return 1 ;; esac
    done
    printf '%s\n' "$out"
    return 1
}

deb_installed() {
    [ "$(dpkg-query -W -f '${db:Status-Status}' smtp2oauth 2>/dev/null)" = installed ]
}

deb_test_clean_slate() {
    local state
    state=$(dpkg-query -W -f '${db:Status-Status}' smtp2oauth 2>/dev/null || true)
    case "$state" in
        "" | not-installed) return 0 ;;
    esac
    [ -e "$DEB_TEST_MARKER" ] \
        || die "smtp2oauth is installed on this machine (dpkg state '$state') and not by deb-test: remove it first (dpkg -P smtp2oauth)"
    echo "purging the package an earlier deb-test left behind"
    deb_dpkg --purge smtp2oauth >/dev/null || die "cannot purge the smtp2oauth package left behind"
}

deb_test_install() {
    local out
    if out=$(deb_dpkg --install "$1"); then
        pass "dpkg -i $(basename "$1")"
    else
        fail "dpkg -i $(basename "$1"): $out"
        echo "deb test: $passed passed, $failed failed"
        exit 1
    fi
    touch "$DEB_TEST_MARKER"
    case "$out" in
        *"installed and enabled, but not started"*) pass "postinst: 'smtp2oauth is installed and enabled, but not started. Edit ...'" ;;
        *) fail "postinst printed no note that the relay is not started: $out" ;;
    esac
}

deb_test_installed() {
    local want out entry
    want="smtp2oauth $(dpkg-deb --field "$1" Version)"
    out=$(/usr/bin/smtp2oauth --version 2>&1) || true
    [ "$out" = "${want%%+*}" ] && pass "smtp2oauth --version: $out" || fail "smtp2oauth --version: '$out', wanted '${want%%+*}'"
    entry=$(getent passwd smtp2oauth || true)
    case "$entry" in
        smtp2oauth:x:*:*:*:/var/lib/smtp2oauth:/usr/sbin/nologin)
            [ "$(echo "$entry" | cut -d: -f3)" -lt 1000 ] && pass "system user: $entry" || fail "not a system user: $entry" ;;
        *) fail "user smtp2oauth: '$entry'" ;;
    esac
    getent group smtp2oauth >/dev/null && pass "group smtp2oauth: $(getent group smtp2oauth)" || fail "no group smtp2oauth"
    deb_expect_stat /var/lib/smtp2oauth "smtp2oauth:smtp2oauth 700" "the store"
    deb_expect_stat /etc/smtp2oauth/smtp2oauth.toml "root:smtp2oauth 640" "the configuration"
    dpkg-query -W -f '${Conffiles}' smtp2oauth | grep -q '^ /etc/smtp2oauth/smtp2oauth.toml ' \
        && pass "/etc/smtp2oauth/smtp2oauth.toml is a conffile" || fail "/etc/smtp2oauth/smtp2oauth.toml is not a conffile"
    deb_check_config root
    deb_check_config smtp2oauth
    deb_test_unit
}

deb_expect_stat() {
    local got
    got=$(stat -c '%U:%G %a' "$1" 2>&1) || true
    [ "$got" = "$2" ] && pass "$3 $1: $got" || fail "$3 $1: '$got', wanted '$2'"
}

# check-config at the default path (/etc/smtp2oauth/smtp2oauth.toml), as the given user.
deb_check_config() {
    local out
    if out=$(cd / && setpriv --reuid="$1" --regid="$1" --init-groups /usr/bin/smtp2oauth check-config 2>&1) \
        && printf '%s' "$out" | grep -q 'configuration OK'; then
        pass "smtp2oauth check-config as $1 (default path): $(printf '%s\n' "$out" | tail -1)"
    else
        fail "smtp2oauth check-config as $1: $out"
    fi
}

# Enabled (a wants link, as systemctl enable makes it), not started, and valid to systemd.
deb_test_unit() {
    local link=/etc/systemd/system/multi-user.target.wants/smtp2oauth.service out
    if [ "$(readlink "$link")" = /lib/systemd/system/smtp2oauth.service ]; then
        pass "the unit is enabled: $link"
    else
        fail "the unit is not enabled: $(ls -l "$link" 2>&1)"
    fi
    if [ -d /run/systemd/system ]; then
        out=$(systemctl is-active smtp2oauth 2>&1 || true)
        [ "$out" = inactive ] && pass "systemctl is-active smtp2oauth: inactive" || fail "systemctl is-active smtp2oauth: $out"
    fi
    if deb_relay_pids | grep -q .; then
        fail "a relay runs after the install: pids $(deb_relay_pids | tr '\n' ' ')"
    else
        pass "no relay was started by the install"
    fi
    if command -v systemd-analyze >/dev/null; then
        out=$(systemd-analyze verify --man=no /lib/systemd/system/smtp2oauth.service 2>&1 | grep smtp2oauth || true)
        [ -z "$out" ] && pass "systemd-analyze verify of the installed unit: clean" || fail "systemd-analyze verify: $out"
    fi
}

# Processes running the installed binary.
deb_relay_pids() {
    local exe
    for exe in /proc/[0-9]*/exe; do
        [ "$(readlink "$exe" 2>/dev/null)" = /usr/bin/smtp2oauth ] && { exe=${exe#/proc/}; echo "${exe%/exe}"; }
    done
    return 0
}

# The installed configuration, run the way the unit runs it: user smtp2oauth, the state
# directory as the store, umask 0077; only the listeners move to free loopback ports.
deb_test_relay() {
    local dir smtp smtps admin pid status
    dir=$(mktemp -d "${TMPDIR:-/tmp}/smtp2oauth-deb-test.XXXXXX")
    smtp=$(free_port)
    smtps=$(free_port)
    admin=$(free_port)
    (umask 0077 && cd /var/lib/smtp2oauth && exec env SMTP2OAUTH_STORE__DIR=/var/lib/smtp2oauth \
        SMTP2OAUTH_LOG_FORMAT=text SMTP2OAUTH_LISTENERS__SMTP__ADDRESS="127.0.0.1:$smtp" \
        SMTP2OAUTH_LISTENERS__SMTPS__ADDRESS="127.0.0.1:$smtps" SMTP2OAUTH_ADMIN__LISTEN="127.0.0.1:$admin" \
        setpriv --reuid=smtp2oauth --regid=smtp2oauth --init-groups \
        /usr/bin/smtp2oauth serve --config /etc/smtp2oauth/smtp2oauth.toml) >"$dir/relay.log" 2>&1 &
    pid=$!
    if wait_for_log "$dir/relay.log" 60 'smtp2oauth started' "$pid"; then
        pass "the installed configuration starts the relay as user smtp2oauth"
        deb_send "$dir" "$smtp"
    else
        fail "the relay did not start with the installed configuration: $(tail -5 "$dir/relay.log")"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    status=0
    wait "$pid" || status=$?
    [ "$status" -eq 0 ] && pass "the relay stopped on SIGTERM (exit 0)" || fail "the relay exited $status on SIGTERM"
    if grep -q 'readable by every user' "$dir/relay.log"; then
        fail "the relay warns about permissions: $(grep 'readable by every user' "$dir/relay.log")"
    fi
    rm -rf "$dir"
}

deb_send() {
    local dir=$1 port=$2 file
    printf 'From: Scanner <scanner@contoso.com>\r\nTo: you@example.com\r\nSubject: deb-test\r\n\r\nScanned.\r\n' >"$dir/m.eml"
    if curl -sS -v --max-time 60 --url "smtp://127.0.0.1:$port" --user mfp-3f:scan-to-email \
        --login-options AUTH=PLAIN --mail-from scanner@contoso.com --mail-rcpt you@example.com \
        --upload-file "$dir/m.eml" >"$dir/curl.log" 2>&1; then
        pass "curl sent a message with AUTH PLAIN as the example device"
    else
        fail "curl: $(grep -E '^(<|curl:)' "$dir/curl.log" | tail -3)"
    fi
    file=$(grep -l 'Subject: deb-test' /var/lib/smtp2oauth/capture/*.eml 2>/dev/null | head -1)
    if [ -n "$file" ] && [ "$(stat -c %U "$file")" = smtp2oauth ]; then
        pass "the message is in /var/lib/smtp2oauth/capture, owned by smtp2oauth ($(stat -c '%a' "$file"))"
    else
        fail "no captured message owned by smtp2oauth: $(ls -la /var/lib/smtp2oauth/capture 2>&1 | tr '\n' ' ')"
    fi
}

deb_test_reinstall() {
    local config=/etc/smtp2oauth/smtp2oauth.toml out
    echo '# edited by deb-test' >>"$config"
    if out=$(deb_dpkg --install "$1") && tail -1 "$config" | grep -qx '# edited by deb-test'; then
        pass "installing again keeps the edited configuration, without a question"
    else
        fail "installing again: $out; configuration ends: $(tail -1 "$config")"
    fi
    deb_expect_stat "$config" "root:smtp2oauth 640" "after reinstalling, the configuration"
}

deb_test_remove() {
    local out
    out=$(deb_dpkg --remove smtp2oauth) || fail "dpkg -r smtp2oauth: $out"
    [ ! -e /usr/bin/smtp2oauth ] && [ ! -e /lib/systemd/system/smtp2oauth.service ] \
        && pass "dpkg -r: binary and unit removed" || fail "dpkg -r left the binary or the unit"
    getent passwd smtp2oauth >/dev/null && pass "dpkg -r: the user smtp2oauth is kept" || fail "dpkg -r removed the user"
    grep -ql 'Subject: deb-test' /var/lib/smtp2oauth/capture/*.eml 2>/dev/null \
        && pass "dpkg -r: the store is kept, with the captured message" || fail "dpkg -r: the store is gone"
    [ -f /etc/smtp2oauth/smtp2oauth.toml ] && pass "dpkg -r: the configuration is kept" || fail "dpkg -r removed the configuration"
}

deb_test_purge() {
    local out left=""
    out=$(deb_dpkg --purge smtp2oauth) || fail "dpkg -P smtp2oauth: $out"
    getent passwd smtp2oauth >/dev/null && left="$left user"
    getent group smtp2oauth >/dev/null && left="$left group"
    [ -e /var/lib/smtp2oauth ] && left="$left /var/lib/smtp2oauth"
    [ -e /etc/smtp2oauth/smtp2oauth.toml ] && left="$left /etc/smtp2oauth/smtp2oauth.toml"
    dpkg-statoverride --list /etc/smtp2oauth/smtp2oauth.toml >/dev/null && left="$left statoverride"
    [ -e /etc/systemd/system/multi-user.target.wants/smtp2oauth.service ] && left="$left wants-link"
    [ -L /etc/systemd/system/smtp2oauth.service ] && left="$left mask"
    deb_installed && left="$left package"
    [ -z "$left" ] && pass "dpkg -P: user, group, store, configuration, override and unit links are gone" \
        || fail "dpkg -P left:$left"
}
