//! Deployment files: what an admin copies onto a LAN appliance must match the relay it runs.
//!
//! The container image exists twice, as the Dockerfile's final stage (what `docker build` makes)
//! and as the configuration block of deploy/build-image.sh (what we can build and test here,
//! without a Docker engine); a drift between them would ship an image nobody tested. The compose
//! file, the systemd unit and the Prometheus rules name configuration keys, ports, timeouts and
//! metrics of the relay; these tests hold them to the real ones. The last test builds the image
//! with buildah and runs a relay in it (deploy/build-image.sh --test).

use crate::harness::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// How long the relay may take to stop after SIGTERM: open sessions get 20 s
/// (`SHUTDOWN_GRACE` in crates/smtp2oauth/src/serve.rs), then deliveries in progress get
/// `[delivery] shutdown_timeout`. A runtime that kills it sooner cuts deliveries off.
fn stop_time_needed() -> u64 {
    20 + smtp2oauth_config::Config::default()
        .delivery
        .shutdown_timeout
        .as_secs()
}

/// .ci/run sets this: tools the test needs must be there, never skipped.
fn tools_required() -> bool {
    std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_some()
}

fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `30s`, `1m30s`, `2min`, `1h` → seconds (Docker, compose and systemd spellings).
fn seconds(text: &str) -> u64 {
    let mut total = 0;
    let mut rest = text.trim();
    assert!(!rest.is_empty(), "empty duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("`{text}` is not a duration"));
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += n * match rest[..unit].trim() {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            u => panic!("`{text}`: unknown unit `{u}`"),
        };
        rest = &rest[unit..];
    }
    total
}

// --- The image: Dockerfile final stage vs deploy/build-image.sh -------------------------------

/// The runtime configuration of an image, one normalised string per field, so that two
/// descriptions can be compared field by field.
type ImageConfig = BTreeMap<String, String>;

/// Docker's HEALTHCHECK defaults, for options a file leaves out.
const HEALTHCHECK_DEFAULTS: [(&str, &str); 4] = [
    ("healthcheck.interval", "30"),
    ("healthcheck.timeout", "30"),
    ("healthcheck.start-period", "0"),
    ("healthcheck.retries", "3"),
];

fn normalise_port(p: &str) -> String {
    if p.contains('/') {
        p.to_string()
    } else {
        format!("{p}/tcp")
    }
}

fn sorted_words(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(" ")
}

fn json_words(items: &[String]) -> String {
    serde_json::to_string(items).unwrap()
}

struct Dockerfile {
    /// The image of the last FROM (the final stage's base).
    final_from: String,
    /// Every RUN command of every stage, continuation lines joined.
    runs: Vec<String>,
    /// The final stage's COPY and ADD instructions (arguments only).
    copies: Vec<String>,
    config: ImageConfig,
}

/// Exec form (`["a", "b"]`) only: the shell form would run the relay under `/bin/sh -c`, which
/// does not pass SIGTERM on, and the final stage has no shell.
fn exec_form(instruction: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args.trim()).unwrap_or_else(|e| {
        panic!("{instruction} {args}: not the exec form [\"...\"] ({e}); the image has no shell")
    })
}

/// Parses the instructions that set the final stage's runtime configuration.
fn parse_dockerfile(text: &str) -> Dockerfile {
    // Join continuation lines; comment lines may sit inside a continued instruction.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );

    let mut final_from = String::new();
    let mut runs = Vec::new();
    let mut copies = Vec::new();
    let mut config = ImageConfig::new();
    let (mut ports, mut volumes, mut env) = (Vec::new(), Vec::new(), Vec::new());
    for ins in &instructions {
        let (word, args) = ins.split_once(char::is_whitespace).unwrap_or((ins, ""));
        let args = args.trim();
        match word.to_ascii_uppercase().as_str() {
            "FROM" => {
                final_from = args.split_whitespace().next().unwrap_or("").to_string();
                config.clear();
                copies.clear();
                ports.clear();
                volumes.clear();
                env.clear();
            }
            "RUN" => runs.push(args.to_string()),
            "COPY" | "ADD" => copies.push(args.to_string()),
            "USER" => {
                config.insert("user".into(), args.into());
            }
            "WORKDIR" => {
                config.insert("workdir".into(), args.into());
            }
            "STOPSIGNAL" => {
                config.insert("stopsignal".into(), args.into());
            }
            "EXPOSE" => ports.extend(args.split_whitespace().map(normalise_port)),
            "VOLUME" if args.starts_with('[') => volumes.extend(exec_form("VOLUME", args)),
            "VOLUME" => volumes.extend(args.split_whitespace().map(String::from)),
            "ENV" => {
                for pair in args.split_whitespace() {
                    assert!(
                        pair.contains('=') && !pair.contains('"') && !pair.contains('\''),
                        "ENV {args}: write unquoted KEY=VALUE pairs (this test does not parse more)"
                    );
                    env.push(pair.to_string());
                }
            }
            "HEALTHCHECK" => {
                let (options, command) = args
                    .split_once("CMD")
                    .unwrap_or_else(|| panic!("HEALTHCHECK {args}: no CMD"));
                for option in options.split_whitespace() {
                    let (name, value) = option
                        .strip_prefix("--")
                        .and_then(|o| o.split_once('='))
                        .unwrap_or_else(|| panic!("HEALTHCHECK option `{option}`"));
                    let value = if name == "retries" {
                        value.to_string()
                    } else {
                        seconds(value).to_string()
                    };
                    config.insert(format!("healthcheck.{name}"), value);
                }
                config.insert(
                    "healthcheck".into(),
                    json_words(&exec_form("HEALTHCHECK CMD", command)),
                );
            }
            "ENTRYPOINT" => {
                config.insert(
                    "entrypoint".into(),
                    json_words(&exec_form("ENTRYPOINT", args)),
                );
            }
            "CMD" => {
                config.insert("cmd".into(), json_words(&exec_form("CMD", args)));
            }
            _ => {}
        }
    }
    if config.contains_key("healthcheck") {
        for (k, v) in HEALTHCHECK_DEFAULTS {
            config.entry(k.into()).or_insert_with(|| v.into());
        }
    }
    config.insert("ports".into(), sorted_words(ports));
    config.insert("volumes".into(), sorted_words(volumes));
    config.insert("env".into(), sorted_words(env));
    Dockerfile {
        final_from,
        runs,
        copies,
        config,
    }
}

/// Parses deploy/build-image.sh's `IMAGE_*` block (between its two marker comments).
fn parse_build_script(text: &str) -> ImageConfig {
    let start = text
        .find("# --- The final stage.")
        .expect("build-image.sh: no '# --- The final stage.' marker");
    let end = text
        .find("# --- End of the final stage.")
        .expect("build-image.sh: no '# --- End of the final stage.' marker");
    let mut config = ImageConfig::new();
    for line in text[start..end].lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("build-image.sh: `{line}` is not NAME=VALUE"));
        let unquote = |s: &str| s.trim_matches('"').to_string();
        let values: Vec<String> = match value.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
            Some(items) => items.split_whitespace().map(unquote).collect(),
            None => vec![unquote(value)],
        };
        let one = || values.concat();
        let (key, normalised) = match name {
            "IMAGE_USER" => ("user", one()),
            "IMAGE_WORKDIR" => ("workdir", one()),
            "IMAGE_PORTS" => (
                "ports",
                sorted_words(values.iter().map(|p| normalise_port(p))),
            ),
            "IMAGE_VOLUMES" => ("volumes", sorted_words(values.clone())),
            "IMAGE_ENV" => ("env", sorted_words(values.clone())),
            "IMAGE_HEALTHCHECK" => ("healthcheck", json_words(&values)),
            "IMAGE_HEALTHCHECK_INTERVAL" => ("healthcheck.interval", seconds(&one()).to_string()),
            "IMAGE_HEALTHCHECK_TIMEOUT" => ("healthcheck.timeout", seconds(&one()).to_string()),
            "IMAGE_HEALTHCHECK_START_PERIOD" => {
                ("healthcheck.start-period", seconds(&one()).to_string())
            }
            "IMAGE_HEALTHCHECK_RETRIES" => ("healthcheck.retries", one()),
            "IMAGE_STOPSIGNAL" => ("stopsignal", one()),
            "IMAGE_ENTRYPOINT" => ("entrypoint", json_words(&values)),
            "IMAGE_CMD" => ("cmd", json_words(&values)),
            other => panic!(
                "build-image.sh sets {other}, which this test does not know: compare it with the \
                 Dockerfile here"
            ),
        };
        config.insert(key.into(), normalised);
    }
    config
}

/// Every field on which the two descriptions differ, as "field: Dockerfile `a`, script `b`".
fn differences(dockerfile: &ImageConfig, script: &ImageConfig) -> Vec<String> {
    let keys: BTreeSet<&String> = dockerfile.keys().chain(script.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (dockerfile.get(k), script.get(k));
            (a != b).then(|| {
                format!(
                    "{k}: Dockerfile {}, build-image.sh {}",
                    a.map_or("(unset)".into(), |v| format!("`{v}`")),
                    b.map_or("(unset)".into(), |v| format!("`{v}`"))
                )
            })
        })
        .collect()
}

fn shell_var(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= line"))
        .trim_matches('"')
        .to_string()
}

#[test]
fn dockerfile_final_stage_and_build_script_agree() {
    let dockerfile = parse_dockerfile(&read("Dockerfile"));
    let script_text = read("deploy/build-image.sh");
    let script = parse_build_script(&script_text);
    let diff = differences(&dockerfile.config, &script);
    assert!(
        diff.is_empty(),
        "the Dockerfile's final stage and deploy/build-image.sh disagree:\n  {}",
        diff.join("\n  ")
    );

    // What both must say, whatever they agree on.
    let c = &dockerfile.config;
    assert_eq!(
        dockerfile.final_from, "scratch",
        "the final stage must be assemblable here from a local binary (FROM scratch)"
    );
    assert!(
        dockerfile
            .runs
            .iter()
            .any(|r| r.contains("deploy/assemble-rootfs.sh")),
        "the Dockerfile must build its root filesystem with deploy/assemble-rootfs.sh, as \
         build-image.sh does: {:?}",
        dockerfile.runs
    );
    assert_eq!(
        dockerfile.copies,
        ["--from=rootfs /rootfs/ /"],
        "the final stage must hold the rootfs stage's tree and nothing else: build-image.sh \
         replaces exactly this COPY with the tree it assembled"
    );
    let uid = shell_var(&read("deploy/assemble-rootfs.sh"), "APP_UID");
    let gid = shell_var(&read("deploy/assemble-rootfs.sh"), "APP_GID");
    assert_ne!(uid, "0", "the image must not run as root");
    assert_eq!(
        c["user"],
        format!("{uid}:{gid}"),
        "USER vs assemble-rootfs.sh"
    );
    assert_eq!(
        shell_var(&script_text, "APP_UID"),
        uid,
        "build-image.sh APP_UID"
    );
    assert_eq!(c["ports"], "2525/tcp 4650/tcp 8025/tcp");
    assert_eq!(c["volumes"], "/data");
    let env: BTreeSet<&str> = c["env"].split(' ').collect();
    assert!(
        env.contains("SMTP2OAUTH_STORE__DIR=/data"),
        "the store must be the volume: {env:?}"
    );
    assert!(
        env.contains("SMTP2OAUTH_ADMIN__LISTEN=0.0.0.0:8025"),
        "the admin server must be reachable on the exposed port 8025: {env:?}"
    );
    let entrypoint: Vec<String> = serde_json::from_str(&c["entrypoint"]).unwrap();
    let healthcheck: Vec<String> = serde_json::from_str(&c["healthcheck"]).unwrap();
    assert_eq!(
        healthcheck,
        [entrypoint.clone(), vec!["health".to_string()]].concat(),
        "the health check must be `smtp2oauth health` run with the image's binary"
    );
    assert_eq!(c["cmd"], r#"["serve"]"#);
    assert_eq!(c["stopsignal"], "SIGTERM");

    // The build context must not carry build output or local secrets into an image.
    let ignore = read(".dockerignore");
    for entry in ["target", ".git", "deploy/secrets", "deploy/smtp2oauth.toml"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

/// A change to one side only must show up as a difference naming the field, so the agreement
/// test above cannot pass by parsing nothing.
#[test]
fn image_drift_is_detected_field_by_field() {
    let dockerfile_text = read("Dockerfile");
    let script_text = read("deploy/build-image.sh");
    // (which file, text to replace, replacement, field that must differ)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("Dockerfile", "USER 65532:65532", "USER 0:0", "user"),
        ("Dockerfile", "WORKDIR /data\n", "WORKDIR /\n", "workdir"),
        (
            "Dockerfile",
            "EXPOSE 2525 4650 8025",
            "EXPOSE 2525 8025",
            "ports",
        ),
        (
            "Dockerfile",
            "EXPOSE 2525 4650 8025",
            "EXPOSE 2525 4650/udp 8025",
            "ports",
        ),
        (
            "Dockerfile",
            "VOLUME /data",
            "VOLUME /data /spool",
            "volumes",
        ),
        (
            "Dockerfile",
            "SMTP2OAUTH_STORE__DIR=/data",
            "SMTP2OAUTH_STORE__DIR=/srv",
            "env",
        ),
        (
            "Dockerfile",
            "--interval=30s",
            "--interval=1m",
            "healthcheck.interval",
        ),
        ("Dockerfile", "--timeout=5s ", "", "healthcheck.timeout"),
        (
            "Dockerfile",
            "--start-period=10s",
            "--start-period=20s",
            "healthcheck.start-period",
        ),
        (
            "Dockerfile",
            "--retries=3",
            "--retries=5",
            "healthcheck.retries",
        ),
        (
            "Dockerfile",
            "smtp2oauth\", \"health\"]",
            "smtp2oauth\", \"health\", \"--ready\"]",
            "healthcheck",
        ),
        (
            "Dockerfile",
            "STOPSIGNAL SIGTERM",
            "STOPSIGNAL SIGINT",
            "stopsignal",
        ),
        (
            "Dockerfile",
            "ENTRYPOINT [\"/usr/local/bin/smtp2oauth\"]",
            "ENTRYPOINT [\"/smtp2oauth\"]",
            "entrypoint",
        ),
        (
            "Dockerfile",
            "CMD [\"serve\"]",
            "CMD [\"serve\", \"--log-format\", \"json\"]",
            "cmd",
        ),
        (
            "build-image.sh",
            "IMAGE_USER=\"65532:65532\"",
            "IMAGE_USER=\"65532\"",
            "user",
        ),
        (
            "build-image.sh",
            "IMAGE_PORTS=(2525/tcp 4650/tcp 8025/tcp)",
            "IMAGE_PORTS=(2525/tcp 8025/tcp)",
            "ports",
        ),
        (
            "build-image.sh",
            "SMTP2OAUTH_ADMIN__LISTEN=0.0.0.0:8025)",
            ")",
            "env",
        ),
        (
            "build-image.sh",
            "IMAGE_HEALTHCHECK_RETRIES=\"3\"",
            "IMAGE_HEALTHCHECK_RETRIES=\"4\"",
            "healthcheck.retries",
        ),
        (
            "build-image.sh",
            "IMAGE_CMD=(serve)",
            "IMAGE_CMD=(check-config)",
            "cmd",
        ),
    ];
    for (file, from, to, field) in cases {
        let (mut d, mut s) = (dockerfile_text.clone(), script_text.clone());
        let text = if *file == "Dockerfile" {
            &mut d
        } else {
            &mut s
        };
        assert!(
            text.contains(from),
            "{file} no longer contains `{from}`: update this table"
        );
        *text = text.replacen(from, to, 1);
        let diff = differences(&parse_dockerfile(&d).config, &parse_build_script(&s));
        assert!(
            diff.iter().any(|l| l.starts_with(&format!("{field}: "))),
            "{file}: `{from}` → `{to}` should make `{field}` differ; differences: {diff:?}"
        );
    }
}

#[test]
fn dockerfile_parser_reads_the_forms_it_accepts() {
    let text = "# comment\nFROM rust AS build\nUSER 1\nEXPOSE 1\nFROM scratch\nENV A=1 \\\n    # inside\n    B=2\nENV C=3\nEXPOSE 25 53/udp\nVOLUME [\"/a\", \"/b\"]\nHEALTHCHECK CMD [\"/x\", \"y\"]\nUSER 7:7\n";
    let d = parse_dockerfile(text);
    assert_eq!(d.final_from, "scratch");
    let c = &d.config;
    assert_eq!(c["user"], "7:7", "the last stage's USER only");
    assert_eq!(
        c["ports"], "25/tcp 53/udp",
        "ports of earlier stages do not count"
    );
    assert_eq!(c["env"], "A=1 B=2 C=3");
    assert_eq!(c["volumes"], "/a /b");
    assert_eq!(c["healthcheck"], r#"["/x","y"]"#);
    assert_eq!(c["healthcheck.interval"], "30", "Docker's default");
    assert_eq!(c["healthcheck.retries"], "3");
    for (s, want) in [
        ("30s", 30),
        ("1m30s", 90),
        ("2min", 120),
        ("1h", 3600),
        ("45", 45),
    ] {
        assert_eq!(seconds(s), want, "{s}");
    }
}

// --- YAML: docker-compose.yml and the alert rules --------------------------------------------

/// Parses a YAML file with Python's PyYAML (Debian: python3-yaml, which .ci/run installs).
/// None (and a note) when it is not installed and the test may skip.
fn yaml(rel: &str) -> Option<Value> {
    let path = repo_root().join(rel);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&path)
        .output();
    let missing = |why: String| {
        assert!(!tools_required(), "{why}: .ci/run installs it");
        eprintln!("{why}; {rel} not checked");
        None
    };
    match out {
        Err(e) => missing(format!("python3 cannot run: {e}")),
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No module named 'yaml'") {
                missing("python3-yaml (PyYAML) is not installed".into())
            } else {
                panic!("{rel} is not valid YAML:\n{err}")
            }
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

#[test]
fn compose_file_matches_the_image_and_the_configuration() {
    let Some(compose) = yaml("deploy/docker-compose.yml") else {
        return;
    };
    let image = parse_dockerfile(&read("Dockerfile")).config;
    let services = compose["services"].as_object().expect("services");
    assert_eq!(services.len(), 1, "one relay per spool: {services:?}");
    let relay = &services["smtp2oauth"];

    // Built from this repository's Dockerfile.
    let build = &relay["build"];
    let context = repo_root()
        .join("deploy")
        .join(build["context"].as_str().unwrap());
    assert!(
        context
            .join(build["dockerfile"].as_str().unwrap())
            .is_file(),
        "build context {} has no {}",
        context.display(),
        build["dockerfile"]
    );
    assert_eq!(relay["restart"], "unless-stopped");

    // The store is a named volume on the image's volume; the configuration is mounted read-only
    // at the default path.
    let volumes = strings(&relay["volumes"]);
    let image_volume = &image["volumes"];
    let store = volumes
        .iter()
        .find(|v| v.ends_with(&format!(":{image_volume}")))
        .unwrap_or_else(|| panic!("no volume on {image_volume}: {volumes:?}"));
    let store_name = store.split(':').next().unwrap();
    assert!(
        compose["volumes"].get(store_name).is_some(),
        "volume {store_name} is not declared at the top level"
    );
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(":/etc/smtp2oauth/smtp2oauth.toml:ro")),
        "the configuration must be mounted read-only at the default path: {volumes:?}"
    );

    // Published ports exist in the image; the admin port only on loopback.
    let exposed = &image["ports"];
    let admin_port = image["env"]
        .split(' ')
        .find_map(|e| e.strip_prefix("SMTP2OAUTH_ADMIN__LISTEN="))
        .and_then(|a| a.rsplit(':').next())
        .unwrap()
        .to_string();
    let ports = strings(&relay["ports"]);
    for p in &ports {
        let container = p.rsplit(':').next().unwrap();
        assert!(
            exposed.contains(&normalise_port(container)),
            "port {p}: the image exposes only {exposed}"
        );
        if container == admin_port {
            assert!(
                p.starts_with("127.0.0.1:"),
                "the admin port must be published on 127.0.0.1 only: {p}"
            );
        }
    }
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{admin_port}"))),
        "the admin port {admin_port} is not published: {ports:?}"
    );

    // The health check is the image's, with the same timing.
    let hc = &relay["healthcheck"];
    let test = strings(&hc["test"]);
    assert_eq!(test[0], "CMD");
    assert_eq!(json_words(&test[1..]), image["healthcheck"]);
    for (key, field) in [
        ("interval", "healthcheck.interval"),
        ("timeout", "healthcheck.timeout"),
        ("start_period", "healthcheck.start-period"),
    ] {
        assert_eq!(
            seconds(hc[key].as_str().unwrap()).to_string(),
            image[field],
            "healthcheck {key}"
        );
    }
    assert_eq!(hc["retries"].to_string(), image["healthcheck.retries"]);

    // Stopping: the runtime must wait as long as the relay may need.
    let grace = seconds(relay["stop_grace_period"].as_str().unwrap());
    assert!(
        grace >= stop_time_needed(),
        "stop_grace_period {grace}s < {}s the relay may need",
        stop_time_needed()
    );
    assert_eq!(relay["stop_signal"], image["stopsignal"]);

    // Secrets: each one the service takes is declared with a file, and each /run/secrets path
    // in the environment names one of them.
    let taken = strings(&relay["secrets"]);
    for s in &taken {
        assert!(
            compose["secrets"][s]["file"].is_string(),
            "secret {s} is not declared with a file"
        );
    }
    let environment = relay["environment"].as_object().expect("environment map");
    let mut secret_paths = 0;
    for (k, v) in environment {
        let v = v.as_str().unwrap_or_else(|| panic!("{k}: quote the value"));
        if let Some(name) = v.strip_prefix("/run/secrets/") {
            secret_paths += 1;
            assert!(
                k.ends_with("_FILE"),
                "{k}: a secret file goes in a *_file key"
            );
            assert!(
                taken.iter().any(|t| t == name),
                "{k}: secret {name} is not given to the service"
            );
        }
        if k == "SMTP2OAUTH_LOG_FORMAT" {
            assert!(["text", "json"].contains(&v), "{k}={v}");
        }
    }
    assert!(secret_paths > 0, "no *_file key reads a Docker secret");

    // The environment is a working configuration: the example configuration (what the compose
    // header says to copy), the image's environment and the compose environment, with the
    // account sending through Microsoft 365 so the secret file is actually read.
    let dir = tempfile::tempdir().unwrap();
    let secret_dir = dir.path().join("secrets");
    std::fs::create_dir(&secret_dir).unwrap();
    let mut env: Vec<(String, String)> = image["env"]
        .split(' ')
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            let v = if v == image_volume.as_str() {
                dir.path().join("data").display().to_string()
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect();
    for (k, v) in environment {
        let v = v.as_str().unwrap();
        let v = match v.strip_prefix("/run/secrets/") {
            Some(name) => secret_dir.join(name).display().to_string(),
            None => v.to_string(),
        };
        env.push((k.clone(), v));
    }
    for (k, v) in [
        ("SMTP2OAUTH_ACCOUNTS__SCANNER__ROUTE", "smtp"),
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__TENANT",
            "contoso.onmicrosoft.com",
        ),
        ("SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_ID", CLIENT_ID),
    ] {
        env.push((k.into(), v.into()));
    }
    let check = || {
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config")
            .arg("--config")
            .arg(repo_root().join("config/smtp2oauth.example.toml"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SMTP2OAUTH_")) {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Without the secret files the configuration names the missing one...
    let (status, out) = check();
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("client_secret_file"), "{out}");
    // ...and with them it is complete.
    for name in &taken {
        std::fs::write(secret_dir.join(name), "compose-test-secret\n").unwrap();
    }
    let (status, out) = check();
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        !out.contains("compose-test-secret"),
        "the secret was printed: {out}"
    );

    // The example configuration listens on the image's SMTP ports.
    let example = read("config/smtp2oauth.example.toml");
    for port in exposed.split(' ').map(|p| p.trim_end_matches("/tcp")) {
        if port != admin_port {
            assert!(
                example.contains(&format!("address = \"0.0.0.0:{port}\"")),
                "config/smtp2oauth.example.toml has no listener on 0.0.0.0:{port}"
            );
        }
    }
}

/// Every metric name (with its label names) the relay can export, from the metrics crate's own
/// exposition with a sample in every family.
fn exported_metrics() -> BTreeMap<String, BTreeSet<String>> {
    use smtp2oauth_metrics::*;
    #[derive(Debug)]
    struct OneOfEach;
    impl Snapshot for OneOfEach {
        fn queue(&self) -> QueueSnapshot {
            QueueSnapshot::default()
        }
        fn accounts(&self) -> Vec<AccountSnapshot> {
            vec![AccountSnapshot {
                account: "a".into(),
                states: vec![("ok", true)],
                ..AccountSnapshot::default()
            }]
        }
    }
    let m = Metrics::new(Some(Arc::new(OneOfEach)));
    let session = SessionLabels {
        listener: "l".into(),
        tls: "none",
    };
    let account = AccountLabels {
        account: "a".into(),
    };
    let route = RouteLabels {
        account: "a".into(),
        route: "smtp",
    };
    m.sessions_active.get_or_create(&session).inc();
    m.sessions.get_or_create(&session).inc();
    m.auth_attempts
        .get_or_create(&ResultLabels { result: "success" })
        .inc();
    m.refusals
        .get_or_create(&RefusalLabels { code: "535".into() })
        .inc();
    m.messages_received.get_or_create(&account).inc();
    m.received_bytes.get_or_create(&account).inc();
    m.messages_delivered.get_or_create(&route).inc();
    m.messages_deferred.get_or_create(&route).inc();
    m.messages_failed.get_or_create(&route).inc();
    m.delivered_bytes.get_or_create(&route).inc();
    m.upstream_reply("a", 250, Some("2.0.0".into()));
    m.upstream_duration.get_or_create(&route).observe(1.0);
    m.delivery_latency.get_or_create(&account).observe(1.0);

    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.encode().lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let Some(set) = line[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
        {
            labels.extend(
                set.0
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, _)| k.to_string()),
            );
        }
    }
    out
}

/// `smtp2oauth_…` names in a PromQL expression, with the label names of their selectors.
fn metrics_in(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("smtp2oauth_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut labels = Vec::new();
        if let Some(selector) = tail[end..].strip_prefix('{') {
            let close = selector.find('}').expect("unclosed selector");
            for matcher in selector[..close].split(',') {
                let label = matcher.split(['=', '!']).next().unwrap().trim().to_string();
                if !label.is_empty() {
                    labels.push(label);
                }
            }
        }
        found.push((name, labels));
        rest = &tail[end..];
    }
    found
}

#[test]
fn alert_rules_use_metrics_the_relay_exports() {
    let exported = exported_metrics();
    // The families the relay documents must all be there, or the set above is incomplete.
    assert!(exported.len() >= 20, "{exported:?}");
    assert_eq!(
        metrics_in(r#"increase(smtp2oauth_a_total{result="x", b=~"y"}[5m]) and smtp2oauth_c"#),
        vec![
            (
                "smtp2oauth_a_total".to_string(),
                vec!["result".to_string(), "b".to_string()]
            ),
            ("smtp2oauth_c".to_string(), vec![]),
        ]
    );

    let Some(rules) = yaml("deploy/prometheus-alerts.yml") else {
        return;
    };
    let mut names = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(names.insert(alert.to_string()), "alert {alert} twice");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                ["critical", "warning", "info"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{alert}: labels.severity must be critical, warning or info"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key].is_string(),
                    "{alert}: annotations.{key} missing"
                );
            }
            for (metric, labels) in metrics_in(expr) {
                let known = exported.get(&metric).unwrap_or_else(|| {
                    panic!(
                        "{alert}: {metric} is not a metric the relay exports; known: {:?}",
                        exported.keys().collect::<Vec<_>>()
                    )
                });
                for l in labels {
                    assert!(
                        known.contains(&l) || l == "job" || l == "instance",
                        "{alert}: {metric} has no label `{l}` (it has {known:?})"
                    );
                }
                used.insert(metric);
            }
        }
    }
    // The alerts the issue asks for, by what they watch.
    for metric in [
        "smtp2oauth_token_expiry_seconds",
        "smtp2oauth_account_sign_in_required",
        "smtp2oauth_queue_oldest_message_age_seconds",
        "smtp2oauth_messages_failed_total",
        "smtp2oauth_account_state",
    ] {
        assert!(used.contains(metric), "no alert watches {metric}");
    }

    // promtool (Debian: prometheus) checks the PromQL and runs the rules' unit tests; .ci/run
    // installs it, so CI never passes without them.
    if have("promtool") {
        for args in [
            vec!["check", "rules", "prometheus-alerts.yml"],
            vec!["test", "rules", "prometheus-alerts.test.yml"],
        ] {
            let out = Command::new("promtool")
                .args(&args)
                .current_dir(repo_root().join("deploy"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool {}:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        assert!(
            !tools_required(),
            "promtool (Debian: prometheus) is not installed: .ci/run installs it"
        );
        eprintln!("promtool not installed: PromQL syntax and rule unit tests not run");
    }
}

// --- systemd -------------------------------------------------------------------------------

/// `Key=value` lines of a unit file with their section, in order (repeated keys kept).
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line `{line}` is not Key=value"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let text = read("deploy/smtp2oauth.service");
    let entries = unit_entries(&text);
    let service = |key: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.clone())
            .collect()
    };
    let one = |key: &str| -> String {
        let v = service(key);
        assert_eq!(v.len(), 1, "[Service] {key}= must be set once: {v:?}");
        v[0].clone()
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "smtp2oauth"),
        ("ConfigurationDirectory", "smtp2oauth"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(
            service(key).iter().any(|v| v == want),
            "[Service] {key}={want} missing: {:?}",
            service(key)
        );
    }
    // No capability unless asked for: both sets empty in the unit itself.
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("AmbientCapabilities"), "");
    let families: BTreeSet<String> = one("RestrictAddressFamilies")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        families,
        ["AF_INET", "AF_INET6", "AF_UNIX"].map(String::from).into(),
        "sockets: IP for SMTP and HTTPS, UNIX for glibc's name service"
    );
    // The store is the state directory, the one place it may write.
    assert!(
        service("Environment")
            .iter()
            .any(|e| e == "SMTP2OAUTH_STORE__DIR=%S/smtp2oauth"),
        "the store must be the StateDirectory"
    );
    let exec = one("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[1], "serve", "{exec}");
    let stop = seconds(&one("TimeoutStopSec"));
    assert!(
        stop >= stop_time_needed(),
        "TimeoutStopSec {stop}s < {}s the relay may need",
        stop_time_needed()
    );
    // The configuration reaches the relay as a credential, and ExecStart reads that copy.
    let credential = service("LoadCredential")
        .into_iter()
        .find(|c| c.ends_with(":/etc/smtp2oauth/smtp2oauth.toml"))
        .expect("LoadCredential of /etc/smtp2oauth/smtp2oauth.toml");
    let name = credential.split(':').next().unwrap();
    assert!(
        exec.contains(&format!("--config ${{CREDENTIALS_DIRECTORY}}/{name}")),
        "{exec}"
    );

    // The opt-in drop-in grants exactly the capability to bind ports below 1024.
    let dropin = unit_entries(&read("deploy/smtp2oauth.service.d/low-ports.conf"));
    let caps: Vec<_> = dropin
        .iter()
        .map(|(s, k, v)| (s.as_str(), k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        caps,
        [
            ("Service", "CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
            ("Service", "AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ]
    );

    // systemd's own check, when systemd is installed: unknown keys, bad values, a missing binary.
    if !have("systemd-analyze") || !Path::new("/bin/kill").exists() {
        assert!(
            !tools_required(),
            "systemd-analyze (Debian: systemd) or /bin/kill (procps) is not installed: .ci/run installs them"
        );
        eprintln!("systemd-analyze not installed: the unit was not verified by systemd");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("smtp2oauth.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/smtp2oauth", BIN)).unwrap();
    std::fs::create_dir(dir.path().join("smtp2oauth.service.d")).unwrap();
    std::fs::copy(
        repo_root().join("deploy/smtp2oauth.service.d/low-ports.conf"),
        dir.path().join("smtp2oauth.service.d/low-ports.conf"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("smtp2oauth"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify (exit {:?}):\n{stderr}",
        out.status.code()
    );
}

// --- The image, built and run ----------------------------------------------------------------

/// Mount points under `dir` (there must be none once the script is done).
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// deploy/build-image.sh --test: the Dockerfile's final stage, built around this test's binary,
/// runs the relay (as uid 65532, messages through both ports into /data, health check, SIGTERM).
/// The debug binary makes a ~70 MB image, so the size limit (30 MB) is not checked here: it
/// applies to the release build (`deploy/build-image.sh --test` without --binary checks it).
#[test]
fn container_image_built_here_runs_the_relay() {
    let scratch = tempfile::tempdir().unwrap();
    let storage: PathBuf = scratch.path().join("buildah");
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/build-image.sh"))
        .args(["--binary", BIN, "--test", "--rmi", "--size-limit", "0"])
        .arg("--storage")
        .arg(&storage)
        .env("TMPDIR", scratch.path())
        .output()
        .expect("run deploy/build-image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        Some(77) if !tools_required() => {
            eprintln!(
                "deploy/build-image.sh cannot build or run containers here; skipped:\n{report}"
            );
            return;
        }
        Some(77) => panic!(
            "deploy/build-image.sh skipped, but SMTP2OAUTH_REQUIRE_CLIENTS is set (.ci/run \
             installs buildah and runs as root):\n{report}"
        ),
        code => panic!("deploy/build-image.sh --test failed (exit {code:?}):\n{report}"),
    }
    eprintln!("{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("image test: "))
        .unwrap_or_else(|| panic!("no summary line:\n{report}"));
    assert!(summary.ends_with(" 0 failed"), "{summary}");
    assert!(
        !stdout.contains("FAIL:") && !stdout.contains("SKIP:"),
        "{report}"
    );
    let mut checks = vec![
        "image configuration matches the IMAGE_* block",
        "configuration from the environment alone, client secret from /run/secrets",
        "runs as uid/gid 65532",
        "curl sent a message with AUTH on the plain port",
        "over implicit TLS",
        "messages were captured in the container's /data/capture",
        "inside the container exits 0",
        "SIGTERM: the relay stopped cleanly",
    ];
    // A build with the legacy-tls feature (.ci/run tests --all-features) must also serve TLS 1.0
    // from the image: OpenSSL's libraries came in through ldd.
    if cfg!(feature = "legacy-tls") {
        checks.push("over TLS 1.0 to the tls_profile = \"legacy\" listener");
    }
    for check in checks {
        assert!(stdout.contains(check), "no PASS for `{check}`:\n{report}");
    }

    // Nothing left behind: no mounts, no work directory, no image or container in the storage.
    assert!(
        mounts_under(scratch.path()).is_empty(),
        "{:?}",
        mounts_under(scratch.path())
    );
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["buildah"], "the script left files in TMPDIR");
    for what in ["images", "containers"] {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs", what, "--quiet"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "buildah {what} after --rmi: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
