//! `failover.promote_command` and `failover.follow_command`: shell commands with
//! Pgpool-II's placeholders, for hosts pgvigil cannot reach with SQL (or when promotion
//! must go through a cluster manager).
//!
//! | placeholder | value |
//! |---|---|
//! | `%d` `%h` `%p` `%D` | the node acted on: id, host, port, data_dir (the failed primary for promote_command, the standby to re-point for follow_command) |
//! | `%m` `%H` `%r` `%R` | the new primary: id, host, port, data_dir |
//! | `%M` `%P` | the old primary's id |
//! | `%N` `%S` | the old primary's host and port |
//! | `%%` | `%` |
//!
//! A value is substituted as it is; placeholders for unknown values (no `data_dir`) are
//! empty. The `[rejoin]` commands also take `%s` (the replication slot on the new
//! primary) and `%n` (the node's name, its `application_name` there).

use std::time::Duration;

use anyhow::{bail, Context};

/// One node's identity for the placeholders.
#[derive(Debug, Clone, Default)]
pub struct NodeRef {
    pub id: usize,
    pub host: String,
    pub port: u16,
    pub data_dir: String,
}

/// The values of one command.
#[derive(Debug, Clone, Default)]
pub struct Placeholders {
    pub node: NodeRef,
    pub new_primary: NodeRef,
    pub old_primary: NodeRef,
}

/// The command with its placeholders replaced.
pub fn expand(template: &str, p: &Placeholders) -> String {
    expand_with(template, p, &[])
}

/// As [`expand`], with more placeholders (`(letter, value)`) for one kind of command.
pub fn expand_with(template: &str, p: &Placeholders, extra: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let next = chars.next();
        if let Some((_, value)) = extra.iter().find(|(k, _)| Some(*k) == next) {
            out.push_str(value);
            continue;
        }
        match next {
            Some('d') => out.push_str(&p.node.id.to_string()),
            Some('h') => out.push_str(&p.node.host),
            Some('p') => out.push_str(&p.node.port.to_string()),
            Some('D') => out.push_str(&p.node.data_dir),
            Some('m') => out.push_str(&p.new_primary.id.to_string()),
            Some('H') => out.push_str(&p.new_primary.host),
            Some('r') => out.push_str(&p.new_primary.port.to_string()),
            Some('R') => out.push_str(&p.new_primary.data_dir),
            Some('M') | Some('P') => out.push_str(&p.old_primary.id.to_string()),
            Some('N') => out.push_str(&p.old_primary.host),
            Some('S') => out.push_str(&p.old_primary.port.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Runs a hook with `sh -c`; fails on a non-zero exit or after `timeout`. The command
/// line is not logged (it may hold secrets); its stderr's last line is.
pub async fn run(what: &str, command: &str, timeout: Duration) -> anyhow::Result<()> {
    run_setting(&format!("failover.{what}"), command, timeout).await
}

/// As [`run`], for the command of the setting `key` (e.g. `rejoin.stop_command`).
pub async fn run_setting(key: &str, command: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{key} did not finish within {timeout:?}"))?
        .with_context(|| format!("cannot run {key}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("{key} failed ({}): {last}", out.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpool_placeholders() {
        let p = Placeholders {
            node: NodeRef { id: 2, host: "db3".into(), port: 5434, data_dir: "/data/3".into() },
            new_primary: NodeRef { id: 1, host: "db2".into(), port: 5433, data_dir: "/data/2".into() },
            old_primary: NodeRef { id: 0, host: "db1".into(), port: 5432, data_dir: String::new() },
        };
        assert_eq!(
            expand("follow.sh %d %h %p %D %m %H %r %R %M %P %N %S 100%% %x %", &p),
            "follow.sh 2 db3 5434 /data/3 1 db2 5433 /data/2 0 0 db1 5432 100% %x %"
        );
        assert_eq!(expand("plain", &p), "plain");
        let extra = [('s', "pgvigil_pg2"), ('n', "pg2")];
        assert_eq!(expand_with("%s %n %h %%s %x", &p, &extra), "pgvigil_pg2 pg2 db3 %s %x");
        assert_eq!(expand("%s", &p), "%s", "only commands that define it take %s");
    }

    #[tokio::test]
    async fn commands_succeed_or_say_why() {
        assert!(run("promote_command", "true", Duration::from_secs(5)).await.is_ok());
        let e = run("promote_command", "echo nope >&2; exit 3", Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(e.contains("failover.promote_command failed") && e.contains("nope"), "{e}");
        let e = run("follow_command", "sleep 5", Duration::from_millis(100)).await.unwrap_err().to_string();
        assert!(e.contains("did not finish"), "{e}");
        let e = run_setting("rejoin.stop_command", "exit 1", Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(e.starts_with("rejoin.stop_command failed"), "{e}");
    }
}
