//! The watchdog loop: the UDP socket, the timers and the VIP around the election state
//! machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::AuthKey;
use super::election::{Action, Election, Now};
use super::packet::{self, DropReason, MAX_PACKET};
use super::state::WatchdogState;
use super::vip::{VipEvent, VipHolder};

/// Drops of one reason are logged at most this often (after the first).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Runner {
    pub machine: Election,
    pub socket: UdpSocket,
    pub peers: Vec<SocketAddr>,
    pub key: AuthKey,
    pub vip: Option<VipHolder>,
    pub vip_events: mpsc::UnboundedReceiver<VipEvent>,
    pub state: watch::Sender<WatchdogState>,
    pub digest: watch::Receiver<[u8; 32]>,
    pub stop: CancellationToken,
    pub drop_logged: HashMap<&'static str, Instant>,
}

fn hint(reason: DropReason) -> &'static str {
    match reason {
        DropReason::Malformed => "not a pgvigil heartbeat",
        DropReason::BadMac => "not signed with our key (is watchdog.auth_key_file the same on every member?)",
        DropReason::UnknownMember => "the sender's name is not in watchdog.peers",
        DropReason::WrongCluster => "the sender's watchdog.peers or watchdog.quorum differ from ours",
        DropReason::Replayed => "a sequence number already seen (replayed or duplicated)",
        DropReason::Stale => {
            "more than 30 s away from our clock (are the clocks synchronized?), or from an earlier start of a running member"
        }
    }
}

impl Runner {
    pub async fn run(mut self) {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let wake = tokio::time::Instant::from_std(self.machine.next_wakeup());
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(event) = self.vip_events.recv() => {
                    if let VipEvent::Failed { permanent } = event {
                        self.machine.vip_failed(Instant::now(), permanent);
                    }
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.datagram(&buf[..n.min(buf.len())], from),
                    Err(e) => tracing::debug!(error = %e, "watchdog: receive failed"),
                },
                _ = tokio::time::sleep_until(wake) => {}
                Ok(()) = self.digest.changed() => {
                    let d = *self.digest.borrow_and_update();
                    self.machine.set_digest(d);
                }
            }
            // Always evaluated before anything is sent: after a pause, an expired lease
            // releases the VIP first.
            let actions = self.machine.poll(Now::current());
            if let Some(vip) = &self.vip {
                vip.gate.set(self.machine.lease_until());
            }
            self.apply(actions).await;
            self.publish();
        }
        let actions = self.machine.leave(Now::current());
        if let Some(vip) = &self.vip {
            vip.gate.set(None);
        }
        self.apply(actions).await;
        self.publish();
        if let Some(vip) = &self.vip {
            vip.wait_for_hooks().await;
        }
        tracing::info!("watchdog stopped");
    }

    fn datagram(&mut self, bytes: &[u8], from: SocketAddr) {
        let result = packet::decode(bytes, &self.key).and_then(|hb| self.machine.receive(Now::current(), hb));
        if let Err(reason) = result {
            if matches!(reason, DropReason::Malformed | DropReason::BadMac) {
                self.machine.count_drop(reason);
            }
            let total = self.machine.drops().get(reason);
            let now = Instant::now();
            let due = self.drop_logged.get(reason.as_str()).is_none_or(|t| now.duration_since(*t) >= DROP_LOG_EVERY);
            if due {
                self.drop_logged.insert(reason.as_str(), now);
                tracing::warn!(reason = reason.as_str(), %from, total, "watchdog: dropped a datagram: {}", hint(reason));
            } else {
                tracing::debug!(reason = reason.as_str(), %from, total, "watchdog: dropped a datagram");
            }
        }
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::ReleaseVip => {
                    if let Some(vip) = &mut self.vip {
                        vip.release().await;
                    }
                }
                Action::Send(hb) => {
                    let mut out = BytesMut::with_capacity(512);
                    packet::encode(&hb, &self.key, &mut out);
                    for peer in &self.peers {
                        if let Err(e) = self.socket.send_to(&out, peer).await {
                            tracing::debug!(%peer, error = %e, "watchdog: heartbeat not sent");
                        }
                    }
                }
                Action::AcquireVip => {
                    if let Some(vip) = &mut self.vip {
                        vip.acquire();
                    }
                }
                Action::Announce => {
                    if let Some(vip) = &mut self.vip {
                        vip.announce();
                    }
                }
            }
        }
        if self.machine.role() == super::packet::Role::Leader {
            if let Some(vip) = &mut self.vip {
                vip.renew_if_due().await;
            }
        }
    }

    fn publish(&self) {
        let held = self.vip.as_ref().is_some_and(|v| v.held());
        let next = self.machine.snapshot(Instant::now(), held);
        // Only real changes wake the subscribers (failover reacts to each one).
        self.state.send_if_modified(|s| {
            if *s == next {
                return false;
            }
            *s = next;
            true
        });
    }
}
