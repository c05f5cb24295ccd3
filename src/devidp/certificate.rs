//! Self-signed certificates for the CPV app (`samvault dev-cert`), so the demo and the tests
//! can use a certificate credential without openssl. A test fixture, never a production CA.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::EncodePem;
use x509_cert::der::asn1::UtcTime;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use zeroize::Zeroizing;

/// A new RSA-2048 key and a self-signed certificate for it, valid from `not_before` to
/// `not_after` (Unix seconds): `(certificate PEM, PKCS#8 key PEM)`.
pub fn self_signed(
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> anyhow::Result<(String, Zeroizing<String>)> {
    let key =
        rsa::RsaPrivateKey::new(&mut rand08::rngs::OsRng, 2048).context("generating an RSA key")?;
    let public = key
        .to_public_key()
        .to_public_key_der()
        .context("encoding the public key")?;
    let spki = SubjectPublicKeyInfoOwned::try_from(public.as_bytes())
        .context("encoding the public key")?;
    let time = |unix: i64| -> anyhow::Result<Time> {
        let secs = u64::try_from(unix).context("a certificate date before 1970")?;
        Ok(Time::UtcTime(
            UtcTime::from_unix_duration(Duration::from_secs(secs))
                .context("a certificate date after 2049")?,
        ))
    };
    let validity = Validity {
        not_before: time(not_before)?,
        not_after: time(not_after)?,
    };
    let subject = Name::from_str(&format!("CN={}", common_name.replace([',', '+', '='], " ")))
        .context("the certificate's name")?;
    let serial: [u8; 16] = rand::random();
    // A positive serial: the top bit clear.
    let serial = SerialNumber::new(&[&[0x01], &serial[..15]].concat())?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let certificate =
        CertificateBuilder::new(Profile::Root, serial, validity, subject, spki, &signer)
            .context("preparing the certificate")?
            .build::<rsa::pkcs1v15::Signature>()
            .context("signing the certificate")?;
    let cert_pem = certificate
        .to_pem(LineEnding::LF)
        .context("encoding the certificate")?;
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the private key")?;
    Ok((cert_pem, Zeroizing::new(key_pem.to_string())))
}

/// Writes `cpv-app.crt` and `cpv-app.key` (mode 0600) into `dir`; returns their paths.
pub fn write_self_signed(
    dir: &std::path::Path,
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = self_signed(common_name, not_before, not_after)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert_path = dir.join("cpv-app.crt");
    let key_path = dir.join("cpv-app.key");
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, key.as_bytes())?;
    Ok((cert_path, key_path))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
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
