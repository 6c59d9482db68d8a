//! Queue ids: 16 lowercase hex digits, sortable by arrival time.
//!
//! The first 11 digits are milliseconds since the epoch, the last 5 a per-process counter that
//! starts at a random point, so ids are unique within a process, sort in arrival order across
//! restarts, and are short enough to read out over the phone.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(String);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SEEDED: std::sync::Once = std::sync::Once::new();

impl MessageId {
    pub fn new() -> MessageId {
        SEEDED.call_once(|| {
            let seed = std::process::id() ^ (crate::now_ms() as u32).rotate_left(7);
            COUNTER.store(seed & 0xfffff, Ordering::SeqCst);
        });
        let ms = crate::now_ms() & 0xfff_ffff_ffff;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) & 0xfffff;
        MessageId(format!("{ms:011x}{n:05x}"))
    }

    pub fn parse(s: &str) -> Option<MessageId> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| MessageId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_parseable_and_refuse_paths() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = MessageId::new();
            assert!(MessageId::parse(id.as_str()).is_some());
            assert!(seen.insert(id));
        }
        for bad in [
            "",
            "../etc/passwd",
            "0123456789abcdeF",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcde/",
        ] {
            assert!(MessageId::parse(bad).is_none(), "{bad}");
        }
    }
}
