//! Self-signed certificates for the CPV app (`samvault dev-cert`) and a test CA whose server
//! certificate lets the dev doubles serve HTTPS, so the demo and the tests need no openssl.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::EncodePem;
use x509_cert::der::asn1::{Ia5String, OctetString, UtcTime};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use zeroize::Zeroizing;

type Signer = rsa::pkcs1v15::SigningKey<sha2::Sha256>;

/// A new RSA-2048 key and a self-signed certificate for it, valid from `not_before` to
/// `not_after` (Unix seconds): `(certificate PEM, PKCS#8 key PEM)`.
pub fn self_signed(
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> anyhow::Result<(String, Zeroizing<String>)> {
    let key = new_key()?;
    let signer = Signer::new(key.clone());
    let builder = CertificateBuilder::new(
        Profile::Root,
        serial()?,
        validity(not_before, not_after)?,
        name(common_name)?,
        spki(&key)?,
        &signer,
    )
    .context("preparing the certificate")?;
    Ok((sign(builder)?, key_pem(&key)?))
}

/// Writes `cpv-app.crt` and `cpv-app.key` (mode 0600) into `dir`; returns their paths.
pub fn write_self_signed(
    dir: &Path,
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = self_signed(common_name, not_before, not_after)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert_path = dir.join("cpv-app.crt");
    let key_path = dir.join("cpv-app.key");
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, key.as_bytes())?;
    Ok((cert_path, key_path))
}

/// A CA and a server certificate it signed for `127.0.0.1` and `localhost`, valid from
/// `now` for a year, written as `ca.pem`, `server.pem` and `server.key` (0600) into `dir`.
/// A client that trusts `ca.pem` reaches a dev double served with the other two.
pub fn write_test_ca(dir: &Path, now: i64) -> anyhow::Result<()> {
    let validity = validity(now - 60, now + 365 * 86_400)?;
    let ca_key = new_key()?;
    let ca_name = name("samvault test CA")?;
    let ca = sign(
        CertificateBuilder::new(
            Profile::Root,
            serial()?,
            validity,
            ca_name.clone(),
            spki(&ca_key)?,
            &Signer::new(ca_key.clone()),
        )
        .context("preparing the CA certificate")?,
    )?;
    let server_key = new_key()?;
    let ca_signer = Signer::new(ca_key);
    let mut server = CertificateBuilder::new(
        Profile::Leaf {
            issuer: ca_name,
            enable_key_agreement: false,
            enable_key_encipherment: true,
        },
        serial()?,
        validity,
        name("127.0.0.1")?,
        spki(&server_key)?,
        &ca_signer,
    )
    .context("preparing the server certificate")?;
    server
        .add_extension(&SubjectAltName(vec![
            GeneralName::IpAddress(OctetString::new(ip_bytes(Ipv4Addr::LOCALHOST.into()))?),
            GeneralName::DnsName(Ia5String::new("localhost")?),
        ]))
        .context("naming the server")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.pem", &ca)?;
    write("server.pem", &sign(server)?)?;
    write_private(&dir.join("server.key"), key_pem(&server_key)?.as_bytes())
}

fn new_key() -> anyhow::Result<rsa::RsaPrivateKey> {
    rsa::RsaPrivateKey::new(&mut rand08::rngs::OsRng, 2048).context("generating an RSA key")
}

fn spki(key: &rsa::RsaPrivateKey) -> anyhow::Result<SubjectPublicKeyInfoOwned> {
    let public = key
        .to_public_key()
        .to_public_key_der()
        .context("encoding the public key")?;
    SubjectPublicKeyInfoOwned::try_from(public.as_bytes()).context("encoding the public key")
}

fn validity(not_before: i64, not_after: i64) -> anyhow::Result<Validity> {
    let time = |unix: i64| -> anyhow::Result<Time> {
        let secs = u64::try_from(unix).context("a certificate date before 1970")?;
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(Duration::from_secs(secs))
                .context("a certificate date after 2049")?,
        ))
    };
    Ok(Validity {
        not_before: time(not_before)?,
        not_after: time(not_after)?,
    })
}

fn name(common_name: &str) -> anyhow::Result<Name> {
    Name::from_str(&format!("CN={}", common_name.replace([',', '+', '='], " ")))
        .context("the certificate's name")
}

fn serial() -> anyhow::Result<SerialNumber> {
    let serial: [u8; 16] = rand::random();
    // A positive serial: the top bit clear.
    Ok(SerialNumber::new(&[&[0x01], &serial[..15]].concat())?)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn sign(builder: CertificateBuilder<'_, Signer>) -> anyhow::Result<String> {
    builder
        .build::<rsa::pkcs1v15::Signature>()
        .context("signing the certificate")?
        .to_pem(LineEnding::LF)
        .context("encoding the certificate")
}

fn key_pem(key: &rsa::RsaPrivateKey) -> anyhow::Result<Zeroizing<String>> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the private key")?;
    Ok(Zeroizing::new(pem.to_string()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}
