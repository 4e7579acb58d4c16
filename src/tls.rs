//! TLS settings loaded from PEM files: the server side that clients connect to, the
//! admin listener's ([`load_admin`]), and pgvigil's connections to PostgreSQL
//! ([`backend`], with [`postgres`] for tokio-postgres).
//!
//! The client-facing certificate and key are read when the configuration is loaded and
//! again at every reload (SIGHUP), so a renewed certificate applies to new connections
//! without a restart; sessions already running keep theirs. The admin listener's and
//! `backend_ca_file` are read at start.

pub mod backend;
pub mod postgres;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use crate::config::{Config, ConfigError, TlsClientMode};

/// ALPN protocol name PostgreSQL uses for direct TLS connections (PostgreSQL 17+).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What pgvigil needs to accept TLS from clients.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub mode: TlsClientMode,
    /// `tls-server-end-point` channel binding data (RFC 5929): the hash of the
    /// certificate pgvigil presents, for SCRAM-SHA-256-PLUS.
    pub end_point: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn err(key: &str, path: &Path, what: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {}: {what}", path.display()))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, path, e))?;
    if certs.is_empty() {
        return Err(err(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| err(key, path, format!("no usable PEM private key: {e}")))
}

/// The (certificate, key) paths of a section's `cert_file` and `key_file`: both or neither.
fn cert_pair(config: &Config, section: &str, cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some((config.resolve(c), config.resolve(k)))),
        (Some(_), None) => Err(ConfigError(format!("{section}.cert_file is set but {section}.key_file is not"))),
        (None, Some(_)) => Err(ConfigError(format!("{section}.key_file is set but {section}.cert_file is not"))),
    }
}

/// A server config presenting the certificate chain and key of `section`'s files, with
/// the `tls-server-end-point` hash of the certificate.
fn server_config(
    section: &str,
    (cert_path, key_path): (PathBuf, PathBuf),
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<(rustls::ServerConfig, Vec<u8>), ConfigError> {
    let certs = read_certs(&format!("{section}.cert_file"), &cert_path)?;
    let key = read_key(&format!("{section}.key_file"), &key_path)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("{section}: {e}")))?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let end_point = end_point_hash(certs[0].as_ref());
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        ConfigError(format!(
            "{section}.cert_file / {section}.key_file: {} and {} do not make a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    Ok((server, end_point))
}

/// `[tls]` as a ready acceptor, or `None` when no certificate is configured.
pub fn load_server(config: &Config) -> Result<Option<Arc<ServerTls>>, ConfigError> {
    let tls = &config.tls;
    let Some(pair) = cert_pair(config, "tls", &tls.cert_file, &tls.key_file)? else {
        if tls.ca_file.is_some() {
            return Err(ConfigError("tls.ca_file needs tls.cert_file and tls.key_file".into()));
        }
        if tls.client_mode == TlsClientMode::Require {
            return Err(ConfigError("tls.client_mode = \"require\" needs tls.cert_file and tls.key_file".into()));
        }
        return Ok(None);
    };
    let verifier = match &tls.ca_file {
        Some(ca) => {
            let roots = read_roots("tls.ca_file", &config.resolve(ca))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| err("tls.ca_file", &config.resolve(ca), e))?;
            Some(verifier)
        }
        None => None,
    };
    let (mut server, end_point) = server_config("tls", pair, verifier)?;
    // Direct TLS clients must name the protocol; clients that upgrade after an
    // SSLRequest may name it or not.
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), mode: tls.client_mode, end_point })))
}

/// `[admin] cert_file` and `key_file` as an acceptor for the admin listener (HTTP/1.1
/// over TLS), or `None` when they are not set.
pub fn load_admin(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ConfigError> {
    let Some(pair) = cert_pair(config, "admin", &config.admin.cert_file, &config.admin.key_file)? else {
        return Ok(None);
    };
    let (mut server, _) = server_config("admin", pair, None)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// The CA certificates of a PEM file as a root store.
pub fn read_roots(key: &str, path: &Path) -> Result<Arc<rustls::RootCertStore>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(key, path)? {
        roots.add(cert).map_err(|e| err(key, path, e))?;
    }
    Ok(Arc::new(roots))
}

/// RFC 5929 `tls-server-end-point`: the certificate's hash with the hash function of its
/// signature algorithm, SHA-256 when that is MD5, SHA-1 or SHA-256.
pub fn end_point_hash(cert_der: &[u8]) -> Vec<u8> {
    // DER-encoded OIDs of the signature algorithms that use SHA-384 or SHA-512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    // The signature algorithm is the certificate's last AlgorithmIdentifier: look at the
    // bytes after the TBSCertificate, where only it and the signature are.
    let tail = signature_part(cert_der).unwrap_or(cert_der);
    let has = |oids: &[&[u8]]| oids.iter().any(|oid| tail.windows(oid.len()).any(|w| w == *oid));
    if has(&SHA512) {
        sha2::Sha512::digest(cert_der).to_vec()
    } else if has(&SHA384) {
        sha2::Sha384::digest(cert_der).to_vec()
    } else {
        sha2::Sha256::digest(cert_der).to_vec()
    }
}

/// The bytes of a DER certificate after its TBSCertificate (signatureAlgorithm and
/// signatureValue).
fn signature_part(der: &[u8]) -> Option<&[u8]> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (_, inner) = der_header(der)?;
    let (tbs_len, _) = der_header(inner)?;
    inner.get(tbs_len..)
}

const DER_SEQUENCE: u8 = 0x30;
const DER_SET: u8 = 0x31;
const DER_OID: u8 = 0x06;
/// The `[0]` tag of a certificate's explicit version.
const DER_VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The first common name (CN) in a DER certificate's subject, as PostgreSQL's `cert`
/// authentication reads it; `None` when there is none or it is not text.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { TBSCertificate ::= SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity, subject, … }, … }
    let (DER_SEQUENCE, cert, _) = der_next(cert_der)? else { return None };
    let (DER_SEQUENCE, mut tbs, _) = der_next(cert)? else { return None };
    if tbs.first() == Some(&DER_VERSION) {
        tbs = der_next(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der_next(tbs)?.2;
    }
    // Name ::= SEQUENCE OF RelativeDistinguishedName ::= SET OF SEQUENCE { type, value }
    let (DER_SEQUENCE, mut names, _) = der_next(tbs)? else { return None };
    while !names.is_empty() {
        let (DER_SET, mut set, rest) = der_next(names)? else { return None };
        names = rest;
        while !set.is_empty() {
            let (tag, attribute, rest) = der_next(set)?;
            set = rest;
            let (oid_tag, oid, value) = der_next(attribute)?;
            if tag == DER_SEQUENCE && oid_tag == DER_OID && oid == COMMON_NAME_OID {
                let (kind, text, _) = der_next(value)?;
                return directory_string(kind, text);
            }
        }
    }
    None
}

/// The text of a DirectoryString: UTF8String, PrintableString, IA5String, TeletexString
/// (read as UTF-8) or BMPString; `None` for other kinds and for text holding a NUL.
fn directory_string(tag: u8, bytes: &[u8]) -> Option<String> {
    let text = match tag {
        0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(bytes.to_vec()).ok()?,
        0x1e if bytes.len() % 2 == 0 => {
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()?
        }
        _ => return None,
    };
    (!text.contains('\0')).then_some(text)
}

/// The DER element at the start of `b`: its (one-byte) tag, its contents and the bytes
/// after it.
fn der_next(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (len, contents) = der_header(b)?;
    Some((*b.first()?, contents, b.get(len..)?))
}

/// The total length (header included) of the DER element at the start of `b`, and its
/// contents.
fn der_header(b: &[u8]) -> Option<(usize, &[u8])> {
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let contents = b.get(header..header.checked_add(len)?)?;
    Some((header + len, contents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_short_and_long() {
        assert_eq!(der_header(&[0x30, 0x02, 1, 2, 9]), Some((4, &[1u8, 2][..])));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(der_header(&long).map(|(n, c)| (n, c.len())), Some((260, 256)));
        assert_eq!(der_header(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der_header(&[0x30, 0x05, 1]), None);
    }

    fn cert_with(names: Vec<(rcgen::DnType, rcgen::DnValue)>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind, value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_common_name_of_certificates() {
        use rcgen::{DnType, DnValue};
        assert_eq!(subject_common_name(&cert_with(vec![(DnType::CommonName, "alice".into())])).as_deref(), Some("alice"));
        let org_first = vec![(DnType::OrganizationName, "Acme".into()), (DnType::CommonName, "zoë".into())];
        assert_eq!(subject_common_name(&cert_with(org_first)).as_deref(), Some("zoë"));
        let printable = DnValue::PrintableString("bob".try_into().unwrap());
        assert_eq!(subject_common_name(&cert_with(vec![(DnType::CommonName, printable)])).as_deref(), Some("bob"));
        let bmp = DnValue::BmpString("carol".try_into().unwrap());
        assert_eq!(subject_common_name(&cert_with(vec![(DnType::CommonName, bmp)])).as_deref(), Some("carol"));
        assert_eq!(subject_common_name(&cert_with(vec![(DnType::OrganizationName, "Acme".into())])), None);
        assert_eq!(subject_common_name(&cert_with(vec![(DnType::CommonName, "nul\0name".into())])), None);
        let der = cert_with(vec![(DnType::CommonName, "alice".into())]);
        for cut in [0, 1, 10, der.len() / 2] {
            assert_eq!(subject_common_name(&der[..cut]), None, "truncated at {cut}");
        }
    }
}
