//! One health check: connect if needed, sample role, WAL and replication in one round trip.

use std::future::Future;
use std::time::{Duration, SystemTime};

use super::{parse_lsn, CheckSettings, ReplicationInfo, ReplicationPeer, Role, Upstream, WalPosition};

/// What one successful check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    pub role: Role,
    pub wal: WalPosition,
    pub repl: ReplicationInfo,
}

/// The check query: role, WAL positions, replay lag and replication facts in one round trip.
///
/// `pg_current_wal_lsn()` fails during recovery, so it is only evaluated on a primary.
/// The lag is zero when replay has reached what was received (`>=`, not `=`: right after
/// a restart the receiver restarts at the start of a segment, behind replay), else the
/// age of the last replayed commit. `pg_stat_replication` is read once and aggregated
/// into parallel arrays (same `ORDER BY`); `pg_stat_wal_receiver` has at most one row.
/// `primary_conninfo` is read through `pg_settings`, which hides it (NULL) from a role
/// that may not see it rather than failing the check.
const CHECK_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     extract(epoch FROM pg_last_xact_replay_timestamp())::float8, \
     (CASE WHEN NOT pg_is_in_recovery() THEN NULL \
           WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0 \
           ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END)::float8, \
     (SELECT timeline_id FROM pg_control_checkpoint()), \
     current_setting('synchronous_standby_names'), \
     r.names, r.states, r.sync_states, \
     (SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'), \
     current_setting('cluster_name'), \
     w.sender_host, w.sender_port, w.status \
     FROM (SELECT array_agg(application_name ORDER BY pid) AS names, \
                  array_agg(state ORDER BY pid) AS states, \
                  array_agg(sync_state ORDER BY pid) AS sync_states \
           FROM pg_stat_replication) r \
     LEFT JOIN pg_stat_wal_receiver w ON true";

/// One way to check a backend: [`PgProbe`] in production, a script in tests.
pub(crate) trait Probe: Send + 'static {
    /// One check, within its own time limit; the error says why it failed.
    fn check(&mut self) -> impl Future<Output = Result<Sample, String>> + Send;
    /// Another probe of the same backend with no state of its own (a new connection),
    /// for an attempt that runs while this one hangs.
    fn fresh(&self) -> Self
    where
        Self: Sized;
}

/// Checks one PostgreSQL backend over a connection kept between checks.
pub(crate) struct PgProbe {
    /// The backend's index in the configuration.
    backend: usize,
    host: String,
    port: u16,
    settings: CheckSettings,
    client: Option<tokio_postgres::Client>,
}

impl PgProbe {
    pub(crate) fn new(backend: usize, host: String, port: u16, settings: CheckSettings) -> Self {
        Self { backend, host, port, settings, client: None }
    }
}

impl Probe for PgProbe {
    fn fresh(&self) -> Self {
        Self::new(self.backend, self.host.clone(), self.port, self.settings.clone())
    }

    async fn check(&mut self) -> Result<Sample, String> {
        let timeout = self.settings.timeout;
        let result = tokio::time::timeout(timeout, check_once(&mut self.client, self.backend, &self.host, self.port, &self.settings)).await;
        let outcome = match result {
            Ok(Ok(sample)) => Ok(sample),
            Ok(Err(e)) => Err(crate::tls::postgres::describe(&e, self.settings.tls.mode())),
            Err(_) => Err(format!("no answer within {timeout:?} (health_check.timeout)")),
        };
        if outcome.is_err() {
            // The next check starts from a fresh connection.
            self.client = None;
        }
        outcome
    }
}

/// Runs one check on `client`, connecting first when there is no open connection.
async fn check_once(
    client: &mut Option<tokio_postgres::Client>,
    backend: usize,
    host: &str,
    port: u16,
    settings: &CheckSettings,
) -> Result<Sample, tokio_postgres::Error> {
    if client.as_ref().is_some_and(|c| c.is_closed()) {
        *client = None;
    }
    let c = match client {
        Some(c) => c,
        None => {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(host).port(port).user(&settings.user).dbname(&settings.database);
            cfg.application_name("pgvigil health check").connect_timeout(settings.timeout);
            if let Some(p) = &settings.password {
                cfg.password(p);
            }
            let tls = settings.tls.postgres(backend, &mut cfg);
            let (c, connection) = cfg.connect(tls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client.insert(c)
        }
    };
    let row = c.query_one(CHECK_QUERY, &[]).await?;
    let in_recovery: bool = row.try_get(0)?;
    let lsn = |i: usize| -> Result<Option<u64>, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<String>>(i)?.as_deref().and_then(parse_lsn))
    };
    let wal = WalPosition {
        current: lsn(1)?,
        receive: lsn(2)?,
        replay: lsn(3)?,
        last_replayed_commit: row
            .try_get::<_, Option<f64>>(4)?
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s)),
        replay_lag_time: row.try_get::<_, Option<f64>>(5)?.map(lag_from_seconds),
    };
    let texts = |i: usize| -> Result<Vec<String>, tokio_postgres::Error> {
        let v = row.try_get::<_, Option<Vec<Option<String>>>>(i)?.unwrap_or_default();
        Ok(v.into_iter().map(Option::unwrap_or_default).collect())
    };
    let mut repl = ReplicationInfo {
        timeline: row.try_get::<_, Option<i32>>(6)?.and_then(|t| u32::try_from(t).ok()),
        ..ReplicationInfo::default()
    };
    if in_recovery {
        let conninfo: Option<String> = row.try_get(11)?;
        let cluster_name: Option<String> = row.try_get(12)?;
        repl.replication_name = conninfo.map(|c| receiver_application_name(&c, cluster_name.as_deref().unwrap_or("")));
        let status: Option<String> = row.try_get(15)?;
        repl.upstream = match status {
            Some(status) => Some(Upstream {
                host: row.try_get::<_, Option<String>>(13)?.unwrap_or_default(),
                port: row.try_get::<_, Option<i32>>(14)?.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                status,
            }),
            None => None,
        };
    } else {
        repl.synchronous_standby_names = row.try_get::<_, Option<String>>(7)?.filter(|s| !s.trim().is_empty());
        let (names, states, syncs) = (texts(8)?, texts(9)?, texts(10)?);
        repl.peers = names
            .into_iter()
            .zip(states)
            .zip(syncs)
            .map(|((application_name, state), sync_state)| ReplicationPeer { application_name, state, sync_state })
            .collect();
    }
    Ok(Sample { role: if in_recovery { Role::Standby } else { Role::Primary }, wal, repl })
}

/// Seconds of lag as the server computed them; a negative value (a commit stamped
/// after the check's `now()`) is no lag.
pub(crate) fn lag_from_seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// The `application_name` a standby's WAL receiver connects with, as PostgreSQL picks it:
/// `application_name` in `primary_conninfo` when set and not empty, else `cluster_name`
/// when not empty, else "walreceiver". (A `PGAPPNAME` in the server's environment would
/// override the last two; it cannot be seen from SQL.)
pub(crate) fn receiver_application_name(primary_conninfo: &str, cluster_name: &str) -> String {
    let from_conninfo = conninfo_params(primary_conninfo)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v);
    match from_conninfo {
        Some(name) if !name.is_empty() => name,
        _ if !cluster_name.is_empty() => cluster_name.to_string(),
        _ => "walreceiver".to_string(),
    }
}

/// The keyword/value pairs of a libpq connection string, in order: either
/// `key=value ...` (values may be single-quoted; backslash escapes) or a
/// `postgresql://` URI's query parameters. `None` when malformed.
fn conninfo_params(conninfo: &str) -> Option<Vec<(String, String)>> {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = conninfo.strip_prefix(scheme) {
            let Some((_, query)) = rest.split_once('?') else { return Some(Vec::new()) };
            return query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((percent_decode(k)?, percent_decode(v)?))
                })
                .collect();
        }
    }
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// `%XX` escapes decoded; `None` when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_seconds() {
        assert_eq!(lag_from_seconds(0.0), Duration::ZERO);
        assert_eq!(lag_from_seconds(1.5), Duration::from_millis(1500));
        assert_eq!(lag_from_seconds(-0.002), Duration::ZERO);
        assert_eq!(lag_from_seconds(f64::NAN), Duration::ZERO);
        assert_eq!(lag_from_seconds(f64::INFINITY), Duration::MAX);
        assert_eq!(lag_from_seconds(1e30), Duration::MAX);
    }

    #[test]
    fn conninfo_keyword_values() {
        let pairs = |s: &str| conninfo_params(s).unwrap_or_else(|| panic!("{s:?} parses"));
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(pairs(""), []);
        assert_eq!(
            pairs("host=127.0.0.1 port = 5433  application_name=pg1 connect_timeout=2"),
            [kv("host", "127.0.0.1"), kv("port", "5433"), kv("application_name", "pg1"), kv("connect_timeout", "2")]
        );
        assert_eq!(
            pairs(r"user='it\'s me' password='a b\\c' application_name='' x=a\ b"),
            [kv("user", "it's me"), kv("password", r"a b\c"), kv("application_name", ""), kv("x", "a b")]
        );
        for bad in ["host", "host 127.0.0.1", "user='unterminated", "user='ends in \\"] {
            assert_eq!(conninfo_params(bad), None, "{bad}");
        }
    }

    #[test]
    fn conninfo_uris() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(conninfo_params("postgresql://u@h:5432/db"), Some(vec![]));
        assert_eq!(
            conninfo_params("postgres://h/db?connect_timeout=2&application_name=my%20standby"),
            Some(vec![kv("connect_timeout", "2"), kv("application_name", "my standby")])
        );
        assert_eq!(conninfo_params("postgresql://h/db?application_name=%zz"), None);
    }

    #[test]
    fn receiver_name_precedence() {
        assert_eq!(receiver_application_name("host=h application_name=pg1", "main"), "pg1");
        assert_eq!(receiver_application_name("host=h application_name='pg 1'", ""), "pg 1");
        assert_eq!(receiver_application_name("application_name=a application_name=b", ""), "b", "the last one wins");
        assert_eq!(receiver_application_name("host=h application_name=''", "main"), "main", "empty is unset");
        assert_eq!(receiver_application_name("host=h", "main"), "main");
        assert_eq!(receiver_application_name("host=h", ""), "walreceiver");
        assert_eq!(receiver_application_name("", ""), "walreceiver");
        assert_eq!(receiver_application_name("postgresql://h/?application_name=s1", ""), "s1");
        assert_eq!(receiver_application_name("host='broken", "main"), "main");
    }
}
