//! The relay under test: its configuration and its process.
//!
//! Why a real process: the figures must be those of the binary users run (release build, its own
//! runtime, its own log output, its own argon2 cost), not of library calls inside our process.
//! The relay writes its log to a file we poll, never to a pipe we would have to drain: a full
//! pipe would stall the relay and we would be measuring ourselves.

use anyhow::{Context as _, bail};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How devices prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuth {
    /// AUTH PLAIN with a password checked against an argon2id hash (what printers do).
    Password,
    /// No AUTH: the device is recognised by its address (127.0.0.1). Isolates the spool and
    /// delivery cost from argon2's.
    Address,
}

/// Everything the relay's configuration depends on.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub binary: PathBuf,
    pub fsync: bool,
    /// `[delivery] wait_for_upstream`, in the config's duration syntax ("0", "20s", ...).
    pub wait_for_upstream: String,
    pub max_upstream_connections: usize,
    /// `[delivery] upstream_idle_timeout` ("0s": no session pool, a new upstream session per
    /// message).
    pub upstream_idle_timeout: String,
    pub device_auth: DeviceAuth,
    /// RUST_LOG-style filter for the relay.
    pub log_level: String,
    /// Parent of the temporary directory holding config, spool and log (its filesystem decides
    /// what an fsync costs).
    pub work_dir: Option<PathBuf>,
    /// Concurrent device sessions to allow (the session limits must never be what we measure).
    pub sessions: usize,
    pub max_message_size: u64,
    /// The store (spool) directory; `None`: `store/` in the temporary directory. The power-cut
    /// rig puts it on its filesystem and restarts relays on it.
    pub store_dir: Option<PathBuf>,
    /// More TOML appended to the config (e.g. the soak's `[[devices]]`).
    pub extra_config: String,
}

/// Where the relay's account sends mail, and the credentials it uses.
pub struct UpstreamSide<'a> {
    pub mailbox: &'a str,
    pub authority: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    pub smtp_port: u16,
    pub ca_file: &'a Path,
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
    /// The account's route keys in place of SMTP submission to the sink (`route = "graph"` and
    /// its keys for the `graph-large` measurement); `None`: the sink on `smtp_port`.
    pub route_keys: Option<String>,
}

pub const DEVICE_USER: &str = "bench-mfp";
pub const DEVICE_PASSWORD: &str = "bench-Pr1nter-pass";

/// A running relay. Killed when dropped (a failed benchmark must not leave one behind).
pub struct RelayProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    pub fn start(s: &RelaySettings, up: &UpstreamSide<'_>) -> anyhow::Result<RelayProcess> {
        let dir = match &s.work_dir {
            Some(parent) => tempfile::Builder::new()
                .prefix("smtp2oauth-bench.")
                .tempdir_in(parent),
            None => tempfile::Builder::new()
                .prefix("smtp2oauth-bench.")
                .tempdir(),
        }
        .context("creating the relay's temporary directory")?;
        let store_dir = s
            .store_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("store"));
        let config = dir.path().join("smtp2oauth.toml");
        let log_path = dir.path().join("relay.log");
        let hash = match s.device_auth {
            DeviceAuth::Password => Some(hash_password(&s.binary, DEVICE_PASSWORD)?),
            DeviceAuth::Address => None,
        };
        std::fs::write(&config, config_toml(s, up, &store_dir, hash.as_deref()))
            .context("writing the relay config")?;
        let log = std::fs::File::create(&log_path).context("creating the relay log")?;
        let child = Command::new(&s.binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", &s.log_level)
            .env_remove("SMTP2OAUTH_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", s.binary.display()))?;
        let mut relay = RelayProcess {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
            config_path: config,
            _dir: dir,
        };
        relay.addr = relay.wait_started(Duration::from_secs(30))?;
        Ok(relay)
    }

    /// Polls the log until "smtp2oauth started"; returns the listener's address.
    fn wait_started(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains("smtp2oauth started") {
                return log
                    .lines()
                    .filter(|l| l.contains("listening") && !l.contains("admin"))
                    .find_map(|l| field(l, "address=")?.parse().ok())
                    .with_context(|| format!("no \"listening\" address in the relay log:\n{log}"));
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!("the relay exited ({status}) before starting:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("the relay did not start within {timeout:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmHWM:")
    }

    /// CPU time the relay has used so far.
    pub fn cpu_time(&self) -> Option<crate::report::Cpu> {
        crate::report::process_cpu_time(&format!("/proc/{}/stat", self.pid()?))
    }

    /// Asks the relay to stop (SIGTERM) and waits up to `timeout`, then kills it.
    pub fn stop(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet, so the
            // pid cannot have been reused by another process.
            #[allow(unsafe_code)]
            let _ = unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, as a power cut would, and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The relay's log so far (for a failed run, or `--keep-log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A "... kB" line of /proc/PID/status (e.g. "VmRSS:"), in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The value after `key` in a log line, e.g. `address=127.0.0.1:2525`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(key)? + key.len();
    let rest = line[at..].trim_start_matches('"');
    let end = rest.find([' ', '"']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `smtp2oauth hash-password`, so the hash has exactly the relay's argon2 parameters.
pub fn hash_password(binary: &Path, password: &str) -> anyhow::Result<String> {
    let mut child = Command::new(binary)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} hash-password", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}").context("writing to hash-password")?;
    }
    let out = child.wait_with_output().context("hash-password")?;
    if !out.status.success() {
        bail!(
            "hash-password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// TOML basic strings: paths and secrets are quoted safely whatever they contain.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn config_toml(
    s: &RelaySettings,
    up: &UpstreamSide<'_>,
    store_dir: &Path,
    hash: Option<&str>,
) -> String {
    // Limits scaled to the load, so the relay's session limits are never what we measure.
    let sessions = (s.sessions * 2).max(500);
    let mut t = format!(
        r#"# Written by smtp2oauth-bench.
[server]
hostname = "relay.bench"
max_sessions = {sessions}
max_sessions_per_ip = {sessions}
max_message_size = {max_size}

[tls]
cert_file = {cert}
key_file = {key}

[[listeners]]
name = "bench"
address = "127.0.0.1:0"
tls = "starttls"
allow_insecure_auth = true

[store]
dir = {store}
fsync = {fsync}

[admin]
listen = ""

[delivery]
wait_for_upstream = {wait}
max_upstream_connections = {conns}
upstream_idle_timeout = {idle}

[[accounts]]
name = "bench"
mailbox = {mailbox}
tenant = {tenant}
client_id = {client_id}
client_secret = {secret}
authority = {authority}
{route}ca_file = {ca}
# Pacing off: the benchmark measures how fast we can go, not Exchange's 30 a minute.
max_messages_per_minute = 0
"#,
        max_size = s.max_message_size,
        cert = q(&up.cert_file.display().to_string()),
        key = q(&up.key_file.display().to_string()),
        store = q(&store_dir.display().to_string()),
        fsync = s.fsync,
        wait = q(&s.wait_for_upstream),
        conns = s.max_upstream_connections,
        idle = q(&s.upstream_idle_timeout),
        mailbox = q(up.mailbox),
        tenant = q(&up.tenant),
        client_id = q(&up.client_id),
        secret = q(&up.client_secret),
        authority = q(&up.authority),
        route = up.route_keys.clone().unwrap_or_else(|| format!(
            "route = \"smtp\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"starttls\"\n",
            up.smtp_port
        )),
        ca = q(&up.ca_file.display().to_string()),
    );
    t.push_str(&s.extra_config);
    match hash {
        Some(hash) => {
            let _ = write!(
                t,
                "\n[[devices]]\nusername = {}\npassword_hash = {}\naccount = \"bench\"\n",
                q(DEVICE_USER),
                q(hash)
            );
        }
        None => {
            t.push_str(
                "\n[[devices]]\nname = \"bench-by-address\"\nauth = false\n\
                 allow_ips = [\"127.0.0.1/32\"]\naccount = \"bench\"\n",
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_address() {
        let line = "2026-01-01T00:00:00Z  INFO smtp2oauth::serve: listening listener=bench \
                    address=127.0.0.1:40123 tls=Starttls";
        assert_eq!(field(line, "address="), Some("127.0.0.1:40123"));
    }
}
