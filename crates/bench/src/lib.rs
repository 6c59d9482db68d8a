//! The benchmark and reliability rigs of smtp2oauth, behind the `smtp2oauth-bench` command.
//!
//! A library so the end-to-end tests can run the short power-cut form against the freshly built
//! relay; never a dependency of the relay binary.
//!
//! Modules: `load` (the generator), `idle` (idle sessions), `message` (what it sends), `tls`
//! (its STARTTLS), `upstream` (the fake token endpoint and sink of one run), `relay` (the relay
//! process and its config), `postfix` (a private Postfix instance), `sink` (watching the
//! upstream fake), `scenario` (one measurement of one peer), `peers` and `compare` (repeated,
//! alternated measurements), `memory`, `graph_large` (a large scan through the Graph route),
//! `report` (definitions of the figures), `power_cut` (the
//! store on a filesystem that loses power), `soak` (hours of mixed load and upstream chaos).

pub mod compare;
pub mod graph_large;
pub mod idle;
pub mod load;
pub mod memory;
pub mod message;
pub mod peers;
pub mod postfix;
pub mod power_cut;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod sink;
pub mod soak;
pub mod tls;
pub mod upstream;
