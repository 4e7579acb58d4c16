//! Builds throwaway PostgreSQL streaming-replication clusters for tests and `pgvigil demo`.
