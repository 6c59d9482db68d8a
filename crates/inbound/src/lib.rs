//! Inbound SMTP: what devices talk to.
//!
//! This crate turns a device's SMTP session into a message in the spool, and knows nothing of
//! OAuth or upstreams: it hands each committed message to a [`Submit`] implementation (the
//! scheduler, wired in by the binary) and sends the device the reply it gets back.
//!
//! # Layout
//! - `session.rs`: the SMTP state machine, free of I/O ([`Session`], [`Step`]).
//! - `conn.rs`: the driver that runs a session over a stream: line framing, deadlines, STARTTLS,
//!   streaming DATA into the spool ([`serve`], [`Inbound`], [`Submit`]); every reply it sends
//!   passes one hook (`conn/track.rs`).
//! - `observe.rs`: that hook: [`Observer`] sees every reply ([`ReplyEvent`]) and each
//!   session's end ([`SessionSummary`]).
//! - `publish.rs`: the observer that feeds the live state (`activity`): devices seen, their
//!   results, failed logins, refused messages.
//! - `session_log.rs`: the observer that writes the log lines: each refusal, each message
//!   accepted, each session's end.
//! - `listener.rs`: listening sockets and the accept loop.
//! - `identity.rs`: devices, password checks, sender policy ([`Directory`]).
//! - `login.rs`: one AUTH attempt: lockouts first, then the password check.
//! - `sasl.rs`: AUTH PLAIN / LOGIN decoding.
//! - `headers.rs`: the Received header and the From rewrite.
//! - `limiter.rs`: concurrent session limits, making room by closing sessions not logged in.
//! - `slot.rs`: what ends a waiting session early (no login in time, room needed, lockout).
//! - `guard.rs`: brute-force lockout per client address and per username.
//! - `known.rs`: the addresses each username logged in from (exempt from its lockout).
//! - `tls.rs`: server TLS from PEM files, reloadable, optional client certificates.
//! - `legacy.rs` (feature `legacy-tls`): TLS 1.0/1.1 through OpenSSL for old devices.

#![warn(missing_docs)]

pub mod conn;
pub mod guard;
pub mod headers;
pub mod identity;
pub mod known;
#[cfg(feature = "legacy-tls")]
mod legacy;
pub mod limiter;
pub mod listener;
mod login;
pub mod observe;
pub mod publish;
pub mod sasl;
pub mod session;
pub mod session_log;
pub mod slot;
pub mod tls;

pub use conn::{Inbound, ListenerRuntime, Submit, serve};
pub use guard::{GuardSettings, LoginGuard};
pub use identity::{Directory, hash_password, hash_password_with};
pub use known::KnownLogins;
pub use limiter::{Limiter, LimiterSettings};
pub use observe::{Observer, Observers, ReplyEvent, SessionSummary};
pub use publish::ActivityPublisher;
pub use session::{Limits, ListenerSettings, Session, Step};
pub use session_log::SessionLog;
pub use tls::{TlsError, TlsHandle, TlsPolicy, TlsStream, server_config};
