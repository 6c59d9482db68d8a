//! Queue ids: 16 lowercase hex digits, sortable by arrival time.
//!
//! The first 11 digits are milliseconds since the epoch, the last 5 a per-process counter that
//! starts at a random point, so ids are unique within a process, sort in arrival order across
//! restarts, and are short enough to read out over the phone.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

/// A queue id. Only [`MessageId::new`] and [`MessageId::parse`] make one, so an id can always
/// be used as a file name inside the spool.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(String);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SEEDED: std::sync::Once = std::sync::Once::new();

impl MessageId {
    /// A fresh id, unique within this process and later than every id it made before.
    pub fn new() -> MessageId {
        SEEDED.call_once(|| {
            let seed = std::process::id() ^ (crate::now_ms() as u32).rotate_left(7);
            COUNTER.store(seed & 0xfffff, Ordering::SeqCst);
        });
        let ms = crate::now_ms() & 0xfff_ffff_ffff;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) & 0xfffff;
        MessageId(format!("{ms:011x}{n:05x}"))
    }

    /// The id spelled `s`, if `s` is one (16 lowercase hex digits).
    pub fn parse(s: &str) -> Option<MessageId> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| MessageId(s.to_string()))
    }

    /// The id as text (also its file name).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was made, in milliseconds since the Unix epoch (its first 11 digits).
    pub fn received_at_ms(&self) -> u64 {
        u64::from_str_radix(&self.0[..11], 16).unwrap_or(0)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MessageId::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a queue id")))
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
        let id = MessageId::new();
        let back: MessageId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back, id);
        assert!(id.received_at_ms().abs_diff(crate::now_ms()) < 60_000);
        assert!(serde_json::from_str::<MessageId>("\"../x\"").is_err());
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
