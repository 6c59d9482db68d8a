//! A reply as the console keeps it: code, enhanced status and text, ready to show and to filter.
//!
//! `proto::Reply` is the wire type; this is its record form, serializable for the API and the
//! state file the CLI reads, and independent of where the reply came from (a device's session,
//! an upstream, a Graph answer turned into a reply).

use serde::{Deserialize, Serialize};
use smtp2oauth_proto::reply::truncate_at_char;
use smtp2oauth_proto::{Reply, ReplyAssembler};
use std::fmt;

/// Longest reply text kept (an upstream may send up to 200 lines of 8 KiB).
pub const MAX_TEXT: usize = 1000;

/// One reply, kept whole enough for an admin to act on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyInfo {
    /// The three-digit code, e.g. `535`.
    pub code: u16,
    /// The enhanced status code, e.g. `5.7.3`, when the reply had one.
    pub status: Option<String>,
    /// The text after the code and status, lines joined with a space.
    pub text: String,
}

impl ReplyInfo {
    /// A reply built from its parts (text cut to [`MAX_TEXT`] bytes at a character boundary).
    pub fn new(code: u16, status: Option<String>, text: &str) -> ReplyInfo {
        ReplyInfo {
            code,
            status,
            text: truncate_at_char(text, MAX_TEXT).to_string(),
        }
    }

    /// True for 4xx and 5xx.
    pub fn is_refusal(&self) -> bool {
        self.code >= 400
    }

    /// A reply kept as one line (`451 4.7.500 Server busy`), as the spool's delivery events
    /// store it. A line that is not a reply (never written by the relay) is kept as the text
    /// of a `554`, the way the spool itself reads such a line.
    pub fn parse_line(line: &str) -> ReplyInfo {
        match ReplyAssembler::new().push_line(line.as_bytes()) {
            Ok(Some(reply)) => ReplyInfo::from(&reply),
            _ => ReplyInfo::new(554, None, line),
        }
    }
}

impl From<&Reply> for ReplyInfo {
    fn from(r: &Reply) -> ReplyInfo {
        ReplyInfo::new(r.code(), r.status().map(|s| s.to_string()), &r.text())
    }
}

impl fmt::Display for ReplyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(s) = &self.status {
            write!(f, " {s}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_code_status_and_text() {
        let r = Reply::with_status(535, (5, 7, 3), "Authentication unsuccessful");
        let i = ReplyInfo::from(&r);
        assert_eq!(i.code, 535);
        assert_eq!(i.status.as_deref(), Some("5.7.3"));
        assert_eq!(i.to_string(), "535 5.7.3 Authentication unsuccessful");
        assert!(i.is_refusal());
    }

    #[test]
    fn a_stored_line_reads_back_as_its_parts() {
        let i = ReplyInfo::parse_line("451 4.7.500 Server busy, try later");
        assert_eq!(
            (i.code, i.status.as_deref(), i.text.as_str()),
            (451, Some("4.7.500"), "Server busy, try later")
        );
        let i = ReplyInfo::parse_line("552 Message too big");
        assert_eq!((i.code, i.status), (552, None));
        let i = ReplyInfo::parse_line("connection reset");
        assert_eq!((i.code, i.text.as_str()), (554, "connection reset"));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT);
        let i = ReplyInfo::new(550, None, &text);
        assert!(i.text.len() <= MAX_TEXT);
        assert!(i.text.chars().all(|c| c == 'é'));
    }
}
