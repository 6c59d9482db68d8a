//! Property tests of the configuration loader: the stable, in-suite equivalent of the `config`
//! fuzz target (fuzz/, docs/fuzzing.md). An admin's typo must give a list of problems, never a
//! panic; and a client secret from the environment must arrive exactly as written.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp2oauth_config::{check, parse_str, validate};

const EXAMPLE: &str = include_str!("../../../config/smtp2oauth.example.toml");

/// TOML-ish text: the example config cut, spliced and sprinkled with syntax and odd values.
fn mutated_example() -> impl Strategy<Value = String> {
    const PIECES: &[&str] = &[
        "\n[server]\n",
        "\n[[accounts]]\n",
        "\n[[devices]]\n",
        "\n[[listeners]]\n",
        "name = \"x\"\n",
        "max_message_size = -1\n",
        "max_message_size = 18446744073709551616\n",
        "command_timeout = \"99999999999d\"\n",
        "command_timeout = \"1.5h\"\n",
        "command_timeout = -3\n",
        "wait_for_upstream = \"nan\"\n",
        "address = \"0.0.0.0:99999\"\n",
        "allow_ips = [\"10.0.0.0/33\"]\n",
        "tls = \"legacy\"\n",
        "route = \"smtp\"\n",
        "client_secret = 123\n",
        "unknown_key = true\n",
        "= \n",
        "\"",
        "[",
        "]",
        "é",
        "\\u0000",
    ];
    (
        0..EXAMPLE.len(),
        0..EXAMPLE.len(),
        proptest::collection::vec(0..PIECES.len(), 0..6),
    )
        .prop_map(|(a, b, pieces)| {
            let (a, b) = (a.min(b), a.max(b));
            let cut = |i: usize| {
                let mut i = i;
                while !EXAMPLE.is_char_boundary(i) {
                    i -= 1;
                }
                i
            };
            let mut text = EXAMPLE[..cut(a)].to_string();
            for p in pieces {
                text.push_str(PIECES[p]);
            }
            text.push_str(&EXAMPLE[cut(b)..]);
            text
        })
}

/// Environment variables, some addressing entries of arrays of tables by index or name.
fn env_var() -> impl Strategy<Value = (String, String)> {
    let key = prop_oneof![
        Just("SMTP2OAUTH_SERVER__HOSTNAME"),
        Just("SMTP2OAUTH_SERVER__MAX_MESSAGE_SIZE"),
        Just("SMTP2OAUTH_ACCOUNTS__0__CLIENT_SECRET"),
        Just("SMTP2OAUTH_ACCOUNTS__SCANNER__ROUTE"),
        Just("SMTP2OAUTH_ACCOUNTS__5__NAME"),
        Just("SMTP2OAUTH_ACCOUNTS__NEW__MAILBOX"),
        Just("SMTP2OAUTH_DEVICES__0__ALLOW_IPS"),
        Just("SMTP2OAUTH_LISTENERS__0"),
        Just("SMTP2OAUTH___"),
        Just("SMTP2OAUTH_DELIVERY__WAIT_FOR_UPSTREAM"),
    ];
    // Any characters, including non-ASCII before a backslash (which once panicked inside
    // figment's unescaping; see crates/config/src/env.rs).
    (key, "\\PC{0,24}").prop_map(|(k, v)| (k.to_string(), v))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any text: parsed or refused with at least one problem, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        if let Err(e) = parse_str(&text, Vec::new()) {
            prop_assert!(!e.problems.is_empty());
        }
    }

    /// A damaged example config and odd environment values: problems, never a panic; what
    /// parses also validates without a panic.
    #[test]
    fn damaged_config_and_environment_never_panic(
        text in mutated_example(),
        vars in proptest::collection::vec(env_var(), 0..4),
    ) {
        match parse_str(&text, vars) {
            Err(e) => {
                prop_assert!(!e.problems.is_empty());
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(cfg) => {
                // Every account without problems of its own becomes a spec; a config without
                // problems has a spec for every account, in order.
                let checked = check(&cfg);
                prop_assert!(checked.accounts.len() <= cfg.accounts.len());
                if checked.problems.is_empty() {
                    let names: Vec<_> = checked.accounts.iter().map(|a| a.name.as_str()).collect();
                    let want: Vec<_> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
                    prop_assert_eq!(names, want);
                }
                prop_assert_eq!(validate(&cfg).0, checked.problems);
            }
        }
    }

    /// A client secret in the environment, made of the characters Entra ID uses, arrives as
    /// written: digits stay digits (`00123`), `true` stays text, `1.50` keeps its zero.
    #[test]
    fn client_secret_from_the_environment_is_kept_verbatim(
        secret in prop_oneof!["[A-Za-z0-9~._-]{1,40}", "[0-9]{1,20}", "[0-9]{1,5}\\.[0-9]{1,5}0", Just("true".to_string()), Just("-0".to_string()), Just("1e5".to_string())],
    ) {
        let vars = vec![("SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET".to_string(), secret.clone())];
        let cfg = parse_str(EXAMPLE, vars).expect("the example config parses");
        let got = cfg.account("scanner").and_then(|a| a.client_secret.as_ref()).map(|s| s.expose().to_string());
        prop_assert_eq!(got, Some(secret));
    }
}
