# shellcheck shell=bash
# The Windows part of deploy/release.sh, sourced by it (which defines repo, here, version, work,
# dist, SOURCE_DATE_EPOCH, pass, fail, step, replace_once): smtp2oauth.exe for
# x86_64-pc-windows-gnu (mingw-w64), the zip around it, its checks, and its smoke test under Wine.
#
# The exe has the legacy-tls feature with OpenSSL compiled in, as the Linux binaries do: the old
# printers that need TLS 1.0 are in Windows offices too, and openssl-src builds for mingw with
# the same perl and make (a few minutes more; the zip grows by about 2 MB).

WINDOWS_TARGET=x86_64-pc-windows-gnu
WINDOWS_NAME=x86_64-windows
# DLLs the exe may import: all part of Windows 10 / Windows Server 2016 and later (the oldest
# Windows Rust's standard library supports). A mingw runtime DLL (libgcc_s_seh-1.dll,
# libwinpthread-1.dll) or OpenSSL's would mean the zip does not run on its own.
WINDOWS_DLLS="advapi32 bcrypt bcryptprimitives crypt32 iphlpapi kernel32 ktmw32 msvcrt ntdll oleaut32 secur32 shell32 user32 userenv ws2_32"

# config/smtp2oauth.example.toml for Windows: the store in %ProgramData%\smtp2oauth, Windows paths
# in the examples (TOML literal strings, so that backslashes are not escapes), listeners named.
windows_config() {
    local text src=$repo/config/smtp2oauth.example.toml
    text=$(cat "$src")
    text=$(replace_once "$text" "$(sed -n '1,/^$/p' "$src")" '# smtp2oauth configuration for Windows (docs/windows.md).
#
# Copy it to C:\ProgramData\smtp2oauth\smtp2oauth.toml, then in an elevated prompt:
#   smtp2oauth check-config --config C:\ProgramData\smtp2oauth\smtp2oauth.toml
#   smtp2oauth service install --config C:\ProgramData\smtp2oauth\smtp2oauth.toml
#   sc.exe start smtp2oauth
# As shipped it works at once: the account below uses route = "capture", which writes every
# accepted message to C:\ProgramData\smtp2oauth\capture\ instead of sending it, so you can point a
# printer at the relay and see what it sends before you connect Microsoft 365. Give the example
# device a password of your own first: everyone knows this one (see [[devices]] below).
#
# Paths: use single quotes ('"'"'C:\like\this'"'"'), in which a backslash is just a backslash. Every key
# is described in docs\configuration.md; every key can also be set from the environment, e.g.
# SMTP2OAUTH_SERVER__HOSTNAME=relay.example.lan.' config) || return 1
    text=$(replace_once "$text" '# cert_file = "/etc/smtp2oauth/tls/cert.pem"
# key_file = "/etc/smtp2oauth/tls/key.pem"' "# cert_file = 'C:\\ProgramData\\smtp2oauth\\tls\\cert.pem'
# key_file = 'C:\\ProgramData\\smtp2oauth\\tls\\key.pem'" config) || return 1
    text=$(replace_once "$text" '[[listeners]]
address = "0.0.0.0:2525"' '[[listeners]]
name = "smtp"
address = "0.0.0.0:2525"                # Windows has no privileged ports: 0.0.0.0:25 works too' config) || return 1
    text=$(replace_once "$text" '[[listeners]]
address = "0.0.0.0:4650"' '[[listeners]]
name = "smtps"
address = "0.0.0.0:4650"' config) || return 1
    text=$(replace_once "$text" 'dir = "./data"                        # relative to the working directory' \
        "dir = 'C:\\ProgramData\\smtp2oauth'        # the default on Windows; service install secures it" config) || return 1
    text=$(replace_once "$text" '# capture_dir = "./data/capture"      # default: <store dir>/capture' \
        "# capture_dir = 'C:\\ProgramData\\smtp2oauth\\capture'   # the default: <store dir>\\capture" config) || return 1
    text=$(replace_once "$text" '# client_secret_file = "/run/secrets/scanner_client_secret"' \
        "# client_secret_file = 'C:\\ProgramData\\smtp2oauth\\scanner-client-secret.txt'" config) || return 1
    text=$(replace_once "$text" '# tls_client_cert_file = "/etc/smtp2oauth/connector-cert.pem"' \
        "# tls_client_cert_file = 'C:\\ProgramData\\smtp2oauth\\connector-cert.pem'" config) || return 1
    text=$(replace_once "$text" '# tls_client_key_file = "/etc/smtp2oauth/connector-key.pem"' \
        "# tls_client_key_file = 'C:\\ProgramData\\smtp2oauth\\connector-key.pem'" config) || return 1
    printf '%s\n' "$text"
}

# --check: the Windows configuration parses with the expected store; the tools answer.
check_windows() {
    local out
    if out=$(windows_config | python3 -c '
import sys, tomllib
text = sys.stdin.read()
config = tomllib.loads(text)
assert config["store"]["dir"] == "C:\\ProgramData\\smtp2oauth", config["store"]
assert [l.get("name") for l in config["listeners"]] == ["smtp", "smtps"]
assert all(a["route"] == "capture" for a in config["accounts"]), "every account captures"
unix = [l for l in text.splitlines() if "/etc/" in l or "/run/" in l or "./data" in l]
assert not unix, unix
print("store", config["store"]["dir"])' 2>&1); then
        pass "the Windows example configuration parses, no Unix paths left: $out"
    else
        fail "the Windows example configuration: $out"
    fi
    if out=$(x86_64-w64-mingw32-gcc --version 2>&1 | head -1) && command -v x86_64-w64-mingw32-strip >/dev/null \
        && command -v x86_64-w64-mingw32-objdump >/dev/null; then
        pass "mingw-w64 (compiler, strip, objdump): $out"
    else
        fail "x86_64-w64-mingw32-gcc, -strip or -objdump is missing (Debian package gcc-mingw-w64-x86-64)"
    fi
    if out=$(/usr/lib/wine/wine64 --version 2>&1); then
        pass "Wine for the smoke test: $out"
    else
        fail "Wine is missing (Debian package wine64)"
    fi
    for f in windows/release-windows.sh windows/wine-smoke.sh; do
        bash -n "$here/$f" && pass "bash -n deploy/$f" || fail "bash -n deploy/$f"
    done
    [ -s "$repo/docs/windows.md" ] && pass "docs/windows.md is there" || fail "docs/windows.md is missing"
}

# The exe: cargo with mingw-w64's linker (rustup's target knows x86_64-w64-mingw32-gcc);
# openssl-src builds OpenSSL with the same compiler. The release profile keeps the symbol table
# (strip = "debuginfo", for backtraces on Linux); in a PE file it is a third of the size and of
# no use to a Windows admin, so the zip's exe goes without it.
windows_exe() {
    step "building smtp2oauth.exe ($WINDOWS_TARGET, features legacy-tls-vendored)"
    local start=$SECONDS built
    (cd "$repo" && OPENSSL_NO_VENDOR=0 cargo build --release --locked -p smtp2oauth \
        --features legacy-tls-vendored --target "$WINDOWS_TARGET")
    built=${CARGO_TARGET_DIR:-$repo/target}/$WINDOWS_TARGET/release/smtp2oauth.exe
    install -d "$bins/windows"
    x86_64-w64-mingw32-strip --strip-all -o "$bins/windows/smtp2oauth.exe" "$built"
    pass "smtp2oauth.exe built in $((SECONDS - start)) s: $(stat -c %s "$bins/windows/smtp2oauth.exe") bytes ($(mb "$(stat -c %s "$bins/windows/smtp2oauth.exe")"); $(mb "$(stat -c %s "$built")") before strip)"
    check_exe "$bins/windows/smtp2oauth.exe"
}

# PE32+ for x86-64, a console program, only Windows' own DLLs, OpenSSL compiled in.
check_exe() {
    local exe=$1 format headers subsystem dlls bad="" dll openssl
    format=$(x86_64-w64-mingw32-objdump -f "$exe" | sed -n 's/.*file format //p')
    [ "$format" = pei-x86-64 ] && pass "smtp2oauth.exe: $format" || fail "smtp2oauth.exe: file format '$format'"
    # Read whole, then searched: `objdump | grep -q` fails under pipefail when grep stops early.
    headers=$(x86_64-w64-mingw32-objdump -p "$exe")
    subsystem=$(printf '%s\n' "$headers" | sed -n 's/^Subsystem[[:space:]]*[0-9a-f]*[[:space:]]*//p')
    [ "$subsystem" = "(Windows CUI)" ] && pass "smtp2oauth.exe: a console program $subsystem" \
        || fail "smtp2oauth.exe is not a console program: subsystem '$subsystem'"
    dlls=$(printf '%s\n' "$headers" | sed -n 's/.*DLL Name: //p' | tr 'A-Z' 'a-z' | sed 's/\.dll$//' | sort -u)
    for dll in $dlls; do
        case " $WINDOWS_DLLS " in *" $dll "*) continue ;; esac
        case "$dll" in api-ms-win-*) continue ;; esac
        bad="$bad $dll"
    done
    [ -z "$bad" ] && pass "smtp2oauth.exe imports only Windows' own DLLs: $(echo "$dlls" | tr '\n' ' ')" \
        || fail "smtp2oauth.exe imports DLLs Windows does not have:$bad"
    openssl=$(grep -aoE 'OpenSSL [0-9]+\.[0-9]+\.[0-9]+ +[0-9]+ [A-Z][a-z][a-z] [0-9]{4}' "$exe" | head -1 || true)
    [ -n "$openssl" ] && pass "smtp2oauth.exe: $openssl compiled in (legacy-tls)" || fail "smtp2oauth.exe: no OpenSSL compiled in"
}

# smtp2oauth-<v>-x86_64-windows.zip: one folder with the exe, the Windows configuration,
# README, LICENSE and docs\ (docs\windows.md first of all).
windows_zip() {
    local name="smtp2oauth-$version-$WINDOWS_NAME" stage
    step "$name.zip"
    stage=$work/zip/$name
    install -d "$stage/docs"
    install -m 0755 "$bins/windows/smtp2oauth.exe" "$stage/"
    windows_config >"$stage/smtp2oauth.example.toml"
    install -m 0644 "$repo/README.md" "$repo/LICENSE" "$stage/"
    install -m 0644 "$repo"/docs/*.md "$stage/docs/"
    find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    rm -f "$dist/$name.zip"
    (cd "$work/zip" && find "$name" -print | LC_ALL=C sort | TZ=UTC zip -X -9 -q -@ "$dist/$name.zip")
    pass "$name.zip: $(stat -c %s "$dist/$name.zip") bytes ($(mb "$(stat -c %s "$dist/$name.zip")")), $(unzip -Z1 "$dist/$name.zip" | grep -vc '/$') files"
}

windows() {
    local start=$SECONDS
    windows_exe
    windows_zip
    pass "Windows step (exe and zip) took $((SECONDS - start)) s"
}

# The zip unpacked: the exe under Wine (deploy/windows/wine-smoke.sh: console and service, each
# accepting a curl AUTH PLAIN message into the capture directory and stopping cleanly), and
# check-config of the zip's configuration.
smoke_windows() {
    local name="smtp2oauth-$version-$WINDOWS_NAME" dir=$work/unzipped-windows out status=0
    step "$name.zip under Wine (deploy/windows/wine-smoke.sh)"
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$dir" && unzip -q "$dist/$name.zip")
    for f in smtp2oauth.exe smtp2oauth.example.toml README.md LICENSE docs/windows.md; do
        [ -f "$dir/$name/$f" ] || fail "$name.zip has no $f"
    done
    out=$(bash "$here/windows/wine-smoke.sh" --exe "$dir/$name/smtp2oauth.exe" \
        --config "$dir/$name/smtp2oauth.example.toml" 2>&1) || status=$?
    printf '%s\n' "$out" | sed 's/^/  /'
    rm -rf "$dir"
    if [ "$status" -eq 0 ]; then
        pass "$name.zip: $(printf '%s\n' "$out" | tail -1)"
    else
        fail "$name.zip under Wine: $(printf '%s\n' "$out" | grep -c '^FAIL') checks failed"
    fi
}
