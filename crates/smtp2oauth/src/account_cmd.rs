//! `smtp2oauth account list|status|login|logout` and `smtp2oauth keygen`.
//!
//! For admins without the accounts page (a headless appliance, no SSH tunnel): `account login`
//! runs a device-code sign-in in the terminal (a URL and a code to enter on any device), or for
//! authorization-code accounts prints the sign-in URL and receives the browser's redirect on the
//! redirect URI's port itself. It works while the relay runs: the relay notices the new sign-in
//! in the token store within seconds and sends the mail that waited for it. `list` and `status`
//! print each account's state as the running relay sees it (from its state file: `live.rs`)
//! and its sign-in, without secrets; `keygen` prints a new master key. What the identity
//! platform or an upstream said (errors, replies, scopes, codes) is printed with its control
//! characters escaped.

mod live;

use crate::queue_cmd::printable;
use crate::wiring;
use clap::Subcommand;
use live::Live;
use smtp2oauth_activity::now_ms;
use smtp2oauth_admin::time::{local, local_relative};
use smtp2oauth_config::{AccountSpec, FlowSpec, Loaded, RouteSpec};
use smtp2oauth_tokens::{
    CallbackParams, MasterKey, PollEvent, Secret, SignInError, SignInManager, StoredToken,
    TokenStore,
};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Every account with its route, flow, state (as the running relay sees it) and sign-in
    /// (no secrets).
    List,
    /// One account in detail: its state, since when and why, the last token and delivery
    /// results, its sign-in (no secrets).
    Status {
        /// The account (name of an [[accounts]] entry).
        name: String,
    },
    /// Sign an account in: device code (prints a URL and a code to enter on any device, then
    /// waits), or authorization code (prints a URL to open, receives the redirect itself).
    Login {
        /// The account (name of an [[accounts]] entry).
        name: String,
    },
    /// Forget an account's stored sign-in; its mail then waits until someone signs in again.
    Logout {
        /// The account (name of an [[accounts]] entry).
        name: String,
    },
}

/// `smtp2oauth keygen`: a new master key on standard output, its key id on standard error.
pub fn keygen() -> ExitCode {
    let key = MasterKey::generate();
    println!("{}", key.to_hex().expose());
    eprintln!(
        "key id {}: keep this key apart from the store (a Docker secret, a password manager); \
         give it to smtp2oauth as SMTP2OAUTH_MASTER_KEY or in the file named by [store] \
         master_key_file",
        key.id()
    );
    ExitCode::SUCCESS
}

pub async fn run(path: Option<&Path>, command: AccountCommand) -> ExitCode {
    let cfg = match smtp2oauth_config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        AccountCommand::List => list(&cfg).await,
        AccountCommand::Status { name } => status(&cfg, &name).await,
        AccountCommand::Login { name } => login(&cfg, &name).await,
        AccountCommand::Logout { name } => logout(&cfg, &name).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smtp2oauth: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn store(cfg: &Loaded, generate: bool) -> anyhow::Result<Option<Arc<TokenStore>>> {
    Ok(wiring::open_token_store(cfg, generate)
        .await?
        .map(|(s, _)| s))
}

/// One line of state for an account.
async fn state_line(account: &AccountSpec, store: Option<&TokenStore>) -> String {
    if matches!(account.route, RouteSpec::Capture { .. }) {
        return "no sign-in needed (capture)".into();
    }
    if account.delegated().is_none() {
        return "app-only: nobody signs in; the relay gets its tokens itself".into();
    }
    let record = match store {
        Some(s) => Some(s.load(&account.name).await),
        None => None,
    };
    match record {
        None | Some(Ok(None)) => "not signed in".into(),
        Some(Err(e)) => format!("token file unreadable: {}", printable(&e.to_string())),
        Some(Ok(Some(t))) if t.sign_in_required => "sign-in needed".into(),
        Some(Ok(Some(t))) => match t.signed_in_at {
            Some(at) => format!("signed in {}", local_relative(at)),
            None => "signed in".into(),
        },
    }
}

/// The account's flow as the list and status show it (`none` when it needs no token).
fn flow_name(account: &AccountSpec) -> &'static str {
    account.flow().map_or("none", |f| f.as_str())
}

async fn list(cfg: &Loaded) -> anyhow::Result<ExitCode> {
    let store = store(cfg, false).await?;
    let live = Live::read(cfg);
    let now = now_ms();
    let width = cfg
        .accounts
        .iter()
        .map(|a| a.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "{:width$}  {:9}  {:18}  {:14}  DETAIL",
        "ACCOUNT", "ROUTE", "FLOW", "STATE"
    );
    for a in &cfg.accounts {
        let (state, mut detail) = match live.account(&a.name) {
            Some(act) => (
                act.condition.at(now).state.as_str(),
                live::state_words(act, now),
            ),
            None => ("unknown", String::new()),
        };
        let sign_in = state_line(a, store.as_deref()).await;
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&sign_in);
        println!(
            "{:width$}  {:9}  {:18}  {:14}  {}",
            a.name,
            a.route.kind().as_str(),
            flow_name(a),
            state,
            detail
        );
    }
    println!("(state from {})", live.source());
    Ok(ExitCode::SUCCESS)
}

/// The account's state and last results as the running relay knows them.
fn print_live(live: &Live, a: &AccountSpec) {
    let now = now_ms();
    match live.account(&a.name) {
        Some(act) => {
            println!("state:        {}", live::state_words(act, now));
            let c = act.condition.at(now);
            if let Some(r) = &c.reply {
                println!("reply:        {}", printable(&r.to_string()));
            }
            if let Some(advice) = &c.advice {
                println!("advice:       {advice}");
            }
            if a.oauth.is_some() {
                let token = live.token(&a.name).map_or_else(
                    || "none requested yet".to_string(),
                    |t| live::token_words(t, now),
                );
                println!("last token:   {token}");
            }
            let none = || "none since the relay started".to_string();
            let delivery = act
                .last_delivery
                .as_ref()
                .map_or_else(none, live::happening);
            println!("last delivery: {delivery}");
            if let Some(f) = &act.last_failure {
                println!("last failure: {}", live::happening(f));
            }
            if act.consecutive_failures > 0 {
                println!("failures in a row: {}", act.consecutive_failures);
            }
        }
        None => println!("state:        unknown"),
    }
    println!("relay:        {}", live.source());
}

async fn status(cfg: &Loaded, name: &str) -> anyhow::Result<ExitCode> {
    let Some(a) = cfg.account(name) else {
        eprintln!("smtp2oauth: no account named `{name}`");
        return Ok(ExitCode::from(2));
    };
    let store = store(cfg, false).await?;
    println!("account:      {}", a.name);
    println!("mailbox:      {}", a.mailbox);
    println!("route:        {}", a.route.kind().as_str());
    println!("flow:         {}", flow_name(a));
    print_live(&Live::read(cfg), a);
    println!("sign-in:      {}", state_line(a, store.as_deref()).await);
    let Some(oauth) = a.delegated() else {
        return Ok(ExitCode::SUCCESS);
    };
    println!("scope:        {}", a.route.scope().unwrap_or_default());
    if let FlowSpec::AuthorizationCode { redirect_uri, .. } = &oauth.flow {
        println!("redirect URI: {redirect_uri}");
    }
    let Some(store) = store else {
        println!("store:        nothing stored yet");
        println!("next step:    smtp2oauth account login {}", a.name);
        return Ok(ExitCode::from(1));
    };
    println!(
        "token file:   {} (encrypted, key id {})",
        store.path(&a.name).display(),
        store.key_id()
    );
    let record: Option<StoredToken> = store.load(&a.name).await?;
    let needs_login = match &record {
        None => true,
        Some(t) => {
            let show = |label: &str, t: Option<SystemTime>| {
                if let Some(t) = t {
                    println!("{label:14}{}", local_relative(t));
                }
            };
            show("signed in:", t.signed_in_at);
            show("last refresh:", t.last_refresh);
            if let Some(scope) = &t.scope {
                println!("granted:      {}", printable(scope));
            }
            if let Some(e) = &t.last_error {
                println!("last error:   {}", printable(e));
            }
            t.sign_in_required || t.refresh_token.is_none()
        }
    };
    if let Some(p) = store.login_prompt(&a.name).await {
        println!(
            "in progress:  open {} and enter {} (until {}, started by {})",
            printable(&p.verification_uri),
            printable(&p.user_code),
            local(SystemTime::UNIX_EPOCH + Duration::from_secs(p.expires_at)),
            printable(&p.started_by)
        );
    }
    if needs_login {
        println!("next step:    smtp2oauth account login {}", a.name);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn logout(cfg: &Loaded, name: &str) -> anyhow::Result<ExitCode> {
    let Some(a) = cfg.account(name).filter(|a| a.delegated().is_some()) else {
        eprintln!("smtp2oauth: no account named `{name}` signs in with a delegated flow");
        return Ok(ExitCode::from(2));
    };
    let store = store(cfg, false).await?;
    let signed_out = match &store {
        Some(store) => store.sign_out(&a.name).await?,
        None => false,
    };
    if signed_out {
        println!(
            "signed out: the stored sign-in of account {} is deleted; its mail waits until someone signs in again",
            a.name
        );
    } else {
        println!("account {} has no stored sign-in", a.name);
    }
    Ok(ExitCode::SUCCESS)
}

async fn login(cfg: &Loaded, name: &str) -> anyhow::Result<ExitCode> {
    let Some(account) = cfg.account(name) else {
        eprintln!("smtp2oauth: no account named `{name}`");
        return Ok(ExitCode::from(2));
    };
    let Some(oauth) = account.delegated() else {
        eprintln!(
            "smtp2oauth: account `{name}` uses flow = \"{}\": nobody signs in; set flow = \"device_code\" or \"authorization_code\" for a delegated sign-in",
            flow_name(account)
        );
        return Ok(ExitCode::from(2));
    };
    let (store, origin) = wiring::open_token_store(cfg, true)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the token store could not be opened"))?;
    if let smtp2oauth_tokens::KeyOrigin::Generated(path) = &origin {
        eprintln!(
            "generated the master key {} (key id {}): back it up apart from the store",
            path.display(),
            store.key_id()
        );
    }
    let targets: Vec<_> = wiring::sign_in_targets(cfg, &store)?
        .into_iter()
        .filter(|t| t.account == account.name)
        .collect();
    let manager = SignInManager::new(targets);
    let result = match &oauth.flow {
        FlowSpec::AuthorizationCode { redirect_uri, .. } => {
            browser_login(&manager, account, redirect_uri).await
        }
        _ => device_login(&manager, account, &store).await,
    };
    match result {
        Ok(()) => {
            println!(
                "signed in: account {} ({}); the refresh token is stored encrypted in {}. A running relay picks it up within seconds.",
                account.name,
                account.mailbox,
                store.path(&account.name).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("smtp2oauth: sign-in failed: {}", printable(&e.to_string()));
            Ok(ExitCode::from(1))
        }
    }
}

async fn device_login(
    manager: &SignInManager,
    account: &AccountSpec,
    store: &TokenStore,
) -> Result<(), SignInError> {
    let who = format!("smtp2oauth account login (pid {})", std::process::id());
    let device = manager.start_device_login(&account.name, &who).await?;
    let minutes = device.expires_in.as_secs() / 60;
    println!(
        "To sign in account {} ({}), open {} in a browser on any device and enter the code: {}",
        account.name,
        account.mailbox,
        printable(&device.verification_uri),
        printable(&device.user_code)
    );
    println!(
        "Sign in as the mailbox's user (or a member of the shared mailbox). The code works for {minutes} minutes. Waiting..."
    );
    let mut on_event = |e: PollEvent<'_>| match e {
        PollEvent::Pending => {}
        PollEvent::SlowDown { interval } => println!(
            "the identity provider asked to poll less often: every {} s now",
            interval.as_secs()
        ),
        PollEvent::Retrying(e) => println!(
            "temporary problem, still waiting: {}",
            printable(&e.to_string())
        ),
    };
    let wait = manager.finish_device_login(&account.name, &device, &mut on_event);
    tokio::select! {
        r = wait => r,
        _ = tokio::signal::ctrl_c() => {
            let _ = store.set_login_prompt(&account.name, None).await;
            Err(SignInError::Provider("interrupted before anyone signed in".into()))
        }
    }
}

/// Authorization code from the terminal: print the URL, then act as the redirect URI.
async fn browser_login(
    manager: &SignInManager,
    account: &AccountSpec,
    redirect: &str,
) -> Result<(), SignInError> {
    let target = RedirectTarget::parse(redirect)?;
    let listener = target.bind().await?;
    let url = manager.begin_authorization(&account.name, "cli")?;
    println!(
        "To sign in account {} ({}), open this URL in a browser on this machine (or one whose localhost reaches it, e.g. through an SSH tunnel to port {}):",
        account.name, account.mailbox, target.port
    );
    println!("{url}");
    println!("Waiting for the sign-in to come back to {redirect} ...");
    let deadline = tokio::time::Instant::now() + smtp2oauth_tokens::STATE_LIFETIME;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
        let Ok(Ok((mut stream, _))) = accepted else {
            if accepted.is_err() {
                return Err(SignInError::Expired);
            }
            continue;
        };
        if let Some(done) = callback(manager, &target.path, &mut stream).await {
            return done;
        }
    }
}

/// Where the redirect URI sends the browser, as this command listens for it.
struct RedirectTarget {
    /// `host[:port]` as written in the URI.
    authority: String,
    /// `host:port` (port 80 when the URI names none).
    with_port: String,
    /// The callback's path.
    path: String,
    /// The port, for the instructions.
    port: String,
}

impl RedirectTarget {
    fn parse(redirect: &str) -> Result<Self, SignInError> {
        let Some(rest) = redirect.strip_prefix("http://") else {
            return Err(SignInError::Provider(format!(
                "the redirect URI {redirect} is not plain http, so this command cannot receive it; sign in on the accounts page behind your HTTPS front end instead"
            )));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = path.split('?').next().unwrap_or("/").to_string();
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let port = with_port.rsplit(':').next().unwrap_or("80").to_string();
        Ok(RedirectTarget {
            authority: authority.to_string(),
            with_port,
            path,
            port,
        })
    }

    /// Listens where the browser will come back; a busy port is most likely the relay's own
    /// accounts page, which can take the sign-in itself.
    async fn bind(&self) -> Result<tokio::net::TcpListener, SignInError> {
        let bind_to = self.with_port.replacen("localhost:", "127.0.0.1:", 1);
        let shown = &self.authority;
        match tokio::net::TcpListener::bind(&bind_to).await {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err(SignInError::Provider(format!(
                    "{shown} is in use, probably by the running relay's accounts page: open http://{shown}/accounts and use Sign in there"
                )))
            }
            Err(e) => Err(SignInError::Provider(format!(
                "cannot listen on {shown} for the redirect: {e}"
            ))),
        }
    }
}

/// Answers one request to the redirect listener: `Some` once the sign-in is done (or failed
/// for good), `None` to keep waiting (a stray request, a stale tab).
async fn callback(
    manager: &SignInManager,
    path: &str,
    stream: &mut tokio::net::TcpStream,
) -> Option<Result<(), SignInError>> {
    let target = read_request_target(stream).await?;
    let (req_path, query) = target.split_once('?').unwrap_or((&target, ""));
    if req_path != path {
        let text = "This is not the sign-in callback.";
        respond(stream, 404, "Not found", text).await;
        return None;
    }
    let q = parse_query(query);
    let params = CallbackParams {
        state: q.get("state").cloned(),
        code: q.get("code").map(|c| Secret::from(c.as_str())),
        error: q.get("error").cloned(),
        error_description: q.get("error_description").cloned(),
    };
    match manager.complete_authorization(params, "cli").await {
        Ok(_) => {
            let text = "Signed in. You can close this window; smtp2oauth stores the sign-in.";
            respond(stream, 200, "Signed in", text).await;
            Some(Ok(()))
        }
        // A stale tab or a stray request: keep waiting for the real one.
        Err(SignInError::UnknownState) => {
            let text = "This response does not belong to the sign-in smtp2oauth is waiting for.";
            respond(stream, 400, "Not this sign-in", text).await;
            None
        }
        Err(e) => {
            let text = format!("The sign-in did not complete: {e}");
            respond(stream, 400, "Sign-in failed", &text).await;
            Some(Err(e))
        }
    }
}

/// The request target of a GET, read with bounds (16 KiB, 10 s).
async fn read_request_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    })
    .await;
    read.ok()??;
    let line = String::from_utf8_lossy(&buf);
    let mut words = line.lines().next()?.split(' ');
    (words.next()? == "GET").then_some(())?;
    words.next().map(str::to_owned)
}

async fn respond(stream: &mut tokio::net::TcpStream, code: u16, title: &str, text: &str) {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1><p>{x}</p></body></html>",
        t = smtp2oauth_admin::accounts::esc(title),
        x = smtp2oauth_admin::accounts::esc(text)
    );
    let head = format!(
        "HTTP/1.1 {code} {title}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `application/x-www-form-urlencoded` query parsing ('+' is a space, %XX escapes).
fn parse_query(query: &str) -> std::collections::HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_query;

    #[test]
    fn query_decoding() {
        let q = parse_query("code=a%2Bb+c&state=x%3D%3D&e=%&f=%4&g=%zz");
        assert_eq!(q["code"], "a+b c");
        assert_eq!(q["state"], "x==");
        assert_eq!(q["e"], "%");
        assert_eq!(q["f"], "%4");
        assert_eq!(q["g"], "%zz");
    }
}
