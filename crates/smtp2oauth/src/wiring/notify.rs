//! Notifications from `[notify]`: the webhook, the alert e-mails and the notifier that
//! decides when to send them, built with the rest of the relay and run as one of its tasks.
//!
//! Alert e-mails go out as mail through a healthy account, never the failing one: queueing
//! them is the scheduler's job (the binary's `SchedulerAlerts`, a [`Mailer`] over it).

use anyhow::{Context, Result};
use smtp2oauth_activity::{Activity, EnvironmentFn};
use smtp2oauth_config::{Loaded, WebhookFormat as ConfigFormat};
use smtp2oauth_notify::webhook::{self, WebhookConfig};
use smtp2oauth_notify::{Mailer, Notifier, NotifyConfig, WebhookFormat};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How often problems are looked at besides on every account change (queue age, free space
/// and certificates change without an event).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the notifier needs, built; nothing runs until [`Notifications::spawn`].
pub struct Notifications {
    config: NotifyConfig,
    webhook: Option<(smtp2oauth_tokens::HttpClient, WebhookConfig)>,
    mailer: Option<Arc<dyn Mailer>>,
    activity: Activity,
    environment: EnvironmentFn,
}

/// Builds the notifier from `[notify]`: the webhook client (the same HTTP client as the
/// token requests: rustls with ring, no redirects, `[delivery] http_timeout`), the alert
/// addresses (`email_to`, else every account's `bounce_to`), and `mailer` for them.
pub fn build(
    loaded: &Loaded,
    activity: Activity,
    environment: EnvironmentFn,
    mailer: Arc<dyn Mailer>,
) -> Result<Notifications> {
    let cfg = &loaded.config;
    let n = &cfg.notify;
    let webhook = match &n.webhook_url {
        Some(url) => {
            let client = smtp2oauth_tokens::http_client(&smtp2oauth_tokens::HttpOptions {
                ca_file: None,
                timeout: cfg.delivery.http_timeout,
                user_agent: super::tokens::user_agent(),
            })
            .context("[notify] webhook_url: HTTP client")?;
            let config = WebhookConfig {
                url: url.expose().to_string(),
                format: format(n.webhook_format),
                retry_delays: WebhookConfig::default_retry_delays(),
            };
            info!(webhook = %webhook::host_of(&config.url), format = n.webhook_format.as_str(), "notifications go to a webhook");
            Some((client, config))
        }
        None => None,
    };
    let email_to = email_to(loaded);
    Ok(Notifications {
        config: NotifyConfig {
            relay: cfg.hostname(),
            repeat_interval: n.repeat_interval,
            check_interval: CHECK_INTERVAL,
            email_to,
        },
        webhook,
        mailer: Some(mailer),
        activity,
        environment,
    })
}

/// `[notify] email_to`, else the accounts' `bounce_to` addresses (each once).
fn email_to(loaded: &Loaded) -> Vec<String> {
    if let Some(to) = &loaded.config.notify.email_to {
        return to.clone();
    }
    let mut to: Vec<String> = Vec::new();
    for a in &loaded.accounts {
        if let Some(b) = &a.bounce_to
            && !to.iter().any(|t| t.eq_ignore_ascii_case(b))
        {
            to.push(b.clone());
        }
    }
    to
}

fn format(f: ConfigFormat) -> WebhookFormat {
    match f {
        ConfigFormat::Json => WebhookFormat::Json,
        ConfigFormat::Teams => WebhookFormat::Teams,
        ConfigFormat::Slack => WebhookFormat::Slack,
        ConfigFormat::Ntfy => WebhookFormat::Ntfy,
    }
}

impl Notifications {
    /// Starts the webhook poster and the notifier; both end when `stop` is cancelled.
    pub fn spawn(self, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let sender = self.webhook.map(|(client, config)| {
            let (sender, task) =
                webhook::spawn(client, config, self.activity.clone(), stop.clone());
            tasks.push(task);
            sender
        });
        let notifier = Notifier::new(
            self.config,
            self.activity,
            self.environment,
            sender,
            self.mailer,
        );
        tasks.push(tokio::spawn(notifier.run(stop)));
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(toml: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        smtp2oauth_config::load(Some(&path)).unwrap()
    }

    const ACCOUNTS: &str = r#"
[[listeners]]
address = "127.0.0.1:2525"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
route = "capture"
bounce_to = "IT@contoso.com"
[[accounts]]
name = "fax"
mailbox = "fax@contoso.com"
route = "capture"
bounce_to = "it@contoso.com"
[[accounts]]
name = "nas"
mailbox = "nas@contoso.com"
route = "capture"
bounce_to = "backup-admin@contoso.com"
"#;

    #[test]
    fn alerts_go_to_email_to_else_to_each_bounce_address_once() {
        assert_eq!(
            email_to(&loaded(ACCOUNTS)),
            ["IT@contoso.com", "backup-admin@contoso.com"]
        );
        let set = format!("[notify]\nemail_to = [\"alerts@contoso.com\"]\n{ACCOUNTS}");
        assert_eq!(email_to(&loaded(&set)), ["alerts@contoso.com"]);
    }
}
