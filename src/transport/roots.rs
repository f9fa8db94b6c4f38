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
    // The same file under several names (OpenSSL's hashed links beside the named ones) is read
    // once.
    let mut seen = std::collections::HashSet::new();
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
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() || !seen.insert(file_id(&meta)) {
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

/// What tells files apart (the device and inode where there are such), so that a file reached
/// under several names is read once.
#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (u64::MAX, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("certificate").pem()
    }

    /// OpenSSL's hashed links beside the named files (as in `/etc/ssl/certs`): each file is read
    /// once, however many names it has; a second file is read even if it holds the same text.
    #[test]
    fn a_certificate_file_under_several_names_is_read_once() {
        let dir = std::env::temp_dir().join(format!("azmutex-roots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (a, b) = (ca_pem("a"), ca_pem("b"));
        std::fs::write(dir.join("A.pem"), &a).expect("write");
        std::fs::write(dir.join("B.pem"), &b).expect("write");
        std::fs::write(dir.join("B-copy.pem"), &b).expect("write");
        for (link, target) in [
            ("1a2b3c4d.0", "A.pem"),
            ("A-again.pem", "A.pem"),
            ("5e6f7a8b.0", "B.pem"),
        ] {
            std::os::unix::fs::symlink(target, dir.join(link)).expect("symlink");
        }
        let roots = load_roots(None, Some(dir.clone().into_os_string())).expect("roots");
        let _ = std::fs::remove_dir_all(&dir);
        // A.pem once (three names), B.pem once (two names), B-copy.pem once.
        assert_eq!(roots.certs.len(), 3);
    }
}
