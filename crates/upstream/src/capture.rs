//! The capture route: each message is written to a directory as `<id>.eml`, with its envelope
//! in `<id>.json` beside it.
//!
//! It lets a new user run the whole relay without a Microsoft account and see exactly what a
//! printer sends, and it gives tests a route with no network. Files appear atomically (written
//! under a temporary name, fsynced, renamed), the envelope last, so a reader that sees the
//! `.json` can trust the `.eml`.

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
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| local(e, &format!("cannot create {}", self.dir.display())))?;
        let eml = self.dir.join(format!("{}.eml", msg.id));
        let tmp = self.dir.join(format!(".{}.eml.tmp", msg.id));
        tokio::fs::copy(&msg.data_path, &tmp)
            .await
            .map_err(|e| local(e, "cannot copy the message"))?;
        sync_file(&tmp).await.map_err(|e| local(e, "cannot sync"))?;
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
        let mut f = tokio::fs::File::create(&json_tmp)
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

async fn sync_file(p: &Path) -> std::io::Result<()> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .await?
        .sync_all()
        .await
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
