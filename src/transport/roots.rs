//! The system's trust roots (or `SSL_CERT_FILE`/`SSL_CERT_DIR`), read once per process and
//! bounded.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::error::InvalidInput;

use super::*;

/// The most certificate files read from `SSL_CERT_DIR` (or the system directory).
pub const MAX_CERTIFICATE_DIR_FILES: usize = 10_000;

/// The most bytes read from all certificate files together.
pub const MAX_CERTIFICATE_BYTES_TOTAL: u64 = 64 * 1024 * 1024;

/// The system's roots, read once per process for each `SSL_CERT_FILE`/`SSL_CERT_DIR` setting.
#[derive(Default)]
pub(super) struct SystemRoots {
    pub(super) certs: Vec<CertificateDer<'static>>,
    /// Those from `SSL_CERT_FILE` (pinned as well).
    pub(super) from_cert_file: Vec<CertificateDer<'static>>,
}

/// The system roots: `SSL_CERT_FILE` and/or `SSL_CERT_DIR` when set (they replace the system's,
/// as in OpenSSL), else the first system bundle found, else the system directory. Only regular
/// files, each at most [`MAX_CERTIFICATE_FILE_BYTES`] (a larger one in a directory is skipped),
/// at most [`MAX_CERTIFICATE_DIR_FILES`] files and [`MAX_CERTIFICATE_BYTES_TOTAL`] bytes, read
/// on a thread of their own and given up after [`FILE_READ_TIMEOUT`]; read once per process.
pub(super) fn system_roots() -> Result<Arc<SystemRoots>, InvalidInput> {
    type Key = (Option<std::ffi::OsString>, Option<std::ffi::OsString>);
    static CACHE: std::sync::Mutex<Vec<(Key, Arc<SystemRoots>)>> = std::sync::Mutex::new(Vec::new());
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let key: Key = (var("SSL_CERT_FILE"), var("SSL_CERT_DIR"));
    let cached = |cache: &Vec<(Key, Arc<SystemRoots>)>| cache.iter().find(|(k, _)| *k == key).map(|(_, r)| r.clone());
    if let Some(roots) = CACHE.lock().ok().and_then(|c| cached(&c)) {
        return Ok(roots);
    }
    let (file, dir) = key.clone();
    let roots = Arc::new(off_thread("the system's CA certificates", move || {
        load_roots(file, dir)
    })?);
    if let Ok(mut cache) = CACHE.lock() {
        if cached(&cache).is_none() {
            cache.push((key, roots.clone()));
        }
    }
    Ok(roots)
}

/// Reads the roots (see [`system_roots`]).
pub(super) fn load_roots(
    file: Option<std::ffi::OsString>,
    dir: Option<std::ffi::OsString>,
) -> Result<SystemRoots, InvalidInput> {
    let mut roots = SystemRoots::default();
    if !ROOTS_FROM_FILES && file.is_none() {
        return Ok(roots);
    }
    let mut budget = MAX_CERTIFICATE_BYTES_TOTAL;
    if let Some(file) = &file {
        let pem = read_file_capped(std::path::Path::new(file), MAX_CERTIFICATE_FILE_BYTES)
            .map_err(|e| InvalidInput::CaCertificate(format!("SSL_CERT_FILE {e}")))?;
        budget = budget.saturating_sub(pem.len() as u64);
        roots.from_cert_file = parse_pem_certificates(&pem).unwrap_or_default();
        roots.certs.extend(roots.from_cert_file.iter().cloned());
    }
    if !ROOTS_FROM_FILES {
        return Ok(roots);
    }
    let dirs: Vec<std::path::PathBuf> = match (&file, &dir) {
        (_, Some(dir)) => std::env::split_paths(dir).collect(),
        (Some(_), None) => Vec::new(),
        (None, None) => {
            const BUNDLES: [&str; 8] = [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/ca-bundle.pem",
                "/etc/pki/tls/cacert.pem",
                "/etc/ssl/cert.pem",
                "/usr/local/share/certs/ca-root-nss.crt",
                "/usr/local/etc/ssl/cert.pem",
            ];
            let bundle = BUNDLES
                .iter()
                .map(std::path::Path::new)
                .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()));
            match bundle {
                Some(bundle) => {
                    match read_file_capped(bundle, MAX_CERTIFICATE_FILE_BYTES) {
                        Ok(pem) => roots.certs.extend(parse_pem_certificates(&pem).unwrap_or_default()),
                        Err(e) => tracing::warn!(error = %e, "system CA bundle skipped"),
                    }
                    Vec::new()
                }
                None => vec!["/etc/ssl/certs".into(), "/etc/pki/tls/certs".into()],
            }
        }
    };
    let mut files = 0usize;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            files += 1;
            if files > MAX_CERTIFICATE_DIR_FILES {
                tracing::warn!(
                    "more than {MAX_CERTIFICATE_DIR_FILES} files in the certificate directories: the rest is skipped"
                );
                return Ok(roots);
            }
            let path = entry.path();
            // Symbolic links are followed (the hashed names are links), but only to regular files.
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            match read_file_capped(&path, MAX_CERTIFICATE_FILE_BYTES.min(budget)) {
                Ok(pem) => {
                    budget = budget.saturating_sub(pem.len() as u64);
                    roots.certs.extend(parse_pem_certificates(&pem).unwrap_or_default());
                }
                Err(e) => tracing::warn!(error = %e, "certificate file skipped"),
            }
            if budget == 0 {
                tracing::warn!(
                    "the certificate files hold more than {MAX_CERTIFICATE_BYTES_TOTAL} bytes: the rest is skipped"
                );
                return Ok(roots);
            }
        }
    }
    Ok(roots)
}
