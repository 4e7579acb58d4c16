//! Per-user and per-database limits on client sessions, as PostgreSQL's `CONNECTION
//! LIMIT` of roles and databases: `auth.max_connections_per_user`,
//! `auth.max_connections_per_database`, `[auth.user_limits]`, `[auth.database_limits]`.
//!
//! A session is counted once it has authenticated, and un-counted when its [`Counted`]
//! guard is dropped, whichever way the session ends. The counts live as long as the
//! process; a reload changes only the limits they are compared with.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::config::AuthConfig;
use crate::protocol::backend::PgError;
use crate::protocol::sqlstate;

/// The limits in effect (0: none).
#[derive(Debug, Clone, Default)]
pub struct ConnectionLimits {
    per_user: usize,
    per_database: usize,
    users: BTreeMap<String, usize>,
    databases: BTreeMap<String, usize>,
}

impl ConnectionLimits {
    pub fn from_config(auth: &AuthConfig) -> Self {
        Self {
            per_user: auth.max_connections_per_user,
            per_database: auth.max_connections_per_database,
            users: auth.user_limits.clone(),
            databases: auth.database_limits.clone(),
        }
    }

    fn user(&self, user: &str) -> usize {
        self.users.get(user).copied().unwrap_or(self.per_user)
    }

    fn database(&self, database: &str) -> usize {
        self.databases.get(database).copied().unwrap_or(self.per_database)
    }
}

/// Sessions per user and per database, for the whole process.
#[derive(Debug, Default)]
pub struct SessionCounts {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, usize>,
    databases: HashMap<String, usize>,
}

/// A counted session; dropping it un-counts it.
#[derive(Debug)]
pub struct Counted {
    counts: Arc<SessionCounts>,
    user: String,
    database: String,
}

impl SessionCounts {
    /// Counts a session of `user` on `database`, unless that would exceed a limit: then
    /// PostgreSQL's FATAL 53300 for the role (checked first) or the database.
    pub fn admit(self: &Arc<Self>, limits: &ConnectionLimits, user: &str, database: &str) -> Result<Counted, PgError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let full = |count: Option<&usize>, limit: usize| limit > 0 && count.copied().unwrap_or(0) >= limit;
        if full(counts.users.get(user), limits.user(user)) {
            return Err(PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, format!("too many connections for role \"{user}\"")));
        }
        if full(counts.databases.get(database), limits.database(database)) {
            return Err(PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, format!("too many connections for database \"{database}\"")));
        }
        *counts.users.entry(user.to_string()).or_default() += 1;
        *counts.databases.entry(database.to_string()).or_default() += 1;
        Ok(Counted { counts: self.clone(), user: user.to_string(), database: database.to_string() })
    }

    /// Sessions of `user` counted now.
    pub fn of_user(&self, user: &str) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).users.get(user).copied().unwrap_or(0)
    }

    /// Sessions on `database` counted now.
    pub fn of_database(&self, database: &str) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).databases.get(database).copied().unwrap_or(0)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        let Counts { users, databases } = &mut *counts;
        for (map, key) in [(users, &self.user), (databases, &self.database)] {
            if let Some(n) = map.get_mut(key.as_str()) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(text: &str) -> ConnectionLimits {
        let c = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        ConnectionLimits::from_config(&c.auth)
    }

    #[test]
    fn per_user_limit_with_overrides() {
        let l = limits("[auth]\nmax_connections_per_user = 2\n[auth.user_limits]\nalice = 1\nbatch = 0\n");
        let counts = Arc::new(SessionCounts::default());
        let a = counts.admit(&l, "alice", "app").unwrap();
        let e = counts.admit(&l, "alice", "other").unwrap_err();
        assert_eq!((e.code, e.message.as_str()), ("53300", "too many connections for role \"alice\""));
        let b1 = counts.admit(&l, "bob", "app").unwrap();
        let _b2 = counts.admit(&l, "bob", "app").unwrap();
        assert!(counts.admit(&l, "bob", "app").is_err(), "the default applies to users without an override");
        let many: Vec<_> = (0..10).map(|_| counts.admit(&l, "batch", "app").unwrap()).collect();
        assert_eq!(counts.of_user("batch"), 10, "an override of 0 is no limit");
        drop(many);
        drop(a);
        drop(b1);
        assert_eq!(counts.of_user("batch"), 0);
        assert!(counts.admit(&l, "alice", "app").is_ok() && counts.admit(&l, "bob", "app").is_ok(), "places come back on drop");
    }

    #[test]
    fn per_database_limit_and_a_refusal_counts_nothing() {
        let l = limits("[auth]\nmax_connections_per_database = 5\n[auth.database_limits]\nsmall = 1\n");
        let counts = Arc::new(SessionCounts::default());
        let first = counts.admit(&l, "alice", "small").unwrap();
        let e = counts.admit(&l, "bob", "small").unwrap_err();
        assert_eq!(e.message, "too many connections for database \"small\"");
        assert_eq!((counts.of_user("bob"), counts.of_database("small")), (0, 1), "a refused session is not counted");
        let others: Vec<_> = (0..5).map(|_| counts.admit(&l, "bob", "big").unwrap()).collect();
        assert!(counts.admit(&l, "carol", "big").is_err());
        drop(first);
        assert!(counts.admit(&l, "bob", "small").is_ok());
        assert_eq!(others.len(), 5);
        assert!(limits("").user("anyone") == 0 && limits("").database("any") == 0, "no limits by default");
    }
}
