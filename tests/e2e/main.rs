//! End-to-end tests of the whole `smtp2oauth` binary.
//!
//! Each test starts the real binary with a config that points at honest fakes (a token
//! endpoint issuing expiring tokens, an Exchange-like SMTP server that requires STARTTLS and
//! verifies the XOAUTH2 string), and drives it with SMTP clients we did not write: curl,
//! Python's smtplib (tests/clients/send.py) and swaks when installed.
//!
//! # Layout
//! - `harness.rs`: starting the relay and the fakes, running clients.
//! - `relay.rs`: the core relay: auth, TLS, exact bytes, sender policy, tokens, upstream errors.
//! - `bad_input.rs`: hostile and broken clients.
//! - `console.rs`: the operator console: queue actions from the page (Chromium) and the API
//!   while mail flows, CSRF and the password, rebinding, a password flood, send-test, no secrets.
//! - `cli.rs`: check-config, hash-password, send-test, the example config, signals.
//! - `doc_commands.rs`: every `smtp2oauth ...` command in the docs' shell examples exists.
//! - `files.rs`: what the relay creates on disk is private whatever the umask.
//! - `pipes.rs`: every printing command into a closed pipe; queue actions answered by the
//!   running relay; times and `health` as people read them.
//! - `graph_large.rs`: scans larger than one Graph request through a draft and upload sessions
//!   (`graph_large_messages`), with curl, smtplib and swaks; throttling, permissions, refusal.
//! - `routes.rs`: the Graph and smart-host routes, MX resolution, client certificates,
//!   `fallback_route`, Graph's Retry-After and size limit.
//! - `tls.rs`: certificate reload, start-up errors, client certificates, legacy TLS 1.0.
//! - `logs.rs`: the log lines an admin reads at the default level: refusals, failed logins and
//!   lockouts, accepted messages, session ends; never a password.
//! - `queue.rs`: store-and-forward: retries, throttling, failure notices, crashes under load,
//!   a full disk, the queue command, shutdown and recovery.
//! - `live_state.rs`: the live state: a device's last result, an account's state after a
//!   refused login and after a restart, through the state file, the CLI, the metric and a
//!   webhook.
//! - `recovery.rs`: a refusal of the relay's own account keeps the mail; how soon mail goes
//!   after a brief fault clears (measured); synchronous delivery within the account's limits.
//! - `signin.rs`: delegated sign-in: the accounts page with authorization code + PKCE, device
//!   code through the CLI, refresh and rotation across restarts, revocation, the master key.
//! - `power_cut.rs`: the store on a filesystem that loses power; every 250 survives the cuts.
//! - `hardening.rs`: the security review's findings: address injection, lockouts, timing and
//!   metric oracles, sessions that never log in, slots after QUIT, From rewriting, escapes.

#![allow(clippy::unwrap_used)]

mod bad_input;
mod cli;
mod console;
mod deploy;
mod doc_commands;
mod files;
mod graph_large;
mod hardening;
mod harness;
mod live_state;
mod logs;
mod ops;
mod pipes;
mod power_cut;
mod queue;
mod recovery;
mod relay;
mod release;
mod routes;
mod signin;
mod smuggling;
mod tls;
