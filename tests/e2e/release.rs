//! The Debian package, built from this test's binary with the packaging code of the release
//! (`deploy/release.sh deb`), then installed on this machine, checked, removed and purged
//! (`deploy/release.sh deb-test`).
//!
//! The release builds its packages from cross-compiled binaries in minutes; the packaging itself
//! (control file, conffile, maintainer scripts, the unit and configuration derived from
//! deploy/smtp2oauth.service and config/smtp2oauth.example.toml) is the same code, and this is
//! where CI exercises it on every change. Installing needs root and dpkg (CI has both): without
//! them the install test is skipped, unless SMTP2OAUTH_REQUIRE_CLIENTS is set.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// .ci/run sets this: what the test needs must be there, never skipped.
fn tools_required() -> bool {
    std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_some()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn release_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("deploy/release.sh"))
        .args(args)
        .output()
        .expect("run deploy/release.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `deploy/release.sh deb` around this test's binary; the path of the .deb it made.
fn build_deb(out_dir: &Path) -> PathBuf {
    let out = release_sh(&[
        "deb",
        "--binary",
        BIN,
        "--arch",
        "amd64",
        "--out",
        out_dir.to_str().unwrap(),
        "--fast",
    ]);
    assert!(out.status.success(), "release.sh deb:\n{}", text(&out));
    let deb = out_dir.join(format!(
        "smtp2oauth_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.is_file(), "no {}:\n{}", deb.display(), text(&out));
    deb
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("run dpkg-deb");
    assert!(out.status.success(), "dpkg-deb {args:?}:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// One file of the package's data.
fn packaged_file(deb: &Path, path: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xO '.{path}'",
            deb.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{path}:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `Key=value` lines of a unit, section-qualified, comments dropped.
fn unit_lines(unit: &str) -> Vec<String> {
    let mut section = "";
    let mut lines = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        lines.push(format!("{section}{line}"));
    }
    lines
}

/// The lines of `a` that are not in `b`, and those of `b` not in `a` (a diff without order).
fn line_changes(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let only = |x: &[String], y: &[String]| {
        x.iter()
            .filter(|l| !y.contains(l))
            .cloned()
            .collect::<Vec<_>>()
    };
    (only(a, b), only(b, a))
}

fn toml_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// What `dpkg-deb --contents` says of each path: `mode owner/group`.
fn contents(deb: &Path) -> BTreeMap<String, String> {
    dpkg_deb(&["--contents"], deb)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.last()?.trim_start_matches('.').to_string();
            Some((path, format!("{} {}", f[0], f[1])))
        })
        .collect()
}

/// The package built around this test's binary, or None (and a note) where dpkg-deb is missing.
fn package(dir: &Path) -> Option<PathBuf> {
    if !have("dpkg-deb") {
        assert!(!tools_required(), "dpkg-deb is missing");
        eprintln!("dpkg-deb is not installed: the package was not built");
        return None;
    }
    Some(build_deb(dir))
}

/// The package as built, before anything is installed: control fields, conffile, modes.
#[test]
fn debian_package_fields_conffile_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(deb) = package(dir.path()) else {
        return;
    };
    let fields = dpkg_deb(&["--field"], &deb);
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(String::from))
    };
    assert_eq!(field("Package").as_deref(), Some("smtp2oauth"));
    assert_eq!(field("Version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Architecture").as_deref(), Some("amd64"));
    // adduser for the maintainer scripts; libc6 at the newest glibc symbol version the binary
    // uses (this test build is linked here, so it needs this machine's glibc or newer).
    let depends = field("Depends").unwrap();
    assert!(
        depends.starts_with("adduser, ") && depends.contains("libc6 (>= 2."),
        "Depends: {depends}"
    );
    let conffiles = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout),
        "/etc/smtp2oauth/smtp2oauth.toml\n"
    );

    let modes = contents(&deb);
    for (path, want) in [
        ("/usr/bin/smtp2oauth", "-rwxr-xr-x root/root"),
        (
            "/lib/systemd/system/smtp2oauth.service",
            "-rw-r--r-- root/root",
        ),
        // root's alone until postinst shares it with the group smtp2oauth (dpkg-statoverride)
        ("/etc/smtp2oauth/smtp2oauth.toml", "-rw------- root/root"),
        (
            "/usr/share/doc/smtp2oauth/copyright",
            "-rw-r--r-- root/root",
        ),
        (
            "/usr/share/doc/smtp2oauth/docs/deploy.md",
            "-rw-r--r-- root/root",
        ),
    ] {
        assert_eq!(modes.get(path).map(String::as_str), Some(want), "{path}");
    }
}

/// The packaged unit and configuration differ from deploy/smtp2oauth.service and
/// config/smtp2oauth.example.toml only where a package has to (its paths and system user), and
/// the configuration passes check-config as it is installed.
#[test]
fn debian_package_unit_and_config_follow_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let Some(deb) = package(dir.path()) else {
        return;
    };
    let unit = packaged_file(&deb, "/lib/systemd/system/smtp2oauth.service");
    let source = std::fs::read_to_string(repo_root().join("deploy/smtp2oauth.service")).unwrap();
    let (only_packaged, only_source) = line_changes(&unit_lines(&unit), &unit_lines(&source));
    assert_eq!(
        only_packaged,
        [
            "[Service]ExecStart=/usr/bin/smtp2oauth serve --config ${CREDENTIALS_DIRECTORY}/smtp2oauth.toml",
            "[Service]User=smtp2oauth",
            "[Service]Group=smtp2oauth",
            "[Service]StateDirectoryMode=0700",
        ]
    );
    assert_eq!(
        only_source,
        [
            "[Service]ExecStart=/usr/local/bin/smtp2oauth serve --config ${CREDENTIALS_DIRECTORY}/smtp2oauth.toml",
            "[Service]DynamicUser=yes",
            "[Service]StateDirectoryMode=0750",
        ]
    );

    let config = packaged_file(&deb, "/etc/smtp2oauth/smtp2oauth.toml");
    let example =
        std::fs::read_to_string(repo_root().join("config/smtp2oauth.example.toml")).unwrap();
    let (only_packaged, only_example) = line_changes(&toml_lines(&config), &toml_lines(&example));
    assert_eq!(
        only_packaged,
        [
            "name = \"smtp\"",
            "name = \"smtps\"",
            "dir = \"/var/lib/smtp2oauth\"           # the unit's StateDirectory: owned by the smtp2oauth user",
        ]
    );
    assert_eq!(
        only_example,
        ["dir = \"./data\"                        # relative to the working directory"]
    );
    // The installed configuration is a valid one as it stands.
    let file = dir.path().join("smtp2oauth.toml");
    std::fs::write(&file, &config).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "check-config:\n{}", text(&out));
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The package installed with dpkg on this machine: user, store, conffile, enabled-not-started
/// unit, check-config, a message captured by the installed configuration; then remove keeps the
/// user and the store, and purge takes them away (deploy/release.sh deb-test does each step and
/// prints PASS or FAIL; this test holds it to the checks below, and looks again afterwards).
#[test]
fn debian_package_installs_runs_and_purges() {
    if !is_root() || !have("dpkg") {
        assert!(
            !tools_required(),
            "installing the package needs root and dpkg, and SMTP2OAUTH_REQUIRE_CLIENTS is set"
        );
        eprintln!("not root or no dpkg: the package was not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let out = release_sh(&["deb-test", deb.to_str().unwrap()]);
    let report = text(&out);
    eprintln!("{report}");
    assert!(out.status.success(), "deb-test failed:\n{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("FAIL:"), "{report}");
    for check in [
        "postinst: 'smtp2oauth is installed and enabled, but not started.",
        &format!(
            "smtp2oauth --version: smtp2oauth {}",
            env!("CARGO_PKG_VERSION")
        ),
        "system user: smtp2oauth:x:",
        "the store /var/lib/smtp2oauth: smtp2oauth:smtp2oauth 700",
        "the configuration /etc/smtp2oauth/smtp2oauth.toml: root:smtp2oauth 640",
        "/etc/smtp2oauth/smtp2oauth.toml is a conffile",
        "smtp2oauth check-config as root (default path): configuration OK",
        "smtp2oauth check-config as smtp2oauth (default path): configuration OK",
        "the unit is enabled: /etc/systemd/system/multi-user.target.wants/smtp2oauth.service",
        "no relay was started by the install",
        "the installed configuration starts the relay as user smtp2oauth",
        "curl sent a message with AUTH PLAIN as the example device",
        "the message is in /var/lib/smtp2oauth/capture, owned by smtp2oauth",
        "installing again keeps the edited configuration, without a question",
        "dpkg -r: the user smtp2oauth is kept",
        "dpkg -r: the store is kept, with the captured message",
        "dpkg -P: user, group, store, configuration, override and unit links are gone",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS: ") && l.contains(check)),
            "no PASS for `{check}`:\n{report}"
        );
    }
    // Looked at again from here: nothing of the package is left.
    assert!(
        !user_exists("smtp2oauth"),
        "the user smtp2oauth is still there"
    );
    assert!(!Path::new("/var/lib/smtp2oauth").exists());
    assert!(!Path::new("/usr/bin/smtp2oauth").exists());
    let status = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", "smtp2oauth"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.is_empty() || status == "not-installed",
        "dpkg status: {status}"
    );
}
