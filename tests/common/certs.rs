//! Test certificates made with rcgen: a CA, server certificates it signs, and files a
//! PostgreSQL server running as another OS user may read.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// Writes the CA certificate as `dir/name.crt`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by this CA,
    /// written as `dir/name.crt` and `dir/name.key`; returns (certificate, key) paths.
    pub fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, pem_key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        (crt, pem_key)
    }
}

/// A directory for certificate files that the PostgreSQL servers of the harness can
/// read: as root they run as `postgres` (or `nobody`), which must own its key (mode 0600).
pub fn server_readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Makes `key` a private key file PostgreSQL accepts: owned by the server's OS user, 0600.
pub fn give_key_to_server(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::geteuid().is_root() {
        let user = ["postgres", "nobody"].iter().find_map(|n| nix::unistd::User::from_name(n).ok().flatten()).expect("user postgres or nobody");
        std::os::unix::fs::chown(key, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
}

/// postgresql.conf lines that turn TLS on with `cert` and `key`.
pub fn ssl_conf(cert: &Path, key: &Path) -> Vec<String> {
    vec!["ssl = on".into(), format!("ssl_cert_file = '{}'", cert.display()), format!("ssl_key_file = '{}'", key.display())]
}
