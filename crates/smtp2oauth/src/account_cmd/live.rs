//! What the running relay knows about an account, as `account list` and `account status`
//! print it: its state in words and by name, since when, the last token and delivery results.
//!
//! The CLI is another process, so it reads the state file the relay writes
//! (`state_file.rs`) and says how old it is, or that the relay is not running. Without the
//! file the commands show what the token store alone can tell.

use crate::queue_cmd::printable;
use crate::state_file::{self, StateFile, TokenState};
use smtp2oauth_activity::{AccountActivity, AccountState, Happening};
use smtp2oauth_admin::time::local_ms;
use smtp2oauth_config::Loaded;
use smtp2oauth_spool::Spool;

/// The relay's state file, and whether the relay that wrote it still runs.
pub enum Live {
    /// A running relay wrote it.
    Running(StateFile),
    /// The relay that wrote it has stopped.
    Stopped(StateFile),
    /// The relay has never written one with this store.
    Never,
    /// It cannot be read.
    Unreadable(String),
}

impl Live {
    /// Reads the state file of the configured store.
    pub fn read(cfg: &Loaded) -> Live {
        let dir = &cfg.config.store.dir;
        match state_file::read(dir) {
            Ok(None) => Live::Never,
            Err(e) => Live::Unreadable(format!("{}: {e}", state_file::path(dir).display())),
            Ok(Some(state)) if relay_running(dir) => Live::Running(state),
            Ok(Some(state)) => Live::Stopped(state),
        }
    }

    fn state(&self) -> Option<&StateFile> {
        match self {
            Live::Running(s) | Live::Stopped(s) => Some(s),
            Live::Never | Live::Unreadable(_) => None,
        }
    }

    /// The account's activity, if the file has it.
    pub fn account(&self, name: &str) -> Option<&AccountActivity> {
        self.state()?
            .activity
            .accounts
            .iter()
            .find(|a| a.name == name)
    }

    /// The account's token source, if it has one.
    pub fn token(&self, name: &str) -> Option<&TokenState> {
        self.state()?.tokens.iter().find(|t| t.account == name)
    }

    /// One line on where the state comes from and how old it is.
    pub fn source(&self) -> String {
        match self {
            Live::Running(s) => format!(
                "the running relay (pid {}), written {}",
                s.pid,
                local_ms(s.written_at_ms)
            ),
            Live::Stopped(s) => format!(
                "the relay is not running; state as of its last run, written {}",
                local_ms(s.written_at_ms)
            ),
            Live::Never => {
                "the relay is not running and has never run with this store; start it to see the accounts' states".into()
            }
            Live::Unreadable(e) => format!("the state file cannot be read: {e}"),
        }
    }
}

/// True while a relay holds the spool's lock.
fn relay_running(store_dir: &std::path::Path) -> bool {
    let dir = store_dir.join("spool");
    dir.exists() && Spool::open(&dir).is_ok_and(|s| s.is_locked())
}

/// `degraded (refused by the upstream) since 2026-12-06 10:02:11 +01:00 (5 min ago)`.
pub fn state_words(a: &AccountActivity, now_ms: u64) -> String {
    let c = a.condition.at(now_ms);
    let mut s = format!("{} ({})", c.state.as_str(), c.state.words());
    if let Some(since) = c.since_ms.filter(|_| c.state != AccountState::Ok) {
        s.push_str(&format!(" since {}", local_ms(since)));
    }
    if let (AccountState::Throttled, Some(until)) = (c.state, c.until_ms) {
        s.push_str(&format!(", until {}", local_ms(until)));
    }
    s
}

/// `2026-12-06 10:02:11 +01:00 (5 min ago): 535 5.7.3 Authentication unsuccessful`.
pub fn happening(h: &Happening) -> String {
    let mut s = local_ms(h.at_ms);
    if let Some(r) = &h.reply {
        s.push_str(&format!(": {}", printable(&r.to_string())));
    }
    s
}

/// The last token result: obtained (and until when), or the failure. A token still valid
/// comes first, as on the console's accounts page: mail goes with it even when the last renewal
/// failed, which is said after it.
pub fn token_words(t: &TokenState, now_ms: u64) -> String {
    if t.sign_in_required {
        return "none: a person must sign in".into();
    }
    let valid = t.valid_until_ms.filter(|&until| until > now_ms);
    let mut s = match (t.last_refresh_ms, valid, &t.last_error) {
        (_, None, Some(e)) => return format!("failed: {}", printable(e)),
        (Some(got), Some(until), _) => format!(
            "obtained {}, valid until {}",
            local_ms(got),
            local_ms(until)
        ),
        (None, Some(until), _) => format!("valid until {}", local_ms(until)),
        (Some(got), None, None) => format!("obtained {} (expired since)", local_ms(got)),
        (None, None, None) => "none requested yet (the relay asks when it first delivers)".into(),
    };
    if let Some(e) = &t.last_error {
        s.push_str(&format!("; the last renewal failed: {}", printable(e)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp2oauth_activity::{Condition, ReplyInfo};

    fn account(state: AccountState, since_ms: Option<u64>) -> AccountActivity {
        AccountActivity {
            name: "scanner".into(),
            condition: Condition {
                state,
                since_ms,
                reply: Some(ReplyInfo::new(535, Some("5.7.3".into()), "x")),
                advice: None,
                until_ms: None,
            },
            last_delivery: None,
            last_failure: None,
            consecutive_failures: 0,
        }
    }

    #[test]
    fn a_state_reads_by_name_and_in_words_with_since_when() {
        let now = smtp2oauth_activity::now_ms();
        let s = state_words(&account(AccountState::Degraded, Some(now - 300_000)), now);
        assert!(
            s.starts_with("degraded (refused by the upstream) since "),
            "{s}"
        );
        assert!(s.ends_with("ago)"), "{s}");
        assert_eq!(
            state_words(&account(AccountState::Ok, Some(now)), now),
            "ok (working)"
        );
    }

    #[test]
    fn a_token_still_valid_comes_first_and_a_failed_renewal_after_it() {
        let now = smtp2oauth_activity::now_ms();
        let token = |valid_until_ms: Option<u64>, last_error: Option<&str>| TokenState {
            account: "scanner".into(),
            valid_until_ms,
            last_refresh_ms: Some(now - 600_000),
            last_error: last_error.map(str::to_string),
            requests: 2,
            failures: u64::from(last_error.is_some()),
            sign_in_required: false,
        };
        let s = token_words(
            &token(Some(now + 3_000_000), Some("AADSTS7000215 \u{1b}[31m")),
            now,
        );
        assert!(s.starts_with("obtained "), "{s}");
        assert!(s.contains(", valid until "), "{s}");
        assert!(
            s.ends_with("; the last renewal failed: AADSTS7000215 \\x1b[31m"),
            "{s}"
        );
        let s = token_words(&token(Some(now - 1_000), Some("AADSTS7000215")), now);
        assert_eq!(s, "failed: AADSTS7000215");
        let s = token_words(&token(Some(now + 3_000_000), None), now);
        assert!(!s.contains("failed"), "{s}");
        let s = token_words(&token(Some(now - 1_000), None), now);
        assert!(s.ends_with("(expired since)"), "{s}");
    }

    #[test]
    fn replies_cannot_drive_the_terminal() {
        assert_eq!(
            printable("550 \u{1b}[31mred\r\n"),
            "550 \\x1b[31mred\\x0d\\x0a"
        );
        assert_eq!(printable("plain"), "plain");
    }
}
