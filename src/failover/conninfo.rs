//! libpq connection strings (`key=value key='quoted value'`), as far as re-pointing a
//! standby's `primary_conninfo` needs.

/// The pairs of a keyword/value connection string; `None` when it does not parse.
pub fn parse(s: &str) -> Option<Vec<(String, String)>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' || key.is_empty() {
            return None;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i)? {
                    b'\\' => {
                        value.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    i += 1;
                }
                value.push(*b.get(i)?);
                i += 1;
            }
        }
        out.push((key, String::from_utf8(value).ok()?));
    }
}

/// Quotes a value for a connection string.
fn quote(v: &str) -> String {
    let mut q = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('\'');
    q
}

/// The same connection string with `host` and `port` replaced (and `hostaddr` dropped);
/// a string that does not parse is replaced by one with just those.
pub fn repoint(current: &str, host: &str, port: u16, _standby: &str) -> String {
    let mut pairs = parse(current).unwrap_or_default();
    pairs.retain(|(k, _)| !matches!(k.as_str(), "host" | "hostaddr" | "port"));
    pairs.push(("host".into(), host.into()));
    pairs.push(("port".into(), port.to_string()));
    pairs.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join(" ")
}

/// A SQL string literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The replication slot pgvigil creates for a standby on a new primary.
pub fn slot_name(standby: &str) -> String {
    let clean: String = standby
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    format!("pgvigil_{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_pg_basebackup_writes() {
        let s = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer host=127.0.0.1 port=5432 sslmode=prefer application_name='it\\'s b'";
        let p = parse(s).unwrap();
        assert_eq!(p[1], ("passfile".to_string(), "/var/lib/postgresql/.pgpass".to_string()));
        assert_eq!(p[6], ("application_name".to_string(), "it's b".to_string()));
        let next = repoint(s, "10.0.0.2", 6432, "b");
        let q = parse(&next).unwrap();
        let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("host").as_deref(), Some("10.0.0.2"));
        assert_eq!(get("port").as_deref(), Some("6432"));
        assert_eq!(get("user").as_deref(), Some("postgres"));
        assert_eq!(get("application_name").as_deref(), Some("it's b"));
        assert_eq!(q.iter().filter(|(k, _)| k == "host").count(), 1);
        assert!(parse("host=").is_some());
        assert!(parse("novalue").is_none());
        assert!(parse("a='open").is_none());
        assert_eq!(sql_literal("a'b"), "'a''b'");
        assert_eq!(slot_name("pg-1"), "pgvigil_pg_1");
    }
}
