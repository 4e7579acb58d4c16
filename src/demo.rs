//! `pgvigil demo`: a local primary + standbys and pgvigil in front, with no configuration.

/// Builds the cluster, runs pgvigil until Ctrl-C, then removes everything.
pub async fn run(_port: u16, _standbys: usize) -> anyhow::Result<()> {
    anyhow::bail!("demo: waiting for the cluster harness")
}
