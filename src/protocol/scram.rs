//! SCRAM-SHA-256 (placeholder until the auth branch lands)
#[derive(Clone)]
pub struct ScramVerifier { pub iterations: u32, pub salt: Vec<u8>, pub stored_key: [u8; 32], pub server_key: [u8; 32] }
#[derive(Debug, thiserror::Error)]
pub enum ScramError { #[error("malformed {0}")] Malformed(&'static str), #[error("bad proof")] BadProof, #[error("mismatch")] Mismatch, #[error("server error {0}")] ServerError(String), #[error("bad server signature")] BadServerSignature, #[error("channel binding {0}")] ChannelBinding(&'static str) }
impl ScramVerifier {
    pub fn parse(_s: &str) -> Result<Self, ScramError> { todo!() }
    pub fn generate(_password: &str) -> Self { todo!() }
    pub fn mock(_user: &str, _secret: &[u8]) -> Self { todo!() }
}
pub struct ServerExchange;
pub struct ServerFinal { pub server_final: Vec<u8>, pub client_key: [u8; 32] }
impl ServerExchange {
    pub fn new(_verifier: ScramVerifier) -> Self { todo!() }
    pub fn handle_client_first(&mut self, _msg: &[u8]) -> Result<Vec<u8>, ScramError> { todo!() }
    pub fn handle_client_final(&mut self, _msg: &[u8]) -> Result<ServerFinal, ScramError> { todo!() }
}
pub enum ClientCredential { Password(String), ClientKey { client_key: [u8; 32], verifier: ScramVerifier } }
pub struct ClientExchange;
impl ClientExchange {
    pub fn new(_cred: ClientCredential) -> Self { todo!() }
    pub fn client_first(&self) -> Vec<u8> { todo!() }
    pub fn handle_server_first(&mut self, _msg: &[u8]) -> Result<Vec<u8>, ScramError> { todo!() }
    pub fn handle_server_final(&mut self, _msg: &[u8]) -> Result<(), ScramError> { todo!() }
}
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
