//! Balancing logic for convoy with no I/O and no clock of its own: the
//! weighted Maglev table used both for sequential weighted selection and for
//! consistent hashing, affinity keys, priority ("single" mode) failover, the
//! rise/fall health state machine and the slow-start ramp; for request-level
//! balancing, smooth weighted round robin, least outstanding cost, power of
//! two choices over peak-EWMA latency, the priority queue with aging, outlier
//! ejection and the standby hysteresis. Everything here is
//! deterministic so that every node of a cluster makes the same choice for the
//! same input, and so that it can be tested without sockets or timers.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod ewma;
pub mod hash;
pub mod health;
pub mod hysteresis;
pub mod maglev;
pub mod outlier;
pub mod priority;
pub mod queue;
pub mod select;
pub mod slow_start;
pub mod swrr;

pub use affinity::{affinity_key, AffinityKind};
pub use health::{HealthMachine, Transition};
pub use maglev::Table;
pub use priority::{pick_single, Failback};
pub use slow_start::ramp_weight;
