//! Device identities: who may send through the relay, as which account, with which senders.
//!
//! We are never an open relay: every message comes from a device that either proved a password
//! we issued (argon2id hash in the config) or connects from an address an admin listed for a
//! device that cannot authenticate. Each device maps to exactly one account, and the account's
//! mailbox decides which envelope senders are allowed (Exchange refuses the rest with
//! `554 5.2.252 SendAsDenied`, so we catch it early or rewrite).

use crate::sasl::Credentials;
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use ipnet::IpNet;
use smtp2oauth_config::Config;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A configured device, resolved against its account.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub username: Option<String>,
    hash: Option<PasswordHash>,
    pub allow_ips: Vec<IpNet>,
    pub account: String,
    pub policy: SenderPolicy,
}

impl Device {
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
    dummy: PasswordHash,
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct DirectoryError {
    pub key: String,
    pub message: String,
}

impl Directory {
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
                    Ok(ph) if ph.algorithm.as_str().starts_with("argon2") => Some(ph),
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
            let policy = SenderPolicy::new(
                &account.mailbox,
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
        let dummy = PasswordHash::new(DUMMY_HASH).expect("built-in dummy hash is valid");
        Ok(Directory {
            by_username,
            by_address,
            dummy,
        })
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

    /// Checks credentials. Runs argon2 on the blocking pool, so a burst of logins does not stall
    /// other sessions. Unknown users, wrong passwords and devices connecting from an address
    /// outside their `allow_ips` all fail the same way (and take the same time).
    pub async fn verify(
        self: &Arc<Self>,
        creds: Credentials,
        peer: IpAddr,
    ) -> Result<Arc<Device>, AuthFailure> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.verify_blocking(&creds, peer))
            .await
            .unwrap_or(Err(AuthFailure::Internal))
    }

    fn verify_blocking(
        &self,
        creds: &Credentials,
        peer: IpAddr,
    ) -> Result<Arc<Device>, AuthFailure> {
        let argon = Argon2::default();
        match self.by_username.get(&creds.username) {
            None => {
                let _ = argon.verify_password(&creds.password, &self.dummy);
                Err(AuthFailure::UnknownUser)
            }
            Some(dev) => {
                let Some(hash) = &dev.hash else {
                    return Err(AuthFailure::UnknownUser);
                };
                argon
                    .verify_password(&creds.password, hash)
                    .map_err(|_| AuthFailure::WrongPassword)?;
                if !dev.allowed_from(peer) {
                    return Err(AuthFailure::AddressNotAllowed);
                }
                Ok(dev.clone())
            }
        }
    }
}

/// Why a login failed (for the log; the device always gets the same 535).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownUser,
    WrongPassword,
    AddressNotAllowed,
    Internal,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown user",
            AuthFailure::WrongPassword => "wrong password",
            AuthFailure::AddressNotAllowed => "address not in the device's allow_ips",
            AuthFailure::Internal => "internal error",
        }
    }
}

/// argon2id of a random password nobody knows, with the default cost parameters.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0ZHVtbXk$5oKfUJ0g0vwnmSpS4y0P0b3Gv7oUr2j0d9cM3jVvQ0g";

/// Makes an argon2id hash of `password` with the default (OWASP-recommended) cost.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    use argon2::PasswordHasher;
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Which envelope senders a device may use, and what to do with the others.
#[derive(Clone, Debug)]
pub struct SenderPolicy {
    pub mailbox: String,
    patterns: Vec<String>,
    pub rewrite: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderDecision {
    /// Send as given.
    Allow,
    /// Not allowed as given; send as the account's mailbox instead.
    Rewrite,
    Reject,
}

impl SenderPolicy {
    pub fn new(mailbox: &str, patterns: &[String], rewrite: bool) -> Self {
        SenderPolicy {
            mailbox: mailbox.to_string(),
            patterns: patterns
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .collect(),
            rewrite,
        }
    }

    /// True when the account may send as `addr`: its mailbox, or a match of `allowed_senders`.
    pub fn allows(&self, addr: &str) -> bool {
        if addr.eq_ignore_ascii_case(&self.mailbox) {
            return true;
        }
        let a = addr.to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), a.as_bytes()))
    }

    pub fn decide(&self, sender: &str) -> SenderDecision {
        if self.allows(sender) {
            SenderDecision::Allow
        } else if self.rewrite {
            SenderDecision::Rewrite
        } else {
            SenderDecision::Reject
        }
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

    #[test]
    fn sender_policy_decisions() {
        let p = SenderPolicy::new("scanner@contoso.com", &["*@contoso.com".into()], false);
        assert_eq!(p.decide("Scanner@Contoso.com"), SenderDecision::Allow);
        assert_eq!(p.decide("hr@contoso.com"), SenderDecision::Allow);
        assert_eq!(p.decide("scanner@printer.local"), SenderDecision::Reject);
        assert_eq!(p.decide(""), SenderDecision::Reject);
        let p = SenderPolicy::new("scanner@contoso.com", &[], true);
        assert_eq!(p.decide("scanner@printer.local"), SenderDecision::Rewrite);
        assert_eq!(p.decide("mfp-3f"), SenderDecision::Rewrite);
        assert_eq!(p.decide("scanner@contoso.com"), SenderDecision::Allow);
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn mapped_ipv4_is_compared_as_ipv4() {
        let ip: IpAddr = "::ffff:192.168.1.50".parse().unwrap();
        assert_eq!(normalise_ip(ip), "192.168.1.50".parse::<IpAddr>().unwrap());
    }
}
