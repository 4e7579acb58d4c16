//! SHOW POOL_POOLS (one row per server connection pgvigil holds) and SHOW POOL_VERSION.
//!
//! Pgpool-II lists, per child process, per cached-connection slot, per backend; a
//! pgvigil session plays the child process (it holds at most one connection per
//! backend) and connections idle in a pool are the cached ones without a client.

use super::{utc_timestamp, utc_timestamp_or_empty, Table};
use crate::pool::{Activity, PooledConn};

/// Columns of Pgpool-II 4.3's `SHOW POOL_POOLS`, in order.
pub const POOL_POOLS_COLUMNS: [&str; 17] = [
    "pool_pid",
    "start_time",
    "client_connection_count",
    "pool_id",
    "backend_id",
    "database",
    "username",
    "backend_connection_time",
    "client_connection_time",
    "client_disconnection_time",
    "client_idle_duration",
    "majorversion",
    "minorversion",
    "pool_counter",
    "pool_backendpid",
    "pool_connected",
    "status",
];

/// `pool_pid`: the pid pgvigil gave the session's client (0 when idle in the pool);
/// `start_time`: when that client connected; `client_connection_count`: sessions the
/// connection served; `pool_id`: its pool's number; `pool_counter`: checkouts of that
/// pool; `client_idle_duration`: 0 (pgvigil has no client idle limit).
pub fn pool_pools_table(conns: &[PooledConn]) -> Table {
    let rows = conns
        .iter()
        .map(|c| {
            let status = match c.activity {
                Activity::InPool => "Wait for connection",
                Activity::Executing => "Execute command",
                Activity::Idle => "Idle",
                Activity::IdleInTransaction => "Idle in transaction",
            };
            vec![
                c.session.map_or(0, |s| s.0).to_string(),
                utc_timestamp_or_empty(c.session.map(|s| s.1)),
                c.checkouts.to_string(),
                c.pool_id.to_string(),
                c.backend.to_string(),
                c.database.clone(),
                c.user.clone(),
                utc_timestamp(c.opened),
                utc_timestamp_or_empty(c.last_lent),
                utc_timestamp_or_empty(c.last_returned),
                "0".to_string(),
                "3".to_string(),
                "0".to_string(),
                c.pool_checkouts.to_string(),
                c.server_pid.to_string(),
                u8::from(c.session.is_some()).to_string(),
                status.to_string(),
            ]
        })
        .collect();
    Table { columns: &POOL_POOLS_COLUMNS, rows }
}

pub const VERSION_COLUMNS: [&str; 1] = ["pool_version"];

/// "pgvigil 0.1.0 (compatible with Pgpool-II 4.x SHOW commands)".
pub fn version_table() -> Table {
    let version = format!("pgvigil {} (compatible with Pgpool-II 4.x SHOW commands)", env!("CARGO_PKG_VERSION"));
    Table { columns: &VERSION_COLUMNS, rows: vec![vec![version]] }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, written};
    use super::*;

    fn conn(server_pid: i32) -> PooledConn {
        PooledConn {
            backend: 1,
            user: "app".into(),
            database: "shop".into(),
            pool_id: 3,
            server_pid,
            opened: at(1_700_000_000),
            checkouts: 2,
            pool_checkouts: 9,
            session: Some((4242, at(1_700_000_060))),
            last_lent: Some(at(1_700_000_061)),
            last_returned: Some(at(1_700_000_030)),
            activity: Activity::Executing,
        }
    }

    #[test]
    fn pool_pools_as_pgpool_prints_them() {
        let idle = PooledConn { session: None, activity: Activity::InPool, backend: 0, checkouts: 1, ..conn(77) };
        let fresh = PooledConn { last_returned: None, activity: Activity::Idle, ..conn(78) };
        let in_tx = PooledConn { activity: Activity::IdleInTransaction, ..conn(79) };
        let got = written(&pool_pools_table(&[idle, conn(80), fresh, in_tx]), &POOL_POOLS_COLUMNS);
        let want: [[&str; 17]; 4] = [
            ["0", "", "1", "3", "0", "shop", "app", "2023-11-14 22:13:20", "2023-11-14 22:14:21", "2023-11-14 22:13:50", "0", "3", "0", "9", "77", "0", "Wait for connection"],
            ["4242", "2023-11-14 22:14:20", "2", "3", "1", "shop", "app", "2023-11-14 22:13:20", "2023-11-14 22:14:21", "2023-11-14 22:13:50", "0", "3", "0", "9", "80", "1", "Execute command"],
            ["4242", "2023-11-14 22:14:20", "2", "3", "1", "shop", "app", "2023-11-14 22:13:20", "2023-11-14 22:14:21", "", "0", "3", "0", "9", "78", "1", "Idle"],
            ["4242", "2023-11-14 22:14:20", "2", "3", "1", "shop", "app", "2023-11-14 22:13:20", "2023-11-14 22:14:21", "2023-11-14 22:13:50", "0", "3", "0", "9", "79", "1", "Idle in transaction"],
        ];
        assert_eq!(got, want);
        assert!(written(&pool_pools_table(&[]), &POOL_POOLS_COLUMNS).is_empty());
    }

    #[test]
    fn version_names_pgvigil() {
        let got = written(&version_table(), &VERSION_COLUMNS);
        assert_eq!(got, [[format!("pgvigil {} (compatible with Pgpool-II 4.x SHOW commands)", env!("CARGO_PKG_VERSION"))]]);
    }
}
