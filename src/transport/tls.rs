//! TLS trust: the system's roots plus named CAs, pinning of named certificates, and TLS
//! failures classified for error messages.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{sanitize_text, InvalidInput, TlsProblem};

use super::*;

/// The rustls configuration: the system's roots plus the named certificates, which are also
/// pinned. Installs rustls's `ring` provider as the process default if no provider is installed
/// yet.
///
/// On Linux and the other Unix systems that keep their roots in PEM files, the roots are read
/// here, bounded ([`system_roots`]), once per process, instead of by the platform verifier
/// (which reads `SSL_CERT_DIR` whole, with no limits, for every client). With no roots at all,
/// `https://` endpoints fail their handshake as untrusted and `http://` ones still work.
/// Without `system` (no TLS connection expected) the system's roots are not read: only the
/// named certificates are trusted. With certificates named, the system's roots are read only
/// for a server that the named ones do not vouch for ([`NamedFirst`]).
pub(super) fn tls_config(ca_certificates_pem: &[Vec<u8>], system: bool) -> Result<rustls::ClientConfig, InvalidInput> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut named = Vec::new();
    for pem in ca_certificates_pem {
        let certs = parse_pem_certificates(pem)?;
        if certs.is_empty() {
            return Err(InvalidInput::CaCertificate("no PEM certificate found".into()));
        }
        named.extend(certs);
    }
    let algorithms = provider.signature_verification_algorithms;
    if system && ROOTS_FROM_FILES && !named.is_empty() {
        // Named CAs first; the system's roots are read only for a server they do not vouch for.
        let quick = PinningVerifier {
            inner: chain_verifier(named.clone(), &SystemRoots::default(), provider.clone())?,
            pinned: named.clone(),
            algorithms,
        };
        let verifier = NamedFirst {
            quick,
            named,
            provider: provider.clone(),
            full: std::sync::OnceLock::new(),
        };
        return client_config(provider, Arc::new(verifier));
    }
    let mut pinned = named.clone();
    let roots = if system {
        system_roots()?
    } else {
        Arc::new(SystemRoots::default())
    };
    // SSL_CERT_FILE names certificates explicitly too (OpenSSL accepts a self-signed server
    // certificate listed there).
    pinned.extend(roots.from_cert_file.iter().cloned());
    // No TLS expected and nothing named: no chain to check (and no "no roots" warning).
    let inner = if system || !named.is_empty() {
        chain_verifier(named, &roots, provider.clone())?
    } else {
        None
    };
    let verifier = PinningVerifier {
        inner,
        pinned,
        algorithms,
    };
    client_config(provider, Arc::new(verifier))
}

fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, InvalidInput> {
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| InvalidInput::Option {
            option: "tls",
            why: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// With certificates named (`--ca-cert`), the same trust as [`PinningVerifier`] over the named
/// certificates and the system's roots together, with the system's roots read only when they
/// can matter: a server that the named certificates alone accept (pinned, or a chain to one of
/// them) is accepted as it would be with the system's roots added, since more roots never
/// reject what fewer accept. Anything else is checked again, by the verifier over both, built
/// on first need ([`system_roots`]: once per process) and kept. A private CA (Azure Stack Hub,
/// Azurite with a certificate) then costs no system certificate file at all.
#[derive(Debug)]
struct NamedFirst {
    /// Over the named certificates alone.
    quick: PinningVerifier,
    named: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Over the named certificates and the system's roots; an error reading those is kept too
    /// (and reported by every check that needs them).
    full: std::sync::OnceLock<Result<PinningVerifier, String>>,
}

impl NamedFirst {
    fn full(&self) -> Result<&PinningVerifier, rustls::Error> {
        let full = self.full.get_or_init(|| {
            let roots = system_roots().map_err(|e| e.to_string())?;
            let mut pinned = self.named.clone();
            // SSL_CERT_FILE names certificates explicitly too (see `tls_config`).
            pinned.extend(roots.from_cert_file.iter().cloned());
            Ok(PinningVerifier {
                inner: chain_verifier(self.named.clone(), &roots, self.provider.clone()).map_err(|e| e.to_string())?,
                pinned,
                algorithms: self.provider.signature_verification_algorithms,
            })
        });
        full.as_ref().map_err(|e| rustls::Error::General(e.clone()))
    }
}

impl ServerCertVerifier for NamedFirst {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .quick
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => Ok(verified),
            Err(_) => self
                .full()?
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
        }
    }

    // The handshake signature is checked with the server certificate's key, whatever the roots.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.quick.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.quick.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.quick.supported_verify_schemes()
    }
}

/// Whether the system's roots are PEM files this module reads itself (as rustls-native-certs
/// would), rather than an OS store the platform verifier asks.
pub(super) const ROOTS_FROM_FILES: bool = cfg!(all(unix, not(target_vendor = "apple"), not(target_os = "android")));

/// The chain verifier: webpki over the system roots read here plus `named`; or, where the OS
/// keeps the roots, the platform verifier with `named` as extra roots. `None`: no roots at all.
pub(super) fn chain_verifier(
    named: Vec<CertificateDer<'static>>,
    roots: &SystemRoots,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn ServerCertVerifier>>, InvalidInput> {
    if !ROOTS_FROM_FILES {
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(named, provider)
            .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&e.to_string(), 200)))?;
        return Ok(Some(Arc::new(platform)));
    }
    let mut store = RootCertStore::empty();
    for cert in named {
        store
            .add(cert)
            .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&format!("unusable certificate: {e}"), 200)))?;
    }
    // Each certificate once: SSL_CERT_FILE and SSL_CERT_DIR often name the same ones (the
    // system bundle beside the directory it was made from), and parsing is most of the cost.
    let mut seen: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    let mut unique = Vec::with_capacity(roots.certs.len());
    for cert in &roots.certs {
        if seen.insert(cert.as_ref()) {
            unique.push(cert.clone());
        }
    }
    let (_, ignored) = store.add_parsable_certificates(unique);
    if ignored > 0 {
        tracing::debug!(ignored, "system CA certificates ignored (unparsable)");
    }
    if store.is_empty() {
        tracing::warn!("no CA certificates on this machine: https:// endpoints will be untrusted (add --ca-cert)");
        return Ok(None);
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&e.to_string(), 200)))?;
    Ok(Some(verifier))
}

/// Every certificate in a PEM text (other PEM sections, such as keys, are skipped).
pub(super) fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, InvalidInput> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InvalidInput::CaCertificate(sanitize_text(&format!("not a PEM certificate: {e}"), 200)))
}

/// The normal chain check (platform roots plus the named CAs), except that a server presenting
/// exactly one of the named certificates, self-signed (it is checked with itself as the trust
/// anchor), is trusted as that server: its validity dates and host
/// name are checked, its `CA:TRUE` flag is not held against it, and the handshake signature must
/// still be made with its key (so only the holder of that certificate's private key passes).
#[derive(Debug)]
pub(super) struct PinningVerifier {
    /// The chain check; `None` when there are no roots at all (everything is untrusted).
    inner: Option<Arc<dyn ServerCertVerifier>>,
    pinned: Vec<CertificateDer<'static>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return match &self.inner {
                Some(inner) => inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
                None => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            };
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let mut roots = RootCertStore::empty();
        roots.add(end_entity.clone().into_owned())?;
        // The certificate as its own trust anchor: webpki checks its dates before its basic
        // constraints, so "CA used as end entity" means everything before it passed.
        match rustls::client::verify_server_cert_signed_by_trust_anchor(&parsed, &roots, &[], now, self.algorithms.all)
        {
            Ok(()) => {}
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if format!("{other:?}").contains("CaUsedAsEndEntity") => {}
            Err(e) => return Err(e),
        }
        rustls::client::verify_server_name(&parsed, server_name)?;
        tracing::debug!("the server presented a certificate named with --ca-cert: trusted as pinned");
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS problem behind a request error, if it was one: rustls's error is found in the source
/// chain (inside `std::io::Error`s, whose `source()` skips the wrapped error).
pub(crate) fn tls_problem(e: &reqwest::Error) -> Option<TlsProblem> {
    fn find(e: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<rustls::Error>() {
                return Some(classify_tls(t));
            }
            if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                if let Some(p) = find(inner) {
                    return Some(p);
                }
            }
            cur = err.source();
        }
        None
    }
    find(e)
}

pub(super) fn classify_tls(e: &rustls::Error) -> TlsProblem {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => TlsProblem::UnknownIssuer,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::NameMismatch,
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                TlsProblem::Expired
            }
            other => {
                let detail = format!("{other:?}");
                if detail.contains("CaUsedAsEndEntity") {
                    TlsProblem::CaAsServerCertificate
                } else {
                    TlsProblem::Other(sanitize_text(&format!("invalid certificate: {detail}"), 200))
                }
            }
        },
        rustls::Error::InvalidMessage(_) => TlsProblem::NotTls,
        other => TlsProblem::Other(sanitize_text(&other.to_string(), 200)),
    }
}
