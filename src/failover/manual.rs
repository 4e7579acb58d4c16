//! Operations an operator asks for: detach, attach, promote, switchover, rejoin. They run
//! in the failover task, one at a time and never during an automatic failover.
//!
//! A switchover loses no acknowledged write:
//!
//! 1. new work for the primary is paused (`ClusterView::writes_paused`): sessions hold
//!    such statements as during a failover, while transactions already open on the
//!    primary go on so they can finish;
//! 2. pgvigil waits (up to `failover.switchover_drain_timeout`) until no client backend
//!    on the primary is running a statement or has a transaction open, then terminates
//!    any that still do (those sessions get an error, as in a failover);
//! 3. it reads the primary's WAL position and waits until the candidate has replayed
//!    up to it (`failover.replay_timeout`); if it does not, the switchover is abandoned
//!    and writes resume on the old primary;
//! 4. the old primary is fenced and stopped (`rejoin.stop_command`, or built in when
//!    its `data_dir` is on this host), the candidate is promoted, and one view change makes it the primary and
//!    ends the pause; if the promotion fails while the candidate is still a standby,
//!    the old primary is started again and unfenced ([`roll_back`]);
//! 5. the other standbys are re-pointed and the old primary is rejoined as a standby of
//!    the new one when pgvigil can (`rejoin.*_command` or its `data_dir`), else left
//!    fenced for `rejoin`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::candidate::{choose, Choice};
use super::{connect, edit_view, failover, in_recovery, promote_node, rejoin, remember, repoint, run_rejoin, standbys, streams_from, Failover, Memory, Op, Remembered, Settings, Status};
use crate::monitor::{ClusterView, Monitor, Role};
use crate::tls::postgres::describe;

/// How long a rejoin operation waits for the node to stream before it reports.
const STREAM_WAIT: Duration = Duration::from_secs(60);

/// Client backends that are running a statement or have a transaction open, other than
/// pgvigil's own monitoring and failover connections.
const BUSY: &str = "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
     AND state IS DISTINCT FROM 'idle' AND application_name NOT IN ('pgvigil health check', 'pgvigil failover')";

pub(super) async fn run(monitor: &Monitor, settings: &Settings, state: &Failover, mem: &mut Memory, op: Op) -> Result<String, String> {
    tracing::info!(op = ?op, "operation requested");
    let index = |name: &str| {
        settings.backends.iter().position(|b| b.name == name).ok_or_else(|| {
            let names: Vec<&str> = settings.backends.iter().map(|b| b.name.as_str()).collect();
            format!("no backend named {name:?} (backends: {})", names.join(", "))
        })
    };
    if let Some(w) = &mem.watchdog {
        let ws = w.state();
        if !ws.is_leader_with_quorum(Instant::now()) {
            return Err(format!(
                "this pgvigil ({}) is not the watchdog leader with a quorum: send operations to the leader ({})",
                ws.name,
                ws.leader.as_deref().unwrap_or("none yet")
            ));
        }
    }
    let outcome = match &op {
        Op::Detach(name) => detach(monitor, index(name)?),
        Op::Attach(name) => attach(monitor, mem, index(name)?),
        Op::Rejoin(name) => rejoin_op(monitor, settings, mem, index(name)?).await,
        Op::Promote(name) => {
            let i = index(name)?;
            let view = monitor.view.borrow().clone();
            match view.primary() {
                Some(p) if p == i => Ok(format!("{name} is already the primary")),
                Some(_) => switchover(monitor, settings, state, mem, Some(i)).await,
                None => promote_without_primary(monitor, settings, state, mem, i).await,
            }
        }
        Op::Switchover(to) => {
            let to = to.as_deref().map(index).transpose()?;
            switchover(monitor, settings, state, mem, to).await
        }
    };
    match &outcome {
        Ok(done) => tracing::info!(op = ?op, outcome = %done, "operation done"),
        Err(e) => tracing::error!(op = ?op, error = %e, "operation failed"),
    }
    outcome
}

fn detach(monitor: &Monitor, i: usize) -> Result<String, String> {
    let view = monitor.view.borrow().clone();
    let name = &view.nodes[i].name;
    if view.primary() == Some(i) {
        return Err(format!("{name} is the primary: switch over to a standby first"));
    }
    if view.nodes[i].detached {
        return Ok(format!("{name} is already detached"));
    }
    edit_view(monitor, |next| next.nodes[i].detached = true);
    tracing::warn!(event = "node_detached", node = %name, "detached: nothing new is routed to it");
    monitor.events.record("node_detached", name, "detached by an operator: nothing new is routed to it", json!({}));
    Ok(format!("{name} detached: nothing new is routed to it"))
}

/// Why node `i` may not be routed to again, if it may not: it must be the primary, or
/// a standby streaming from the primary on its timeline (or rewound by pgvigil).
fn not_attachable(view: &ClusterView, i: usize, rewound: &[usize]) -> Option<String> {
    let n = &view.nodes[i];
    if !n.up {
        return Some(format!("{} is down", n.name));
    }
    // The primary as it would be with this node attached.
    let mut with = view.clone();
    with.nodes[i].detached = false;
    with.nodes[i].fenced = false;
    let primary = with.primary();
    match (n.role, primary) {
        (Role::Primary, Some(p)) if p == i => None,
        (Role::Primary, _) => Some(format!("{} is a primary but another node is the primary: rejoin it as a standby first", n.name)),
        (Role::Standby, Some(p)) => {
            let pn = &view.nodes[p];
            if !streams_from(n, pn.addr.port()) {
                Some(format!("{} does not stream from the primary {} (pg_stat_wal_receiver: {:?})", n.name, pn.name, n.repl.upstream))
            } else if !rewound.contains(&i) && n.fenced && n.repl.timeline != pn.repl.timeline {
                Some(format!("{} is on timeline {:?}, the primary {} on {:?}: rejoin it first", n.name, n.repl.timeline, pn.name, pn.repl.timeline))
            } else {
                None
            }
        }
        (Role::Standby, None) => Some(format!("{} is a standby and there is no primary", n.name)),
        (Role::Unknown, _) => Some(format!("{}'s role is unknown", n.name)),
    }
}

fn attach(monitor: &Monitor, mem: &mut Memory, i: usize) -> Result<String, String> {
    let view = monitor.view.borrow().clone();
    let name = &view.nodes[i].name;
    if !view.nodes[i].detached && !view.nodes[i].fenced {
        return Ok(format!("{name} is already attached"));
    }
    if let Some(why) = not_attachable(&view, i, &mem.rewound) {
        return Err(why);
    }
    mem.rewound.retain(|&r| r != i);
    edit_view(monitor, |next| {
        next.nodes[i].detached = false;
        next.nodes[i].fenced = false;
    });
    tracing::warn!(event = "node_attached", node = %name, "attached: routed to again");
    monitor.events.record("node_attached", name, "attached by an operator: routed to again", json!({}));
    Ok(format!("{name} attached"))
}

async fn rejoin_op(monitor: &Monitor, settings: &Settings, mem: &mut Memory, i: usize) -> Result<String, String> {
    let view = monitor.view.borrow().clone();
    let name = view.nodes[i].name.clone();
    let Some(p) = view.primary() else { return Err("there is no primary to rejoin to".into()) };
    if p == i {
        return Err(format!("{name} is the primary"));
    }
    let started = Instant::now();
    // Nothing is routed to it while it is rewound.
    let was_detached = view.nodes[i].detached;
    if !view.nodes[i].fenced {
        edit_view(monitor, |next| next.nodes[i].fenced = true);
    }
    run_rejoin(monitor, settings, &view, i, p).await?;
    mem.rewound.push(i);
    let mut rx = monitor.view.subscribe();
    // The `Ref` wait_for returns holds the view's lock: not kept past this statement.
    let streaming = tokio::time::timeout(STREAM_WAIT, rx.wait_for(|v| v.nodes[i].up && v.nodes[i].role == Role::Standby && streams_from(&v.nodes[i], v.nodes[p].addr.port())))
        .await
        .is_ok_and(|r| r.is_ok());
    if !streaming {
        return Err(format!("{name} was rewound and started but does not stream from {} after {STREAM_WAIT:?}; it stays fenced", view.nodes[p].name));
    }
    mem.rewound.retain(|&r| r != i);
    edit_view(monitor, |next| next.nodes[i].fenced = false);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::warn!(event = "node_rejoined", node = %name, elapsed_ms, "rejoined: streams from the primary");
    monitor.events.record("node_rejoined", &name, "rejoined: streams from the primary", json!({"primary": view.nodes[p].name, "elapsed_ms": elapsed_ms}));
    let detached = if was_detached { " (still detached: attach it to route to it)" } else { "" };
    Ok(format!("{name} rejoined as a standby of {} in {} ms{detached}", view.nodes[p].name, started.elapsed().as_millis()))
}

/// Promote with no primary up: a failover to the named standby. Without a known old
/// primary nothing is fenced (a returning one is fenced as the older timeline).
async fn promote_without_primary(monitor: &Monitor, settings: &Settings, state: &Failover, mem: &mut Memory, i: usize) -> Result<String, String> {
    let view = monitor.view.borrow().clone();
    let name = view.nodes[i].name.clone();
    let old = mem.remembered.clone().or_else(|| {
        let kept = super::kept_primary(&mem.kept)?;
        let node = view.nodes.iter().position(|n| n.name == kept)?;
        Some(Remembered { node, last: Default::default(), synchronous: Vec::new() })
    });
    match old {
        Some(r) if r.node != i => {
            let next = failover(monitor, settings, state, &view, &r, Some(i)).await?;
            mem.remembered = Some(next);
            Ok(format!("{name} promoted; {} fenced", view.nodes[r.node].name))
        }
        _ => {
            let n = &view.nodes[i];
            if !n.up || n.role != Role::Standby || n.fenced {
                return Err(format!("{name} is not an up, unfenced standby"));
            }
            promote_node(settings, i, i).await.map_err(|e| format!("promotion of {name} failed: {e:#}"))?;
            edit_view(monitor, |next| {
                next.nodes[i].role = Role::Primary;
                next.nodes[i].last_change = std::time::SystemTime::now();
            });
            state.promotions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(event = "failover_promoted", node = %name, "promoted by an operator; no earlier primary known");
            monitor.events.record("failover_promoted", &name, "promoted by an operator; no earlier primary known", json!({}));
            Ok(format!("{name} promoted (no earlier primary known to fence)"))
        }
    }
}

async fn switchover(monitor: &Monitor, settings: &Settings, state: &Failover, mem: &mut Memory, to: Option<usize>) -> Result<String, String> {
    let view = monitor.view.borrow().clone();
    let Some(old) = view.primary() else { return Err("there is no primary to switch over from".into()) };
    let old_name = view.nodes[old].name.clone();
    let r = remember(&view, old);
    let standbys = standbys(settings, &view, &r, Some(old)).await;
    let target = match to {
        Some(t) => t,
        None => match choose(&standbys, &r.last, u64::MAX) {
            Choice::Promote { node, .. } => node,
            Choice::NoCandidate { reasons } => return Err(format!("no standby can take over: {}", reasons.join("; "))),
        },
    };
    let name = view.nodes[target].name.clone();
    let t = &view.nodes[target];
    if target == old {
        return Err(format!("{name} is already the primary"));
    }
    if !t.up || t.role != Role::Standby || t.fenced || t.detached {
        return Err(format!("{name} is not an up, attached standby"));
    }
    if !streams_from(t, view.nodes[old].addr.port()) {
        return Err(format!("{name} does not stream from the primary {old_name}: it could not catch up"));
    }
    let started = Instant::now();
    tracing::warn!(event = "switchover_started", node = %old_name, to = %name, "switchover: new work for the primary is held");
    monitor.events.record("switchover_started", &old_name, "switchover: new work for the primary is held", json!({"to": name}));
    state.set(Status::InProgress { from: old_name.clone() });
    edit_view(monitor, |next| next.writes_paused = true);
    let stopped = match hand_over(monitor, settings, old, target, started).await {
        Ok(stopped) => stopped,
        Err(e) => {
            edit_view(monitor, |next| next.writes_paused = false);
            let e = format!("switchover from {old_name} to {name} abandoned: {e}");
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::error!(event = "switchover_failed", node = %old_name, to = %name, error = %e, elapsed_ms, "switchover failed");
            monitor.events.record("switchover_failed", &old_name, "switchover failed", json!({"to": name, "error": e, "elapsed_ms": elapsed_ms}));
            state.set(if monitor.view.borrow().primary().is_some() { Status::Idle } else { Status::ReadOnly { reasons: vec![e.clone()] } });
            return Err(e);
        }
    };
    let paused_ms = started.elapsed().as_millis() as u64;
    state.promotions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(event = "switchover_promoted", node = %name, fenced = %old_name, paused_ms, "new primary; writes resume");
    monitor.events.record("switchover_promoted", &name, "new primary; writes resume", json!({"fenced": old_name, "paused_ms": paused_ms}));
    mem.remembered = Some(remember(&monitor.view.borrow().clone(), target));
    let others: Vec<usize> = standbys.iter().filter(|s| s.node != target && s.up && !s.fenced).map(|s| s.node).collect();
    let not_following = repoint(monitor, settings, &others, target, old, started).await;
    state.set(Status::Idle);
    let mut outcome = format!("{name} is the primary; writes were held {paused_ms} ms");
    if !not_following.is_empty() {
        let names: Vec<&str> = not_following.iter().map(|&s| settings.backends[s].name.as_str()).collect();
        outcome.push_str(&format!("; not following it: {}", names.join(", ")));
    }
    if stopped && rejoin::configured(settings, old) {
        match rejoin_op(monitor, settings, mem, old).await {
            Ok(done) => outcome.push_str(&format!("; {done}")),
            Err(e) => outcome.push_str(&format!("; {old_name} stays fenced: {e}")),
        }
    } else {
        outcome.push_str(&format!("; {old_name} is fenced: rejoin it as a standby"));
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    state.last_duration_ms.store(elapsed_ms, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(event = "switchover_finished", node = %name, paused_ms, elapsed_ms, outcome = %outcome, "switchover finished");
    monitor.events.record("switchover_finished", &name, &outcome, json!({"from": old_name, "paused_ms": paused_ms, "elapsed_ms": elapsed_ms}));
    Ok(outcome)
}

/// After a failed promotion in a switchover: when the candidate is certainly still a
/// standby (it answers `pg_is_in_recovery()` with true), nothing was promoted, so the old
/// primary is started again if it was stopped, and unfenced once it is up as the
/// primary: writes resume there. Otherwise (the candidate does not answer, or it was
/// promoted after all) the old primary stays fenced, since two primaries would be worse
/// than none. Returns the error to report.
async fn roll_back(monitor: &Monitor, settings: &Settings, old: usize, target: usize, stopped: bool, failed: String) -> String {
    let old_name = &settings.backends[old].name;
    let candidate = &settings.backends[target].name;
    match in_recovery(settings, target).await {
        Some(true) => {}
        Some(false) => return format!("{failed}; {candidate} is a primary now all the same: {old_name} stays fenced"),
        None => return format!("{failed}; {old_name} stays fenced: {candidate} does not answer, so it may have been promoted"),
    }
    if stopped {
        if let Err(e) = rejoin::start(settings, old, old).await {
            return format!("{failed}; {candidate} is still a standby, but starting {old_name} again failed ({e:#}): it stays fenced");
        }
    }
    edit_view(monitor, |next| next.nodes[old].fenced = false);
    // Up as the primary again: the held statements go there.
    let mut view = monitor.view.subscribe();
    let back = tokio::time::timeout(settings.replay_timeout.max(Duration::from_secs(10)), view.wait_for(|v| v.primary() == Some(old))).await;
    if !matches!(back, Ok(Ok(_))) {
        return format!("{failed}; {old_name} was started again and unfenced, but is not seen up as the primary yet");
    }
    tracing::warn!(event = "switchover_rolled_back", node = %old_name, to = %candidate, "promotion failed, the candidate is still a standby: the old primary is the primary again");
    monitor.events.record(
        "switchover_rolled_back",
        old_name,
        "promotion failed, the candidate is still a standby: the old primary is the primary again",
        json!({"to": candidate}),
    );
    format!("{failed}; rolled back: {candidate} is still a standby and {old_name} is the primary again")
}

/// Steps 2–4 of a switchover; true when the old primary was stopped. On `Err` the old
/// primary still runs and is not fenced (the caller resumes writes on it), unless the
/// error came after it was stopped.
async fn hand_over(monitor: &Monitor, settings: &Settings, old: usize, target: usize, started: Instant) -> Result<bool, String> {
    let oc = connect(settings, old).await.map_err(|e| format!("cannot connect to the primary: {}", describe(&e, settings.tls.mode())))?;
    // 2. Drain.
    let deadline = Instant::now() + settings.switchover_drain_timeout;
    loop {
        let busy: i64 = oc.query_one(&format!("SELECT count(*) {BUSY}"), &[]).await.map_err(|e| e.to_string())?.get(0);
        if busy == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let n: i64 = oc.query_one(&format!("SELECT count(pg_terminate_backend(pid)) {BUSY}"), &[]).await.map_err(|e| e.to_string())?.get(0);
            tracing::warn!(event = "switchover_terminated", sessions = n, "transactions still open after failover.switchover_drain_timeout: terminated");
            monitor.events.record("switchover_terminated", &settings.backends[old].name, "transactions still open after failover.switchover_drain_timeout: terminated", json!({"sessions": n}));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 3. Catch up.
    let lsn: String = oc.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(|e| e.to_string())?.get(0);
    let lsn = crate::monitor::parse_lsn(&lsn).ok_or("bad pg_current_wal_lsn()")?;
    let tc = connect(settings, target).await.map_err(|e| format!("cannot connect to the candidate: {}", describe(&e, settings.tls.mode())))?;
    let deadline = Instant::now() + settings.replay_timeout;
    loop {
        let (_, replayed) = super::positions(&tc).await.map_err(|e| e.to_string())?;
        if replayed.is_some_and(|r| r >= lsn) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("the candidate did not replay up to {lsn:X} within failover.replay_timeout (at {replayed:?})"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(event = "switchover_caught_up", lsn = %format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff), elapsed_ms = started.elapsed().as_millis() as u64, "candidate has replayed all the primary wrote");
    // 4. Fence and stop the old primary, promote the candidate.
    edit_view(monitor, |next| next.nodes[old].fenced = true);
    let stopped = match rejoin::stop(settings, old, target).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(node = %settings.backends[old].name, error = %format!("{e:#}"), "cannot stop the old primary: it is fenced but may still run");
            false
        }
    };
    drop(oc);
    if let Err(e) = promote_node(settings, target, old).await {
        let failed = format!("promotion failed after {} was fenced: {e:#}", settings.backends[old].name);
        return Err(roll_back(monitor, settings, old, target, stopped, failed).await);
    }
    edit_view(monitor, |next| {
        next.nodes[target].role = Role::Primary;
        next.nodes[target].last_change = std::time::SystemTime::now();
        next.writes_paused = false;
    });
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::tests::node;

    #[test]
    fn only_the_primary_or_its_streaming_standbys_attach() {
        let mut v = ClusterView {
            nodes: vec![node(1, Role::Primary, 2, None), node(2, Role::Standby, 2, Some(1)), node(3, Role::Standby, 1, Some(9))],
            writes_paused: false,
        };
        v.nodes[1].detached = true;
        assert_eq!(not_attachable(&v, 1, &[]), None);
        assert!(not_attachable(&v, 2, &[]).unwrap().contains("does not stream from the primary n1"));
        // A fenced old primary that came back as a primary.
        v.nodes.push(node(4, Role::Primary, 1, None));
        v.nodes[3].fenced = true;
        assert!(not_attachable(&v, 3, &[]).unwrap().contains("another node is the primary"));
        // Streaming, but from an older timeline (not rewound): refused until rejoined.
        v.nodes[3] = node(4, Role::Standby, 1, Some(1));
        v.nodes[3].fenced = true;
        assert!(not_attachable(&v, 3, &[]).unwrap().contains("rejoin it first"));
        assert_eq!(not_attachable(&v, 3, &[3]), None);
        v.nodes[1].up = false;
        assert!(not_attachable(&v, 1, &[]).unwrap().contains("is down"));
    }
}
