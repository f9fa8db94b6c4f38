//! Endpoint and proxy URLs checked before the network: scheme, host name, and no bearer token
//! over plain http.

use url::Url;

use super::*;

/// Refuses an `http://` endpoint for bearer tokens (they would travel in clear text; the Azure
/// SDKs refuse this too). `loopback_ok`: a loopback host is accepted (nothing leaves the machine).
pub(crate) fn check_bearer_endpoint(key: &'static str, url: &Url, loopback_ok: bool) -> Result<(), ConfigError> {
    if url.scheme() == "https" {
        return Ok(());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if loopback_ok && loopback {
        return Ok(());
    }
    Err(ConfigError::InvalidValue {
        key,
        reason: "Entra ID bearer tokens are never sent over plain `http://` (anyone on the path could \
                 read and reuse them): use the `https://` endpoint"
            .into(),
    })
}

/// What is wrong with a DNS name (labels of lower-case letters, digits, `-` and `_`, 1-63
/// characters, separated by dots), or `None`.
///
/// Upper case is refused although DNS ignores case: Azure account names and endpoint suffixes
/// are lower-case, and a mixed-case "host" is what a pasted account key looks like once a
/// separator is mistyped — which a URL parser would lower-case into a valid host and print.
pub(super) fn dns_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some(format!("it has {} characters", name.chars().count()));
    }
    let mut pos = 0;
    for label in name.split('.') {
        if label.is_empty() {
            return Some(format!("it has an empty label at character {}", pos + 1));
        }
        if label.len() > 63 {
            return Some(format!(
                "the label at character {} is longer than 63 characters",
                pos + 1
            ));
        }
        if let Some((i, c)) = label
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Some(format!("character {} is {}", pos + i + 1, describe_char(c)));
        }
        pos += label.chars().count() + 1;
    }
    None
}

pub(super) fn parse_url(key: &'static str, value: &str) -> Result<Url, ConfigError> {
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(ConfigError::InvalidValue {
            key,
            reason: format!("it must start with `http://` or `https://`{}", separator_hint(value)),
        });
    }
    let url = Url::parse(value).map_err(|e| ConfigError::InvalidValue {
        key,
        reason: format!("not an absolute URL ({e}){}", separator_hint(value)),
    })?;
    match url.host() {
        None => {
            return Err(ConfigError::InvalidValue {
                key,
                reason: "the URL has no host".into(),
            })
        }
        Some(url::Host::Domain(_)) => {
            // Check the host as written (the parser has lower-cased and IDNA-mapped it).
            let rest = &value[value.find("://").map_or(0, |i| i + 3)..];
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let raw_host = host_port.split_once(':').map_or(host_port, |(h, _)| h);
            if let Some(problem) = dns_problem(raw_host) {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!("the host name is not a DNS name: {problem}{}", separator_hint(value)),
                });
            }
        }
        Some(_) => {} // an IP address
    }
    if url.port() == Some(0) {
        return Err(ConfigError::InvalidValue {
            key,
            reason: "port 0 is not a port to connect to".into(),
        });
    }
    Ok(url)
}

/// Parses a proxy URL: `http(s)://[user:password@]host[:port]`, nothing after the host.
pub(super) fn parse_proxy(value: &str) -> Result<Url, ConfigError> {
    let key = "DevelopmentStorageProxyUri";
    let url = parse_url(key, value)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::InvalidValue {
            key,
            reason: format!(
                "a proxy URL is `http://host:port`, with nothing after the port{}",
                separator_hint(value)
            ),
        });
    }
    Ok(url)
}

/// Parses a blob endpoint: http(s), a host, no query (a SAS goes in `SharedAccessSignature`),
/// no fragment, no credentials; a trailing `/` is dropped.
pub(crate) fn parse_endpoint(key: &'static str, value: &str) -> Result<Url, ConfigError> {
    let mut url = parse_url(key, value)?;
    if url.query().is_some() {
        return Err(ConfigError::InvalidValue {
            key,
            reason: "the endpoint must not have a query string (put a SAS token in `SharedAccessSignature`)".into(),
        });
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::InvalidValue {
            key,
            reason: "the endpoint must not contain a `#fragment` or `user:password@`".into(),
        });
    }
    // A path-style endpoint's path is an account name (`/devstoreaccount1`: lower-case letters
    // and digits) or a few plain segments; anything else is most likely a pasted-together
    // connection string or a key, and would be printed wherever the endpoint is.
    if let Some((i, c)) = url
        .path()
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '/' | '-' | '.' | '_' | '~')))
    {
        return Err(ConfigError::InvalidValue {
            key,
            reason: format!(
                "character {} of the endpoint's path is {}: the path may hold lower-case letters, digits, `-._~` and `/`{}",
                i + 1,
                describe_char(c),
                separator_hint(value)
            ),
        });
    }
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}
