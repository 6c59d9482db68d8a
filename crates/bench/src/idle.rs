//! Many device sessions held open and idle, to see what each one costs the relay in memory.
//!
//! Why: a site with a few hundred printers, or a scanner that opens a session and then waits for
//! the user to feed the pages, keeps sessions open that send nothing. What matters is the relay's
//! resident memory with all of them open, so this opens them (greeting, EHLO, and AUTH PLAIN
//! when the device logs in), keeps the sockets, and hands them back for the caller to measure
//! and then close.

use crate::load::{Auth, parse_code};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Sessions being opened at the same time (a printer fleet does not connect in one instant,
/// and a burst of 1,000 connects would measure the kernel's accept queue, not the relay).
const OPENING_AT_ONCE: usize = 100;

/// The sessions that are open, and what went wrong with the others.
pub struct IdleSessions {
    pub open: Vec<TcpStream>,
    /// "refused at Auth: 454", "timeout at Greeting", ... with counts.
    pub problems: BTreeMap<String, u64>,
}

impl IdleSessions {
    /// Closes every session with QUIT (not waiting for the replies).
    pub async fn close(self) {
        for mut s in self.open {
            let _ = s.write_all(b"QUIT\r\n").await;
        }
    }
}

/// Opens `n` sessions to `addr`: greeting, EHLO, then AUTH when `auth` is given.
pub async fn open(addr: &str, n: usize, auth: Option<Auth>, timeout: Duration) -> IdleSessions {
    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let auth = Arc::new(auth.map(|a| a.command()));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let gate = gate.clone();
        let auth = auth.clone();
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            tokio::time::timeout(timeout, open_one(&addr, auth.as_deref()))
                .await
                .unwrap_or_else(|_| Err("timeout".into()))
        }));
    }
    let mut out = IdleSessions {
        open: Vec::with_capacity(n),
        problems: BTreeMap::new(),
    };
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => out.open.push(s),
            Ok(Err(why)) => *out.problems.entry(why).or_default() += 1,
            Err(e) => *out.problems.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    out
}

async fn open_one(addr: &str, auth: Option<&[u8]>) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{} at Connect", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = BufReader::new(tcp);
    expect(&mut conn, "Greeting", 2).await?;
    conn.write_all(b"EHLO bench-idle\r\n")
        .await
        .map_err(|e| format!("{} at Ehlo", e.kind()))?;
    expect(&mut conn, "Ehlo", 2).await?;
    if let Some(line) = auth {
        conn.write_all(line)
            .await
            .map_err(|e| format!("{} at Auth", e.kind()))?;
        expect(&mut conn, "Auth", 2).await?;
    }
    // Nothing else is pending (lock-step), so no buffered bytes are lost here.
    Ok(conn.into_inner())
}

/// Reads one (possibly multi-line) reply and checks its class.
async fn expect(conn: &mut BufReader<TcpStream>, stage: &str, class: u16) -> Result<(), String> {
    let mut line = Vec::new();
    loop {
        line.clear();
        match conn.read_until(b'\n', &mut line).await {
            Ok(0) => return Err(format!("connection closed at {stage}")),
            Ok(_) => {}
            Err(e) => return Err(format!("{} at {stage}", e.kind())),
        }
        let code = parse_code(&line).ok_or_else(|| format!("malformed reply at {stage}"))?;
        if line.get(3) == Some(&b'-') {
            continue;
        }
        return if code / 100 == class {
            Ok(())
        } else {
            Err(format!("refused at {stage}: {code}"))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Upstream, UpstreamOptions};

    /// Sessions stay open until closed, and a refused AUTH is counted, not held.
    #[tokio::test]
    async fn holds_sessions_open_and_counts_refusals() {
        let up = Upstream::start(&UpstreamOptions {
            reply_delay: Duration::ZERO,
            max_size: 1 << 20,
            token_lifetime: Duration::from_secs(3600),
            password_login: None,
        })
        .await;
        let addr = up.sink.addr().to_string();
        let held = open(&addr, 5, None, Duration::from_secs(10)).await;
        assert_eq!(held.open.len(), 5);
        assert!(held.problems.is_empty(), "{:?}", held.problems);
        assert_eq!(up.sink.active_connections(), 5);
        // The sink requires STARTTLS before AUTH: 530 at Auth, nothing held.
        let auth = Auth::Plain {
            user: "u".into(),
            password: "p".into(),
        };
        let refused = open(&addr, 2, Some(auth), Duration::from_secs(10)).await;
        assert!(refused.open.is_empty());
        assert_eq!(refused.problems.get("refused at Auth: 530"), Some(&2));
        held.close().await;
    }
}
