//! The exact messages an admin reads for the mistakes they make most: where (file and line, or
//! the environment variable), which key, and what to write instead. docs/configuration.md shows
//! these; a change here is a change there.

use super::*;

/// The problems of loading `toml` with `env`, each as printed, with the file's path as `FILE`.
fn problems(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
    let f = write(toml);
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let e = load_with_env(Some(&f.0), env).expect_err("problems");
    let path = f.0.display().to_string();
    e.problems
        .iter()
        .map(|p| p.to_string().replace(&path, "FILE"))
        .collect()
}

/// MINIMAL with `extra` added to the table `[table]` (which it must have).
fn with(table: &str, extra: &str) -> String {
    MINIMAL.replacen(&format!("[{table}]\n"), &format!("[{table}]\n{extra}\n"), 1)
}

#[test]
fn a_typo_names_the_line_and_the_key_meant() {
    let toml = MINIMAL.replace("hostname = \"relay.test\"", "hostnme = \"relay.test\"");
    assert_eq!(
        problems(&toml, &[]),
        ["FILE:3: `server.hostnme`: unknown key; did you mean `hostname`?"]
    );
    let toml = with("[accounts]", "clientid = \"x\"");
    assert_eq!(
        problems(&toml, &[]),
        ["FILE:14: `accounts.0.clientid`: unknown key; did you mean `client_id`?"]
    );
    // Nothing close: where to look instead of 40 names.
    let toml = with("store", "colour = \"blue\"");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:11: `store.colour`: unknown key; the keys here are \"dir\", \"fsync\", \"min_free_space\" or \"master_key_file\""
        ]
    );
    let toml = with("[accounts]", "colour = \"blue\"");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:14: `accounts.0.colour`: unknown key; docs/configuration.md lists the keys of [[accounts]] with what each does"
        ]
    );
    // The same typo in the environment names the variable.
    assert_eq!(
        problems(MINIMAL, &[("SMTP2OAUTH_SERVER__HOSTNME", "x")]),
        [
            "environment variable SMTP2OAUTH_SERVER__HOSTNME: `server.hostnme`: unknown key; did you mean `hostname`?"
        ]
    );
}

#[test]
fn type_errors_say_what_belongs_there() {
    let toml = format!("{MINIMAL}\n[delivery]\nwait_for_upstream = true\n");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:32: `delivery.wait_for_upstream`: expected a duration such as \"20s\", found a boolean"
        ]
    );
    let toml = with("server", "max_message_size = \"big\"");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:3: `server.max_message_size`: expected a whole number (such as 25), found the string \"big\""
        ]
    );
    let toml = MINIMAL.replace("tls = \"none\"", "tls = \"startls\"");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:7: `listeners.0.tls`: \"startls\" is not one of \"none\", \"starttls\" or \"implicit\"; did you mean \"starttls\"?"
        ]
    );
    let toml = MINIMAL.replace("127.0.0.1:2525", "relay:smtp");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:6: `listeners.0.address`: expected an address with a port, such as \"127.0.0.1:2525\" or \"[::1]:2525\""
        ]
    );
    let toml = MINIMAL.replace("mailbox = \"scanner@contoso.com\"\n", "");
    assert_eq!(
        problems(&toml, &[]),
        ["FILE:13: `accounts.0.mailbox`: is required here, and missing"]
    );
    let toml = MINIMAL.replace("[server]\nhostname", "[server\nhostname");
    assert_eq!(
        problems(&toml, &[]),
        ["FILE:2: not valid TOML: invalid table header; expected `.`, `]`"]
    );
}

#[test]
fn a_tenant_is_an_id_or_a_domain_and_a_microsoft_client_id_a_guid() {
    let url = "https://login.microsoftonline.com/contoso.onmicrosoft.com/";
    let toml = MINIMAL.replace(
        "tenant = \"contoso.onmicrosoft.com\"",
        &format!("tenant = \"{url}\""),
    );
    assert_eq!(
        problems(&toml, &[]),
        [format!(
            "FILE:16: `accounts.0.tenant`: `{url}` is a URL: put only the domain or tenant ID here (`contoso.onmicrosoft.com`); the URL goes in `authority`"
        )]
    );
    let toml = MINIMAL.replace(
        "tenant = \"contoso.onmicrosoft.com\"",
        "tenant = \"contoso\"",
    );
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:16: `accounts.0.tenant`: `contoso` is neither a tenant ID (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47) nor a domain of the tenant (such as contoso.onmicrosoft.com)"
        ]
    );
    for good in [
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "contoso.onmicrosoft.com",
        "organizations",
    ] {
        let toml = MINIMAL.replace("contoso.onmicrosoft.com\"", &format!("{good}\""));
        let f = write(&toml);
        assert!(load_with_env(Some(&f.0), no_env()).is_ok(), "{good}");
    }
    let toml = MINIMAL.replace("11111111-2222-3333-4444-555555555555", "my app");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:17: `accounts.0.client_id`: `my app` is not an Application (client) ID: Entra ID shows it on the app registration's Overview page as a GUID such as 11111111-2222-3333-4444-555555555555"
        ]
    );
}

#[test]
fn an_environment_variable_for_an_entry_the_file_lacks_is_an_error() {
    let secret = ("SMTP2OAUTH_ACCOUNTS__SCANER__CLIENT_SECRET", "x");
    assert_eq!(
        problems(MINIMAL, &[secret]),
        [
            "environment variable SMTP2OAUTH_ACCOUNTS__SCANER__CLIENT_SECRET: no [[accounts]] entry is named `scaner` (did you mean `scanner`? the accounts are `scanner`); to add one from the environment, set SMTP2OAUTH_ACCOUNTS__1__NAME"
        ]
    );
    assert_eq!(
        problems(
            MINIMAL,
            &[("SMTP2OAUTH_LISTENERS__SMTP__ADDRESS", "127.0.0.1:25")]
        ),
        [
            "environment variable SMTP2OAUTH_LISTENERS__SMTP__ADDRESS: no [[listeners]] entry is named `smtp` (no [[listeners]] entry has a name: address them by index, from 0); to add one from the environment, set SMTP2OAUTH_LISTENERS__1__NAME"
        ]
    );
    // An entry added by index can then be addressed by name; nothing else is created.
    let f = write(MINIMAL);
    let env = [
        ("SMTP2OAUTH_ACCOUNTS__1__NAME", "nas"),
        ("SMTP2OAUTH_ACCOUNTS__1__MAILBOX", "nas@contoso.com"),
        ("SMTP2OAUTH_ACCOUNTS__NAS__ROUTE", "capture"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let l = load_with_env(Some(&f.0), env).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = l.config.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["scanner", "nas"]);
    assert_eq!(l.config.accounts[1].route, Route::Capture);
}

#[test]
fn validation_problems_point_at_their_line_or_variable() {
    let toml = MINIMAL.replace("client_secret = \"s3cret-value\"\n", "");
    assert_eq!(
        problems(&toml, &[]),
        [
            "FILE:13: `accounts.0.client_secret`: a credential is required: client_secret, client_secret_file, or certificate_file + private_key_file"
        ]
    );
    let env = [("SMTP2OAUTH_DEVICES__MFP_3F__ACCOUNT", "nas")];
    assert_eq!(
        problems(MINIMAL, &env),
        [
            "environment variable SMTP2OAUTH_DEVICES__MFP_3F__ACCOUNT: `devices.0.account`: no [[accounts]] entry is named `nas`"
        ]
    );
}

#[test]
fn an_admin_server_open_to_the_network_without_a_password_is_a_warning() {
    assert_eq!(admin_exposure("127.0.0.1:8025", false, false), None);
    assert_eq!(admin_exposure("[::1]:8025", false, true), None);
    assert_eq!(admin_exposure("0.0.0.0:8025", true, false), None);
    assert_eq!(admin_exposure("", false, false), None);
    assert_eq!(
        admin_exposure("0.0.0.0:8025", false, false).unwrap(),
        "0.0.0.0:8025 is reachable from the network and [admin] has no password_hash: anyone who can reach it can sign accounts in and out and retry or delete queued mail; set password_hash (from `smtp2oauth hash-password`), or listen on 127.0.0.1:8025"
    );
    assert_eq!(
        admin_exposure("0.0.0.0:8025", false, true).unwrap(),
        "0.0.0.0:8025 is reachable from the network and [admin] has no password_hash: anyone who can reach it can sign accounts in and out and retry or delete queued mail; this is a container, so publish the port on the host's loopback only (`-p 127.0.0.1:8025:8025`, or `\"127.0.0.1:8025:8025\"` under `ports:` in Compose), or set password_hash (from `smtp2oauth hash-password`)"
    );
    // check() gives it as a warning on `admin.listen`, in or out of a container.
    let c = parse_str(
        &format!("{MINIMAL}\n[admin]\nlisten = \"192.168.1.5:8025\"\n"),
        no_env(),
    )
    .unwrap();
    let checked = check(&c);
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    assert!(
        checked
            .warnings
            .iter()
            .any(|w| w.key == "admin.listen" && w.message.contains("has no password_hash")),
        "{:?}",
        checked.warnings
    );
}

/// The configurations behind the messages docs/configuration.md shows under "Messages you will
/// meet": MINIMAL changed one way each, with environment variables.
fn documented_cases() -> Vec<(String, Vec<(&'static str, &'static str)>)> {
    vec![
        (MINIMAL.replace("hostname = ", "hostnme = "), vec![]),
        (
            format!("{MINIMAL}\n[delivery]\nwait_for_upstream = true\n"),
            vec![],
        ),
        (
            MINIMAL.replace("tls = \"none\"", "tls = \"startls\""),
            vec![],
        ),
        (
            MINIMAL.replace(
                "tenant = \"contoso.onmicrosoft.com\"",
                "tenant = \"https://login.microsoftonline.com/contoso.onmicrosoft.com/\"",
            ),
            vec![],
        ),
        (
            MINIMAL.replace("11111111-2222-3333-4444-555555555555", "my app"),
            vec![],
        ),
        (
            MINIMAL.replace("mailbox = \"scanner@contoso.com\"\n", ""),
            vec![],
        ),
        (
            MINIMAL.to_string(),
            vec![("SMTP2OAUTH_ACCOUNTS__SCANER__CLIENT_SECRET", "x")],
        ),
        (
            MINIMAL.to_string(),
            vec![("SMTP2OAUTH_DEVICES__MFP_3F__ACCOUNT", "nas")],
        ),
    ]
}

#[test]
fn the_messages_the_docs_show_are_the_ones_printed() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let section = doc
        .split("### Messages you will meet")
        .nth(1)
        .expect("docs/configuration.md has a section \"Messages you will meet\"");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```text block of messages");
    let produced: Vec<String> = documented_cases()
        .iter()
        .flat_map(|(toml, env)| problems(toml, env))
        .map(|m| m.replace("FILE", "/etc/smtp2oauth/smtp2oauth.toml"))
        .collect();
    let shown: Vec<&str> = block.lines().collect();
    assert_eq!(shown.len(), documented_cases().len());
    for line in shown {
        assert!(
            produced.iter().any(|p| p == line),
            "docs/configuration.md shows a message the loader does not print:\n{line}\nit prints:\n{}",
            produced.join("\n")
        );
    }
}
