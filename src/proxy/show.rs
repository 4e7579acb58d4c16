//! `SHOW POOL_NODES`: the backends as Pgpool-II 4.3+ lists them, so its tools and
//! scripts keep working. I/O-free: rows in, protocol messages out.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::monitor::Role;
use crate::protocol::backend::{write_command_complete, write_data_row, write_text_row_description};

/// Pgpool-II's columns, in its order.
pub(crate) const POOL_NODES_COLUMNS: [&str; 14] = [
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

/// Writes RowDescription, one DataRow per node and CommandComplete "SHOW" (the caller
/// sends ReadyForQuery).
pub fn write_pool_nodes(out: &mut BytesMut, rows: &[PoolNodeRow]) {
    write_text_row_description(out, &POOL_NODES_COLUMNS);
    for row in rows {
        let values = pool_node_values(row);
        write_data_row(out, &values.map(Some));
    }
    write_command_complete(out, "SHOW");
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

/// RowDescription, one DataRow per backend and CommandComplete "SHOW", with Pgpool-II's
/// formats: durations in milliseconds, averages with 6 decimals, unset times empty.
pub fn write_health_check_stats(out: &mut BytesMut, rows: &[HealthCheckRow]) {
    write_text_row_description(out, &HEALTH_CHECK_STATS_COLUMNS);
    for row in rows {
        let s = &row.stats;
        let time = |t: Option<SystemTime>| t.map(utc_timestamp).unwrap_or_default();
        let values = [
            row.node_id.to_string(),
            row.hostname.clone(),
            row.port.to_string(),
            if row.status { "up" } else { "down" }.to_string(),
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
            time(s.last_check),
            time(s.last_success),
            String::new(),
            time(s.last_failure),
        ];
        write_data_row(out, &values.map(Some));
    }
    write_command_complete(out, "SHOW");
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Unknown => "unknown",
    }
}

/// The row's values as Pgpool-II prints them.
fn pool_node_values(row: &PoolNodeRow) -> [String; 14] {
    let up_down = |up: bool| if up { "up" } else { "down" }.to_string();
    let role = match row.role {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Unknown => "unknown",
    };
    [
        row.node_id.to_string(),
        row.hostname.clone(),
        row.port.to_string(),
        up_down(row.status),
        up_down(row.pg_status),
        format!("{:.6}", row.lb_weight),
        role.to_string(),
        role.to_string(),
        row.select_cnt.to_string(),
        row.load_balance_node.to_string(),
        row.replication_delay.unwrap_or(0).to_string(),
        row.replication_state.clone().unwrap_or_default(),
        row.replication_sync_state.clone().unwrap_or_default(),
        utc_timestamp(row.last_status_change),
    ]
}

/// "YYYY-MM-DD HH:MM:SS" in UTC; times before 1970 print as the epoch.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01: Howard
/// Hinnant's `civil_from_days`, for non-negative counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::frame::{take_message, Reader};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn timestamps_in_utc() {
        let cases = [
            (0, "1970-01-01 00:00:00"),
            (86_399, "1970-01-01 23:59:59"),
            (951_782_400, "2000-02-29 00:00:00"),
            (951_868_800, "2000-03-01 00:00:00"),
            (1_700_000_000, "2023-11-14 22:13:20"),
            (1_709_164_800, "2024-02-29 00:00:00"),
            (4_107_542_400, "2100-03-01 00:00:00"),
            (253_402_300_799, "9999-12-31 23:59:59"),
        ];
        for (secs, want) in cases {
            assert_eq!(utc_timestamp(at(secs)), want, "{secs}");
        }
        assert_eq!(utc_timestamp(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01 00:00:00");
        // Every day from 1970 to about 2400 follows the one before.
        let mut prev = civil_from_days(0);
        for d in 1..(431 * 366) {
            let next = civil_from_days(d);
            let (y, m, day) = prev;
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let month_days = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let want = match (day < month_days, m < 12) {
                (true, _) => (y, m, day + 1),
                (false, true) => (y, m + 1, 1),
                (false, false) => (y + 1, 1, 1),
            };
            assert_eq!(next, want, "day {d}");
            prev = next;
        }
    }

    fn decode(out: &mut BytesMut) -> (Vec<String>, Vec<Vec<Option<String>>>, String) {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        let mut tag = String::new();
        while let Some(m) = take_message(out, 1 << 20).unwrap_or_else(|e| panic!("{e}")) {
            let mut r = Reader::new(&m.body);
            match m.tag {
                b'T' => {
                    let n = r.i16().unwrap_or(-1);
                    for _ in 0..n {
                        columns.push(r.cstr().unwrap_or("?").to_string());
                        r.bytes(18).unwrap_or_default();
                    }
                }
                b'D' => {
                    let n = r.i16().unwrap_or(-1);
                    let row = (0..n)
                        .map(|_| match r.i32().unwrap_or(-1) {
                            -1 => None,
                            len => Some(String::from_utf8_lossy(r.bytes(len as usize).unwrap_or_default()).into_owned()),
                        })
                        .collect();
                    rows.push(row);
                }
                b'C' => tag = r.cstr().unwrap_or("?").to_string(),
                other => panic!("unexpected message {:?}", other as char),
            }
            assert_eq!(r.remaining(), 0, "trailing bytes in {:?}", m.tag as char);
        }
        assert!(out.is_empty());
        (columns, rows, tag)
    }

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
        let mut out = BytesMut::new();
        write_pool_nodes(&mut out, &rows);
        let (columns, got, tag) = decode(&mut out);
        assert_eq!(columns, POOL_NODES_COLUMNS);
        assert_eq!(tag, "SHOW");
        let want: [[&str; 14]; 3] = [
            ["0", "db1", "5432", "up", "up", "0.333333", "primary", "primary", "12", "false", "0", "", "", "2023-11-14 22:13:20"],
            ["1", "/tmp", "5433", "up", "up", "0.666667", "standby", "standby", "0", "true", "4096", "streaming", "async", "2000-02-29 00:00:00"],
            ["2", "db3", "6432", "down", "down", "0.000000", "unknown", "unknown", "18446744073709551615", "false", "0", "", "", "1970-01-01 00:00:00"],
        ];
        assert_eq!(got.len(), want.len());
        for (row, want) in got.iter().zip(want) {
            let want: Vec<Option<String>> = want.iter().map(|v| Some(v.to_string())).collect();
            assert_eq!(row, &want);
        }
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
        let mut out = BytesMut::new();
        write_health_check_stats(&mut out, &[row]);
        let (columns, rows, tag) = decode(&mut out);
        assert_eq!(columns, HEALTH_CHECK_STATS_COLUMNS);
        assert_eq!(tag, "SHOW");
        let v: Vec<String> = rows[0].iter().map(|c| c.clone().unwrap_or_default()).collect();
        assert_eq!(&v[..6], ["1", "db2", "5433", "down", "unknown", "2025-11-27 03:40:00"]);
        assert_eq!(&v[6..16], ["10", "7", "3", "0", "2", "0.200000", "2", "4", "1", "1.500000"]);
        assert_eq!(v[18], "", "never skipped");
        assert_eq!(v[19], "2025-11-27 03:40:00");
    }

    #[test]
    fn no_nodes_is_an_empty_result() {
        let mut out = BytesMut::new();
        write_pool_nodes(&mut out, &[]);
        let (columns, rows, tag) = decode(&mut out);
        assert_eq!((columns.len(), rows.len(), tag.as_str()), (14, 0, "SHOW"));
    }
}
