//! Cluster credentials on disk: the secret file and a TLS set (a cluster CA and one certificate
//! every process presents, valid for both ends of a connection). `sealfs up` and the tests make
//! them; `sealfs gen-secret` and `sealfs gen-certs` make them for a hand-built cluster.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sealfs_core::config::SecurityConfig;
use sealfs_proto::auth::Secret;

/// Write `contents` to a new file only its owner may read (0600).
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Make a new random cluster secret at `path` unless one is there; returns whether it made one.
pub fn ensure_secret(path: &Path) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    write_private(path, format!("{}\n", Secret::generate()).as_bytes())?;
    Ok(true)
}

/// The three files of a TLS set.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of the set in `dir`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Point `cfg` at these files.
    pub fn apply(&self, cfg: &mut SecurityConfig) {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        cfg.tls_ca = Some(s(&self.ca));
        cfg.tls_cert = Some(s(&self.cert));
        cfg.tls_key = Some(s(&self.key));
    }
}

/// Make a cluster CA and a certificate for `names` (plus "sealfs" and "localhost") that it
/// signed, good for serving and for connecting, in `dir` (kept if all three files are there).
pub fn ensure_certs(dir: &Path, names: &[String]) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles::in_dir(dir);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sealfs cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut sans = vec!["sealfs".to_string(), "localhost".to_string()];
    sans.extend(names.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, "sealfs");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    std::fs::write(&files.ca, ca.pem()).with_context(|| format!("cannot write {}", files.ca.display()))?;
    std::fs::write(&files.cert, cert.pem()).with_context(|| format!("cannot write {}", files.cert.display()))?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_certs_are_made_once() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("secret");
        assert!(ensure_secret(&s).unwrap());
        let first = std::fs::read_to_string(&s).unwrap();
        assert!(!ensure_secret(&s).unwrap());
        assert_eq!(first, std::fs::read_to_string(&s).unwrap());
        Secret::new(&first).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&s).unwrap().permissions().mode() & 0o777, 0o600);

        let t = ensure_certs(&d.path().join("tls"), &["node1.example".into()]).unwrap();
        let ca = std::fs::read_to_string(&t.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(std::fs::read_to_string(&t.key).unwrap().contains("PRIVATE KEY"));
        ensure_certs(&d.path().join("tls"), &[]).unwrap();
        assert_eq!(ca, std::fs::read_to_string(&t.ca).unwrap());
    }
}
