//! Proves the fakes are honest by speaking to them over real sockets with independent clients.
//! One test binary (modules below) keeps link time low on small machines.

#![allow(clippy::unwrap_used)]

mod client;
mod graph;
mod idp;
mod idp_delegated;
mod smtp;
