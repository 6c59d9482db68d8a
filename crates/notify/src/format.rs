//! What a webhook request looks like for each receiver: our JSON, Microsoft Teams (a workflow
//! webhook taking an Adaptive Card), Slack (an incoming webhook), ntfy (a topic URL).
//!
//! Pure: an event in, a request body and headers out, so each format is tested without a
//! network.

use crate::event::Event;
use serde_json::json;
use smtp2oauth_activity::{AlertKind, Level};

/// `[notify] webhook_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The [`Event`] as JSON.
    #[default]
    Json,
    /// A Microsoft Teams workflow ("Post to a channel when a webhook request is received"):
    /// an Adaptive Card in a `message` envelope.
    Teams,
    /// A Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// An ntfy topic URL: the text as the body, title, priority and tags as headers.
    Ntfy,
}

impl WebhookFormat {
    /// Parses the configuration value.
    pub fn parse(s: &str) -> Option<WebhookFormat> {
        match s {
            "json" => Some(WebhookFormat::Json),
            "teams" => Some(WebhookFormat::Teams),
            "slack" => Some(WebhookFormat::Slack),
            "ntfy" => Some(WebhookFormat::Ntfy),
            _ => None,
        }
    }
}

/// One webhook request's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub bytes: Vec<u8>,
}

/// The request for `event` in `format`.
pub fn render(format: WebhookFormat, event: &Event) -> Body {
    match format {
        WebhookFormat::Json => json_body(serde_json::to_value(event).unwrap_or_default()),
        WebhookFormat::Teams => json_body(teams(event)),
        WebhookFormat::Slack => json_body(json!({ "text": slack_text(event) })),
        WebhookFormat::Ntfy => ntfy(event),
    }
}

fn json_body(v: serde_json::Value) -> Body {
    Body {
        content_type: "application/json",
        headers: Vec::new(),
        bytes: v.to_string().into_bytes(),
    }
}

/// The lines every human-readable format shows.
fn lines(event: &Event) -> Vec<String> {
    let mut v = vec![event.summary.clone()];
    if !event.advice.is_empty() {
        v.push(format!("What to do: {}", event.advice));
    }
    if let Some(since) = &event.since {
        v.push(format!("Since: {since}"));
    }
    v.push(format!("More: docs/{}", event.doc));
    v
}

fn teams(event: &Event) -> serde_json::Value {
    let mut body = vec![json!({
        "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
        "text": event.title(),
        "color": match (event.kind, event.level) {
            (AlertKind::Cleared, _) => "Good",
            (_, Level::Error) => "Attention",
            (_, Level::Warning) => "Warning",
        },
    })];
    body.extend(
        lines(event)
            .into_iter()
            .map(|l| json!({ "type": "TextBlock", "wrap": true, "text": l })),
    );
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

fn slack_text(event: &Event) -> String {
    // Slack's mrkdwn treats &, < and > specially; escape them in text we did not write.
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = format!("*{}*", esc(&event.title()));
    for l in lines(event) {
        out.push('\n');
        out.push_str(&esc(&l));
    }
    out
}

fn ntfy(event: &Event) -> Body {
    let priority = match (event.kind, event.level) {
        (AlertKind::Cleared, _) => "default",
        (_, Level::Error) => "high",
        (_, Level::Warning) => "default",
    };
    let tags = match (event.kind, event.level) {
        (AlertKind::Cleared, _) => "white_check_mark",
        (_, Level::Error) => "rotating_light",
        (_, Level::Warning) => "warning",
    };
    Body {
        content_type: "text/plain; charset=utf-8",
        headers: vec![
            // Header values must be visible ASCII; the body carries the full text.
            ("Title", ascii_header(&event.title())),
            ("Priority", priority.into()),
            ("Tags", tags.into()),
        ],
        bytes: lines(event).join("\n").into_bytes(),
    }
}

fn ascii_header(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp2oauth_activity::Subject;

    fn event() -> Event {
        Event {
            event: "account_degraded".into(),
            kind: AlertKind::Raised,
            level: Level::Error,
            relay: "relay.contoso.com".into(),
            at: "2026-12-06T10:02:00Z".into(),
            subject: Subject::Account("scanner".into()),
            summary: "Account scanner: refused <535 5.7.3>".into(),
            advice: "Grant SMTP.SendAsApp & wait".into(),
            doc: "troubleshooting.md#account-degraded".into(),
            since: Some("2026-12-06T10:02:00Z".into()),
            message: None,
        }
    }

    #[test]
    fn json_is_the_event() {
        let b = render(WebhookFormat::Json, &event());
        assert_eq!(b.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(v["event"], "account_degraded");
        assert_eq!(v["subject"]["name"], "scanner");
    }

    #[test]
    fn teams_is_an_adaptive_card() {
        let b = render(WebhookFormat::Teams, &event());
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(v["type"], "message");
        let card = &v["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        let texts: Vec<&str> = card["content"]["body"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["text"].as_str().unwrap())
            .collect();
        assert!(texts[0].contains("account_degraded"));
        assert!(texts.iter().any(|t| t.starts_with("What to do: Grant")));
    }

    #[test]
    fn slack_escapes_its_markup() {
        let b = render(WebhookFormat::Slack, &event());
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("&lt;535 5.7.3&gt;"), "{text}");
        assert!(text.contains("SMTP.SendAsApp &amp; wait"), "{text}");
    }

    #[test]
    fn ntfy_uses_headers_and_plain_text() {
        let mut e = event();
        e.relay = "relais-é".into();
        let b = render(WebhookFormat::Ntfy, &e);
        assert!(b.content_type.starts_with("text/plain"));
        let title = &b.headers.iter().find(|(k, _)| *k == "Title").unwrap().1;
        assert!(title.is_ascii() && title.contains("relais-?"), "{title}");
        assert!(b.headers.contains(&("Priority", "high".into())));
        let text = String::from_utf8(b.bytes).unwrap();
        assert!(text.starts_with("Account scanner"));
    }

    #[test]
    fn formats_parse() {
        for (s, f) in [
            ("json", WebhookFormat::Json),
            ("teams", WebhookFormat::Teams),
            ("slack", WebhookFormat::Slack),
            ("ntfy", WebhookFormat::Ntfy),
        ] {
            assert_eq!(WebhookFormat::parse(s), Some(f));
        }
        assert_eq!(WebhookFormat::parse("discord"), None);
    }
}
