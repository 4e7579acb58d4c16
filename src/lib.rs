//! pgvigil: a high-availability proxy for PostgreSQL streaming-replication clusters.
//!
//! Layout (see docs/architecture.md): `protocol` is the I/O-free wire codec and auth math,
//! `proxy` holds client sessions, `pool` the backend connections, `monitor` watches the
//! backends and publishes the cluster view, `cluster` builds local PostgreSQL clusters
//! for tests and for `pgvigil demo`, `watchdog` elects one leader among pgvigil nodes and
//! moves the virtual IP.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod events;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod run;
pub mod tls;
pub mod watchdog;
