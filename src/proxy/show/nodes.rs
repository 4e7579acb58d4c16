//! One row per backend: SHOW POOL_NODES, POOL_HEALTH_CHECK_STATS, POOL_BACKEND_STATS.

use std::time::SystemTime;

use super::{role_name, up_down, utc_timestamp, utc_timestamp_or_empty, Table};
use crate::monitor::Role;
use crate::proxy::stats::BackendCounts;

/// Pgpool-II's columns, in its order.
pub const POOL_NODES_COLUMNS: [&str; 14] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "pg_status",
    "lb_weight",
    "role",
    "pg_role",
    "select_cnt",
    "load_balance_node",
    "replication_delay",
    "replication_state",
    "replication_sync_state",
    "last_status_change",
];

/// One backend's line of `SHOW POOL_NODES`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolNodeRow {
    pub node_id: usize,
    pub hostname: String,
    pub port: u16,
    /// pgvigil's view: up.
    pub status: bool,
    /// The server answered its last check.
    pub pg_status: bool,
    /// This node's share of the load-balancing weight (0.0 to 1.0).
    pub lb_weight: f64,
    /// Printed as both `role` and `pg_role`: pgvigil's role is what the server reports.
    pub role: Role,
    pub select_cnt: u64,
    pub load_balance_node: bool,
    /// Bytes of WAL not yet replayed; printed as 0 when unknown and for the primary.
    pub replication_delay: Option<u64>,
    /// pg_stat_replication.state ("streaming"…); empty when unknown.
    pub replication_state: Option<String>,
    /// pg_stat_replication.sync_state ("async", "sync"…); empty when unknown.
    pub replication_sync_state: Option<String>,
    pub last_status_change: SystemTime,
}

pub fn pool_nodes_table(rows: &[PoolNodeRow]) -> Table {
    let rows = rows
        .iter()
        .map(|row| {
            vec![
                row.node_id.to_string(),
                row.hostname.clone(),
                row.port.to_string(),
                up_down(row.status),
                up_down(row.pg_status),
                format!("{:.6}", row.lb_weight),
                role_name(row.role).to_string(),
                role_name(row.role).to_string(),
                row.select_cnt.to_string(),
                row.load_balance_node.to_string(),
                row.replication_delay.unwrap_or(0).to_string(),
                row.replication_state.clone().unwrap_or_default(),
                row.replication_sync_state.clone().unwrap_or_default(),
                utc_timestamp(row.last_status_change),
            ]
        })
        .collect();
    Table { columns: &POOL_NODES_COLUMNS, rows }
}

/// Columns of Pgpool-II 4.x's `SHOW POOL_HEALTH_CHECK_STATS`, in order.
pub const HEALTH_CHECK_STATS_COLUMNS: [&str; 20] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "last_status_change",
    "total_count",
    "success_count",
    "fail_count",
    "skip_count",
    "retry_count",
    "average_retry_count",
    "max_retry_count",
    "max_duration",
    "min_duration",
    "average_duration",
    "last_health_check",
    "last_successful_health_check",
    "last_skip_health_check",
    "last_failed_health_check",
];

/// One backend's row of `SHOW POOL_HEALTH_CHECK_STATS`.
#[derive(Debug, Clone)]
pub struct HealthCheckRow {
    pub node_id: usize,
    pub hostname: String,
    pub port: u16,
    pub status: bool,
    pub role: Role,
    pub last_status_change: SystemTime,
    pub stats: crate::monitor::CheckStatsSnapshot,
}

/// Pgpool-II's formats: durations in milliseconds, averages with 6 decimals, unset
/// times empty.
pub fn health_check_stats_table(rows: &[HealthCheckRow]) -> Table {
    let rows = rows
        .iter()
        .map(|row| {
            let s = &row.stats;
            vec![
                row.node_id.to_string(),
                row.hostname.clone(),
                row.port.to_string(),
                up_down(row.status),
                role_name(row.role).to_string(),
                utc_timestamp(row.last_status_change),
                s.total.to_string(),
                s.successes.to_string(),
                s.failures.to_string(),
                s.skipped.to_string(),
                s.retries.to_string(),
                // Retries per health check, as Pgpool-II averages them.
                format!("{:.6}", if s.total == 0 { 0.0 } else { s.retries as f64 / s.total as f64 }),
                s.max_retries.to_string(),
                s.max_duration_ms.to_string(),
                s.min_duration_ms.to_string(),
                format!("{:.6}", s.average_duration_ms),
                utc_timestamp_or_empty(s.last_check),
                utc_timestamp_or_empty(s.last_success),
                String::new(),
                utc_timestamp_or_empty(s.last_failure),
            ]
        })
        .collect();
    Table { columns: &HEALTH_CHECK_STATS_COLUMNS, rows }
}

/// Columns of Pgpool-II 4.x's `SHOW POOL_BACKEND_STATS`, in order.
pub const BACKEND_STATS_COLUMNS: [&str; 14] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "select_cnt",
    "insert_cnt",
    "update_cnt",
    "delete_cnt",
    "ddl_cnt",
    "other_cnt",
    "panic_cnt",
    "fatal_cnt",
    "error_cnt",
];

/// One backend's row of `SHOW POOL_BACKEND_STATS`.
#[derive(Debug, Clone)]
pub struct BackendStatsRow {
    pub node_id: usize,
    pub hostname: String,
    pub port: u16,
    pub status: bool,
    pub role: Role,
    pub counts: BackendCounts,
}

pub fn backend_stats_table(rows: &[BackendStatsRow]) -> Table {
    let rows = rows
        .iter()
        .map(|row| {
            let c = &row.counts;
            let mut values =
                vec![row.node_id.to_string(), row.hostname.clone(), row.port.to_string(), up_down(row.status), role_name(row.role).to_string()];
            values.extend([c.select, c.insert, c.update, c.delete, c.ddl, c.other, c.panic, c.fatal, c.error].map(|n| n.to_string()));
            values
        })
        .collect();
    Table { columns: &BACKEND_STATS_COLUMNS, rows }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, written};
    use super::*;

    #[test]
    fn pool_nodes_as_pgpool_prints_them() {
        let rows = [
            PoolNodeRow {
                node_id: 0,
                hostname: "db1".into(),
                port: 5432,
                status: true,
                pg_status: true,
                lb_weight: 1.0 / 3.0,
                role: Role::Primary,
                select_cnt: 12,
                load_balance_node: false,
                replication_delay: None,
                replication_state: None,
                replication_sync_state: None,
                last_status_change: at(1_700_000_000),
            },
            PoolNodeRow {
                node_id: 1,
                hostname: "/tmp".into(),
                port: 5433,
                status: true,
                pg_status: true,
                lb_weight: 2.0 / 3.0,
                role: Role::Standby,
                select_cnt: 0,
                load_balance_node: true,
                replication_delay: Some(4096),
                replication_state: Some("streaming".into()),
                replication_sync_state: Some("async".into()),
                last_status_change: at(951_782_400),
            },
            PoolNodeRow {
                node_id: 2,
                hostname: "db3".into(),
                port: 6432,
                status: false,
                pg_status: false,
                lb_weight: 0.0,
                role: Role::Unknown,
                select_cnt: u64::MAX,
                load_balance_node: false,
                replication_delay: None,
                replication_state: None,
                replication_sync_state: None,
                last_status_change: at(0),
            },
        ];
        let got = written(&pool_nodes_table(&rows), &POOL_NODES_COLUMNS);
        let want: [[&str; 14]; 3] = [
            ["0", "db1", "5432", "up", "up", "0.333333", "primary", "primary", "12", "false", "0", "", "", "2023-11-14 22:13:20"],
            ["1", "/tmp", "5433", "up", "up", "0.666667", "standby", "standby", "0", "true", "4096", "streaming", "async", "2000-02-29 00:00:00"],
            ["2", "db3", "6432", "down", "down", "0.000000", "unknown", "unknown", "18446744073709551615", "false", "0", "", "", "1970-01-01 00:00:00"],
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn health_check_stats_as_pgpool_prints_them() {
        let stats = crate::monitor::CheckStatsSnapshot {
            total: 10,
            successes: 7,
            failures: 3,
            retries: 2,
            max_retries: 2,
            marked_down: 1,
            average_duration_ms: 1.5,
            min_duration_ms: 1,
            max_duration_ms: 4,
            last_check: Some(at(1_764_214_800)),
            last_success: Some(at(1_764_214_790)),
            last_failure: Some(at(1_764_214_800)),
            ..Default::default()
        };
        let row = HealthCheckRow {
            node_id: 1,
            hostname: "db2".into(),
            port: 5433,
            status: false,
            role: Role::Unknown,
            last_status_change: at(1_764_214_800),
            stats,
        };
        let rows = written(&health_check_stats_table(&[row]), &HEALTH_CHECK_STATS_COLUMNS);
        let v = &rows[0];
        assert_eq!(&v[..6], ["1", "db2", "5433", "down", "unknown", "2025-11-27 03:40:00"]);
        assert_eq!(&v[6..16], ["10", "7", "3", "0", "2", "0.200000", "2", "4", "1", "1.500000"]);
        assert_eq!(v[16], "2025-11-27 03:40:00");
        assert_eq!(v[17], "2025-11-27 03:39:50");
        assert_eq!(v[18], "", "never skipped");
        assert_eq!(v[19], "2025-11-27 03:40:00");
    }

    #[test]
    fn backend_stats_as_pgpool_prints_them() {
        let rows = [
            BackendStatsRow {
                node_id: 0,
                hostname: "db1".into(),
                port: 5432,
                status: true,
                role: Role::Primary,
                counts: BackendCounts { select: 12, insert: 10, update: 30, delete: 1, ddl: 2, other: 30, panic: 0, fatal: 3, error: 1 },
            },
            BackendStatsRow {
                node_id: 1,
                hostname: "/tmp".into(),
                port: 11003,
                status: false,
                role: Role::Standby,
                counts: BackendCounts { panic: u64::MAX, ..BackendCounts::default() },
            },
        ];
        let got = written(&backend_stats_table(&rows), &BACKEND_STATS_COLUMNS);
        let want: [[&str; 14]; 2] = [
            ["0", "db1", "5432", "up", "primary", "12", "10", "30", "1", "2", "30", "0", "3", "1"],
            ["1", "/tmp", "11003", "down", "standby", "0", "0", "0", "0", "0", "0", "18446744073709551615", "0", "0"],
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn no_nodes_is_an_empty_result() {
        assert!(written(&pool_nodes_table(&[]), &POOL_NODES_COLUMNS).is_empty());
        assert!(written(&backend_stats_table(&[]), &BACKEND_STATS_COLUMNS).is_empty());
        assert!(written(&health_check_stats_table(&[]), &HEALTH_CHECK_STATS_COLUMNS).is_empty());
    }
}
