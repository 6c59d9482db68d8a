//! SMTP vocabulary shared by the inbound server and the upstream client.
//!
//! This crate knows nothing of OAuth, sockets or files. It holds what both directions of the
//! relay must agree on, so they cannot drift apart:
//!
//! - [`Reply`]: an SMTP reply kept as data (code, enhanced status, text), whether we send it or an
//!   upstream sent it to us;
//! - [`dot`]: the DATA transparency procedure, as a streaming decoder (device to spool) and encoder
//!   (spool to upstream);
//! - [`replies`]: every reply we send, and the one mapping from our failure enums
//!   ([`SessionError`], [`DeliveryError`]) to SMTP replies;
//! - [`Cause`]: what a delivery failure is about (throttling, our account, the message, ...),
//!   decided where the upstream's answer is parsed and carried with it;
//! - [`Address`]: a mail address, read once and written one way (RFC 5321) wherever it goes.
//!
//! # Layout
//! - `reply.rs`: [`Reply`], [`EnhancedStatus`], [`ReplyAssembler`] (parses replies line by line).
//! - `dot.rs`: [`DotDecoder`], [`DotEncoder`].
//! - `replies.rs`: [`replies::ok`], [`SessionError`], [`DeliveryError`], [`Stage`].
//! - `cause.rs`: [`Cause`], [`AccountIssue`].
//! - `address.rs`: [`Address`], [`AddressError`].

#![warn(missing_docs)]

pub mod address;
pub mod cause;
pub mod dot;
pub mod replies;
pub mod reply;

pub use address::{Address, AddressError};
pub use cause::{AccountIssue, Cause};
pub use dot::{Decoded, DotDecoder, DotEncoder};
pub use replies::{DeliveryError, SessionError, Stage};
pub use reply::{EnhancedStatus, Reply, ReplyAssembler, ReplyParseError, Severity};
