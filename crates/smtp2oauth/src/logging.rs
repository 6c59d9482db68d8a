//! Logging: human-readable lines by default, JSON lines for collectors. To standard error, so
//! `serve` works the same under systemd, Docker and a terminal; the Windows service, which has
//! no standard error, writes the same lines to a rotating file (`logfile.rs`).

use crate::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

pub fn init(format: LogFormat, filter: Option<&str>) {
    install(
        format,
        filter,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
}

/// Logs to `file` (the Windows service).
#[cfg(windows)]
pub fn init_file(
    format: LogFormat,
    filter: Option<&str>,
    file: std::sync::Arc<crate::logfile::LogFile>,
) {
    install(format, filter, file, false);
}

fn install<W>(format: LogFormat, filter: Option<&str>, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("smtp2oauth: bad log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
