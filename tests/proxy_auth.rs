//! Client and backend authentication through pgvigil against a real PostgreSQL.

// tokio_postgres::Client is not Debug, so `expect_err` is not available.
#![allow(clippy::err_expect)]

mod common;

use common::*;
use pgvigil::cluster::{HbaMethod, PasswordEncryption};
use pgvigil::protocol::backend::{self, AuthRequest};
use pgvigil::protocol::startup;

const WRONG: &str = "password authentication failed for user";

async fn expect_password_failure(env: &Env, user: &str, password: &str) {
    let e = connect(env.pg_config(user, password)).await.err().expect("login must fail");
    let db = e.as_db_error().unwrap_or_else(|| panic!("a server error, got {e}"));
    assert_eq!(db.code().code(), "28P01");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.message(), format!("{WRONG} \"{user}\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_plaintext_users_file() {
    let env = Env::start(Options { users: vec!["carol = \"c4rol pw\"".into()], ..Options::default() }).await;
    env.cluster.create_role("carol", "c4rol pw", PasswordEncryption::ScramSha256).unwrap();
    let c = connect(env.pg_config("carol", "c4rol pw")).await.unwrap();
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "carol");
    expect_password_failure(&env, "carol", "wrong").await;
    // Unknown users fail the same way, so they cannot be told apart.
    expect_password_failure(&env, "nobody_here", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_only_a_verifier_reuses_the_client_key_towards_the_backend() {
    let cluster = build_cluster(0, HbaMethod::ScramSha256).await;
    cluster.create_role("alice", "wonderland", PasswordEncryption::ScramSha256).unwrap();
    let verifier = cluster.psql(0, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'").unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let env = Env::start_on(cluster, Options { users: vec![format!("alice = \"{verifier}\"")], ..Options::default() }).await;
    let c = connect(env.pg_config("alice", "wonderland")).await.unwrap();
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "alice");
    expect_password_failure(&env, "alice", "looking-glass").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_that_differs_from_the_backend_gets_a_clear_error() {
    let cluster = build_cluster(0, HbaMethod::ScramSha256).await;
    cluster.create_role("dave", "same password", PasswordEncryption::ScramSha256).unwrap();
    // A verifier of the same password with another salt: the client proves it, but the
    // ClientKey cannot answer the backend's different salt.
    let other = pgvigil::protocol::scram::ScramVerifier::generate("same password").to_pg_string();
    let env = Env::start_on(cluster, Options { users: vec![format!("dave = \"{other}\"")], ..Options::default() }).await;
    let e = connect(env.pg_config("dave", "same password")).await.err().expect("must fail");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("SCRAM"), "{}", db.message());
    assert!(!db.message().contains("same password"));
    // The other sessions are unaffected.
    env.client().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_clients_and_md5_backends() {
    let cluster = build_cluster(0, HbaMethod::Md5).await;
    cluster.create_role("bob", "builder", PasswordEncryption::Md5).unwrap();
    let hash = cluster.psql(0, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'bob'").unwrap();
    assert!(hash.starts_with("md5"));
    let env = Env::start_on(
        cluster,
        Options { auth_method: "md5", hba: HbaMethod::Md5, users: vec![format!("bob = \"{hash}\"")], ..Options::default() },
    )
    .await;
    // The raw client answers the md5 challenge itself, proving pgvigil sent one.
    let raw = Raw::connect(env.addr).await;
    let mut raw = raw.login("bob", "builder").await.unwrap().0;
    let who = first_column(&raw.simple_query("SELECT current_user").await);
    assert_eq!(who, vec!["bob".to_string()]);
    let c = connect(env.pg_config("bob", "builder")).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    expect_password_failure(&env, "bob", "fixer").await;
    // Plaintext entries answer md5 too (superuser from the users file).
    env.client().await.simple_query("SELECT 1").await.unwrap();
}

/// The first Authentication request pgvigil sends `user`.
async fn first_auth_request(env: &Env, user: &str) -> AuthRequest {
    let mut raw = Raw::connect(env.addr).await;
    let mut out = bytes::BytesMut::new();
    startup::write_startup(&mut out, &[("user".into(), user.into()), ("database".into(), "postgres".into())]);
    raw.send(&out).await;
    let m = raw.recv().await.expect("an authentication request");
    backend::parse_auth(&m.body).expect("an Authentication message")
}

/// As PostgreSQL: under md5, a user whose users-file entry is a SCRAM verifier is asked
/// for SCRAM-SHA-256; other users still get md5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_runs_scram_for_a_user_with_a_scram_verifier() {
    let cluster = build_cluster(0, HbaMethod::ScramSha256).await;
    cluster.create_role("erin", "3rin pw", PasswordEncryption::ScramSha256).unwrap();
    let verifier = cluster.psql(0, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'erin'").unwrap();
    let env = Env::start_on(cluster, Options { auth_method: "md5", users: vec![format!("erin = \"{verifier}\"")], ..Options::default() }).await;
    assert_eq!(first_auth_request(&env, "erin").await, AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()]));
    assert!(matches!(first_auth_request(&env, SUPERUSER).await, AuthRequest::Md5(_)));
    let c = connect(env.pg_config("erin", "3rin pw")).await.expect("erin logs in by SCRAM");
    let who = c.query_one("SELECT current_user::text", &[]).await.unwrap().get::<_, String>(0);
    assert_eq!(who, "erin");
    expect_password_failure(&env, "erin", "wrong").await;
    // check-config accepts the configuration.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgvigil")).args(["check-config", "--config"]).arg(&env.config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_clients_with_cleartext_backend() {
    let env = Env::start(Options { auth_method: "trust", hba: HbaMethod::Password, ..Options::default() }).await;
    // Any password is accepted by pgvigil; the backend gets the users-file password.
    let c = connect(env.pg_config(SUPERUSER, "ignored")).await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    // A user without a users-file entry cannot log in to a password backend.
    let e = connect(env.pg_config("stranger", "x")).await.err().expect("must fail");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("stranger"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refusal_is_relayed_as_is() {
    let env = Env::start(Options::default()).await;
    let mut cfg = env.pg_config(SUPERUSER, SUPERPASS);
    cfg.dbname("no_such_db");
    let e = connect(cfg).await.err().expect("must fail");
    let db = e.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "3D000");
    assert_eq!(db.message(), "database \"no_such_db\" does not exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_clients_with_a_trust_backend() {
    let env = Env::start(Options { hba: HbaMethod::Trust, users: vec!["frank = \"fr4nk\"".into()], ..Options::default() }).await;
    env.cluster.psql(0, "postgres", "CREATE ROLE frank LOGIN").unwrap();
    // pgvigil checks the password; the backend asks for none.
    let c = connect(env.pg_config("frank", "fr4nk")).await.unwrap();
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "frank");
    expect_password_failure(&env, "frank", "wrong").await;
}
