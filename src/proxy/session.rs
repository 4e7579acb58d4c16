//! One client session's start: startup, authentication, the startup answer; then the
//! routed session ([`super::engine`]) takes over.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::stream::{ClientStream, Peer};

use super::access::Client;
use super::auth::{authenticate, AuthFailure};
use super::engine::Engine;
use super::startup::{read_opening, Opening};
use super::Shared;
use crate::pool::{BackendCredential, CheckoutError, ConnectError, PoolKey};
use crate::protocol::backend::{self, PgError, AUTH_OK};
use crate::protocol::sqlstate;
use crate::protocol::startup::Startup;

/// Serves one client connection from accept to close.
pub(super) async fn run(client: ClientStream, peer: Peer, shared: Arc<Shared>) {
    // Boxed: the state of the startup (authentication, the first server connection) is
    // not part of the future an idle session keeps for its whole life.
    let Some(started) = Box::pin(start(client, peer, &shared)).await else { return };
    let Started { engine, user, counted, slot } = *started;
    let end = engine.run().await;
    tracing::debug!(%peer, user = %user, end = ?end, "session ended");
    drop(counted);
    drop(slot);
}

/// A session past its startup, ready to serve.
struct Started<'a> {
    engine: Engine<'a>,
    user: String,
    /// Counts the session for its user's and database's limits until dropped.
    counted: super::limits::Counted,
    /// Its place among `proxy.max_clients`.
    slot: tokio::sync::OwnedSemaphorePermit,
}

/// Startup, authentication, limits and the startup answer; `None` when the client was
/// refused (it was told why) or left.
async fn start(mut client: ClientStream, peer: Peer, shared: &Arc<Shared>) -> Option<Box<Started<'_>>> {
    let mut cbuf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + shared.startup_timeout;
    let handshake = tokio::select! {
        h = tokio::time::timeout_at(deadline, handshake(&mut client, peer, &mut cbuf, shared)) => h,
        _ = shared.terminate.cancelled() => Ok(Err(Some(PgError::shutting_down()))),
    };
    let (startup, credential) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(None)) => return None,
        Ok(Err(Some(e))) => return reject(&mut client, peer, e).await,
        Err(_) => return reject(&mut client, peer, PgError::protocol_violation("canceling authentication due to timeout")).await,
    };
    // `proxy.max_clients` counts authenticated sessions only: connections still in their
    // startup (slow or hostile ones) cannot take the places of real clients; they are
    // bounded by `proxy.startup_timeout` instead.
    let Ok(slot) = shared.client_slots.clone().try_acquire_owned() else {
        return reject(&mut client, peer, PgError::too_many_clients()).await;
    };
    let user = startup.param("user").unwrap_or_default().to_string();
    let database = startup.param("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();
    // Per-user and per-database limits; the session counts until `counted` is dropped.
    let counted = match shared.session_counts.admit(&shared.reloadable().limits, &user, &database) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, user = %user, database = %database, "{}", e.message);
            return reject(&mut client, peer, e).await;
        }
    };
    let app_name = startup.param("application_name").unwrap_or_default().to_string();
    let base_key = PoolKey { backend: 0, user: user.clone(), database: database.clone(), params: behaviour_params(&startup) };

    // The ParameterStatus set a client sees comes from the primary. Once known for
    // these startup parameters it is reused, so a session connects to no server until
    // its first statement.
    let cached = shared.startup_params.lock().unwrap_or_else(|p| p.into_inner()).get(&base_key).cloned();
    let mut adopted = None;
    let params = match cached {
        Some(p) => p,
        None => {
            let Some((backend, addr)) = wait_for_primary(shared).await else {
                let e = PgError::fatal(sqlstate::CANNOT_CONNECT_NOW, "no primary backend is available")
                    .with_hint("pgvigil found no backend that is up and not in recovery; check the health_check settings and the backends");
                return reject(&mut client, peer, e).await;
            };
            let key = PoolKey { backend, ..base_key.clone() };
            let checkout = tokio::select! {
                c = shared.pools.checkout(&key, addr, &credential) => c,
                _ = shared.terminate.cancelled() => return reject(&mut client, peer, PgError::shutting_down()).await,
            };
            let mut checkout = match checkout {
                Ok(c) => c,
                Err(e) => return reject_checkout(&mut client, peer, &key, e).await,
            };
            if let Err(e) = checkout.conn.ensure_setting("application_name", &app_name).await {
                return reject_checkout(&mut client, peer, &key, CheckoutError::Connect(e)).await;
            }
            let params = checkout.conn.params.clone();
            shared.startup_params.lock().unwrap_or_else(|p| p.into_inner()).insert(base_key.clone(), params.clone());
            adopted = Some((backend, checkout));
            params
        }
    };
    let cancel_key = shared.cancels.register();
    let mut out = BytesMut::with_capacity(512);
    backend::write_auth(&mut out, AUTH_OK, &[]);
    for (name, value) in &params {
        let value = if name == "application_name" { app_name.as_str() } else { value.as_str() };
        backend::write_parameter_status(&mut out, name, value);
    }
    backend::write_backend_key_data(&mut out, cancel_key.pid, cancel_key.secret);
    backend::write_ready_for_query(&mut out, b'I');
    tracing::debug!(%peer, user = %user, database = %database, client_pid = cancel_key.pid, "session started");

    let redirect = shared.redirect_target(&app_name, &database, &user);
    let mut engine = Engine::new(shared, client, peer, cbuf, base_key, credential, app_name, cancel_key, redirect);
    if let Some((backend, checkout)) = adopted {
        engine.adopt(backend, checkout);
    }
    engine.queue_client(&out);
    Some(Box::new(Started { engine, user, counted, slot }))
}

/// The startup phase and client authentication. `Err(None)`: close silently;
/// `Err(Some(e))`: send `e`, then close.
async fn handshake(
    client: &mut ClientStream,
    peer: Peer,
    cbuf: &mut BytesMut,
    shared: &Shared,
) -> Result<(Startup, BackendCredential), Option<PgError>> {
    let settings = shared.reloadable();
    let startup = match read_opening(client, cbuf, shared, settings.tls.as_deref()).await {
        Opening::Session(s) => s,
        Opening::Cancelled | Opening::Gone => return Err(None),
        Opening::Reject(e) => return Err(Some(e)),
    };
    if shared.stop_accepting.is_cancelled() {
        return Err(Some(PgError::fatal(sqlstate::CANNOT_CONNECT_NOW, "the database system is shutting down")));
    }
    let user = startup.param("user").unwrap_or_default();
    let database = startup.param("database").filter(|d| !d.is_empty()).unwrap_or(user);
    let who = Client { ip: peer.ip(), tls: client.is_tls(), user, database };
    // A Unix socket never carries TLS (as with PostgreSQL); its file permissions guard it.
    if settings.tls.as_ref().is_some_and(|t| t.mode == crate::config::TlsClientMode::Require) && !client.is_tls() && peer != Peer::Local {
        return Err(Some(
            PgError::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("connection refused for host \"{}\", user \"{user}\", database \"{database}\", no encryption", who.host()),
            )
            .with_hint("pgvigil accepts only TLS connections here (tls.client_mode = \"require\"): connect with sslmode=require"),
        ));
    }
    let (rule, method) = settings.client_auth(&who).map_err(Some)?;
    match authenticate(client, cbuf, user, method, &settings, &shared.mock_secret).await {
        Ok(credential) => Ok((startup, credential)),
        Err(AuthFailure::Disconnected) => Err(None),
        Err(AuthFailure::Reject(e)) => {
            if e.code == sqlstate::INVALID_PASSWORD {
                tracing::info!(%peer, user, rule, "password authentication failed");
            }
            Err(Some(e))
        }
        Err(AuthFailure::Refuse { error, reason }) => {
            tracing::info!(%peer, user, database, rule, reason, "{}", error.message);
            Err(Some(error))
        }
    }
}

/// Startup parameters that change a session's behaviour, sorted: part of the pool key.
/// `application_name` is left out (clients often make it unique); it is set on checkout.
fn behaviour_params(startup: &Startup) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication" | "application_name"))
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .cloned()
        .collect();
    params.sort();
    params
}

/// The primary's index and address, waiting up to the checkout timeout for one to appear.
async fn wait_for_primary(shared: &Shared) -> Option<(usize, SocketAddr)> {
    let mut view = shared.view.clone();
    let found = tokio::time::timeout(shared.pools.settings().checkout_timeout, view.wait_for(|v| v.primary().is_some())).await;
    let view = match found {
        Ok(Ok(v)) => v.clone(),
        _ => return None,
    };
    let i = view.primary()?;
    Some((i, view.nodes[i].addr))
}

async fn reject_checkout<T>(client: &mut ClientStream, peer: Peer, key: &PoolKey, e: CheckoutError) -> Option<T> {
    tracing::warn!(%peer, user = %key.user, database = %key.database, backend = key.backend, error = %e, "no server connection for client");
    let error = match e {
        CheckoutError::Timeout(wait) => PgError::too_many_clients().with_detail(format!(
            "All server connections of this pool (pool.size) are in use and none became free within {wait:?} (pool.checkout_timeout)."
        )),
        CheckoutError::Connect(ConnectError::Server { raw, .. }) => {
            let _ = client.write_all(&raw).await;
            return None;
        }
        CheckoutError::Connect(e @ (ConnectError::NoCredential { .. } | ConnectError::Scram { .. })) => {
            PgError::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, e.to_string())
        }
        CheckoutError::Connect(e) => PgError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string()),
    };
    let _ = write_error(client, &error).await;
    None
}

/// Tells the client `e` and closes; `None`, for the caller to return.
async fn reject<T>(client: &mut ClientStream, peer: Peer, e: PgError) -> Option<T> {
    tracing::debug!(%peer, error = %e, "client rejected");
    let _ = write_error(client, &e).await;
    None
}

async fn write_error(client: &mut ClientStream, e: &PgError) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    e.write(&mut out);
    client.write_all(&out).await?;
    client.shutdown().await
}

