//! Configuration: one TOML file, unknown keys rejected with file:line, `validate()` naming the key.
//!
//! Every field's default is stated in its doc comment and in docs/configuration.md.
//! Errors never quote the file's text: a line may hold a password.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::md5::is_md5_hash;
use crate::protocol::scram::ScramVerifier;
pub use crate::watchdog::config::{PeerConfig, QuorumMode, VipConfig, WatchdogConfig};

/// A configuration problem, phrased for an operator: names the file, line and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub rejoin: RejoinConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// `[watchdog]`: membership in a cluster of pgvigil nodes. Default: none (one node).
    #[serde(default)]
    pub watchdog: Option<WatchdogConfig>,
    /// Directory of the config file; relative paths in it resolve against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[proxy]`: the client-facing listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to. Default "127.0.0.1:9999".
    pub listen: String,
    /// Client connections served at once; more get `FATAL 53300`. Default 1000.
    pub max_clients: usize,
    /// Time a client has to finish startup and authentication. Default "10s".
    pub startup_timeout: DurationStr,
    /// On SIGTERM, how long sessions may finish before `FATAL 57P01`. Default "30s".
    pub shutdown_timeout: DurationStr,
    /// Largest message a client may declare, checked before any allocation. Default "256MB".
    pub max_message_size: ByteSize,
    /// Threads serving sessions; 0 means one per CPU core. Default 0. Needs a restart.
    pub worker_threads: usize,
    /// A session idle this long outside a transaction is ended with `FATAL 57P05`;
    /// "0s" means never. Default "0s".
    pub idle_client_timeout: DurationStr,
    /// A session idle this long inside a transaction is ended with `FATAL 25P03` (its
    /// transaction rolls back and its server connections are freed); "0s" means never.
    /// Default "0s".
    pub idle_in_transaction_timeout: DurationStr,
    /// A directory where pgvigil also listens on a Unix-domain socket,
    /// `.s.PGSQL.<port of proxy.listen>`, as PostgreSQL does; relative to the
    /// configuration file. Default: none (TCP only). Needs a restart.
    pub unix_socket_dir: Option<PathBuf>,
    /// Access permissions of that socket, in octal. Default "0777".
    pub unix_socket_permissions: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9999".into(),
            max_clients: 1000,
            startup_timeout: DurationStr(Duration::from_secs(10)),
            shutdown_timeout: DurationStr(Duration::from_secs(30)),
            max_message_size: ByteSize(256 << 20),
            worker_threads: 0,
            idle_client_timeout: DurationStr(Duration::ZERO),
            idle_in_transaction_timeout: DurationStr(Duration::ZERO),
            unix_socket_dir: None,
            unix_socket_permissions: "0777".into(),
        }
    }
}

/// `[pool]`: backend connections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Server connections per (backend, user, database, startup parameters). Default 20.
    pub size: usize,
    /// Idle server connections older than this are closed. Default "10m".
    pub idle_timeout: DurationStr,
    /// How long a client waits for a server connection before an error. Default "5s".
    pub checkout_timeout: DurationStr,
    /// Time allowed to open and authenticate a server connection. Default "5s".
    pub connect_timeout: DurationStr,
    /// Query that resets a server connection before reuse. Default "DISCARD ALL".
    pub reset_query: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            size: 20,
            idle_timeout: DurationStr(Duration::from_secs(600)),
            checkout_timeout: DurationStr(Duration::from_secs(5)),
            connect_timeout: DurationStr(Duration::from_secs(5)),
            reset_query: "DISCARD ALL".into(),
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthMethod {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    #[default]
    ScramSha256,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        })
    }
}

/// `[auth]`: client authentication, access rules, connection limits and the users file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// trust | md5 | scram-sha-256, for every client when there are no `[[auth.hba]]`
    /// rules. Default "scram-sha-256".
    pub method: AuthMethod,
    /// TOML file mapping user to password, md5 hash or SCRAM verifier. Default: none
    /// (then only `trust` works, and backends must not ask for a password).
    pub users_file: Option<PathBuf>,
    /// `[[auth.hba]]`: access rules as in pg_hba.conf, first match wins; when given, they
    /// decide the method instead of `method`. Default: none.
    pub hba: Vec<HbaRule>,
    /// Sessions one user may have at once; 0: no limit. Default 0.
    pub max_connections_per_user: usize,
    /// Sessions on one database at once; 0: no limit. Default 0.
    pub max_connections_per_database: usize,
    /// `[auth.user_limits]`: `user = N` overrides `max_connections_per_user` (0: no limit).
    /// Default: none.
    pub user_limits: BTreeMap<String, usize>,
    /// `[auth.database_limits]`: `database = N` overrides `max_connections_per_database`
    /// (0: no limit). Default: none.
    pub database_limits: BTreeMap<String, usize>,
}

/// One `[[auth.hba]]` rule. Values are checked (and turned into matchers) by
/// [`crate::proxy::access::AccessRules::compile`], so errors can name `auth.hba[i].key`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HbaRule {
    /// "host" | "hostssl" | "hostnossl". Required.
    #[serde(rename = "type")]
    pub conn_type: String,
    /// Database names, "all" or "sameuser". Default "all".
    #[serde(default = "NameList::all")]
    pub database: NameList,
    /// User names or "all". Default "all".
    #[serde(default = "NameList::all")]
    pub user: NameList,
    /// "all", an IP address or a CIDR block (IPv4 or IPv6). Default "all".
    #[serde(default = "all_addresses")]
    pub address: String,
    /// trust | reject | md5 | scram-sha-256 | cert. Required.
    pub method: String,
}

fn all_addresses() -> String {
    "all".into()
}

/// A name or a list of names: `"all"` or `["app", "reporting"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameList(pub Vec<String>);

impl NameList {
    fn all() -> Self {
        NameList(vec!["all".into()])
    }
}

impl<'de> Deserialize<'de> for NameList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = NameList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NameList, E> {
                Ok(NameList(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NameList, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(NameList(names))
            }
        }
        d.deserialize_any(Names)
    }
}

/// `[tls]`: TLS between clients and pgvigil, and between pgvigil and PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain pgvigil presents to clients (leaf first). Default: none (no
    /// TLS: an SSLRequest is answered 'N').
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Default: none.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates for client certificates; with it, a client may present one
    /// (verified against these CAs). Default: none.
    pub ca_file: Option<PathBuf>,
    /// "allow" (TLS when the client asks for it) or "require" (a client without TLS is
    /// refused with FATAL 28000). Default "allow".
    pub client_mode: TlsClientMode,
    /// TLS on every connection pgvigil opens to PostgreSQL, as libpq's `sslmode`:
    /// "disable", "prefer", "require", "verify-ca" or "verify-full". Default "prefer".
    pub backend_tls: BackendTlsMode,
    /// PEM CA certificates that backends' certificates must chain to; required by (and
    /// only used with) "verify-ca" and "verify-full". Default: none.
    pub backend_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsClientMode {
    #[default]
    Allow,
    Require,
}

/// `tls.backend_tls`: libpq's `sslmode` values, with the same meaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendTlsMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server accepts it, else plain TCP.
    #[default]
    Prefer,
    /// TLS, the server's certificate not checked.
    Require,
    /// TLS, the certificate signed by a CA in `backend_ca_file`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the backend's `host`.
    VerifyFull,
}

impl BackendTlsMode {
    /// Whether TLS may not be skipped.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }

    /// Whether the certificate is checked against `backend_ca_file`.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

impl fmt::Display for BackendTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// `[health_check]`: how pgvigil checks backends and finds the primary.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Time between checks of each backend. Default "1s".
    pub interval: DurationStr,
    /// Time one check may take. Default "2s".
    pub timeout: DurationStr,
    /// Role used for checks. Default "postgres".
    pub user: String,
    /// Its password; when unset, the users file's plaintext entry for `user`. Default: unset.
    pub password: Option<String>,
    /// Database the checks connect to. Default "postgres".
    pub database: String,
    /// Failed checks retried this many times (every `retry_delay`) before a backend is
    /// marked down. Default 2.
    pub retries: u32,
    /// Time between those retries. Default "500ms".
    pub retry_delay: DurationStr,
}

impl fmt::Debug for HealthCheckConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheckConfig")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .finish()
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: DurationStr(Duration::from_secs(1)),
            timeout: DurationStr(Duration::from_secs(2)),
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            retries: 2,
            retry_delay: DurationStr(Duration::from_millis(500)),
        }
    }
}

/// `[failover]`: what pgvigil does when the primary is down.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Promote a standby when the primary is confirmed down. Default true.
    pub automatic: bool,
    /// Standbys more than this far behind the primary's last known position are not
    /// promoted. Default "1MB".
    pub max_lag: ByteSize,
    /// Role that promotes and re-points standbys (superuser). Default: `health_check.user`.
    pub user: Option<String>,
    /// Its password. Default: the health-check password.
    pub password: Option<String>,
    /// How long the chosen standby may take to replay what it received. Default "10s".
    pub replay_timeout: DurationStr,
    /// How long promotion may take. Default "60s".
    pub promote_timeout: DurationStr,
    /// How long a statement that needs the primary waits for one during a failover
    /// before it fails. Default "10s".
    pub write_hold_timeout: DurationStr,
    /// How long a switchover waits for transactions open on the primary to end before
    /// it terminates them. Default "5s".
    pub switchover_drain_timeout: DurationStr,
    /// Directory where pgvigil keeps which nodes are fenced, so a restart does not route
    /// to them. Default: unset (not kept).
    pub state_dir: Option<PathBuf>,
    /// Rejoin a fenced old primary as a standby of the new one as soon as it is back
    /// (needs its `data_dir` on this host or `[rejoin]` commands). Default false.
    pub auto_rejoin: bool,
    /// Directory of pg_ctl, pg_rewind and pg_basebackup. Default: the newest /usr/lib/postgresql/*/bin,
    /// else PATH.
    pub pg_bindir: Option<PathBuf>,
    /// Shell command that promotes the chosen standby instead of `pg_promote()`, with
    /// Pgpool-II's placeholders (%d %h %p %D %m %H %r %R %M %P %N %S %%). Default: unset.
    pub promote_command: Option<String>,
    /// Shell command that re-points a standby to the new primary instead of the built-in
    /// slot + primary_conninfo, with the same placeholders. Default: unset.
    pub follow_command: Option<String>,
}

impl fmt::Debug for FailoverConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverConfig")
            .field("automatic", &self.automatic)
            .field("max_lag", &self.max_lag)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("replay_timeout", &self.replay_timeout)
            .field("promote_timeout", &self.promote_timeout)
            .field("write_hold_timeout", &self.write_hold_timeout)
            .field("switchover_drain_timeout", &self.switchover_drain_timeout)
            .field("state_dir", &self.state_dir)
            .field("auto_rejoin", &self.auto_rejoin)
            .field("pg_bindir", &self.pg_bindir)
            .field("promote_command", &self.promote_command.as_ref().map(|_| "<set>"))
            .field("follow_command", &self.follow_command.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            automatic: true,
            max_lag: ByteSize(1 << 20),
            user: None,
            password: None,
            replay_timeout: DurationStr(Duration::from_secs(10)),
            promote_timeout: DurationStr(Duration::from_secs(60)),
            write_hold_timeout: DurationStr(Duration::from_secs(10)),
            switchover_drain_timeout: DurationStr(Duration::from_secs(5)),
            state_dir: None,
            auto_rejoin: false,
            pg_bindir: None,
            promote_command: None,
            follow_command: None,
        }
    }
}

/// `[admin]`: the HTTP API (node states, operations, health endpoints).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener; empty: no listener. Default "127.0.0.1:9898".
    pub listen: String,
    /// File holding the bearer token that requests changing state must carry. Default:
    /// unset (such requests are refused).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain of the admin listener; with `key_file`, it serves HTTPS
    /// only. Default: unset (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Default: unset.
    pub key_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9898".into(), token_file: None, cert_file: None, key_file: None }
    }
}

impl AdminConfig {
    pub fn enabled(&self) -> bool {
        !self.listen.trim().is_empty()
    }
}

/// `[rejoin]`: how a fenced old primary is made a standby of the new primary. Each node
/// operation runs its command when one is set, else the built-in one on the node's
/// `data_dir` on this host.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejoinConfig {
    /// When pg_rewind fails, take a fresh base backup from the new primary instead (the
    /// old data directory is kept aside). Default false.
    pub allow_reclone: bool,
    /// Shell command that stops the node, with the failover placeholders. Default: unset
    /// (built-in `pg_ctl stop`).
    pub stop_command: Option<String>,
    /// Shell command that starts the node as a standby. Default: unset (built-in `pg_ctl start`).
    pub start_command: Option<String>,
    /// Shell command that rewinds the node from the new primary and configures it as its
    /// standby (`pg_rewind -R`, `primary_slot_name`). Default: unset (built-in).
    pub rewind_command: Option<String>,
    /// Shell command that replaces the node's data with a base backup of the new primary,
    /// configured as its standby. Default: unset (built-in `pg_basebackup`).
    pub basebackup_command: Option<String>,
    /// How long one node operation (stop, rewind, base backup, start, streaming) may take.
    /// Default "300s".
    pub timeout: DurationStr,
}

impl fmt::Debug for RejoinConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |c: &Option<String>| c.as_ref().map(|_| "<set>");
        f.debug_struct("RejoinConfig")
            .field("allow_reclone", &self.allow_reclone)
            .field("stop_command", &set(&self.stop_command))
            .field("start_command", &set(&self.start_command))
            .field("rewind_command", &set(&self.rewind_command))
            .field("basebackup_command", &set(&self.basebackup_command))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for RejoinConfig {
    fn default() -> Self {
        Self {
            allow_reclone: false,
            stop_command: None,
            start_command: None,
            rewind_command: None,
            basebackup_command: None,
            timeout: DurationStr(Duration::from_secs(300)),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax; the `RUST_LOG` environment variable wins. Default "info".
    pub level: String,
    /// "text" or "json". Default "text".
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

/// `[routing]`: where statements run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Send reads to hot standbys (and the primary) by weight. Off: everything goes
    /// to the primary. Default true.
    pub load_balance: bool,
    /// "session": the read node is chosen once per session; "statement": for every
    /// statement outside a transaction. Default "session".
    pub granularity: Granularity,
    /// Where reads go after a write: "transaction" | "trans_transaction" | "session" |
    /// "dml_adaptive" | "off". Default "transaction".
    pub after_write: AfterWrite,
    /// Standbys more than this many bytes of WAL behind the primary get no reads;
    /// "0" disables the check. Default "16MB".
    pub max_lag: ByteSize,
    /// Standbys whose replay is this far behind get no reads; "0" disables. Default "5s".
    pub max_lag_time: DurationStr,
    /// How often the monitor samples the WAL positions that lag is computed from.
    /// Default "1s".
    pub lag_check_interval: DurationStr,
    /// Among eligible nodes, prefer the one with the least lag over weights. Default false.
    pub prefer_lower_lag: bool,
    /// After a session commits a write, its reads go only to standbys that have
    /// replayed that commit (else to the primary). Default false.
    pub causal_reads: bool,
    /// Regexes of functions that never write, overriding the catalog. Default [].
    pub read_only_functions: Vec<String>,
    /// Regexes of functions that write, overriding the catalog. Default [].
    pub write_functions: Vec<String>,
    /// Query texts whose classification is cached. Default 10000.
    pub classifier_cache_size: usize,
    /// `[[routing.redirect]]`: rules that send a session's reads somewhere; first match wins.
    pub redirect: Vec<RedirectRule>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            load_balance: true,
            granularity: Granularity::Session,
            after_write: AfterWrite::Transaction,
            max_lag: ByteSize(16 << 20),
            max_lag_time: DurationStr(Duration::from_secs(5)),
            lag_check_interval: DurationStr(Duration::from_secs(1)),
            prefer_lower_lag: false,
            causal_reads: false,
            read_only_functions: Vec::new(),
            write_functions: Vec::new(),
            classifier_cache_size: 10_000,
            redirect: Vec::new(),
        }
    }
}

/// `routing.granularity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Session,
    Statement,
}

/// `routing.after_write`, as Pgpool-II's `disable_load_balance_on_write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterWrite {
    /// After a write in a transaction, its later reads go to the primary.
    Transaction,
    /// As `Transaction`; also, once a transaction wrote, reads in every later
    /// transaction of the session go to the primary.
    TransTransaction,
    /// After any write, every later read of the session goes to the primary.
    Session,
    /// In a transaction, reads of tables it wrote go to the primary.
    DmlAdaptive,
    /// Reads stay balanced after writes.
    Off,
}

/// One `[[routing.redirect]]` rule: every given pattern must match (regexes, unanchored).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectRule {
    pub application_name: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// "primary", "standby" or a backend name.
    pub to: String,
}

/// `[[backends]]`: one PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name, used in logs and the admin interface. Required.
    pub name: String,
    /// Host name or IP address. Required.
    pub host: String,
    /// Port. Default 5432.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Share of reads relative to the other backends' weights; 0 sends it no reads.
    /// Default 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Never promote this backend. Default false.
    #[serde(default)]
    pub no_failover: bool,
    /// Among equally advanced standbys, the higher priority is promoted. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Its data directory, when it is on this host: lets pgvigil stop, rewind (or re-clone)
    /// and start it to rejoin it without `[rejoin]` commands. Default: unset.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

fn default_weight() -> f64 {
    1.0
}

fn default_pg_port() -> u16 {
    5432
}

/// A duration written as "500ms", "2s", "10m", "1h" (or "1d").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl DurationStr {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Parses "250ms", "2s", "1.5s", "10m", "1h", "1d"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. \"500ms\", \"2s\", \"10m\""))?;
    let secs = match unit.trim() {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}: use us, ms, s, m, h or d")),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = if self.0.subsec_nanos() % 1_000_000 != 0 {
            format!("{}us", self.0.as_micros())
        } else if ms % 1000 != 0 {
            format!("{ms}ms")
        } else {
            format!("{}s", ms / 1000)
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(DurationStr).map_err(serde::de::Error::custom)
    }
}

/// A size written as "16MB", "512kB", "1GB" (1024-based, as PostgreSQL) or a byte count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ByteSize(pub u64);

/// Parses "16MB", "512kB", "1GB", "100B" or a bare byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: expected e.g. \"16MB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" => 1 << 40,
        other => return Err(format!("invalid size unit {other:?} in {s:?}: use B, kB, MB, GB or TB")),
    };
    value.checked_mul(mult).ok_or_else(|| format!("size {s:?} is out of range"))
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let text = match n {
            0 => "0".to_string(),
            n if n % (1 << 30) == 0 => format!("{}GB", n >> 30),
            n if n % (1 << 20) == 0 => format!("{}MB", n >> 20),
            n if n % (1 << 10) == 0 => format!("{}kB", n >> 10),
            n => format!("{n}B"),
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Formats a TOML error as "file:line:col: message" without quoting the file's text.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let location = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{}:{line}:{col}", path.display())
        }
        None => path.display().to_string(),
    };
    ConfigError(format!("{location}: {}", e.message().trim_end()))
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let mut config = Self::parse(path, &text)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates the file of a `pgvigil witness`: only `[watchdog]` (required,
    /// without `[watchdog.vip]`) and `[log]` are used; other sections are ignored.
    pub fn load_witness(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let mut config = Self::parse(path, &text)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate_log()?;
        match &config.watchdog {
            Some(w) => w.validate(&config.base_dir, true)?,
            None => return err(format!("{}: a witness needs a [watchdog] section", path.display())),
        }
        Ok(config)
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return err(format!("log.format: {:?} is not \"text\" or \"json\"", self.log.format));
        }
        Ok(())
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| toml_error(path, text, &e))
    }

    /// Checks what serde cannot: values that parse but make no sense, named by key; then
    /// reads the files the configuration names (TLS, users file, watchdog key).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()?;
        self.check_files()
    }

    /// The checks of [`validate`](Self::validate) that read no file.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.proxy.listen.parse::<SocketAddr>().is_err() {
            return err(format!("proxy.listen: {:?} is not an address:port such as \"127.0.0.1:9999\"", self.proxy.listen));
        }
        if self.proxy.max_clients == 0 {
            return err("proxy.max_clients must be at least 1");
        }
        if self.proxy.startup_timeout.0.is_zero() {
            return err("proxy.startup_timeout must be greater than 0");
        }
        if self.proxy.max_message_size.0 < 1024 || self.proxy.max_message_size.0 > (1 << 30) {
            return err("proxy.max_message_size must be between 1kB and 1GB");
        }
        if self.unix_socket_mode().is_none() {
            return err(format!(
                "proxy.unix_socket_permissions: {:?} is not an octal mode between 0000 and 0777, such as \"0770\"",
                self.proxy.unix_socket_permissions
            ));
        }
        if self.proxy.unix_socket_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return err("proxy.unix_socket_dir: give a directory, or leave the key out for TCP only");
        }
        if self.proxy.worker_threads > 1024 {
            return err("proxy.worker_threads must be between 0 (one per CPU core) and 1024");
        }
        if self.pool.size == 0 {
            return err("pool.size must be at least 1");
        }
        if self.pool.checkout_timeout.0.is_zero() {
            return err("pool.checkout_timeout must be greater than 0");
        }
        if self.pool.connect_timeout.0.is_zero() {
            return err("pool.connect_timeout must be greater than 0");
        }
        if self.admin.enabled() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return err(format!("admin.listen: {:?} is not an address:port such as \"127.0.0.1:9898\" (empty: no admin listener)", self.admin.listen));
        }
        if self.rejoin.timeout.0.is_zero() {
            return err("rejoin.timeout must be greater than 0");
        }
        if self.health_check.interval.0.is_zero() || self.health_check.timeout.0.is_zero() {
            return err("health_check.interval and health_check.timeout must be greater than 0");
        }
        self.validate_log()?;
        if self.backends.is_empty() {
            return err("backends: at least one [[backends]] entry is required");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.name.is_empty() || !b.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return err(format!("backends[{i}].name: {:?} must be non-empty letters, digits, '_' or '-'", b.name));
            }
            if !seen.insert(&b.name) {
                return err(format!("backends[{i}].name: {:?} is used twice", b.name));
            }
            if b.host.is_empty() {
                return err(format!("backends[{i}].host must not be empty"));
            }
            if b.port == 0 {
                return err(format!("backends[{i}].port must not be 0"));
            }
            if !(b.weight.is_finite() && b.weight >= 0.0) {
                return err(format!("backends[{i}].weight must be a number ≥ 0"));
            }
        }
        self.validate_routing()?;
        if let Some(w) = &self.watchdog {
            w.check(false)?;
        }
        crate::proxy::access::AccessRules::compile(&self.auth.hba, &self.tls, self.proxy.unix_socket_dir.is_some())?;
        if let (Some((key, method, _)), None) = (self.password_methods().first(), &self.auth.users_file) {
            return err(format!("auth.users_file is required when {key} is \"{method}\""));
        }
        Ok(())
    }

    /// The password methods in use: (key, method, the users they are for; None: all).
    fn password_methods(&self) -> Vec<(String, String, Option<&[String]>)> {
        if self.auth.hba.is_empty() {
            return match self.auth.method {
                AuthMethod::Trust => Vec::new(),
                m => vec![("auth.method".into(), m.to_string(), None)],
            };
        }
        let hba = self.auth.hba.iter().enumerate();
        hba.filter(|(_, r)| r.method == "md5" || r.method == "scram-sha-256")
            .map(|(i, r)| {
                let users = (!r.user.0.iter().any(|u| u == "all")).then_some(r.user.0.as_slice());
                (format!("auth.hba[{i}].method"), r.method.clone(), users)
            })
            .collect()
    }

    fn check_files(&self) -> Result<(), ConfigError> {
        if let Some(w) = &self.watchdog {
            w.load_key(&self.base_dir)?;
        }
        crate::tls::load_server(self)?;
        crate::tls::backend::BackendTls::load(self)?;
        crate::tls::load_admin(self)?;
        if let Some(path) = self.users_file_path() {
            UsersFile::load(&path)?;
        }
        Ok(())
    }

    fn validate_routing(&self) -> Result<(), ConfigError> {
        let r = &self.routing;
        if r.lag_check_interval.0.is_zero() {
            return err("routing.lag_check_interval must be greater than 0");
        }
        if r.classifier_cache_size == 0 {
            return err("routing.classifier_cache_size must be at least 1");
        }
        crate::router::FunctionPolicy::new(&r.read_only_functions, &r.write_functions).map_err(ConfigError)?;
        for (i, rule) in r.redirect.iter().enumerate() {
            let patterns = [("application_name", &rule.application_name), ("database", &rule.database), ("user", &rule.user)];
            if patterns.iter().all(|(_, p)| p.is_none()) {
                return err(format!("routing.redirect[{i}]: give at least one of application_name, database, user"));
            }
            for (key, pattern) in patterns {
                if let Some(p) = pattern {
                    regex::Regex::new(p).map_err(|e| ConfigError(format!("routing.redirect[{i}].{key}: bad regex {p:?}: {e}")))?;
                }
            }
            if rule.to != "primary" && rule.to != "standby" && !self.backends.iter().any(|b| b.name == rule.to) {
                return err(format!(
                    "routing.redirect[{i}].to: {:?} is not \"primary\", \"standby\" or a backend name",
                    rule.to
                ));
            }
        }
        Ok(())
    }

    /// `proxy.unix_socket_permissions` as a mode; `None` when it is not octal up to 0777.
    pub fn unix_socket_mode(&self) -> Option<u32> {
        let p = &self.proxy.unix_socket_permissions;
        u32::from_str_radix(p, 8).ok().filter(|m| *m <= 0o777 && !p.is_empty() && p.len() <= 4)
    }

    /// The listen address, already checked by `validate`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.proxy.listen.parse().map_err(|_| ConfigError(format!("proxy.listen: {:?} is not an address", self.proxy.listen)))
    }

    /// `failover.state_dir`, resolved against the config file's directory.
    /// `admin.token_file`, resolved against the config file's directory.
    pub fn admin_token_file(&self) -> Option<PathBuf> {
        self.admin.token_file.as_ref().map(|p| if p.is_absolute() { p.clone() } else { self.base_dir.join(p) })
    }

    pub fn state_dir(&self) -> Option<PathBuf> {
        self.failover.state_dir.as_ref().map(|p| if p.is_absolute() { p.clone() } else { self.base_dir.join(p) })
    }

    /// A path from the configuration, resolved against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The users file path, resolved against the config file's directory.
    pub fn users_file_path(&self) -> Option<PathBuf> {
        self.auth.users_file.as_ref().map(|p| if p.is_absolute() { p.clone() } else { self.base_dir.join(p) })
    }

    /// Loads the users file, or an empty one when none is configured.
    pub fn load_users(&self) -> Result<UsersFile, ConfigError> {
        match self.users_file_path() {
            Some(p) => UsersFile::load(&p),
            None => Ok(UsersFile::default()),
        }
    }

    /// The health-check password: explicit, else the users file's plaintext entry.
    pub fn health_check_password(&self, users: &UsersFile) -> Option<String> {
        self.health_check.password.clone().or_else(|| match users.get(&self.health_check.user) {
            Some(UserSecret::Plain(p)) => Some(p.clone()),
            _ => None,
        })
    }
}

/// What the users file holds for one user.
#[derive(Clone)]
pub enum UserSecret {
    /// A plaintext password.
    Plain(String),
    /// "md5" + md5(password || user), as in pg_authid.
    Md5(String),
    /// A SCRAM-SHA-256 verifier, as in pg_authid.
    Scram(ScramVerifier),
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserSecret::Plain(_) => "Plain(<redacted>)",
            UserSecret::Md5(_) => "Md5(<redacted>)",
            UserSecret::Scram(_) => "Scram(<redacted>)",
        })
    }
}

/// The users file: `alice = "secret"`, `bob = "md5…"`, `carol = "SCRAM-SHA-256$4096:…"`.
#[derive(Debug, Clone, Default)]
pub struct UsersFile {
    pub entries: BTreeMap<String, UserSecret>,
}

impl UsersFile {
    /// Reads a users file; errors name file:line and never quote the secret.
    pub fn load(path: &Path) -> Result<UsersFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read users file: {e}", path.display())))?;
        Self::parse(path, &text)
    }

    /// Parses users-file text; `path` only names the source in errors.
    pub fn parse(path: &Path, text: &str) -> Result<UsersFile, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let mut entries = BTreeMap::new();
        for (user, value) in table {
            let line = text
                .lines()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with(&format!("{user} ")) || l.starts_with(&format!("{user}=")) || l.starts_with(&format!("\"{user}\""))
                })
                .map_or(String::new(), |n| format!(":{}", n + 1));
            let Some(secret) = value.as_str() else {
                return err(format!("{}{line}: user {user:?}: the value must be a string", path.display()));
            };
            let parsed = if secret.starts_with("SCRAM-SHA-256$") {
                match ScramVerifier::parse(secret) {
                    Ok(v) => UserSecret::Scram(v),
                    Err(_) => {
                        return err(format!("{}{line}: user {user:?}: malformed SCRAM-SHA-256 verifier", path.display()))
                    }
                }
            } else if is_md5_hash(secret) {
                UserSecret::Md5(secret.to_string())
            } else if secret.is_empty() {
                return err(format!("{}{line}: user {user:?}: empty password", path.display()));
            } else {
                UserSecret::Plain(secret.to_string())
            };
            entries.insert(user, parsed);
        }
        Ok(UsersFile { entries })
    }

    pub fn get(&self, user: &str) -> Option<&UserSecret> {
        self.entries.get(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(Path::new("pgvigil.toml"), text)?;
        c.validate_without_files()?;
        Ok(c)
    }

    impl Config {
        fn validate_without_files(&self) -> Result<(), ConfigError> {
            let mut c = self.clone();
            c.auth.users_file = None;
            c.auth.method = AuthMethod::Trust;
            c.validate()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:9999");
        assert_eq!(c.proxy.max_clients, 1000);
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.pool.checkout_timeout.get(), Duration::from_secs(5));
        assert_eq!(c.pool.idle_timeout.get(), Duration::from_secs(600));
        assert_eq!(c.auth.method, AuthMethod::ScramSha256);
        assert_eq!(c.backends[0].port, 5432);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = format!("{MINIMAL}\n[pool]\nsize = 5\nsizee = 6\n");
        let e = Config::parse(Path::new("/etc/pgvigil.toml"), &text).unwrap_err().to_string();
        assert!(e.starts_with("/etc/pgvigil.toml:7:1:"), "{e}");
        assert!(e.contains("sizee"), "{e}");
    }

    #[test]
    fn errors_do_not_quote_secrets() {
        let text = format!("{MINIMAL}[health_check]\npassword = \"hunter2\"\nbogus = 1\n");
        let e = Config::parse(Path::new("c.toml"), &text).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let text = format!("{MINIMAL}[health_check]\npassword = 42\n");
        let e = Config::parse(Path::new("c.toml"), &text).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:5:"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("512kB").unwrap(), 512 << 10);
        assert!(parse_size("99999999999999TB").is_err());
        let e = parse(&format!("{MINIMAL}[pool]\ncheckout_timeout = \"5 fortnights\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("pgvigil.toml:5:"), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let e = parse("[proxy]\nlisten = \"nope\"\n[[backends]]\nname=\"a\"\nhost=\"h\"\n").unwrap_err().to_string();
        assert!(e.starts_with("proxy.listen"), "{e}");
        let e = parse("").unwrap_err().to_string();
        assert!(e.starts_with("backends"), "{e}");
        let e = parse(&format!("{MINIMAL}[[backends]]\nname=\"pg0\"\nhost=\"h\"\n")).unwrap_err().to_string();
        assert!(e.contains("backends[1].name"), "{e}");
        let e = parse(&format!("{MINIMAL}[pool]\nsize = 0\n")).unwrap_err().to_string();
        assert!(e.starts_with("pool.size"), "{e}");
        let c = Config::parse(Path::new("x.toml"), MINIMAL).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.users_file"), "{e}");
    }

    #[test]
    fn access_rules_and_limits() {
        let text = format!(
            "{MINIMAL}[auth]\nmax_connections_per_user = 5\n[auth.user_limits]\nalice = 2\n\n\
             [[auth.hba]]\ntype = \"host\"\nuser = [\"alice\", \"bob\"]\naddress = \"10.0.0.0/8\"\nmethod = \"trust\"\n\n\
             [[auth.hba]]\ntype = \"host\"\ndatabase = \"app\"\nmethod = \"reject\"\n"
        );
        let c = Config::parse(Path::new("c.toml"), &text).unwrap();
        // Only trust and reject rules: no users file needed, whatever auth.method says.
        c.validate().unwrap();
        assert_eq!(c.auth.hba[0].user, NameList(vec!["alice".into(), "bob".into()]));
        assert_eq!((c.auth.hba[1].database.0[0].as_str(), c.auth.hba[1].user.0[0].as_str()), ("app", "all"));
        assert_eq!(c.auth.hba[1].address, "all");
        assert_eq!((c.auth.max_connections_per_user, c.auth.max_connections_per_database), (5, 0));
        assert_eq!(c.auth.user_limits.get("alice"), Some(&2));
        let scram = text.replace("\"reject\"", "\"scram-sha-256\"");
        let e = Config::parse(Path::new("c.toml"), &scram).unwrap().validate().unwrap_err().to_string();
        assert_eq!(e, "auth.users_file is required when auth.hba[1].method is \"scram-sha-256\"");
        let e = Config::parse(Path::new("c.toml"), &text.replace("user = [", "user = 7 #")).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:11:") && e.contains("a name or a list of names"), "{e}");
        let e = Config::parse(Path::new("c.toml"), &text.replace("address", "adress")).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:12:") && e.contains("adress"), "{e}");
        let e = Config::parse(Path::new("c.toml"), &text.replace("alice = 2", "alice = -1")).unwrap_err().to_string();
        assert!(e.starts_with("c.toml:7:"), "{e}");
    }

    #[test]
    fn rejoin_defaults_and_commands() {
        let c = parse(MINIMAL).unwrap();
        assert!(!c.rejoin.allow_reclone);
        assert_eq!(c.rejoin.timeout.get(), Duration::from_secs(300));
        assert!(c.rejoin.stop_command.is_none() && c.rejoin.basebackup_command.is_none());
        let text = format!(
            "{MINIMAL}[rejoin]\nallow_reclone = true\nstop_command = \"ssh %h stop PGPASSWORD=x\"\nrewind_command = \"r\"\ntimeout = \"10m\"\n"
        );
        let c = parse(&text).unwrap();
        assert!(c.rejoin.allow_reclone);
        assert_eq!(c.rejoin.stop_command.as_deref(), Some("ssh %h stop PGPASSWORD=x"));
        assert_eq!(c.rejoin.timeout.get(), Duration::from_secs(600));
        assert!(!format!("{c:?}").contains("PGPASSWORD"), "commands are not shown");
        let e = parse(&format!("{MINIMAL}[rejoin]\nallow_reclone = \"yes\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("pgvigil.toml:5:"), "{e}");
        let e = parse(&format!("{MINIMAL}[rejoin]\nstop = \"x\"\n")).unwrap_err().to_string();
        assert!(e.contains("stop"), "{e}");
        let e = parse(&format!("{MINIMAL}[rejoin]\ntimeout = \"0s\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("rejoin.timeout"), "{e}");
    }

    #[test]
    fn users_file_kinds() {
        let text = "alice = \"s3cret\"\nbob = \"md5d9ba3ab5e5e9e4a3c0b4c7c1c0e5a1f2\"\n";
        let u = UsersFile::parse(Path::new("users.toml"), text).unwrap();
        assert!(matches!(u.get("alice"), Some(UserSecret::Plain(p)) if p == "s3cret"));
        assert!(matches!(u.get("bob"), Some(UserSecret::Md5(_))));
        let e = UsersFile::parse(Path::new("users.toml"), "alice = \"x\"\ncarol = \"SCRAM-SHA-256$bad\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("users.toml:2:"), "{e}");
        assert!(!e.contains("bad\""), "{e}");
        assert!(!format!("{:?}", u).contains("s3cret"));
    }

    #[test]
    fn durations_and_sizes_serialize_as_they_are_written() {
        let d = |s: &str| serde_json::to_value(DurationStr(parse_duration(s).unwrap())).unwrap();
        assert_eq!(d("500ms"), "500ms");
        assert_eq!(d("2s"), "2s");
        assert_eq!(d("10m"), "600s");
        assert_eq!(d("1.5ms"), "1500us");
        let b = |s: &str| serde_json::to_value(ByteSize(parse_size(s).unwrap())).unwrap();
        assert_eq!(b("16MB"), "16MB");
        assert_eq!(b("512kB"), "512kB");
        assert_eq!(b("1000"), "1000B");
        for text in ["500ms", "2s", "1500us"] {
            assert_eq!(parse_duration(text).map(|x| d(text) == serde_json::to_value(DurationStr(x)).unwrap()), Ok(true));
        }
    }
}
