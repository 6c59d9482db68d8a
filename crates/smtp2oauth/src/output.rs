//! Writing to standard output and standard error from commands whose reader may stop reading.
//!
//! `smtp2oauth queue list | head -1` closes the pipe after one line. Rust ignores SIGPIPE, so
//! the next write fails with `BrokenPipe`, and std's `println!` panics on that (exit 101, a
//! backtrace hint). Like other Unix tools, a command whose reader has gone stops quietly with
//! status 0. `main.rs` defines `println!`, `print!`, `eprintln!` and `eprint!` for the whole
//! crate on top of these functions, so every command prints through them, including ones added
//! later.

use std::fmt;
use std::io::{self, Write};

/// Writes to standard output: a closed pipe ends the process quietly with status 0; another
/// failure (a full disk behind a redirection) ends it with the reason and status 1.
pub fn stdout(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        stderr(
            format_args!("smtp2oauth: cannot write to standard output: {e}"),
            true,
        );
        std::process::exit(1);
    }
}

/// Writes to standard error; when that fails there is nowhere left to say so, and the exit
/// status still tells.
pub fn stderr(args: fmt::Arguments<'_>, newline: bool) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| {
        if newline {
            err.write_all(b"\n")
        } else {
            Ok(())
        }
    });
}
