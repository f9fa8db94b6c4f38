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
        pages.push((man.get_filename(), text));
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
