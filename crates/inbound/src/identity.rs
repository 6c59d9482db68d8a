//! Device identities: who may send through the relay, as which account, with which senders.
//!
//! We are never an open relay: every message comes from a device that either proved a password
//! we issued (argon2id hash in the config) or connects from an address an admin listed for a
//! device that cannot authenticate. Each device maps to exactly one account, and the account's
//! mailbox decides which envelope senders are allowed (Exchange refuses the rest with
//! `554 5.2.252 SendAsDenied`, so we catch it early or rewrite).

use crate::sasl::Credentials;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use ipnet::IpNet;
use smtp2oauth_config::Config;
use smtp2oauth_proto::Address;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A configured device, resolved against its account.
#[derive(Debug)]
pub struct Device {
    /// The device's name in logs (its username when it has one).
    pub name: String,
    /// The name it logs in with; none for a device recognised by address.
    pub username: Option<String>,
    hash: Option<Arc<PasswordHash>>,
    /// Addresses it may connect from (empty: any).
    pub allow_ips: Vec<IpNet>,
    /// The account whose route delivers its mail.
    pub account: String,
    /// Which senders it may use.
    pub policy: SenderPolicy,
    /// The largest message this device may send: its account's limit (a route such as Graph
    /// takes less than `[server] max_message_size`), never more than the server's.
    pub max_message_size: u64,
}

impl Device {
    /// True when the device may connect from `ip`.
    pub fn allowed_from(&self, ip: IpAddr) -> bool {
        self.allow_ips.is_empty() || self.allow_ips.iter().any(|n| n.contains(&normalise_ip(ip)))
    }
}

/// IPv4 clients on a dual-stack socket appear as `::ffff:a.b.c.d`; allow lists are written in
/// IPv4, so compare in IPv4.
pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// All devices, indexed for the two ways a session finds its device.
pub struct Directory {
    by_username: HashMap<Vec<u8>, Arc<Device>>,
    by_address: Vec<Arc<Device>>,
    /// Verified against when the username is unknown, so that an unknown user costs the same
    /// time as a wrong password and usernames cannot be discovered by timing.
    dummy: Arc<PasswordHash>,
    verifier: Verifier,
    cache: AuthCache,
    /// Verifications in progress, by credential tag: a burst of sessions presenting the same
    /// new credentials waits for one verification instead of queueing one each.
    in_flight: Mutex<HashMap<[u8; 32], tokio::sync::watch::Receiver<Option<bool>>>>,
}

/// A device the configuration describes that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct DirectoryError {
    /// The configuration key (`devices.2.password_hash`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Directory {
    /// Resolves every device against its account; reports every problem at once.
    pub fn from_config(cfg: &Config) -> Result<Directory, Vec<DirectoryError>> {
        let mut errors = Vec::new();
        let mut by_username = HashMap::new();
        let mut by_address = Vec::new();
        for (i, d) in cfg.devices.iter().enumerate() {
            let Some(account) = cfg.account(&d.account) else {
                errors.push(DirectoryError {
                    key: format!("devices.{i}.account"),
                    message: format!("no account `{}`", d.account),
                });
                continue;
            };
            let hash = match (&d.password_hash, d.auth) {
                (Some(h), true) => match PasswordHash::new(h.expose()) {
                    Ok(ph) if ph.algorithm.as_str().starts_with("argon2") => Some(Arc::new(ph)),
                    Ok(_) => {
                        errors.push(DirectoryError {
                            key: format!("devices.{i}.password_hash"),
                            message: "is not an argon2 hash".into(),
                        });
                        continue;
                    }
                    Err(e) => {
                        errors.push(DirectoryError {
                            key: format!("devices.{i}.password_hash"),
                            message: format!("is not a valid PHC hash string ({e}); create one with `smtp2oauth hash-password`"),
                        });
                        continue;
                    }
                },
                _ => None,
            };
            let mailbox = match Address::parse(&account.mailbox) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(DirectoryError {
                        key: format!("devices.{i}.account"),
                        message: format!(
                            "the mailbox of account `{}` is not an address we can send as ({e})",
                            account.name
                        ),
                    });
                    continue;
                }
            };
            let policy = SenderPolicy::new(
                mailbox,
                d.allowed_senders
                    .as_ref()
                    .unwrap_or(&account.allowed_senders),
                d.rewrite_sender.unwrap_or(account.rewrite_sender),
            );
            let dev = Arc::new(Device {
                name: d.label(),
                username: d.username.clone(),
                hash,
                allow_ips: d.allow_ips.clone(),
                account: account.name.clone(),
                policy,
                max_message_size: account.message_size_limit(cfg.server.max_message_size),
            });
            if d.auth {
                if let Some(u) = &d.username {
                    by_username.insert(u.as_bytes().to_vec(), dev);
                }
            } else {
                by_address.push(dev);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let dummy = Arc::new(dummy_hash(
            by_username
                .values()
                .filter_map(|d: &Arc<Device>| d.hash.as_deref()),
        ));
        let workers = match cfg.server.auth_workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(4),
            n => n,
        };
        Ok(Directory {
            by_username,
            by_address,
            dummy,
            verifier: Verifier::start(workers),
            cache: AuthCache::new(cfg.server.auth_cache_ttl, 10_000),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The largest message any device may send (what EHLO advertises before the device is
    /// known); `None` when there are no devices.
    pub fn largest_message_size(&self) -> Option<u64> {
        self.by_username
            .values()
            .chain(&self.by_address)
            .map(|d| d.max_message_size)
            .max()
    }

    /// The authenticating device with this username, if any.
    pub fn device_by_username(&self, username: &str) -> Option<Arc<Device>> {
        self.by_username.get(username.as_bytes()).cloned()
    }

    /// The device that does not authenticate and is recognised by `ip`, if any.
    pub fn device_for_address(&self, ip: IpAddr) -> Option<Arc<Device>> {
        let ip = normalise_ip(ip);
        self.by_address
            .iter()
            .find(|d| d.allow_ips.iter().any(|n| n.contains(&ip)))
            .cloned()
    }

    /// Checks credentials. A device connecting from outside its `allow_ips` is refused before
    /// anything else, whatever its password and whatever the cache holds, after the same time
    /// an unknown user takes. A login seen to succeed within `auth_cache_ttl` is recognised
    /// from a keyed hash of the credentials; anything else runs argon2 on a small pool of
    /// verifier threads (not the async executor, so a burst of logins does not stall other
    /// sessions). Unknown users cost as much as the most expensive configured hash, and
    /// failures always pay the full argon2 cost.
    pub async fn verify(
        self: &Arc<Self>,
        creds: Credentials,
        peer: IpAddr,
    ) -> Result<Arc<Device>, AuthFailure> {
        if let Some(dev) = self.by_username.get(&creds.username)
            && !dev.allowed_from(peer)
        {
            self.verifier
                .verify(self.dummy.clone(), creds.password)
                .await?;
            return Err(AuthFailure::AddressNotAllowed);
        }
        let tag = self.cache.tag(&creds.username, &creds.password);
        if let Some(dev) = self.cache.get(&tag) {
            return Ok(dev);
        }
        // The same credentials already being verified (printers that wake together): wait for
        // that verification. Only a success is shared; after a failure (or if the verifying
        // session went away) each waiter pays for its own, so failures always cost the full
        // argon2 time and none can be had cheaply.
        let leader = match self.join_in_flight(tag) {
            InFlight::Follow(mut rx) => {
                if let Ok(v) = rx.wait_for(|v| v.is_some()).await
                    && *v == Some(true)
                    && let Some(dev) = self.cache.get(&tag)
                {
                    return Ok(dev);
                }
                None
            }
            InFlight::Lead(guard) => Some(guard),
            InFlight::Alone => None,
        };
        let dev = self.by_username.get(&creds.username).cloned();
        let hash = dev
            .as_ref()
            .and_then(|d| d.hash.clone())
            .unwrap_or_else(|| self.dummy.clone());
        let ok = self.verifier.verify(hash, creds.password).await?;
        let result = match dev {
            Some(d) if ok && d.hash.is_some() => {
                // Cached before the followers are told, so they find it.
                self.cache.insert(tag, d.clone());
                Ok(d)
            }
            Some(d) if d.hash.is_some() => Err(AuthFailure::WrongPassword),
            _ => Err(AuthFailure::UnknownUser),
        };
        if let Some(leader) = leader {
            leader.done(!matches!(
                result,
                Err(AuthFailure::WrongPassword | AuthFailure::UnknownUser)
            ));
        }
        result
    }

    fn join_in_flight(self: &Arc<Self>, tag: [u8; 32]) -> InFlight {
        if self.cache.ttl.is_zero() {
            // No cache: every login is verified on its own, as configured.
            return InFlight::Alone;
        }
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(&tag) {
            return InFlight::Follow(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        map.insert(tag, rx);
        InFlight::Lead(Leader {
            directory: self.clone(),
            tag,
            tx,
        })
    }

    /// Forgets cached logins (after a configuration change).
    pub fn clear_auth_cache(&self) {
        self.cache.clear();
    }
}

enum InFlight {
    /// Another session is verifying these credentials.
    Follow(tokio::sync::watch::Receiver<Option<bool>>),
    /// This session verifies them; others may wait for it.
    Lead(Leader),
    /// No sharing (the login cache is off).
    Alone,
}

/// Held by the session verifying a set of credentials. Dropping it (the verification done, or
/// the session gone) takes the entry away and wakes the followers: with the result when
/// [`Leader::done`] was called, with a closed channel otherwise.
struct Leader {
    directory: Arc<Directory>,
    tag: [u8; 32],
    tx: tokio::sync::watch::Sender<Option<bool>>,
}

impl Leader {
    /// Tells the followers whether the credentials were right.
    fn done(self, verified: bool) {
        self.tx.send_replace(Some(verified));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.directory
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tag);
    }
}

/// argon2 verification on a fixed pool of dedicated threads.
///
/// argon2id with the default cost allocates 19 MiB per verification. Done on tokio's blocking
/// pool, every concurrent login grows another thread's heap, and glibc does not give those
/// blocks back: a burst of logins left gigabytes resident. A fixed pool bounds memory while
/// verifying at `workers` x the largest hash's memory cost, and each buffer is freed as soon as
/// its verification is done, so a relay at rest holds none of it (the binary sets glibc's mmap
/// threshold so that such buffers are mapped and unmapped, not kept in a heap). Logins are
/// mostly answered from the cache, so the page faults of a fresh buffer are rarely paid.
struct Verifier {
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// argon2 verifications run so far (read by the tests that prove work is shared).
    #[cfg_attr(not(test), allow(dead_code))]
    runs: Arc<std::sync::atomic::AtomicU64>,
}

struct Job {
    hash: Arc<PasswordHash>,
    password: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Logins waiting for a verifier beyond this are refused for now (454), not queued forever.
const MAX_PENDING_VERIFICATIONS: usize = 1024;

impl Verifier {
    fn start(workers: usize) -> Verifier {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(MAX_PENDING_VERIFICATIONS);
        let rx = Arc::new(Mutex::new(rx));
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let runs = runs.clone();
            let _ = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(j) => j,
                            Err(_) => return, // the directory was dropped
                        };
                        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let ok = verify_with(&job.hash, &job.password);
                        let _ = job.reply.send(ok);
                    }
                });
        }
        Verifier { jobs: tx, runs }
    }

    async fn verify(
        &self,
        hash: Arc<PasswordHash>,
        password: Vec<u8>,
    ) -> Result<bool, AuthFailure> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Job {
                hash,
                password,
                reply,
            })
            .map_err(|_| AuthFailure::Busy)?;
        rx.await.map_err(|_| AuthFailure::Internal)
    }
}

fn verify_with(hash: &PasswordHash, password: &[u8]) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let n = params.block_count();
    let mut blocks = vec![Block::default(); n];
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, &mut blocks[..n])
        .is_err()
    {
        return false;
    }
    constant_time_eq(&out, expected.as_bytes())
}

/// Compares without stopping at the first difference, so timing reveals nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Recent successful logins, keyed by an HMAC of the presented credentials under a key made at
/// start and never stored. Printers log in for every message; argon2 costs tens of
/// milliseconds of CPU each time, which would cap throughput at a few dozen messages a second.
/// The device a cached login maps to, and when it was verified.
type CachedLogin = (Arc<Device>, Instant);

struct AuthCache {
    key: ring::hmac::Key,
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<[u8; 32], CachedLogin>>,
}

impl AuthCache {
    fn new(ttl: Duration, max: usize) -> AuthCache {
        let rng = ring::rand::SystemRandom::new();
        let key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("the system RNG works");
        AuthCache {
            key,
            ttl,
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, username: &[u8], password: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(&(username.len() as u64).to_be_bytes());
        ctx.update(username);
        ctx.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn get(&self, tag: &[u8; 32]) -> Option<Arc<Device>> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(tag) {
            Some((dev, at)) if at.elapsed() < self.ttl => Some(dev.clone()),
            _ => None,
        }
    }

    fn insert(&self, tag: [u8; 32], dev: Arc<Device>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(tag, (dev, Instant::now()));
    }

    fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Why a login failed (for the log; the device gets the same 535 for every failed check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The client's address is locked out: the session is closed, nothing is checked.
    AddressLockedOut,
    /// The username is locked out for addresses it never logged in from: nothing is checked.
    UserLockedOut,
    /// No device has this username.
    UnknownUser,
    /// The password does not match.
    WrongPassword,
    /// The right password, from an address outside the device's `allow_ips`.
    AddressNotAllowed,
    /// Too many logins waiting for verification: the device is told to try again.
    Busy,
    /// The check itself failed (our trouble).
    Internal,
}

impl AuthFailure {
    /// The value of the `result` label in `smtp2oauth_auth_attempts_total`. Every failed check
    /// has the same label: whoever reads the metrics cannot tell which usernames exist.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser
            | AuthFailure::WrongPassword
            | AuthFailure::AddressNotAllowed => "failure",
            AuthFailure::AddressLockedOut | AuthFailure::UserLockedOut => "locked_out",
            AuthFailure::Busy => "busy",
            AuthFailure::Internal => "error",
        }
    }

    /// A failed check of credentials (not a lockout or our own trouble): what lockouts count.
    pub fn is_failed_check(self) -> bool {
        matches!(
            self,
            AuthFailure::UnknownUser | AuthFailure::WrongPassword | AuthFailure::AddressNotAllowed
        )
    }

    /// The failure in words, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::AddressLockedOut => "address locked out",
            AuthFailure::UserLockedOut => "username locked out for this address",
            AuthFailure::UnknownUser => "unknown user",
            AuthFailure::WrongPassword => "wrong password",
            AuthFailure::AddressNotAllowed => "address not in the device's allow_ips",
            AuthFailure::Busy => "too many logins waiting for verification",
            AuthFailure::Internal => "internal error",
        }
    }
}

/// argon2id of a random password nobody knows, with the default cost parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0ZHVtbXk$5oKfUJ0g0vwnmSpS4y0P0b3Gv7oUr2j0d9cM3jVvQ0g";
const DUMMY_SALT_AND_OUTPUT: &str =
    "ZHVtbXlzYWx0ZHVtbXk$5oKfUJ0g0vwnmSpS4y0P0b3Gv7oUr2j0d9cM3jVvQ0g";

/// What unknown users are verified against: a hash with the cost of the most expensive
/// configured one (memory times passes, then lanes), so that no username can be told from the
/// time its failure takes (the default cost when no device has a hash). No password matches
/// it: its output belongs to other parameters.
fn dummy_hash<'a>(hashes: impl Iterator<Item = &'a PasswordHash>) -> PasswordHash {
    let cost = |p: &Params| (u64::from(p.m_cost()) * u64::from(p.t_cost()), p.p_cost());
    let Some(p) = hashes
        .filter_map(|h| Params::try_from(h).ok())
        .max_by_key(cost)
    else {
        return PasswordHash::new(DUMMY_HASH).expect("built-in dummy hash is valid");
    };
    let text = format!(
        "$argon2id$v=19$m={},t={},p={}${DUMMY_SALT_AND_OUTPUT}",
        p.m_cost(),
        p.t_cost(),
        p.p_cost()
    );
    PasswordHash::new(&text).expect("valid parameters make a valid hash string")
}

/// Makes an argon2id hash of `password` with the default (OWASP-recommended) cost:
/// 19 MiB of memory, 2 passes, 1 lane.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    hash_password_with(
        password,
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
    )
}

/// Makes an argon2id hash with a chosen cost (memory in KiB, passes, lanes). Verification reads
/// the cost from the hash, so hashes of different costs can live side by side.
pub fn hash_password_with(
    password: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<String, String> {
    use argon2::PasswordHasher;
    let params = Params::new(m_cost_kib, t_cost, p_cost, None)
        .map_err(|e| format!("invalid argon2 cost: {e}"))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Which envelope senders a device may use, and what to do with the others.
#[derive(Clone, Debug)]
pub struct SenderPolicy {
    /// The account's mailbox (what a rewritten sender becomes).
    pub mailbox: Address,
    patterns: Vec<String>,
    /// Senders the device may not use are rewritten to the mailbox (else refused).
    pub rewrite: bool,
}

impl SenderPolicy {
    /// The policy of an account's `mailbox` with its `allowed_senders` patterns.
    pub fn new(mailbox: Address, patterns: &[String], rewrite: bool) -> Self {
        SenderPolicy {
            mailbox,
            patterns: patterns
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .collect(),
            rewrite,
        }
    }

    /// True when the account may send as `addr`: its mailbox, or an address whose RFC 5321
    /// form (the one we write upstream, quotes included) matches an `allowed_senders` pattern.
    pub fn allows(&self, addr: &Address) -> bool {
        if addr.same_mailbox(&self.mailbox) {
            return true;
        }
        let a = addr.to_string().to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), a.as_bytes()))
    }
}

/// `*` matches any run of characters, `?` one character; everything else literally.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases = [
            ("*@contoso.com", "alerts@contoso.com", true),
            ("*@contoso.com", "alerts@contoso.com.evil", false),
            ("*@contoso.com", "a@sub.contoso.com", false),
            ("*@*.contoso.com", "a@sub.contoso.com", true),
            ("scan?@contoso.com", "scan1@contoso.com", true),
            ("scan?@contoso.com", "scan12@contoso.com", false),
            ("exact@contoso.com", "exact@contoso.com", true),
            ("*", "anything", true),
            ("", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} vs {s}");
        }
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn sender_policy_matches_the_written_form() {
        let p = SenderPolicy::new(
            addr("scanner@contoso.com"),
            &["*@contoso.com".into(), "\"a b\"@fabrikam.example".into()],
            false,
        );
        assert!(p.allows(&addr("Scanner@Contoso.com")));
        assert!(p.allows(&addr("hr@contoso.com")));
        assert!(!p.allows(&addr("scanner@printer.local")));
        // The pattern sees the address as it goes upstream: a quoted local part stays quoted,
        // so `@` inside it is no domain.
        assert!(!p.allows(&addr("\"a@contoso.com\"@evil.example")));
        assert!(p.allows(&addr("\"a b\"@fabrikam.example")));
        let p = SenderPolicy::new(addr("scanner@contoso.com"), &[], true);
        assert!(p.allows(&addr("scanner@contoso.com")));
        assert!(!p.allows(&addr("hr@contoso.com")));
    }

    fn directory(ttl: &str, allow: &str) -> Arc<Directory> {
        let hash = hash_password(b"s3cret").unwrap();
        let toml = format!(
            "[server]\nauth_cache_ttl = \"{ttl}\"\n[[listeners]]\naddress = \"127.0.0.1:2525\"\n\
             [[accounts]]\nname = \"a\"\nmailbox = \"a@x.com\"\nroute = \"capture\"\n\
             [[devices]]\nusername = \"mfp\"\npassword_hash = \"{hash}\"\naccount = \"a\"\nallow_ips = [{allow}]\n"
        );
        let path = std::env::temp_dir().join(format!(
            "s2o-ident-{}-{ttl}-{}.toml",
            std::process::id(),
            allow.len()
        ));
        std::fs::write(&path, toml).unwrap();
        let c = smtp2oauth_config::parse(Some(&path), Vec::new()).unwrap();
        std::fs::remove_file(&path).ok();
        Arc::new(Directory::from_config(&c).unwrap())
    }

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.as_bytes().to_vec(),
            password: p.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn verifies_with_the_pool_and_remembers_successes_only() {
        let d = directory("10m", "");
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            d.verify(creds("mfp", "s3cret"), peer).await.unwrap().name,
            "mfp"
        );
        assert_eq!(
            d.verify(creds("mfp", "wrong"), peer).await.unwrap_err(),
            AuthFailure::WrongPassword
        );
        assert_eq!(
            d.verify(creds("nobody", "s3cret"), peer).await.unwrap_err(),
            AuthFailure::UnknownUser
        );
        // a cached success is answered without argon2: much faster than a verification
        let t = Instant::now();
        for _ in 0..20 {
            d.verify(creds("mfp", "s3cret"), peer).await.unwrap();
        }
        let cached = t.elapsed();
        let t = Instant::now();
        let _ = d.verify(creds("mfp", "wrong"), peer).await;
        let full = t.elapsed();
        assert!(
            cached < full,
            "20 cached logins ({cached:?}) should take less than one argon2 verification ({full:?})"
        );
        assert_eq!(
            d.cache.map.lock().unwrap().len(),
            1,
            "failures are never cached"
        );
        d.clear_auth_cache();
        assert!(d.cache.map.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_cache_still_checks_the_address_and_can_be_disabled() {
        let d = directory("10m", "\"10.0.0.0/8\"");
        assert!(
            d.verify(creds("mfp", "s3cret"), "10.1.2.3".parse().unwrap())
                .await
                .is_ok()
        );
        assert_eq!(
            d.verify(creds("mfp", "s3cret"), "192.168.1.1".parse().unwrap())
                .await
                .unwrap_err(),
            AuthFailure::AddressNotAllowed
        );
        let d = directory("0s", "");
        d.verify(creds("mfp", "s3cret"), "10.1.2.3".parse().unwrap())
            .await
            .unwrap();
        assert!(d.cache.map.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_the_same_new_login_is_verified_once_but_failures_each_pay() {
        let d = directory("10m", "\"10.0.0.0/8\"");
        let runs = || d.verifier.runs.load(std::sync::atomic::Ordering::Relaxed);
        let burst = |user: &'static str, pass: &'static str, peer: &'static str| {
            (0..20)
                .map(|_| {
                    let d = d.clone();
                    tokio::spawn(
                        async move { d.verify(creds(user, pass), peer.parse().unwrap()).await },
                    )
                })
                .collect::<Vec<_>>()
        };
        // Twenty printers wake at once with the same (right) password: one argon2 run.
        for t in burst("mfp", "s3cret", "10.0.0.7") {
            assert_eq!(t.await.unwrap().unwrap().name, "mfp");
        }
        assert_eq!(runs(), 1);
        // From outside the device's allow_ips the right password is refused before it is
        // checked, cached or not, each refusal taking as long as an unknown user's failure.
        let before = runs();
        for t in burst("mfp", "s3cret", "192.168.1.9") {
            assert_eq!(
                t.await.unwrap().unwrap_err(),
                AuthFailure::AddressNotAllowed
            );
        }
        assert_eq!(runs() - before, 20, "every refusal pays for a verification");
        assert_eq!(
            d.cache.map.lock().unwrap().len(),
            1,
            "still cached for 10.0.0.7"
        );
        // Wrong passwords are never shared: every attempt pays for its own verification.
        let before = runs();
        for t in burst("mfp", "guess", "10.0.0.7") {
            assert_eq!(t.await.unwrap().unwrap_err(), AuthFailure::WrongPassword);
        }
        assert_eq!(runs() - before, 20);
        assert!(d.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(DUMMY_HASH.ends_with(DUMMY_SALT_AND_OUTPUT));
    }

    /// An unknown user costs what the most expensive configured hash costs.
    #[test]
    fn unknown_users_cost_the_most_expensive_hash() {
        let cheap = PasswordHash::new(&hash_password_with(b"a", 8, 1, 1).unwrap()).unwrap();
        let dear = PasswordHash::new(&hash_password_with(b"b", 65536, 3, 1).unwrap()).unwrap();
        let d = dummy_hash([&cheap, &dear, &cheap].into_iter());
        let p = Params::try_from(&d).unwrap();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (65536, 3, 1));
        let d = dummy_hash([&cheap].into_iter());
        assert_eq!(Params::try_from(&d).unwrap().m_cost(), 8);
        let d = dummy_hash(std::iter::empty());
        assert_eq!(d.to_string(), DUMMY_HASH);
        assert!(!verify_with(&d, b"a") && !verify_with(&d, b""));
    }

    #[test]
    fn mapped_ipv4_is_compared_as_ipv4() {
        let ip: IpAddr = "::ffff:192.168.1.50".parse().unwrap();
        assert_eq!(normalise_ip(ip), "192.168.1.50".parse::<IpAddr>().unwrap());
    }
}
