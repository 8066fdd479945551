//! The L4 data plane: accept loops for TCP listeners (choose a server, connect
//! with timeout and failover, relay both ways with splice(2) on Linux), UDP
//! listeners with per-client flows, and the PROXY protocol header.
//!
//! It reads the current [`convoy_core::Snapshot`] through `ArcSwap::load()`
//! for every new connection and never waits on the control plane; passive
//! failure signals go back to it over a channel.
#![forbid(unsafe_code)]

pub mod park;
pub mod proxy_protocol;
pub mod relay;
#[cfg(target_os = "linux")]
mod splice;
pub mod tcp;
pub mod udp;

pub use convoy_core::context::{Context, DataEvent};
