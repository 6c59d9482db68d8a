//! `smtp2oauth queue`: look at and act on the spool, in the spirit of postqueue/postsuper.
//!
//! Reading (`list`, `show`, `failed`) is always safe: envelopes only ever grow by whole lines and
//! change directory by rename. Changing (`retry`, `delete`, `requeue`) must not race a running
//! relay's deliveries, so when a relay holds the spool's lock the command files a request in
//! `control/` and waits for the relay to carry it out; when none runs, it changes the files
//! itself.
//!
//! Everything printed that a device or an upstream wrote (addresses, EHLO names, headers,
//! replies) goes through [`printable`] or [`address`]: a recipient such as
//! `"\x1b]2;owned\x07"@b.example` must not retitle or clear the admin's terminal.

pub use smtp2oauth_proto::address::printable;
use smtp2oauth_spool::{
    Area, ControlAction, ControlTarget, Event, MessageId, Queued, Spool, SpoolError,
};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// List queued messages: id, account, sender, recipients, size, age, attempts, last error.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, delivery history and headers.
    Show { id: String },
    /// Attempt delivery now.
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Delete a message from the queue or the failed area, for good (`--all`: every queued
    /// message).
    Delete {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// List messages whose delivery failed for good.
    Failed {
        #[arg(long)]
        json: bool,
    },
    /// Move a failed message back into the queue (after fixing the cause).
    Requeue {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(config: Option<&Path>, cmd: QueueCommand) -> ExitCode {
    let cfg = match smtp2oauth_config::parse(config, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let dir = cfg.store.dir.join("spool");
    if !dir.exists() {
        eprintln!(
            "smtp2oauth: no spool at {} (has the relay ever run with this configuration?)",
            dir.display()
        );
        return ExitCode::from(1);
    }
    let spool = match Spool::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("smtp2oauth: cannot open the spool: {e}");
            return ExitCode::from(1);
        }
    };
    match cmd {
        QueueCommand::List { json } => list(&spool, Area::Queue, json).await,
        QueueCommand::Failed { json } => list(&spool, Area::Failed, json).await,
        QueueCommand::Show { id } => show(&spool, &id).await,
        QueueCommand::Retry { id, all } => act(&spool, ControlAction::Retry, target(id, all)).await,
        QueueCommand::Delete { id, all } => {
            act(&spool, ControlAction::Delete, target(id, all)).await
        }
        QueueCommand::Requeue { id, all } => {
            act(&spool, ControlAction::Requeue, target(id, all)).await
        }
    }
}

/// A stored address as the relay writes it upstream (control characters escaped, for texts
/// an older version stored).
fn address(stored: &str) -> String {
    smtp2oauth_proto::address::display_stored(stored)
}

/// Addresses, comma-separated.
fn addresses(stored: &[String]) -> String {
    stored
        .iter()
        .map(|a| address(a))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long the command waits for the running relay's answer.
const RELAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay runs: file the request for it (it carries requests out between deliveries) and
/// report its answer; exit 1 when it could not do what was asked, or did not answer in time.
async fn ask_the_relay(spool: &Spool, action: ControlAction, target: &ControlTarget) -> ExitCode {
    let control = spool.control();
    let ticket = match control.submit(action, target).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("smtp2oauth: cannot file the request: {e}");
            return ExitCode::from(1);
        }
    };
    let answer = match control.wait(&ticket, RELAY_ANSWER_TIMEOUT).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprintln!(
                "{} {target}: the running relay has not answered within {} s; the request stays filed ({}) and is carried out when the relay gets to it",
                action.as_str(),
                RELAY_ANSWER_TIMEOUT.as_secs(),
                ticket.path.display()
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("smtp2oauth: cannot read the relay's answer: {e}");
            return ExitCode::from(1);
        }
    };
    if answer.outcomes.is_empty() {
        println!("{} {target}: nothing to do (no message)", action.as_str());
    }
    for o in &answer.outcomes {
        let words = printable(&o.detail);
        if o.kind.is_success() {
            println!("{} {}: {words}", action.as_str(), o.id);
        } else {
            eprintln!("{} {}: {words}", action.as_str(), o.id);
        }
    }
    if answer.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The messages a command acts on; `Err` holds an id that is not a queue id.
fn target(id: Option<String>, all: bool) -> Option<Result<ControlTarget, String>> {
    match (id, all) {
        (Some(id), false) => Some(MessageId::parse(&id).map(ControlTarget::One).ok_or(id)),
        (None, true) => Some(Ok(ControlTarget::All)),
        _ => None,
    }
}

fn now_ms() -> u64 {
    smtp2oauth_spool::now_ms()
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `2026-12-06 12:10:31 +01:00 (18 s ago)`: local time with its offset, and how long ago or
/// from now.
fn when(ms: u64) -> String {
    smtp2oauth_admin::time::local_ms(ms)
}

async fn load_all(spool: &Spool, area: Area) -> Result<Vec<Queued>, SpoolError> {
    let mut out = Vec::new();
    for id in spool.list(area).await? {
        match spool.read(&id, area).await {
            Ok(q) => out.push(q),
            // Removed between listing and reading (delivered meanwhile): not an error.
            Err(SpoolError::NotFound(_)) => {}
            Err(e) => eprintln!("{id}: {e}"),
        }
    }
    Ok(out)
}

async fn list(spool: &Spool, area: Area, json: bool) -> ExitCode {
    let items = match load_all(spool, area).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("smtp2oauth: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        for q in &items {
            let e = &q.envelope;
            let p = &q.progress;
            println!(
                "{}",
                serde_json::json!({
                    "id": e.id, "account": e.account, "device": e.device, "sender": e.sender,
                    "recipients": e.recipients, "remaining": p.remaining, "size": e.size,
                    "received_at_ms": e.received_at_ms, "attempts": p.attempts,
                    "next_attempt_ms": p.next_attempt_ms, "last_error": p.last_reply, "notice": e.notice,
                })
            );
        }
        return ExitCode::SUCCESS;
    }
    if items.is_empty() {
        println!(
            "{}",
            if area == Area::Queue {
                "The queue is empty."
            } else {
                "No failed messages."
            }
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<16}  {:<12}  {:>9}  {:>7}  {:>3}  SENDER -> RECIPIENTS / LAST ERROR",
        "ID", "ACCOUNT", "SIZE", "AGE", "TRY"
    );
    for q in &items {
        let e = &q.envelope;
        let p = &q.progress;
        let rcpts = if area == Area::Queue {
            &p.remaining
        } else {
            &e.recipients
        };
        println!(
            "{:<16}  {:<12}  {:>9}  {:>7}  {:>3}  {} -> {}{}",
            e.id,
            printable(&e.account),
            e.size,
            age(e.received_at_ms),
            p.attempts,
            address(&e.sender),
            addresses(rcpts),
            if e.notice { "  (failure notice)" } else { "" }
        );
        if let Some(err) = &p.last_reply {
            println!("{:<16}  {}", "", printable(err));
        }
    }
    println!("{} message(s).", items.len());
    ExitCode::SUCCESS
}

async fn show(spool: &Spool, id: &str) -> ExitCode {
    let Some(id) = MessageId::parse(id) else {
        eprintln!("smtp2oauth: no message {id} in the spool");
        return ExitCode::from(1);
    };
    let q = match spool.read(&id, Area::Queue).await {
        Err(SpoolError::NotFound(_)) => spool.read(&id, Area::Failed).await,
        r => r,
    };
    let q = match q {
        Ok(q) => q,
        Err(e) => {
            eprintln!("smtp2oauth: {e}");
            return ExitCode::from(1);
        }
    };
    print_message(&q);
    print_history(&q.events);
    print_headers(&q.data_path);
    ExitCode::SUCCESS
}

/// The envelope and where delivery stands.
fn print_message(q: &smtp2oauth_spool::Queued) {
    let e = &q.envelope;
    let p = &q.progress;
    println!("id:          {}", e.id);
    println!(
        "state:       {}",
        if q.area == Area::Queue {
            "queued"
        } else {
            "failed"
        }
    );
    println!("received:    {}", when(e.received_at_ms));
    println!(
        "device:      {} from {} (helo {}, listener {}, session {})",
        printable(&e.device),
        printable(&e.client_ip),
        printable(&e.helo),
        printable(&e.listener),
        e.session
    );
    println!("account:     {}", printable(&e.account));
    match &e.original_sender {
        Some(orig) => println!(
            "sender:      {} (rewritten from {})",
            address(&e.sender),
            address(orig)
        ),
        None => println!("sender:      {}", address(&e.sender)),
    }
    println!("recipients:  {}", addresses(&e.recipients));
    let or_dash = |list: &[String]| {
        if list.is_empty() {
            "-".to_string()
        } else {
            addresses(list)
        }
    };
    println!("delivered:   {}", or_dash(&p.delivered));
    println!("remaining:   {}", or_dash(&p.remaining));
    for f in &p.failed {
        println!(
            "refused:     {} ({})",
            address(&f.rcpt),
            printable(&f.reply.to_string())
        );
    }
    println!(
        "size:        {} bytes{}",
        e.size,
        if e.eight_bit { ", 8-bit" } else { "" }
    );
    println!("attempts:    {}", p.attempts);
    if let Some(n) = p.next_attempt_ms {
        println!("next:        {}", when(n));
    }
}

/// Every event recorded for the message, oldest first.
fn print_history(events: &[Event]) {
    println!("\nhistory:");
    if events.is_empty() {
        println!("  (no attempt yet)");
    }
    for ev in events {
        match ev {
            Event::Attempt {
                at_ms,
                attempt,
                outcome,
                reply,
                stage,
                ..
            } => println!(
                "  {}  attempt {attempt}: {outcome}{}  {}",
                when(*at_ms),
                stage
                    .as_deref()
                    .map(|s| format!(" at {}", printable(s)))
                    .unwrap_or_default(),
                printable(&reply.to_string())
            ),
            Event::RetryRequested { at_ms } => {
                println!("  {}  retry requested by the admin", when(*at_ms))
            }
            Event::Requeued { at_ms } => println!("  {}  requeued by the admin", when(*at_ms)),
            Event::MovedToFailed { at_ms, reason } => {
                println!("  {}  moved to failed: {}", when(*at_ms), printable(reason))
            }
            Event::NoticeQueued {
                at_ms,
                notice_id,
                to,
                ..
            } => {
                println!(
                    "  {}  failure notice {notice_id} queued to {}",
                    when(*at_ms),
                    address(to)
                )
            }
        }
    }
}

/// The message's header block (from its first 64 KiB).
fn print_headers(data_path: &std::path::Path) {
    println!("\nheaders:");
    match std::fs::File::open(data_path) {
        Ok(f) => {
            use std::io::Read;
            let mut buf = Vec::new();
            let _ = f.take(64 * 1024).read_to_end(&mut buf);
            let headers = smtp2oauth_scheduler::notice::header_block(&buf);
            for line in String::from_utf8_lossy(headers).lines() {
                println!("  {}", printable(line));
            }
        }
        Err(err) => println!("  (cannot read {}: {err})", data_path.display()),
    }
}

async fn act(
    spool: &Spool,
    action: ControlAction,
    target: Option<Result<ControlTarget, String>>,
) -> ExitCode {
    let target = match target {
        Some(Ok(t)) => t,
        Some(Err(id)) => {
            let all = if id.eq_ignore_ascii_case("all") {
                "; to act on every message, spell out --all"
            } else {
                ""
            };
            eprintln!(
                "smtp2oauth: `{}` is not a queue id (16 hex digits, see `smtp2oauth queue list`){all}",
                printable(&id)
            );
            return ExitCode::from(2);
        }
        None => {
            eprintln!("smtp2oauth: give a queue id or --all");
            return ExitCode::from(2);
        }
    };
    if spool.is_locked() {
        return ask_the_relay(spool, action, &target).await;
    }
    let ids = match target {
        ControlTarget::All => {
            let area = if action == ControlAction::Requeue {
                Area::Failed
            } else {
                Area::Queue
            };
            spool.list(area).await.unwrap_or_default()
        }
        ControlTarget::One(id) => vec![id],
    };
    let mut status = ExitCode::SUCCESS;
    for id in ids {
        let r = match action {
            ControlAction::Retry => {
                spool
                    .append_event(&id, Area::Queue, &Event::RetryRequested { at_ms: now_ms() })
                    .await
            }
            ControlAction::Delete => match spool.remove(&id, Area::Queue).await {
                Err(SpoolError::NotFound(_)) => spool.remove(&id, Area::Failed).await,
                r => r,
            },
            ControlAction::Requeue => {
                async {
                    spool
                        .append_event(&id, Area::Failed, &Event::Requeued { at_ms: now_ms() })
                        .await?;
                    spool.move_to(&id, Area::Failed, Area::Queue).await
                }
                .await
            }
        };
        match r {
            Ok(()) => println!(
                "{} {id}: done{}",
                action.as_str(),
                if action == ControlAction::Delete {
                    ""
                } else {
                    " (delivered when the relay next runs)"
                }
            ),
            Err(e) => {
                eprintln!("{} {id}: {e}", action.as_str());
                status = ExitCode::from(1);
            }
        }
    }
    status
}
