//! Node state kept in `failover.state_dir`, so that a restarted pgvigil does not route
//! to a node it had fenced or an operator had detached, and knows which node was the
//! primary when two of them claim it at start.
//!
//! The file `nodes` has one line per backend: `name state role`, with state `up`,
//! `down`, `fenced` or `detached` and role `primary`, `standby` or `unknown`, e.g.
//!
//! ```text
//! a fenced primary
//! b up primary
//! c up standby
//! ```
//!
//! Lines starting with `#` are comments. It is rewritten (write + rename) whenever one of
//! these facts changes.

use std::path::{Path, PathBuf};

use crate::monitor::{ClusterView, Role};

pub const FILE: &str = "nodes";

/// What is kept of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    pub state: &'static str,
    pub role: Role,
}

/// The kept facts of every node of a view.
pub fn of(view: &ClusterView) -> Vec<Kept> {
    view.nodes
        .iter()
        .map(|n| Kept {
            name: n.name.clone(),
            state: if n.fenced {
                "fenced"
            } else if n.detached {
                "detached"
            } else if n.up {
                "up"
            } else {
                "down"
            },
            role: n.role,
        })
        .collect()
}

/// The role a node had when it was last seen up (kept while it is down).
pub fn merge_roles(next: &mut [Kept], before: &[Kept]) {
    for k in next.iter_mut().filter(|k| k.role == Role::Unknown) {
        if let Some(b) = before.iter().find(|b| b.name == k.name) {
            k.role = b.role;
        }
    }
}

pub fn format(kept: &[Kept]) -> String {
    let mut out = String::from("# pgvigil node state: name state role (rewritten by pgvigil)\n");
    for k in kept {
        let role = match k.role {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        };
        out.push_str(&format!("{} {} {}\n", k.name, k.state, role));
    }
    out
}

/// Parses the file; errors name the line.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Kept>, String> {
    let mut kept = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("{}:{}: {what}: {line:?}", path.display(), no + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, state, role] = fields[..] else { return Err(bad("expected `name state role`")) };
        let state = match state {
            "up" => "up",
            "down" => "down",
            "fenced" => "fenced",
            "detached" => "detached",
            _ => return Err(bad("state must be up, down, fenced or detached")),
        };
        let role = match role {
            "primary" => Role::Primary,
            "standby" => Role::Standby,
            "unknown" => Role::Unknown,
            _ => return Err(bad("role must be primary, standby or unknown")),
        };
        kept.push(Kept { name: name.to_string(), state, role });
    }
    Ok(kept)
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the kept state; `Ok(empty)` when there is none yet.
pub fn load(dir: &Path) -> Result<Vec<Kept>, String> {
    let path = path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn save(dir: &Path, kept: &[Kept]) -> std::io::Result<()> {
    let path = path(dir);
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&tmp, format(kept))?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_line() {
        let kept = vec![
            Kept { name: "a".into(), state: "fenced", role: Role::Primary },
            Kept { name: "b".into(), state: "up", role: Role::Primary },
            Kept { name: "c".into(), state: "detached", role: Role::Standby },
            Kept { name: "d".into(), state: "down", role: Role::Unknown },
        ];
        let p = Path::new("/x/nodes");
        assert_eq!(parse(&format(&kept), p).unwrap(), kept);
        let e = parse("a up primary\nb sideways standby\n", p).unwrap_err();
        assert!(e.starts_with("/x/nodes:2: state must be"), "{e}");
        let e = parse("# c\n\na up\n", p).unwrap_err();
        assert!(e.starts_with("/x/nodes:3: expected"), "{e}");
    }

    #[test]
    fn a_down_node_keeps_its_last_role() {
        let before = vec![Kept { name: "a".into(), state: "up", role: Role::Primary }];
        let mut next = vec![Kept { name: "a".into(), state: "down", role: Role::Unknown }];
        merge_roles(&mut next, &before);
        assert_eq!(next[0].role, Role::Primary);
    }
}
