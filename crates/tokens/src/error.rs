//! Turning whatever the token endpoint (or the network) did into a decision the rest of the relay
//! can act on: retry later, tell the admin to fix the configuration, or ask a person to sign in.
//!
//! Microsoft puts the useful part in an `AADSTS` number, sometimes only inside the description
//! text, so the classifier reads both and keeps the number; [`TokenError::advice`] turns the
//! common ones into plain words for the admin.

use std::fmt;
use std::time::Duration;

/// What a caller should do about a failed token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenErrorKind {
    /// Network error, timeout, HTTP 5xx, 429, unparseable response: retry later; never discards
    /// a cached token.
    Transient,
    /// The configuration is wrong and retrying will not help until the admin fixes it:
    /// invalid_client (bad/expired secret, e.g. AADSTS7000215, 7000222), unauthorized_client,
    /// invalid_scope, invalid_request, unsupported_grant_type, tenant not found (AADSTS90002),
    /// app not found (AADSTS700016). Also: a token URL that redirects or does not exist, and a
    /// TLS certificate this machine does not trust (an inspecting proxy's CA not configured).
    Configuration,
    /// A person must sign in again (invalid_grant: AADSTS700082, 70043, 50173, 54005 ...).
    SignInRequired,
}

/// A failed token request, classified. `Display` is one human line and never contains secrets,
/// assertions or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TokenError {
    /// What kind of failure, which decides what the relay does next.
    pub kind: TokenErrorKind,
    /// The OAuth `error` code, e.g. `invalid_client`.
    pub oauth_error: Option<String>,
    /// Microsoft's AADSTS number, from `error_codes` or the description.
    pub aadsts: Option<u32>,
    /// The token endpoint's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// Sanitised, single-line explanation (the endpoint's `error_description` without the
    /// AADSTS prefix, or what went wrong locally).
    pub description: String,
    /// From the `Retry-After` header (seconds form).
    pub retry_after: Option<Duration>,
    /// The grant answered without asking the endpoint (nobody has signed in, or the sign-in
    /// was revoked and nobody signed in again): not a token request, so not counted as one.
    pub not_sent: bool,
}

impl TokenError {
    /// An error that happened before or around the HTTP exchange (no status, no OAuth code).
    pub fn new(kind: TokenErrorKind, description: impl Into<String>) -> Self {
        Self {
            kind,
            oauth_error: None,
            aadsts: None,
            http_status: None,
            description: description.into(),
            retry_after: None,
            not_sent: false,
        }
    }

    /// The grant cannot ask the endpoint at all until a person acts.
    pub fn not_sent(kind: TokenErrorKind, description: impl Into<String>) -> Self {
        Self {
            not_sent: true,
            ..Self::new(kind, description)
        }
    }

    /// A failure that may pass by itself (network, 5xx): retry later.
    pub fn transient(description: impl Into<String>) -> Self {
        Self::new(TokenErrorKind::Transient, description)
    }

    /// A failure of the configuration (wrong id, secret, endpoint): the admin must act.
    pub fn configuration(description: impl Into<String>) -> Self {
        Self::new(TokenErrorKind::Configuration, description)
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == TokenErrorKind::Transient
    }

    /// A plain-words hint for known AADSTS codes and OAuth errors, for logs and the status page.
    pub fn advice(&self) -> Option<&'static str> {
        if let Some(advice) = self.aadsts.and_then(aadsts_advice) {
            return Some(advice);
        }
        if let Some(advice) = self.oauth_error.as_deref().and_then(oauth_error_advice) {
            return Some(advice);
        }
        match self.http_status {
            Some(429) => Some(
                "Microsoft is throttling token requests for this app; requests will be retried \
                 later",
            ),
            Some(300..=399) => Some(
                "the token URL redirects elsewhere; use \
                 https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
            ),
            Some(404 | 405 | 410) => Some(
                "nothing answers at the token URL; check it (including the tenant): \
                 https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
            ),
            _ => None,
        }
    }

    fn headline(&self) -> &'static str {
        match self.oauth_error.as_deref() {
            Some("invalid_client") => "token endpoint refused the client credentials",
            Some("unauthorized_client") => "token endpoint refused this client application",
            Some("invalid_scope") => "token endpoint refused the requested scope",
            Some("invalid_grant") => "token endpoint refused the grant; a new sign-in is needed",
            Some("invalid_request") => "token endpoint refused the request",
            Some("unsupported_grant_type") => "token endpoint does not allow this grant type",
            Some(_) => "token endpoint returned an error",
            None => match self.http_status {
                Some(200..=299) => "token endpoint sent an unusable response",
                Some(_) => "token endpoint answered with an error",
                None if self.kind == TokenErrorKind::Transient => {
                    "could not get an answer from the token endpoint"
                }
                None => "could not make the token request",
            },
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.headline())?;
        let mut codes = Vec::new();
        if let Some(error) = &self.oauth_error {
            codes.push(error.clone());
        }
        if let Some(code) = self.aadsts {
            codes.push(format!("AADSTS{code}"));
        }
        if self.oauth_error.is_none()
            && let Some(status) = self.http_status
        {
            codes.push(format!("HTTP {status}"));
        }
        if !codes.is_empty() {
            write!(f, " ({})", codes.join(", "))?;
        }
        if !self.description.is_empty() {
            write!(f, ": {}", self.description)?;
        }
        if let Some(retry_after) = self.retry_after {
            write!(f, " (retry after {} s)", retry_after.as_secs())?;
        }
        Ok(())
    }
}

fn aadsts_advice(code: u32) -> Option<&'static str> {
    Some(match code {
        7000215 => {
            "the client secret is wrong or expired: create a new one in Entra ID > App \
             registrations > Certificates & secrets and use its Value, not its Secret ID"
        }
        7000222 => {
            "the client secret has expired: create a new one in Entra ID > App registrations > \
             Certificates & secrets and put its Value in the configuration"
        }
        700016 => {
            "no application with this client ID exists in this tenant: check the client ID \
             (Application ID) and the tenant in the token URL"
        }
        90002 => {
            "the tenant was not found: check the tenant ID or domain in the token URL (and the \
             cloud: login.microsoftonline.com, .us or .cn)"
        }
        700027 => {
            "the client assertion was not accepted: upload this certificate (the public \
             certificate, not the key) under Certificates & secrets of the app registration, \
             check that it has not expired and that this machine's clock is right"
        }
        700024 => {
            "the client assertion is outside its valid time range: check this machine's clock \
             (NTP)"
        }
        7000112 => "the application is disabled in Entra ID: enable it or use another app",
        70011 | 1002012 => {
            "the scope is invalid: for app-only SMTP use https://outlook.office365.com/.default; \
             the client-credentials flow needs a scope ending in /.default"
        }
        500011 => {
            "the API named in the scope is not available in this tenant: check the scope host \
             (outlook.office365.com) and that admin consent was granted for its permission"
        }
        65001 => {
            "consent has not been granted: in Entra ID > App registrations > API permissions, \
             grant admin consent (or have the user sign in and consent)"
        }
        700025 => {
            "this app is a public client, so no client secret may be sent: remove the secret \
             from the configuration or turn off \"Allow public client flows\""
        }
        700082 => "the refresh token expired after a long period of inactivity: sign in again",
        70043 => "Conditional Access sign-in frequency requires a fresh sign-in: sign in again",
        50173 => "the sign-in was revoked (e.g. password change or admin action): sign in again",
        54005 => {
            "the authorization code had already been used: start the sign-in again (this \
             should not happen; please report it)"
        }
        50011 => {
            "the redirect URI does not match one registered for the app: in Entra ID > App \
             registrations > Authentication, add the account's redirect_uri exactly (scheme, \
             host, port, path and trailing slash must match)"
        }
        70008 => "the authorization code expired before it was redeemed: sign in again",
        70000 => "the grant was not accepted (code or refresh token invalid): sign in again",
        7000218 => {
            "the app expects a client secret or certificate: for device code, turn on \
             \"Allow public client flows\" in Entra ID > App registrations > Authentication; \
             for authorization code with a Web redirect URI, configure client_secret"
        }
        50076 | 50079 => {
            "multi-factor authentication is required for this user: sign in again (the sign-in \
             page will ask for it)"
        }
        50126 => "the user name or password was wrong: sign in again",
        65004 => "the user declined to consent to the app's permissions: sign in again and accept",
        _ => return None,
    })
}

fn oauth_error_advice(error: &str) -> Option<&'static str> {
    Some(match error {
        "invalid_client" => {
            "the token endpoint rejected the app's credentials: check the client ID and the \
             client secret Value or certificate"
        }
        "unauthorized_client" => {
            "the app may not use this flow, or it is not registered in this tenant: check the \
             client ID and the tenant"
        }
        "invalid_scope" => {
            "the scope is invalid: for app-only SMTP use https://outlook.office365.com/.default"
        }
        "invalid_grant" | "interaction_required" | "consent_required" | "login_required" => {
            "the mailbox's sign-in is no longer valid: sign in again"
        }
        "expired_token" => "the sign-in code expired before it was used: start the sign-in again",
        "authorization_declined" | "access_denied" => {
            "the person signing in declined: start the sign-in again and accept"
        }
        "bad_verification_code" => "the device code was not recognised: start the sign-in again",
        "unsupported_grant_type" => "the app registration does not allow this grant type",
        _ => return None,
    })
}

/// Longest description we keep for non-JSON bodies: enough to recognise a proxy's or load
/// balancer's page, not enough to dump it into the log.
const MAX_SNIPPET: usize = 200;
/// Longest OAuth `error_description` we keep (Microsoft's first line is often ~250 chars).
const MAX_DESCRIPTION: usize = 500;
/// Longest Retry-After we honour when parsing; beyond a day it is surely nonsense.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Classifies a non-success HTTP answer from the token endpoint. `scrub` lists secret values
/// that must not survive into the description even if an endpoint echoes them.
pub(crate) fn classify_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    scrub: &[&str],
) -> TokenError {
    let retry_after = retry_after.and_then(parse_retry_after);
    let mut error = match parse_oauth_error(body) {
        Some(oauth) => {
            let kind = oauth_kind(status, &oauth.error, oauth.aadsts);
            TokenError {
                kind,
                oauth_error: Some(oauth.error),
                aadsts: oauth.aadsts,
                http_status: Some(status),
                description: oauth.description,
                retry_after,
                not_sent: false,
            }
        }
        None => TokenError {
            kind: status_kind(status),
            oauth_error: None,
            aadsts: None,
            http_status: Some(status),
            description: describe_foreign_body(status, body),
            retry_after,
            not_sent: false,
        },
    };
    error.description = scrub_secrets(&error.description, scrub);
    error
}

fn status_kind(status: u16) -> TokenErrorKind {
    match status {
        // A redirect (we do not follow them, so the secret never goes elsewhere) or a missing
        // endpoint means the token URL is wrong; waiting will not fix it.
        300..=399 | 404 | 405 | 410 => TokenErrorKind::Configuration,
        // Anything else without an OAuth error body is a proxy, a load balancer or an outage
        // talking, not the identity platform deciding about us.
        _ => TokenErrorKind::Transient,
    }
}

fn oauth_kind(status: u16, error: &str, aadsts: Option<u32>) -> TokenErrorKind {
    // Overload and server trouble stay transient whatever the body says, so they can never
    // make the cache discard a token or an admin chase a non-problem.
    if status == 408 || status == 429 || status >= 500 {
        return TokenErrorKind::Transient;
    }
    // AADSTS90033: "A transient error has occurred"; AADSTS50196: client request loop
    // (throttling). Both come as 4xx with an ordinary OAuth error code.
    if matches!(aadsts, Some(90033 | 50196)) {
        return TokenErrorKind::Transient;
    }
    match error {
        "invalid_client"
        | "unauthorized_client"
        | "invalid_scope"
        | "invalid_request"
        | "unsupported_grant_type"
        | "unsupported_response_type"
        | "invalid_resource" => TokenErrorKind::Configuration,
        "invalid_grant"
        | "interaction_required"
        | "consent_required"
        | "login_required"
        | "expired_token"
        | "authorization_declined"
        | "access_denied"
        | "bad_verification_code" => TokenErrorKind::SignInRequired,
        "temporarily_unavailable" | "server_error" | "authorization_pending" | "slow_down" => {
            TokenErrorKind::Transient
        }
        // An error code we do not know, sent deliberately as a 4xx: the endpoint decided
        // against this request, and repeating it unchanged is unlikely to help.
        _ => TokenErrorKind::Configuration,
    }
}

struct OAuthErrorBody {
    error: String,
    aadsts: Option<u32>,
    description: String,
}

/// The standard OAuth error JSON, or None if the body is not one.
fn parse_oauth_error(body: &[u8]) -> Option<OAuthErrorBody> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?.trim();
    if error.is_empty() {
        return None;
    }
    let raw_description = value
        .get("error_description")
        .and_then(|d| d.as_str())
        .unwrap_or_default();
    let aadsts = value
        .get("error_codes")
        .and_then(|codes| codes.as_array())
        .and_then(|codes| codes.iter().find_map(|code| code.as_u64()))
        .and_then(|code| u32::try_from(code).ok())
        .or_else(|| aadsts_in_text(raw_description));
    let mut description = sanitise(
        &strip_aadsts_prefix(first_line(raw_description)),
        MAX_DESCRIPTION,
    );
    // Microsoft support asks for these; they identify the request, not the app's secrets.
    let trace = value.get("trace_id").and_then(|v| v.as_str());
    let correlation = value.get("correlation_id").and_then(|v| v.as_str());
    if let (Some(trace), Some(correlation)) = (trace, correlation) {
        if !description.is_empty() {
            description.push(' ');
        }
        description.push_str(&sanitise(
            &format!("[trace ID {trace}, correlation ID {correlation}]"),
            120,
        ));
    }
    Some(OAuthErrorBody {
        error: sanitise(error, 64),
        aadsts,
        description,
    })
}

fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default()
}

/// The first `AADSTS<digits>` in free text.
fn aadsts_in_text(text: &str) -> Option<u32> {
    let start = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// "AADSTS7000215: Invalid client secret..." -> "Invalid client secret...": the number is
/// already shown beside the OAuth error code.
fn strip_aadsts_prefix(line: &str) -> String {
    if let Some(rest) = line.strip_prefix("AADSTS") {
        let after_digits = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if after_digits.len() < rest.len()
            && let Some(text) = after_digits.strip_prefix(':')
        {
            return text.trim().to_owned();
        }
    }
    line.to_owned()
}

/// A short description of a body that is not an OAuth error: an HTML error page, a proxy's text.
fn describe_foreign_body(status: u16, body: &[u8]) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("unexpected status");
    let text = String::from_utf8_lossy(body);
    let snippet = if text.trim_start().starts_with('<') {
        html_text(&text)
    } else {
        text.into_owned()
    };
    let snippet = sanitise(&snippet, MAX_SNIPPET);
    if snippet.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}; body: {snippet}")
    }
}

/// The page's `<title>`, or its text with the tags removed: the part a person would read.
fn html_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    if let Some(start) = lower.find("<title>")
        && let Some(len) = lower[start..].find("</title>")
    {
        let title = &html[start + "<title>".len()..start + len];
        if !title.trim().is_empty() {
            return title.to_owned();
        }
    }
    let mut text = String::with_capacity(html.len().min(4096));
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
        if text.len() > 4096 {
            break;
        }
    }
    text
}

/// One line of printable text, whitespace collapsed, at most `max` characters.
pub(crate) fn sanitise(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        for (i, c) in std::iter::once(' ').chain(word.chars()).enumerate() {
            if i == 0 && out.is_empty() {
                continue;
            }
            if count == max {
                out.push('…');
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

pub(crate) fn scrub_secrets(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        // Very short values would blank out ordinary words; real secrets are long.
        if secret.len() >= 8 {
            text = text.replace(secret, "[redacted]");
        }
    }
    text
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    // Only the delay-seconds form; Microsoft sends seconds, and an HTTP-date would need a date
    // parser for a header that only fine-tunes the cooldown.
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Classifies a failure to get any HTTP answer at all.
pub(crate) fn classify_transport(error: &reqwest::Error) -> TokenError {
    if error.is_builder() {
        return TokenError::configuration(format!(
            "the token URL is not usable: {}",
            error_chain(error)
        ));
    }
    if let Some(tls) = find_tls_error(error)
        && matches!(
            tls,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    {
        // Retrying cannot fix an untrusted certificate; typically an inspecting proxy whose CA
        // the relay has not been given.
        return TokenError::configuration(format!(
            "the token endpoint's TLS certificate is not trusted ({tls}); if outbound HTTPS \
             passes through an inspecting proxy, configure its CA certificate as the extra CA \
             file"
        ));
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    TokenError::transient(format!("{what}: {}", error_chain(error)))
}

/// The rustls error somewhere in the cause chain. `io::Error::source` skips the error it wraps
/// (and hyper nests io errors two deep), so wrapped errors are unpacked by hand.
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => cause.source(),
        };
    }
    None
}

/// An error and its causes on one line: reqwest's top-level message alone ("error sending
/// request") hides the useful part ("Connection refused").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    sanitise(&parts.join(": "), MAX_DESCRIPTION)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_7000215: &str = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '00000000-0000-0000-0000-000000000001'.\r\nTrace ID: 0ab1\r\nCorrelation ID: 9cd2\r\nTimestamp: 2025-01-01 00:00:00Z","error_codes":[7000215],"timestamp":"2025-01-01 00:00:00Z","trace_id":"0ab1","correlation_id":"9cd2","error_uri":"https://login.microsoftonline.com/error?code=7000215"}"#;

    struct Case {
        name: &'static str,
        status: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
        kind: TokenErrorKind,
        oauth_error: Option<&'static str>,
        aadsts: Option<u32>,
        retry: Option<u64>,
        description_contains: &'static str,
    }

    fn case(
        name: &'static str,
        status: u16,
        body: &'static str,
        kind: TokenErrorKind,
        oauth_error: Option<&'static str>,
        aadsts: Option<u32>,
        description_contains: &'static str,
    ) -> Case {
        Case {
            name,
            status,
            retry_after: None,
            body,
            kind,
            oauth_error,
            aadsts,
            retry: None,
            description_contains,
        }
    }

    #[test]
    fn classifier_table() {
        use TokenErrorKind::*;
        let mut cases = vec![
            case(
                "bad secret",
                401,
                SECRET_7000215,
                Configuration,
                Some("invalid_client"),
                Some(7000215),
                "Invalid client secret provided.",
            ),
            case(
                "expired secret, code only in text",
                401,
                r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app 'x' are expired."}"#,
                Configuration,
                Some("invalid_client"),
                Some(7000222),
                "The provided client secret keys",
            ),
            case(
                "tenant not found",
                400,
                r#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'contoso.example' not found.","error_codes":[90002]}"#,
                Configuration,
                Some("invalid_request"),
                Some(90002),
                "Tenant 'contoso.example' not found.",
            ),
            case(
                "app not found",
                400,
                r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier 'abc' was not found in the directory 'Contoso'.","error_codes":[700016]}"#,
                Configuration,
                Some("unauthorized_client"),
                Some(700016),
                "Application with identifier",
            ),
            case(
                "bad scope",
                400,
                r#"{"error":"invalid_scope","error_description":"AADSTS1002012: The provided value for scope openid is not valid.","error_codes":[1002012]}"#,
                Configuration,
                Some("invalid_scope"),
                Some(1002012),
                "scope openid",
            ),
            case(
                "unsupported grant",
                400,
                r#"{"error":"unsupported_grant_type","error_description":"AADSTS70003: The app requested an unsupported grant type."}"#,
                Configuration,
                Some("unsupported_grant_type"),
                Some(70003),
                "unsupported grant type",
            ),
            case(
                "refresh token expired",
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#,
                SignInRequired,
                Some("invalid_grant"),
                Some(700082),
                "expired due to inactivity",
            ),
            case(
                "sign-in frequency",
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.","error_codes":[70043]}"#,
                SignInRequired,
                Some("invalid_grant"),
                Some(70043),
                "sign-in frequency",
            ),
            case(
                "revoked",
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired due to it being revoked.","error_codes":[50173]}"#,
                SignInRequired,
                Some("invalid_grant"),
                Some(50173),
                "revoked",
            ),
            case(
                "code redeemed",
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS54005: OAuth2 Authorization code was already redeemed.","error_codes":[54005]}"#,
                SignInRequired,
                Some("invalid_grant"),
                Some(54005),
                "already redeemed",
            ),
            case(
                "server error json",
                500,
                r#"{"error":"server_error","error_description":"AADSTS50000: There was an error issuing a token."}"#,
                Transient,
                Some("server_error"),
                Some(50000),
                "error issuing a token",
            ),
            case(
                "temporarily unavailable on 400",
                400,
                r#"{"error":"temporarily_unavailable","error_description":"try later"}"#,
                Transient,
                Some("temporarily_unavailable"),
                None,
                "try later",
            ),
            case(
                "transient AADSTS on 400",
                400,
                r#"{"error":"invalid_request","error_description":"AADSTS90033: A transient error has occurred. Please try again."}"#,
                Transient,
                Some("invalid_request"),
                Some(90033),
                "transient error",
            ),
            case(
                "5xx beats a config-looking code",
                503,
                r#"{"error":"invalid_client","error_description":"weird"}"#,
                Transient,
                Some("invalid_client"),
                None,
                "weird",
            ),
            case(
                "unknown oauth error on 400",
                400,
                r#"{"error":"something_new","error_description":"?"}"#,
                Configuration,
                Some("something_new"),
                None,
                "?",
            ),
            case(
                "html 503",
                503,
                "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body><h1>The service is down</h1></body></html>",
                Transient,
                None,
                None,
                "Service Unavailable; body: Service Unavailable",
            ),
            case(
                "html 502 without title",
                502,
                "<html><body><h1>Bad gateway</h1><p>upstream   broke</p></body></html>",
                Transient,
                None,
                None,
                "Bad gateway upstream broke",
            ),
            case(
                "empty 500",
                500,
                "",
                Transient,
                None,
                None,
                "Internal Server Error",
            ),
            case(
                "json without error field",
                500,
                r#"{"message":"oops"}"#,
                Transient,
                None,
                None,
                "oops",
            ),
            case(
                "plain text 400 from a proxy",
                400,
                "Bad Request",
                Transient,
                None,
                None,
                "Bad Request",
            ),
            case(
                "404 wrong token url",
                404,
                "<html><title>Not Found</title></html>",
                Configuration,
                None,
                None,
                "Not Found",
            ),
            case("redirect", 302, "", Configuration, None, None, "Found"),
        ];
        cases.push(Case {
            name: "throttled with Retry-After",
            status: 429,
            retry_after: Some(" 17 "),
            body: r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: The server terminated an operation because it encountered a client request loop."}"#,
            kind: Transient,
            oauth_error: Some("temporarily_unavailable"),
            aadsts: Some(50196),
            retry: Some(17),
            description_contains: "client request loop",
        });
        cases.push(Case {
            name: "429 with date Retry-After (ignored)",
            status: 429,
            retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            body: "",
            kind: Transient,
            oauth_error: None,
            aadsts: None,
            retry: None,
            description_contains: "Too Many Requests",
        });

        for case in cases {
            let error = classify_response(case.status, case.retry_after, case.body.as_bytes(), &[]);
            assert_eq!(error.kind, case.kind, "{}: {error}", case.name);
            assert_eq!(
                error.oauth_error.as_deref(),
                case.oauth_error,
                "{}",
                case.name
            );
            assert_eq!(error.aadsts, case.aadsts, "{}", case.name);
            assert_eq!(error.http_status, Some(case.status), "{}", case.name);
            assert_eq!(
                error.retry_after,
                case.retry.map(Duration::from_secs),
                "{}",
                case.name
            );
            assert!(
                error.description.contains(case.description_contains),
                "{}: {:?}",
                case.name,
                error.description
            );
            let line = error.to_string();
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "{}: {line:?}",
                case.name
            );
        }
    }

    #[test]
    fn display_matches_the_documented_shape() {
        let error = classify_response(401, None, SECRET_7000215.as_bytes(), &[]);
        let line = error.to_string();
        assert!(
            line.starts_with(
                "token endpoint refused the client credentials (invalid_client, AADSTS7000215): \
                 Invalid client secret provided."
            ),
            "{line}"
        );
        assert!(
            line.contains("[trace ID 0ab1, correlation ID 9cd2]"),
            "{line}"
        );
        assert!(!line.contains("Timestamp"), "{line}");
        assert_eq!(
            error.advice(),
            Some(
                "the client secret is wrong or expired: create a new one in Entra ID > App \
                 registrations > Certificates & secrets and use its Value, not its Secret ID"
            )
        );
    }

    #[test]
    fn advice_falls_back_from_code_to_error_to_status() {
        let mut error = TokenError::configuration("x");
        assert_eq!(error.advice(), None);
        error.oauth_error = Some("invalid_scope".into());
        assert!(error.advice().unwrap().contains(".default"));
        error.aadsts = Some(90002);
        assert!(error.advice().unwrap().contains("tenant"));
        let throttled = classify_response(429, None, b"", &[]);
        assert!(throttled.advice().unwrap().contains("throttling"));
    }

    #[test]
    fn huge_html_bodies_are_cut_short() {
        let body = format!("<html><body>{}</body></html>", "x".repeat(100_000));
        let error = classify_response(503, None, body.as_bytes(), &[]);
        assert!(
            error.description.chars().count() < 260,
            "{}",
            error.description.len()
        );
        let body = "y".repeat(100_000);
        let error = classify_response(503, None, body.as_bytes(), &[]);
        assert!(error.description.chars().count() < 260);
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: bad secret 'Abc~VerySecretValue123' given"}"#;
        let error = classify_response(401, None, body.as_bytes(), &["Abc~VerySecretValue123"]);
        assert!(!error.to_string().contains("VerySecretValue"), "{error}");
        assert!(error.description.contains("[redacted]"));
    }

    #[test]
    fn sanitise_collapses_and_truncates() {
        assert_eq!(sanitise("  a\r\n\tb   c ", 100), "a b c");
        assert_eq!(sanitise("abcdef", 3), "abc…");
        assert_eq!(sanitise("", 3), "");
        assert_eq!(sanitise("\u{7}bell", 10), "bell");
    }

    #[test]
    fn aadsts_found_in_text() {
        assert_eq!(aadsts_in_text("AADSTS50058: x"), Some(50058));
        assert_eq!(aadsts_in_text("see AADSTS700016."), Some(700016));
        assert_eq!(aadsts_in_text("AADSTS"), None);
        assert_eq!(aadsts_in_text("none"), None);
        assert_eq!(strip_aadsts_prefix("AADSTS123: text"), "text");
        assert_eq!(strip_aadsts_prefix("AADSTS: text"), "AADSTS: text");
    }
}
