//! The addresses each username has logged in from, for the per-username lockout.
//!
//! A username under attack from elsewhere is locked out only for addresses it has not used:
//! the printer that logs in as `mfp` from 192.168.1.20 every day keeps working while `mfp` is
//! guessed from the rest of the network. That needs to survive a restart (or every restart
//! during an attack would lift the exemption), so the pairs are kept in a small file in the
//! store (`<store>/known-logins`), rewritten whole with fsync + rename when a pair is added, or
//! at most once a day when a pair's last success is refreshed. A pair is forgotten 30 days
//! after its last success; at most `MAX_ENTRIES` are kept (the oldest go first).
//!
//! The file is a line per pair: `<unix seconds> <address key> <username in hex>`.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::warn;

/// How long a successful login makes an address familiar to a username.
pub const REMEMBER_SECS: u64 = 30 * 86_400;
/// A pair's stored time is refreshed (and the file written) at most this often.
const REFRESH_SECS: u64 = 86_400;
const MAX_ENTRIES: usize = 10_000;
const HEADER: &str = "# smtp2oauth known logins v1";

type Pairs = HashMap<(Vec<u8>, IpAddr), u64>;

/// Familiar (username, address key) pairs with the time of their last success.
pub struct KnownLogins {
    path: Option<PathBuf>,
    pairs: Arc<Mutex<Pairs>>,
    /// One save at a time; each writes the latest state.
    saving: Arc<Mutex<()>>,
}

impl KnownLogins {
    /// Pairs kept in memory only (tests).
    pub fn in_memory() -> KnownLogins {
        KnownLogins {
            path: None,
            pairs: Arc::default(),
            saving: Arc::default(),
        }
    }

    /// Reads the file at `path` (missing: nothing known yet). Lines that do not parse, and
    /// pairs older than 30 days, are dropped.
    pub fn open(path: PathBuf) -> io::Result<KnownLogins> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let now = now_secs();
        let pairs = text
            .lines()
            .filter_map(parse_line)
            .filter(|(_, at)| now.saturating_sub(*at) < REMEMBER_SECS)
            .collect();
        Ok(KnownLogins {
            path: Some(path),
            pairs: Arc::new(Mutex::new(pairs)),
            saving: Arc::default(),
        })
    }

    /// True when `username` logged in successfully from `key` within the last 30 days.
    pub fn contains(&self, username: &[u8], key: IpAddr) -> bool {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        pairs
            .get(&(username.to_vec(), key))
            .is_some_and(|at| now_secs().saturating_sub(*at) < REMEMBER_SECS)
    }

    /// Records a successful login; the file is written when that changes what it says.
    pub fn remember(&self, username: &[u8], key: IpAddr) {
        let now = now_secs();
        {
            let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
            let pair = (username.to_vec(), key);
            if pairs
                .get(&pair)
                .is_some_and(|at| now.saturating_sub(*at) < REFRESH_SECS)
            {
                return;
            }
            pairs.insert(pair, now);
            if pairs.len() > MAX_ENTRIES {
                pairs.retain(|_, at| now.saturating_sub(*at) < REMEMBER_SECS);
                while pairs.len() > MAX_ENTRIES {
                    let oldest = pairs
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(k, _)| k.clone());
                    oldest.map(|k| pairs.remove(&k));
                }
            }
        }
        self.save();
    }

    /// Writes the pairs out, on tokio's blocking pool when there is a runtime.
    fn save(&self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let (pairs, saving) = (self.pairs.clone(), self.saving.clone());
        let job = move || {
            let _one_at_a_time = saving.lock().unwrap_or_else(|p| p.into_inner());
            let text = render(&pairs.lock().unwrap_or_else(|p| p.into_inner()));
            if let Err(e) = smtp2oauth_platform::replace_private(&path, text.as_bytes(), true) {
                warn!(path = %path.display(), error = %e, "cannot save the addresses devices logged in from; the per-username lockout may not exempt them after a restart");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

fn render(pairs: &Pairs) -> String {
    let mut out = format!("{HEADER}\n");
    for ((user, key), at) in pairs {
        let hex: String = user.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&format!("{at} {key} {hex}\n"));
    }
    out
}

fn parse_line(line: &str) -> Option<((Vec<u8>, IpAddr), u64)> {
    let mut parts = line.split(' ');
    let at = parts.next()?.parse().ok()?;
    let key = parts.next()?.parse().ok()?;
    let hex = parts.next()?;
    if parts.next().is_some() || hex.len() % 2 != 0 {
        return None;
    }
    let user = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(((user, key), at))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_survive_a_restart_and_expire_after_30_days() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-logins");
        let ip: IpAddr = "192.168.1.20".parse().unwrap();
        let k = KnownLogins::open(path.clone()).unwrap();
        assert!(!k.contains(b"mfp", ip));
        k.remember(b"mfp", ip);
        k.remember(b"odd name\n\xff", ip);
        assert!(k.contains(b"mfp", ip));
        let k = KnownLogins::open(path.clone()).unwrap();
        assert!(k.contains(b"mfp", ip), "read back after a restart");
        assert!(k.contains(b"odd name\n\xff", ip));
        assert!(!k.contains(b"mfp", "192.168.1.21".parse().unwrap()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let old = now_secs() - REMEMBER_SECS - 1;
        std::fs::write(
            &path,
            format!("{HEADER}\n{old} 192.168.1.20 6d6670\ngarbage\n1 2 3 4\n"),
        )
        .unwrap();
        let k = KnownLogins::open(path).unwrap();
        assert!(!k.contains(b"mfp", ip), "forgotten after 30 days");
    }
}
