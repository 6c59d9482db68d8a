//! The capture route: each message is written to a directory as `<id>.eml`, with its envelope
//! in `<id>.json` beside it.
//!
//! It lets a new user run the whole relay without a Microsoft account and see exactly what a
//! printer sends, and it gives tests a route with no network. Files appear atomically (written
//! under a temporary name, fsynced, renamed), the envelope last, so a reader that sees the
//! `.json` can trust the `.eml`. Captured mail is for the relay's user alone: the directory is
//! created with mode 0700 and the files with 0600, whatever the umask.

use crate::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind};
use smtp2oauth_proto::{DeliveryError, Reply};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Writes each message to a directory instead of delivering it.
pub struct CaptureRoute {
    dir: PathBuf,
}

impl CaptureRoute {
    /// Captures into `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CaptureRoute { dir: dir.into() }
    }

    async fn capture(&self, msg: &Message) -> Result<DeliveryReport, DeliveryError> {
        let local = |e: std::io::Error, what: &str| DeliveryError::Local {
            detail: format!("capture: {what}: {e}"),
        };
        create_private_dir(&self.dir)
            .await
            .map_err(|e| local(e, &format!("cannot create {}", self.dir.display())))?;
        let eml = self.dir.join(format!("{}.eml", msg.id));
        let tmp = self.dir.join(format!(".{}.eml.tmp", msg.id));
        copy_private(&msg.data_path, &tmp)
            .await
            .map_err(|e| local(e, "cannot copy the message"))?;
        tokio::fs::rename(&tmp, &eml)
            .await
            .map_err(|e| local(e, "cannot rename"))?;

        let envelope = serde_json::json!({
            "id": msg.id,
            "account": msg.account,
            "device": msg.device,
            "mail_from": msg.sender,
            "rcpt_to": msg.recipients,
            "size": msg.size,
            "eight_bit": msg.eight_bit,
            "smtputf8": msg.smtputf8,
            "received_at_ms": msg.received_at_ms,
        });
        let json_tmp = self.dir.join(format!(".{}.json.tmp", msg.id));
        let mut f = create_private(&json_tmp)
            .await
            .map_err(|e| local(e, "cannot write the envelope"))?;
        let mut body = serde_json::to_vec_pretty(&envelope).unwrap_or_default();
        body.push(b'\n');
        f.write_all(&body)
            .await
            .map_err(|e| local(e, "cannot write the envelope"))?;
        f.sync_all().await.map_err(|e| local(e, "cannot sync"))?;
        drop(f);
        tokio::fs::rename(&json_tmp, self.dir.join(format!("{}.json", msg.id)))
            .await
            .map_err(|e| local(e, "cannot rename"))?;
        // The names, durable too (on Windows a directory handle needs flags of its own).
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || smtp2oauth_platform::sync_dir(&dir)).await;

        Ok(DeliveryReport {
            reply: Reply::with_status(
                250,
                (2, 0, 0),
                format!(
                    "Captured as {}",
                    eml.file_name().and_then(|n| n.to_str()).unwrap_or("")
                ),
            ),
            accepted: msg.recipients.clone(),
            rejected: Vec::new(),
        })
    }
}

/// `dir` and its missing ancestors, private (mode 0700; a protected ACL on Windows).
async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || smtp2oauth_platform::create_private_dir_all(&dir))
        .await
        .map_err(std::io::Error::other)?
}

/// A new or truncated private file (mode 0600; on Windows the capture directory's ACL).
async fn create_private(p: &Path) -> std::io::Result<tokio::fs::File> {
    let mut options = smtp2oauth_platform::private_file_options();
    options.create(true).truncate(true);
    tokio::fs::OpenOptions::from(options).open(p).await
}

/// Copies `from` into a private file `to` and syncs it (`fs::copy` would copy the source's
/// mode instead).
async fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut source = tokio::fs::File::open(from).await?;
    let mut target = create_private(to).await?;
    tokio::io::copy(&mut source, &mut target).await?;
    target.sync_all().await
}

impl Route for CaptureRoute {
    fn kind(&self) -> RouteKind {
        RouteKind::Capture
    }

    fn target(&self) -> String {
        self.dir.display().to_string()
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        Box::pin(self.capture(message))
    }
}
