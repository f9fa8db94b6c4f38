//! Locked-down networks: HTTPS Azurite with a self-signed certificate made the way Azurite's
//! documentation makes one (openssl, `CA:TRUE`), bundles, `SSL_CERT_FILE`/`SSL_CERT_DIR`, a
//! local forward proxy (CONNECT for HTTPS, absolute-form for HTTP) with credentials and
//! `NO_PROXY`, and a host-style custom domain with an explicit account name.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/token_server.rs"]
mod token_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use azmutex::error::TlsProblem;
use azmutex::{AccountKey, AzureMutex, ClientOptions, Credential, Error, Proxies, ProxyConfig, StorageConfig};
use common::forward_proxy::ForwardProxy;
use common::{secs, Service};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

fn tmpdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate made exactly as Azurite's documentation makes one:
/// `openssl req -x509 -newkey rsa:2048 -nodes -addext "subjectAltName=IP:127.0.0.1" ...`
/// (OpenSSL marks it `CA:TRUE`, which is what rustls refuses as a server certificate).
fn openssl_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need the `openssl` command ({e}); install it, e.g. `apt-get install openssl`")
        });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "the hard case: a CA-flagged server certificate"
    );
    (cert, key)
}

/// HTTPS Azurite with the openssl certificate (endpoint `https://localhost:PORT/...`).
fn openssl_azurite() -> &'static (PathBuf, Service) {
    static AZURITE: OnceLock<(PathBuf, Service)> = OnceLock::new();
    AZURITE.get_or_init(|| {
        let (cert, key) = openssl_cert(&tmpdir("openssl"));
        let service = common::start_azurite(
            "https",
            &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
        );
        (cert, service)
    })
}

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn https_config() -> StorageConfig {
    StorageConfig::parse_connection_string(&openssl_azurite().1.connection_string).unwrap()
}

fn options_with(certs: &[Vec<u8>]) -> ClientOptions {
    let mut o = common::fast_options();
    o.retry.call_timeout = Duration::from_secs(5);
    o.ca_certificates_pem = certs.to_vec();
    o.proxy = ProxyConfig::Direct;
    o
}

async fn round_trip(config: StorageConfig, options: ClientOptions) -> Result<(), Error> {
    let m = AzureMutex::builder(config, common::unique("pc"))
        .client_options(options)
        .build()
        .unwrap();
    let lease = m.acquire("job", secs(15)).await?;
    m.release(&lease).await?;
    Ok(())
}

fn tls_problem(e: &Error) -> Option<TlsProblem> {
    match e {
        Error::Tls { problem } => Some(problem.clone()),
        _ => None,
    }
}

/// A self-signed `CA:TRUE` certificate for `names`, valid from `not_before` to `not_after`
/// (years), with its key, as PEM.
fn rcgen_self_signed(names: &[&str], years: (i32, i32)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "pinned");
    params.not_before = rcgen::date_time_ymd(2020 + years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020 + years.1, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn azurite_with(cert_pem: &str, key_pem: &str) -> Service {
    let dir = tmpdir("cert");
    std::fs::write(dir.join("c.pem"), cert_pem).unwrap();
    std::fs::write(dir.join("k.pem"), key_pem).unwrap();
    let c = dir.join("c.pem");
    let k = dir.join("k.pem");
    common::start_azurite("https", &["--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()])
}

#[tokio::test]
async fn an_openssl_self_signed_certificate_is_trusted_when_named() {
    let (cert, _) = openssl_azurite();
    // Not named: refused at once, the problem named.
    let err = round_trip(https_config(), options_with(&[])).await.unwrap_err();
    assert_eq!(tls_problem(&err), Some(TlsProblem::CaAsServerCertificate), "{err:?}");
    assert!(err.to_string().contains("--ca-cert"), "{err}");
    // Named: trusted (pinned), although it carries CA:TRUE.
    round_trip(https_config(), options_with(&[pem(cert)])).await.unwrap();
    // In a bundle with an unrelated CA, and as a second entry: still trusted.
    let (other, _) = rcgen_self_signed(&["elsewhere.test"], (0, 30));
    let mut bundle = other.clone().into_bytes();
    bundle.extend_from_slice(&pem(cert));
    round_trip(https_config(), options_with(&[bundle])).await.unwrap();
    round_trip(https_config(), options_with(&[other.into_bytes(), pem(cert)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn pinning_still_checks_the_name_the_dates_and_other_servers() {
    let (cert, _) = openssl_azurite();
    // Expired (a pinned certificate's dates still count).
    let (expired, key) = rcgen_self_signed(&["localhost"], (-5, -1));
    let service = azurite_with(&expired, &key);
    let config = StorageConfig::parse_connection_string(&service.connection_string).unwrap();
    let err = round_trip(config, options_with(&[expired.clone().into_bytes()]))
        .await
        .unwrap_err();
    assert_eq!(tls_problem(&err), Some(TlsProblem::Expired), "{err:?}");
    // Issued for another name (the endpoint is https://localhost:PORT).
    let (wrong_name, key) = rcgen_self_signed(&["other.test"], (0, 30));
    let service = azurite_with(&wrong_name, &key);
    let config = StorageConfig::parse_connection_string(&service.connection_string).unwrap();
    let err = round_trip(config, options_with(&[wrong_name.into_bytes()]))
        .await
        .unwrap_err();
    assert_eq!(tls_problem(&err), Some(TlsProblem::NameMismatch), "{err:?}");
    // A server whose certificate was not named is not trusted because another one was.
    let (unnamed, key) = rcgen_self_signed(&["localhost"], (0, 30));
    let service = azurite_with(&unnamed, &key);
    let config = StorageConfig::parse_connection_string(&service.connection_string).unwrap();
    let err = round_trip(config, options_with(&[pem(cert)])).await.unwrap_err();
    assert_eq!(tls_problem(&err), Some(TlsProblem::CaAsServerCertificate), "{err:?}");
}

#[tokio::test]
async fn through_a_connect_proxy_with_credentials_and_no_proxy_bypasses_it() {
    let (cert, service) = openssl_azurite();
    let proxy = ForwardProxy::start();
    proxy.require("user:pa ss");
    let url = proxy.url(Some("user:pa%20ss"));
    let vars = |no_proxy: Option<&'static str>| {
        let url = url.clone();
        Proxies::from_vars(move |name| match name {
            "https_proxy" => Some(url.clone()),
            "NO_PROXY" => no_proxy.map(str::to_string),
            _ => None,
        })
        .unwrap()
    };
    let mut options = options_with(&[pem(cert)]);
    options.proxy = ProxyConfig::Explicit(vars(None));
    assert!(!format!("{options:?}").contains("pa%20ss"), "{options:?}");
    round_trip(https_config(), options.clone()).await.unwrap();
    let port = service.port.unwrap();
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(s.method, "CONNECT");
        assert_eq!(s.target, format!("localhost:{port}"));
        assert_eq!(s.credentials.as_deref(), Some("user:pa ss"));
    }
    // NO_PROXY: straight to the endpoint.
    let before = seen.len();
    options.proxy = ProxyConfig::Explicit(vars(Some("example.com, localhost")));
    round_trip(https_config(), options.clone()).await.unwrap();
    assert_eq!(proxy.seen().len(), before, "NO_PROXY bypasses the proxy");
    // Wrong credentials: refused by the proxy, at once (not retried as an outage), typed, the
    // password nowhere in the error. Both for HTTPS (CONNECT) and plain HTTP.
    let mut wrong = options_with(&[pem(cert)]);
    wrong.proxy = ProxyConfig::Explicit(Proxies::all(&proxy.url(Some("user:WrongSecret1"))).unwrap());
    let before = proxy.seen().len();
    let err = round_trip(https_config(), wrong.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("407"), "{err}");
    assert!(!format!("{err:?}{err}").contains("WrongSecret1"), "{err:?}");
    assert_eq!(proxy.seen().len(), before + 1, "not retried");
    let err = round_trip(common::config(), wrong).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(!format!("{err:?}{err}").contains("WrongSecret1"), "{err:?}");
}

#[test]
fn proxy_settings_are_read_as_curl_reads_them() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        Proxies::from_vars(|name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    };
    let p = env(&[("HTTPS_PROXY", "http://upper:1"), ("https_proxy", "http://lower:2")]).unwrap();
    assert_eq!(p.https.unwrap().as_str(), "http://lower:2/", "lower case wins");
    let p = env(&[("ALL_PROXY", "proxy.corp:3128"), ("HTTP_PROXY", "http://h:1")]).unwrap();
    assert_eq!(
        p.https.unwrap().as_str(),
        "http://proxy.corp:3128/",
        "ALL_PROXY, bare host:port"
    );
    assert_eq!(p.http.unwrap().as_str(), "http://h:1/");
    let p = env(&[("HTTPS_PROXY", "  "), ("NO_PROXY", "*")]).unwrap();
    assert!(p.is_empty(), "empty is unset");
    assert_eq!(p.no_proxy.as_deref(), Some("*"));
    for bad in ["socks5://h:1", "http://u:Secret9@h:1/path", "ftp://h"] {
        let err = Proxies::from_vars(|n| (n == "HTTPS_PROXY").then(|| bad.to_string())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HTTPS_PROXY"), "{text}");
        assert!(!text.contains("Secret9"), "{text}");
    }
}

// --- the CLI ---

fn cli_https(container: &str) -> Command {
    let (_, service) = openssl_azurite();
    let mut c = cli::azmutex_with(container, &service.connection_string);
    c.args(["--timeout", "20s"]);
    c
}

#[test]
fn cli_ca_cert_works_and_without_it_exits_78_at_once() {
    let (cert, _) = openssl_azurite();
    let container = common::unique("pc-cli");
    let started = Instant::now();
    let out = cli_https(&container).args(["status", "job"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("self-signed") && stderr.contains("not trusted"),
        "{stderr}"
    );
    assert!(stderr.contains("--ca-cert"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not retried until --timeout"
    );

    let out = cli_https(&container)
        .arg("--ca-cert")
        .arg(cert)
        .args(["run", "job", "--", "echo", "ran"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
}

#[test]
fn cli_ssl_cert_file_and_dir_work_as_in_other_tools() {
    let (cert, _) = openssl_azurite();
    let container = common::unique("pc-env");
    // SSL_CERT_FILE naming the self-signed certificate: trusted as with --ca-cert.
    let out = cli_https(&container)
        .env("SSL_CERT_FILE", cert)
        .args(["status", "job"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // SSL_CERT_DIR holding a private CA that issued the server's certificate.
    let pki = token_server::make_pki(tmpdir("dirpki"));
    let service = azurite_with(&pki.cert_pem, &pki.key_pem);
    let dir = tmpdir("certdir");
    std::fs::write(dir.join("private-ca.pem"), &pki.ca_pem).unwrap();
    let out = cli::azmutex_with(&container, &service.connection_string)
        .env("SSL_CERT_DIR", &dir)
        .args(["status", "job"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without it: untrusted.
    let out = cli::azmutex_with(&container, &service.connection_string)
        .args(["status", "job"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn cli_through_a_connect_proxy_from_the_environment_and_no_proxy() {
    let (cert, service) = openssl_azurite();
    let container = common::unique("pc-proxy");
    let proxy = ForwardProxy::start();
    proxy.require("ci:Hunter2Secret");
    for var in ["HTTPS_PROXY", "https_proxy"] {
        let before = proxy.seen().len();
        let out = cli_https(&container)
            .env(var, proxy.url(Some("ci:Hunter2Secret")))
            .arg("--ca-cert")
            .arg(cert)
            .args(["run", "job", "--", "echo", "ran"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{var}: {}", String::from_utf8_lossy(&out.stderr));
        let seen = proxy.seen();
        assert!(seen.len() > before, "{var}: the proxy saw the traffic");
        let port = service.port.unwrap();
        assert!(seen[before..]
            .iter()
            .all(|s| s.method == "CONNECT" && s.target == format!("localhost:{port}")));
    }
    let before = proxy.seen().len();
    let out = cli_https(&container)
        .env("HTTPS_PROXY", proxy.url(Some("ci:Hunter2Secret")))
        .env("NO_PROXY", "localhost")
        .arg("--ca-cert")
        .arg(cert)
        .args(["status", "job"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(proxy.seen().len(), before, "NO_PROXY bypassed the proxy");
}

#[test]
fn cli_proxy_credentials_are_never_printed() {
    let (cert, _) = openssl_azurite();
    let container = common::unique("pc-secret");
    let proxy = ForwardProxy::start();
    proxy.require("ci:RightSecret");
    // The proxy refuses the credentials (407), and a dead proxy: neither error nor log shows them.
    // Port 1: nothing listens there (a freed ephemeral port could be given to another server).
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    for url in [
        proxy.url(Some("ci:Hunter2Secret")),
        format!("http://ci:Hunter2Secret@{dead}"),
    ] {
        for via_env in [false, true] {
            let mut c = cli::azmutex_with(&container, &openssl_azurite().1.connection_string);
            c.args(["-vv", "--timeout", "3s", "--ca-cert"]).arg(cert);
            if via_env {
                c.env("HTTPS_PROXY", &url);
            } else {
                c.args(["--proxy", &url]);
            }
            let out = c.args(["status", "job"]).output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{all}");
            assert!(!all.contains("Hunter2Secret"), "{url} env={via_env}: {all}");
            if url.contains(&dead.to_string()) {
                assert_eq!(out.status.code(), Some(69), "{all}");
                assert!(all.contains("request failed"), "-vv logs each failed request: {all}");
            } else {
                assert_eq!(out.status.code(), Some(77), "407 is an authentication failure: {all}");
                assert!(all.contains("407"), "{all}");
            }
        }
    }
    // A malformed proxy URL is a configuration error naming the variable, not the value.
    let out = cli_https(&container)
        .env("HTTPS_PROXY", "socks5://ci:Hunter2Secret@h:1")
        .args(["status", "job"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("HTTPS_PROXY") && !stderr.contains("Hunter2Secret"),
        "{stderr}"
    );
}

/// `locks.contoso.test` routed by the proxy to Azurite, arriving there as the account's
/// production-style host (as Azure maps a custom domain to its account).
fn custom_domain_proxy() -> ForwardProxy {
    let proxy = ForwardProxy::start();
    let port = common::azurite_addr().port();
    proxy.route("locks.contoso.test:80", common::azurite_addr());
    proxy.rewrite_host("locks.contoso.test:80", &format!("devstoreaccount1.localhost:{port}"));
    proxy
}

#[tokio::test]
async fn a_custom_domain_with_an_explicit_account_name_works_with_shared_key() {
    let proxy = custom_domain_proxy();
    let credential = Credential::SharedKey {
        account: "devstoreaccount1".into(),
        key: AccountKey::from_base64(common::DEV_KEY).unwrap(),
    };
    let config = StorageConfig::new("http://locks.contoso.test", credential).unwrap();
    let mut options = common::fast_options();
    options.proxy = ProxyConfig::Explicit(Proxies::all(&proxy.url(None)).unwrap());
    round_trip(config, options).await.unwrap();
    assert!(proxy
        .seen()
        .iter()
        .all(|s| s.target.starts_with("http://locks.contoso.test/")));
}

#[test]
fn cli_custom_domain_with_account_name() {
    let proxy = custom_domain_proxy();
    let container = common::unique("pc-domain");
    let base = || {
        let mut c = Command::new(cli::bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AZURE_STORAGE_KEY", common::DEV_KEY)
            .args(["--container", &container, "--proxy", &proxy.url(None)])
            .args(["--account-url", "http://locks.contoso.test"]);
        c
    };
    let out = base()
        .args(["--account-name", "devstoreaccount1", "run", "job", "--", "echo", "ran"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
    // Without the account name: a configuration error before the network.
    let before = proxy.seen().len();
    let out = base().args(["status", "job"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("--account-name"), "{stderr}");
    assert_eq!(proxy.seen().len(), before);
}
