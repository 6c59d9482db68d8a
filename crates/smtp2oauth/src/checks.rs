//! The checks that need more than the configuration crate: what only loading can tell (password
//! hashes parse, credentials, certificates and CA files load, stored sign-ins open with the
//! key), what this build can do (`tls_profile = "legacy"`), and the certificates' dates.
//!
//! `check-config` and `serve` run the same [`loading`] after validation, so a configuration
//! that passes one is refused by the other only for what neither can know beforehand (a port
//! in use, a store the relay's user cannot write, another relay holding the spool).
//!
//! Each problem is reported once: an entry (`listeners.0`, `devices.1`, `[tls]`) that
//! validation already found wrong is not loaded again, as loading it would only fail again with
//! other words.

use crate::wiring;
use smtp2oauth_admin::time::{from_ms, local, span};
use smtp2oauth_config::{AccountSpec, Config, ListenerTls, Loaded, Problem, RouteSpec};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A certificate that expires within this long is a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// What loading found: problems that stop the relay, and warnings.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Loads what the relay will load, for the entries without problems in `known` (found by
/// validation); the findings carry their origins.
pub async fn loading(loaded: &Loaded, known: &[Problem]) -> Findings {
    let cfg = &loaded.config;
    let mut f = Findings::default();
    device_checks(cfg, &mut f.problems);
    for a in &loaded.accounts {
        account_checks(a, &account_key(cfg, &a.name), &mut f.problems);
    }
    token_store_checks(loaded, &mut f.problems).await;
    listener_tls_checks(cfg, &mut f.problems);
    legacy_checks(cfg, cfg!(feature = "legacy-tls"), &mut f.problems);
    certificate_dates(loaded, SystemTime::now(), &mut f);
    f.problems
        .retain(|p| !known.iter().any(|k| entry(&k.key) == entry(&p.key)));
    loaded.origins.annotate(&mut f.problems);
    loaded.origins.annotate(&mut f.warnings);
    f
}

/// The entry a key belongs to: `listeners.0` for `listeners.0.client_ca_file`, `tls` for
/// `tls.cert_file`.
fn entry(key: &str) -> &str {
    let mut dots = key.match_indices('.').map(|(i, _)| i);
    let first = dots.next();
    let table = &key[..first.unwrap_or(key.len())];
    let end = match table {
        "listeners" | "accounts" | "devices" => dots.next().unwrap_or(key.len()),
        _ => first.unwrap_or(key.len()),
    };
    &key[..end]
}

/// Device password hashes parse as the relay will parse them.
fn device_checks(cfg: &Config, p: &mut Vec<Problem>) {
    if let Err(errs) = smtp2oauth_inbound::Directory::from_config(cfg) {
        for e in errs {
            if !e.key.ends_with(".account") {
                p.push(Problem::new(e.key, e.message));
            }
        }
    }
}

/// The key path of the account named `name`.
fn account_key(cfg: &Config, name: &str) -> String {
    let i = cfg.accounts.iter().position(|a| a.name == name);
    format!("accounts.{}", i.unwrap_or_default())
}

/// The account's client certificates and CA file load, and its credential does.
fn account_checks(a: &AccountSpec, key: &str, p: &mut Vec<Problem>) {
    for route in a.routes() {
        if let RouteSpec::Smarthost(s) = route
            && let Some(pair) = &s.client_cert
            && let Err(e) = smtp2oauth_upstream::client_config_with_cert(
                a.ca_file.as_deref(),
                &pair.cert_file,
                &pair.key_file,
            )
        {
            p.push(Problem::new(format!("{key}.tls_client_cert_file"), e));
        }
    }
    let Some(oauth) = &a.oauth else {
        return;
    };
    if let Some(c) = oauth.flow.credential()
        && let Err(e) = wiring::credential(&a.name, c)
    {
        p.push(Problem::new(key, format!("{e:#}")));
    }
    if let Err(e) = smtp2oauth_upstream::client_config(a.ca_file.as_deref()) {
        p.push(Problem::new(format!("{key}.ca_file"), e));
    }
}

/// Stored sign-ins must open with the master key the relay will use (nothing is created).
async fn token_store_checks(loaded: &Loaded, p: &mut Vec<Problem>) {
    match wiring::open_token_store(loaded, false).await {
        Err(e) => p.push(Problem::new("store.master_key_file", format!("{e:#}"))),
        Ok(None) => {}
        Ok(Some((store, _))) => {
            for a in loaded.accounts.iter().filter(|a| a.delegated().is_some()) {
                if let Err(e) = store.load(&a.name).await {
                    p.push(Problem::new(
                        account_key(&loaded.config, &a.name),
                        e.to_string(),
                    ));
                }
            }
        }
    }
}

/// Each listener's TLS as `serve` would load it (client CA, legacy profile); the bare pair
/// only when no listener uses it, so one bad file is reported once.
fn listener_tls_checks(cfg: &Config, p: &mut Vec<Problem>) {
    let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) else {
        return;
    };
    if !c.exists() || !k.exists() {
        return;
    }
    let mut checked = false;
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.tls == ListenerTls::None || !legacy_built(l.tls_profile, cfg!(feature = "legacy-tls"))
        {
            continue;
        }
        let policy = smtp2oauth_inbound::TlsPolicy {
            cert: c.clone(),
            key: k.clone(),
            client_ca: l.client_ca_file.clone(),
            profile: l.tls_profile,
        };
        checked = true;
        if let Err(e) = smtp2oauth_inbound::TlsHandle::load(policy) {
            p.push(Problem::new(format!("listeners.{i}"), e.to_string()));
        }
    }
    if !checked && let Err(e) = smtp2oauth_inbound::server_config(c, k) {
        p.push(Problem::new("tls", e.to_string()));
    }
}

/// False for the legacy profile in a build without OpenSSL (reported by [`legacy_checks`]).
fn legacy_built(profile: smtp2oauth_config::TlsProfile, legacy_tls: bool) -> bool {
    legacy_tls || profile != smtp2oauth_config::TlsProfile::Legacy
}

/// `tls_profile = "legacy"` needs OpenSSL, which only builds with the `legacy-tls` feature
/// have; `legacy_tls` says whether this one does.
fn legacy_checks(cfg: &Config, legacy_tls: bool, p: &mut Vec<Problem>) {
    for (i, l) in cfg.listeners.iter().enumerate() {
        if l.tls != ListenerTls::None && !legacy_built(l.tls_profile, legacy_tls) {
            p.push(Problem::new(
                format!("listeners.{i}.tls_profile"),
                "\"legacy\" (TLS 1.0 and 1.1 through OpenSSL) needs a build with the `legacy-tls` feature, and this one has rustls only: use the release binaries, the .deb or the container image, which have it, or build with `cargo build --release -p smtp2oauth --features legacy-tls` (docs/deploy.md)",
            ));
        }
    }
}

/// An expired certificate is a problem, one that expires within [`EXPIRY_WARNING`] a warning.
/// Files that cannot be read are left to the checks that load them.
fn certificate_dates(loaded: &Loaded, now: SystemTime, f: &mut Findings) {
    for (key, path) in certificate_files(loaded) {
        let Ok(ms) = wiring::not_after_ms(&path) else {
            continue;
        };
        let not_after = from_ms(ms);
        match expiry(&path, not_after, now) {
            Some(Expiry::Expired(m)) => f.problems.push(Problem::new(key, m)),
            Some(Expiry::Soon(m)) => f.warnings.push(Problem::new(key, m)),
            None => {}
        }
    }
}

/// Every certificate file the relay presents, with its key: the listeners' and the accounts'
/// client certificates (for the token endpoint, for a smart host).
fn certificate_files(loaded: &Loaded) -> Vec<(String, std::path::PathBuf)> {
    let cfg = &loaded.config;
    let mut files = Vec::new();
    let tls_used = cfg.listeners.iter().any(|l| l.tls != ListenerTls::None);
    if let Some(c) = cfg.tls.cert_file.clone().filter(|_| tls_used) {
        files.push(("tls.cert_file".to_string(), c));
    }
    for a in &loaded.accounts {
        let key = account_key(cfg, &a.name);
        let certificates = wiring::account_certificates(a, &key);
        files.extend(certificates.into_iter().map(|(key, f)| (key, f.path)));
    }
    files
}

/// What a certificate's end date means now.
#[derive(Debug, PartialEq, Eq)]
enum Expiry {
    Expired(String),
    Soon(String),
}

fn expiry(path: &Path, not_after: SystemTime, now: SystemTime) -> Option<Expiry> {
    let date = local(not_after);
    let file = path.display();
    match not_after.duration_since(now) {
        Err(e) => Some(Expiry::Expired(format!(
            "the certificate in {file} expired on {date} ({} ago): renew it",
            span(e.duration())
        ))),
        Ok(left) if left <= EXPIRY_WARNING => Some(Expiry::Soon(format!(
            "the certificate in {file} expires on {date} (in {}): renew it before then",
            span(left)
        ))),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_of_one_entry_are_reported_once() {
        assert_eq!(entry("listeners.0.client_ca_file"), "listeners.0");
        assert_eq!(entry("listeners.0"), "listeners.0");
        assert_eq!(entry("tls.cert_file"), "tls");
        assert_eq!(entry("tls"), "tls");
        assert_eq!(entry("devices.12.password_hash"), "devices.12");
        assert_ne!(entry("accounts.1.tenant"), entry("accounts.10.tenant"));
    }

    #[test]
    fn certificate_dates_in_words() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_555_431);
        let path = Path::new("/etc/smtp2oauth/cert.pem");
        let day = Duration::from_secs(86_400);
        let expired = now - 1500 * day;
        assert_eq!(
            expiry(path, expired, now),
            Some(Expiry::Expired(format!(
                "the certificate in /etc/smtp2oauth/cert.pem expired on {} (1500 days ago): renew it",
                local(expired)
            )))
        );
        let soon = now + 12 * day;
        assert_eq!(
            expiry(path, soon, now),
            Some(Expiry::Soon(format!(
                "the certificate in /etc/smtp2oauth/cert.pem expires on {} (in 12 days): renew it before then",
                local(soon)
            )))
        );
        assert_eq!(expiry(path, now + 31 * day, now), None);
    }

    /// Each account certificate is reported under the setting that names it, as the console
    /// lists it (one list for both).
    #[test]
    fn account_certificates_are_named_by_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        for f in ["app.pem", "app.key", "host.pem", "host.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let toml = format!(
            r#"
[[listeners]]
address = "127.0.0.1:2525"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
certificate_file = "{d}/app.pem"
private_key_file = "{d}/app.key"
[[accounts]]
name = "nas"
mailbox = "nas@contoso.com"
route = "smarthost"
smarthost_host = "contoso-com.mail.protection.outlook.com"
tls_client_cert_file = "{d}/host.pem"
tls_client_key_file = "{d}/host.key"
"#
        );
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = smtp2oauth_config::load(Some(&path)).unwrap();
        let files = certificate_files(&loaded);
        assert_eq!(
            files,
            [
                (
                    "accounts.0.certificate_file".to_string(),
                    dir.path().join("app.pem")
                ),
                (
                    "accounts.1.tls_client_cert_file".to_string(),
                    dir.path().join("host.pem")
                ),
            ]
        );
    }

    fn legacy_listener() -> Config {
        smtp2oauth_config::parse_str(
            "[[listeners]]\naddress = \"127.0.0.1:2525\"\ntls = \"starttls\"\ntls_profile = \"legacy\"\n",
            Vec::new(),
        )
        .unwrap()
    }

    const LEGACY_PROBLEM: &str = "`listeners.0.tls_profile`: \"legacy\" (TLS 1.0 and 1.1 through OpenSSL) needs a build with the `legacy-tls` feature, and this one has rustls only: use the release binaries, the .deb or the container image, which have it, or build with `cargo build --release -p smtp2oauth --features legacy-tls` (docs/deploy.md)";

    #[test]
    fn a_legacy_listener_needs_the_legacy_build() {
        let cfg = legacy_listener();
        let mut p = Vec::new();
        legacy_checks(&cfg, true, &mut p);
        assert!(p.is_empty(), "{p:?}");
        legacy_checks(&cfg, false, &mut p);
        let shown: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, [LEGACY_PROBLEM]);
    }

    /// This build's own answer: CI builds with every feature, so this runs in builds without
    /// (`cargo test -p smtp2oauth --bins`).
    #[cfg(not(feature = "legacy-tls"))]
    #[test]
    fn this_build_without_openssl_refuses_a_legacy_listener() {
        let mut p = Vec::new();
        legacy_checks(&legacy_listener(), cfg!(feature = "legacy-tls"), &mut p);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].to_string(), LEGACY_PROBLEM);
    }
}
