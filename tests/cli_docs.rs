//! The built `azmutex` binary's conventions: `--version`, shell completions, man pages, and the
//! log levels of `-v`/`-vv`/`AZMUTEX_LOG`. No storage needed: the log tests talk to a closed
//! loopback port.

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_azmutex");

/// The subcommands a user can type (clap's own `help` aside).
const SUBCOMMANDS: [&str; 10] = [
    "run",
    "elect",
    "observe",
    "acquire",
    "renew",
    "release",
    "status",
    "break",
    "completions",
    "man",
];

fn azmutex(args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout_of(args: &[&str]) -> String {
    let out = azmutex(args);
    assert!(
        out.status.success(),
        "azmutex {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "azmutex {args:?} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_crate_and_the_service_version_sent_by_default() {
    let text = stdout_of(&["--version"]);
    assert_eq!(
        text,
        format!(
            "azmutex {} (Blob service API: x-ms-version {} by default)\n",
            env!("CARGO_PKG_VERSION"),
            azmutex::rest::DEFAULT_API_VERSION
        )
    );
}

#[test]
fn bash_completion_is_valid_bash_and_knows_every_subcommand_and_flag() {
    let script = stdout_of(&["completions", "bash"]);
    // `bash -n` parses without running. bash is this crate's test prerequisite anyway
    // (scripts/test, scripts/setup are bash scripts).
    let mut check = Command::new("bash")
        .args(["-n", "/dev/stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash is needed to check the bash completion script");
    use std::io::Write;
    check.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(check.wait().unwrap().success(), "bash -n refused the completion script");
    assert!(script.contains("complete -F _azmutex"), "not registered for azmutex");
    for word in SUBCOMMANDS
        .iter()
        .chain(&["--connection-string", "--lease-id", "--no-wait", "--json"])
    {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
}

#[test]
fn zsh_and_fish_completions_have_their_shapes_and_every_subcommand() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef azmutex\n"),
        "zsh completion must start with #compdef"
    );
    assert!(zsh.contains("_azmutex() {") && zsh.contains("_azmutex \"$@\""));
    assert_balanced(&zsh, '{', '}');
    for sub in SUBCOMMANDS {
        assert!(zsh.contains(&format!("'{sub}:")), "zsh completion lacks {sub}");
    }
    // Values a shell must not offer as words: completions of typed secrets are not cached.
    assert!(!zsh.contains("AccountKey="));

    let fish = stdout_of(&["completions", "fish"]);
    let commands: Vec<&str> = fish.lines().filter(|l| l.starts_with("complete -c azmutex")).collect();
    assert!(
        commands.len() > 20,
        "fish completion has {} complete commands",
        commands.len()
    );
    for sub in SUBCOMMANDS {
        assert!(
            commands.iter().any(|l| l.contains(&format!("-a \"{sub}\""))),
            "fish completion lacks {sub}"
        );
    }
    // Every line is a command, a comment, a function body or blank: no stray text.
    assert_balanced(&fish.replace("function ", "{").replace("\nend", "\n}"), '{', '}');

    let bad = azmutex(&["completions", "powershell-9"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
    // A key pasted in the wrong place is not quoted back (as for every subcommand).
    let key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    for args in [&["completions", key][..], &["man", "run", key], &["man", key]] {
        let out = azmutex(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("Eby8vdM02xNOcqFlqUwJPLlm"), "the key came back: {text}");
    }
}

fn assert_balanced(text: &str, open: char, close: char) {
    let mut depth = 0i64;
    for c in text.chars() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            assert!(depth >= 0, "unbalanced {close}");
        }
    }
    assert_eq!(depth, 0, "unbalanced {open}{close}");
}

/// Roff requests a man page may use: what clap_mangen emits, all in man(7).
const ROFF_REQUESTS: [&str; 11] = [
    ".TH", ".SH", ".SS", ".TP", ".RS", ".RE", ".PP", ".IP", ".br", ".ie", ".el",
];

fn check_roff(page: &str, name: &str) {
    assert!(page.contains(&format!(".TH {name} 1 ")), "{name}: no title line");
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"] {
        assert!(
            page.contains(&format!("\n.SH {section}\n")),
            "{name}: no {section} section"
        );
    }
    for line in page.lines().filter(|l| l.starts_with('.') || l.starts_with('\'')) {
        assert!(
            ROFF_REQUESTS
                .iter()
                .any(|r| line == *r || line.starts_with(&format!("{r} "))),
            "{name}: unexpected roff request {line:?}"
        );
    }
    // Text lines must not start a request by accident (a '.' or '\'' at the start).
    assert!(
        !page.contains("\n\\fB.") && !page.contains("\n'"),
        "{name}: unescaped leading dot"
    );
}

#[test]
fn man_pages_render_as_roff_with_every_subcommand() {
    let main = stdout_of(&["man"]);
    check_roff(&main, "azmutex");
    for section in ["SUBCOMMANDS", "EXTRA", "VERSION"] {
        assert!(
            main.contains(&format!("\n.SH {section}\n")),
            "azmutex.1: no {section} section"
        );
    }
    assert!(main.contains(env!("CARGO_PKG_VERSION")));
    // The exit codes of --help are in the page too.
    assert!(main.contains("lock busy") && main.contains("Exit codes:"));
    for sub in SUBCOMMANDS {
        assert!(
            main.contains(&format!("azmutex\\-{sub}(1)")),
            "azmutex.1 does not list {sub}"
        );
        let page = stdout_of(&["man", sub]);
        check_roff(&page, &format!("azmutex-{sub}"));
        assert!(
            page.contains(&format!("\\fBazmutex {sub}\\fR")),
            "azmutex-{sub}.1: synopsis"
        );
    }
    let run = stdout_of(&["man", "run"]);
    for flag in ["\\-\\-no\\-wait", "\\-\\-kill\\-grace", "\\-\\-connection\\-string"] {
        assert!(run.contains(flag), "azmutex-run.1 lacks {flag}");
    }

    let dir = std::env::temp_dir().join(format!("azmutex-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    stdout_of(&["man", "--out-dir", dir.to_str().unwrap()]);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<String> = SUBCOMMANDS.iter().map(|s| format!("azmutex-{s}.1")).collect();
    expected.push("azmutex.1".to_string());
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(std::fs::read_to_string(dir.join("azmutex.1")).unwrap(), main);
    std::fs::remove_dir_all(&dir).unwrap();

    let unknown = azmutex(&["man", "frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("the subcommands are: run, acquire"));
}

/// `azmutex status` against a loopback port nobody listens on, with `--timeout 300ms`: the
/// REST client logs a debug line per failed attempt and a warning when it gives up.
fn status_logs(verbose: &[&str], log: Option<&str>) -> String {
    // Port 1: nothing listens there, and no other server can be given it meanwhile.
    let port = 1;
    let connection = format!(
        "AccountName=devstoreaccount1;AccountKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;\
         BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1"
    );
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_STORAGE_CONNECTION_STRING", connection)
        .args(verbose)
        .args(["--timeout", "300ms", "status", "job"])
        .stdin(Stdio::null());
    if let Some(log) = log {
        c.env("AZMUTEX_LOG", log);
    }
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(69), "an unreachable service exits 69");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("azmutex: storage unreachable"), "{stderr}");
    assert!(!stderr.contains("AAAAAAAAAAAAAAAA"), "the key reached stderr: {stderr}");
    stderr
}

fn has(stderr: &str, level: &str, message: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(level) && l.contains(message))
}

#[test]
fn verbosity_flags_choose_the_log_level() {
    let quiet = status_logs(&[], None);
    assert!(
        !has(&quiet, "WARN", "giving up") && !has(&quiet, "DEBUG", "request failed"),
        "{quiet}"
    );

    let info = status_logs(&["-v"], None);
    assert!(has(&info, "WARN", "giving up: call deadline reached"), "{info}");
    assert!(!has(&info, "DEBUG", "request failed"), "{info}");

    let debug = status_logs(&["-vv"], None);
    assert!(
        has(&debug, "WARN", "giving up") && has(&debug, "DEBUG", "request failed"),
        "{debug}"
    );
    // One line per event: time, level, message, fields.
    let line = debug.lines().find(|l| l.contains("request failed")).unwrap();
    let time = line.split_whitespace().next().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{line}"
    );
    assert!(
        line.contains(" op=get-properties ") && line.contains(" attempt=1 "),
        "{line}"
    );
}

#[test]
fn azmutex_log_takes_plain_levels_and_the_azmutex_form() {
    for level in ["debug", "DEBUG", "Trace"] {
        let text = status_logs(&[], Some(level));
        assert!(has(&text, "DEBUG", "request failed"), "AZMUTEX_LOG={level}: {text}");
    }
    let warn = status_logs(&["-vv"], Some("warn"));
    assert!(
        has(&warn, "WARN", "giving up") && !has(&warn, "DEBUG", "request failed"),
        "{warn}"
    );
    let off = status_logs(&["-vv"], Some("off"));
    assert!(!off.lines().any(|l| l.contains("giving up")), "{off}");

    let own = status_logs(&[], Some("azmutex=debug"));
    assert!(has(&own, "DEBUG", "request failed"), "{own}");
    // Other crates' events (hyper's "connecting to") only with a plain level.
    assert!(!own.contains("connecting to"), "{own}");
    assert!(status_logs(&[], Some("trace")).contains("connecting to"));
}

#[test]
fn an_unreadable_azmutex_log_is_reported_and_ignored() {
    for value in ["azmutex=loud", "hyper=debug,azmutex=info", "\u{1b}[31mred"] {
        let text = status_logs(&["-v"], Some(value));
        assert!(
            text.contains("azmutex: ignoring AZMUTEX_LOG (")
                && text.contains("expected error|warn|info|debug|trace|off, or azmutex=<level>"),
            "AZMUTEX_LOG={value:?}: {text}"
        );
        // Never quoted (issue 17): it may be a key pasted into the wrong variable.
        assert!(!text.contains("loud") && !text.contains("hyper=debug"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "an escape sequence reached the terminal: {text:?}"
        );
        // The -v level still applies.
        assert!(has(&text, "WARN", "giving up"), "{text}");
    }
}

#[test]
fn completions_and_man_need_no_storage_configuration() {
    // A storage variable set but empty is an error for commands that talk to storage; these
    // never do, so they neither fail on it nor print the development-storage notice.
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let out = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AZURE_STORAGE_KEY", "")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty());
    }
}
