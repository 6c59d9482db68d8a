//! The console's shared state: the activity store that sessions and the scheduler publish to,
//! what it remembers across a restart, and the measurement of the facts besides the accounts
//! that problems are decided from.
//!
//! Both are built once here and handed to every reader (the admin server, the notifier, the
//! state file), so the overview, the notifications and the CLI see the same store and decide
//! problems from the same facts.
//!
//! A restart must not forget that an account was being refused: [`seed`] reads the attempts
//! recorded in the spool (queued and failed messages) back into the message log and the
//! accounts' last failures and states, and marks the accounts the token store says need a
//! sign-in.

use super::TokenSources;
use smtp2oauth_activity::{
    AccountSignal, Activity, ActivityConfig, AttemptReport, AttemptResult, CertificateInfo,
    Environment, EnvironmentFn, MessageRecord, MessageResult, ReplyInfo, now_ms,
};
use smtp2oauth_config::{AccountSpec, Credential, Loaded, RouteSpec};
use smtp2oauth_inbound::TlsHandle;
use smtp2oauth_proto::{Cause, Reply, ReplyAssembler, Stage};
use smtp2oauth_spool::{Area, AttemptOutcome, Event, Queued, Spool};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, info};

/// How long before a certificate's expiry it becomes a problem.
pub const CERTIFICATE_WARNING_DAYS: u64 = 14;

/// An empty activity store for the configured devices and accounts.
pub fn activity(loaded: &Loaded) -> Activity {
    let cfg = &loaded.config;
    Activity::new(&ActivityConfig {
        recent_messages: cfg.admin.recent_messages,
        devices: cfg
            .devices
            .iter()
            .map(|d| (d.label(), d.account.clone()))
            .collect(),
        accounts: loaded.accounts.iter().map(|a| a.name.clone()).collect(),
    })
}

/// Measures the environment: the oldest queued message, free space, the certificates in use
/// (read from their files each time, so a renewal shows at once), and the notices that could
/// not be sent.
pub fn environment(
    loaded: &Loaded,
    spool: Spool,
    activity: Activity,
    certificates: Vec<CertificateFile>,
) -> EnvironmentFn {
    let cfg = &loaded.config;
    let alert_queue_age_ms = cfg.notify.alert_queue_age.as_millis() as u64;
    let min_free_space = cfg.store.min_free_space;
    let certificates = Arc::new(certificates);
    Arc::new(move || {
        let spool = spool.clone();
        let activity = activity.clone();
        let certificates = certificates.clone();
        Box::pin(async move {
            let oldest_queued_ms = spool
                .list(Area::Queue)
                .await
                .ok()
                .and_then(|ids| ids.iter().map(|id| id.received_at_ms()).min());
            let certificates = tokio::task::spawn_blocking(move || expiries(&certificates))
                .await
                .unwrap_or_default();
            Environment {
                now_ms: now_ms(),
                oldest_queued_ms,
                alert_queue_age_ms,
                free_space: spool.free_space().await,
                min_free_space,
                certificates,
                certificate_warning_ms: CERTIFICATE_WARNING_DAYS * 86_400_000,
                notice_failures: activity.notice_failures(),
            }
        })
    })
}

/// A certificate file the relay uses, with what to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFile {
    /// What it is, e.g. `listener certificate /data/tls/cert.pem`.
    pub label: String,
    /// The PEM file.
    pub path: PathBuf,
}

/// Every certificate the relay presents: the listeners' (one per distinct file) and the
/// accounts' client certificates (for the token endpoint, for a smart host's connector).
pub fn certificate_files(loaded: &Loaded, listeners: &[TlsHandle]) -> Vec<CertificateFile> {
    let mut files: Vec<CertificateFile> = Vec::new();
    for h in listeners {
        let path = h.policy().cert.clone();
        if !files.iter().any(|f| f.path == path) {
            let label = format!("listener certificate {}", path.display());
            files.push(CertificateFile { label, path });
        }
    }
    for a in &loaded.accounts {
        files.extend(account_certificates(a, "").into_iter().map(|(_, f)| f));
    }
    files
}

/// An account's client certificates, each with the setting that names it (after `key`, the
/// account's own, e.g. `accounts.0`), as check-config reports them.
pub fn account_certificates(a: &AccountSpec, key: &str) -> Vec<(String, CertificateFile)> {
    let mut files = Vec::new();
    let credential = a.oauth.as_ref().and_then(|o| o.flow.credential());
    if let Some(Credential::Certificate { pair, .. }) = credential {
        files.push((
            format!("{key}.certificate_file"),
            CertificateFile {
                label: format!(
                    "account {}'s client certificate {}",
                    a.name,
                    pair.cert_file.display()
                ),
                path: pair.cert_file.clone(),
            },
        ));
    }
    for route in a.routes() {
        if let RouteSpec::Smarthost(s) = route
            && let Some(pair) = &s.client_cert
        {
            files.push((
                format!("{key}.tls_client_cert_file"),
                CertificateFile {
                    label: format!(
                        "account {}'s smart-host client certificate {}",
                        a.name,
                        pair.cert_file.display()
                    ),
                    path: pair.cert_file.clone(),
                },
            ));
        }
    }
    files
}

/// The notAfter of every file that can be read (a file that cannot is left out: the part that
/// uses it reports that when it loads it).
fn expiries(files: &[CertificateFile]) -> Vec<CertificateInfo> {
    files
        .iter()
        .filter_map(|f| match not_after_ms(&f.path) {
            Ok(not_after_ms) => Some(CertificateInfo {
                label: f.label.clone(),
                not_after_ms,
            }),
            Err(e) => {
                debug!(file = %f.path.display(), error = %e, "cannot read a certificate's expiry");
                None
            }
        })
        .collect()
}

/// The earliest notAfter of the certificates in a PEM file (a chain stops working when any
/// of its certificates expires), in ms since the epoch.
///
/// `x509-parser` reads the DER: rustls and webpki check validity themselves but do not hand
/// the dates out, and the crate is already in the tree through rcgen.
pub fn not_after_ms(path: &Path) -> Result<u64, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ders.iter()
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|e| format!("not an X.509 certificate: {e}"))?;
            let secs = cert.validity().not_after.timestamp();
            Ok(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
        })
        .collect::<Result<Vec<u64>, String>>()?
        .into_iter()
        .min()
        .ok_or_else(|| "no CERTIFICATE block found".to_string())
}

/// Fills the store with what the spool and the token store remember: every recorded attempt
/// of a queued or failed message becomes a message record and tells its account's state,
/// oldest first; then the accounts whose sign-in is needed are marked so.
pub async fn seed(activity: &Activity, spool: &Spool, loaded: &Loaded, tokens: &TokenSources) {
    let mut attempts: Vec<(MessageRecord, AttemptReport)> = Vec::new();
    for area in [Area::Queue, Area::Failed] {
        for id in spool.list(area).await.unwrap_or_default() {
            if let Ok(q) = spool.read(&id, area).await {
                attempts.extend(recorded_attempts(&q, loaded));
            }
        }
    }
    attempts.sort_by_key(|(r, _)| r.at_ms);
    let n = attempts.len();
    for (record, report) in attempts {
        activity.message(record);
        activity.attempt(&report);
    }
    for a in &loaded.accounts {
        if tokens
            .get(&a.name)
            .is_some_and(|t| t.status().sign_in_required)
        {
            activity.attempt(&AttemptReport {
                account: a.name.clone(),
                at_ms: now_ms(),
                result: None,
                signal: AccountSignal::SignInNeeded,
                reply: None,
                advice: Some(format!(
                    "Open Accounts on the admin page and click Sign in, or run `smtp2oauth account login {}`.",
                    a.name
                )),
            });
        }
    }
    if n > 0 {
        info!(
            attempts = n,
            "the console remembers the attempts recorded in the spool"
        );
    }
}

/// The attempts recorded in a message's envelope, as records and account reports.
fn recorded_attempts(q: &Queued, loaded: &Loaded) -> Vec<(MessageRecord, AttemptReport)> {
    let env = &q.envelope;
    let route = loaded
        .account(&env.account)
        .map(|a| a.route.kind().as_str().to_string())
        .unwrap_or_default();
    q.events
        .iter()
        .filter_map(|e| match e {
            Event::Attempt {
                at_ms,
                outcome,
                reply,
                stage,
                delivered,
                next_attempt_ms,
                ..
            } => {
                let reply = reply_of_line(reply);
                let stage = stage.as_deref().and_then(stage_named);
                let result = result_of(*outcome, q.area);
                let pause_until = next_attempt_ms.unwrap_or(*at_ms);
                let signal = seed_signal(!delivered.is_empty(), &reply, stage, pause_until);
                let info = ReplyInfo::from(&reply);
                let record = MessageRecord {
                    seq: 0,
                    at_ms: *at_ms,
                    queue_id: Some(env.id.as_str().to_string()),
                    device: env.device.clone(),
                    peer: Some(env.client_ip.clone()),
                    account: env.account.clone(),
                    route: route.clone(),
                    sender: env.original_sender.clone().unwrap_or(env.sender.clone()),
                    recipients: env.recipients.clone(),
                    size: env.size,
                    result,
                    reply: Some(info.clone()),
                    advice: None,
                };
                let report = AttemptReport {
                    account: env.account.clone(),
                    at_ms: *at_ms,
                    result: Some(attempt_result(result)),
                    signal,
                    reply: Some(info),
                    advice: None,
                };
                Some((record, report))
            }
            _ => None,
        })
        .collect()
}

/// What a recorded attempt means for its message: in `failed/` it failed (even when some
/// recipients got it: an admin must look); in the queue it waits for another attempt.
fn result_of(outcome: AttemptOutcome, area: Area) -> MessageResult {
    match (outcome, area) {
        (AttemptOutcome::Failed | AttemptOutcome::Expired, _) => MessageResult::Failed,
        (AttemptOutcome::Partial, Area::Failed) => MessageResult::Failed,
        (AttemptOutcome::Partial | AttemptOutcome::Deferred, _) => MessageResult::Deferred,
    }
}

fn attempt_result(result: MessageResult) -> AttemptResult {
    match result {
        MessageResult::Delivered => AttemptResult::Delivered,
        MessageResult::Failed => AttemptResult::Failed,
        MessageResult::Deferred | MessageResult::Refused => AttemptResult::Deferred,
    }
}

/// A reply as the spool keeps it (one line); a line that is not one is kept as a `554`'s text.
fn reply_of_line(line: &str) -> Reply {
    match ReplyAssembler::new().push_line(line.as_bytes()) {
        Ok(Some(reply)) => reply,
        _ => Reply::new(554, None, line),
    }
}

fn stage_named(name: &str) -> Option<Stage> {
    use Stage::*;
    [
        Connect, Greeting, Ehlo, StartTls, Auth, Mail, Rcpt, Data, Body, Token, Http, Local,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
}

/// What a recorded attempt says about its account, from the reply and stage the spool kept.
///
/// The live verdict (the scheduler's) sees the whole failure; a stored line has only a reply
/// and a stage, so this reads what that can tell: recipients delivered mean the account
/// worked; our own replies for an unreachable upstream (`4.4.1`, `4.4.2`, `4.5.0`) and for a
/// TLS failure (`4.7.5`); otherwise the upstream crate's table of SMTP refusals. A token
/// failure cannot be told apart from its line (the token store's state is read instead), nor
/// can Graph's answers, which the next attempt decides.
fn seed_signal(
    delivered: bool,
    reply: &Reply,
    stage: Option<Stage>,
    pause_until_ms: u64,
) -> AccountSignal {
    if delivered {
        return AccountSignal::Working;
    }
    let Some(stage) = stage.filter(|s| !matches!(s, Stage::Token | Stage::Local | Stage::Http))
    else {
        return AccountSignal::Neutral;
    };
    let status = reply.status().map(|s| (s.class, s.subject, s.detail));
    match status {
        Some((4, 4, 1) | (4, 4, 2) | (4, 5, 0)) => return AccountSignal::Unreachable,
        Some((4, 7, 5)) => return AccountSignal::Refused,
        _ => {}
    }
    match smtp2oauth_upstream::cause::smtp(reply.code(), reply.status(), stage) {
        Cause::Account(_) => AccountSignal::Refused,
        Cause::Throttled { .. } => AccountSignal::Throttled {
            until_ms: pause_until_ms,
        },
        _ => AccountSignal::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lines_say_what_they_can_about_the_account() {
        let s =
            |line: &str, stage: Option<Stage>| seed_signal(false, &reply_of_line(line), stage, 77);
        use AccountSignal::*;
        assert_eq!(
            s("535 5.7.3 Authentication unsuccessful", Some(Stage::Auth)),
            Refused
        );
        assert_eq!(s("535 5.7.139 disabled", Some(Stage::Auth)), Refused);
        assert_eq!(
            s("550 5.7.64 TenantAttribution", Some(Stage::Rcpt)),
            Refused
        );
        assert_eq!(
            s("451 4.7.500 Server busy", Some(Stage::Mail)),
            Throttled { until_ms: 77 }
        );
        assert_eq!(
            s(
                "451 4.4.1 Upstream h:587 not reachable",
                Some(Stage::Connect)
            ),
            Unreachable
        );
        assert_eq!(s("550 5.1.1 unknown", Some(Stage::Rcpt)), Neutral);
        assert_eq!(s("554 5.2.252 SendAsDenied", Some(Stage::Body)), Neutral);
        assert_eq!(
            s(
                "454 4.7.0 no access token for account a",
                Some(Stage::Token)
            ),
            Neutral
        );
        assert_eq!(s("535 5.7.3 x", None), Neutral);
        assert_eq!(
            seed_signal(true, &reply_of_line("250 OK"), Some(Stage::Body), 0),
            Working
        );
        assert_eq!(stage_named("starttls"), Some(Stage::StartTls));
        assert_eq!(stage_named("warp"), None);
    }

    #[test]
    fn an_attempt_in_failed_is_a_failure_even_when_partial() {
        assert_eq!(
            result_of(AttemptOutcome::Partial, Area::Failed),
            MessageResult::Failed
        );
        assert_eq!(
            result_of(AttemptOutcome::Partial, Area::Queue),
            MessageResult::Deferred
        );
        assert_eq!(
            result_of(AttemptOutcome::Expired, Area::Queue),
            MessageResult::Failed
        );
    }

    #[test]
    fn the_earliest_expiry_of_a_chain_is_read_from_its_pem() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |year: i32| {
            let mut p = rcgen::CertificateParams::new(vec!["relay.test".into()]).unwrap();
            p.not_after = rcgen::date_time_ymd(year, 1, 1);
            let key = rcgen::KeyPair::generate().unwrap();
            p.self_signed(&key).unwrap().pem()
        };
        let path = dir.path().join("chain.pem");
        std::fs::write(&path, pem(2031) + &pem(2030)).unwrap();
        // 2030-01-01T00:00:00Z
        assert_eq!(not_after_ms(&path).unwrap(), 1_893_456_000_000);
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(not_after_ms(&path).is_err());
        assert!(not_after_ms(&dir.path().join("missing.pem")).is_err());
    }

    /// The listener certificate (once, however many listeners use it), an app's client
    /// certificate and a smart host's client certificate, each with its notAfter.
    #[test]
    fn every_certificate_the_relay_presents_is_watched() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, year) in [("listener", 2031), ("app", 2030), ("connector", 2032)] {
            let mut p = rcgen::CertificateParams::new(vec!["relay.test".into()]).unwrap();
            p.not_after = rcgen::date_time_ymd(year, 1, 1);
            let key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(
                d.join(format!("{name}.pem")),
                p.self_signed(&key).unwrap().pem(),
            )
            .unwrap();
            std::fs::write(d.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        let toml = format!(
            r#"
[tls]
cert_file = "{d}/listener.pem"
key_file = "{d}/listener.key"
[[listeners]]
address = "127.0.0.1:2525"
tls = "starttls"
[[listeners]]
address = "127.0.0.1:2465"
tls = "implicit"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
certificate_file = "{d}/app.pem"
private_key_file = "{d}/app.key"
[[accounts]]
name = "nas"
mailbox = "nas@contoso.com"
route = "smarthost"
smarthost_host = "mx.contoso.com"
tls_client_cert_file = "{d}/connector.pem"
tls_client_key_file = "{d}/connector.key"
"#,
            d = d.display()
        );
        let path = d.join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = smtp2oauth_config::load(Some(&path)).unwrap();
        let handles =
            crate::wiring::distinct_handles(&crate::wiring::listener_tls(&loaded.config).unwrap());
        let files = certificate_files(&loaded, &handles);
        let got: Vec<(String, u64)> = expiries(&files)
            .into_iter()
            .map(|c| (c.label, c.not_after_ms / 1000))
            .collect();
        let d = d.display();
        assert_eq!(
            got,
            [
                (
                    format!("listener certificate {d}/listener.pem"),
                    1_924_992_000
                ),
                (
                    format!("account scanner's client certificate {d}/app.pem"),
                    1_893_456_000
                ),
                (
                    format!("account nas's smart-host client certificate {d}/connector.pem"),
                    1_956_528_000
                ),
            ]
        );
    }
}
