//! The `smtp2oauth` binary: command line, wiring of the crates, signals.
//!
//! Everything that is policy lives in the library crates; this crate only reads the
//! configuration, builds the pieces in dependency order, and runs them until told to stop.
//!
//! # Layout
//! - `main.rs`: the command line.
//! - `serve.rs`: `smtp2oauth serve`: loads the configuration, builds the relay, runs it until
//!   its controls say stop; `signals.rs`: those controls from signals (Unix) or console events
//!   (Windows).
//! - `service.rs` (Windows): `service install|uninstall`, and running as a Windows service;
//!   `logfile.rs`: the service's rotating log file.
//! - `wiring.rs`: turning configuration into the relay's parts: routes, token sources, TLS,
//!   listeners, the admin server (shared by `serve`, `check-config` and `send-test`).
//! - `relay.rs`: the built relay, and running it until told to stop (shutdown order).
//! - `reload.rs`: reloading the listeners' certificates on request (SIGHUP, the service's
//!   parameter-change control) or when the files change.
//! - `commands.rs`: `check-config`, `hash-password`, `send-test`, `health`; `send_test.rs`:
//!   the send-test itself (shared with the admin console).
//! - `checks.rs`: what `check-config` and `serve` check beyond validation (loading
//!   credentials and certificates, this build's features, certificate dates).
//! - `queue_cmd.rs`: `queue list|show|retry|delete|failed|requeue`.
//! - `account_cmd.rs`: `account list|status|login|logout` and `keygen`.
//! - `signin.rs`: keeping delegated accounts signed in while the relay runs.
//! - `logging.rs`: log format and filtering.
//! - `status.rs`: what the admin server reports (metrics read at scrape time, readiness).
//! - `state_file.rs`: the live state written to `<store>/state.json` for the CLI.
//! - `output.rs`: printing that ends quietly when the reader stops reading (`| head -1`).

// Every command prints through `output.rs`: these shadow std's macros in the whole crate (they
// are defined before the modules, so the modules see them), so a closed pipe never panics,
// whichever command prints.
macro_rules! println {
    () => { $crate::output::stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*), true) };
}
#[allow(unused_macros)] // so that a later `print!` cannot bypass it either
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*), false) };
}
macro_rules! eprintln {
    () => { $crate::output::stderr(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), true) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), false) };
}

mod account_cmd;
mod checks;
mod commands;
#[cfg(any(windows, test))]
mod logfile;
mod logging;
mod output;
mod queue_cmd;
mod relay;
mod reload;
mod send_test;
mod serve;
#[cfg(windows)]
mod service;
mod signals;
mod signin;
mod state_file;
mod status;
mod wiring;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "smtp2oauth",
    version,
    about = "SMTP relay for devices that cannot do OAuth 2.0: basic-auth SMTP in, XOAUTH2 out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Configuration file (TOML). Default: /etc/smtp2oauth/smtp2oauth.toml (on Windows
    /// %ProgramData%\smtp2oauth\smtp2oauth.toml) if it exists, otherwise the environment
    /// alone. Every key can also be set as SMTP2OAUTH_<TABLE>__<KEY>.
    /// (It may come before or after a sub-command: `queue --config F list`, `queue list --config F`.)
    #[arg(short, long, env = "SMTP2OAUTH_CONFIG", global = true)]
    config: Option<PathBuf>,
}

/// Where the configuration file is read from when none is given.
fn default_config() -> PathBuf {
    if cfg!(windows) {
        smtp2oauth_config::program_data()
            .join("smtp2oauth")
            .join("smtp2oauth.toml")
    } else {
        PathBuf::from("/etc/smtp2oauth/smtp2oauth.toml")
    }
}

impl ConfigArg {
    /// The file to read: the one given, else the default path if it exists, else none
    /// (configuration from the environment alone, as containers often do).
    fn path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let default = default_config();
            default.exists().then_some(default)
        })
    }
}

#[derive(clap::Args, Clone)]
struct LogArgs {
    /// Log format on standard error.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "SMTP2OAUTH_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,smtp2oauth_upstream=debug` (RUST_LOG also works).
    #[arg(long, env = "SMTP2OAUTH_LOG")]
    log: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay in the foreground (logs to standard error; exits on SIGTERM or SIGINT, on
    /// Windows on Ctrl-C or Ctrl-Break).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Check the configuration and report every problem with its key; exits non-zero on problems.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read a password from standard input and print its argon2id hash for `password_hash`.
    HashPassword {
        /// argon2id memory cost in KiB (default 19456 = 19 MiB, OWASP's recommendation).
        #[arg(long, default_value_t = 19456)]
        m_cost: u32,
        /// argon2id passes.
        #[arg(long, default_value_t = 2)]
        t_cost: u32,
        /// argon2id lanes.
        #[arg(long, default_value_t = 1)]
        p_cost: u32,
    },
    /// Inspect and manage the queue (works while the relay runs).
    Queue {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: queue_cmd::QueueCommand,
    },
    /// Sign accounts in (delegated flows) and show their token state, without secrets.
    Account {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: account_cmd::AccountCommand,
    },
    /// Print a new master key (64 hex characters) for SMTP2OAUTH_MASTER_KEY or
    /// [store] master_key_file.
    Keygen,
    /// Ask the running relay's admin server whether it is healthy (exit 0) or not (exit 1).
    /// Used by container health checks.
    Health {
        #[command(flatten)]
        config: ConfigArg,
        /// Ask /readyz (listeners accepting, spool writable; each account's state is listed
        /// too) instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Base URL of the admin server (default: from `[admin] listen`).
        #[arg(long)]
        url: Option<String>,
        /// Print the server's JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Get a token for an account, then send a test message through its route; print each
    /// step's result with its advice (exit 1 when one failed).
    SendTest {
        #[command(flatten)]
        config: ConfigArg,
        /// The account (name of an [[accounts]] entry).
        #[arg(long)]
        account: String,
        /// Recipient of the test message.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Install or remove the Windows service (see docs/windows.md).
    #[cfg(windows)]
    Service {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
}

fn main() -> ExitCode {
    release_large_buffers();
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("smtp2oauth")
            .build()
            .expect("cannot start the async runtime")
    };
    match cli.command {
        Command::Serve { config, log } => {
            logging::init(log.log_format, log.log.as_deref());
            match runtime().block_on(serve::run(config.path())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("smtp2oauth: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig { config } => {
            runtime().block_on(commands::check_config(config.path().as_deref()))
        }
        Command::HashPassword {
            m_cost,
            t_cost,
            p_cost,
        } => commands::hash_password(m_cost, t_cost, p_cost),
        Command::Queue { config, command } => {
            runtime().block_on(queue_cmd::run(config.path().as_deref(), command))
        }
        Command::Account { config, command } => {
            logging::init(LogFormat::Text, Some("warn"));
            runtime().block_on(account_cmd::run(config.path().as_deref(), command))
        }
        Command::Keygen => account_cmd::keygen(),
        Command::Health {
            config,
            ready,
            url,
            json,
        } => commands::health(config.path().as_deref(), url.as_deref(), ready, json),
        Command::SendTest {
            config,
            account,
            to,
            log,
        } => {
            logging::init(log.log_format, Some(log.log.as_deref().unwrap_or("warn")));
            runtime().block_on(commands::send_test(config.path().as_deref(), &account, &to))
        }
        #[cfg(windows)]
        Command::Service { config, command } => service::run(config.path(), command),
    }
}

/// Makes glibc map every allocation of 4 MiB or more on its own and unmap it when freed.
///
/// By default glibc raises its mmap threshold each time a mapped block is freed, so the second
/// 19 MiB argon2 buffer (and every large message buffer after the first) comes from a heap that
/// is never given back: a relay that verified two logins an hour ago would still hold 38 MiB.
/// A fixed threshold keeps memory at rest what the relay is actually using.
// The one unsafe call of the relay: libc has no safe wrapper for mallopt.
#[allow(unsafe_code)]
fn release_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator (no pointer is passed), and it
    // runs first in main, before any other thread exists that could be allocating.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
}
