//! TLS for the PostgreSQL store: libpq's URL parameters `sslmode`, `sslrootcert`, `sslcert`
//! and `sslkey`, read here because the driver's parser knows only
//! `sslmode=disable|prefer|require` and none of the others. They are taken out of the URL
//! before the driver parses the rest.
//!
//! What each mode does in canary (stricter than libpq: a certificate the collector is shown
//! is always verified, never accepted unverified):
//! - `disable`: no TLS.
//! - `prefer` (the default): TLS when the server offers it, the certificate verified as with
//!   `verify-full`; a certificate that does not verify fails the connection (libpq would use
//!   it unverified). Without TLS when the server does not offer it, so it does not protect
//!   against an attacker who can answer in the server's place: use `require` for that.
//! - `require`: TLS or no connection; chain and host name verified (libpq checks neither
//!   without a root file, and only the chain with one).
//! - `verify-full`: the same as `require`.
//! - `verify-ca`: TLS, the chain verified, the host name not checked. It needs
//!   `sslrootcert=PATH`: any certificate the CA signed passes, so that CA must be one of
//!   your own, never the system's roots.
//!
//! `sslrootcert=PATH` (a PEM file of one or more CA certificates) replaces the system's root
//! certificates: only those CAs are trusted, as in libpq. `sslrootcert=system` (libpq 16's
//! spelling) names the system's roots, which are also the default. `allow` (plain first)
//! is refused; so is any other mode.
//!
//! `sslcert=PATH` and `sslkey=PATH`: a client certificate (PEM; the client's certificate
//! first, then any intermediate CAs) and its private key, shown to a server that asks for
//! one (pg_hba `cert`, or `clientcert=verify-ca|verify-full`). Both or neither, and only
//! with TLS (not `sslmode=disable`). The key must be unencrypted PKCS#8 PEM
//! (`-----BEGIN PRIVATE KEY-----`, what OpenSSL 3 writes): native-tls reads no other, so a
//! PKCS#1 (`BEGIN RSA PRIVATE KEY`), SEC1 (`BEGIN EC PRIVATE KEY`) or encrypted key is refused
//! with the `openssl pkcs8 -topk8 -nocrypt` command that converts it. As libpq, on Unix a
//! key file that its group or others may read, write or run is refused (`chmod 600`); libpq
//! allows 0640 to a key owned by root, canary does not. Where the TLS library is OpenSSL,
//! a key that is not the certificate's is refused before connecting. libpq's defaults
//! (`~/.postgresql/postgresql.crt` and `.key`) are not read.

use std::path::{Path, PathBuf};

use postgres::config::SslMode as DriverMode;
use postgres_native_tls::MakeTlsConnector;

/// The `sslmode` of a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The certificates a server's chain must end in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's root certificates (the TLS library's default store).
    System,
    /// Only the CA certificates in this PEM file.
    File(PathBuf),
}

/// A client certificate and its private key (`sslcert`, `sslkey`): PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS parameters of a URL, as written (nothing read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    pub roots: Roots,
    /// `None` without `sslcert` and `sslkey`.
    pub client: Option<ClientCert>,
}

/// `url` without `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (the rest in order, as
/// written), and what they said. The error says which parameter is wrong and what it
/// accepts.
pub fn split_url(url: &str) -> Result<(String, TlsParams), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root = None;
    let mut cert = None;
    let mut key = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "sslmode" => mode = Some(parse_mode(&percent_decode(v))?),
            "sslrootcert" => root = Some(percent_decode(v)),
            "sslcert" => cert = Some(percent_decode(v)),
            "sslkey" => key = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let mode = mode.unwrap_or(SslMode::Prefer);
    let roots = match root.as_deref() {
        None | Some("system") => Roots::System,
        Some("") => {
            return Err("sslrootcert is empty: give the path of a PEM file of CA \
                        certificates (or sslrootcert=system)"
                .into())
        }
        Some(p) => Roots::File(PathBuf::from(p)),
    };
    if mode == SslMode::VerifyCa && roots == Roots::System {
        return Err(
            "sslmode=verify-ca needs sslrootcert=PATH, a PEM file of your own CA: it \
                    accepts any certificate that CA signed, whatever host it names, so it \
                    never trusts the system's roots (or use sslmode=verify-full)"
                .into(),
        );
    }
    let client = client_cert(mode, cert, key)?;
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((
        out,
        TlsParams {
            mode,
            roots,
            client,
        },
    ))
}

/// `sslcert` and `sslkey` as given: both or neither, neither empty, not without TLS.
fn client_cert(
    mode: SslMode,
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<ClientCert>, String> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err("sslcert without sslkey: give both, the client certificate \
                        (sslcert=PATH) and its private key (sslkey=PATH)"
                .into())
        }
        (None, Some(_)) => {
            return Err("sslkey without sslcert: give both, the client certificate \
                        (sslcert=PATH) and its private key (sslkey=PATH)"
                .into())
        }
    };
    for (name, v) in [("sslcert", &cert), ("sslkey", &key)] {
        if v.is_empty() {
            return Err(format!("{name} is empty: give the path of a PEM file"));
        }
    }
    if mode == SslMode::Disable {
        return Err(
            "sslcert and sslkey need TLS: a client certificate is shown only \
                    over TLS, not with sslmode=disable (use require or verify-full)"
                .into(),
        );
    }
    Ok(Some(ClientCert {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    }))
}

fn parse_mode(v: &str) -> Result<SslMode, String> {
    Ok(match v {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        "allow" => {
            return Err(
                "sslmode=allow is not supported (it tries without TLS first): use \
                        prefer or disable"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "sslmode={other}: not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    })
}

/// `%XX` escapes decoded (invalid UTF-8 replaced), as a URL's query is written.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The TLS side of a connection: the mode and, unless it is `disable`, the connector that
/// verifies the server's certificate (built once, the root file read once).
#[derive(Clone)]
pub struct Tls {
    params: TlsParams,
    connector: Option<MakeTlsConnector>,
}

impl Tls {
    /// Reads the root file (not for `disable`, as libpq) and the client certificate and key,
    /// and builds the connector.
    pub fn new(params: TlsParams) -> Result<Tls, String> {
        if params.mode == SslMode::Disable {
            return Ok(Tls {
                params,
                connector: None,
            });
        }
        let mut b = native_tls::TlsConnector::builder();
        // PostgreSQL's own default minimum (ssl_min_protocol_version) since version 12.
        b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
        if let Roots::File(path) = &params.roots {
            b.disable_built_in_roots(true);
            for c in read_roots(path)? {
                b.add_root_certificate(c);
            }
        }
        if let Some(client) = &params.client {
            b.identity(read_identity(client)?);
        }
        if params.mode == SslMode::VerifyCa {
            b.danger_accept_invalid_hostnames(true);
        }
        let c = b.build().map_err(|e| match &params.client {
            None => format!("TLS setup: {e}"),
            Some(c) => format!(
                "TLS setup with sslcert {} and sslkey {}: {e}",
                c.cert.display(),
                c.key.display()
            ),
        })?;
        Ok(Tls {
            params,
            connector: Some(MakeTlsConnector::new(c)),
        })
    }

    /// The mode the driver is given: `verify-ca` and `verify-full` are its `require` (the
    /// checks are the connector's).
    pub fn driver_mode(&self) -> DriverMode {
        match self.params.mode {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverMode::Require,
        }
    }

    /// The connector, `None` for `disable`.
    pub fn connector(&self) -> Option<&MakeTlsConnector> {
        self.connector.as_ref()
    }

    /// What to do about a failed TLS handshake whose text (the library's reason included)
    /// is `text`, connecting to `host`: `None` when there is nothing to add.
    pub fn advice(&self, text: &str, host: &str) -> Option<String> {
        let t = text.to_ascii_lowercase();
        let roots = match &self.params.roots {
            Roots::System => "the system's root certificates".to_string(),
            Roots::File(p) => format!("the CA certificates in sslrootcert {}", p.display()),
        };
        if t.contains("hostname mismatch") || t.contains("ip address mismatch") {
            Some(format!(
                "the server's certificate is not issued for {host}: connect by a name it is \
                 issued for, or use sslmode=verify-ca (checks the CA, not the name)"
            ))
        } else if t.contains("self-signed certificate")
            || t.contains("self signed certificate")
            || t.contains("unable to get local issuer certificate")
            || t.contains("unable to get issuer certificate")
        {
            Some(match &self.params.roots {
                Roots::System => format!(
                    "the server's certificate is not signed by a CA among {roots}: add \
                     sslrootcert=PATH (the PEM certificate of the CA that signed it) to the URL"
                ),
                Roots::File(_) => {
                    format!("the server's certificate is not signed by one of {roots}")
                }
            })
        } else if t.contains("certificate verify failed") {
            Some(format!(
                "the server's certificate did not verify against {roots}"
            ))
        } else {
            None
        }
    }

    /// What to do when a connection that showed a client certificate ended right after the
    /// handshake (`text`: the driver's "error communicating with the server"): in TLS 1.3
    /// the server's refusal of the certificate comes after the handshake, as an alert or a
    /// reset connection. `None` without a client certificate or for other errors.
    pub fn client_refused_advice(&self, text: &str) -> Option<String> {
        let c = self.params.client.as_ref()?;
        let t = text.to_ascii_lowercase();
        let after_handshake = t.contains("error communicating with the server")
            && (t.contains("alert") || t.contains("reset") || t.contains("broken pipe"));
        after_handshake.then(|| {
            format!(
                "the server may have refused the client certificate in sslcert {}: it must be \
                 signed by a CA in the server's ssl_ca_file and issued to the user (CN) the \
                 URL names, for a pg_hba line of method cert for that user",
                c.cert.display()
            )
        })
    }
}

/// The certificates of a PEM file; the error names the file.
fn read_roots(path: &Path) -> Result<Vec<native_tls::Certificate>, String> {
    Ok(read_certs("sslrootcert", path)?.1)
}

/// The PEM file `path` given as URL parameter `param`, and the certificates in it (at least
/// one); the error names the parameter and the file.
fn read_certs(param: &str, path: &Path) -> Result<(Vec<u8>, Vec<native_tls::Certificate>), String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("{param} {shown}: cannot read: {e}"))?;
    let certs = native_tls::Certificate::stack_from_pem(&pem)
        .map_err(|e| format!("{param} {shown}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{param} {shown}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok((pem, certs))
}

/// The identity of `c`: its certificate chain and private key, read and checked; the error
/// names the file and what is wrong with it.
fn read_identity(c: &ClientCert) -> Result<native_tls::Identity, String> {
    let cert_shown = c.cert.display();
    let (cert_pem, _) = read_certs("sslcert", &c.cert)?;
    key_file_is_private(&c.key)?;
    let key_shown = c.key.display();
    let key_pem =
        std::fs::read(&c.key).map_err(|e| format!("sslkey {key_shown}: cannot read: {e}"))?;
    let key = pkcs8_block(&key_pem, &c.key).map_err(|e| format!("sslkey {key_shown}: {e}"))?;
    let id = native_tls::Identity::from_pkcs8(&cert_pem, key).map_err(|e| {
        format!("sslkey {key_shown}: the TLS library cannot load it as a PKCS#8 private key: {e}")
    })?;
    key_matches(&cert_pem, key).map_err(|e| {
        format!(
            "sslkey {key_shown} does not belong to the certificate in sslcert {cert_shown}: {e}"
        )
    })?;
    Ok(id)
}

/// Where the TLS library is OpenSSL (native-tls's own condition): `Err` saying why when
/// `key` (PKCS#8 PEM) is not the private key of the first certificate of `cert_pem`.
/// Elsewhere the TLS library finds out, when it builds the connector or in the handshake.
#[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
fn key_matches(cert_pem: &[u8], key: &[u8]) -> Result<(), String> {
    let cert = openssl::x509::X509::from_pem(cert_pem).map_err(|e| e.to_string())?;
    let public = cert.public_key().map_err(|e| e.to_string())?;
    let private = openssl::pkey::PKey::private_key_from_pem(key).map_err(|e| e.to_string())?;
    if public.public_eq(&private) {
        Ok(())
    } else {
        Err(
            "its public key is not the certificate's (give the key the certificate was \
             issued for)"
                .into(),
        )
    }
}

#[cfg(any(target_os = "windows", target_vendor = "apple"))]
fn key_matches(_cert_pem: &[u8], _key: &[u8]) -> Result<(), String> {
    Ok(())
}

/// The command that turns the key file `path` into what is read here (`client.pk8` next
/// to `client.key`).
fn to_pkcs8(path: &Path) -> String {
    format!(
        "openssl pkcs8 -topk8 -nocrypt -in {} -out {}",
        path.display(),
        path.with_extension("pk8").display()
    )
}

/// The PKCS#8 PEM block of a key file (the text around it, such as OpenSSL's "Bag
/// Attributes", left out); the error says what the file, `path`, holds instead.
fn pkcs8_block<'a>(pem: &'a [u8], path: &Path) -> Result<&'a [u8], String> {
    const BEGIN: &[u8] = b"-----BEGIN PRIVATE KEY-----";
    const END: &[u8] = b"-----END PRIVATE KEY-----";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    if let Some(b) = find(pem, BEGIN) {
        return match find(&pem[b..], END) {
            Some(e) => Ok(&pem[b..b + e + END.len()]),
            None => Err("the PEM key has no -----END PRIVATE KEY----- line".into()),
        };
    }
    let has = |s: &str| find(pem, s.as_bytes()).is_some();
    let what = if has("-----BEGIN ENCRYPTED PRIVATE KEY-----") || has("Proc-Type: 4,ENCRYPTED") {
        "an encrypted key (a passphrase, libpq's sslpassword, is not supported): decrypt it"
    } else if has("-----BEGIN RSA PRIVATE KEY-----") {
        "a PKCS#1 RSA key (BEGIN RSA PRIVATE KEY); only PKCS#8 (BEGIN PRIVATE KEY) is read: \
         convert it"
    } else if has("-----BEGIN EC PRIVATE KEY-----") {
        "a SEC1 EC key (BEGIN EC PRIVATE KEY); only PKCS#8 (BEGIN PRIVATE KEY) is read: \
         convert it"
    } else if has("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return Err(
            "an OpenSSH key, not a TLS private key: give the key of the client \
                    certificate, PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)"
                .into(),
        );
    } else {
        return Err(
            "no private key in it (expected PKCS#8 PEM: -----BEGIN PRIVATE KEY-----)".into(),
        );
    };
    Err(format!("{what} with `{}`", to_pkcs8(path)))
}

/// As libpq on Unix: the key file must be a regular file that only its owner may read
/// (mode 0600 or less). Elsewhere nothing is checked.
#[cfg(unix)]
fn key_file_is_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let m = std::fs::metadata(path).map_err(|e| format!("sslkey {shown}: cannot read: {e}"))?;
    if !m.is_file() {
        return Err(format!("sslkey {shown}: not a regular file"));
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "sslkey {shown}: group or others have access to it (mode {mode:04o}): a private \
             key must be its owner's alone: chmod 600 {shown}"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn key_file_is_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (EC P-256, CN "canary unit-test CA"; its key was
    /// thrown away): only parsed here, never used to verify.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkDCCATegAwIBAgIUPyko8p45CTDp3p1o/GwhCk7t6egwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTY2FuYXJ5IHVuaXQtdGVzdCBDQTAeFw0yNjEyMDcwOTMyMzla
Fw0zNjEyMDQwOTMyMzlaMB4xHDAaBgNVBAMME2NhbmFyeSB1bml0LXRlc3QgQ0Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQfKmmFmVYonouBz2BB2MyJRMVhav4l
WbJgvNfmw1EapqCHEZ4bKjHHGbFK/bJg+ByERCwBYDxV+csXEwdzjM5io1MwUTAd
BgNVHQ4EFgQUG989VzXmu2R4Z9jhzfmwVOeu9FAwHwYDVR0jBBgwFoAUG989VzXm
u2R4Z9jhzfmwVOeu9FAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBE
AiAwy5SRM4KbtSt4FqPardPQ7diAiVnDz95LxizO+RGDQwIgP+cOCexQISMdLr/N
CE69o86i7Zp7XpdqkFHSz5BO/2A=
-----END CERTIFICATE-----
";

    /// A self-signed client certificate (EC P-256, CN "canary unit-test client"), its
    /// PKCS#8 key and another key (made for these tests only, never used elsewhere).
    const CLIENT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBmDCCAT+gAwIBAgIUDFgP8Dg9NvWkuy68npg6Vo6g3AowCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXY2FuYXJ5IHVuaXQtdGVzdCBjbGllbnQwHhcNMjYxMjA3MTI0
NzAxWhcNMzYxMjA0MTI0NzAxWjAiMSAwHgYDVQQDDBdjYW5hcnkgdW5pdC10ZXN0
IGNsaWVudDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABKnhDum1LsvUezmPB86F
K7zZ/hy63jdF33Pkur2qluASIDGFjQ3O4HVwucm7bIaqepEG/mTVxBpkLaeqdJgB
1hmjUzBRMB0GA1UdDgQWBBT9fwUsAoekU1YJmHr229njNSehaTAfBgNVHSMEGDAW
gBT9fwUsAoekU1YJmHr229njNSehaTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49
BAMCA0cAMEQCIAwq30lf84Fqc0JfhuVGfYyvtLCYfM3MH8Bx+2Vc9LPwAiBRO4Ka
VqSgTIE5hyWzwrDMgVXiSpBtCi8sV6Y4/H0oog==
-----END CERTIFICATE-----
";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgOqkDdnVPEoPwgxEM
KcJgdBQJiiA2vDVOgXSPKYz49EmhRANCAASp4Q7ptS7L1Hs5jwfOhSu82f4cut43
Rd9z5Lq9qpbgEiAxhY0NzuB1cLnJu2yGqnqRBv5k1cQaZC2nqnSYAdYZ
-----END PRIVATE KEY-----
";
    #[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
    const OTHER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgakJDqJMgjCQNOca7
J/hlzlEcrlAfjTh7qa1f2CzQAlChRANCAATV5Y0HSh+nKyPaF+bq8pySSkQ7nCCN
bc+hTE9SgE6gAxT3pQDJE54+youAgoggObMEJJWQDkdQGS7DIEJHoJ8w
-----END PRIVATE KEY-----
";

    fn params(mode: SslMode, roots: Roots) -> TlsParams {
        TlsParams {
            mode,
            roots,
            client: None,
        }
    }

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (u, p) = split_url("postgres://u@h:5/db").unwrap();
        assert_eq!(u, "postgres://u@h:5/db");
        assert_eq!(p, params(SslMode::Prefer, Roots::System));

        let (u, p) = split_url(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20b.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(u, "postgres://u@h/db?application_name=x&connect_timeout=3");
        assert_eq!(
            p,
            params(SslMode::VerifyFull, Roots::File("/etc/ca b.pem".into()))
        );

        let (u, p) = split_url("postgresql://h/db?sslmode=disable").unwrap();
        assert_eq!(u, "postgresql://h/db");
        assert_eq!(p.mode, SslMode::Disable);
        for (m, want) in [
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let (_, p) = split_url(&format!("postgres://h/db?sslmode={m}")).unwrap();
            assert_eq!(p.mode, want, "{m}");
        }
        let (_, p) = split_url("postgres://h/db?sslmode=verify-ca&sslrootcert=ca.pem").unwrap();
        assert_eq!(p, params(SslMode::VerifyCa, Roots::File("ca.pem".into())));
        let (_, p) = split_url("postgres://h/db?sslmode=require&sslrootcert=system").unwrap();
        assert_eq!(p, params(SslMode::Require, Roots::System));
    }

    #[test]
    fn unknown_or_unsafe_tls_parameters_are_refused() {
        let e = split_url("postgres://h/db?sslmode=bogus").unwrap_err();
        assert!(
            e.contains("sslmode=bogus") && e.contains("verify-full"),
            "{e}"
        );
        let e = split_url("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(e.contains("allow is not supported"), "{e}");
        let e = split_url("postgres://h/db?sslmode=verify-ca").unwrap_err();
        assert!(e.contains("verify-ca needs sslrootcert"), "{e}");
        let e = split_url("postgres://h/db?sslmode=verify-ca&sslrootcert=system").unwrap_err();
        assert!(e.contains("verify-ca needs sslrootcert"), "{e}");
        let e = split_url("postgres://h/db?sslmode=require&sslrootcert=").unwrap_err();
        assert!(e.contains("sslrootcert is empty"), "{e}");
    }

    #[test]
    fn client_certificate_parameters_are_taken_out_of_the_url() {
        let (u, p) = split_url(
            "postgres://u@h/db?sslcert=%2Fetc%2Fc%20c.crt&application_name=x&sslkey=c.key&sslmode=require",
        )
        .unwrap();
        assert_eq!(u, "postgres://u@h/db?application_name=x");
        assert_eq!(p.mode, SslMode::Require);
        assert_eq!(
            p.client,
            Some(ClientCert {
                cert: "/etc/c c.crt".into(),
                key: "c.key".into(),
            })
        );
        // prefer (the default) is a TLS mode: the certificate is shown when TLS is used.
        let (_, p) = split_url("postgres://h/db?sslkey=k&sslcert=c").unwrap();
        assert_eq!(p.mode, SslMode::Prefer);
        assert!(p.client.is_some());
        let (_, p) = split_url("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(p.client, None);
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_tls() {
        let e = split_url("postgres://h/db?sslmode=require&sslcert=c.crt").unwrap_err();
        assert!(e.contains("sslcert without sslkey: give both"), "{e}");
        let e = split_url("postgres://h/db?sslkey=c.key").unwrap_err();
        assert!(e.contains("sslkey without sslcert: give both"), "{e}");
        let e = split_url("postgres://h/db?sslcert=&sslkey=c.key").unwrap_err();
        assert!(e.contains("sslcert is empty"), "{e}");
        let e = split_url("postgres://h/db?sslcert=c.crt&sslkey=").unwrap_err();
        assert!(e.contains("sslkey is empty"), "{e}");
        let e =
            split_url("postgres://h/db?sslmode=disable&sslcert=c.crt&sslkey=c.key").unwrap_err();
        assert!(
            e.contains("sslcert and sslkey need TLS") && e.contains("sslmode=disable"),
            "{e}"
        );
    }

    #[test]
    fn only_an_unencrypted_pkcs8_key_is_read_and_the_others_are_named() {
        let k = CLIENT_KEY.as_bytes();
        let p = Path::new("/etc/canary/client.key");
        assert_eq!(pkcs8_block(k, p).unwrap(), CLIENT_KEY.trim_end().as_bytes());
        // As `openssl pkcs12 -nodes` writes it: attributes before the block.
        let bagged = format!("Bag Attributes\n    localKeyID: 01 02\n{CLIENT_KEY}");
        assert_eq!(
            pkcs8_block(bagged.as_bytes(), p).unwrap(),
            CLIENT_KEY.trim_end().as_bytes()
        );
        for (file, said) in [
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n", "a PKCS#1 RSA key"),
            ("-----BEGIN EC PARAMETERS-----\nBggq\n-----END EC PARAMETERS-----\n-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n", "a SEC1 EC key"),
            ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIH0\n-----END ENCRYPTED PRIVATE KEY-----\n", "an encrypted key"),
            ("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMIIE\n-----END RSA PRIVATE KEY-----\n", "an encrypted key"),
        ] {
            let e = pkcs8_block(file.as_bytes(), p).unwrap_err();
            assert!(e.starts_with(said), "{e}");
            assert!(
                e.contains(
                    "with `openssl pkcs8 -topk8 -nocrypt -in /etc/canary/client.key -out /etc/canary/client.pk8`"
                ),
                "{e}"
            );
        }
        let e = pkcs8_block(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n", p).unwrap_err();
        assert!(e.contains("an OpenSSH key"), "{e}");
        let e = pkcs8_block(CLIENT_PEM.as_bytes(), p).unwrap_err();
        assert!(e.contains("no private key in it"), "{e}");
        let e = pkcs8_block(&k[..k.len() - 30], p).unwrap_err();
        assert!(e.contains("no -----END PRIVATE KEY-----"), "{e}");
    }

    /// `sslcert`/`sslkey` files in a fresh directory: the certificate `cert` and the key
    /// `key` with mode 0600.
    fn client_files(dir: &Path, cert: &str, key: &str) -> ClientCert {
        let c = ClientCert {
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
        };
        std::fs::write(&c.cert, cert).unwrap();
        std::fs::write(&c.key, key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        c
    }

    fn with_client(c: &ClientCert) -> TlsParams {
        TlsParams {
            client: Some(c.clone()),
            ..params(SslMode::Require, Roots::System)
        }
    }

    /// Not on Windows: under Wine (scripts/test-windows) native-tls's schannel import of a
    /// PKCS#8 key fails ("File not found"), EC and RSA alike; real Windows is not tried.
    #[cfg(not(windows))]
    #[test]
    fn a_client_certificate_and_its_key_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let c = client_files(dir.path(), CLIENT_PEM, CLIENT_KEY);
        assert!(Tls::new(with_client(&c)).unwrap().connector().is_some());
    }

    #[test]
    fn bad_client_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = client_files(dir.path(), CLIENT_PEM, CLIENT_KEY);
        let crt = c.cert.display().to_string();
        let key = c.key.display().to_string();

        let missing = ClientCert {
            cert: dir.path().join("nope.crt"),
            ..c.clone()
        };
        let e = Tls::new(with_client(&missing)).err().unwrap();
        assert!(
            e.contains(&format!("sslcert {}: cannot read", missing.cert.display())),
            "{e}"
        );
        let missing = ClientCert {
            key: dir.path().join("nope.key"),
            ..c.clone()
        };
        let e = Tls::new(with_client(&missing)).err().unwrap();
        assert!(
            e.contains(&format!("sslkey {}: cannot read", missing.key.display())),
            "{e}"
        );

        std::fs::write(&c.cert, "not a certificate\n").unwrap();
        let e = Tls::new(with_client(&c)).err().unwrap();
        assert!(e.contains(&format!("sslcert {crt}: no certificate")), "{e}");
        std::fs::write(&c.cert, CLIENT_PEM.replace("MIIBmDCC", "MIIB!!CC")).unwrap();
        let e = Tls::new(with_client(&c)).err().unwrap();
        assert!(e.contains(&format!("sslcert {crt}")), "{e}");
        std::fs::write(&c.cert, CLIENT_PEM).unwrap();

        // The certificate given as the key.
        std::fs::write(&c.key, CLIENT_PEM).unwrap();
        let e = Tls::new(with_client(&c)).err().unwrap();
        assert!(e.contains(&format!("sslkey {key}: no private key")), "{e}");
        // A damaged key.
        std::fs::write(&c.key, CLIENT_KEY.replace("MIGHAgEA", "MIGHAg!A")).unwrap();
        let e = Tls::new(with_client(&c)).err().unwrap();
        assert!(
            e.contains(&format!(
                "sslkey {key}: the TLS library cannot load it as a PKCS#8 private key"
            )),
            "{e}"
        );
    }

    #[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = client_files(dir.path(), CLIENT_PEM, OTHER_KEY);
        let e = Tls::new(with_client(&c)).err().unwrap();
        assert!(
            e.contains(&format!(
                "sslkey {} does not belong to the certificate in sslcert {}",
                c.key.display(),
                c.cert.display()
            )),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = client_files(dir.path(), CLIENT_PEM, CLIENT_KEY);
        let key = c.key.display().to_string();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o601] {
            std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Tls::new(with_client(&c)).err().unwrap();
            assert!(
                e.contains(&format!("sslkey {key}: group or others have access"))
                    && e.contains(&format!("(mode {mode:04o})"))
                    && e.contains(&format!("chmod 600 {key}")),
                "{mode:o}: {e}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(Tls::new(with_client(&c)).is_ok(), "{mode:o}");
        }
        let e = Tls::new(with_client(&ClientCert {
            key: dir.path().to_path_buf(),
            ..c.clone()
        }))
        .err()
        .unwrap();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("%2Ftmp%2fa%20b"), "/tmp/a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%zzb%4"), "a%zzb%4");
    }

    #[test]
    fn a_bad_root_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = Tls::new(params(SslMode::Require, Roots::File(missing.clone())))
            .err()
            .unwrap();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("cannot read"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = Tls::new(params(SslMode::Require, Roots::File(junk.clone())))
            .err()
            .unwrap();
        assert!(e.contains(&junk.display().to_string()), "{e}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, CA_PEM.replace("MIIBkDCC", "MIIB!!CC")).unwrap();
        let e = Tls::new(params(SslMode::Require, Roots::File(broken.clone())))
            .err()
            .unwrap();
        assert!(e.contains(&broken.display().to_string()), "{e}");

        // With sslmode=disable the file is not read (as libpq).
        assert!(Tls::new(params(SslMode::Disable, Roots::File(missing)))
            .unwrap()
            .connector()
            .is_none());
    }

    #[test]
    fn a_pem_root_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, format!("{CA_PEM}{CA_PEM}")).unwrap();
        for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let t = Tls::new(params(mode, Roots::File(ca.clone()))).unwrap();
            assert!(t.connector().is_some());
        }
        assert_eq!(
            Tls::new(params(SslMode::VerifyCa, Roots::File(ca.clone())))
                .unwrap()
                .driver_mode(),
            DriverMode::Require
        );
        assert_eq!(
            Tls::new(params(SslMode::Prefer, Roots::System))
                .unwrap()
                .driver_mode(),
            DriverMode::Prefer
        );
    }

    #[test]
    fn handshake_failures_get_advice() {
        let sys = Tls::new(params(SslMode::Require, Roots::System)).unwrap();
        let a = sys
            .advice(
                "error performing TLS handshake: …certificate verify failed…: (self-signed certificate in certificate chain)",
                "db1",
            )
            .unwrap();
        assert!(a.contains("add sslrootcert=PATH"), "{a}");
        let a = sys
            .advice("…certificate verify failed… (hostname mismatch)", "db1")
            .unwrap();
        assert!(
            a.contains("not issued for db1") && a.contains("verify-ca"),
            "{a}"
        );
        assert_eq!(sys.advice("connection reset by peer", "db1"), None);
    }

    #[test]
    fn a_connection_ended_after_the_handshake_names_the_client_certificate() {
        let reset = "error communicating with the server: Connection reset by peer (os error 104)";
        let alert = "error communicating with the server: … tlsv1 alert unknown ca …";
        // Without a client certificate: nothing to say.
        let plain = Tls::new(params(SslMode::Require, Roots::System)).unwrap();
        assert_eq!(plain.client_refused_advice(reset), None);
        // With one (mode disable only so that no file is read here; the URL refuses it).
        let mut p = params(SslMode::Disable, Roots::System);
        p.client = Some(ClientCert {
            cert: PathBuf::from("/etc/canary/client.pem"),
            key: PathBuf::from("/etc/canary/client.key"),
        });
        let with = Tls::new(p).unwrap();
        for text in [reset, alert] {
            let a = with.client_refused_advice(text).unwrap();
            assert!(
                a.contains("refused the client certificate in sslcert /etc/canary/client.pem"),
                "{a}"
            );
        }
        assert_eq!(
            with.client_refused_advice("password authentication failed for user \"x\""),
            None
        );
    }
}
