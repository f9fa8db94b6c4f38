use crate::auth::{Credential, KeyError, SasError};

use super::*;

const KEY: &str = "a2V5MTIzNDU2Nzg5MA==";

fn parse(s: &str) -> Result<StorageConfig, ConfigError> {
    StorageConfig::parse_connection_string(s)
}

fn account_of(c: &StorageConfig) -> &str {
    match &c.credential {
        Credential::SharedKey { account, .. } => account,
        other => panic!("not SharedKey: {other:?}"),
    }
}

#[test]
fn every_key() {
    let c = parse(&format!(
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.usgovcloudapi.net"
    ))
    .unwrap();
    assert_eq!(c.endpoint.as_str(), "https://acct.blob.core.usgovcloudapi.net/");
    assert_eq!(account_of(&c), "acct");

    let c = parse(&format!(
        "defaultendpointsprotocol=HTTP;ACCOUNTNAME=acct;accountkey={KEY};"
    ))
    .unwrap();
    assert_eq!(c.endpoint.as_str(), "http://acct.blob.core.windows.net/");

    let c = parse(&format!(
        "BlobEndpoint=https://azs.local:8443/acct/;AccountName=acct;AccountKey={KEY};QueueEndpoint=https://q"
    ))
    .unwrap();
    assert_eq!(c.endpoint.as_str(), "https://azs.local:8443/acct");

    let c = parse(
        "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2025-11-05&sp=rw&sig=SECRETSIG",
    )
    .unwrap();
    assert!(matches!(c.credential, Credential::Sas(_)));
    assert!(!format!("{c:?}").contains("SECRETSIG"));

    let c = parse("AccountName=acct;SharedAccessSignature=?sv=1&sig=x").unwrap();
    assert_eq!(c.endpoint.as_str(), "https://acct.blob.core.windows.net/");
}

#[test]
fn development_storage() {
    let c = parse("UseDevelopmentStorage=true").unwrap();
    assert_eq!(c.endpoint.as_str(), DEV_BLOB_ENDPOINT);
    assert_eq!(account_of(&c), DEV_ACCOUNT);
    assert!(c.is_development());
    assert!(c.proxy.is_none());
    let c = parse("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://proxy:8080").unwrap();
    assert_eq!(c.proxy.unwrap().as_str(), "http://proxy:8080/");
    let c = parse("UseDevelopmentStorage=true;BlobEndpoint=http://azurite:10000/devstoreaccount1").unwrap();
    assert_eq!(c.endpoint.as_str(), "http://azurite:10000/devstoreaccount1");
    assert_eq!(StorageConfig::development().endpoint.as_str(), DEV_BLOB_ENDPOINT);
}

#[test]
fn malformed_strings_each_get_their_own_error() {
    use ConfigError::*;
    let secret = "c2VjcmV0LWtleS12YWx1ZQ==";
    let cases: Vec<(String, ConfigError)> = vec![
        ("".into(), Empty),
        ("AccountName".into(), NotKeyValue { index: 1 }),
        (format!("AccountKey={secret};=x"), NotKeyValue { index: 2 }),
        (
            "AccountName=a;AccountName=b".into(),
            DuplicateKey { key: "AccountName" },
        ),
        (
            "AccountNme=acct".into(),
            UnknownKey {
                index: 1,
                suggestion: Some("AccountName"),
            },
        ),
        ("AccountName=;AccountKey=x".into(), EmptyValue { key: "AccountName" }),
        (
            "AccountName=acct;AccountKey=not*base64".into(),
            InvalidKey {
                key: "AccountKey",
                source: KeyError::NotBase64,
            },
        ),
        (
            format!("DefaultEndpointsProtocol=ftp;AccountName=acct;AccountKey={secret}"),
            InvalidValue {
                key: "DefaultEndpointsProtocol",
                reason: "must be `http` or `https`".into(),
            },
        ),
        (
            format!("AccountKey={secret}"),
            Missing {
                key: "AccountName",
                why: "needed to build the endpoint when no `BlobEndpoint` is given",
            },
        ),
        (
            "AccountName=acct".into(),
            Missing {
                key: "AccountKey",
                why: "a lock needs write access: give an account key or a SAS token, or authorize with Entra ID \
                      (feature `entra`: `StorageConfig::from_env`, `StorageConfig::entra`, the CLI's `--auth`)",
            },
        ),
        (
            "UseDevelopmentStorage=false".into(),
            InvalidValue {
                key: "UseDevelopmentStorage",
                reason: "the only accepted value is `true`".into(),
            },
        ),
        (
            "DevelopmentStorageProxyUri=http://p".into(),
            InvalidValue {
                key: "DevelopmentStorageProxyUri",
                reason: "it is only used together with `UseDevelopmentStorage=true`".into(),
            },
        ),
        (
            format!("AccountName=Bad_Name;AccountKey={secret}"),
            InvalidValue {
                key: "AccountName",
                reason: "character 1 is an upper-case letter; an account name is 3-24 lower-case letters and digits"
                    .into(),
            },
        ),
        (
            format!("AccountName=acct;AccountKey={secret};SharedAccessSignature=sv=1&sig=x"),
            Conflict {
                a: "AccountKey",
                b: "SharedAccessSignature",
            },
        ),
        (
            "AccountName=acct;SharedAccessSignature=sv=1&sp=r".into(),
            InvalidSas {
                key: "SharedAccessSignature",
                source: SasError::MissingSignature,
            },
        ),
        (
            format!("AccountName=acct;AccountKey={secret};EndpointSuffix=/evil"),
            InvalidValue {
                key: "EndpointSuffix",
                reason: "character 1 is `/`: it must be a DNS suffix such as `core.windows.net`".into(),
            },
        ),
        (
            format!("BlobEndpoint=ftp://x;AccountName=acct;AccountKey={secret}"),
            InvalidValue {
                key: "BlobEndpoint",
                reason: "it must start with `http://` or `https://`".into(),
            },
        ),
        (
            format!("BlobEndpoint=https://x/?sv=1&sig=y;AccountName=acct;AccountKey={secret}"),
            InvalidValue {
                key: "BlobEndpoint",
                reason: "the endpoint must not have a query string (put a SAS token in `SharedAccessSignature`)".into(),
            },
        ),
        (
            format!("UseDevelopmentStorage=true;AccountKey={secret}"),
            Conflict {
                a: "UseDevelopmentStorage",
                b: "AccountKey",
            },
        ),
        (
            format!("BlobEndpoint=https://x;AccountKey={secret}"),
            Missing {
                key: "AccountName",
                why: "SharedKey signing with an account key needs the account name",
            },
        ),
    ];
    assert!(cases.len() >= 10);
    assert_eq!(parse(" ; ;").unwrap_err(), Empty);
    let mut messages = std::collections::HashSet::new();
    for (input, expected) in cases {
        let err = parse(&input).unwrap_err();
        assert_eq!(err, expected, "input {input:?}");
        let msg = err.to_string();
        assert!(!msg.contains(secret) && !msg.contains("c2VjcmV0"), "{msg}");
        assert!(messages.insert(msg.clone()), "message not distinct: {msg}");
    }
}

#[test]
fn endpoints_are_checked() {
    let bad = [
        format!("AccountName=acct;AccountKey={KEY};EndpointSuffix=core\\windows.net"),
        format!("AccountName=acct;AccountKey={KEY};EndpointSuffix=core..net"),
        format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:0/acct"),
        format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=https://a.b:0"),
        format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=https://a.b/x,AccountKey=y"),
        format!("AccountName=acct;AccountKey={KEY};BlobEndpoint=https://a=b.c"),
        format!(
            "AccountName=acct;AccountKey={KEY};BlobEndpoint=https://{}.c",
            "a".repeat(64)
        ),
    ];
    for cs in bad {
        let e = parse(&cs).unwrap_err();
        assert!(matches!(e, ConfigError::InvalidValue { .. }), "{cs}: {e:?}");
    }
    // A pasted SAS URL gives its query.
    let c = parse("BlobEndpoint=https://a.b;SharedAccessSignature=https://a.b/c?sv=1&sig=SIGSECRET").unwrap();
    assert!(matches!(c.credential, Credential::Sas(_)));
    assert!(!format!("{c:?}").contains("SIGSECRET"));
    // A proxy's password is not printed.
    let c = parse("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://u:PROXYSECRET@p:8080").unwrap();
    assert!(!format!("{c:?}").contains("PROXYSECRET"), "{c:?}");
}

#[test]
fn empty_variables_are_errors_not_development_storage() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    for name in [
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
    ] {
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(name, " ")]));
        assert_eq!(
            StorageConfig::from_vars(env(pairs)).unwrap_err(),
            ConfigError::EmptyVariable { name }
        );
    }
}

#[test]
fn typos_get_a_suggestion_not_a_quote() {
    let e = parse(&format!("AccountName=acct;AccountKey:{KEY}")).unwrap_err();
    assert_eq!(
        e,
        ConfigError::UnknownKey {
            index: 2,
            suggestion: Some("AccountKey")
        }
    );
    let e = parse(&format!("AccountName=acct;{KEY}")).unwrap_err();
    assert!(!format!("{e} {e:?}").contains("a2V5MTIz"), "{e}");
}

#[test]
fn key_never_in_debug() {
    let secret = "c2VjcmV0LWtleS12YWx1ZQ==";
    let c = parse(&format!("AccountName=acct;AccountKey={secret}")).unwrap();
    let dbg = format!("{c:?} {:?}", c.credential);
    assert!(!dbg.contains(secret) && !dbg.contains("c2VjcmV0"), "{dbg}");
    assert!(dbg.contains("acct"));
}

#[test]
fn environment_variables() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    assert!(StorageConfig::from_vars(env(&[])).unwrap().is_none());
    let c = StorageConfig::from_vars(env(&[(
        "AZURE_STORAGE_CONNECTION_STRING",
        "UseDevelopmentStorage=true",
    )]))
    .unwrap()
    .unwrap();
    assert!(c.is_development());
    let c = StorageConfig::from_vars(env(&[("AZURE_STORAGE_ACCOUNT", "acct"), ("AZURE_STORAGE_KEY", KEY)]))
        .unwrap()
        .unwrap();
    assert_eq!(c.endpoint.as_str(), "https://acct.blob.core.windows.net/");
    let c = StorageConfig::from_vars(env(&[
        ("AZURE_STORAGE_ACCOUNT", "acct"),
        ("AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=abc"),
        ("AZURE_STORAGE_SERVICE_ENDPOINT", "http://127.0.0.1:10000/acct"),
    ]))
    .unwrap()
    .unwrap();
    assert!(matches!(c.credential, Credential::Sas(_)));
    assert_eq!(c.endpoint.as_str(), "http://127.0.0.1:10000/acct");
    let e = StorageConfig::from_vars(env(&[("AZURE_STORAGE_ACCOUNT", "acct")])).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Missing {
            key: "AZURE_STORAGE_KEY",
            ..
        }
    ));
    let e =
        StorageConfig::from_vars(env(&[("AZURE_STORAGE_ACCOUNT", "acct"), ("AZURE_STORAGE_KEY", "!!")])).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::InvalidKey {
            key: "AZURE_STORAGE_KEY",
            ..
        }
    ));
}

#[test]
fn unknown_storage_variables_are_named_with_what_was_meant() {
    let names = [
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_CONNECTIONSTRING",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_SAS",
        "AZURE_STORAGE_BLOB_ENDPOINT",
        "AZURE_STORAGE_SOMETHING",
        // Read by this crate or by the Azure CLI: never "unknown".
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_AUTH_MODE",
        "AZURE_CLIENT_ID",
        "PATH",
    ];
    let found = env::unknown_storage_variables(names.iter().map(|s| s.to_string()));
    assert_eq!(
        found,
        [
            "`AZURE_STORAGE_ACCESS_KEY` (did you mean `AZURE_STORAGE_KEY`?)",
            "`AZURE_STORAGE_ACCOUNT_NAME` (did you mean `AZURE_STORAGE_ACCOUNT`?)",
            "`AZURE_STORAGE_BLOB_ENDPOINT` (did you mean `AZURE_STORAGE_SERVICE_ENDPOINT`?)",
            "`AZURE_STORAGE_CONNECTIONSTRING` (did you mean `AZURE_STORAGE_CONNECTION_STRING`?)",
            "`AZURE_STORAGE_SAS` (did you mean `AZURE_STORAGE_SAS_TOKEN`?)",
            "`AZURE_STORAGE_SOMETHING`",
        ]
    );
    // A name that is really a pasted key is described, never printed.
    let key = format!(
        "AZURE_STORAGE_{}",
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"
    );
    let found = env::unknown_storage_variables(std::iter::once(key.clone()));
    assert_eq!(found.len(), 1);
    assert!(!found[0].contains("Eby8vdM02x"), "{found:?}");
}

#[cfg(feature = "entra")]
#[test]
fn a_fall_through_to_entra_id_says_so_first_and_keeps_the_classification() {
    use crate::auth::entra::{EntraError, EntraKind};
    let note = env::fall_through_note(&["`AZURE_STORAGE_ACCESS_KEY` (did you mean `AZURE_STORAGE_KEY`?)".into()]);
    assert!(
        note.starts_with("no account key, SAS token or connection string was found"),
        "{note}"
    );
    assert!(note.contains("AZURE_STORAGE_ACCESS_KEY"), "{note}");
    let definite = EntraError::Explained {
        note: note.clone(),
        source: Box::new(EntraError::Chain { tried: vec![] }),
    };
    assert!(definite.is_definite());
    assert!(definite.to_string().starts_with("no account key"), "{definite}");
    let transient = EntraError::Explained {
        note,
        source: Box::new(EntraError::Transient {
            kind: EntraKind::ManagedIdentity,
            why: "503".into(),
        }),
    };
    assert!(!transient.is_definite());
}
