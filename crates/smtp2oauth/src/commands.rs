//! The one-shot commands: `check-config`, `hash-password`, `send-test`.

use crate::queue_cmd::printable;
use crate::{checks, send_test, wiring};
use smtp2oauth_config::{AccountSpec, ConfigError, Loaded};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

/// Reports every problem with where it was set and its key; exit status 1 when there is any.
/// Validation first, then what loading finds in the entries validation found no fault with
/// (the same [`checks::loading`] `serve` runs).
pub async fn check_config(path: Option<&Path>) -> ExitCode {
    let parsed = match smtp2oauth_config::parse_located(path, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut checked = smtp2oauth_config::check(&parsed.config);
    parsed.origins.annotate(&mut checked.problems);
    parsed.origins.annotate(&mut checked.warnings);
    let loaded = Loaded {
        config: parsed.config,
        accounts: checked.accounts,
        warnings: Vec::new(),
        path: path.map(Path::to_path_buf),
        origins: parsed.origins,
    };
    let found = checks::loading(&loaded, &checked.problems).await;
    let problems = [checked.problems, found.problems].concat();
    let warnings = [checked.warnings, found.warnings].concat();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !problems.is_empty() {
        eprint!("{}", ConfigError { problems });
        return ExitCode::from(1);
    }
    let cfg = &loaded.config;
    println!(
        "configuration OK: {} listener(s), {} account(s), {} device(s)",
        cfg.listeners.len(),
        cfg.accounts.len(),
        cfg.devices.len()
    );
    ExitCode::SUCCESS
}

/// Reads a password (without echo on a terminal) and prints its argon2id hash.
pub fn hash_password(m_cost: u32, t_cost: u32, p_cost: u32) -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = match prompt_hidden("Password: ") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("smtp2oauth: cannot read the password: {e}");
                return ExitCode::from(1);
            }
        };
        let again = prompt_hidden("Repeat password: ").unwrap_or_default();
        if first != again {
            eprintln!("smtp2oauth: the passwords differ");
            return ExitCode::from(1);
        }
        first
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("smtp2oauth: cannot read the password: {e}");
            return ExitCode::from(1);
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        eprintln!("smtp2oauth: the password is empty");
        return ExitCode::from(1);
    }
    match smtp2oauth_inbound::hash_password_with(password.as_bytes(), m_cost, t_cost, p_cost) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp2oauth: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prompts on the terminal and reads a line from it with echo turned off.
fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    rpassword::prompt_password(prompt)
}

/// The account's route as the relay would build it, with the stored sign-in if it has one, and
/// the token source of its route (None when the route needs no token).
async fn test_target(loaded: &Loaded, acct: &AccountSpec) -> anyhow::Result<send_test::TestTarget> {
    let cfg = &loaded.config;
    let store = wiring::open_token_store(loaded, false)
        .await?
        .map(|(s, _)| s);
    if acct.delegated().is_some() && store.is_none() {
        anyhow::bail!(
            "account `{}` has not been signed in yet: run `smtp2oauth account login {}`",
            acct.name,
            acct.name
        );
    }
    let mut tokens = wiring::TokenSources::new();
    if let Some(scope) = acct.route.scope() {
        let source = wiring::token_source(cfg, acct, scope, store.as_ref()).await?;
        tokens.insert(acct.name.clone(), source);
    }
    let slots = wiring::GraphSlots::default();
    let route = wiring::route(cfg, acct, &tokens, &slots, store.as_ref()).await?;
    Ok(send_test::TestTarget {
        account: acct.name.clone(),
        mailbox: acct.mailbox.clone(),
        hostname: cfg.hostname(),
        route,
        tokens: tokens.get(&acct.name).cloned(),
    })
}

/// `smtp2oauth send-test`: gets a token, then sends a short message through an account's route,
/// and prints each step's result with its advice; exit 1 when a step failed.
pub async fn send_test(path: Option<&Path>, account: &str, to: &str) -> ExitCode {
    let loaded = match smtp2oauth_config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(acct) = loaded.account(account) else {
        eprintln!("smtp2oauth: no account named `{account}`");
        return ExitCode::from(2);
    };
    let to = match send_test::recipient(to) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("smtp2oauth: {e}");
            return ExitCode::from(2);
        }
    };
    let target = match test_target(&loaded, acct).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("smtp2oauth: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = send_test::run(&target, to).await;
    send_test::print(&report);
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `smtp2oauth health`: GET /healthz (or /readyz) from the admin server; exit 0 on 200. Prints
/// a summary in words, or with `json` the server's JSON as it came.
pub fn health(path: Option<&Path>, url: Option<&str>, ready: bool, json: bool) -> ExitCode {
    let target = match health_target(path, url) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    let url = format!("http://{target}{path}");
    match http_get(&target, path) {
        Ok((code, body)) => {
            if json {
                println!("{}", body.trim());
            } else {
                println!("{}", health_words(&url, ready, code, &body));
            }
            if code == 200 {
                ExitCode::SUCCESS
            } else {
                eprintln!("smtp2oauth: {url} answered {code}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("smtp2oauth: cannot reach the admin server at {url}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `host:port` of the admin server: from `--url`, else from `[admin] listen` (a wildcard
/// address is asked on loopback).
fn health_target(path: Option<&Path>, url: Option<&str>) -> Result<String, ExitCode> {
    if let Some(u) = url {
        return Ok(u
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string());
    }
    let listen = match smtp2oauth_config::parse(path, std::env::vars()) {
        Ok(c) => c.admin.listen,
        Err(e) => {
            eprint!("{e}");
            return Err(ExitCode::from(2));
        }
    };
    if listen.is_empty() {
        eprintln!(
            "smtp2oauth: [admin] listen is empty: the admin server is off, so there is nothing to ask"
        );
        return Err(ExitCode::from(2));
    }
    Ok(match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        _ => listen,
    })
}

/// One HTTP/1.0 GET with deadlines: the status code and the body.
fn http_get(target: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {target}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = Vec::new();
    s.take(1024 * 1024).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The answer in words: alive (and the version), or ready with each check and each account's
/// state; a body that is not the relay's JSON is shown as it came, escaped.
fn health_words(url: &str, ready: bool, code: u16, body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return format!("{url} answered {code}: {}", printable(body.trim()));
    };
    if !ready {
        let version = v["version"].as_str().unwrap_or("?");
        return match code {
            200 => format!("alive: smtp2oauth {version} answers at {url}"),
            _ => format!("NOT alive: {url} answered {code}"),
        };
    }
    let mut out = if v["ready"] == true {
        format!("ready: {url}")
    } else {
        format!("NOT ready: {url} answered {code}")
    };
    for c in v["checks"].as_array().into_iter().flatten() {
        let ok = if c["ok"] == true { "ok" } else { "FAILED" };
        let name = c["name"].as_str().unwrap_or("?");
        let detail = c["detail"].as_str().unwrap_or("");
        out.push_str(&format!("\n  {ok:6}  {name:9}  {}", printable(detail)));
    }
    let accounts = v["accounts"].as_array().cloned().unwrap_or_default();
    if !accounts.is_empty() {
        out.push_str("\naccounts (their state does not make the relay unready):");
    }
    for a in &accounts {
        let name = a["name"].as_str().unwrap_or("?");
        let state = a["state"].as_str().unwrap_or("?");
        let since = match a["since"]["at_ms"].as_u64() {
            Some(ms) if state != "ok" => format!(" since {}", smtp2oauth_admin::time::local_ms(ms)),
            _ => String::new(),
        };
        out.push_str(&format!("\n  {:12}  {state}{since}", printable(name)));
    }
    out
}
