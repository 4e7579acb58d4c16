//! Builds throwaway PostgreSQL streaming-replication clusters for tests and `pgvigil demo`.
//!
//! Synchronous, std-only. [`ClusterBuilder::build`] copies a cached `initdb` output for the
//! primary (see `template.rs`), clones standbys with `pg_basebackup`, starts every postmaster
//! as a direct child and polls until each is ready; [`LocalCluster`] then starts, stops,
//! crashes, pauses and promotes nodes. When run as root the servers run as `postgres`
//! (or `nobody`).
//!
//! Servers are spawned from one process-lifetime thread with `PR_SET_PDEATHSIG = SIGQUIT`, so
//! they shut down if the test process dies without unwinding (SIGKILL, abort); the temp dir
//! is left behind in that case. Dropping a `LocalCluster` stops everything and removes it.

mod bin;
mod builder;
#[allow(clippy::module_inception)]
mod cluster;
mod conf;
mod error;
mod node;
mod process;
mod template;

pub use bin::PgBin;
pub use builder::ClusterBuilder;
pub use cluster::LocalCluster;
pub use conf::{HbaMethod, PasswordEncryption};
pub use error::{HarnessError, Result};
pub use node::PgNode;
