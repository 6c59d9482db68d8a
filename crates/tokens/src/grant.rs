//! OAuth 2.0 grants: "something that, asked, goes to the token endpoint and comes back with a
//! token response". The cache does not care which flow produced a token; today that is the
//! client-credentials grant, and the refresh-token and device-code flows will implement the same
//! [`Grant`] trait (keeping any rotated refresh token inside themselves).
//!
//! [`post_token_request`] is the shared half of every flow: POST a form, read a bounded body,
//! parse success or classify the failure.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tracing::debug;

use crate::credential::{ClientCredential, JWT_BEARER_ASSERTION_TYPE};
use crate::error::{TokenError, classify_response, classify_transport, sanitise};
use crate::secret::Secret;

/// Lifetime assumed when the endpoint gives none (or zero): Entra ID's usual token lifetime.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// Longest lifetime believed; Entra ID tokens live 60-90 minutes, and an absurd value must not
/// make a token look valid for years (or overflow a clock).
const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 3600);
/// Token responses are a few KB; anything much larger is not one, and is not kept in memory.
const MAX_BODY: usize = 64 * 1024;

/// The useful part of a successful token response.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: Secret,
    /// Lifetime from `expires_in`; [`DEFAULT_EXPIRES_IN`] when missing or zero.
    pub expires_in: Duration,
    /// Present for delegated flows; the grant that asked must store the new one.
    pub refresh_token: Option<Secret>,
    /// Granted scopes, when the endpoint says.
    pub scope: Option<String>,
}

type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>>;

/// A way of obtaining a token response from a token endpoint.
pub trait Grant: Send + Sync + fmt::Debug {
    /// Short flow name for logs, e.g. `client_credentials`.
    fn flow(&self) -> &'static str;

    /// Perform one token request. Must not retry: the cache decides when to ask again.
    fn request_token<'a>(&'a self, http: &'a reqwest::Client) -> TokenFuture<'a>;

    /// True while no token can be had until a person signs in (delegated flows only).
    fn sign_in_required(&self) -> bool {
        false
    }

    /// The credentials behind the grant changed (someone signed in): re-read what is needed.
    fn credentials_changed(&self) {}
}

/// App-only (client-credentials) grant, e.g. for SMTP.SendAsApp with
/// scope `https://outlook.office365.com/.default`.
#[derive(Debug, Clone)]
pub struct ClientCredentialsGrant {
    /// The token endpoint.
    pub token_url: String,
    /// The application (client) ID.
    pub client_id: String,
    /// The app's secret or certificate.
    pub credential: ClientCredential,
    /// Space-separated scopes, e.g. `https://outlook.office365.com/.default`.
    pub scope: String,
}

impl Grant for ClientCredentialsGrant {
    fn flow(&self) -> &'static str {
        "client_credentials"
    }

    fn request_token<'a>(&'a self, http: &'a reqwest::Client) -> TokenFuture<'a> {
        Box::pin(async move {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("scope", &self.scope),
            ];
            let assertion;
            let secret_value;
            match &self.credential {
                ClientCredential::Secret(secret) => {
                    secret_value = secret.expose();
                    form.push(("client_secret", secret_value));
                }
                ClientCredential::Certificate(certificate) => {
                    // A fresh assertion per request: each needs its own jti and current times.
                    assertion = certificate
                        .client_assertion(&self.client_id, &self.token_url)
                        .map_err(|error| TokenError::configuration(error.to_string()))?;
                    secret_value = assertion.expose();
                    form.push(("client_assertion_type", JWT_BEARER_ASSERTION_TYPE));
                    form.push(("client_assertion", secret_value));
                }
            }
            debug!(
                token_url = %self.token_url,
                client_id = %self.client_id,
                scope = %self.scope,
                credential = %self.credential.describe(),
                flow = self.flow(),
                "requesting token"
            );
            post_token_request(http, &self.token_url, &form, &[secret_value]).await
        })
    }
}

/// POST `form` to `token_url` and parse the answer. `scrub` lists secret values sent in the
/// form, removed from any error description in case an endpoint echoes them back.
pub async fn post_token_request(
    http: &reqwest::Client,
    token_url: &str,
    form: &[(&str, &str)],
    scrub: &[&str],
) -> Result<TokenResponse, TokenError> {
    let mut response = http
        .post(token_url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|error| classify_transport(&error))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = read_bounded_body(&mut response).await?;
    if !(200..300).contains(&status) {
        return Err(classify_response(
            status,
            retry_after.as_deref(),
            &body,
            scrub,
        ));
    }
    match parse_token_response(&body) {
        Ok(response) => Ok(response),
        // Some gateways answer 200 with an OAuth error body; classify it like any other.
        Err(_) if looks_like_oauth_error(&body) => Err(classify_response(
            status,
            retry_after.as_deref(),
            &body,
            scrub,
        )),
        Err(mut error) => {
            error.http_status = Some(status);
            Err(error)
        }
    }
}

/// POST `form` to `url` (a device-authorization endpoint, say) and return the body of a 2xx
/// answer; anything else is classified like a token endpoint's error.
pub(crate) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    scrub: &[&str],
) -> Result<Vec<u8>, TokenError> {
    let mut response = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|error| classify_transport(&error))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = read_bounded_body(&mut response).await?;
    if (200..300).contains(&status) && !looks_like_oauth_error(&body) {
        return Ok(body);
    }
    Err(classify_response(
        status,
        retry_after.as_deref(),
        &body,
        scrub,
    ))
}

async fn read_bounded_body(response: &mut reqwest::Response) -> Result<Vec<u8>, TokenError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| classify_transport(&error))?
    {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            // The rest is not needed to classify the answer; a truncated success body simply
            // fails to parse, which is the right outcome for a response that large.
            break;
        }
    }
    Ok(body)
}

fn looks_like_oauth_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|value| value.get("error").is_some_and(serde_json::Value::is_string))
}

/// Parses a 2xx token response body.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, TokenError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        let text = String::from_utf8_lossy(body);
        TokenError::transient(format!(
            "the response is not JSON ({})",
            sanitise(&text, 80)
        ))
    })?;
    let access_token = value
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| TokenError::transient("the response has no access_token"))?;
    // RFC 6749 makes token_type mandatory, but what matters is that the token is not some other
    // kind (PoP, MAC) that the upstream would refuse; absent is taken as Bearer.
    if let Some(token_type) = value.get("token_type").and_then(serde_json::Value::as_str)
        && !token_type.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::transient(format!(
            "the token_type is {:?}, not Bearer",
            sanitise(token_type, 32)
        )));
    }
    let expires_in = match value.get("expires_in").and_then(seconds) {
        Some(0) | None => DEFAULT_EXPIRES_IN,
        Some(seconds) => Duration::from_secs(seconds).min(MAX_EXPIRES_IN),
    };
    Ok(TokenResponse {
        access_token: Secret::from(access_token),
        expires_in,
        refresh_token: value
            .get("refresh_token")
            .and_then(serde_json::Value::as_str)
            .filter(|token| !token.is_empty())
            .map(Secret::from),
        scope: value
            .get("scope")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    })
}

/// A number of seconds given as a JSON number or as a string holding one (older endpoints).
/// Negative or unreadable values count as absent.
fn seconds(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(number) => number
            .as_u64()
            .or_else(|| number.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        serde_json::Value::String(text) => {
            let text = text.trim();
            text.parse::<u64>().ok().or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<TokenResponse, TokenError> {
        parse_token_response(body.as_bytes())
    }

    #[test]
    fn expires_in_forms() {
        let cases = [
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":3599}"#,
                3599,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":"3599"}"#,
                3599,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":" 1800 "}"#,
                1800,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":1200.0}"#,
                1200,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
                3600,
            ),
            (r#"{"access_token":"t","token_type":"Bearer"}"#, 3600),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":-5}"#,
                3600,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":"soon"}"#,
                3600,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":null}"#,
                3600,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":99999999999999}"#,
                86400,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":3599,"ext_expires_in":7199}"#,
                3599,
            ),
        ];
        for (body, expected) in cases {
            let response = parse(body).unwrap();
            assert_eq!(response.expires_in, Duration::from_secs(expected), "{body}");
        }
    }

    #[test]
    fn token_type_is_case_insensitive_and_must_be_bearer() {
        assert!(parse(r#"{"access_token":"t","token_type":"bearer","expires_in":1}"#).is_ok());
        assert!(parse(r#"{"access_token":"t","token_type":"BEARER","expires_in":1}"#).is_ok());
        assert!(parse(r#"{"access_token":"t","expires_in":1}"#).is_ok());
        let error = parse(r#"{"access_token":"t","token_type":"pop","expires_in":1}"#).unwrap_err();
        assert!(error.is_transient());
        assert!(error.description.contains("pop"));
    }

    #[test]
    fn unusable_success_bodies_are_transient_and_short() {
        for body in [
            "",
            "<html>hello</html>",
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":"","token_type":"Bearer"}"#,
            r#"{"access_token":42}"#,
        ] {
            let error = parse(body).unwrap_err();
            assert!(error.is_transient(), "{body}");
            assert!(error.description.len() < 200, "{body}");
        }
    }

    #[test]
    fn refresh_token_and_scope_are_kept_but_not_printed() {
        let response = parse(
            r#"{"access_token":"AT-secret-value","token_type":"Bearer","expires_in":3600,"refresh_token":"RT-secret-value","scope":"https://outlook.office.com/SMTP.Send"}"#,
        )
        .unwrap();
        assert_eq!(
            response.refresh_token.as_ref().map(Secret::expose),
            Some("RT-secret-value")
        );
        assert_eq!(
            response.scope.as_deref(),
            Some("https://outlook.office.com/SMTP.Send")
        );
        let debug = format!("{response:?}");
        assert!(
            !debug.contains("AT-secret-value") && !debug.contains("RT-secret-value"),
            "{debug}"
        );
    }
}
