//! The SMTP conversation both SMTP routes share: greeting, EHLO, STARTTLS and EHLO again, then
//! one mail transaction (MAIL, RCPT and DATA, pipelined when offered, and the body streamed
//! from disk through the dot encoder).
//!
//! Submission (`smtp.rs`) adds AUTH between the two halves; the smart host route
//! (`smarthost.rs`) adds nothing. Every refusal is returned whole, classified by the table in
//! `cause.rs`.

use crate::cause::refused;
use crate::client::Client;
use crate::{DeliveryReport, Message};
use smtp_proto::{
    EXT_8BIT_MIME, EXT_AUTH, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};
use smtp2oauth_proto::address::display_stored;
use smtp2oauth_proto::{Address, Cause, DeliveryError, DotEncoder, Reply, Stage};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// What the server offers, from its EHLO reply.
#[derive(Default, Debug)]
pub(crate) struct Capabilities {
    pub(crate) pipelining: bool,
    pub(crate) starttls: bool,
    pub(crate) eight_bit: bool,
    pub(crate) smtputf8: bool,
    pub(crate) size: Option<u64>,
    /// The SASL mechanisms of the AUTH line (smtp-proto bits); `None` without one.
    pub(crate) auth: Option<u64>,
}

pub(crate) fn capabilities(ehlo: &Reply) -> Capabilities {
    let wire = ehlo.to_wire();
    match EhloResponse::parse(&mut wire.iter()) {
        Ok(r) => Capabilities {
            pipelining: r.has_capability(EXT_PIPELINING),
            starttls: r.has_capability(EXT_START_TLS),
            eight_bit: r.has_capability(EXT_8BIT_MIME),
            smtputf8: r.has_capability(EXT_SMTP_UTF8),
            size: (r.has_capability(EXT_SIZE) && r.size > 0).then_some(r.size as u64),
            auth: r.has_capability(EXT_AUTH).then_some(r.auth_mechanisms),
        },
        Err(e) => {
            debug!(error = %e, "unusual EHLO reply; assuming no extensions");
            Capabilities::default()
        }
    }
}

/// Whether the session is upgraded with STARTTLS after the first EHLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Starttls {
    /// No: the connection is already TLS, or plain text was configured.
    Off,
    /// Yes, and a server that does not offer it is a TLS failure; `setting` names the
    /// configuration that asks for it, for the error.
    Required { setting: &'static str },
    /// When the server offers it; a server that does not, or refuses it temporarily, gets
    /// the message in plain text. A failed handshake is never retried in plain text.
    Opportunistic,
}

/// How to open a session.
pub(crate) struct Opening<'a> {
    pub(crate) helo: &'a str,
    pub(crate) starttls: Starttls,
    pub(crate) tls: &'a Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub(crate) server_name: &'a str,
    /// The account, for log lines.
    pub(crate) account: &'a str,
}

/// Greeting, EHLO and (as configured) STARTTLS and EHLO again: the session is ready for AUTH
/// or MAIL. Returns what the (encrypted) session offers.
pub(crate) async fn open(
    client: &mut Client,
    how: &Opening<'_>,
) -> Result<Capabilities, DeliveryError> {
    let greeting = client.read_reply(Stage::Greeting).await?;
    if greeting.code() != 220 {
        return Err(refused(Stage::Greeting, greeting));
    }
    let caps = ehlo(client, how.helo).await?;
    let setting = match how.starttls {
        Starttls::Off => return Ok(caps),
        Starttls::Required { setting } => Some(setting),
        Starttls::Opportunistic => None,
    };
    if !caps.starttls {
        return match setting {
            Some(setting) => Err(DeliveryError::Tls {
                detail: format!("{} does not offer STARTTLS ({setting})", client.target()),
            }),
            None => {
                info!(account = %how.account, host = %client.target(), "the smart host does not offer STARTTLS; sending in clear text (smarthost_tls = \"opportunistic\")");
                Ok(caps)
            }
        };
    }
    let r = client.command("STARTTLS", Stage::StartTls).await?;
    if r.code() != 220 {
        if setting.is_none() && r.is_transient() {
            warn!(account = %how.account, host = %client.target(), reply = %r, "STARTTLS refused; sending in clear text (smarthost_tls = \"opportunistic\")");
            return Ok(caps);
        }
        return Err(refused(Stage::StartTls, r));
    }
    client.start_tls(how.tls.clone(), how.server_name).await?;
    ehlo(client, how.helo).await
}

/// EHLO (HELO for an old server without ESMTP); the server's capabilities.
pub(crate) async fn ehlo(
    client: &mut Client,
    helo_name: &str,
) -> Result<Capabilities, DeliveryError> {
    let r = client
        .command(&format!("EHLO {helo_name}"), Stage::Ehlo)
        .await?;
    if r.is_positive() {
        return Ok(capabilities(&r));
    }
    if r.is_permanent() {
        // An old server without ESMTP: HELO still lets us authenticate on some.
        let h = client
            .command(&format!("HELO {helo_name}"), Stage::Ehlo)
            .await?;
        if h.is_positive() {
            return Ok(Capabilities::default());
        }
    }
    Err(refused(Stage::Ehlo, r))
}

/// A 421 means the server is closing the connection (Exchange says it when throttling): the
/// session is over, and its words are the failure, not the "connection lost" that follows.
fn closing(reply: Reply, stage: Stage) -> Result<Reply, DeliveryError> {
    if reply.code() == 421 {
        return Err(refused(stage, reply));
    }
    Ok(reply)
}

/// One mail transaction on an open (and, where needed, authenticated) session: MAIL, RCPT
/// and DATA (pipelined when offered), the body streamed from disk, every reply kept.
pub(crate) async fn transaction(
    client: &mut Client,
    caps: &Capabilities,
    msg: &Message,
    data_timeout: Duration,
) -> Result<DeliveryReport, DeliveryError> {
    let mail = mail_command(caps, msg)?;
    let rcpt_paths = msg
        .recipients
        .iter()
        .map(|r| path(r, Stage::Rcpt))
        .collect::<Result<Vec<_>, _>>()?;
    let replies = if caps.pipelining {
        envelope_pipelined(client, &mail, &rcpt_paths).await?
    } else {
        envelope_in_turn(client, &mail, &rcpt_paths).await?
    };
    if !replies.mail.is_positive() {
        return Err(refused(Stage::Mail, replies.mail));
    }
    let (accepted, rejected) = split_recipients(&msg.recipients, replies.rcpt);
    if accepted.is_empty() {
        return Err(all_refused(client, rejected, replies.data.as_ref()).await);
    }
    let data = match replies.data {
        Some(r) => r,
        None => client.command("DATA", Stage::Data).await?,
    };
    if data.code() != 354 {
        return Err(refused(Stage::Data, data));
    }
    stream_body(client, msg).await?;
    let final_reply = client.read_reply_within(Stage::Body, data_timeout).await?;
    if !final_reply.is_positive() {
        return Err(refused(Stage::Body, final_reply));
    }
    Ok(DeliveryReport {
        reply: final_reply,
        accepted,
        rejected,
    })
}

/// `MAIL FROM` with the parameters the server takes, or the refusal of a message larger than
/// the server announced (no need to send it to hear that).
fn mail_command(caps: &Capabilities, msg: &Message) -> Result<String, DeliveryError> {
    if let Some(limit) = caps.size
        && msg.size > limit
    {
        let reply = Reply::with_status(
            552,
            (5, 3, 4),
            format!(
                "Message size {} exceeds the upstream's limit of {limit} bytes",
                msg.size
            ),
        );
        return Err(DeliveryError::Rejected {
            stage: Stage::Mail,
            reply,
            cause: Cause::TooLarge,
        });
    }
    let mut mail = format!("MAIL FROM:{}", path(&msg.sender, Stage::Mail)?);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", msg.size));
    }
    if msg.eight_bit && caps.eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if msg.smtputf8 && caps.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    Ok(mail)
}

/// `<address>` as RFC 5321 writes it: [`Address`] is the one writer of addresses, so a quoted
/// local part stays quoted and no address can carry a parameter of its own. A stored address
/// that cannot be written at all (control characters, kept by an older version) refuses the
/// message for good: no upstream could take it as it is.
pub(crate) fn path(stored: &str, stage: Stage) -> Result<String, DeliveryError> {
    if stored.is_empty() && stage == Stage::Mail {
        return Ok("<>".into());
    }
    Address::from_stored(stored).map(|a| a.path()).map_err(|e| {
        let (status, cause) = match stage {
            Stage::Mail => ((5, 1, 7), Cause::Message),
            _ => ((5, 1, 3), Cause::Recipient),
        };
        let text = format!("<{}>: cannot be sent: {e}", display_stored(stored));
        DeliveryError::Rejected {
            stage,
            reply: Reply::with_status(553, status, text),
            cause,
        }
    })
}

/// The server's replies to the envelope.
struct EnvelopeReplies {
    mail: Reply,
    /// One per recipient, in order (none when MAIL was refused without pipelining).
    rcpt: Vec<Reply>,
    /// The reply to DATA when it was pipelined with the envelope.
    data: Option<Reply>,
}

/// MAIL, every RCPT and DATA in one write (RFC 2920); the replies read in order. `recipients`
/// are paths, already written.
async fn envelope_pipelined(
    client: &mut Client,
    mail: &str,
    recipients: &[String],
) -> Result<EnvelopeReplies, DeliveryError> {
    let mut batch = format!("{mail}\r\n");
    for r in recipients {
        batch.push_str(&format!("RCPT TO:{r}\r\n"));
    }
    batch.push_str("DATA\r\n");
    client.write(batch.as_bytes(), Stage::Mail).await?;
    let mail = closing(client.read_reply(Stage::Mail).await?, Stage::Mail)?;
    let mut rcpt = Vec::with_capacity(recipients.len());
    for _ in recipients {
        rcpt.push(closing(client.read_reply(Stage::Rcpt).await?, Stage::Rcpt)?);
    }
    let data = closing(client.read_reply(Stage::Data).await?, Stage::Data)?;
    Ok(EnvelopeReplies {
        mail,
        rcpt,
        data: Some(data),
    })
}

/// MAIL, then each RCPT (paths, already written), one command at a time; DATA is left to the
/// caller.
async fn envelope_in_turn(
    client: &mut Client,
    mail: &str,
    recipients: &[String],
) -> Result<EnvelopeReplies, DeliveryError> {
    let mail = closing(client.command(mail, Stage::Mail).await?, Stage::Mail)?;
    let mut rcpt = Vec::new();
    if mail.is_positive() {
        for r in recipients {
            let reply = client.command(&format!("RCPT TO:{r}"), Stage::Rcpt).await?;
            rcpt.push(closing(reply, Stage::Rcpt)?);
        }
    }
    Ok(EnvelopeReplies {
        mail,
        rcpt,
        data: None,
    })
}

/// Accepted recipients, and refused ones with their replies.
fn split_recipients(
    recipients: &[String],
    replies: Vec<Reply>,
) -> (Vec<String>, Vec<(String, Reply)>) {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (r, reply) in recipients.iter().zip(replies) {
        if reply.is_positive() {
            accepted.push(r.clone());
        } else {
            rejected.push((r.clone(), reply));
        }
    }
    (accepted, rejected)
}

/// Every recipient was refused: the transaction is ended and the most hopeful refusal
/// returned (if any recipient may succeed later, the message is retried).
async fn all_refused(
    client: &mut Client,
    rejected: Vec<(String, Reply)>,
    data: Option<&Reply>,
) -> DeliveryError {
    let reply = rejected
        .iter()
        .map(|(_, r)| r)
        .find(|r| r.is_transient())
        .or_else(|| rejected.first().map(|(_, r)| r))
        .cloned()
        .unwrap_or_else(|| Reply::with_status(554, (5, 5, 1), "No valid recipients"));
    if data.is_some_and(|d| d.code() == 354) {
        // The server wants a body although no recipient was accepted; give it an empty one.
        if let Err(e) = client.write(b".\r\n", Stage::Data).await {
            return e;
        }
        let _ = client.read_reply(Stage::Data).await;
    }
    refused(Stage::Rcpt, reply)
}

async fn stream_body(client: &mut Client, msg: &Message) -> Result<(), DeliveryError> {
    /// Bytes read from the spool per step: a typical message is one step, a 1 MiB scan four
    /// (fewer, larger steps measured 16 % faster at 1 MiB than 64 KiB ones). A smaller message
    /// gets a buffer of its own size (plus the byte that finds the end), not 256 KiB to zero.
    const CHUNK: usize = 256 * 1024;
    let step = usize::try_from(msg.size)
        .unwrap_or(usize::MAX)
        .saturating_add(1)
        .min(CHUNK);
    let mut enc = DotEncoder::new();
    let mut out = Vec::with_capacity(step + step / 16);
    let mut reader = BodyReader {
        file: None,
        chunk: Vec::with_capacity(step),
        step,
    };
    loop {
        let eof = reader.next(msg).await?;
        out.clear();
        enc.encode(&reader.chunk, &mut out);
        if eof {
            enc.finish(&mut out);
            return client.write(&out, Stage::Body).await;
        }
        client.write_part(&out, Stage::Body).await?;
    }
}

/// Reads a spooled message in steps, one blocking task per step (opening the file with the
/// first): each hand-off to the blocking pool costs more than the read it carries.
struct BodyReader {
    file: Option<std::fs::File>,
    /// The last step's bytes.
    chunk: Vec<u8>,
    step: usize,
}

impl BodyReader {
    /// Reads the next step into `chunk`; true at the end of the file.
    async fn next(&mut self, msg: &Message) -> Result<bool, DeliveryError> {
        let local = |what: &str, e: std::io::Error| DeliveryError::Local {
            detail: format!("cannot {what} {}: {e}", msg.data_path.display()),
        };
        let path = msg.data_path.clone();
        let file = self.file.take();
        let mut chunk = std::mem::take(&mut self.chunk);
        let step = self.step;
        let (f, chunk, eof) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = match file {
                Some(f) => f,
                None => std::fs::File::open(&path).map_err(|e| ("open", e))?,
            };
            chunk.resize(step, 0);
            let mut n = 0;
            let mut eof = false;
            while n < step {
                match f.read(&mut chunk[n..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(r) => n += r,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(("read", e)),
                }
            }
            chunk.truncate(n);
            Ok((f, chunk, eof))
        })
        .await
        .map_err(|e| local("read", std::io::Error::other(e)))?
        .map_err(|(what, e)| local(what, e))?;
        self.file = Some(f);
        self.chunk = chunk;
        Ok(eof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What goes after `MAIL FROM:` and `RCPT TO:`: one path, quoted where RFC 5321 says, never
    /// a parameter; an address that cannot be written refuses the message for good.
    #[test]
    fn paths_are_written_by_the_address_type() {
        let quoted = "\"ceo@fabrikam.example> ENVID=x\"@contoso.com";
        assert_eq!(path(quoted, Stage::Mail).unwrap(), format!("<{quoted}>"));
        // as an older version stored it: smtp-proto's unquoted value
        assert_eq!(
            path(
                "victim@fabrikam.example> NOTIFY=NEVER@b.example",
                Stage::Rcpt
            )
            .unwrap(),
            "<\"victim@fabrikam.example> NOTIFY=NEVER\"@b.example>"
        );
        assert_eq!(path("", Stage::Mail).unwrap(), "<>");
        let e = path("\x1b]2;owned\x07@b.example", Stage::Rcpt).unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.cause(), Cause::Recipient);
        let text = e.reply().to_string();
        assert!(
            text.starts_with("553 5.1.3 <\\x1b]2;owned\\x07@b.example>"),
            "{text}"
        );
        assert!(path("", Stage::Rcpt).is_err());
    }
}
