//! `azmutex completions` and `azmutex man`: shell completion scripts and man pages, generated
//! from the same clap definitions that parse the command line, so they cannot drift from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, ValueEnum};

use super::{exit, Cli, Failure};

/// The shells `azmutex completions` writes scripts for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// Bash: `source <(azmutex completions bash)`, or save it in bash-completion's directory.
    Bash,
    /// Zsh: save it as `_azmutex` in a directory on `$fpath`.
    Zsh,
    /// Fish: save it as `~/.config/fish/completions/azmutex.fish`.
    Fish,
}

/// `azmutex completions <SHELL>`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (to stdout).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `azmutex man [SUBCOMMAND] [--out-dir DIR]`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// The subcommand whose page to write (azmutex-SUBCOMMAND(1)); azmutex(1) if none.
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
    /// Write every page (azmutex.1 and azmutex-SUBCOMMAND.1) into this directory instead.
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub out_dir: Option<PathBuf>,
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "azmutex", &mut out),
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "azmutex", &mut out),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "azmutex", &mut out),
    }
    out
}

/// Every man page: `(file name, roff text)`, azmutex.1 first, then one per subcommand.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut pages = Vec::new();
    let subcommands = cmd.get_subcommands().filter(|s| s.get_name() != "help").cloned();
    for page in std::iter::once(cmd.clone()).chain(subcommands) {
        let man = clap_mangen::Man::new(page)
            .source(format!("azmutex {}", env!("CARGO_PKG_VERSION")))
            .manual("User Commands");
        let mut text = Vec::new();
        man.render(&mut text)?;
        let name = man.get_filename();
        text.extend_from_slice(extra_sections(&name).as_bytes());
        pages.push((name, text));
    }
    Ok(pages)
}

/// Runs `azmutex completions`.
pub fn completions(args: &CompletionsArgs) -> Result<u8, Failure> {
    write_stdout(&completion_script(args.shell))
}

/// Runs `azmutex man`.
pub fn man(args: &ManArgs) -> Result<u8, Failure> {
    let pages = man_pages().map_err(|e| Failure::new(exit::OTHER, format!("cannot render the man pages: {e}")))?;
    if let Some(dir) = &args.out_dir {
        for (name, text) in &pages {
            write_file(&dir.join(name), text)?;
        }
        return Ok(0);
    }
    let wanted = match &args.subcommand {
        None => "azmutex.1".to_string(),
        Some(sub) => format!("azmutex-{sub}.1"),
    };
    match pages.iter().find(|(name, _)| *name == wanted) {
        Some((_, text)) => write_stdout(text),
        // What was typed is not quoted back: it may be a misplaced secret.
        None => Err(Failure::new(
            exit::USAGE,
            format!(
                "no such subcommand for `azmutex man`; the subcommands are: {}",
                Cli::command()
                    .get_subcommands()
                    .map(|s| s.get_name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<u8, Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(0),
        // A closed pipe (`| head`) is the reader's choice, not a failure worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Failure::new(exit::OTHER, format!("cannot write to stdout: {e}"))),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes).map_err(|e| Failure::new(exit::OTHER, format!("cannot write {}: {e}", path.display())))
}

/// ENVIRONMENT, EXIT STATUS and EXAMPLES for a man page (roff), after clap's own sections.
fn extra_sections(page: &str) -> String {
    let mut out = String::new();
    let mut section = |title: &str, items: &[(&str, &str)]| {
        out.push_str(&format!(".SH \"{title}\"\n"));
        for (term, text) in items {
            out.push_str(&format!(".TP\n{}\n{}\n", roff_escape(term), roff_escape(text)));
        }
    };
    let storage_env: &[(&str, &str)] = &[
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            "The storage account's connection string (--connection-string).",
        ),
        (
            "AZURE_STORAGE_ACCOUNT",
            "The account name (--account-name); with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or else Entra ID.",
        ),
        (
            "AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN",
            "An account key or a SAS token (--account-key, --sas-token).",
        ),
        (
            "AZURE_STORAGE_SERVICE_ENDPOINT",
            "The Blob endpoint URL (--account-url).",
        ),
        (
            "AZMUTEX_AUTH",
            "How to authorize (--auth): auto, key, sas, client-secret, workload-identity, managed-identity, azure-cli.",
        ),
        (
            "AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST",
            "Entra ID, as the Azure SDKs read them.",
        ),
        ("AZMUTEX_API_VERSION", "Pin the Blob service version (--api-version)."),
        (
            "AZMUTEX_SPREAD_NAMES",
            "true: keep locks in blobs named with a short hash prefix (--spread-names).",
        ),
        (
            "HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY",
            "Proxies, unless --proxy is given.",
        ),
        (
            "AZMUTEX_LOG",
            "Log level on stderr: error, warn, info, debug, trace, off, or azmutex=<level>.",
        ),
    ];
    let exit_status: &[(&str, &str)] = &[
        (
            "0",
            "Success (run: the command's own exit code; 128+N if it was killed by signal N).",
        ),
        (
            "75",
            "The lock is busy, or the wait timed out (run: --conflict-exit-code).",
        ),
        (
            "70",
            "The lock was lost while the command ran, or a release could not confirm that it was ours.",
        ),
        ("69", "Storage unreachable after retries."),
        ("77", "Authentication or permission refused."),
        ("78", "Invalid configuration, or a TLS certificate problem."),
        ("126, 127", "run: the command cannot be executed, or was not found."),
        ("2", "Usage error."),
    ];
    match page {
        "azmutex-run.1" => {
            section(
                "ENVIRONMENT",
                &[
                    ("AZMUTEX_LOCK", "Given to the command: the lock's name."),
                    ("AZMUTEX_LEASE_ID", "Given to the command: the lease id."),
                    ("AZMUTEX_FENCING_TOKEN", "Given to the command: a number larger than any earlier holder's, for resources that refuse stale writers."),
                    ("AZMUTEX_SLOT", "With --slots: the slot's number (0 to N-1); the fencing token is then that slot's own."),
                ],
            );
            section("EXIT STATUS", exit_status);
            section(
                "EXAMPLES",
                &[
                    (
                        "azmutex run nightly-report -- ./make-report.sh",
                        "Wait for the lock, run the report, release.",
                    ),
                    (
                        "azmutex run deploy --wait 10m --lease 60 -- ./deploy.sh",
                        "Wait at most ten minutes; renew a 60 s lease every 20 s.",
                    ),
                    (
                        "azmutex run backup --no-wait -- ./backup.sh",
                        "Exit 75 at once if another backup holds the lock.",
                    ),
                    (
                        "azmutex run test-db --slots 3 -- ./integration-tests.sh",
                        "A semaphore: at most 3 of these run at once, each on its own slot.",
                    ),
                ],
            );
        }
        "azmutex-elect.1" => {
            section(
                "ENVIRONMENT",
                &[
                    ("AZMUTEX_LOCK", "Given to the command: the name."),
                    ("AZMUTEX_EPOCH", "Given to the command: the term's epoch, larger than any earlier term's (the fencing token), for resources that refuse a deposed leader."),
                    ("AZMUTEX_LEASE_ID", "Given to the command: the lease id."),
                ],
            );
            section("EXIT STATUS", exit_status);
            section(
                "EXAMPLES",
                &[
                    (
                        "azmutex elect scheduler --value \"$(hostname):8080\" -- ./scheduler",
                        "Lead by running the scheduler; campaign again after a loss.",
                    ),
                    (
                        "azmutex elect scheduler --once -- ./scheduler",
                        "Exit 70 when leadership is lost.",
                    ),
                    (
                        "azmutex observe scheduler --json",
                        "Who leads, now and at every change.",
                    ),
                ],
            );
        }
        "azmutex.1" => {
            section("ENVIRONMENT", storage_env);
            section("EXIT STATUS", exit_status);
            section(
                "EXAMPLES",
                &[
                    (
                        "azmutex run nightly-report -- ./make-report.sh",
                        "Run a command while holding the lock.",
                    ),
                    (
                        "id=$(azmutex acquire job --lease 60); azmutex release job --lease-id \"$id\"",
                        "Manage a lease from a script.",
                    ),
                    (
                        "azmutex status job --json",
                        "Who holds the lock, and its fencing token.",
                    ),
                ],
            );
        }
        _ => {
            section("ENVIRONMENT", storage_env);
            section("EXIT STATUS", exit_status);
        }
    }
    out
}

/// Text for a roff line: backslashes and leading dots or quotes made literal, dashes as `\-`.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
