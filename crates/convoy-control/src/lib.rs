//! convoy's control plane, as a library: the one task per node that
//! builds the snapshot from the config, starts listeners and probes, and
//! is the only writer of server health, admin state, the pools' tables
//! and the snapshot. The data plane (`convoy-l4`, `convoy-http`) only
//! reads what it stores. The binary keeps the command line, logging, the
//! runtime and the OS signal handlers, which feed [`run`] a channel of
//! [`Signal`]s.
//!
//! | Module | Owns |
//! |---|---|
//! | `node` | [`Node`], its [`NodeState`], small accessors |
//! | `startup` | [`Node::start`]: admin socket, listeners, probes, [`Inputs`] |
//! | `listeners` | binding (reusing running and inherited sockets), spawning, stopping listeners; caches |
//! | `apply` | reloads: [`diff`] into [`Change`]s, [`Node::apply`], [`Overrides`] |
//! | `cluster` | the node's part in a cluster: the agent, shared health and commands |
//! | `steering` | how client traffic reaches the node: nftables (shared) or bird (ecmp) |
//! | `commands` | [`Node::command`]: one function per command family |
//! | `health` | probes, probe reports, passive failures, zones |
//! | `tick` | the 250 ms tick |
//! | `handover` | binary upgrade: the socket protocol and what is handed over |
//! | `run` | the loop over every input, [`Signal`], drain-stop and stop |
#![forbid(unsafe_code)]

mod apply;
mod cluster;
mod commands;
mod error;
mod handover;
mod health;
mod listeners;
mod node;
mod run;
mod startup;
mod steering;
mod tick;

#[cfg(test)]
mod tests;

pub use apply::{diff, Change, Overrides};
pub use error::{report, Error};
pub use handover::{take_over, Inherited};
pub use node::{Node, NodeState};
pub use run::{run, Next, Signal};
pub use startup::Inputs;
