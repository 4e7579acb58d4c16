//! Pgpool-II's SQL SHOW commands, answered by pgvigil on the proxy port with Pgpool-II
//! 4.3's columns in its order, so its tools and scripts keep working: `SHOW POOL_NODES`,
//! `POOL_HEALTH_CHECK_STATS`, `POOL_BACKEND_STATS`, `POOL_POOLS`, `POOL_VERSION`, also
//! as `PGPOOL SHOW …`. Rows are built from shared state into a [`Table`]; writing it is
//! I/O-free (protocol messages appended to a buffer).

mod nodes;
mod pools;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

pub use nodes::{
    backend_stats_table, health_check_stats_table, pool_nodes_table, BackendStatsRow, HealthCheckRow, PoolNodeRow,
    BACKEND_STATS_COLUMNS, HEALTH_CHECK_STATS_COLUMNS, POOL_NODES_COLUMNS,
};
pub use pools::{pool_pools_table, version_table, POOL_POOLS_COLUMNS, VERSION_COLUMNS};

use super::Shared;
use crate::monitor::Role;
use crate::protocol::backend::{
    write_command_complete, write_data_row, write_text_row_description, write_text_row_description_in, PgError,
    Severity,
};
use crate::protocol::sqlstate;

/// The SHOW commands pgvigil answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    PoolNodes,
    HealthCheckStats,
    BackendStats,
    Pools,
    Version,
}

impl Show {
    /// The columns of its answer.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Show::PoolNodes => &POOL_NODES_COLUMNS,
            Show::HealthCheckStats => &HEALTH_CHECK_STATS_COLUMNS,
            Show::BackendStats => &BACKEND_STATS_COLUMNS,
            Show::Pools => &POOL_POOLS_COLUMNS,
            Show::Version => &VERSION_COLUMNS,
        }
    }
}

/// A statement pgvigil answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// `PGPOOL SHOW name` of anything else: an error, as PostgreSQL's SHOW of an
    /// unknown setting (pgvigil has no Pgpool-II parameters to show).
    UnknownParameter(String),
}

impl Command {
    /// Recognises `SHOW POOL_…` and `PGPOOL SHOW …`: any case, any white space, trailing
    /// semicolons. Anything else (other `SHOW`s included) is `None`: it goes to a server.
    pub fn parse(sql: &str) -> Option<Command> {
        let trimmed = sql.trim().trim_end_matches(';');
        // Cheap test first: most statements are not SHOW.
        let starts = |w: &str| trimmed.get(..w.len()).is_some_and(|s| s.eq_ignore_ascii_case(w));
        if trimmed.len() > 200 || !(starts("show") || starts("pgpool")) {
            return None;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let (name, pgpool) = match words.as_slice() {
            [show, name] if show.eq_ignore_ascii_case("show") => (*name, false),
            [pgpool, show, name] if pgpool.eq_ignore_ascii_case("pgpool") && show.eq_ignore_ascii_case("show") => {
                (*name, true)
            }
            _ => return None,
        };
        let show = match name.to_ascii_lowercase().as_str() {
            "pool_nodes" => Show::PoolNodes,
            "pool_health_check_stats" => Show::HealthCheckStats,
            "pool_backend_stats" => Show::BackendStats,
            "pool_pools" => Show::Pools,
            "pool_version" => Show::Version,
            _ if pgpool => {
                let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(name);
                return Some(Command::UnknownParameter(name.to_string()));
            }
            _ => return None,
        };
        Some(Command::Show(show))
    }
}

/// The error for `PGPOOL SHOW` of a name pgvigil does not know.
pub fn unknown_parameter(name: &str) -> PgError {
    PgError::new(Severity::Error, sqlstate::UNDEFINED_OBJECT, format!("unrecognized configuration parameter \"{name}\""))
        .with_hint("pgvigil answers PGPOOL SHOW pool_nodes, pool_health_check_stats, pool_backend_stats, pool_pools and pool_version; its own settings are in its configuration file.")
}

/// A result pgvigil answers itself: text columns, rows of text values.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// RowDescription, the DataRows and CommandComplete "SHOW" (simple Query; the caller
    /// sends ReadyForQuery).
    pub fn write(&self, out: &mut BytesMut) {
        write_text_row_description(out, self.columns);
        self.write_rows(out, 0, self.rows.len());
        write_command_complete(out, "SHOW");
    }

    /// RowDescription in the result formats a Bind asked for.
    pub fn write_description(&self, out: &mut BytesMut, formats: &[i16]) {
        write_text_row_description_in(out, self.columns, formats);
    }

    /// DataRows `from..to` (clamped).
    pub fn write_rows(&self, out: &mut BytesMut, from: usize, to: usize) {
        let to = to.min(self.rows.len());
        for row in self.rows.get(from..to).unwrap_or_default() {
            let values: Vec<Option<&str>> = row.iter().map(|v| Some(v.as_str())).collect();
            write_data_row(out, &values);
        }
    }
}

/// The answer to `which`, from the cluster view, the counters and the pools.
/// `read_node`: the node the asking session reads from (POOL_NODES' load_balance_node).
pub(super) fn table(shared: &Shared, which: Show, read_node: Option<usize>) -> Table {
    let view = shared.view.borrow().clone();
    let nodes = view.nodes.iter().enumerate();
    // As pgvigil routes: a fenced or detached node is "down" whatever the server says.
    let routed_up = |n: &crate::monitor::NodeState| n.up && !n.fenced && !n.detached;
    match which {
        Show::PoolNodes => {
            let rows: Vec<PoolNodeRow> = nodes
                .map(|(i, n)| {
                    let (hostname, port) = shared.backend_host(i);
                    PoolNodeRow {
                        node_id: i,
                        hostname,
                        port,
                        status: routed_up(n),
                        pg_status: n.up,
                        lb_weight: shared.balancer.share(i),
                        role: n.role,
                        select_cnt: shared.stats.select_cnt(i),
                        load_balance_node: read_node == Some(i),
                        replication_delay: if n.role == Role::Primary { Some(0) } else { view.replay_lag_bytes(i) },
                        replication_state: None,
                        replication_sync_state: None,
                        last_status_change: n.last_change,
                    }
                })
                .collect();
            pool_nodes_table(&rows)
        }
        Show::HealthCheckStats => {
            let rows: Vec<HealthCheckRow> = nodes
                .map(|(i, n)| {
                    let (hostname, port) = shared.backend_host(i);
                    HealthCheckRow {
                        node_id: i,
                        hostname,
                        port,
                        status: routed_up(n),
                        role: n.role,
                        last_status_change: n.last_change,
                        stats: shared.monitor.stats(i).unwrap_or_default(),
                    }
                })
                .collect();
            health_check_stats_table(&rows)
        }
        Show::BackendStats => {
            let rows: Vec<BackendStatsRow> = nodes
                .map(|(i, n)| {
                    let (hostname, port) = shared.backend_host(i);
                    BackendStatsRow {
                        node_id: i,
                        hostname,
                        port,
                        status: routed_up(n),
                        role: n.role,
                        counts: shared.stats.backend_counts(i),
                    }
                })
                .collect();
            backend_stats_table(&rows)
        }
        Show::Pools => pool_pools_table(&shared.pools.connections()),
        Show::Version => version_table(),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Unknown => "unknown",
    }
}

fn up_down(up: bool) -> String {
    if up { "up" } else { "down" }.to_string()
}

/// "YYYY-MM-DD HH:MM:SS" in UTC; times before 1970 print as the epoch.
fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Like [`utc_timestamp`]; unset is empty.
fn utc_timestamp_or_empty(t: Option<SystemTime>) -> String {
    t.map(utc_timestamp).unwrap_or_default()
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
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::frame::{take_message, Reader};

    pub fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Decoded answer: column names, format codes, rows, CommandComplete tag.
    pub struct Decoded {
        pub columns: Vec<String>,
        pub formats: Vec<i16>,
        pub rows: Vec<Vec<Option<String>>>,
        pub tag: String,
    }

    /// Decodes RowDescription, DataRows and CommandComplete; panics on anything else.
    pub fn decode(out: &mut BytesMut) -> Decoded {
        let mut d = Decoded { columns: Vec::new(), formats: Vec::new(), rows: Vec::new(), tag: String::new() };
        while let Some(m) = take_message(out, 1 << 20).unwrap_or_else(|e| panic!("{e}")) {
            let mut r = Reader::new(&m.body);
            match m.tag {
                b'T' => {
                    let n = r.i16().unwrap_or(-1);
                    for _ in 0..n {
                        d.columns.push(r.cstr().unwrap_or("?").to_string());
                        let rest = r.bytes(18).unwrap_or_default();
                        assert_eq!(&rest[6..10], 25i32.to_be_bytes(), "type text");
                        d.formats.push(i16::from_be_bytes([rest[16], rest[17]]));
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
                    d.rows.push(row);
                }
                b'C' => d.tag = r.cstr().unwrap_or("?").to_string(),
                other => panic!("unexpected message {:?}", other as char),
            }
            assert_eq!(r.remaining(), 0, "trailing bytes in {:?}", m.tag as char);
        }
        assert!(out.is_empty());
        d
    }

    /// Writes `table` as for a simple Query, decodes it, checks the columns and the tag,
    /// and gives the rows as strings (no NULLs).
    pub fn written(table: &Table, columns: &[&str]) -> Vec<Vec<String>> {
        let mut out = BytesMut::new();
        table.write(&mut out);
        let d = decode(&mut out);
        assert_eq!(d.columns, columns);
        assert!(d.formats.iter().all(|f| *f == 0));
        assert_eq!(d.tag, "SHOW");
        d.rows
            .into_iter()
            .map(|r| {
                assert_eq!(r.len(), columns.len());
                r.into_iter().map(|v| v.expect("no NULLs")).collect()
            })
            .collect()
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
        assert_eq!(utc_timestamp_or_empty(None), "");
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

    #[test]
    fn commands_in_any_case_with_semicolons_and_the_pgpool_form() {
        let show = |s| Some(Command::Show(s));
        let cases = [
            ("SHOW POOL_NODES", show(Show::PoolNodes)),
            ("show pool_nodes;", show(Show::PoolNodes)),
            ("  Show\tPool_Health_Check_Stats ;; ", show(Show::HealthCheckStats)),
            ("SHOW POOL_BACKEND_STATS", show(Show::BackendStats)),
            ("show pool_pools", show(Show::Pools)),
            ("SHOW pool_version;", show(Show::Version)),
            ("PGPOOL SHOW pool_nodes", show(Show::PoolNodes)),
            ("pgpool show POOL_VERSION;", show(Show::Version)),
            ("Pgpool\n Show pool_backend_stats", show(Show::BackendStats)),
            ("PGPOOL SHOW port", Some(Command::UnknownParameter("port".into()))),
            ("pgpool show \"delegate_IP\";", Some(Command::UnknownParameter("delegate_IP".into()))),
            ("PGPOOL SHOW ALL", Some(Command::UnknownParameter("ALL".into()))),
            // PostgreSQL's own SHOW and anything else go to a server.
            ("SHOW work_mem", None),
            ("SHOW pool_status", None),
            ("SHOW POOL_NODES extra", None),
            ("SHOW", None),
            ("PGPOOL SHOW", None),
            ("PGPOOL SET port = 1", None),
            ("SELECT 'SHOW POOL_NODES'", None),
            ("SHOWPOOL_NODES", None),
            ("shoW", None),
            ("", None),
            ("é", None),
        ];
        for (sql, want) in cases {
            assert_eq!(Command::parse(sql), want, "{sql:?}");
        }
        let long = format!("PGPOOL SHOW {}", "x".repeat(300));
        assert_eq!(Command::parse(&long), None);
    }

    #[test]
    fn unknown_parameter_is_42704() {
        let e = unknown_parameter("port");
        assert_eq!(e.code, "42704");
        assert_eq!(e.message, "unrecognized configuration parameter \"port\"");
    }

    #[test]
    fn rows_and_formats_for_the_extended_protocol() {
        let t = Table { columns: &["a", "b"], rows: vec![vec!["1".into(), "x".into()], vec!["2".into(), "y".into()]] };
        let mut out = BytesMut::new();
        t.write_description(&mut out, &[1]);
        t.write_rows(&mut out, 1, 9);
        let d = decode(&mut out);
        assert_eq!(d.columns, ["a", "b"]);
        assert_eq!(d.formats, [1, 1]);
        assert_eq!(d.rows, [[Some("2".to_string()), Some("y".to_string())]]);
        let mut out = BytesMut::new();
        t.write_description(&mut out, &[0, 1]);
        t.write_rows(&mut out, 5, 9);
        let d = decode(&mut out);
        assert_eq!(d.formats, [0, 1]);
        assert!(d.rows.is_empty());
    }
}
