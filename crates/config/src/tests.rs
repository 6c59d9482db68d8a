use super::*;
use std::io::Write;

mod messages;

fn write(toml: &str) -> tempfile_like::TempFile {
    tempfile_like::TempFile::new(toml)
}

/// A tiny temp-file helper so this crate needs no dev-dependencies.
mod tempfile_like {
    use std::path::PathBuf;
    pub struct TempFile(pub PathBuf);
    impl TempFile {
        pub fn new(content: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "smtp2oauth-config-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::write(&p, content).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

const MINIMAL: &str = r#"
[server]
hostname = "relay.test"

[[listeners]]
address = "127.0.0.1:2525"
tls = "none"
allow_insecure_auth = true

[store]
dir = "/tmp/s2o"

[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "s3cret-value"

[[devices]]
username = "mfp-3f"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
account = "scanner"

[[devices]]
name = "ups-monitor"
auth = false
allow_ips = ["192.168.1.50/32", "10.0.0.7"]
account = "scanner"
"#;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

/// The spec of the first account of `toml`, which must load.
fn first_spec(toml: &str) -> AccountSpec {
    let f = write(toml);
    let l = load_with_env(Some(&f.0), no_env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.accounts.len(), l.config.accounts.len());
    l.accounts[0].clone()
}

fn smtp_of(route: &RouteSpec) -> &SmtpSpec {
    match route {
        RouteSpec::Smtp(s) => s,
        other => panic!("not an SMTP route: {other:?}"),
    }
}

fn graph_of(route: &RouteSpec) -> &GraphSpec {
    match route {
        RouteSpec::Graph(g) => g,
        other => panic!("not a Graph route: {other:?}"),
    }
}

fn oauth_of(a: &AccountSpec) -> &OAuth {
    a.oauth.as_ref().expect("the account has OAuth")
}

#[test]
fn minimal_config_loads_with_defaults() {
    let f = write(MINIMAL);
    let l = load_with_env(Some(&f.0), no_env()).unwrap();
    let c = &l.config;
    assert_eq!(c.hostname(), "relay.test");
    assert_eq!(c.server.max_message_size, 36_700_160);
    assert_eq!(c.listeners[0].label(), "smtp-2525");
    let a = &l.accounts[0];
    assert_eq!(
        oauth_of(a).token_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    let smtp = smtp_of(&a.route);
    assert_eq!(smtp.scope, "https://outlook.office365.com/.default");
    assert_eq!(
        (smtp.host.as_str(), smtp.port, smtp.tls, smtp.auth),
        (
            "smtp.office365.com",
            587,
            UpstreamTls::Starttls,
            SmtpAuth::Xoauth2
        )
    );
    assert!(matches!(
        &oauth_of(a).flow,
        FlowSpec::ClientCredentials { credential: Credential::Secret(s) } if s.expose() == "s3cret-value"
    ));
    assert!(a.fallback.is_none());
    assert_eq!(a.max_connections, 3);
    assert_eq!(a.messages_per_minute, 30);
    assert_eq!(a.max_message_size, 36_700_160);
    assert_eq!(a.bounce_to, None);
    assert_eq!(c.devices[1].allow_ips.len(), 2);
    assert_eq!(c.devices[1].allow_ips[1].to_string(), "10.0.0.7/32");
    assert!(c.devices[0].auth);
    // the plain listener with insecure auth is worth a warning
    assert!(
        l.warnings
            .iter()
            .any(|w| w.key == "listeners.0.allow_insecure_auth")
    );
}

#[test]
fn example_config_in_repo_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/smtp2oauth.example.toml");
    let l = load_with_env(Some(&path), no_env()).unwrap_or_else(|e| panic!("{e}"));
    assert!(l.config.accounts.iter().all(|a| a.route == Route::Capture));
    assert!(
        l.accounts
            .iter()
            .all(|a| matches!(a.route, RouteSpec::Capture { .. }) && a.oauth.is_none())
    );
}

#[test]
fn secrets_are_redacted_in_debug() {
    let f = write(MINIMAL);
    let c = load_with_env(Some(&f.0), no_env()).unwrap().config;
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cret-value"), "{dbg}");
    assert!(!dbg.contains("aGFzaGhh"), "{dbg}");
    assert!(dbg.contains("[redacted]"));
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let f = write(&MINIMAL.replace("hostname = \"relay.test\"", "hostnme = \"relay.test\""));
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("hostnme"), "{text}");
    assert!(
        text.contains(f.0.to_str().unwrap()),
        "names the file: {text}"
    );
}

#[test]
fn type_errors_name_key_and_source() {
    let f = write(&MINIMAL.replace("[server]", "[server]\nmax_message_size = \"big\""));
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    assert_eq!(e.problems[0].key, "server.max_message_size", "{e}");
}

#[test]
fn env_overrides_plain_keys_and_array_entries() {
    let f = write(MINIMAL);
    let env = vec![
        (
            "SMTP2OAUTH_SERVER__HOSTNAME".to_string(),
            "from-env.test".to_string(),
        ),
        (
            "SMTP2OAUTH_SERVER__COMMAND_TIMEOUT".to_string(),
            "45s".to_string(),
        ),
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET".to_string(),
            "env-secret".to_string(),
        ),
        (
            "SMTP2OAUTH_ACCOUNTS__0__SMTP_PORT".to_string(),
            "2587".to_string(),
        ),
        (
            "SMTP2OAUTH_DEVICES__UPS_MONITOR__ALLOW_IPS".to_string(),
            "[\"10.1.0.0/16\"]".to_string(),
        ),
        (
            "SMTP2OAUTH_CONFIG".to_string(),
            "ignored, no __".to_string(),
        ),
    ];
    let l = load_with_env(Some(&f.0), env).unwrap();
    let c = l.config;
    assert_eq!(c.hostname(), "from-env.test");
    assert_eq!(c.server.command_timeout.as_secs(), 45);
    assert_eq!(
        c.accounts[0].client_secret.as_ref().unwrap().expose(),
        "env-secret"
    );
    assert_eq!(smtp_of(&l.accounts[0].route).port, 2587);
    // file values of the same entry survive
    assert_eq!(c.accounts[0].mailbox, "scanner@contoso.com");
    assert_eq!(c.devices[1].allow_ips[0].to_string(), "10.1.0.0/16");
    assert_eq!(c.devices.len(), 2);
}

#[test]
fn config_from_environment_alone() {
    let env: Vec<(String, String)> = [
        ("SMTP2OAUTH_LISTENERS__0__ADDRESS", "127.0.0.1:2525"),
        ("SMTP2OAUTH_LISTENERS__0__TLS", "none"),
        ("SMTP2OAUTH_LISTENERS__0__ALLOW_INSECURE_AUTH", "true"),
        ("SMTP2OAUTH_STORE__DIR", "/tmp/s2o-env"),
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__MAILBOX",
            "scanner@contoso.com",
        ),
        ("SMTP2OAUTH_ACCOUNTS__SCANNER__ROUTE", "capture"),
        ("SMTP2OAUTH_DEVICES__0__USERNAME", "mfp"),
        (
            "SMTP2OAUTH_DEVICES__0__PASSWORD_HASH",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
        ),
        ("SMTP2OAUTH_DEVICES__0__ACCOUNT", "scanner"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = load_with_env(None, env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(c.accounts[0].name, "scanner");
    assert_eq!(c.devices[0].username.as_deref(), Some("mfp"));
    assert!(c.listeners[0].allow_insecure_auth);
}

#[test]
fn env_index_cannot_skip_entries() {
    let env = vec![("SMTP2OAUTH_ACCOUNTS__5__NAME".to_string(), "x".to_string())];
    let e = load_with_env(None, env).unwrap_err();
    assert!(
        e.to_string().contains("SMTP2OAUTH_ACCOUNTS__5__NAME"),
        "{e}"
    );
}

#[test]
fn validation_reports_every_problem_with_key_paths() {
    let bad = r#"
[server]
max_line_length = 100

[[listeners]]
address = "127.0.0.1:2525"
[[listeners]]
address = "127.0.0.1:2525"
tls = "none"
require_tls = true

[tls]
self_signed = false

[[accounts]]
name = "scanner"
mailbox = "not-an-address"
client_secret = "x"
client_secret_file = "/nonexistent"

[[accounts]]
name = "g"
mailbox = "g@example.com"
route = "graph"

[[devices]]
username = "mfp"
password_hash = "plaintext"
account = "nope"

[[devices]]
auth = false
account = "scanner"
"#;
    let f = write(bad);
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "server.max_line_length",
        "listeners.1.address",
        "listeners.1.require_tls",
        "tls",
        "accounts.0.mailbox",
        "accounts.0.client_id",
        "accounts.0.tenant",
        "accounts.0.client_secret",
        "accounts.1.client_id",
        "devices.0.account",
        "devices.0.password_hash",
        "devices.1.allow_ips",
    ] {
        assert!(keys.contains(&want), "missing {want} in {keys:?}");
    }
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let mut tf = std::env::temp_dir();
    tf.push(format!("s2o-secret-{}", std::process::id()));
    let mut fh = std::fs::File::create(&tf).unwrap();
    fh.write_all(b"file-secret\n").unwrap();
    let cfg = MINIMAL.replace(
        "client_secret = \"s3cret-value\"",
        &format!("client_secret_file = \"{}\"", tf.display()),
    );
    let f = write(&cfg);
    let a = first_spec(&cfg);
    assert!(matches!(
        oauth_of(&a).flow.credential(),
        Some(Credential::Secret(s)) if s.expose() == "file-secret"
    ));
    std::fs::remove_file(&tf).unwrap();
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "accounts.0.client_secret_file"),
        "{e}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let e = load_with_env(
        Some(std::path::Path::new("/nonexistent/smtp2oauth.toml")),
        no_env(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"));
}

#[test]
fn env_values_that_do_not_round_trip_stay_strings() {
    let f = write(MINIMAL);
    let env = vec![
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET".to_string(),
            "00123".to_string(),
        ),
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_ID".to_string(),
            "1.50".to_string(),
        ),
        // Any client ID (Microsoft's are GUIDs).
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__PROVIDER".to_string(),
            "generic".to_string(),
        ),
        (
            "SMTP2OAUTH_ACCOUNTS__SCANNER__TOKEN_URL".to_string(),
            "https://idp.example/token".to_string(),
        ),
    ];
    let c = load_with_env(Some(&f.0), env).unwrap().config;
    assert_eq!(
        c.accounts[0].client_secret.as_ref().unwrap().expose(),
        "00123"
    );
    assert_eq!(c.accounts[0].client_id.as_deref(), Some("1.50"));
    for v in ["true", "1.5", "42"] {
        let env = vec![(
            "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET".to_string(),
            v.to_string(),
        )];
        let c = load_with_env(Some(&f.0), env).unwrap().config;
        assert_eq!(c.accounts[0].client_secret.as_ref().unwrap().expose(), v);
    }
}

#[test]
fn absurd_durations_are_errors_not_panics() {
    for v in ["1e30", "99999999999999", "-5"] {
        let f = write(&MINIMAL.replace("[server]", &format!("[server]\ncommand_timeout = {v}")));
        let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
        assert_eq!(e.problems[0].key, "server.command_timeout", "{v}: {e}");
    }
}

#[test]
fn sovereign_cloud_authority_changes_default_scope_and_smtp_host() {
    let f = write(&MINIMAL.replace(
        "client_secret = \"s3cret-value\"",
        "client_secret = \"x\"\nauthority = \"https://login.microsoftonline.us\"",
    ));
    let a = first_spec(&std::fs::read_to_string(&f.0).unwrap());
    assert_eq!(
        smtp_of(&a.route).scope,
        "https://outlook.office365.us/.default"
    );
    assert_eq!(smtp_of(&a.route).host, "smtp.office365.us");
    assert_eq!(
        oauth_of(&a).token_url,
        "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
}

#[test]
fn wildcard_listener_overlapping_a_specific_one_is_reported() {
    let f = write(&MINIMAL.replace("[[listeners]]", "[[listeners]]\naddress = \"0.0.0.0:2525\"\ntls = \"none\"\nallow_insecure_auth = true\n\n[[listeners]]"));
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    assert!(
        e.problems.iter().any(|p| p.key == "listeners.1.address"),
        "{e}"
    );
}

/// The MINIMAL account with `keys` added (each `key = value` on its own line).
fn with_account_keys(keys: &str) -> String {
    MINIMAL.replace(
        "client_secret = \"s3cret-value\"\n",
        &format!("client_secret = \"s3cret-value\"\n{keys}\n"),
    )
}

#[test]
fn route_keys_are_checked_with_key_paths() {
    // (account keys, the problem key expected, or None when the config is fine)
    let cases: &[(&str, Option<&str>)] = &[
        ("route = \"graph\"", None),
        ("route = \"graph\"\nfallback_route = \"smtp\"", None),
        ("route = \"smtp\"\nfallback_route = \"graph\"", None),
        (
            "route = \"smtp\"\nfallback_route = \"smtp\"",
            Some("accounts.0.fallback_route"),
        ),
        (
            "route = \"smtp\"\nfallback_route = \"capture\"",
            Some("accounts.0.fallback_route"),
        ),
        (
            "route = \"graph\"\nmax_message_size = 10000000",
            Some("accounts.0.max_message_size"),
        ),
        (
            "route = \"graph\"\nfallback_route = \"smtp\"\nmax_message_size = 10000000",
            None,
        ),
        (
            "max_message_size = 100",
            Some("accounts.0.max_message_size"),
        ),
        ("route = \"smarthost\"", Some("accounts.0.smarthost_host")),
        (
            "route = \"smarthost\"\nsmarthost_host = \"mx.example.com\"",
            None,
        ),
        (
            "route = \"smarthost\"\nmx_domain = \"contoso.com\"\ndns_servers = [\"127.0.0.1:5353\", \"::1\"]",
            None,
        ),
        (
            "route = \"smarthost\"\nmx_domain = \"contoso.com\"\nsmarthost_host = \"a\"",
            Some("accounts.0.mx_domain"),
        ),
        (
            "route = \"smarthost\"\nmx_domain = \"contoso.com\"\ndns_servers = [\"dns.example\"]",
            Some("accounts.0.dns_servers.0"),
        ),
        (
            "route = \"smarthost\"\nsmarthost_host = \"bad host\"",
            Some("accounts.0.smarthost_host"),
        ),
        (
            "route = \"smarthost\"\nsmarthost_host = \"h\"\nsmarthost_port = 0",
            Some("accounts.0.smarthost_port"),
        ),
        (
            "route = \"smarthost\"\nsmarthost_host = \"h\"\ntls_client_cert_file = \"/etc/hostname\"",
            Some("accounts.0.tls_client_key_file"),
        ),
        (
            "route = \"smarthost\"\nsmarthost_host = \"h\"\ntls_client_cert_file = \"/nonexistent/c.pem\"\ntls_client_key_file = \"/nonexistent/k.pem\"",
            Some("accounts.0.tls_client_cert_file"),
        ),
    ];
    for (keys, want) in cases {
        let f = write(&with_account_keys(keys));
        match (load_with_env(Some(&f.0), no_env()), want) {
            (Ok(_), None) => {}
            (Err(e), Some(k)) => assert!(
                e.problems.iter().any(|p| p.key == *k),
                "{keys}: expected a problem at {k}, got {e}"
            ),
            (Ok(_), Some(k)) => panic!("{keys}: expected a problem at {k}"),
            (Err(e), None) => panic!("{keys}: unexpected problems: {e}"),
        }
    }
}

#[test]
fn smarthost_without_credentials_is_fine_and_graph_needs_them() {
    let no_cred = |route_keys: &str| {
        MINIMAL
            .replace(
                "client_secret = \"s3cret-value\"\n",
                &format!("{route_keys}\n"),
            )
            .replace("client_id = \"11111111-2222-3333-4444-555555555555\"\n", "")
    };
    let f = write(&no_cred(
        "route = \"smarthost\"\nsmarthost_host = \"mx.example.com\"",
    ));
    load_with_env(Some(&f.0), no_env()).unwrap();
    let f = write(&no_cred("route = \"graph\""));
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"accounts.0.client_id"), "{keys:?}");
    assert!(keys.contains(&"accounts.0.client_secret"), "{keys:?}");
    // A token-less primary with a token fallback still needs the credential.
    let f = write(&no_cred(
        "route = \"smarthost\"\nsmarthost_host = \"h\"\nfallback_route = \"graph\"",
    ));
    assert!(load_with_env(Some(&f.0), no_env()).is_err());
}

#[test]
fn route_defaults_follow_the_route_and_the_cloud() {
    let a = first_spec(&with_account_keys(
        "route = \"graph\"\nfallback_route = \"smtp\"",
    ));
    let graph = graph_of(&a.route);
    assert_eq!(graph.url, "https://graph.microsoft.com");
    assert_eq!(graph.scope, "https://graph.microsoft.com/.default");
    assert_eq!(graph.max_message_size, GRAPH_MAX_MESSAGE_SIZE);
    let fallback = a.fallback.as_ref().expect("a fallback route");
    assert_eq!(
        smtp_of(fallback).scope,
        "https://outlook.office365.com/.default"
    );
    // With an SMTP fallback, Graph's size limit does not cap the device.
    assert_eq!(a.max_message_size, 36_700_160);
    assert_eq!(
        a.routes().map(RouteSpec::kind).collect::<Vec<_>>(),
        [Route::Graph, Route::Smtp]
    );

    let toml = with_account_keys(
        "route = \"graph\"\nauthority = \"https://login.microsoftonline.us\"\ngraph_url = \"https://127.0.0.1:9/\"",
    );
    let a = first_spec(&toml);
    let graph = graph_of(&a.route);
    assert_eq!(graph.url, "https://127.0.0.1:9");
    assert_eq!(graph.scope, "https://graph.microsoft.us/.default");
    assert_eq!(a.max_message_size, GRAPH_MAX_MESSAGE_SIZE);
    let a = first_spec(&toml.replace("[server]\n", "[server]\nmax_message_size = 1000000\n"));
    assert_eq!(a.max_message_size, 1_000_000);
    assert_eq!(graph_of(&a.route).max_message_size, 1_000_000);

    let a = first_spec(&with_account_keys(
        "route = \"smarthost\"\nmx_domain = \"contoso.com\"\ndns_servers = [\"127.0.0.1:5353\"]",
    ));
    let RouteSpec::Smarthost(smarthost) = &a.route else {
        panic!("{a:?}");
    };
    assert_eq!(smarthost.port, 25);
    assert_eq!(smarthost.tls, SmarthostTls::Required);
    assert_eq!(smarthost.destination, Destination::Mx("contoso.com".into()));
    assert_eq!(smarthost.dns_servers, ["127.0.0.1:5353".parse().unwrap()]);
    assert!(a.oauth.is_none());
    assert_eq!(a.messages_per_minute, 0);
    assert_eq!(
        parse_dns_server("127.0.0.1"),
        Some("127.0.0.1:53".parse().unwrap())
    );
    assert_eq!(
        parse_dns_server("[::1]:5353"),
        Some("[::1]:5353".parse().unwrap())
    );
}

/// Found by fuzzing: figment panics unescaping a quoted value with a non-ASCII character before
/// a backslash. Such a value is kept as the text it is (a client secret may well look like that).
#[test]
fn env_values_with_non_ascii_before_a_backslash_are_kept_as_text() {
    for value in ["\"é\\n\"", "pässwörd\\x", "\"ü\\\""] {
        let env = vec![(
            "SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET".to_string(),
            value.to_string(),
        )];
        let cfg = crate::parse_str(MINIMAL, env).expect("loads");
        assert_eq!(
            cfg.accounts[0]
                .client_secret
                .as_ref()
                .map(|s| s.expose().to_string()),
            Some(value.to_string()),
            "{value}"
        );
    }
}

/// MINIMAL with the account's credential lines replaced by `account` lines.
fn with_account(account: &str) -> String {
    MINIMAL.replace(
        "client_secret = \"s3cret-value\"\n",
        &format!("{account}\n"),
    )
}

#[test]
fn delegated_flows_defaults() {
    let f = write(&with_account("flow = \"device_code\""));
    let l = load_with_env(Some(&f.0), no_env()).unwrap();
    let a = &l.accounts[0];
    assert!(a.delegated().is_some());
    assert!(l.has_delegated());
    assert_eq!(a.flow(), Some(Flow::DeviceCode));
    assert_eq!(
        smtp_of(&a.route).scope,
        "https://outlook.office.com/SMTP.Send offline_access"
    );
    let FlowSpec::DeviceCode {
        credential: None,
        device_code_url,
    } = &oauth_of(a).flow
    else {
        panic!("{a:?}");
    };
    assert_eq!(
        device_code_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    );
    assert_eq!(l.config.store.master_key_file, None);
    assert!(l.config.admin.password_hash.is_none());

    let a = first_spec(&with_account("flow = \"authorization_code\""));
    let FlowSpec::AuthorizationCode {
        credential: None,
        authorize_url,
        redirect_uri,
    } = &oauth_of(&a).flow
    else {
        panic!("{a:?}");
    };
    assert_eq!(
        authorize_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    );
    assert_eq!(redirect_uri, "http://localhost:8025/oauth/callback");

    let a = first_spec(&with_account(
        "flow = \"authorization_code\"\nauthority = \"https://login.microsoftonline.us\"",
    ));
    assert_eq!(
        smtp_of(&a.route).scope,
        "https://outlook.office365.us/SMTP.Send offline_access"
    );

    let a = first_spec(&with_account(
        "flow = \"authorization_code\"\nprovider = \"google\"\nclient_secret = \"g\"",
    ));
    assert_eq!(smtp_of(&a.route).scope, "https://mail.google.com/");
    assert_eq!(smtp_of(&a.route).host, "smtp.gmail.com");
    let FlowSpec::AuthorizationCode {
        credential: Some(Credential::Secret(_)),
        authorize_url,
        ..
    } = &oauth_of(&a).flow
    else {
        panic!("{a:?}");
    };
    assert_eq!(
        authorize_url,
        "https://accounts.google.com/o/oauth2/v2/auth"
    );
    assert_eq!(
        oauth_of(&a).token_url,
        "https://oauth2.googleapis.com/token"
    );
}

#[test]
fn delegated_flow_checks() {
    // (account lines, extra top-level text, key expected, words expected; "" = loads, and
    // then `words` must be in a warning if not empty)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("flow = \"device_code\"", "", "", ""),
        ("flow = \"authorization_code\"", "", "", ""),
        (
            "flow = \"authorization_code\"\nclient_secret = \"web-app-secret\"",
            "",
            "",
            "",
        ),
        (
            "flow = \"device_code\"\nclient_secret = \"x\"",
            "",
            "accounts.0.client_secret",
            "AADSTS700025",
        ),
        (
            "flow = \"device_code\"\nprovider = \"google\"",
            "",
            "accounts.0.flow",
            "does not allow the Gmail scope",
        ),
        (
            "flow = \"client_credentials\"\nprovider = \"google\"\nclient_secret = \"x\"",
            "",
            "accounts.0.flow",
            "authorization_code",
        ),
        (
            "flow = \"authorization_code\"\nprovider = \"google\"",
            "",
            "accounts.0.client_secret",
            "Google requires",
        ),
        (
            "flow = \"authorization_code\"\nprovider = \"generic\"\ntoken_url = \"https://idp.example/token\"",
            "",
            "accounts.0.authorize_url",
            "generic",
        ),
        (
            "flow = \"device_code\"\nprovider = \"generic\"\ntoken_url = \"https://idp.example/token\"",
            "",
            "accounts.0.device_code_url",
            "generic",
        ),
        (
            "flow = \"authorization_code\"\nredirect_uri = \"localhost:8025/cb\"",
            "",
            "accounts.0.redirect_uri",
            "http(s) URL",
        ),
        (
            "flow = \"authorization_code\"\nredirect_uri = \"http://localhost:8025/cb#x\"",
            "",
            "accounts.0.redirect_uri",
            "without query or fragment",
        ),
        (
            "flow = \"authorization_code\"\nredirect_uri = \"http://localhost:8025\"",
            "",
            "accounts.0.redirect_uri",
            "needs a path",
        ),
        (
            "flow = \"authorization_code\"\nredirect_uri = \"http://relay.lan:8025/oauth/callback\"",
            "",
            "",
            "plain http only for localhost",
        ),
        (
            "flow = \"authorization_code\"\nredirect_uri = \"http://localhost:9000/oauth/callback\"",
            "",
            "",
            "points at port 9000",
        ),
        (
            "flow = \"authorization_code\"",
            "[admin]\nlisten = \"\"\n",
            "",
            "smtp2oauth account login",
        ),
        (
            "flow = \"device_code\"",
            "[admin]\npassword_hash = \"hunter2\"\n",
            "admin.password_hash",
            "argon2",
        ),
        (
            "flow = \"device_code\"",
            "[admin]\nallowed_hosts = [\"http://relay.lan/\"]\n",
            "admin.allowed_hosts.0",
            "no scheme or path",
        ),
        (
            "flow = \"device_code\"",
            "[admin]\nallowed_hosts = [\"relay.lan\", \"relay.lan:8025\"]\n",
            "admin.allowed_hosts.1",
            "without a port",
        ),
        (
            "flow = \"device_code\"",
            "[admin]\nallowed_hosts = [\"relay.lan\", \"10.0.0.5\", \"[fd00::5]\", \"bad_name\"]\n",
            "admin.allowed_hosts.3",
            "is not a host name",
        ),
        (
            "flow = \"device_code\"",
            "[admin]\nmetrics_auth = true\n",
            "admin.metrics_auth",
            "needs admin.password_hash",
        ),
    ];
    for (account, extra, key, words) in cases {
        let text = format!("{extra}{}", with_account(account));
        let f = write(&text);
        match load_with_env(Some(&f.0), no_env()) {
            Ok(l) if key.is_empty() => {
                if !words.is_empty() {
                    assert!(
                        l.warnings.iter().any(|w| w.message.contains(words)),
                        "{account}: no warning with {words:?} in {:?}",
                        l.warnings
                    );
                }
            }
            Ok(_) => panic!("{account}: loaded, expected a problem at {key}"),
            Err(e) => {
                assert!(
                    e.problems
                        .iter()
                        .any(|p| p.key == *key && p.message.contains(words)),
                    "{account}: expected {key} with {words:?}, got {e}"
                );
            }
        }
    }

    // master_key_file must be readable when a delegated account needs it.
    let text = with_account("flow = \"device_code\"").replace(
        "dir = \"/tmp/s2o\"",
        "dir = \"/tmp/s2o\"\nmaster_key_file = \"/nonexistent/key\"",
    );
    let f = write(&text);
    let e = load_with_env(Some(&f.0), no_env()).unwrap_err();
    assert!(
        e.problems.iter().any(|p| p.key == "store.master_key_file"),
        "{e}"
    );
}

#[test]
fn smtp_auth_defaults_to_xoauth2_and_is_checked_against_the_route_and_host() {
    assert_eq!(smtp_of(&first_spec(MINIMAL).route).auth, SmtpAuth::Xoauth2);

    // (account keys, problem key expected ("" = loads), words expected in that problem, or in
    // a warning when it loads)
    let generic =
        "provider = \"generic\"\ntoken_url = \"https://idp.example/token\"\nscope = \"mail\"";
    let cases: &[(String, &str, &str)] = &[
        (
            format!("{generic}\nsmtp_host = \"mail.example.net\"\nsmtp_auth = \"oauthbearer\""),
            "",
            "",
        ),
        (
            format!("{generic}\nsmtp_host = \"mail.example.net\"\nsmtp_auth = \"OAUTHBEARER\""),
            "",
            "",
        ),
        (
            "smtp_host = \"mail.example.net\"\nsmtp_auth = \"xoauth2\"".into(),
            "",
            "",
        ),
        (
            "flow = \"authorization_code\"\nprovider = \"google\"\nsmtp_auth = \"oauthbearer\""
                .into(),
            "",
            "",
        ),
        // Exchange Online offers only XOAUTH2: mail would bounce at AUTH.
        (
            "smtp_auth = \"oauthbearer\"".into(),
            "accounts.0.smtp_auth",
            "smtp.office365.com",
        ),
        (
            format!("{generic}\nsmtp_auth = \"oauthbearer\""),
            "accounts.0.smtp_auth",
            "offers only AUTH XOAUTH2",
        ),
        (
            "smtp_auth = \"plain\"".into(),
            "accounts.0.smtp_auth",
            "is not one of \"xoauth2\" or \"oauthbearer\"",
        ),
        // Meaningless without an SMTP route: loads, with a warning.
        (
            "route = \"graph\"\nsmtp_auth = \"oauthbearer\"".into(),
            "",
            "only applies to route \"smtp\"",
        ),
        (
            "route = \"capture\"\nsmtp_auth = \"xoauth2\"".into(),
            "",
            "only applies to route \"smtp\"",
        ),
        (
            "route = \"graph\"\nfallback_route = \"smtp\"\nsmtp_host = \"mail.example.net\"\nsmtp_auth = \"oauthbearer\"".into(),
            "",
            "",
        ),
    ];
    for (keys, key, words) in cases {
        let f = write(&with_account_keys(keys));
        match load_with_env(Some(&f.0), no_env()) {
            Ok(l) if key.is_empty() => {
                let warned = l
                    .warnings
                    .iter()
                    .any(|w| w.key == "accounts.0.smtp_auth" && w.message.contains(words));
                assert_eq!(
                    warned,
                    !words.is_empty(),
                    "{keys}: warnings {:?}",
                    l.warnings
                );
                if keys.contains("oauthbearer") || keys.contains("OAUTHBEARER") {
                    let smtp = l.accounts[0].routes().find_map(|r| match r {
                        RouteSpec::Smtp(s) => Some(s.auth),
                        _ => None,
                    });
                    // Without an SMTP route the key is ignored (with the warning above).
                    let has_smtp =
                        !keys.contains("route = \"graph\"\nsmtp_auth") && !keys.contains("capture");
                    assert_eq!(smtp, has_smtp.then_some(SmtpAuth::Oauthbearer), "{keys}");
                }
            }
            Ok(_) => panic!("{keys}: loaded, expected a problem at {key}"),
            Err(e) => assert!(
                e.to_string().contains(key) && e.to_string().contains(words),
                "{keys}: expected {key} with {words:?}, got {e}"
            ),
        }
    }
}

#[test]
fn specs_carry_the_keys_of_their_route_and_credential() {
    // A certificate credential, a smart host with a client certificate, per-account limits.
    let a = first_spec(&MINIMAL.replace(
        "client_secret = \"s3cret-value\"\n",
        "certificate_file = \"/etc/hostname\"\nprivate_key_file = \"/etc/hostname\"\njwt_alg = \"RS256\"\nroute = \"smarthost\"\nsmarthost_host = \"mx.contoso.com\"\nsmarthost_port = 2525\nsmarthost_tls = \"opportunistic\"\ntls_client_cert_file = \"/etc/hostname\"\ntls_client_key_file = \"/etc/hostname\"\nfallback_route = \"graph\"\nbounce_to = \"it@contoso.com\"\nmax_upstream_connections = 7\nmax_messages_per_minute = 12\n",
    ));
    let RouteSpec::Smarthost(s) = &a.route else {
        panic!("{a:?}");
    };
    assert_eq!(s.destination, Destination::Host("mx.contoso.com".into()));
    assert_eq!((s.port, s.tls), (2525, SmarthostTls::Opportunistic));
    assert_eq!(
        s.client_cert,
        Some(CertificatePair {
            cert_file: "/etc/hostname".into(),
            key_file: "/etc/hostname".into(),
        })
    );
    assert!(s.dns_servers.is_empty());
    assert_eq!(
        graph_of(a.fallback.as_ref().unwrap()).scope,
        "https://graph.microsoft.com/.default"
    );
    assert!(matches!(
        &oauth_of(&a).flow,
        FlowSpec::ClientCredentials {
            credential: Credential::Certificate {
                alg: JwtAlg::RS256,
                ..
            }
        }
    ));
    assert_eq!(a.bounce_to.as_deref(), Some("it@contoso.com"));
    assert_eq!((a.max_connections, a.messages_per_minute), (7, 12));

    // Capture: the store's directory by default; no token, whatever `flow` says.
    let a = first_spec(&with_account_keys(
        "route = \"capture\"\nflow = \"device_code\"",
    ));
    assert!(matches!(&a.route, RouteSpec::Capture { dir } if dir.ends_with("s2o/capture")));
    assert!(a.oauth.is_none() && a.flow().is_none() && a.delegated().is_none());

    // [delivery] defaults reach the spec.
    let a = first_spec(&format!(
        "[delivery]\nbounce_to = \"pm@contoso.com\"\nmax_upstream_connections = 2\n{MINIMAL}"
    ));
    assert_eq!(a.bounce_to.as_deref(), Some("pm@contoso.com"));
    assert_eq!(a.max_connections, 2);
}

#[test]
fn an_account_with_problems_has_no_spec_and_the_others_keep_theirs() {
    let text = MINIMAL.replacen(
        "[[devices]]",
        "[[accounts]]\nname = \"broken\"\nmailbox = \"b@contoso.com\"\nroute = \"smarthost\"\n\n[[devices]]",
        1,
    );
    let checked = check(&parse_str(&text, no_env()).unwrap());
    assert_eq!(
        checked
            .problems
            .iter()
            .map(|p| p.key.as_str())
            .collect::<Vec<_>>(),
        ["accounts.1.smarthost_host"]
    );
    let names: Vec<_> = checked.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["scanner"]);
}

#[test]
fn notify_defaults_and_checks() {
    let c = parse_str(MINIMAL, no_env()).unwrap();
    assert_eq!(c.notify.webhook_format, WebhookFormat::Json);
    assert_eq!(
        c.notify.alert_queue_age,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(
        c.notify.repeat_interval,
        std::time::Duration::from_secs(6 * 3600)
    );
    assert_eq!(c.admin.recent_messages, 1000);
    assert!(check(&c).problems.is_empty());

    let text = format!(
        "[notify]\nwebhook_url = \"hooks.example/x\"\nwebhook_format = \"teams\"\nnotify_account = \"nosuch\"\nemail_to = [\"it@contoso.com\", \"not an address\"]\nalert_queue_age = \"30m\"\n{MINIMAL}"
    );
    let c = parse_str(&text, no_env()).unwrap();
    assert_eq!(c.notify.webhook_format, WebhookFormat::Teams);
    let problems: Vec<(String, String)> = check(&c)
        .problems
        .into_iter()
        .map(|p| (p.key, p.message))
        .collect();
    assert_eq!(
        problems,
        [
            (
                "notify.webhook_url".to_string(),
                "must be an http:// or https:// URL (the receiver's webhook address)".to_string()
            ),
            (
                "notify.notify_account".to_string(),
                "`nosuch` is not the name of an [[accounts]] entry".to_string()
            ),
            (
                "notify.email_to.1".to_string(),
                "`not an address` is not an e-mail address".to_string()
            ),
        ]
    );
    // The webhook URL is a secret: it never shows in the configuration's debug form.
    let text = format!(
        "[notify]\nwebhook_url = \"https://hooks.slack.com/services/T0/B0/s3cr3t\"\n{MINIMAL}"
    );
    let c = parse_str(&text, no_env()).unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

/// `graph_large_messages`: its default follows `fallback_route`, `"upload"` lets devices send
/// up to the server's limit, and what cannot work is refused with the key's path.
#[test]
fn graph_large_messages_defaults_limits_and_problems() {
    use GraphLargeMessages::*;
    // (account keys, the Graph route's mode, the device's limit, the Graph route's own limit)
    let server = 36_700_160;
    let cases: &[(&str, GraphLargeMessages, u64, u64)] = &[
        (
            "route = \"graph\"",
            Refuse,
            GRAPH_MAX_MESSAGE_SIZE,
            GRAPH_MAX_MESSAGE_SIZE,
        ),
        (
            "route = \"graph\"\nfallback_route = \"smtp\"",
            Fallback,
            server,
            GRAPH_MAX_MESSAGE_SIZE,
        ),
        (
            "route = \"graph\"\ngraph_large_messages = \"upload\"",
            Upload,
            server,
            server,
        ),
        (
            "route = \"graph\"\ngraph_large_messages = \"upload\"\nmax_message_size = 20000000",
            Upload,
            20_000_000,
            20_000_000,
        ),
        (
            "route = \"graph\"\nfallback_route = \"smtp\"\ngraph_large_messages = \"upload\"",
            Upload,
            server,
            server,
        ),
        // Refused on purpose although a fallback exists: the devices are told Graph's limit.
        (
            "route = \"graph\"\nfallback_route = \"smtp\"\ngraph_large_messages = \"refuse\"",
            Refuse,
            GRAPH_MAX_MESSAGE_SIZE,
            GRAPH_MAX_MESSAGE_SIZE,
        ),
        // Graph as the fallback of SMTP.
        (
            "route = \"smtp\"\nfallback_route = \"graph\"\ngraph_large_messages = \"upload\"",
            Upload,
            server,
            server,
        ),
        (
            "route = \"smtp\"\nfallback_route = \"graph\"",
            Refuse,
            server,
            GRAPH_MAX_MESSAGE_SIZE,
        ),
    ];
    for (keys, mode, device, route) in cases {
        let a = first_spec(&with_account_keys(keys));
        let graph = a
            .routes()
            .find_map(|r| match r {
                RouteSpec::Graph(g) => Some(g.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(graph.large_messages, *mode, "{keys}");
        assert_eq!(a.max_message_size, *device, "{keys}: the device's limit");
        assert_eq!(graph.max_message_size, *route, "{keys}: the route's limit");
    }

    // What cannot work.
    for (keys, words) in [
        (
            "route = \"graph\"\ngraph_large_messages = \"fallback\"",
            "needs a fallback_route",
        ),
        (
            "route = \"smtp\"\nfallback_route = \"graph\"\ngraph_large_messages = \"fallback\"",
            "Graph is the fallback route itself",
        ),
        (
            "route = \"graph\"\ngraph_large_messages = \"send\"",
            "\"send\" is not one of \"upload\", \"fallback\" or \"refuse\"",
        ),
        (
            "route = \"graph\"\nfallback_route = \"smtp\"\ngraph_large_messages = \"refuse\"\nmax_message_size = 10000000",
            "graph_large_messages = \"upload\"",
        ),
    ] {
        let f = write(&with_account_keys(keys));
        let e = load_with_env(Some(&f.0), no_env()).unwrap_err().to_string();
        assert!(e.contains(words), "{keys}: {e}");
        assert!(
            e.contains("accounts.0.graph_large_messages")
                || e.contains("accounts.0.max_message_size"),
            "{keys}: {e}"
        );
    }

    // Warnings: the default "refuse" names "upload"; the key without Graph is ignored.
    let warnings = |keys: &str| {
        let f = write(&with_account_keys(keys));
        let l = load_with_env(Some(&f.0), no_env()).unwrap_or_else(|e| panic!("{keys}: {e}"));
        l.warnings
            .into_iter()
            .filter(|w| w.key == "accounts.0.graph_large_messages")
            .map(|w| w.message)
            .collect::<Vec<_>>()
    };
    let w = warnings("route = \"graph\"");
    assert!(
        w.len() == 1 && w[0].contains("\"upload\"") && w[0].contains("Mail.ReadWrite"),
        "{w:?}"
    );
    assert!(warnings("route = \"graph\"\ngraph_large_messages = \"refuse\"").is_empty());
    assert!(warnings("route = \"graph\"\nfallback_route = \"smtp\"").is_empty());
    assert!(warnings("route = \"graph\"\ngraph_large_messages = \"upload\"").is_empty());
    let w = warnings("graph_large_messages = \"upload\"");
    assert!(w.len() == 1 && w[0].contains("is ignored"), "{w:?}");
    let w = warnings("route = \"graph\"\ngraph_large_messages = \"upload\"\n");
    assert!(w.is_empty(), "{w:?}");
    let big = with_account_keys("route = \"graph\"\ngraph_large_messages = \"upload\"")
        .replace("[server]\n", "[server]\nmax_message_size = 209715200\n");
    let f = write(&big);
    let l = load_with_env(Some(&f.0), no_env()).unwrap();
    assert!(
        l.warnings
            .iter()
            .any(|w| w.key == "accounts.0.graph_large_messages" && w.message.contains("150 MiB")),
        "{:?}",
        l.warnings
    );
}

/// A delegated Graph account that uploads asks for `Mail.ReadWrite` as well: a draft is a
/// write to the mailbox.
#[test]
fn delegated_upload_asks_for_mail_readwrite() {
    let keys = |extra: &str| {
        with_account_keys(&format!(
            "route = \"graph\"\nflow = \"device_code\"\n{extra}"
        ))
        .replace("client_secret = \"s3cret-value\"\n", "")
    };
    let a = first_spec(&keys("graph_large_messages = \"upload\""));
    assert_eq!(
        graph_of(&a.route).scope,
        "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite offline_access"
    );
    let a = first_spec(&keys("graph_large_messages = \"refuse\""));
    assert_eq!(
        graph_of(&a.route).scope,
        "https://graph.microsoft.com/Mail.Send offline_access"
    );
}
