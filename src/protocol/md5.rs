//! PostgreSQL md5 password hashing.
//!
//! `pg_authid.rolpassword` holds `"md5" + hex(md5(password || username))`; during
//! `AuthenticationMD5Password` the client answers with
//! `"md5" + hex(md5(hex(md5(password || username)) || salt))`.

use ::md5::{Digest, Md5};

/// Lowercase hex of an md5 digest of the concatenated parts.
fn md5_hex(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for b in h.finalize() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// The md5 hash as stored in `pg_authid`: `"md5" + hex(md5(password || user))`.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// What a client sends in its `PasswordMessage` for `AuthenticationMD5Password` with `salt`:
/// `"md5" + hex(md5(hex_part_of_hash || salt))`.
///
/// `md5_hash` is the stored form (`"md5"` + 32 hex digits); if the `"md5"` prefix is missing
/// the whole string is used as the hex part, so the function is total (a bogus hash simply
/// yields a response that will not match).
pub fn md5_salted_response(md5_hash: &str, salt: [u8; 4]) -> String {
    let hex = md5_hash.strip_prefix("md5").unwrap_or(md5_hash);
    md5_hex(&[hex.as_bytes(), &salt])
}

/// True iff `s` is `"md5"` followed by exactly 32 lowercase hex digits.
pub fn is_md5_hash(s: &str) -> bool {
    match s.strip_prefix("md5") {
        Some(hex) => {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produced by PostgreSQL 15: `SET password_encryption='md5'; CREATE ROLE bob PASSWORD 'builder'`.
    const PG_BOB: &str = "md58cc7ff7afbc8551bd526b65944c17b36";

    #[test]
    fn matches_postgresql_stored_hash() {
        assert_eq!(md5_password_hash("bob", "builder"), PG_BOB);
        assert_ne!(md5_password_hash("bob", "Builder"), PG_BOB);
        assert_ne!(md5_password_hash("bob2", "builder"), PG_BOB);
    }

    #[test]
    fn known_vectors() {
        // md5("") and md5("abc"), the classic RFC 1321 vectors.
        assert_eq!(
            md5_password_hash("", ""),
            "md5d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            md5_password_hash("c", "ab"),
            "md5900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn salted_response() {
        let stored = md5_password_hash("bob", "builder");
        let salt = [0x01, 0x02, 0x03, 0x04];
        let r = md5_salted_response(&stored, salt);
        assert!(is_md5_hash(&r));
        // Definition: md5 over the 32 hex chars followed by the 4 raw salt bytes.
        let mut input = stored.as_bytes()[3..].to_vec();
        input.extend_from_slice(&salt);
        assert_eq!(r, md5_hex(&[&input]));
        assert_ne!(r, md5_salted_response(&stored, [1, 2, 3, 5]));
        // Total on garbage input.
        assert!(is_md5_hash(&md5_salted_response("", salt)));
        assert!(is_md5_hash(&md5_salted_response("md5", salt)));
    }

    #[test]
    fn md5_hash_recognition() {
        assert!(is_md5_hash(PG_BOB));
        assert!(!is_md5_hash(&PG_BOB.to_uppercase()));
        assert!(!is_md5_hash(&PG_BOB[..34]));
        assert!(!is_md5_hash(&format!("{PG_BOB}0")));
        assert!(!is_md5_hash("md5"));
        assert!(!is_md5_hash(""));
        assert!(!is_md5_hash("md58cc7ff7afbc8551bd526b65944c17b3g"));
        assert!(!is_md5_hash("md58cc7ff7afbc8551bd526b65944c17b3é"));
        assert!(!is_md5_hash("SCRAM-SHA-256$4096:abc"));
    }
}
