//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it: verifiers, server side, client side.
//!
//! Everything here is I/O-free and total: malformed input yields a [`ScramError`], never a
//! panic. Proofs, keys and signatures are compared in constant time, and neither errors nor
//! `Debug` output ever contain passwords or key material.
//!
//! **SASLprep.** PostgreSQL normalizes passwords with SASLprep (RFC 4013) before hashing. For
//! passwords made of printable ASCII, SASLprep is the identity, which is what we implement.
//! Non-ASCII passwords are used as their raw UTF-8 bytes; this matches PostgreSQL when the
//! password is already in NFKC and contains no prohibited characters (PostgreSQL also falls
//! back to the raw bytes when SASLprep fails).

use std::fmt;

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SCRAM-SHA-256 with `tls-server-end-point` channel binding (offered over TLS).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL (and pgvigil) supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
const DEFAULT_ITERATIONS: u32 = 4096;
const DEFAULT_SALT_LEN: usize = 16;
const NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("password authentication failed (invalid SCRAM proof)")]
    BadProof,
    #[error("SCRAM verifier mismatch: the server's salt/iteration count differ from ours")]
    Mismatch,
    #[error("SCRAM error from server: {0}")]
    ServerError(String),
    #[error("invalid SCRAM server signature")]
    BadServerSignature,
    #[error("SCRAM channel binding: {0}")]
    ChannelBinding(&'static str),
    #[error("SCRAM message received out of order")]
    OutOfOrder,
    #[error("the server asks for {0} PBKDF2 iterations, over pgvigil's limit of {MAX_CLIENT_ITERATIONS}")]
    TooManyIterations(u32),
}

/// The most PBKDF2 iterations pgvigil computes as a SCRAM client with a password.
/// PostgreSQL's default is 4096 (`scram_iterations`, 16+); ten million take seconds of
/// CPU, and a server asking for more (up to 2^32 - 1) would hold a thread for hours.
pub const MAX_CLIENT_ITERATIONS: u32 = 10_000_000;

use ScramError::Malformed;

/// Constant-time equality (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// HMAC-SHA-256 with a 32-byte key. HMAC zero-pads keys shorter than the block size, so the
/// fixed-size (infallible) constructor on the padded key is exactly HMAC(key, ·).
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = hmac::digest::Key::<HmacSha256>::default();
    k[..32].copy_from_slice(key);
    let mut m = <HmacSha256 as Mac>::new(&k);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// SASLprep: identity (see module docs).
fn saslprep(password: &str) -> &[u8] {
    password.as_bytes()
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(saslprep(password), salt, iterations, &mut out);
    out
}

/// ClientKey of a password (RFC 5802).
pub(crate) fn client_key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    hmac(&salted_password(password, salt, iterations), &[b"Client Key"])
}

fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut raw);
    B64.encode(raw)
}

fn b64_32(s: &str, what: &'static str) -> Result<[u8; 32], ScramError> {
    B64.decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(Malformed(what))
}

/// Printable ASCII except ',' (RFC 5802 `printable`), non-empty.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Strip `name=` from `part`.
fn attr<'a>(part: Option<&'a str>, name: char, what: &'static str) -> Result<&'a str, ScramError> {
    let part = part.ok_or(Malformed(what))?;
    let mut c = part.chars();
    match (c.next(), c.next()) {
        (Some(n), Some('=')) if n == name => Ok(c.as_str()),
        _ => Err(Malformed(what)),
    }
}

fn is_attr(part: &str) -> bool {
    let b = part.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

fn utf8(msg: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(msg).map_err(|_| Malformed("not UTF-8"))
}

fn parse_iterations(s: &str) -> Result<u32, ScramError> {
    match s.parse::<u32>() {
        Ok(i) if i > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(i),
        _ => Err(Malformed("iteration count")),
    }
}

/// A SCRAM-SHA-256 secret as stored in `pg_authid.rolpassword`.
#[derive(Clone)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl ScramVerifier {
    /// Parse `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix(SCRAM_SHA_256)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or(Malformed("verifier mechanism"))?;
        let (params, keys) = rest.split_once('$').ok_or(Malformed("verifier layout"))?;
        let (iter, salt) = params.split_once(':').ok_or(Malformed("verifier layout"))?;
        let (stored, server) = keys.split_once(':').ok_or(Malformed("verifier layout"))?;
        let salt = B64.decode(salt).map_err(|_| Malformed("verifier salt"))?;
        if salt.is_empty() {
            return Err(Malformed("verifier salt"));
        }
        Ok(Self {
            iterations: parse_iterations(iter)?,
            salt,
            stored_key: b64_32(stored, "verifier StoredKey")?,
            server_key: b64_32(server, "verifier ServerKey")?,
        })
    }

    /// Derive the verifier for `password` (an iteration count of 0 is treated as 1).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let salted = salted_password(password, salt, iterations);
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&hmac(&salted, &[b"Client Key"])),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// A new verifier with PostgreSQL's defaults: random 16-byte salt, 4096 iterations.
    pub fn generate(password: &str) -> Self {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn to_pg_string(&self) -> String {
        format!(
            "{SCRAM_SHA_256}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Deterministic fake verifier for an unknown user, like PostgreSQL's `mock_scram_secret`:
    /// salt = first 16 bytes of SHA-256(user || secret), default iterations, all-zero keys
    /// (no ClientKey hashes to zero, so authentication always fails with `BadProof`). The same
    /// user always sees the same salt, so unknown users look like real ones.
    pub fn mock(user: &str, secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update(secret);
        Self {
            iterations: DEFAULT_ITERATIONS,
            salt: h.finalize()[..DEFAULT_SALT_LEN].to_vec(),
            stored_key: [0; 32],
            server_key: [0; 32],
        }
    }
}

/// Where a [`ServerExchange`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStep {
    AwaitingClientFirst,
    AwaitingClientFinal,
    Done,
    Failed,
}

struct ServerFirstState {
    gs2_header: String,
    client_nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// The proxy acting as a SCRAM server toward a client.
pub struct ServerExchange {
    verifier: ScramVerifier,
    /// Channel binding data offered (the connection is TLS), and whether the client
    /// selected SCRAM-SHA-256-PLUS.
    binding: Option<(Vec<u8>, bool)>,
    server_nonce: String,
    first: Option<ServerFirstState>,
    step: ServerStep,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("verifier", &self.verifier)
            .field("step", &self.step)
            .finish()
    }
}

/// Result of a successful exchange: the server-final message and the client's ClientKey
/// (recovered from its proof), which lets the proxy authenticate to a backend sharing the verifier.
pub struct ServerFinal {
    pub server_final: Vec<u8>,
    pub client_key: [u8; 32],
}

impl fmt::Debug for ServerFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFinal")
            .field("client_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ServerExchange {
    pub fn new(verifier: ScramVerifier) -> Self {
        Self::with_nonce(verifier, random_nonce())
    }

    /// An exchange on a TLS connection, where SCRAM-SHA-256-PLUS was offered with
    /// `end_point` (the `tls-server-end-point` data); `plus`: the client selected it.
    pub fn with_channel_binding(verifier: ScramVerifier, end_point: Vec<u8>, plus: bool) -> Self {
        Self::new(verifier).bound(end_point, plus)
    }

    /// This exchange with channel binding data offered (see [`Self::with_channel_binding`]).
    pub(crate) fn bound(self, end_point: Vec<u8>, plus: bool) -> Self {
        Self { binding: Some((end_point, plus)), ..self }
    }

    /// An exchange with a fixed server nonce (tests and fuzzing).
    pub(crate) fn with_nonce(verifier: ScramVerifier, server_nonce: String) -> Self {
        Self {
            verifier,
            binding: None,
            server_nonce,
            first: None,
            step: ServerStep::AwaitingClientFirst,
        }
    }

    pub fn step(&self) -> ServerStep {
        self.step
    }

    /// Consume the client-first-message, return the server-first-message.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if self.step != ServerStep::AwaitingClientFirst {
            return Err(ScramError::OutOfOrder);
        }
        self.step = ServerStep::Failed;
        let msg = utf8(msg)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(Malformed("gs2 header"))?;
        let plus = self.binding.as_ref().is_some_and(|(_, plus)| *plus);
        match flag {
            "n" | "y" if plus => {
                return Err(ScramError::ChannelBinding(
                    "client selected SCRAM-SHA-256-PLUS but sent no channel binding",
                ))
            }
            // "y": the client could bind but thinks the server cannot. When it was
            // offered, someone removed the offer on the way: a downgrade.
            "y" if self.binding.is_some() => {
                return Err(ScramError::ChannelBinding(
                    "client supports channel binding and thinks the server does not, but it was offered",
                ))
            }
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                if !plus {
                    return Err(ScramError::ChannelBinding(
                        "client requires channel binding, which is not offered",
                    ));
                }
                if f != format!("p={TLS_SERVER_END_POINT}") {
                    return Err(ScramError::ChannelBinding("unsupported channel binding type"));
                }
            }
            _ => return Err(Malformed("gs2 channel-binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(Malformed("gs2 header"))?;
        if !authzid.is_empty() {
            return Err(Malformed("authzid not supported"));
        }
        let gs2_header = &msg[..msg.len() - bare.len()];
        if bare.starts_with("m=") {
            return Err(Malformed("unsupported mandatory extension"));
        }
        let mut parts = bare.split(',');
        attr(parts.next(), 'n', "username")?; // ignored, as PostgreSQL does
        let client_nonce = attr(parts.next(), 'r', "client nonce")?;
        if !is_printable(client_nonce) {
            return Err(Malformed("client nonce"));
        }
        if !parts.all(is_attr) {
            return Err(Malformed("client-first extension"));
        }
        let v = &self.verifier;
        let server_first = format!(
            "r={client_nonce}{},s={},i={}",
            self.server_nonce,
            B64.encode(&v.salt),
            v.iterations
        );
        self.first = Some(ServerFirstState {
            gs2_header: gs2_header.to_owned(),
            client_nonce: client_nonce.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
        });
        self.step = ServerStep::AwaitingClientFinal;
        Ok(server_first.into_bytes())
    }

    /// Consume the client-final-message; on a valid proof return the server-final-message.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<ServerFinal, ScramError> {
        let first = match (self.step, self.first.take()) {
            (ServerStep::AwaitingClientFinal, Some(f)) => f,
            _ => return Err(ScramError::OutOfOrder),
        };
        self.step = ServerStep::Failed;
        let msg = utf8(msg)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(Malformed("client proof"))?;
        let proof = b64_32(proof, "client proof")?;
        let mut parts = without_proof.split(',');
        let cbind = attr(parts.next(), 'c', "channel binding")?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| Malformed("channel binding"))?;
        let mut expected = first.gs2_header.as_bytes().to_vec();
        if first.gs2_header.starts_with("p=") {
            if let Some((data, _)) = &self.binding {
                expected.extend_from_slice(data);
            }
        }
        if !ct_eq(&cbind, &expected) {
            return Err(ScramError::ChannelBinding(
                "c= does not match the gs2 header",
            ));
        }
        let nonce = attr(parts.next(), 'r', "final nonce")?;
        let expected_nonce = [first.client_nonce.as_str(), &self.server_nonce].concat();
        if nonce != expected_nonce {
            return Err(Malformed("nonce mismatch"));
        }
        if !parts.all(|a| is_attr(a) && !a.starts_with("p=")) {
            return Err(Malformed("client-final extension"));
        }
        let auth_message = [
            first.client_first_bare.as_str(),
            &first.server_first,
            without_proof,
        ]
        .join(",");
        let v = &self.verifier;
        let client_signature = hmac(&v.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor32(&proof, &client_signature);
        if !ct_eq(&sha256(&client_key), &v.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&v.server_key, &[auth_message.as_bytes()]);
        self.step = ServerStep::Done;
        Ok(ServerFinal {
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
            client_key,
        })
    }
}

/// What the proxy authenticates to PostgreSQL with.
#[derive(Clone)]
pub enum ClientCredential {
    Password(String),
    /// ClientKey learned from a client's proof, plus the verifier it belongs to (for ServerKey
    /// and to check that the backend uses the same salt and iteration count).
    ClientKey {
        client_key: [u8; 32],
        verifier: ScramVerifier,
    },
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password(_) => f.write_str("Password(<redacted>)"),
            Self::ClientKey { verifier, .. } => f
                .debug_struct("ClientKey")
                .field("client_key", &"<redacted>")
                .field("verifier", verifier)
                .finish(),
        }
    }
}

enum ClientState {
    Initial,
    SentFinal { server_signature: [u8; 32] },
    Done,
    Failed,
}

/// The proxy acting as a SCRAM client toward PostgreSQL.
pub struct ClientExchange {
    cred: ClientCredential,
    /// `n,,` (no channel binding), `y,,` (TLS, but the server offered no -PLUS) or
    /// `p=tls-server-end-point,,`.
    gs2_header: &'static str,
    /// The server certificate's hash with `p=`, else empty.
    cbind_data: Vec<u8>,
    client_nonce: String,
    /// Always empty outside tests: PostgreSQL ignores the SCRAM username (libpq sends `n=`).
    user: String,
    state: ClientState,
}

impl fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientExchange")
            .field("cred", &self.cred)
            .finish_non_exhaustive()
    }
}

impl ClientExchange {
    /// An exchange without channel binding (plain TCP).
    pub fn new(cred: ClientCredential) -> Self {
        Self::with_nonce(cred, random_nonce(), String::new())
    }

    /// An exchange for a server offering `mechanisms`, over TLS when `end_point` (the
    /// server certificate's `tls-server-end-point` hash) is given; returns it with the
    /// mechanism to name. Over TLS, SCRAM-SHA-256-PLUS is used when offered (as libpq's
    /// `channel_binding=prefer`). `None` when no SCRAM mechanism is offered.
    pub fn for_server(cred: ClientCredential, end_point: Option<Vec<u8>>, mechanisms: &[String]) -> Option<(Self, &'static str)> {
        let offered = |m: &str| mechanisms.iter().any(|x| x == m);
        let mut exchange = Self::new(cred);
        match end_point {
            Some(data) if offered(SCRAM_SHA_256_PLUS) => {
                exchange.gs2_header = "p=tls-server-end-point,,";
                exchange.cbind_data = data;
                Some((exchange, SCRAM_SHA_256_PLUS))
            }
            Some(_) if offered(SCRAM_SHA_256) => {
                exchange.gs2_header = "y,,";
                Some((exchange, SCRAM_SHA_256))
            }
            None if offered(SCRAM_SHA_256) => Some((exchange, SCRAM_SHA_256)),
            _ => None,
        }
    }

    /// An exchange with a fixed client nonce (tests and fuzzing).
    pub(crate) fn with_nonce(cred: ClientCredential, client_nonce: String, user: String) -> Self {
        Self {
            cred,
            gs2_header: "n,,",
            cbind_data: Vec::new(),
            client_nonce,
            user,
            state: ClientState::Initial,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.user, self.client_nonce)
    }

    /// The client-first-message: the gs2 header, then `n=,r=<nonce>`.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare()).into_bytes()
    }

    /// Whether [`Self::handle_server_first`] derives keys from a password (PBKDF2 with
    /// the server's iteration count: CPU work to keep off async worker threads).
    pub fn derives_keys(&self) -> bool {
        matches!(self.cred, ClientCredential::Password(_))
    }

    /// Consume the server-first-message, return the client-final-message.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        self.state = ClientState::Failed;
        let server_first = utf8(msg)?;
        let mut parts = server_first.split(',');
        let nonce = attr(parts.next(), 'r', "server nonce")?;
        if nonce.len() <= self.client_nonce.len()
            || !nonce.starts_with(&self.client_nonce)
            || !is_printable(nonce)
        {
            return Err(Malformed("server nonce"));
        }
        let salt = B64
            .decode(attr(parts.next(), 's', "salt")?)
            .map_err(|_| Malformed("salt"))?;
        if salt.is_empty() {
            return Err(Malformed("salt"));
        }
        let iterations = parse_iterations(attr(parts.next(), 'i', "iteration count")?)?;
        if parts.next().is_some() {
            return Err(Malformed("garbage at end of server-first-message"));
        }
        let (client_key, server_key) = match &self.cred {
            ClientCredential::Password(_) if iterations > MAX_CLIENT_ITERATIONS => {
                return Err(ScramError::TooManyIterations(iterations));
            }
            ClientCredential::Password(pw) => {
                let salted = salted_password(pw, &salt, iterations);
                (
                    hmac(&salted, &[b"Client Key"]),
                    hmac(&salted, &[b"Server Key"]),
                )
            }
            ClientCredential::ClientKey {
                client_key,
                verifier,
            } => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(ScramError::Mismatch);
                }
                (*client_key, verifier.server_key)
            }
        };
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cbind_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = [
            self.client_first_bare().as_str(),
            server_first,
            &without_proof,
        ]
        .join(",");
        let stored_key = sha256(&client_key);
        let proof = xor32(&client_key, &hmac(&stored_key, &[auth_message.as_bytes()]));
        let server_signature = hmac(&server_key, &[auth_message.as_bytes()]);
        self.state = ClientState::SentFinal { server_signature };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Consume the server-final-message and verify the server's signature.
    pub fn handle_server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = utf8(msg)?;
        if let Some(e) = msg.strip_prefix("e=") {
            let e: String = e.chars().take(100).filter(|c| !c.is_control()).collect();
            return Err(ScramError::ServerError(e));
        }
        let sig = b64_32(
            attr(Some(msg), 'v', "server signature")?,
            "server signature",
        )?;
        if !ct_eq(&sig, &server_signature) {
            return Err(ScramError::BadServerSignature);
        }
        self.state = ClientState::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScramError::*;

    /// `CREATE ROLE alice PASSWORD 'wonderland'` on PostgreSQL 15.
    const PG_ALICE: &str = "SCRAM-SHA-256$4096:WUQ33Hvl5aBlIKfgYAFwRw==$9tDYsz6Jm42tPolWI+RZt7/H7jN2nnSlRo0lKx+Hrr0=:Xq3IJZLN+6wLjJFiLgIxZavAc3T1iESxJpEfqxLrpQs=";

    // RFC 7677 section 3.
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CNONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SNONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_C1: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_S1: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_NONCE: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_PROOF: &str = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_S2: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_c2() -> String {
        format!("c=biws,{RFC_NONCE},{RFC_PROOF}")
    }

    fn pw(p: &str) -> ClientCredential {
        ClientCredential::Password(p.into())
    }

    fn rfc_verifier() -> ScramVerifier {
        ScramVerifier::from_password("pencil", &B64.decode(RFC_SALT).unwrap(), 4096)
    }

    fn rfc_client() -> ClientExchange {
        ClientExchange::with_nonce(pw("pencil"), RFC_CNONCE.into(), "user".into())
    }

    fn rfc_server(c1: &str) -> ServerExchange {
        let mut s = ServerExchange::with_nonce(rfc_verifier(), RFC_SNONCE.into());
        s.handle_client_first(c1.as_bytes()).unwrap();
        s
    }

    /// Full exchange with random nonces: (server's final result, client's final result).
    fn run(
        v: ScramVerifier,
        cred: ClientCredential,
    ) -> (Result<ServerFinal, ScramError>, Result<(), ScramError>) {
        let (mut s, mut c) = (ServerExchange::new(v), ClientExchange::new(cred));
        let s1 = s.handle_client_first(&c.client_first()).unwrap();
        let c2 = match c.handle_server_first(&s1) {
            Ok(c2) => c2,
            Err(e) => return (Err(OutOfOrder), Err(e)),
        };
        let fin = s.handle_client_final(&c2);
        let s2 = fin
            .as_ref()
            .map_or(b"e=invalid-proof".to_vec(), |f| f.server_final.clone());
        (fin, c.handle_server_final(&s2))
    }

    #[test]
    fn rfc7677_server_side() {
        let mut s = rfc_server(RFC_C1);
        assert_eq!(s.step(), ServerStep::AwaitingClientFinal);
        let fin = s.handle_client_final(rfc_c2().as_bytes()).unwrap();
        assert_eq!(fin.server_final, RFC_S2.as_bytes());
        assert_eq!(sha256(&fin.client_key), rfc_verifier().stored_key);
        assert_eq!(s.step(), ServerStep::Done);
        assert_eq!(s.handle_client_final(rfc_c2().as_bytes()).unwrap_err(), OutOfOrder);
        let mut s = ServerExchange::with_nonce(rfc_verifier(), RFC_SNONCE.into());
        assert_eq!(
            s.handle_client_first(RFC_C1.as_bytes()).unwrap(),
            RFC_S1.as_bytes()
        );
    }

    #[test]
    fn rfc7677_client_side() {
        let mut c = rfc_client();
        assert_eq!(c.client_first(), RFC_C1.as_bytes());
        assert_eq!(
            c.handle_server_first(RFC_S1.as_bytes()).unwrap(),
            rfc_c2().as_bytes()
        );
        assert_eq!(c.handle_server_final(RFC_S2.as_bytes()), Ok(()));
        assert_eq!(c.handle_server_final(RFC_S2.as_bytes()), Err(OutOfOrder));
        let c = ClientExchange::new(pw("x"));
        let c1 = String::from_utf8(c.client_first()).unwrap();
        assert!(c1.starts_with("n,,n=,r=") && c1.len() == 8 + 24, "{c1}");
    }

    #[test]
    fn round_trip_password_and_client_key_reuse() {
        let v = ScramVerifier::generate("s3cret pw");
        assert_eq!((v.salt.len(), v.iterations), (16, 4096));
        let (fin, client) = run(v.clone(), pw("s3cret pw"));
        assert_eq!(client, Ok(()));
        let client_key = fin.unwrap().client_key;
        // The backend holds the same verifier (as text in pg_authid): reuse the learned ClientKey.
        let backend = ScramVerifier::parse(&v.to_pg_string()).unwrap();
        let cred = ClientCredential::ClientKey {
            client_key,
            verifier: v.clone(),
        };
        let (fin2, client2) = run(backend, cred.clone());
        assert_eq!(client2, Ok(()));
        assert_eq!(fin2.unwrap().client_key, client_key);
        // The backend's verifier has another salt or iteration count (password re-set): Mismatch.
        let other = ScramVerifier::from_password("s3cret pw", b"another salt", 4096);
        assert_eq!(run(other, cred.clone()).1, Err(Mismatch));
        let other = ScramVerifier::from_password("s3cret pw", &v.salt, 4097);
        assert_eq!(run(other, cred).1, Err(Mismatch));
    }

    #[test]
    fn wrong_password_and_mock() {
        let v = ScramVerifier::from_password("right", b"saltsalt", 64);
        let (fin, client) = run(v, pw("wrong"));
        assert_eq!(fin.unwrap_err(), BadProof);
        assert_eq!(client, Err(ServerError("invalid-proof".into())));
        let m = ScramVerifier::mock("ghost", b"cluster secret");
        assert_eq!(
            m.to_pg_string(),
            ScramVerifier::mock("ghost", b"cluster secret").to_pg_string()
        );
        assert_ne!(
            m.salt,
            ScramVerifier::mock("ghost2", b"cluster secret").salt
        );
        assert_ne!(m.salt, ScramVerifier::mock("ghost", b"other secret").salt);
        assert_eq!((m.salt.len(), m.iterations), (16, 4096));
        assert_eq!(run(m, pw("")).0.unwrap_err(), BadProof);
    }

    #[test]
    fn real_postgresql_verifier() {
        let v = ScramVerifier::parse(PG_ALICE).unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.to_pg_string(), PG_ALICE);
        let again = ScramVerifier::from_password("wonderland", &v.salt, v.iterations);
        assert_eq!(again.to_pg_string(), PG_ALICE);
        let (fin, client) = run(v.clone(), pw("wonderland"));
        assert!(fin.is_ok() && client.is_ok());
        assert_eq!(run(v, pw("Wonderland")).0.unwrap_err(), BadProof);
    }

    #[test]
    fn verifier_parse_errors() {
        let (salt, stored) = (
            "WUQ33Hvl5aBlIKfgYAFwRw==",
            "9tDYsz6Jm42tPolWI+RZt7/H7jN2nnSlRo0lKx+Hrr0=",
        );
        let bad = [
            String::new(),
            "SCRAM-SHA-256".into(),
            PG_ALICE.replace("SHA-256", "SHA-1"),
            PG_ALICE.replace('$', "#"),
            PG_ALICE.replace(':', ";"),
            PG_ALICE.replace("4096", "0"),
            PG_ALICE.replace("4096", "+4096"),
            PG_ALICE.replace("4096", "99999999999"),
            PG_ALICE.replace(salt, ""),
            PG_ALICE.replace(salt, "!!"),
            PG_ALICE.replace(stored, "AAAA"),
            PG_ALICE.replace(stored, &stored[1..]),
            PG_ALICE.trim_end_matches('=').into(),
            format!("{PG_ALICE}:AA=="),
            "md58cc7ff7afbc8551bd526b65944c17b36".into(),
        ];
        for s in bad
            .iter()
            .map(String::as_str)
            .chain((0..PG_ALICE.len()).map(|n| &PG_ALICE[..n]))
        {
            assert!(matches!(ScramVerifier::parse(s), Err(Malformed(_))), "{s}");
        }
    }

    #[test]
    fn client_first_errors() {
        let cases = [
            ("", Malformed("gs2 header")),
            ("n", Malformed("gs2 header")),
            ("x,,n=,r=abc", Malformed("gs2 channel-binding flag")),
            (
                "p=tls-server-end-point,,n=,r=abc",
                ChannelBinding("client requires channel binding, which is not offered"),
            ),
            ("n,a=admin,n=,r=abc", Malformed("authzid not supported")),
            (
                "n,,m=ext,n=,r=abc",
                Malformed("unsupported mandatory extension"),
            ),
            ("n,,r=abc", Malformed("username")),
            ("n,,n=", Malformed("client nonce")),
            ("n,,n=,r=", Malformed("client nonce")),
            ("n,,n=,x=abc", Malformed("client nonce")),
            ("n,,n=,r=a\u{7f}c", Malformed("client nonce")),
            ("n,,n=,r=abc,bogus", Malformed("client-first extension")),
            ("n,,n=,r=abc,", Malformed("client-first extension")),
        ];
        for (msg, err) in cases {
            let mut s = ServerExchange::new(rfc_verifier());
            assert_eq!(s.handle_client_first(msg.as_bytes()), Err(err), "{msg}");
            assert_eq!(s.step(), ServerStep::Failed);
            assert_eq!(s.handle_client_first(b"n,,n=,r=abc"), Err(OutOfOrder));
        }
        let mut s = ServerExchange::new(rfc_verifier());
        assert_eq!(
            s.handle_client_first(b"n,,n=,r=\xff"),
            Err(Malformed("not UTF-8"))
        );
        // "y" and extensions after the nonce are accepted; the username is ignored.
        rfc_server("y,,n=whoever,r=abc,x=ext");
        let mut s = ServerExchange::new(rfc_verifier());
        assert_eq!(
            s.handle_client_final(rfc_c2().as_bytes()).unwrap_err(),
            OutOfOrder
        );
    }

    #[test]
    fn client_final_errors() {
        let (n, p) = (RFC_NONCE, RFC_PROOF);
        let cb = ChannelBinding("c= does not match the gs2 header");
        let cases = [
            (String::new(), Malformed("client proof")),
            (format!("c=biws,{n}"), Malformed("client proof")),
            (format!("c=biws,{n},p=AAAA"), Malformed("client proof")),
            (format!("c=biws,{n},p=!!"), Malformed("client proof")),
            (format!("c=biws,{n},{p},x=1"), Malformed("client proof")),
            (format!("{n},{p}"), Malformed("channel binding")),
            (format!("c=!!,{n},{p}"), Malformed("channel binding")),
            (format!("c=eSws,{n},{p}"), cb.clone()), // "y,,"
            (format!("c=biwsAA==,{n},{p}"), cb.clone()),
            (format!("c=biws,{p}"), Malformed("final nonce")),
            (
                format!("c=biws,r={RFC_CNONCE},{p}"),
                Malformed("nonce mismatch"),
            ),
            (format!("c=biws,{n}x,{p}"), Malformed("nonce mismatch")),
            (
                format!("c=biws,{n},junk,{p}"),
                Malformed("client-final extension"),
            ),
            (
                format!("c=biws,{n},p=AAAA,{p}"),
                Malformed("client-final extension"),
            ),
            (format!("c=biws,{n},x=ext,{p}"), BadProof),
            (
                format!("c=biws,{n},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU="),
                BadProof,
            ),
        ];
        for (msg, err) in cases {
            let mut s = rfc_server(RFC_C1);
            assert_eq!(
                s.handle_client_final(msg.as_bytes()).unwrap_err(),
                err,
                "{msg}"
            );
            assert_eq!(s.step(), ServerStep::Failed);
        }
        // With a "y,," header the client must echo c=eSws.
        let mut s = rfc_server("y,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert_eq!(s.handle_client_final(rfc_c2().as_bytes()).unwrap_err(), cb);
    }

    #[test]
    fn server_messages_errors() {
        let (c, s) = (RFC_CNONCE, RFC_SALT);
        let first = [
            (String::new(), Malformed("server nonce")),
            (format!("r={c},s={s},i=4096"), Malformed("server nonce")),
            (format!("r=X{c}abc,s={s},i=4096"), Malformed("server nonce")),
            (format!("r={c}a,bc,s={s},i=4096"), Malformed("salt")),
            (format!("r={c}abc,i=4096"), Malformed("salt")),
            (format!("r={c}abc,s=,i=4096"), Malformed("salt")),
            (format!("r={c}abc,s=%%,i=4096"), Malformed("salt")),
            (format!("r={c}abc,s={s}"), Malformed("iteration count")),
            (format!("r={c}abc,s={s},i=0"), Malformed("iteration count")),
            (format!("r={c}abc,s={s},i=-1"), Malformed("iteration count")),
            (format!("r={c}abc,s={s},i=4294967296"), Malformed("iteration count")),
            (format!("r={c}abc,s={s},i=4294967295"), TooManyIterations(u32::MAX)),
            (format!("r={c}abc,s={s},i=10000001"), TooManyIterations(MAX_CLIENT_ITERATIONS + 1)),
            (
                format!("r={c}abc,s={s},i=1,x=y"),
                Malformed("garbage at end of server-first-message"),
            ),
            ("e=invalid-proof".into(), Malformed("server nonce")),
        ];
        for (msg, err) in first {
            assert_eq!(
                rfc_client().handle_server_first(msg.as_bytes()),
                Err(err),
                "{msg}"
            );
        }
        assert_eq!(
            rfc_client().handle_server_final(RFC_S2.as_bytes()),
            Err(OutOfOrder)
        );
        let finals: [(&[u8], _); 6] = [
            (b"e=other-error\n\x07", ServerError("other-error".into())),
            (
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G8=",
                BadServerSignature,
            ),
            (
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,x=1",
                Malformed("server signature"),
            ),
            (b"v=AAAA", Malformed("server signature")),
            (b"", Malformed("server signature")),
            (b"\xff", Malformed("not UTF-8")),
        ];
        for (msg, err) in finals {
            let mut c = rfc_client();
            c.handle_server_first(RFC_S1.as_bytes()).unwrap();
            assert_eq!(c.handle_server_final(msg), Err(err));
        }
    }

    /// Every truncation and single-bit flip of each valid message is handled without panicking;
    /// mutated client-final and server-final messages are all rejected.
    #[test]
    fn fuzzish_truncations_and_bit_flips() {
        fn mutations(msg: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
            let flips = (0..msg.len() * 8).map(move |k| {
                let mut m = msg.to_vec();
                m[k / 8] ^= 1 << (k % 8);
                m
            });
            (0..msg.len()).map(move |n| msg[..n].to_vec()).chain(flips)
        }
        let v = ScramVerifier::from_password("pencil", b"fuzz salt", 2);
        let server = || ServerExchange::with_nonce(v.clone(), RFC_SNONCE.into());
        let (mut s, mut c) = (server(), rfc_client());
        let c1 = c.client_first();
        let s1 = s.handle_client_first(&c1).unwrap();
        let c2 = c.handle_server_first(&s1).unwrap();
        let s2 = s.handle_client_final(&c2).unwrap().server_final;
        assert_eq!(c.handle_server_final(&s2), Ok(()));
        for m in mutations(&c1) {
            let _ = server().handle_client_first(&m);
        }
        for m in mutations(&c2) {
            let mut s = server();
            s.handle_client_first(&c1).unwrap();
            assert!(
                s.handle_client_final(&m).is_err(),
                "{}",
                String::from_utf8_lossy(&m)
            );
        }
        for m in mutations(&s1) {
            let _ = rfc_client().handle_server_first(&m);
        }
        for m in mutations(&s2) {
            let mut c = rfc_client();
            c.handle_server_first(&s1).unwrap();
            assert!(c.handle_server_final(&m).is_err());
        }
        for m in mutations(PG_ALICE.as_bytes()) {
            let _ = std::str::from_utf8(&m).map(ScramVerifier::parse);
        }
    }

    /// A whole exchange over a connection with channel binding data `offered`: the client
    /// sends gs2 flag `flag` and binds `bound` (after the gs2 header) in c=.
    fn bound_exchange(offered: &[u8], plus: bool, flag: &str, bound: &[u8]) -> Result<ServerFinal, ScramError> {
        let salted = salted_password("pencil", b"NaCl", 4096);
        let v = ScramVerifier::from_password("pencil", b"NaCl", 4096);
        let mut s = ServerExchange::with_channel_binding(v, offered.to_vec(), plus);
        let gs2 = format!("{flag},,");
        let bare = "n=,r=clientnonce";
        let s1 = String::from_utf8(s.handle_client_first(format!("{gs2}{bare}").as_bytes())?).unwrap();
        let nonce = s1.split(',').next().unwrap().strip_prefix("r=").unwrap();
        let cbind = [gs2.as_bytes(), bound].concat();
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{bare},{s1},{without_proof}");
        let client_key = hmac(&salted, &[b"Client Key"]);
        let signature = hmac(&sha256(&client_key), &[auth_message.as_bytes()]);
        let proof = xor32(&client_key, &signature);
        s.handle_client_final(format!("{without_proof},p={}", B64.encode(proof)).as_bytes())
    }

    #[test]
    fn channel_binding_over_tls() {
        let data = [0x5au8; 32];
        let p = "p=tls-server-end-point";
        // SCRAM-SHA-256-PLUS bound to this connection's certificate.
        assert!(bound_exchange(&data, true, p, &data).is_ok());
        // Bound to another certificate (a man in the middle terminating TLS): refused.
        let other = [0x33u8; 32];
        assert_eq!(bound_exchange(&data, true, p, &other).unwrap_err(), ChannelBinding("c= does not match the gs2 header"));
        // PLUS selected but no binding sent, or an unknown binding type.
        assert!(matches!(bound_exchange(&data, true, "n", b""), Err(ChannelBinding(_))));
        assert!(matches!(bound_exchange(&data, true, "p=tls-unique", &data), Err(ChannelBinding(_))));
        // Plain SCRAM-SHA-256 over TLS is fine ("n": the client does not bind)...
        assert!(bound_exchange(&data, false, "n", b"").is_ok());
        // ...but "y" (the client could bind and was told it cannot) means the offer of
        // PLUS was removed on the way: a downgrade.
        assert!(matches!(bound_exchange(&data, false, "y", b""), Err(ChannelBinding(_))));
        // Binding without having selected PLUS.
        assert!(matches!(bound_exchange(&data, false, p, &data), Err(ChannelBinding(_))));
    }

    #[test]
    fn client_binds_to_the_server_certificate() {
        let v = ScramVerifier::from_password("pencil", b"NaCl", 4096);
        let both = [SCRAM_SHA_256.to_string(), SCRAM_SHA_256_PLUS.to_string()];
        let plain_only = [SCRAM_SHA_256.to_string()];
        let exchange = |client_sees: &[u8], server_has: &[u8], offered: &[String]| {
            let (mut c, mechanism) = ClientExchange::for_server(pw("pencil"), Some(client_sees.to_vec()), offered).unwrap();
            let mut s = ServerExchange::with_channel_binding(v.clone(), server_has.to_vec(), mechanism == SCRAM_SHA_256_PLUS);
            let s1 = s.handle_client_first(&c.client_first())?;
            let fin = s.handle_client_final(&c.handle_server_first(&s1)?)?;
            c.handle_server_final(&fin.server_final).map(|()| mechanism)
        };
        let cert = [0x5au8; 32];
        assert_eq!(exchange(&cert, &cert, &both), Ok(SCRAM_SHA_256_PLUS));
        // A man in the middle presents another certificate: the server refuses.
        assert_eq!(exchange(&[0x33; 32], &cert, &both), Err(ChannelBinding("c= does not match the gs2 header")));
        // No PLUS offered over TLS: "y", which a server that did not offer it accepts.
        let (c, mechanism) = ClientExchange::for_server(pw("pencil"), Some(cert.to_vec()), &plain_only).unwrap();
        assert_eq!((mechanism, c.client_first().starts_with(b"y,,n=")), (SCRAM_SHA_256, true));
        let (c, mechanism) = ClientExchange::for_server(pw("pencil"), None, &both).unwrap();
        assert_eq!((mechanism, c.client_first().starts_with(b"n,,n=")), (SCRAM_SHA_256, true));
        assert!(ClientExchange::for_server(pw("pencil"), None, &[SCRAM_SHA_256_PLUS.to_string()]).is_none());
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let v = ScramVerifier::parse(PG_ALICE).unwrap();
        let cred = ClientCredential::ClientKey {
            client_key: [0xAB; 32],
            verifier: v.clone(),
        };
        let texts = [
            format!("{v:?}"),
            format!("{v:#?}"),
            format!("{cred:?}"),
            format!("{:?}", pw("wonderland")),
            format!("{:?}", ClientExchange::new(pw("wonderland"))),
            format!("{:?}", ClientExchange::new(cred.clone())),
            format!("{:?}", ServerExchange::new(v.clone())),
            format!(
                "{:?}",
                ServerFinal {
                    server_final: vec![],
                    client_key: [0xAB; 32]
                }
            ),
        ];
        let forbidden = [
            "wonderland".to_string(),
            "171".into(), // 0xAB
            B64.encode(v.stored_key),
            B64.encode(v.server_key),
            format!("{}, {}", v.stored_key[0], v.stored_key[1]),
            format!("{}, {}", v.server_key[0], v.server_key[1]),
        ];
        for t in &texts {
            assert!(t.contains("<redacted>"), "{t}");
            assert!(forbidden.iter().all(|f| !t.contains(f.as_str())), "{t}");
        }
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
