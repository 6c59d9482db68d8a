//! The one-shot commands: `check-config`, `hash-password`, `send-test`.

use crate::{send_test, wiring};
use smtp2oauth_config::{AccountSpec, Config, Loaded, Problem, RouteSpec};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

/// Reports every problem with its key path; exit status 1 when there is any.
pub async fn check_config(path: Option<&Path>) -> ExitCode {
    let cfg = match smtp2oauth_config::parse(path, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    let checked = smtp2oauth_config::check(&cfg);
    let mut problems = checked.problems;
    let warnings = checked.warnings;
    let loaded = smtp2oauth_config::Loaded {
        config: cfg,
        accounts: checked.accounts,
        warnings: Vec::new(),
        path: path.map(Path::to_path_buf),
    };
    problems.append(&mut deep_checks(&loaded).await);
    let cfg = &loaded.config;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if problems.is_empty() {
        println!(
            "configuration OK: {} listener(s), {} account(s), {} device(s)",
            cfg.listeners.len(),
            cfg.accounts.len(),
            cfg.devices.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("{} configuration problem(s):", problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(1)
    }
}

/// Checks that need more than the schema: hashes parse, credentials load, TLS files load.
/// Accounts are checked from their specs, so an account with problems of its own is checked
/// here once those are fixed.
async fn deep_checks(loaded: &Loaded) -> Vec<Problem> {
    let cfg = &loaded.config;
    let mut p = Vec::new();
    if let Err(errs) = smtp2oauth_inbound::Directory::from_config(cfg) {
        for e in errs {
            if !e.key.ends_with(".account") {
                p.push(Problem::new(e.key, e.message));
            }
        }
    }
    for a in &loaded.accounts {
        account_checks(a, &account_key(cfg, &a.name), &mut p);
    }
    token_store_checks(loaded, &mut p).await;
    listener_tls_checks(cfg, &mut p);
    p
}

/// The key path of the account named `name`.
fn account_key(cfg: &Config, name: &str) -> String {
    let i = cfg.accounts.iter().position(|a| a.name == name);
    format!("accounts.{}", i.unwrap_or_default())
}

/// The account's client certificates and CA file load, and its credential does.
fn account_checks(a: &AccountSpec, key: &str, p: &mut Vec<Problem>) {
    for route in a.routes() {
        if let RouteSpec::Smarthost(s) = route
            && let Some(pair) = &s.client_cert
            && let Err(e) = smtp2oauth_upstream::client_config_with_cert(
                a.ca_file.as_deref(),
                &pair.cert_file,
                &pair.key_file,
            )
        {
            p.push(Problem::new(format!("{key}.tls_client_cert_file"), e));
        }
    }
    let Some(oauth) = &a.oauth else {
        return;
    };
    if let Some(c) = oauth.flow.credential()
        && let Err(e) = wiring::credential(&a.name, c)
    {
        p.push(Problem::new(key, format!("{e:#}")));
    }
    if let Err(e) = smtp2oauth_upstream::client_config(a.ca_file.as_deref()) {
        p.push(Problem::new(format!("{key}.ca_file"), e));
    }
}

/// Stored sign-ins must open with the master key the relay will use (nothing is created).
async fn token_store_checks(loaded: &Loaded, p: &mut Vec<Problem>) {
    match wiring::open_token_store(loaded, false).await {
        Err(e) => p.push(Problem::new("store.master_key_file", format!("{e:#}"))),
        Ok(None) => {}
        Ok(Some((store, _))) => {
            for a in loaded.accounts.iter().filter(|a| a.delegated().is_some()) {
                if let Err(e) = store.load(&a.name).await {
                    p.push(Problem::new(
                        account_key(&loaded.config, &a.name),
                        e.to_string(),
                    ));
                }
            }
        }
    }
}

/// Each listener's TLS as `serve` would load it (client CA, legacy profile); the bare pair
/// only when no listener uses it, so one bad file is reported once.
fn listener_tls_checks(cfg: &Config, p: &mut Vec<Problem>) {
    if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file)
        && c.exists()
        && k.exists()
    {
        let mut checked = false;
        for (i, l) in cfg.listeners.iter().enumerate() {
            if l.tls == smtp2oauth_config::ListenerTls::None {
                continue;
            }
            let policy = smtp2oauth_inbound::TlsPolicy {
                cert: c.clone(),
                key: k.clone(),
                client_ca: l.client_ca_file.clone(),
                profile: l.tls_profile,
            };
            checked = true;
            if let Err(e) = smtp2oauth_inbound::TlsHandle::load(policy) {
                p.push(Problem::new(format!("listeners.{i}"), e.to_string()));
            }
        }
        if !checked && let Err(e) = smtp2oauth_inbound::server_config(c, k) {
            p.push(Problem::new("tls", e.to_string()));
        }
    }
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

/// `smtp2oauth health`: GET /healthz (or /readyz) from the admin server; exit 0 on 200.
pub fn health(path: Option<&Path>, url: Option<&str>, ready: bool) -> ExitCode {
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let target = match url {
        Some(u) => u
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
        None => {
            let listen = match smtp2oauth_config::parse(path, std::env::vars()) {
                Ok(c) => c.admin.listen,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            if listen.is_empty() {
                eprintln!(
                    "smtp2oauth: [admin] listen is empty: the admin server is off, so there is nothing to ask"
                );
                return ExitCode::from(2);
            }
            match listen.parse::<SocketAddr>() {
                // A wildcard address listens on loopback too.
                Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
                _ => listen,
            }
        }
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    let result = (|| -> std::io::Result<(u16, String)> {
        let addr = target
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("cannot resolve {target}")))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
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
    })();
    match result {
        Ok((200, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            println!("{}", body.trim());
            eprintln!("smtp2oauth: http://{target}{path} answered {code}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("smtp2oauth: cannot reach the admin server at http://{target}{path}: {e}");
            ExitCode::from(1)
        }
    }
}
