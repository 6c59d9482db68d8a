//! Recovery after a crash: what an interrupted commit leaves behind is removed, and nothing
//! else. The rules are in the invariants of the crate's documentation; this runs them as one
//! blocking task at start, before any session or delivery.

use crate::{Envelope, MessageId, Spool, SpoolError};
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::Path;

/// What recovery concludes about a queued envelope.
enum Whole {
    Yes,
    /// What an interrupted commit leaves: never acknowledged, removed.
    Torn(String),
    /// Cannot tell: left in place.
    Unknown(String),
}

/// Removes torn envelopes, temporary envelopes and data files without an envelope; returns
/// how many files it removed.
pub(crate) fn clean_orphans(spool: &Spool) -> Result<usize, SpoolError> {
    let inner = &spool.inner;
    let mut removed = 0;
    let mut keep = HashSet::new();
    for entry in std::fs::read_dir(&inner.queue)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // An envelope being written when we stopped: its commit never returned.
            std::fs::remove_file(entry.path())?;
            removed += 1;
            continue;
        }
        let Some(id) = MessageId::parse(name) else {
            continue;
        };
        match whole(spool, &id) {
            Whole::Yes => {}
            Whole::Torn(why) => {
                tracing::warn!(queue_id = %id, reason = %why, "envelope from an interrupted commit removed (never acknowledged)");
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
            Whole::Unknown(why) => {
                // Not what a crash leaves: an acknowledged message may be behind it, so it
                // stays (its data file too) for the admin; delivery reports it.
                tracing::error!(queue_id = %id, reason = %why, "cannot check a queued message; left in place");
                keep.insert(id.to_string());
            }
        }
    }
    for entry in std::fs::read_dir(&inner.data)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let id = name.trim_end_matches(".part");
        if name.ends_with(".part")
            || (!keep.contains(id)
                && !inner.queue.join(id).exists()
                && !inner.failed.join(id).exists())
        {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Checks that a queued envelope was committed whole. Only what an interrupted commit leaves
/// is `Torn`; anything else (an unreadable file, a line that is complete but does not parse)
/// is `Unknown` and never deleted.
fn whole(spool: &Spool, id: &MessageId) -> Whole {
    let text = match std::fs::read(spool.inner.queue.join(id.as_str())) {
        Ok(t) => t,
        Err(e) => return Whole::Unknown(format!("the envelope is unreadable: {e}")),
    };
    let Some(end) = text.iter().position(|&b| b == b'\n') else {
        return Whole::Torn("the envelope is incomplete".into());
    };
    let envelope: Envelope = match serde_json::from_slice(&text[..end]) {
        Ok(e) => e,
        // A torn write that happens to contain a newline (e.g. zeros, then garbage).
        Err(_) if text[..end].contains(&0) => {
            return Whole::Torn("the envelope holds bytes never written".into());
        }
        Err(e) => return Whole::Unknown(format!("the envelope does not parse: {e}")),
    };
    let data = spool.data_path(id);
    if let Some(verdict) = data_length(&data, envelope.size) {
        return verdict;
    }
    // The length can reach the disk before the bytes under it on some filesystems (ext4
    // with data=writeback): a message never attempted has its checksum checked too. One
    // with an event line was handed to delivery, which only happens after its commit.
    let attempted = text.len() > end + 1;
    if attempted {
        return Whole::Yes;
    }
    match crc32c_of_file(&data) {
        Ok(actual) if actual == envelope.crc32c => Whole::Yes,
        Ok(_) => Whole::Torn("the data file's checksum does not match".into()),
        Err(e) => Whole::Unknown(format!("the data file is unreadable: {e}")),
    }
}

/// Judges the data file's length against the envelope's `size`: `None` when they agree.
fn data_length(data: &Path, size: u64) -> Option<Whole> {
    match std::fs::metadata(data) {
        Ok(m) if m.len() < size => Some(Whole::Torn(format!(
            "the data file has {} bytes, the envelope says {size}",
            m.len()
        ))),
        Ok(m) if m.len() > size => Some(Whole::Unknown(format!(
            "the data file has {} bytes, more than the envelope's {size}",
            m.len()
        ))),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Some(Whole::Torn("the data file is missing".into()))
        }
        Err(e) => Some(Whole::Unknown(format!("the data file is unreadable: {e}"))),
    }
}

/// The CRC-32C of a whole file, read in 64 KiB pieces.
fn crc32c_of_file(path: &Path) -> io::Result<u32> {
    let mut f = std::fs::File::open(path)?;
    let mut crc = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(crc),
            Ok(n) => crc = crc32c::crc32c_append(crc, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
