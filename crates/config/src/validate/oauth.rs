//! The token keys of an account whose routes need OAuth tokens: the provider, the app, its
//! credential and the flow, turned into an [`OAuth`].

use super::readable;
use crate::{
    Account, CertificatePair, Config, Credential, Flow, FlowSpec, OAuth, Problem, Provider, Route,
};
use std::net::SocketAddr;

/// Checks the token keys and builds the account's [`OAuth`]; `None` when a problem was found.
pub(super) fn oauth(
    c: &Config,
    a: &Account,
    key: &str,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) -> Option<OAuth> {
    let before = p.len();
    if a.provider == Provider::Google && a.flow == Flow::ClientCredentials {
        p.push(Problem::new(
            format!("{key}.flow"),
            "Google does not offer the client-credentials flow for Gmail SMTP: use flow = \"authorization_code\" (a person signs in once)",
        ));
    }
    let sign_in = match a.flow {
        Flow::ClientCredentials => None,
        Flow::DeviceCode => device_code(a, key, p),
        Flow::AuthorizationCode => authorization_code(c, a, key, p, w),
    };
    if a.provider == Provider::Google && a.routes().contains(&Route::Graph) {
        p.push(Problem::new(
            format!("{key}.provider"),
            "Google has no Graph route: use route = \"smtp\" (smtp.gmail.com)",
        ));
    }
    app(a, key, p);
    let credential = credential(a, key, p);
    if p.len() > before {
        return None;
    }
    let credential = credential?;
    let flow = match (a.flow, sign_in) {
        (Flow::ClientCredentials, _) => FlowSpec::ClientCredentials {
            credential: credential?,
        },
        (Flow::DeviceCode, Some(SignIn::DeviceCode { device_code_url })) => FlowSpec::DeviceCode {
            credential,
            device_code_url,
        },
        (
            Flow::AuthorizationCode,
            Some(SignIn::AuthorizationCode {
                authorize_url,
                redirect_uri,
            }),
        ) => FlowSpec::AuthorizationCode {
            credential,
            authorize_url,
            redirect_uri,
        },
        _ => return None,
    };
    Some(OAuth {
        provider: a.provider,
        client_id: a.client_id.clone()?,
        token_url: a.token_url()?,
        flow,
    })
}

/// The endpoints of a delegated flow, once checked.
enum SignIn {
    DeviceCode {
        device_code_url: String,
    },
    AuthorizationCode {
        authorize_url: String,
        redirect_uri: String,
    },
}

/// True when the account has a client credential of its own.
fn has_credential(a: &Account) -> bool {
    a.client_secret.is_some() || a.client_secret_file.is_some() || a.certificate_file.is_some()
}

fn device_code(a: &Account, key: &str, p: &mut Vec<Problem>) -> Option<SignIn> {
    if a.provider == Provider::Google {
        p.push(Problem::new(
            format!("{key}.flow"),
            "Google's device flow does not allow the Gmail scope (https://mail.google.com/): use flow = \"authorization_code\"",
        ));
    }
    if a.provider == Provider::Microsoft && has_credential(a) {
        p.push(Problem::new(
            format!("{key}.client_secret"),
            "flow = \"device_code\" signs in as a public client, and Microsoft refuses a client secret or certificate from one (AADSTS700025): remove it (and turn on \"Allow public client flows\" for the app)",
        ));
    }
    let url = a.device_code_url();
    if url.is_none() {
        p.push(Problem::new(
            format!("{key}.device_code_url"),
            "is required for flow = \"device_code\" with provider = \"generic\"",
        ));
    }
    Some(SignIn::DeviceCode {
        device_code_url: url?,
    })
}

fn authorization_code(
    c: &Config,
    a: &Account,
    key: &str,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) -> Option<SignIn> {
    if a.provider == Provider::Google && !has_credential(a) {
        p.push(Problem::new(
            format!("{key}.client_secret"),
            "Google requires the OAuth client's secret: set client_secret or client_secret_file",
        ));
    }
    let authorize_url = a.authorize_url();
    if authorize_url.is_none() {
        p.push(Problem::new(
            format!("{key}.authorize_url"),
            "is required for flow = \"authorization_code\" with provider = \"generic\"",
        ));
    }
    let redirect_uri = redirect_uri(c, a, key, p, w);
    Some(SignIn::AuthorizationCode {
        authorize_url: authorize_url?,
        redirect_uri: redirect_uri?,
    })
}

/// The redirect URI must be one the browser can come back to; `None` when it cannot.
fn redirect_uri(
    c: &Config,
    a: &Account,
    key: &str,
    p: &mut Vec<Problem>,
    w: &mut Vec<Problem>,
) -> Option<String> {
    let uri = a.redirect_uri();
    let after_scheme = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"));
    let (authority, path) = match after_scheme {
        Some(rest) => rest.split_at(rest.find('/').unwrap_or(rest.len())),
        None => ("", ""),
    };
    if authority.is_empty() || uri.contains(['#', '?', ' ']) {
        p.push(Problem::new(
            format!("{key}.redirect_uri"),
            format!("`{uri}` is not an http(s) URL without query or fragment, such as http://localhost:8025/oauth/callback"),
        ));
        return None;
    }
    if path.is_empty() || path == "/" {
        p.push(Problem::new(
            format!("{key}.redirect_uri"),
            format!("`{uri}` needs a path for the callback, such as /oauth/callback"),
        ));
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(host, _)| host);
    let local = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    if uri.starts_with("http://") && !local && a.provider != Provider::Generic {
        w.push(Problem::new(
            format!("{key}.redirect_uri"),
            format!("`{uri}` uses http:// with a host other than localhost: Microsoft and Google accept plain http only for localhost; open the accounts page through an SSH tunnel to use http://localhost, or serve it over https"),
        ));
    }
    if c.admin.listen.is_empty() {
        w.push(Problem::new(
            format!("{key}.flow"),
            "[admin] listen is empty, so there is no accounts page to sign in from: use `smtp2oauth account login` on this machine",
        ));
    } else if local && let Ok(admin) = c.admin.listen.parse::<SocketAddr>() {
        let port = authority
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .unwrap_or(if uri.starts_with("https://") { 443 } else { 80 });
        if admin.port() != 0 && admin.port() != port {
            w.push(Problem::new(
                format!("{key}.redirect_uri"),
                format!("`{uri}` points at port {port} but the accounts page listens on {}: the browser would come back where nothing answers (unless a proxy forwards it)", c.admin.listen),
            ));
        }
    }
    Some(uri)
}

/// `client_id`, and where the token endpoint is.
fn app(a: &Account, key: &str, p: &mut Vec<Problem>) {
    if let Some(t) = a.tenant.as_deref().filter(|t| !t.is_empty())
        && let Err(why) = tenant_problem(t)
    {
        p.push(Problem::new(format!("{key}.tenant"), why));
    }
    match a.client_id.as_deref() {
        None | Some("") => p.push(Problem::new(
            format!("{key}.client_id"),
            "is required (the Application (client) ID from Entra ID)",
        )),
        Some(id) if a.provider == Provider::Microsoft && !is_guid(id) => p.push(Problem::new(
            format!("{key}.client_id"),
            format!(
                "`{}` is not an Application (client) ID: Entra ID shows it on the app registration's Overview page as a GUID such as 11111111-2222-3333-4444-555555555555",
                id.escape_debug()
            ),
        )),
        Some(_) => {}
    }
    if a.token_url.is_none()
        && a.provider == Provider::Microsoft
        && a.tenant.as_deref().is_none_or(str::is_empty)
    {
        p.push(Problem::new(
            format!("{key}.tenant"),
            "is required (tenant ID or domain, e.g. contoso.onmicrosoft.com), or set token_url",
        ));
    }
    if a.token_url.is_none() && a.provider == Provider::Generic {
        p.push(Problem::new(
            format!("{key}.token_url"),
            "is required with provider = \"generic\"",
        ));
    }
}

/// `8-4-4-4-12` hexadecimal digits, as Entra ID writes IDs.
fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why `t` is not a tenant: Entra ID takes a tenant ID (a GUID), one of the tenant's domains,
/// or `common`, `organizations`, `consumers` for apps of several tenants.
fn tenant_problem(t: &str) -> Result<(), String> {
    if let Some((_, rest)) = t.split_once("://") {
        let inside = rest.split('/').nth(1).filter(|s| !s.is_empty());
        let example = inside.map(|s| format!(" (`{s}`)")).unwrap_or_default();
        return Err(format!(
            "`{t}` is a URL: put only the domain or tenant ID here{example}; the URL goes in `authority`"
        ));
    }
    let domain = t.contains('.') && t.split('.').all(super::dns_label_ok);
    if is_guid(t) || domain || matches!(t, "common" | "organizations" | "consumers") {
        return Ok(());
    }
    Err(format!(
        "`{}` is neither a tenant ID (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47) nor a domain of the tenant (such as contoso.onmicrosoft.com)",
        t.escape_debug()
    ))
}

/// The client credential: `Some(None)` for a public client (delegated flows only), `None`
/// when a problem was found.
fn credential(a: &Account, key: &str, p: &mut Vec<Problem>) -> Option<Option<Credential>> {
    let before = p.len();
    let secrets = a.client_secret.is_some() as u8 + a.client_secret_file.is_some() as u8;
    let cert = a.certificate_file.is_some() || a.private_key_file.is_some();
    match (secrets, cert) {
        // Delegated flows may use a public client (no credential at all).
        (0, false) if a.is_delegated() => {}
        (0, false) => p.push(Problem::new(
            format!("{key}.client_secret"),
            "a credential is required: client_secret, client_secret_file, or certificate_file + private_key_file",
        )),
        (2, _) => p.push(Problem::new(
            format!("{key}.client_secret"),
            "set client_secret or client_secret_file, not both",
        )),
        (1, true) => p.push(Problem::new(
            format!("{key}.certificate_file"),
            "set either a client secret or a certificate, not both",
        )),
        _ => {}
    }
    let secret = match a.client_secret() {
        Ok(s) => s,
        Err(e) => {
            p.push(Problem::new(format!("{key}.client_secret_file"), e));
            None
        }
    };
    let pair = if cert { certificate(a, key, p) } else { None };
    if p.len() > before {
        return None;
    }
    Some(match (secret, pair) {
        (Some(s), None) => Some(Credential::Secret(s)),
        (None, Some(pair)) => Some(Credential::Certificate {
            pair,
            alg: a.jwt_alg,
        }),
        _ => None,
    })
}

fn certificate(a: &Account, key: &str, p: &mut Vec<Problem>) -> Option<CertificatePair> {
    match (&a.certificate_file, &a.private_key_file) {
        (Some(c), Some(k)) => {
            readable(c, &format!("{key}.certificate_file"), p);
            readable(k, &format!("{key}.private_key_file"), p);
            Some(CertificatePair {
                cert_file: c.clone(),
                key_file: k.clone(),
            })
        }
        (None, _) => {
            p.push(Problem::new(
                format!("{key}.certificate_file"),
                "is needed with private_key_file",
            ));
            None
        }
        (_, None) => {
            p.push(Problem::new(
                format!("{key}.private_key_file"),
                "is needed with certificate_file",
            ));
            None
        }
    }
}
