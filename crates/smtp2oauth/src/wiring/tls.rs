//! TLS of the listeners: the certificate files (configured, or generated once), one handle per
//! distinct setup.

use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{Config, ListenerTls, TlsProfile};
use smtp2oauth_inbound::{TlsHandle, TlsPolicy};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The certificate and key files for TLS listeners: configured ones, or a self-signed pair
/// generated once into `<store dir>/tls/` (reused on later starts).
fn listener_cert_files(cfg: &Config) -> Result<Option<(PathBuf, PathBuf)>> {
    let needs_tls = cfg.listeners.iter().any(|l| l.tls != ListenerTls::None);
    if !needs_tls {
        return Ok(None);
    }
    if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        return Ok(Some((c.clone(), k.clone())));
    }
    if !cfg.tls.self_signed {
        return Err(anyhow!(
            "a listener uses TLS but [tls] has no cert_file/key_file and self_signed = false"
        ));
    }
    let dir = cfg.store.dir.join("tls");
    let cert = dir.join("self-signed-cert.pem");
    let key = dir.join("self-signed-key.pem");
    if cert.exists() && key.exists() {
        return Ok(Some((cert, key)));
    }
    smtp2oauth_spool::create_dir_durable(&dir, cfg.store.fsync)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let host = cfg.hostname();
    let generated = rcgen::generate_simple_self_signed(vec![host.clone(), "localhost".into()])
        .context("cannot generate a self-signed certificate")?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert, generated.cert.pem().as_bytes())?;
    warn!(
        cert = %cert.display(),
        host = %host,
        "generated a self-signed certificate for STARTTLS and implicit TLS; set [tls] cert_file and key_file to use your own"
    );
    Ok(Some((cert, key)))
}

/// Writes a file readable only by us (mode 0600 on Unix, a private ACL on Windows), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    smtp2oauth_platform::replace_private(path, bytes, true)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Loads each listener's TLS (none for plain listeners). Listeners with the same files and
/// profile share one handle, so a reload is done once per distinct setup.
pub fn listener_tls(cfg: &Config) -> Result<Vec<Option<TlsHandle>>> {
    let files = listener_cert_files(cfg)?;
    let mut handles: Vec<Option<TlsHandle>> = Vec::new();
    for l in &cfg.listeners {
        let Some((cert, key)) = files.as_ref().filter(|_| l.tls != ListenerTls::None) else {
            handles.push(None);
            continue;
        };
        let policy = TlsPolicy {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: l.client_ca_file.clone(),
            profile: l.tls_profile,
        };
        if let Some(h) = handles.iter().flatten().find(|h| *h.policy() == policy) {
            handles.push(Some(h.clone()));
            continue;
        }
        let h = TlsHandle::load(policy)
            .with_context(|| format!("TLS of listener {} ({})", l.label(), l.address))?;
        if l.tls_profile == TlsProfile::Legacy {
            warn!(listener = %l.label(), address = %l.address,
                "legacy TLS profile: TLS 1.0 and 1.1 with old ciphers are accepted on this listener (OpenSSL); keep it on a trusted network segment");
        }
        if let Some(ca) = &l.client_ca_file {
            info!(listener = %l.label(), client_ca = %ca.display(), "client certificates required");
        }
        handles.push(Some(h));
    }
    Ok(handles)
}

pub fn distinct_handles(handles: &[Option<TlsHandle>]) -> Vec<TlsHandle> {
    let mut out: Vec<TlsHandle> = Vec::new();
    for h in handles.iter().flatten() {
        if !out.iter().any(|o| o.policy() == h.policy()) {
            out.push(h.clone());
        }
    }
    out
}
