//! Command-line interface: argument parsing, configuration, dispatch and exit codes.

mod auth;
mod cgroup;
mod commands;
mod docs;
mod elect;
mod failure;
mod holder;
mod logging;
mod metrics;
mod observe;
mod output;
use output::say;
mod descendants;
mod process;
mod run;
mod signals;
mod typed_secrets;
use typed_secrets::{redact_typed_secrets, CLAP_VARIABLES};
mod slots;
mod spawn;
mod watchdog;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use azmutex::{AzureMutex, ClientOptions, Holder, InvalidInput, Proxies, ProxyConfig, StorageConfig};
use clap::{Args, Parser, Subcommand};

pub use failure::Failure;

/// Exit codes (sysexits.h), documented in `--help` and the README.
pub mod exit {
    /// The lock is busy, or the wait timed out.
    pub const BUSY: u8 = 75;
    /// The lock was lost while the command ran.
    pub const LOST: u8 = 70;
    /// Storage unreachable (network, timeouts, throttling) after retries.
    pub const UNAVAILABLE: u8 = 69;
    /// Authentication or permission refused.
    pub const AUTH: u8 = 77;
    /// Invalid configuration (connection string, key, URL, CA file), or a TLS certificate
    /// problem (untrusted, wrong name, expired, not TLS).
    pub const CONFIG: u8 = 78;
    /// Usage error.
    pub const USAGE: u8 = 2;
    /// Anything else.
    pub const OTHER: u8 = 1;
}

const AFTER_HELP: &str = "\
Exit codes:
  run       the command's own exit code (128+N if it was killed by signal N)
  75        lock busy (--no-wait) or wait timed out (see --conflict-exit-code)
  70        lock lost while the command ran (its process group got SIGTERM, then SIGKILL
            after --kill-grace), or the release could not confirm the lease was ours to the end
  69        storage unreachable after retries
  77        authentication or permission refused
  78        invalid configuration (connection string, key, URL, CA certificate), or
            a TLS certificate problem (unknown issuer: add --ca-cert; wrong host name; expired)
  126       run: the command cannot be executed (permission denied, not executable)
  127       run: the command was not found
  2         usage error (bad flag, --timeout 0, invalid lock name or lease id)
  1         other errors

Connection (first match wins): --connection-string / AZURE_STORAGE_CONNECTION_STRING;
--account-url or --account-name with --account-key / AZURE_STORAGE_KEY or
--sas-token / AZURE_STORAGE_SAS_TOKEN; otherwise local development storage
(UseDevelopmentStorage=true: Azurite on 127.0.0.1:10000) - only when none of these is set at
all: a variable that is set but empty is an error. An account without key or SAS uses Microsoft
Entra ID (--auth, AZMUTEX_AUTH): client secret (AZURE_TENANT_ID, AZURE_CLIENT_ID,
AZURE_CLIENT_SECRET), workload identity (AZURE_FEDERATED_TOKEN_FILE), managed identity, Azure CLI.";

/// What `--version` prints after the name: the crate version and the Blob service version
/// (`x-ms-version`) requests carry unless told otherwise.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (Blob service API: x-ms-version {} by default)",
            env!("CARGO_PKG_VERSION"),
            azmutex::rest::DEFAULT_API_VERSION
        )
    })
}

/// Distributed locks on Azure Blob Storage leases.
#[derive(Parser, Debug)]
#[command(name = "azmutex", version = version(), about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    /// Say less: no waiting line, no development-storage notice.
    #[arg(short, long, global = true, help_heading = "Output")]
    pub quiet: bool,
    /// Log more (-v info, -vv debug) to stderr; or set AZMUTEX_LOG to error, warn, info, debug,
    /// trace or off (every source), or azmutex=<level> (azmutex's own logs only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Output")]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the storage account is and how to authorize.
#[derive(Args, Debug)]
#[command(next_help_heading = "Connection and authentication")]
pub struct Connection {
    /// Azure Storage connection string.
    #[arg(long, env = "AZURE_STORAGE_CONNECTION_STRING", hide_env_values = true, global = true)]
    pub connection_string: Option<String>,
    /// Blob endpoint URL (Azure Stack, custom domains, emulators), e.g. https://acct.blob.local.azurestack.external
    #[arg(long, env = "AZURE_STORAGE_SERVICE_ENDPOINT", hide_env_values = true, global = true)]
    pub account_url: Option<String>,
    /// Storage account name.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT", hide_env_values = true, global = true)]
    pub account_name: Option<String>,
    /// Storage account key (base64). Prefer the environment variable over the command line.
    #[arg(long, env = "AZURE_STORAGE_KEY", hide_env_values = true, global = true)]
    pub account_key: Option<String>,
    /// SAS token (query string).
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true, global = true)]
    pub sas_token: Option<String>,
    /// Container holding the lock blobs (created if missing).
    #[arg(long, default_value = azmutex::DEFAULT_CONTAINER, global = true)]
    pub container: String,
    /// Keep each lock in a blob named with a short hash prefix (job-1 in 026-job-1), spreading
    /// many similar lock names over the service's partitions. Every client of a lock must use
    /// the same setting: with and without it, one lock name is two different locks.
    #[arg(long, env = "AZMUTEX_SPREAD_NAMES", global = true)]
    pub spread_names: bool,
    /// Trust the certificate(s) in this PEM file (a bundle is fine; repeatable): CAs of a
    /// private PKI, or the server's own self-signed certificate, which is then pinned. System
    /// roots (or SSL_CERT_FILE / SSL_CERT_DIR) stay trusted.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_cert: Vec<PathBuf>,
    /// Send every request through this HTTP proxy (http://[user:password@]host:port); NO_PROXY
    /// still applies. Without it, HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY are honoured
    /// as curl honours them (upper-case HTTP_PROXY too).
    #[arg(long, value_name = "URL", hide_env_values = true, global = true)]
    pub proxy: Option<String>,
    /// The storage service version (x-ms-version) to send, e.g. 2017-11-09. By default
    /// 2025-11-05, stepping down once to 2017-11-09 if the endpoint refuses it (Azure Stack Hub).
    #[arg(
        long,
        value_name = "YYYY-MM-DD",
        env = "AZMUTEX_API_VERSION",
        hide_env_values = true,
        global = true
    )]
    pub api_version: Option<String>,
    /// Give up on an unreachable or failing storage service after this long (more than 0).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = output::parse_timeout, global = true)]
    pub timeout: Duration,
    /// How to authorize: a key or SAS token, or an Entra ID credential. `auto` uses a key or
    /// SAS if one is given, else (with an account name or URL) Entra ID: environment secret,
    /// workload identity, managed identity, Azure CLI, in that order.
    #[arg(
        long,
        env = "AZMUTEX_AUTH",
        hide_env_values = true,
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub auth: auth::AuthArg,
    /// Entra ID application (client) id: a service principal, a workload identity, or a
    /// user-assigned managed identity.
    #[arg(long, env = "AZURE_CLIENT_ID", hide_env_values = true, global = true)]
    pub client_id: Option<String>,
    /// Managed identity: a user-assigned identity's object (principal) id.
    #[arg(long, global = true, conflicts_with = "resource_id")]
    pub object_id: Option<String>,
    /// Managed identity: a user-assigned identity's Azure resource id.
    #[arg(long, global = true)]
    pub resource_id: Option<String>,
    /// Entra ID tenant (directory) id.
    #[arg(long, env = "AZURE_TENANT_ID", hide_env_values = true, global = true)]
    pub tenant_id: Option<String>,
    /// Entra ID authority host, for sovereign clouds (default https://login.microsoftonline.com).
    #[arg(long, env = "AZURE_AUTHORITY_HOST", hide_env_values = true, global = true)]
    pub authority_host: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command while holding the lock (renewed in the background), then release it.
    Run(run::RunArgs),
    /// Acquire the lock and print the lease id (for scripts; no renewal: renew it yourself).
    Acquire(commands::AcquireArgs),
    /// Renew a lease acquired with `azmutex acquire`.
    Renew(commands::LeaseArgs),
    /// Release a lease acquired with `azmutex acquire`.
    Release(commands::ReleaseArgs),
    /// Show the lock's lease state, holder and fencing token.
    Status(commands::StatusArgs),
    /// Break the lock's lease, whoever holds it.
    Break(commands::BreakArgs),
    /// Campaign for leadership of a name; lead by running a command (or until a signal).
    Elect(elect::ElectArgs),
    /// Print the leader of a name now and at every change.
    Observe(observe::ObserveArgs),
    /// Write a shell completion script (bash, zsh or fish) to stdout.
    Completions(docs::CompletionsArgs),
    /// Write the man page (roff) to stdout, or every page into a directory.
    Man(docs::ManArgs),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse().or_else(|e| offline_without_variables().ok_or(e)) {
        Ok(cli) => cli,
        Err(e) => {
            if e.use_stderr() {
                // clap quotes what was typed; a misplaced key or connection string must not
                // come back on the terminal or in a CI log.
                let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
                let vars: Vec<String> = CLAP_VARIABLES
                    .iter()
                    .filter_map(|v| std::env::var_os(v).map(|v| v.to_string_lossy().into_owned()))
                    .collect();
                let text = redact_typed_secrets(&e.render().to_string(), &args, &vars);
                use std::io::Write;
                let _ = write!(std::io::stderr(), "{text}");
                if let Some(hint) = run::usage_hint(&args) {
                    let _ = write!(std::io::stderr(), "{hint}");
                }
                return ExitCode::from(exit::USAGE);
            }
            let _ = e.print();
            return ExitCode::from(0);
        }
    };
    // These need no storage, runtime or logging.
    let offline = match &cli.command {
        Command::Completions(args) => Some(docs::completions(args)),
        Command::Man(args) => Some(docs::man(args)),
        _ => None,
    };
    if let Some(result) = offline {
        return finish(result);
    }
    guard_log_variable();
    logging::init(cli.verbose);
    // The runtime's threads. `run` keeps its renewals on a worker thread of their own: the
    // command's supervision (this thread, in `block_on`) walks `/proc` to signal or count what
    // the command left, synchronously, and on a host with tens of thousands of processes a
    // walk takes a good part of a second; a renewal must never wait for one (the kill deadline
    // is kept by the watchdog, a process of its own, whatever this thread is doing).
    // Two workers where others are served while a lock is held (`elect`, `observe`,
    // `run --metrics`: a flood of scrapers must not queue a renewal either). The one-shot
    // commands send a request or two and exit: everything on this thread, which starts and
    // hands off faster (`status` 0.8 ×).
    let workers = match &cli.command {
        Command::Run(args) if args.metrics.is_none() => Some(1),
        Command::Run(_) | Command::Elect(_) | Command::Observe(_) => Some(2),
        _ => None,
    };
    let mut builder = match workers {
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return finish(Err(Failure::new(
                exit::OTHER,
                format!("cannot start the async runtime: {e}"),
            )));
        }
    };
    let result = runtime.block_on(dispatch(cli));
    let requests: u64 = clients().iter().map(|c| c.requests_sent()).sum();
    tracing::debug!(requests, "HTTP requests sent to storage");
    finish(result)
}

/// The storage clients this process made, for the request count `-vv` prints at the end.
fn clients() -> std::sync::MutexGuard<'static, Vec<azmutex::BlobClient>> {
    static CLIENTS: std::sync::Mutex<Vec<azmutex::BlobClient>> = std::sync::Mutex::new(Vec::new());
    CLIENTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `man` and `completions` need no configuration: a bad value in a variable clap reads
/// (`AZMUTEX_AUTH=managed_identity`) must not stop them. Parses again without those variables
/// when the command line asks for one of them. Runs before any thread is started.
fn offline_without_variables() -> Option<Cli> {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let offline = args
        .iter()
        .take_while(|a| *a != "--")
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "man" || a == "completions");
    if !offline {
        return None;
    }
    for v in CLAP_VARIABLES {
        std::env::remove_var(v);
    }
    Cli::try_parse().ok()
}

/// `AZMUTEX_LOG` holding a secret (pasted into the wrong variable) is reported without its
/// value and ignored: the logging setup would quote (the start of) what it cannot read.
fn guard_log_variable() {
    let Some(value) = std::env::var_os("AZMUTEX_LOG") else {
        return;
    };
    let value = value.to_string_lossy();
    if !azmutex::auth::scrub::looks_like_secret(&value) {
        return;
    }
    say(format_args!(
        "azmutex: ignoring AZMUTEX_LOG ({} characters, not shown: they look like a key or token): expected \
         error|warn|info|debug|trace|off, or azmutex=<level>",
        value.chars().count()
    ));
    // Single-threaded here: no runtime, no logging yet.
    std::env::remove_var("AZMUTEX_LOG");
}

/// The exit code of a command's result, with its message on stderr if it failed.
fn finish(result: Result<u8, Failure>) -> ExitCode {
    let code = match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            say(format_args!("azmutex: {}", f.message));
            ExitCode::from(f.code)
        }
    };
    // Everything is settled (the command is dead, the lease released): give stderr a moment
    // to take the last lines, but never wait on a stderr that is not being read.
    output::flush_stderr(Duration::from_secs(1));
    code
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    // Commands that never talk to storage need no configuration (and print no notice about it).
    match &cli.command {
        Command::Completions(args) => return docs::completions(args),
        Command::Man(args) => return docs::man(args),
        _ => {}
    }
    let (config, development) = storage_config(&cli.conn, cli.quiet)?;
    if development && !development_storage_listens().await {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "no storage configured, and nothing listens on 127.0.0.1:10000 (local development \
                 storage): set AZURE_STORAGE_CONNECTION_STRING, or --account-name with a key, SAS or \
                 Entra ID, or start Azurite (scripts/demo starts one){}",
                unknown_variables_hint()
            ),
        ));
    }
    let ctx = Context {
        config,
        conn: cli.conn,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Run(args) => run::run(&ctx, args).await,
        Command::Acquire(args) => commands::acquire(&ctx, args).await,
        Command::Renew(args) => commands::renew(&ctx, args).await,
        Command::Release(args) => commands::release(&ctx, args).await,
        Command::Status(args) => commands::status(&ctx, args).await,
        Command::Break(args) => commands::break_lease(&ctx, args).await,
        Command::Elect(args) => elect::elect(&ctx, args).await,
        Command::Observe(args) => observe::observe(&ctx, args).await,
        Command::Completions(_) | Command::Man(_) => Ok(0),
    }
}

/// Whether anything accepts connections on the development storage port: with nothing
/// configured and no Azurite running, fail at once instead of after `--timeout` of retries.
async fn development_storage_listens() -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", 10000));
    // Refused at once on loopback; the timeout only guards against a filtered port.
    matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_)))
}

/// Everything a command needs to talk to storage.
pub struct Context {
    pub config: StorageConfig,
    pub conn: Connection,
    pub quiet: bool,
}

impl Context {
    /// A mutex on the configured container. `fencing` and `holder` as the command needs.
    pub fn mutex(&self, fencing: bool, holder: Option<Holder>) -> Result<AzureMutex, Failure> {
        let options = self.client_options()?;
        let mut builder = AzureMutex::builder(self.config.clone(), &self.conn.container)
            .client_options(options)
            .fencing(fencing)
            .spread_names(self.conn.spread_names);
        if let Some(holder) = holder {
            builder = builder.holder(holder);
        }
        let mutex = builder.build().map_err(|e| match &e {
            InvalidInput::Option {
                option: "api_version", ..
            } => option_failure(e, "--api-version"),
            _ => Failure::from(e),
        })?;
        clients().push(mutex.client().clone());
        Ok(mutex)
    }
}

impl Context {
    /// The HTTP client's options from the flags: call timeout, trusted certificates, proxy and
    /// service version.
    pub fn client_options(&self) -> Result<ClientOptions, Failure> {
        client_options(&self.conn)
    }
}

/// The HTTP client's options from the flags (storage and token requests alike).
fn client_options(conn: &Connection) -> Result<ClientOptions, Failure> {
    let mut options = ClientOptions::default();
    options.retry.call_timeout = conn.timeout;
    for path in &conn.ca_cert {
        // Only a regular file of bounded size: a FIFO or device would block before --timeout.
        let pem = azmutex::transport::read_certificate_file(path).map_err(Failure::from)?;
        options.ca_certificates_pem.push(pem);
    }
    if let Some(proxy) = &conn.proxy {
        let mut proxies = Proxies::all(proxy).map_err(|e| option_failure(e, "--proxy"))?;
        proxies.no_proxy = Proxies::from_env().ok().and_then(|p| p.no_proxy);
        options.proxy = ProxyConfig::Explicit(proxies);
    }
    options.api_version = conn.api_version.clone();
    Ok(options)
}

/// An option's error with the flag's name in place of the library's.
fn option_failure(e: InvalidInput, flag: &str) -> Failure {
    let mut f = Failure::from(e);
    for name in ["`proxy`", "`api_version`"] {
        f.message = f.message.replace(name, &format!("`{flag}`"));
    }
    f
}

/// `AZURE_STORAGE_*` variables that are set but read by no Azure tool, as a hint to append to a
/// "nothing configured" message (empty when there are none).
fn unknown_variables_hint() -> String {
    let unknown = StorageConfig::unknown_env_variables();
    if unknown.is_empty() {
        return String::new();
    }
    format!("; set but not read: {}", unknown.join(", "))
}

/// The storage configuration from the flags, which clap has already merged with their
/// environment variables: the same rules as [`StorageConfig::from_vars`], else development
/// storage. A flag or variable that is given but empty is an error, not "nothing configured".
/// The second value says whether it is the development storage fallback (nothing configured).
fn storage_config(conn: &Connection, quiet: bool) -> Result<(StorageConfig, bool), Failure> {
    let choice = auth::choice(conn.auth)?;
    let options = client_options(conn)?;
    let vars = |name: &str| {
        let flag = match name {
            "AZURE_STORAGE_CONNECTION_STRING" => &conn.connection_string,
            "AZURE_STORAGE_ACCOUNT" => &conn.account_name,
            "AZURE_STORAGE_KEY" => &conn.account_key,
            "AZURE_STORAGE_SAS_TOKEN" => &conn.sas_token,
            "AZURE_STORAGE_SERVICE_ENDPOINT" => &conn.account_url,
            _ => &None,
        };
        // clap may drop an empty environment variable; it still counts as configured.
        flag.clone()
            .or_else(|| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    };
    let config =
        StorageConfig::from_vars_with_auth(vars, choice, |choice| auth::entra_credential(conn, &options, choice))
            .map_err(|e| {
                let mut f = Failure::from(e);
                for (var, flag) in [
                    ("AZURE_STORAGE_CONNECTION_STRING", "--connection-string"),
                    ("AZURE_STORAGE_ACCOUNT", "--account-name"),
                    ("AZURE_STORAGE_KEY", "--account-key"),
                    ("AZURE_STORAGE_SAS_TOKEN", "--sas-token"),
                    ("AZURE_STORAGE_SERVICE_ENDPOINT", "--account-url"),
                    ("AZMUTEX_AUTH", "--auth"),
                ] {
                    f.message = f.message.replace(&format!("`{var}`"), &format!("`{flag}`/`{var}`"));
                }
                f
            })?;
    match config {
        Some(config) => Ok((config, false)),
        None => {
            let misspelt = StorageConfig::misspelt_env_variables();
            if !misspelt.is_empty() {
                // A typo in a variable's name must not lock on an emulator that protects nothing.
                return Err(Failure::new(
                    exit::CONFIG,
                    format!(
                        "no storage configured, but {} is set: a misspelt variable? (refused rather than \
                         using local development storage)",
                        misspelt.join(", ")
                    ),
                ));
            }
            let hint = unknown_variables_hint();
            // A misspelt variable is worth saying even with --quiet: it is why nothing was found.
            if !quiet || !hint.is_empty() {
                say(format_args!(
                    "azmutex: no storage configured; using local development storage \
                     (UseDevelopmentStorage=true, Azurite on 127.0.0.1:10000){hint}"
                ));
            }
            Ok((StorageConfig::development(), true))
        }
    }
}
