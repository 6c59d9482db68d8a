//! OAuth 2.0 token manager for smtp2oauth: obtains access tokens from the Microsoft identity
//! platform (or any RFC 6749 token endpoint), caches them per account with single-flight
//! refresh, and classifies failures so the relay knows whether to retry, alert the admin or ask
//! for a new sign-in.
//!
//! Two kinds of account: app-only ones use the client-credentials grant (`grant.rs`); delegated
//! ones are signed in once by a person, with the authorization code + PKCE or the device code
//! flow (`signin.rs`, `delegated.rs`, `pkce.rs`), and then live on the refresh token kept
//! encrypted in the token store (`store.rs`).
//!
//! It knows nothing of SMTP: upstream routes ask a [`TokenSource`] for a token and report back
//! with [`TokenSource::invalidate`] when the server refused it.
//!
//! Secrets (client secrets, client assertions, access and refresh tokens) are carried as
//! [`Secret`] and never appear in `Debug`/`Display` output, errors or logs.

#![warn(missing_docs)]

mod cache;
mod credential;
mod delegated;
mod error;
mod grant;
mod http;
pub mod pkce;
mod secret;
mod signin;
pub mod store;
pub mod tls;

pub use cache::{AccessToken, CacheOptions, TokenCache, TokenSource, TokenStatus, wait_for_token};
pub use credential::{
    CertificateCredential, ClientCredential, CredentialError, JWT_BEARER_ASSERTION_TYPE, JwtAlg,
};
pub use delegated::{
    DEVICE_CODE_GRANT, DelegatedClient, DelegatedFlow, DeviceAuthorization, PollEvent,
    ProviderKind, SLOW_DOWN_STEP, StoredRefreshGrant,
};
pub use error::{TokenError, TokenErrorKind};
pub use grant::{
    ClientCredentialsGrant, DEFAULT_EXPIRES_IN, Grant, TokenResponse, parse_token_response,
    post_token_request,
};
pub use http::{HttpOptions, http_client};
/// The HTTP client type token requests use (re-exported so callers need no reqwest dependency).
pub type HttpClient = reqwest::Client;
pub use secret::Secret;
pub use signin::{
    CallbackParams, DeviceLoginStatus, STATE_LIFETIME, SignInError, SignInManager, SignInTarget,
};
pub use store::{
    KeyOrigin, LoginPrompt, MasterKey, StoreError, StoredToken, TokenStore, load_master_key,
};
