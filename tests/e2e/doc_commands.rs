//! Every `smtp2oauth ...` command in the shell examples of README.md and docs/*.md exists: its
//! sub-commands and flags are the binary's. Each is run with `--help` appended, so clap parses
//! every word before it (an unknown sub-command or flag exits 2) and nothing is carried out.
//! (The TOML examples are checked by `crates/config/tests/docs.rs`.)
//!
//! A command is found in a ```` ```sh ````/```` ```bash ```` block (every line) or a
//! ```` ```console ```` block (lines after a `$ ` prompt), after environment assignments,
//! `sudo`, `exec`, `docker exec CONTAINER`, `docker compose exec SERVICE` and
//! `cargo run -p smtp2oauth --`.

use crate::harness::*;
use std::path::PathBuf;
use std::process::Command;

/// One documented invocation: where, and the words after the program.
#[derive(Debug)]
struct Invocation {
    place: String,
    args: Vec<String>,
}

fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The shell lines of the markdown's sh/bash/console blocks, with their line numbers;
/// continued lines (`\` at the end) joined.
fn shell_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut kind: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            kind = match kind {
                None => Some(info.split_whitespace().next().unwrap_or("").to_string()),
                Some(_) => None,
            };
            continue;
        }
        let command = match kind.as_deref() {
            Some("sh" | "bash" | "shell") => trimmed,
            Some("console") => match trimmed.strip_prefix("$ ") {
                Some(c) => c,
                None => continue,
            },
            _ => continue,
        };
        let (start, mut joined) = pending.take().unwrap_or((n + 1, String::new()));
        match command.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(command);
                out.push((start, joined));
            }
        }
    }
    out
}

/// Shell words, split into the commands of a line (`|`, `&&`, `||`, `;`), quotes removed, a
/// comment dropped.
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    cmds.last_mut().unwrap().push(w);
                }
            }
            (None, '|' | '&' | ';') => {
                if let Some(w) = word.take() {
                    cmds.last_mut().unwrap().push(w);
                }
                if matches!(chars.peek(), Some('|' | '&')) {
                    chars.next();
                }
                cmds.push(Vec::new());
            }
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    if let Some(w) = word {
        cmds.last_mut().unwrap().push(w);
    }
    cmds.retain(|c| !c.is_empty());
    cmds
}

/// The arguments given to smtp2oauth by one command, if it runs smtp2oauth.
fn smtp2oauth_args(words: &[String]) -> Option<Vec<String>> {
    let mut w: Vec<&str> = words.iter().map(String::as_str).collect();
    let is_assignment = |s: &str| {
        s.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    // `docker exec [options] CONTAINER` and the like: how many words come before the options.
    let exec_prefix = |w: &[&str]| match w {
        ["docker" | "podman", "exec", ..] => Some(2),
        ["docker", "compose", "exec", ..] => Some(3),
        _ => None,
    };
    loop {
        if w.first()
            .is_some_and(|f| is_assignment(f) || *f == "sudo" || *f == "exec")
        {
            w.remove(0);
        } else if let Some(n) = exec_prefix(&w) {
            let options = w[n..].iter().take_while(|a| a.starts_with('-')).count();
            w.drain(..(n + options + 1).min(w.len()));
        } else {
            break;
        }
    }
    match w.as_slice() {
        ["cargo", "run", rest @ ..] => {
            let ours = rest
                .windows(2)
                .any(|p| p == ["-p", "smtp2oauth"] || p == ["--bin", "smtp2oauth"]);
            let dashes = rest.iter().position(|a| *a == "--")?;
            ours.then(|| rest[dashes + 1..].iter().map(|s| s.to_string()).collect())
        }
        [program, args @ ..] if *program == "smtp2oauth" || program.ends_with("/smtp2oauth") => {
            Some(args.iter().map(|s| s.to_string()).collect())
        }
        _ => None,
    }
}

fn documented() -> Vec<Invocation> {
    let mut found = Vec::new();
    for path in doc_files() {
        let name = path
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, shell) in shell_lines(&text) {
            for words in commands(&shell) {
                if let Some(args) = smtp2oauth_args(&words) {
                    found.push(Invocation {
                        place: format!("{name}:{line}"),
                        args,
                    });
                }
            }
        }
    }
    found
}

#[test]
fn shell_examples_are_read_as_the_shell_would() {
    let words = |s: &str| commands(s);
    assert_eq!(
        words("SMTP2OAUTH_CONFIG=/x.toml smtp2oauth check-config # comment"),
        [vec![
            "SMTP2OAUTH_CONFIG=/x.toml",
            "smtp2oauth",
            "check-config"
        ]]
    );
    assert_eq!(
        words("printf '%s\\n' 'a b' | smtp2oauth hash-password && echo done"),
        [
            vec!["printf", "%s\\n", "a b"],
            vec!["smtp2oauth", "hash-password"],
            vec!["echo", "done"]
        ]
    );
    let args = |s: &str| smtp2oauth_args(&commands(s)[0]);
    assert_eq!(
        args("docker exec -it smtp2oauth smtp2oauth hash-password"),
        Some(vec!["hash-password".to_string()])
    );
    assert_eq!(
        args("sudo smtp2oauth check-config"),
        Some(vec!["check-config".to_string()])
    );
    assert_eq!(
        args("cargo run --release -p smtp2oauth -- serve"),
        Some(vec!["serve".to_string()])
    );
    assert_eq!(args("docker run -d --name smtp2oauth smtp2oauth:1"), None);
    assert_eq!(args("sudo systemctl start smtp2oauth"), None);
}

#[test]
fn every_documented_command_and_flag_exists() {
    let found = documented();
    assert!(
        found.len() >= 20,
        "only {} commands found: {found:?}",
        found.len()
    );
    let mut wrong = Vec::new();
    for inv in &found {
        let out = Command::new(BIN)
            .args(&inv.args)
            .arg("--help")
            .env_remove("SMTP2OAUTH_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("Usage:") {
            wrong.push(format!(
                "{}: smtp2oauth {}\n{}",
                inv.place,
                inv.args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // The check itself: a sub-command or flag that does not exist fails.
    for bad in [vec!["chek-config"], vec!["queue", "list", "--jsn"]] {
        let out = Command::new(BIN).args(&bad).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
