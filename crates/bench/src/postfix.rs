//! A private Postfix instance, configured as an authenticated relay to the sink: the
//! store-and-forward peer users know, measured with the same load as the relay.
//!
//! Why inside the bench: the instance must be made fresh for every run (a new sink port, a new
//! password, an empty queue), on the same filesystem as the relay's spool, and its figures
//! (delivered rate, CPU, memory) collected the same way. It never touches the system's own
//! Postfix: everything lives under one temporary directory, passed with `postfix -c`:
//!
//! - `etc/`: `main.cf`, `master.cf` (every service with chroot off, the SMTP server only on
//!   127.0.0.1:PORT), `sasl/smtpd.conf` and `sasldb2` (Cyrus SASL: devices log in with AUTH
//!   PLAIN/LOGIN against sasldb), `sasl_passwd` (Postfix's own login at the sink);
//! - `queue/`: the durable queue (Postfix fsyncs every message before its 250), `data/`, `log/`.
//!
//! Postfix's defaults are kept where they decide its speed (process model, queue manager,
//! `in_flow_delay`, `default_destination_concurrency_limit` unless asked otherwise); only what
//! would stop the run is changed: no DNS, no local delivery, session limits raised as for the
//! relay, and the upstream is the sink over STARTTLS with SASL PLAIN, a new TLS session per
//! message (no connection cache, no TLS session cache), as the baseline describes.
//!
//! Needs root (the master starts as root and drops to the `postfix` user) and Debian's packages
//! `postfix libsasl2-modules sasl2-bin`; [`available`] says what is missing.

use crate::relay::{DEVICE_PASSWORD, DEVICE_USER, DeviceAuth};
use crate::report::Cpu;
use anyhow::{Context as _, bail};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The realm devices log in under (Cyrus SASL keys sasldb entries by user and realm).
const REALM: &str = "bench.invalid";

/// How the instance is set up.
#[derive(Clone, Debug)]
pub struct PostfixSettings {
    /// Concurrent device sessions expected (process and connection limits are raised above it).
    pub sessions: usize,
    pub device_auth: DeviceAuth,
    /// `default_destination_concurrency_limit`: parallel deliveries to the sink (Postfix's
    /// default is 20).
    pub destination_concurrency: usize,
    /// Parent of the temporary directory (the same filesystem as the relay's spool).
    pub work_dir: Option<PathBuf>,
    pub max_message_size: u64,
}

/// Where Postfix delivers, and how it logs in there.
pub struct SinkSide<'a> {
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    /// CA of the sink's certificate (Postfix logs whether it verifies; delivery needs TLS only).
    pub ca_file: &'a Path,
    /// Certificate and key for Postfix's own STARTTLS towards devices (`--starttls`).
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
}

/// A command on the PATH or in the usual sbin directories.
fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `Ok` when a private Postfix can be started here; otherwise what is missing, in words.
pub fn available() -> Result<(), String> {
    let mut missing = Vec::new();
    for cmd in ["postfix", "postconf", "saslpasswd2"] {
        if find_command(cmd).is_none() {
            missing.push(cmd);
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "Postfix is not installed (no {}): apt-get install postfix libsasl2-modules sasl2-bin",
            missing.join(", ")
        ));
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err("a private Postfix instance needs root (its master starts as root)".into());
    }
    if user_ids("postfix").is_none() {
        return Err("there is no \"postfix\" user (is the postfix package installed?)".into());
    }
    Ok(())
}

/// (uid, gid) of a user.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

/// A running instance. Stopped (and its directory removed) when dropped.
pub struct PostfixInstance {
    child: Option<Child>,
    pub addr: SocketAddr,
    config_dir: PathBuf,
    queue_dir: PathBuf,
    pub log_path: PathBuf,
    peak_rss_kib: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl PostfixInstance {
    pub fn start(s: &PostfixSettings, sink: &SinkSide<'_>) -> anyhow::Result<PostfixInstance> {
        available().map_err(anyhow::Error::msg)?;
        let postfix = find_command("postfix").context("postfix")?;
        let dir = match &s.work_dir {
            Some(parent) => tempfile::Builder::new()
                .prefix("smtp2oauth-bench-postfix.")
                .tempdir_in(parent),
            None => tempfile::Builder::new()
                .prefix("smtp2oauth-bench-postfix.")
                .tempdir(),
        }
        .context("creating Postfix's temporary directory")?;
        let root = dir.path().to_path_buf();
        // Postfix's daemons run as the postfix user and must reach their directories.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let etc = root.join("etc");
        let queue = root.join("queue");
        let data = root.join("data");
        let log = root.join("log");
        for d in [&etc, &etc.join("sasl"), &queue, &data, &log] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        let (uid, gid) = user_ids("postfix").context("no postfix user")?;
        chown(&data, uid, gid)?;

        let port = free_port()?;
        let level = compatibility_level(&etc)?;
        let paths = Paths {
            etc: &etc,
            queue: &queue,
            data: &data,
            log: &log,
        };
        std::fs::write(etc.join("main.cf"), main_cf(s, sink, &paths, &level))?;
        std::fs::write(etc.join("master.cf"), master_cf(port))?;
        std::fs::write(
            etc.join("sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n\
                 sasldb_path: {}\n",
                etc.join("sasldb2").display()
            ),
        )?;
        // Postfix's login at the sink; read by the smtp client before it drops privileges.
        let sasl_passwd = etc.join("sasl_passwd");
        std::fs::write(
            &sasl_passwd,
            format!(
                "[127.0.0.1]:{} {}:{}\n",
                sink.port, sink.user, sink.password
            ),
        )?;
        std::fs::set_permissions(&sasl_passwd, std::fs::Permissions::from_mode(0o600))?;
        if s.device_auth == DeviceAuth::Password {
            make_sasldb(&etc.join("sasldb2"), gid)?;
        }

        let log_path = log.join("maillog");
        let out = std::fs::File::create(log.join("postfix.out"))?;
        let child = Command::new(&postfix)
            .arg("-c")
            .arg(&etc)
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: a signal meant for the bench does not reach Postfix half-way.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", postfix.display()))?;
        let mut pf = PostfixInstance {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            config_dir: etc,
            queue_dir: queue,
            log_path,
            peak_rss_kib: Arc::new(AtomicU64::new(0)),
            sampling: Arc::new(AtomicBool::new(false)),
            _dir: dir,
        };
        pf.wait_ready(Duration::from_secs(60))?;
        Ok(pf)
    }

    /// Waits until the SMTP server greets, or the master exits.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut tcp) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 512];
                if let Ok(n) = tcp.read(&mut buf)
                    && buf[..n].starts_with(b"220")
                {
                    let _ = tcp.write_all(b"QUIT\r\n");
                    let _ = tcp.read(&mut buf);
                    return Ok(());
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                bail!(
                    "Postfix exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Postfix did not greet on {} within {timeout:?}:\n{}",
                    self.addr,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `postfix start-fg` printed and the end of the mail log (for a failed start or run).
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(self.log_path.with_file_name("postfix.out"))
            .unwrap_or_default();
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{out}{}", tail.join("\n"))
    }

    /// Starts sampling the memory of the whole instance every 500 ms on a thread of its own:
    /// the sum of every Postfix process's PSS (proportional set size: a page shared by n
    /// processes counts 1/n in each, so the sum is what the instance really holds; the sum of
    /// RSS would count the shared libraries once per process). [`PostfixInstance::peak_rss_kib`]
    /// reads the highest sum seen.
    pub fn start_rss_sampler(&self) {
        let Some(root) = self.child.as_ref().map(Child::id) else {
            return;
        };
        self.sampling.store(true, Ordering::Relaxed);
        let sampling = self.sampling.clone();
        let peak = self.peak_rss_kib.clone();
        let _ = std::thread::Builder::new()
            .name("postfix-pss".into())
            .spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    let sum: u64 = descendants(root).into_iter().filter_map(pss_kib).sum();
                    peak.fetch_max(sum, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
    }

    /// CPU used so far by the instance: for every live process below our child, its own time
    /// plus that of the children it reaped. A daemon that exited was reaped by the master and
    /// is in the master's figure; one still running is counted live. (Measured at the end of
    /// the run, before `postfix stop`: the master does not wait for its long-lived daemons when
    /// it stops, so their time would be lost from a rusage taken after.)
    pub fn cpu_time(&self) -> Option<Cpu> {
        let root = self.child.as_ref()?.id();
        let mut total = Cpu::default();
        for pid in descendants(root) {
            if let Some(c) = process_cpu_with_children(pid) {
                total.user += c.user;
                total.sys += c.sys;
            }
        }
        Some(total)
    }

    /// Highest summed PSS of Postfix's processes seen by the sampler.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        match self.peak_rss_kib.load(Ordering::Relaxed) {
            0 => None,
            k => Some(k),
        }
    }

    /// Stops Postfix: `postfix stop`, then `abort` and SIGKILL if it is not gone after
    /// `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        self.sampling.store(false, Ordering::Relaxed);
        let Some(child) = self.child.take() else {
            return;
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        let _ = self.postfix_command("stop");
        if reap(pid, timeout) {
            return;
        }
        let _ = self.postfix_command("abort");
        self.kill_master();
        // SAFETY: kill(2) on our own child's process group; the child is not reaped yet.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::kill(-pid, libc::SIGKILL) };
        reap(pid, Duration::from_secs(5));
    }

    fn postfix_command(&self, verb: &str) -> std::io::Result<std::process::ExitStatus> {
        let postfix = find_command("postfix").unwrap_or_else(|| PathBuf::from("postfix"));
        Command::new(postfix)
            .arg("-c")
            .arg(&self.config_dir)
            .arg(verb)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }

    /// SIGKILL to the master's process group (it runs in a session of its own).
    fn kill_master(&self) {
        let pid_file = self.queue_dir.join("pid/master.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&p| p > 1)
        {
            // SAFETY: kill(2) on the process group of the master this instance started.
            #[allow(unsafe_code)]
            let _ = unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// Waits up to `timeout` for our child `pid` to exit; true once it is reaped.
fn reap(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid pointer to a local.
        #[allow(unsafe_code)]
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return true;
        }
        if r < 0 || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's user and system time plus those of the children it reaped (from
/// /proc/PID/stat: utime, stime, cutime, cstime).
fn process_cpu_with_children(pid: u32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    let [utime, stime, cutime, cstime] = f[..] else {
        return None;
    };
    // SAFETY: sysconf only reads a system constant.
    #[allow(unsafe_code)]
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / ticks);
    Some(Cpu {
        user: secs(utime + cutime),
        sys: secs(stime + cstime),
    })
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `root` and every process below it (from the parent pids in /proc).
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name, which may contain spaces: state, ppid, ...
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// A port on 127.0.0.1 that was free a moment ago (Postfix binds it itself).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// "3.6" for Postfix 3.6 and later (the current defaults), else "2".
fn compatibility_level(etc: &Path) -> anyhow::Result<String> {
    // postconf needs a main.cf to read, even for built-in defaults.
    std::fs::write(etc.join("main.cf"), "")?;
    let postconf = find_command("postconf").context("postconf")?;
    let out = Command::new(postconf)
        .arg("-c")
        .arg(etc)
        .args(["-d", "-h", "mail_version"])
        .stderr(Stdio::null())
        .output()
        .context("running postconf")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut parts = version.split('.').filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok(if (major, minor) >= (3, 6) { "3.6" } else { "2" }.to_string())
}

/// The device's login in Cyrus SASL's sasldb (readable by Postfix's smtpd, which runs as the
/// postfix user).
fn make_sasldb(path: &Path, postfix_gid: u32) -> anyhow::Result<()> {
    let saslpasswd2 = find_command("saslpasswd2").context("saslpasswd2")?;
    let mut child = Command::new(saslpasswd2)
        .arg("-p")
        .arg("-c")
        .arg("-f")
        .arg(path)
        .arg("-u")
        .arg(REALM)
        .arg(DEVICE_USER)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running saslpasswd2")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(DEVICE_PASSWORD.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "saslpasswd2 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    chown(path, 0, postfix_gid)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))?;
    Ok(())
}

struct Paths<'a> {
    etc: &'a Path,
    queue: &'a Path,
    data: &'a Path,
    log: &'a Path,
}

fn main_cf(s: &PostfixSettings, sink: &SinkSide<'_>, p: &Paths<'_>, level: &str) -> String {
    let limit = (s.sessions * 2).max(100) + 50;
    let mynetworks = match s.device_auth {
        DeviceAuth::Password => "",
        DeviceAuth::Address => "127.0.0.1/32",
    };
    format!(
        "# Written by smtp2oauth-bench: a private Postfix instance, an authenticated relay to the
# benchmark's sink. Not the system's Postfix: see `postfix -c {etc}`.
compatibility_level = {level}
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}/maillog
maillog_file_prefixes = {log}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.invalid
mydomain = bench.invalid
myorigin = $myhostname
biff = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4

# Nothing is delivered locally; every recipient is relayed.
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =

# Devices: AUTH PLAIN/LOGIN against sasldb (Cyrus SASL){address_note}.
mynetworks = {mynetworks}
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {etc}/sasl
smtpd_sasl_local_domain = {realm}
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
smtpd_peername_lookup = no
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
message_size_limit = {max_size}

# Limits raised as for the relay, so they are never what we measure.
default_process_limit = {limit}
smtpd_client_connection_count_limit = 0
smtpd_client_event_limit_exceptions = 127.0.0.0/8

# Upstream: the sink, STARTTLS required, SASL PLAIN, a new TLS session per message.
relayhost = [127.0.0.1]:{port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{etc}/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_sasl_mechanism_filter = plain, login
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca}
smtp_tls_session_cache_database =
smtp_connection_cache_on_demand = no
smtp_tls_connection_reuse = no
default_destination_concurrency_limit = {concurrency}
",
        etc = p.etc.display(),
        queue = p.queue.display(),
        data = p.data.display(),
        log = p.log.display(),
        realm = REALM,
        address_note = if mynetworks.is_empty() {
            ""
        } else {
            ", or by address (mynetworks)"
        },
        cert = sink.cert_file.display(),
        key = sink.key_file.display(),
        max_size = s.max_message_size,
        port = sink.port,
        ca = sink.ca_file.display(),
        concurrency = s.destination_concurrency.max(1),
    )
}

/// Debian's services, every one without chroot (the instance has no chroot tree), the SMTP
/// server on 127.0.0.1:`port` only, and the postlog service for `maillog_file`.
fn master_cf(port: u16) -> String {
    format!(
        "# Written by smtp2oauth-bench. service type private unpriv chroot wakeup maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_relays_to_the_sink_with_auth_and_no_chroot() {
        let s = PostfixSettings {
            sessions: 50,
            device_auth: DeviceAuth::Password,
            destination_concurrency: 20,
            work_dir: None,
            max_message_size: 1_000_000,
        };
        let tmp = Path::new("/tmp/x");
        let sink = SinkSide {
            port: 2599,
            user: "u",
            password: "p",
            ca_file: &tmp.join("ca.pem"),
            cert_file: &tmp.join("cert.pem"),
            key_file: &tmp.join("key.pem"),
        };
        let paths = Paths {
            etc: &tmp.join("etc"),
            queue: &tmp.join("queue"),
            data: &tmp.join("data"),
            log: &tmp.join("log"),
        };
        let main = main_cf(&s, &sink, &paths, "3.6");
        for line in [
            "config_directory = /tmp/x/etc",
            "queue_directory = /tmp/x/queue",
            "relayhost = [127.0.0.1]:2599",
            "mynetworks = \n",
            "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject",
            "smtp_tls_security_level = encrypt",
            "smtp_connection_cache_on_demand = no",
            "default_destination_concurrency_limit = 20",
            "default_process_limit = 150",
        ] {
            assert!(main.contains(line), "{line:?} missing from\n{main}");
        }
        let master = master_cf(2526);
        assert!(master.starts_with("# "));
        assert!(master.contains("\n127.0.0.1:2526 inet n - n - - smtpd\n"));
        // Column 5 (chroot) is "n" for every service.
        for l in master.lines().skip(1) {
            assert_eq!(l.split_whitespace().nth(4), Some("n"), "{l}");
        }
    }

    #[test]
    fn descendants_include_the_root_and_its_children() {
        let me = std::process::id();
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let tree = descendants(me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()));
    }
}

/// The Postfix setup end to end: needs root and `apt-get install postfix libsasl2-modules
/// sasl2-bin`, so it is not part of the normal test suite. Run it with
/// `cargo test -p smtp2oauth-bench -- --ignored postfix`.
#[cfg(test)]
mod postfix_instance_tests {
    use super::*;
    use crate::load::{self, Auth, LoadSpec};
    use crate::message::Template;
    use crate::sink::SinkWatch;
    use crate::upstream::{
        MAILBOX, POSTFIX_SINK_USER, RECIPIENT, Upstream, UpstreamOptions, random_password,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root and the postfix, libsasl2-modules and sasl2-bin packages"]
    async fn postfix_relays_authenticated_devices_to_the_sink_over_tls() {
        available().expect("Postfix can run here");
        let password = random_password();
        let up = Upstream::start(&UpstreamOptions {
            reply_delay: Duration::ZERO,
            max_size: 1 << 20,
            token_lifetime: Duration::from_secs(3600),
            password_login: Some(password.clone()),
        })
        .await;
        let settings = PostfixSettings {
            sessions: 4,
            device_auth: DeviceAuth::Password,
            destination_concurrency: 20,
            work_dir: None,
            max_message_size: 1 << 20,
        };
        let sink = SinkSide {
            port: up.sink.port(),
            user: POSTFIX_SINK_USER,
            password: &password,
            ca_file: up.pki.ca_pem_path(),
            cert_file: up.pki.cert_pem_path(),
            key_file: up.pki.key_pem_path(),
        };
        let mut pf =
            tokio::task::block_in_place(|| PostfixInstance::start(&settings, &sink)).unwrap();
        let spec = |auth: Option<Auth>, tag: &str, messages| {
            Arc::new(LoadSpec {
                addr: pf.addr.to_string(),
                sessions: 4,
                messages,
                per_session: 1,
                template: Template::new(MAILBOX, RECIPIENT, tag, 4096).into(),
                auth,
                starttls: None,
                from: MAILBOX.into(),
                to: RECIPIENT.into(),
                helo: "bench-device".into(),
                timeout: Duration::from_secs(30),
                hooks: crate::load::Hooks::default(),
            })
        };
        // Not an open relay: without AUTH, or with a wrong password, nothing is accepted.
        let wrong = Auth::Plain {
            user: DEVICE_USER.into(),
            password: "wrong".into(),
        };
        for auth in [None, Some(wrong)] {
            let r = load::run(spec(auth, "refused", 2), Instant::now()).await;
            assert_eq!(r.accepted, 0, "{:?}", r.problems);
        }
        let auth = Auth::Plain {
            user: DEVICE_USER.into(),
            password: DEVICE_PASSWORD.into(),
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let base = Instant::now();
        let watch = SinkWatch::start(up.sink.clone(), "pf".into(), base, rx);
        let r = load::run(spec(Some(auth), "pf", 20), base).await;
        assert_eq!(r.accepted, 20, "{:?}", r.problems);
        let got = watch
            .finish(&r.accepted_seqs, Duration::from_secs(60))
            .await;
        let cpu = pf.cpu_time();
        tokio::task::block_in_place(|| pf.stop(Duration::from_secs(20)));
        assert_eq!((got.delivered, got.missing, got.duplicates), (20, 0, 0));
        // A new upstream session per message, each over TLS with Postfix's own login.
        assert_eq!(up.sink.connections(), 20);
        assert_eq!(up.sink.auth_successes(), 20);
        let tls_sessions = up
            .sink
            .transcript()
            .iter()
            .filter(|l| l.contains("TLS established (STARTTLS)"))
            .count();
        assert_eq!(tls_sessions, 20);
        assert!(cpu.is_some_and(|c| c.total() > Duration::ZERO));
    }
}
