//! Test harness: the real `smtp2oauth` binary against the fakes, driven by real SMTP clients.
//!
//! A [`Relay`] is the binary started with a generated config in a temp dir; its listeners bind
//! 127.0.0.1:0 and the harness reads the chosen ports from the "listening" log lines. Clients are
//! programs we did not write (curl, Python's smtplib, swaks), run as subprocesses.

#![allow(dead_code)]

pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process};
use smtp2oauth_testkit::{FakeIdp, FakeSmtp, IdpConfig, SmtpConfig, TestPki};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_smtp2oauth");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub const MAILBOX: &str = "scanner@contoso.com";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "cl13nt-s3cr3t-VALUE~xyz";
pub const DEVICE_USER: &str = "mfp-3f";
pub const DEVICE_PASSWORD: &str = "Pr1nter-p@ss:word";
pub const TENANT: &str = "contoso.onmicrosoft.com";

/// argon2id hashes are made once per test process (they cost ~50 ms each).
pub fn password_hash(password: &str) -> String {
    static CACHE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let mut c = CACHE.lock().unwrap();
    let map = c.get_or_insert_with(HashMap::new);
    if let Some(h) = map.get(password) {
        return h.clone();
    }
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    map.insert(password.to_string(), h.clone());
    h
}

/// The fakes a relay talks to.
pub struct Upstream {
    pub pki: TestPki,
    pub idp: FakeIdp,
    pub smtp: FakeSmtp,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_with(|_| {}, |_| {}).await
    }

    pub async fn start_with(
        idp_cfg: impl FnOnce(&mut IdpConfig),
        smtp_cfg: impl FnOnce(&mut SmtpConfig),
    ) -> Upstream {
        let pki = TestPki::new();
        let mut ic = IdpConfig {
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Some(CLIENT_SECRET.into()),
            ..IdpConfig::default()
        };
        idp_cfg(&mut ic);
        let idp = FakeIdp::start(ic).await;
        let mut sc = SmtpConfig::microsoft(pki.server_config(), MAILBOX, idp.validator());
        smtp_cfg(&mut sc);
        let smtp = FakeSmtp::start(sc).await;
        Upstream { pki, idp, smtp }
    }

    /// An `[[accounts]]` block for route = "smtp" pointing at these fakes.
    pub fn account_toml(&self, extra: &str) -> String {
        format!(
            r#"
[[accounts]]
name = "scanner"
mailbox = "{MAILBOX}"
route = "smtp"
tenant = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
authority = "{authority}"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
ca_file = "{ca}"
max_messages_per_minute = 0
{extra}
"#,
            authority = self.idp.authority(),
            port = self.smtp.port(),
            ca = self.pki.ca_pem_path().display(),
        )
    }
}

/// Listeners, TLS and the usual devices, with `accounts` appended.
pub fn relay_toml(pki: &TestPki, accounts: &str, devices_extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "relay.test"

[admin]
listen = "127.0.0.1:0"

[tls]
cert_file = "{cert}"
key_file = "{key}"

[[listeners]]
name = "plain"
address = "127.0.0.1:0"
tls = "starttls"
allow_insecure_auth = true

[[listeners]]
name = "strict"
address = "127.0.0.1:0"
tls = "starttls"

[[listeners]]
name = "implicit"
address = "127.0.0.1:0"
tls = "implicit"

{accounts}

[[devices]]
username = "{DEVICE_USER}"
password_hash = "{hash}"
account = "scanner"

[[devices]]
name = "ups"
auth = false
allow_ips = ["127.0.0.1/32"]
account = "scanner"
{devices_extra}
"#,
        cert = pki.cert_pem_path().display(),
        key = pki.key_pem_path().display(),
        hash = password_hash(DEVICE_PASSWORD),
    )
}

/// Adds keys to the `[delivery]` table of a config made by [`relay_toml`].
pub fn with_delivery(toml: &str, keys: &str) -> String {
    toml.replace("[admin]", &format!("[delivery]\n{keys}\n\n[admin]"))
}

/// A `[store]` table for [`Relay::start_on`]: the store in `dir`, plus `extra` keys.
pub fn store_toml(dir: &Path, extra: &str) -> String {
    format!("\n[store]\ndir = \"{}\"\n{extra}\n", dir.display())
}

/// A running relay process.
pub struct Relay {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    addrs: HashMap<String, String>,
    store: PathBuf,
}

impl Relay {
    pub fn start(toml: &str) -> Relay {
        Self::start_env(toml, &[])
    }

    /// Starts the relay; `[store] dir` is set to a fresh temp dir unless the config sets it.
    pub fn start_env(toml: &str, env: &[(&str, &str)]) -> Relay {
        Self::start_cmd(toml, env, &[])
    }

    /// Starts a relay on an existing (or new) store directory that outlives it, so a later
    /// relay can take over its spool. `store_extra` adds keys to `[store]` (e.g. `fsync`).
    pub fn start_on(toml: &str, store: &Path, store_extra: &str) -> Relay {
        Self::start_on_env(toml, store, store_extra, &[])
    }

    pub fn start_on_env(
        toml: &str,
        store: &Path,
        store_extra: &str,
        env: &[(&str, &str)],
    ) -> Relay {
        Self::start_env(&format!("{toml}{}", store_toml(store, store_extra)), env)
    }

    /// Like [`Relay::start_env`], optionally through a shell `wrapper`: its last element is a
    /// script prefix to which ` exec <smtp2oauth> serve --config <file>` is appended, e.g.
    /// `["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /x &&"]` (the relay keeps the pid).
    /// An empty `wrapper` runs the binary directly.
    pub fn start_cmd(toml: &str, env: &[(&str, &str)], wrapper: &[String]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = toml.to_string();
        if !toml.contains("[store]") {
            toml.push_str(&format!(
                "\n[store]\ndir = \"{}\"\n",
                dir.path().join("store").display()
            ));
        }
        let store = env
            .iter()
            .find(|(k, _)| *k == "SMTP2OAUTH_STORE__DIR")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| store_dir_of(&toml))
            .unwrap_or_else(|| dir.path().join("store"));
        let config = dir.path().join("smtp2oauth.toml");
        std::fs::write(&config, &toml).unwrap();
        let mut cmd = match wrapper.split_last() {
            None => {
                let mut c = Command::new(BIN);
                c.arg("serve").arg("--config").arg(&config);
                c
            }
            Some((script, head)) => {
                let mut c = Command::new(&head[0]);
                c.args(&head[1..]).arg(format!(
                    "{script} exec '{BIN}' serve --config '{}'",
                    config.display()
                ));
                c
            }
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // Tests run side by side: the admin server must not take the fixed default port.
        if !toml.contains("[admin]") {
            cmd.env("SMTP2OAUTH_ADMIN__LISTEN", "127.0.0.1:0");
        }
        // trace level: the secrets test reads everything the relay can log
        cmd.env(
            "RUST_LOG",
            "trace,hyper=info,reqwest=info,rustls=info,h2=info",
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start smtp2oauth");
        let logs = Arc::new(Mutex::new(Vec::new()));
        // Nothing is meant to go to stdout; whatever does is kept for the secrets test.
        let stdout = Arc::new(Mutex::new(Vec::new()));
        {
            let stdout = stdout.clone();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    stdout.lock().unwrap().push(line);
                }
            });
        }
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if std::env::var_os("E2E_VERBOSE").is_some() {
                        eprintln!("relay| {line}");
                    }
                    let _ = tx.send(line.clone());
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("admin server listening") {
                        addrs.insert(
                            "admin".to_string(),
                            field(&line, "address=").unwrap_or_default(),
                        );
                    } else if line.contains("listening") {
                        let name = field(&line, "listener=").unwrap_or_default();
                        let addr = field(&line, "address=").unwrap_or_default();
                        addrs.insert(name, addr);
                    }
                    if line.contains("smtp2oauth started") {
                        break;
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let logs = logs.lock().unwrap().join("\n");
                    let _ = child.kill();
                    panic!("relay did not start (exit {status:?}):\n{logs}");
                }
            }
        }
        Relay {
            child: Some(child),
            dir,
            config,
            logs,
            stdout,
            addrs,
            store,
        }
    }

    /// What the relay wrote to its standard output.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn addr(&self, listener: &str) -> &str {
        self.addrs
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}: {:?}", self.addrs))
    }

    pub fn port(&self, listener: &str) -> u16 {
        self.addr(listener)
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends `sig` to the relay.
    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id(), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL (no chance to clean up) and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), Signal::KILL);
            let _ = child.wait();
        }
    }

    /// True while the process runs (false once it exited, was killed or terminated).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn store(&self) -> PathBuf {
        self.store.clone()
    }

    /// Runs `smtp2oauth queue --config <this relay's config> <args>` (the relay may be running
    /// or stopped).
    pub async fn queue(&self, args: &[&str]) -> Output {
        let mut a = vec![
            "queue".to_string(),
            "--config".to_string(),
            self.config.display().to_string(),
        ];
        a.extend(args.iter().map(|s| s.to_string()));
        run(BIN, &a).await
    }
}

/// The `dir` key of the `[store]` table of a config, if set there.
fn store_dir_of(toml: &str) -> Option<PathBuf> {
    let table = toml.split("[store]").nth(1)?;
    let table = table.split("\n[").next().unwrap_or(table);
    table.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix("dir")?
            .trim_start()
            .strip_prefix('=')?;
        Some(PathBuf::from(v.trim().trim_matches('"')))
    })
}

/// The message ids in a spool area (`queue`, `failed`, `data`) of a store.
pub fn spool_ids(store: &Path, area: &str) -> Vec<String> {
    let mut ids: Vec<String> = match std::fs::read_dir(store.join("spool").join(area)) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    ids.sort();
    ids
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    let i = line.find(key)? + key.len();
    let rest = &line[i..];
    let rest = rest.trim_start_matches('"');
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Output of a client program.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(program: &str, args: &[String]) -> Output {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs tests/clients/send.py; returns one JSON value per message.
pub async fn smtplib(args: &[&str]) -> Vec<serde_json::Value> {
    let script = repo_root().join("tests/clients/send.py");
    let mut a = vec![script.display().to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    let out = run("python3", &a).await;
    assert!(
        out.status == 0,
        "send.py failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// curl's SMTP client: returns (exit status, verbose transcript).
pub async fn curl(url: &str, extra: &[&str], from: &str, to: &[&str], file: &Path) -> Output {
    let mut a: Vec<String> = vec![
        "-sS".into(),
        "-v".into(),
        "--max-time".into(),
        "60".into(),
        "--url".into(),
        url.into(),
    ];
    a.push("--mail-from".into());
    a.push(from.into());
    for t in to {
        a.push("--mail-rcpt".into());
        a.push((*t).into());
    }
    a.push("--upload-file".into());
    a.push(file.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    run("curl", &a).await
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Writes bytes to a file in `dir` and returns its path.
pub fn file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The message as the upstream received it, without the Received header we add.
pub fn strip_received(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: "),
        "no Received header first: {:?}",
        String::from_utf8_lossy(&data[..data.len().min(200)])
    );
    // The Received header ends at the first CRLF not followed by folding whitespace.
    let mut i = 0;
    loop {
        let pos = i + data[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        if !matches!(data.get(pos), Some(b' ' | b'\t')) {
            return &data[pos..];
        }
        i = pos;
    }
}

/// What a device's message should look like once stored: CRLF line ends everywhere.
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 50);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Sends `sig` to process `pid` (one that already exited is not an error).
pub fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// Polls `f` every 100 ms until it holds (true) or `timeout` has passed (false).
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// True when every program in `programs` is installed, else the test skips. `.ci/run`
/// installs them all and sets SMTP2OAUTH_REQUIRE_CLIENTS, so on CI a missing one fails the
/// test instead of skipping it silently.
pub fn required(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_none(),
        "{missing}: required but not installed (.ci/run installs it)"
    );
    eprintln!("{missing} not installed; skipped (.ci/run installs it)");
    false
}

/// `relay_toml` with keys added to `[server]`.
pub fn with_server(toml: &str, keys: &str) -> String {
    toml.replacen(
        "hostname = \"relay.test\"",
        &format!("hostname = \"relay.test\"\n{keys}"),
        1,
    )
}

/// Sends with smtplib (tests/clients/send.py) as the password device on the `plain` listener,
/// from `from`; `extra` adds send.py arguments (without a `--to`, to `you@example.com`).
pub async fn send_as_device(relay: &Relay, from: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let port = relay.port("plain").to_string();
    let mut a = vec![
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        from,
    ];
    if !extra.contains(&"--to") {
        a.extend(["--to", "you@example.com"]);
    }
    a.extend_from_slice(extra);
    smtplib(&a).await
}
