//! `https://` trust whatever the layout of the trust roots (issue 23's review): the roots are
//! read once per file, whatever its names (hashed links, hard links, a directory listed twice),
//! each certificate parsed once, and with a CA named (`--ca-cert`) the system's roots are read
//! only for a server it does not vouch for. Every case must trust (or refuse) exactly as a
//! plain reading of every file would. Against the built binary and an Azurite over `https://`.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/token_server.rs"]
mod token_server;

use cli::*;

struct Https {
    pki: token_server::Pki,
    service: common::Service,
}

fn https() -> &'static Https {
    static S: std::sync::OnceLock<Https> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let pki = token_server::make_pki(std::env::temp_dir().join(common::unique("roots-pki")));
        let cert = pki.dir.join("cert.pem");
        let key = pki.dir.join("key.pem");
        let service = common::start_azurite(
            "https",
            &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
        );
        Https { pki, service }
    })
}

fn other_ca() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

/// `azmutex status job` against the HTTPS Azurite with `env` and `args`; exit code and stderr.
fn https_status(env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> (Option<i32>, String) {
    let h = https();
    let mut cmd = azmutex_with("tls", &h.service.connection_string);
    cmd.args(["--timeout", "5s"]).args(args).args(["status", "job"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = output(cmd);
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn tls_case(label: &str, env: &[(&str, &std::ffi::OsStr)], args: &[&str], trusted: bool) {
    let (code, err) = https_status(env, args);
    eprintln!("[{label}] exit {code:?}");
    if trusted {
        assert_eq!(code, Some(0), "[{label}] expected trusted: {err}");
    } else {
        assert_eq!(code, Some(78), "[{label}] expected untrusted (78): {err}");
    }
}

#[test]
fn https_trust_is_the_same_whatever_the_layout_of_the_roots() {
    let h = https();
    let d = scratch("roots-tls");
    let ca = d.join("ca.pem");
    std::fs::write(&ca, &h.pki.ca_pem).unwrap();
    let other = d.join("other.pem");
    std::fs::write(&other, other_ca()).unwrap();
    let os = |p: &std::path::Path| p.as_os_str().to_owned();

    tls_case("no roots for it", &[], &[], false);
    tls_case("--ca-cert", &[], &["--ca-cert", ca.to_str().unwrap()], true);
    tls_case("SSL_CERT_FILE", &[("SSL_CERT_FILE", &os(&ca))], &[], true);
    tls_case("SSL_CERT_FILE other", &[("SSL_CERT_FILE", &os(&other))], &[], false);

    // Directories.
    let mk = |name: &str| {
        let p = d.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    // Plain file.
    let plain = mk("plain");
    std::fs::write(plain.join("ca.pem"), &h.pki.ca_pem).unwrap();
    tls_case("dir plain", &[("SSL_CERT_DIR", &os(&plain))], &[], true);
    // Hashed link only (to a file outside the directory).
    let hashed = mk("hashed");
    std::os::unix::fs::symlink(&ca, hashed.join("abcd1234.0")).unwrap();
    tls_case("dir hashed link", &[("SSL_CERT_DIR", &os(&hashed))], &[], true);
    // A file and links to it, a hard link, duplicates, another CA first.
    let mixed = mk("mixed");
    std::fs::write(mixed.join("0-other.pem"), other_ca()).unwrap();
    std::fs::write(mixed.join("ca.pem"), &h.pki.ca_pem).unwrap();
    std::os::unix::fs::symlink("ca.pem", mixed.join("abcd1234.0")).unwrap();
    std::os::unix::fs::symlink("abcd1234.0", mixed.join("abcd1234.1")).unwrap();
    std::fs::hard_link(mixed.join("ca.pem"), mixed.join("ca-hard.pem")).unwrap();
    std::fs::write(mixed.join("ca-copy.pem"), &h.pki.ca_pem).unwrap();
    tls_case("dir mixed", &[("SSL_CERT_DIR", &os(&mixed))], &[], true);
    // Only a hard link in the directory to a file elsewhere; the directory listed twice.
    let hard = mk("hard");
    std::fs::hard_link(&ca, hard.join("x.pem")).unwrap();
    let twice = std::env::join_paths([&hard, &hard]).unwrap();
    tls_case("dir hard link, listed twice", &[("SSL_CERT_DIR", &twice)], &[], true);
    // Two directories, the CA's file in the second and reached from the first too.
    let first = mk("first");
    std::os::unix::fs::symlink(&ca, first.join("link.pem")).unwrap();
    std::fs::write(first.join("other.pem"), other_ca()).unwrap();
    let both = std::env::join_paths([&first, &hashed]).unwrap();
    tls_case("two dirs sharing the file", &[("SSL_CERT_DIR", &both)], &[], true);
    // Directory with only other CAs.
    let others = mk("others");
    std::fs::write(others.join("a.pem"), other_ca()).unwrap();
    std::os::unix::fs::symlink("a.pem", others.join("11111111.0")).unwrap();
    tls_case("dir without the CA", &[("SSL_CERT_DIR", &os(&others))], &[], false);
    // SSL_CERT_FILE (other) + SSL_CERT_DIR (the CA), and the reverse; the same bundle in both.
    tls_case(
        "file other + dir ca",
        &[("SSL_CERT_FILE", &os(&other)), ("SSL_CERT_DIR", &os(&plain))],
        &[],
        true,
    );
    tls_case(
        "file ca + dir others",
        &[("SSL_CERT_FILE", &os(&ca)), ("SSL_CERT_DIR", &os(&others))],
        &[],
        true,
    );
    tls_case(
        "file ca + dir with the same file",
        &[("SSL_CERT_FILE", &os(&ca)), ("SSL_CERT_DIR", &os(&hashed))],
        &[],
        true,
    );
    // A bundle file holding the other CA, then the CA (second in the file), duplicated.
    let bundle = mk("bundle");
    std::fs::write(
        bundle.join("bundle.pem"),
        format!("{}{}{}", other_ca(), h.pki.ca_pem, h.pki.ca_pem),
    )
    .unwrap();
    tls_case("dir bundle", &[("SSL_CERT_DIR", &os(&bundle))], &[], true);
    // Another CA named: the system's roots are read for this server, and decide.
    let named_other = ["--ca-cert", other.to_str().unwrap()];
    tls_case(
        "named other + dir ca",
        &[("SSL_CERT_DIR", &os(&mixed))],
        &named_other,
        true,
    );
    tls_case(
        "named other + file ca",
        &[("SSL_CERT_FILE", &os(&ca))],
        &named_other,
        true,
    );
    tls_case(
        "named other + dir others",
        &[("SSL_CERT_DIR", &os(&others))],
        &named_other,
        false,
    );
    // The CA named and the system's roots elsewhere: trusted without them.
    tls_case(
        "named ca + dir others",
        &[("SSL_CERT_DIR", &os(&others))],
        &["--ca-cert", ca.to_str().unwrap()],
        true,
    );
    let _ = std::fs::remove_dir_all(&d);
}
