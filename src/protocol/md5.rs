//! PostgreSQL md5 password hashing. (placeholder until the auth branch lands)
pub fn md5_password_hash(_user: &str, _password: &str) -> String { todo!() }
pub fn md5_salted_response(_md5_hash: &str, _salt: [u8; 4]) -> String { todo!() }
pub fn is_md5_hash(s: &str) -> bool { s.len() == 35 && s.starts_with("md5") }
