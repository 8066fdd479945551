//! The admin side of a node, served on its admin address (default
//! 127.0.0.1:9900): a JSON API for WLBS-style control (query, start, stop,
//! drainstop, suspend, resume, reload; per listener and per server
//! commands), Prometheus `/metrics`, recent events, explanations of
//! choices, and the dashboard page. Every request carries a bearer token
//! (when one is configured), compared in constant time. Commands go to the
//! node's control loop over a channel and come back as JSON.
#![forbid(unsafe_code)]

pub mod api;
pub mod metrics;

pub use api::{router, serve};
