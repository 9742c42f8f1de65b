//! TLS for the PostgreSQL store: libpq's URL parameters `sslmode` and `sslrootcert`, read
//! here because the driver's parser knows only `sslmode=disable|prefer|require` and no
//! `sslrootcert`. They are taken out of the URL before the driver parses the rest.
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

/// The TLS parameters of a URL, as written (nothing read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    pub roots: Roots,
}

/// `url` without `sslmode` and `sslrootcert` (the rest in order, as written), and what they
/// said. The error says which parameter is wrong and what it accepts.
pub fn split_url(url: &str) -> Result<(String, TlsParams), String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "sslmode" => mode = Some(parse_mode(&percent_decode(v))?),
            "sslrootcert" => root = Some(percent_decode(v)),
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
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, TlsParams { mode, roots }))
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
    /// Reads the root file (not for `disable`, as libpq) and builds the connector.
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
        if params.mode == SslMode::VerifyCa {
            b.danger_accept_invalid_hostnames(true);
        }
        let c = b.build().map_err(|e| format!("TLS setup: {e}"))?;
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
}

/// The certificates of a PEM file; the error names the file.
fn read_roots(path: &Path) -> Result<Vec<native_tls::Certificate>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {shown}: cannot read: {e}"))?;
    let certs = native_tls::Certificate::stack_from_pem(&pem)
        .map_err(|e| format!("sslrootcert {shown}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert {shown}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
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

    fn params(mode: SslMode, roots: Roots) -> TlsParams {
        TlsParams { mode, roots }
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
}
