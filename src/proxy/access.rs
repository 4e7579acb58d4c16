//! Access rules (`[[auth.hba]]`), as PostgreSQL's pg_hba.conf: the first rule whose
//! connection type, database, user and address match a client decides how that client
//! authenticates, or that it is refused. No rule matching is a refusal too.

use std::net::IpAddr;

use crate::config::{AuthMethod, ConfigError, HbaRule, TlsConfig};
use crate::protocol::backend::PgError;
use crate::protocol::sqlstate;

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Trust,
    Md5,
    ScramSha256,
    /// A TLS client certificate, verified against `tls.ca_file`, whose CN is the user name.
    Cert,
}

impl From<AuthMethod> for ClientAuth {
    fn from(m: AuthMethod) -> Self {
        match m {
            AuthMethod::Trust => ClientAuth::Trust,
            AuthMethod::Md5 => ClientAuth::Md5,
            AuthMethod::ScramSha256 => ClientAuth::ScramSha256,
        }
    }
}

/// A connection as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The peer's address, IPv4-mapped IPv6 addresses as IPv4; `None` on a Unix-domain
    /// socket.
    pub ip: Option<IpAddr>,
    pub tls: bool,
    pub user: &'a str,
    pub database: &'a str,
}

impl Client<'_> {
    /// The address, or PostgreSQL's "[local]" for a Unix-domain socket.
    pub fn host(&self) -> String {
        self.ip.map_or("[local]".to_string(), |ip| ip.to_string())
    }

    /// PostgreSQL's description of a connection in its pg_hba.conf errors.
    fn describe(&self) -> String {
        let encryption = if self.tls { "SSL encryption" } else { "no encryption" };
        let host = self.host();
        format!("host \"{host}\", user \"{}\", database \"{}\", {encryption}", self.user, self.database)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    /// A Unix-domain socket connection.
    Local,
    /// Any TCP connection.
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    /// A database named like the user.
    SameUser,
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Reject,
    Authenticate(ClientAuth),
}

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `"10.0.0.0/8"`, `"2001:db8::/32"`; a bare address is a /32 (IPv4) or /128 (IPv6).
    /// Bits past the prefix are ignored, as PostgreSQL does.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
            Some(_) => return None,
        };
        Some(Cidr { network, prefix })
    }

    /// True when `ip` is in this network (of the same address family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, a, b) = match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (32, u128::from(u32::from(n)), u128::from(u32::from(a))),
            (IpAddr::V6(n), IpAddr::V6(a)) => (128, u128::from(n), u128::from(a)),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= 128 || a >> shift == b >> shift
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    conn: ConnType,
    databases: Vec<Name>,
    users: Vec<Name>,
    /// `None`: every address.
    address: Option<Cidr>,
    action: Action,
}

impl Rule {
    fn matches(&self, c: &Client) -> bool {
        let conn = match (self.conn, c.ip) {
            (ConnType::Local, ip) => ip.is_none(),
            (_, None) => false,
            (ConnType::Host, _) => true,
            (ConnType::HostSsl, _) => c.tls,
            (ConnType::HostNoSsl, _) => !c.tls,
        };
        let database = self.databases.iter().any(|d| match d {
            Name::All => true,
            Name::SameUser => c.database == c.user,
            Name::Exact(n) => n == c.database,
        });
        let user = self.users.iter().any(|u| matches!(u, Name::All) || matches!(u, Name::Exact(n) if n == c.user));
        conn && database && user && self.address.is_none_or(|a| c.ip.is_some_and(|ip| a.contains(ip)))
    }
}

/// The `[[auth.hba]]` rules in file order.
#[derive(Debug, Clone)]
pub struct AccessRules {
    rules: Vec<Rule>,
}

impl AccessRules {
    /// Checks and compiles `[[auth.hba]]`; `None` when there are no rules. Errors name
    /// `auth.hba[i].key` (`i` counts from 0 in file order).
    /// `unix_socket`: whether pgvigil listens on a Unix-domain socket (`local` rules
    /// need one).
    pub fn compile(rules: &[HbaRule], tls: &TlsConfig, unix_socket: bool) -> Result<Option<AccessRules>, ConfigError> {
        if rules.is_empty() {
            return Ok(None);
        }
        let rules = rules.iter().enumerate().map(|(i, r)| compile_rule(i, r, tls, unix_socket)).collect::<Result<_, _>>()?;
        Ok(Some(AccessRules { rules }))
    }

    /// The method of the first rule that matches `client`, with the rule's index; a
    /// `reject` rule or no match is PostgreSQL's FATAL 28000, and is logged.
    pub fn check(&self, client: &Client) -> Result<(usize, ClientAuth), PgError> {
        let found = self.rules.iter().position(|r| r.matches(client));
        let peer = client.host();
        let (user, database) = (client.user, client.database);
        match found.map(|i| (i, self.rules[i].action)) {
            Some((i, Action::Authenticate(method))) => Ok((i, method)),
            Some((rule, Action::Reject)) => {
                tracing::info!(%peer, user, database, tls = client.tls, rule, "connection rejected by access rule auth.hba[{rule}]");
                Err(refusal(format!("pg_hba.conf rejects connection for {}", client.describe())))
            }
            None => {
                tracing::info!(%peer, user, database, tls = client.tls, "connection rejected: no access rule matches");
                Err(refusal(format!("no pg_hba.conf entry for {}", client.describe())))
            }
        }
    }
}

fn refusal(message: String) -> PgError {
    PgError::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, message)
        .with_hint("pgvigil's access rules ([[auth.hba]] in its configuration) decide who may connect")
}

fn compile_rule(i: usize, r: &HbaRule, tls: &TlsConfig, unix_socket: bool) -> Result<Rule, ConfigError> {
    let fail = |key: &str, why: String| Err(ConfigError(format!("auth.hba[{i}].{key}: {why}")));
    let conn = match r.conn_type.as_str() {
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "local" if !unix_socket => {
            return fail(
                "type",
                "\"local\" (Unix-domain socket) rules need proxy.unix_socket_dir: without it pgvigil accepts TCP \
                 connections only, and the rule would never match"
                    .into(),
            )
        }
        "local" => ConnType::Local,
        other => return fail("type", format!("{other:?} is not \"local\", \"host\", \"hostssl\" or \"hostnossl\"")),
    };
    let action = match r.method.as_str() {
        "trust" => Action::Authenticate(ClientAuth::Trust),
        "reject" => Action::Reject,
        "md5" => Action::Authenticate(ClientAuth::Md5),
        "scram-sha-256" => Action::Authenticate(ClientAuth::ScramSha256),
        "cert" => Action::Authenticate(ClientAuth::Cert),
        other => {
            return fail("method", format!("{other:?} is not \"trust\", \"reject\", \"md5\", \"scram-sha-256\" or \"cert\""))
        }
    };
    if action == Action::Authenticate(ClientAuth::Cert) {
        if conn != ConnType::HostSsl {
            return fail("method", "\"cert\" needs type = \"hostssl\": a client certificate comes only with TLS".into());
        }
        if tls.ca_file.is_none() {
            return fail("method", "\"cert\" needs tls.ca_file, the CA certificates that client certificates are verified against".into());
        }
    }
    if conn == ConnType::HostSsl && tls.cert_file.is_none() {
        return fail("type", "\"hostssl\" needs tls.cert_file and tls.key_file: without them no client connects with TLS".into());
    }
    let address = match r.address.as_str() {
        "all" => None,
        a if conn == ConnType::Local => {
            return fail("address", format!("{a:?}: a \"local\" rule has no address (Unix-domain socket connections have none); leave it out"))
        }
        a => Some(Cidr::parse(a).ok_or_else(|| {
            ConfigError(format!(
                "auth.hba[{i}].address: {a:?} is not \"all\", an IP address or a CIDR block such as \"10.0.0.0/8\" or \"fd00::/8\" \
                 (host names, \"samehost\" and \"samenet\" are not supported)"
            ))
        })?),
    };
    Ok(Rule {
        conn,
        databases: names(i, "database", &r.database.0)?,
        users: names(i, "user", &r.user.0)?,
        address,
        action,
    })
}

/// Compiles `database` or `user` names: keywords, then exact names.
fn names(i: usize, key: &str, list: &[String]) -> Result<Vec<Name>, ConfigError> {
    let fail = |why: String| Err(ConfigError(format!("auth.hba[{i}].{key}: {why}")));
    if list.is_empty() {
        return fail("give at least one name, or \"all\"".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for n in list {
        out.push(match n.as_str() {
            "all" => Name::All,
            "sameuser" if key == "database" => Name::SameUser,
            "" => return fail("a name must not be empty".into()),
            "samerole" | "samegroup" => return fail(format!("{n:?} (role membership) is not supported; list the databases")),
            "replication" if key == "database" => {
                return fail("\"replication\" never matches: pgvigil does not proxy replication connections".into())
            }
            _ if n.starts_with('+') => return fail(format!("{n:?}: role membership (+role) is not supported; list the users")),
            _ if n.starts_with('@') => return fail(format!("{n:?}: names from a file (@file) are not supported; list them")),
            _ if n.contains(',') => return fail(format!("{n:?} contains a comma; give several names as a list: [\"a\", \"b\"]")),
            _ => Name::Exact(n.clone()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NameList;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_and_bare_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::ffff:10.1.2.3")), "families do not mix");
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(Cidr::parse("10.9.9.9/8").unwrap().contains(ip("10.0.0.1")), "host bits are ignored");
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(!Cidr::parse("::1").unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10/8", "db.example.com", "samenet", "1.2.3.4/8/8"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    fn rule(conn_type: &str, database: &[&str], user: &[&str], address: &str, method: &str) -> HbaRule {
        let list = |v: &[&str]| NameList(v.iter().map(|s| s.to_string()).collect());
        HbaRule { conn_type: conn_type.into(), database: list(database), user: list(user), address: address.into(), method: method.into() }
    }

    fn tls_with_ca() -> TlsConfig {
        TlsConfig { cert_file: Some("s.crt".into()), key_file: Some("s.key".into()), ca_file: Some("ca.crt".into()), ..TlsConfig::default() }
    }

    fn client<'a>(ip_text: &str, tls: bool, user: &'a str, database: &'a str) -> Client<'a> {
        Client { ip: Some(ip(ip_text)), tls, user, database }
    }

    #[test]
    fn local_rules_match_unix_socket_clients_only() {
        let rules = [rule("local", &["all"], &["all"], "all", "trust"), rule("host", &["all"], &["all"], "all", "scram-sha-256")];
        let access = AccessRules::compile(&rules, &TlsConfig::default(), true).unwrap().unwrap();
        let local = Client { ip: None, tls: false, user: "alice", database: "db" };
        assert_eq!(access.check(&local), Ok((0, ClientAuth::Trust)));
        assert_eq!(access.check(&client("127.0.0.1", false, "alice", "db")), Ok((1, ClientAuth::ScramSha256)));
        let host_only = AccessRules::compile(&rules[1..], &TlsConfig::default(), true).unwrap().unwrap();
        let e = host_only.check(&local).unwrap_err();
        assert_eq!(e.message, "no pg_hba.conf entry for host \"[local]\", user \"alice\", database \"db\", no encryption");
        // An address rule never matches a Unix socket either.
        let addressed = [rule("host", &["all"], &["all"], "0.0.0.0/0", "trust")];
        assert!(AccessRules::compile(&addressed, &TlsConfig::default(), true).unwrap().unwrap().check(&local).is_err());
        let e = AccessRules::compile(&[rule("local", &["all"], &["all"], "127.0.0.1", "trust")], &TlsConfig::default(), true).unwrap_err();
        assert!(e.to_string().starts_with("auth.hba[0].address: \"127.0.0.1\": a \"local\" rule has no address"), "{e}");
        let e = AccessRules::compile(&rules, &TlsConfig::default(), false).unwrap_err();
        assert!(e.to_string().starts_with("auth.hba[0].type: \"local\" (Unix-domain socket) rules need proxy.unix_socket_dir"), "{e}");
    }

    #[test]
    fn first_match_wins_and_no_match_is_refused() {
        let rules = [
            rule("host", &["all"], &["mallory"], "all", "reject"),
            rule("host", &["all"], &["mallory", "alice"], "all", "trust"),
            rule("hostssl", &["all"], &["bob"], "all", "cert"),
            rule("hostnossl", &["sameuser"], &["all"], "127.0.0.1/32", "md5"),
            rule("host", &["app", "reporting"], &["all"], "10.0.0.0/8", "scram-sha-256"),
        ];
        let access = AccessRules::compile(&rules, &tls_with_ca(), true).unwrap().unwrap();
        let e = access.check(&client("127.0.0.1", false, "mallory", "postgres")).unwrap_err();
        assert_eq!(e.code, "28000");
        assert_eq!(e.message, "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"mallory\", database \"postgres\", no encryption");
        assert_eq!(access.check(&client("127.0.0.1", false, "alice", "x")), Ok((1, ClientAuth::Trust)));
        assert_eq!(access.check(&client("127.0.0.1", true, "bob", "x")), Ok((2, ClientAuth::Cert)));
        let e = access.check(&client("127.0.0.1", false, "bob", "x")).unwrap_err();
        assert_eq!(e.message, "no pg_hba.conf entry for host \"127.0.0.1\", user \"bob\", database \"x\", no encryption");
        assert_eq!(access.check(&client("127.0.0.1", false, "carol", "carol")), Ok((3, ClientAuth::Md5)));
        assert!(access.check(&client("127.0.0.2", false, "carol", "carol")).is_err(), "address");
        assert!(access.check(&client("127.0.0.1", true, "carol", "carol")).is_err(), "hostnossl");
        assert_eq!(access.check(&client("10.3.2.1", true, "dave", "reporting")), Ok((4, ClientAuth::ScramSha256)));
        let e = access.check(&client("10.3.2.1", true, "dave", "other")).unwrap_err();
        assert!(e.message.ends_with("database \"other\", SSL encryption"), "{}", e.message);
        assert_eq!(AccessRules::compile(&[], &TlsConfig::default(), false).unwrap().map(|_| ()), None);
    }

    #[test]
    fn compile_errors_name_the_key() {
        let check = |r: HbaRule, tls: &TlsConfig| {
            let rules = [rule("host", &["all"], &["all"], "all", "trust"), r];
            AccessRules::compile(&rules, tls, false).unwrap_err().to_string()
        };
        let tls = tls_with_ca();
        let cases = [
            (rule("hostgssenc", &["all"], &["all"], "all", "trust"), "auth.hba[1].type: \"hostgssenc\""),
            (rule("local", &["all"], &["all"], "all", "trust"), "auth.hba[1].type: \"local\""),
            (rule("host", &["all"], &["all"], "all", "password"), "auth.hba[1].method: \"password\""),
            (rule("host", &["all"], &["all"], "10.0.0.0/40", "trust"), "auth.hba[1].address: \"10.0.0.0/40\""),
            (rule("host", &["all"], &["+admins"], "all", "trust"), "auth.hba[1].user: \"+admins\""),
            (rule("host", &["a,b"], &["all"], "all", "trust"), "auth.hba[1].database: \"a,b\" contains a comma"),
            (rule("host", &[], &["all"], "all", "trust"), "auth.hba[1].database: give at least one"),
            (rule("host", &["all"], &["sameuser"], "all", "trust"), ""),
            (rule("host", &["all"], &["all"], "all", "cert"), "auth.hba[1].method: \"cert\" needs type = \"hostssl\""),
        ];
        for (r, expected) in cases {
            if expected.is_empty() {
                // "sameuser" is a database keyword only; as a user it is a user's name.
                assert!(AccessRules::compile(&[r], &tls, false).is_ok());
                continue;
            }
            let e = check(r, &tls);
            assert!(e.starts_with(expected), "{e}");
        }
        let no_ca = TlsConfig { ca_file: None, ..tls_with_ca() };
        let e = check(rule("hostssl", &["all"], &["all"], "all", "cert"), &no_ca);
        assert!(e.starts_with("auth.hba[1].method: \"cert\" needs tls.ca_file"), "{e}");
        let e = check(rule("hostssl", &["all"], &["all"], "all", "md5"), &TlsConfig::default());
        assert!(e.starts_with("auth.hba[1].type: \"hostssl\" needs tls.cert_file"), "{e}");
    }
}
