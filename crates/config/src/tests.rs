use super::*;
use std::io::Write;

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

#[test]
fn minimal_config_loads_with_defaults() {
    let f = write(MINIMAL);
    let l = load_with_env(Some(&f.0), no_env()).unwrap();
    let c = &l.config;
    assert_eq!(c.hostname(), "relay.test");
    assert_eq!(c.server.max_message_size, 36_700_160);
    assert_eq!(c.listeners[0].label(), "smtp-2525");
    let a = &c.accounts[0];
    assert_eq!(
        a.token_url().unwrap(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(a.scope(), "https://outlook.office365.com/.default");
    assert_eq!(
        (a.smtp_host().as_str(), a.smtp_port(), a.smtp_tls()),
        ("smtp.office365.com", 587, UpstreamTls::Starttls)
    );
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
    let c = load_with_env(Some(&f.0), env).unwrap().config;
    assert_eq!(c.hostname(), "from-env.test");
    assert_eq!(c.server.command_timeout.as_secs(), 45);
    assert_eq!(
        c.accounts[0].client_secret.as_ref().unwrap().expose(),
        "env-secret"
    );
    assert_eq!(c.accounts[0].smtp_port(), 2587);
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
    let c = load_with_env(Some(&f.0), no_env()).unwrap().config;
    assert_eq!(
        c.accounts[0].client_secret().unwrap().unwrap().expose(),
        "file-secret"
    );
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
    let c = load_with_env(Some(&f.0), no_env()).unwrap().config;
    let a = &c.accounts[0];
    assert_eq!(a.scope(), "https://outlook.office365.us/.default");
    assert_eq!(a.smtp_host(), "smtp.office365.us");
    assert_eq!(
        a.token_url().unwrap(),
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
    let f = write(&with_account_keys(
        "route = \"graph\"\nfallback_route = \"smtp\"",
    ));
    let c = load_with_env(Some(&f.0), no_env()).unwrap().config;
    let a = &c.accounts[0];
    assert_eq!(a.graph_url(), "https://graph.microsoft.com");
    assert_eq!(a.scope(), "https://graph.microsoft.com/.default");
    assert_eq!(
        a.scope_for(Route::Graph),
        "https://graph.microsoft.com/.default"
    );
    assert_eq!(
        a.scope_for(Route::Smtp),
        "https://outlook.office365.com/.default"
    );
    // With an SMTP fallback, Graph's size limit does not cap the device.
    assert_eq!(a.message_size_limit(36_700_160), 36_700_160);

    let f = write(&with_account_keys(
        "route = \"graph\"\nauthority = \"https://login.microsoftonline.us\"\ngraph_url = \"https://127.0.0.1:9/\"",
    ));
    let c = load_with_env(Some(&f.0), no_env()).unwrap().config;
    let a = &c.accounts[0];
    assert_eq!(a.graph_url(), "https://127.0.0.1:9");
    assert_eq!(a.scope(), "https://graph.microsoft.us/.default");
    assert_eq!(a.message_size_limit(36_700_160), GRAPH_MAX_MESSAGE_SIZE);
    assert_eq!(a.message_size_limit(1_000_000), 1_000_000);

    let f = write(&with_account_keys(
        "route = \"smarthost\"\nmx_domain = \"contoso.com\"",
    ));
    let c = load_with_env(Some(&f.0), no_env()).unwrap().config;
    let a = &c.accounts[0];
    assert_eq!(a.smarthost_port(), 25);
    assert_eq!(a.smarthost_tls(), SmarthostTls::Required);
    assert!(!a.needs_token());
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
    let a = &l.config.accounts[0];
    assert!(a.is_delegated());
    assert_eq!(
        a.scope(),
        "https://outlook.office.com/SMTP.Send offline_access"
    );
    assert_eq!(
        a.device_code_url().unwrap(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    );
    assert_eq!(
        a.authorize_url().unwrap(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    );
    assert_eq!(a.redirect_uri(), "http://localhost:8025/oauth/callback");
    assert_eq!(l.config.store.master_key_file, None);
    assert!(l.config.admin.password_hash.is_none());

    let f = write(&with_account(
        "flow = \"authorization_code\"\nauthority = \"https://login.microsoftonline.us\"",
    ));
    let a = load_with_env(Some(&f.0), no_env()).unwrap().config.accounts[0].clone();
    assert_eq!(
        a.scope(),
        "https://outlook.office365.us/SMTP.Send offline_access"
    );

    let f = write(&with_account(
        "flow = \"authorization_code\"\nprovider = \"google\"\nclient_secret = \"g\"",
    ));
    let a = load_with_env(Some(&f.0), no_env()).unwrap().config.accounts[0].clone();
    assert_eq!(a.scope(), "https://mail.google.com/");
    assert_eq!(
        a.authorize_url().unwrap(),
        "https://accounts.google.com/o/oauth2/v2/auth"
    );
    assert_eq!(
        a.token_url().unwrap(),
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
    let f = write(MINIMAL);
    let a = load_with_env(Some(&f.0), no_env()).unwrap().config.accounts[0].clone();
    assert_eq!(a.smtp_auth(), SmtpAuth::Xoauth2);

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
            "unknown variant",
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
                    assert_eq!(l.config.accounts[0].smtp_auth(), SmtpAuth::Oauthbearer);
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
