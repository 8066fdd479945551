//! A cluster of convoy nodes with no dispatcher. Membership and failure
//! detection run on SWIM gossip ([foca]); every datagram between nodes is
//! authenticated with the cluster key ([`envelope`]); each node publishes
//! what it knows and decides ([`doc`]); and every node computes, from the
//! same inputs, the same view of the cluster ([`view`]): member states,
//! the owners of each listener's flow buckets ([`buckets`]), the servers
//! down for the cluster, and the operator commands in force.
#![forbid(unsafe_code)]

pub mod agent;
pub mod buckets;
pub mod doc;
pub mod envelope;
pub mod fingerprint;
pub mod pieces;
pub mod steer;
pub mod view;
