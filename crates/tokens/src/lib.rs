//! OAuth 2.0 token manager for smtp2oauth: obtains access tokens from the Microsoft identity
//! platform (or any RFC 6749 token endpoint), caches them per account with single-flight
//! refresh, and classifies failures so the relay knows whether to retry, alert the admin or ask
//! for a new sign-in.
//!
//! It knows nothing of SMTP: upstream routes ask a [`TokenSource`] for a token and report back
//! with [`TokenSource::invalidate`] when the server refused it.
//!
//! Secrets (client secrets, client assertions, access and refresh tokens) are carried as
//! [`Secret`] and never appear in `Debug`/`Display` output, errors or logs.

mod cache;
mod credential;
mod error;
mod grant;
mod http;
mod secret;
pub mod tls;

pub use cache::{AccessToken, CacheOptions, TokenCache, TokenSource, TokenStatus};
pub use credential::{
    CertificateCredential, ClientCredential, CredentialError, JWT_BEARER_ASSERTION_TYPE, JwtAlg,
};
pub use error::{TokenError, TokenErrorKind};
pub use grant::{
    ClientCredentialsGrant, DEFAULT_EXPIRES_IN, Grant, TokenResponse, parse_token_response,
    post_token_request,
};
pub use http::{HttpOptions, http_client};
pub use secret::Secret;
