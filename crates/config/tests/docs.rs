//! Every TOML example in README.md and docs/*.md loads: a wrong key, a wrong type or a rule the
//! validation enforces fails this test, so an example cannot drift from the schema.
//!
//! The convention (docs/configuration.md, "Examples in these docs"):
//! - ```` ```toml ````: whole tables. The block is merged into a minimal configuration (the
//!   tables it has replace that configuration's) and must load and validate. Only problems
//!   about files that exist on the reader's machine (`cannot read /etc/...`) are allowed.
//! - ```` ```toml fragment [[accounts]] ````: keys that belong in the table named after
//!   `fragment`; they must be keys of that table, with the right types.

#![allow(clippy::unwrap_used)]

use smtp2oauth_config::{check, parse_str};
use std::path::{Path, PathBuf};

/// One fenced block: where it is, its info string and its text (indentation removed).
struct Block {
    file: String,
    line: usize,
    info: String,
    text: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every docs/*.md.
fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The fenced code blocks of a markdown text, with their indentation (list items) removed.
fn blocks(file: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let mut body = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push(l.get(indent..).unwrap_or(l.trim_start()));
        }
        out.push(Block {
            file: file.to_string(),
            line: n + 1,
            info: info.trim().to_string(),
            text: body.join("\n") + "\n",
        });
    }
    out
}

/// The minimal configuration a block of tables is merged into, by table.
const BASE: &[(&str, &str)] = &[
    (
        "listeners",
        "[[listeners]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nallow_insecure_auth = true\n",
    ),
    (
        "accounts",
        "[[accounts]]\nname = \"scanner\"\nmailbox = \"scanner@contoso.com\"\nroute = \"capture\"\n",
    ),
    (
        "devices",
        "[[devices]]\nusername = \"base-device\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\naccount = \"ACCOUNT\"\n",
    ),
];

/// `block` merged into [`BASE`]: the base's tables that the block does not have, with the
/// base device sending as the first account there is.
fn merged(block: &toml_edit::ImDocument<&str>, text: &str) -> String {
    let has = |t: &str| block.as_table().contains_key(t);
    let first_account = block
        .get("accounts")
        .and_then(|a| a.as_array_of_tables())
        .and_then(|a| a.get(0))
        .and_then(|t| t.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("scanner");
    let mut out = text.to_string();
    for (table, base) in BASE {
        if !has(table) {
            out.push('\n');
            out.push_str(&base.replace("ACCOUNT", first_account));
        }
    }
    out
}

/// Why a block of whole tables does not load, if it does not.
fn whole_tables(b: &Block) -> Result<(), String> {
    let doc = toml_edit::ImDocument::parse(b.text.as_str()).map_err(|e| e.to_string())?;
    if let Some((k, _)) = doc
        .as_table()
        .iter()
        .find(|(_, v)| !v.is_table_like() && !v.is_array_of_tables())
    {
        return Err(format!(
            "`{k}` is a key outside any table: give the block its table, or mark it ```toml fragment [table]"
        ));
    }
    let text = merged(&doc, &b.text);
    let cfg = parse_str(&text, Vec::new()).map_err(|e| format!("{e}\n{text}"))?;
    let problems: Vec<String> = check(&cfg)
        .problems
        .iter()
        .filter(|p| !p.message.starts_with("cannot read "))
        .map(|p| p.to_string())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{text}", problems.join("\n")))
    }
}

/// Keys a table's entry must have, for a fragment that does not set them.
const REQUIRED: &[(&str, &[(&str, &str)])] = &[
    (
        "accounts",
        &[("name", "\"fragment\""), ("mailbox", "\"x@contoso.com\"")],
    ),
    ("listeners", &[("address", "\"127.0.0.1:2525\"")]),
    ("devices", &[("account", "\"scanner\"")]),
];

/// Why the keys of a fragment are not keys of `header`'s table with the right types.
fn fragment(b: &Block, header: &str) -> Result<(), String> {
    let keys = toml_edit::ImDocument::parse(b.text.as_str()).map_err(|e| e.to_string())?;
    let table = header.trim_matches(['[', ']']);
    let mut text = format!("{header}\n{}", b.text);
    if let Some((_, required)) = REQUIRED.iter().find(|(t, _)| *t == table) {
        for (k, v) in required.iter().filter(|(k, _)| !keys.contains_key(k)) {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    parse_str(&text, Vec::new())
        .map(|_| ())
        .map_err(|e| format!("{e}\n{text}"))
}

#[test]
fn every_toml_example_in_the_docs_loads() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in doc_files() {
        let name = path
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for b in blocks(&name, &text) {
            let mut words = b.info.split_whitespace();
            if words.next() != Some("toml") {
                continue;
            }
            let result = match (words.next(), words.next()) {
                (None, _) => whole_tables(&b),
                (Some("fragment"), Some(header)) if header.starts_with('[') => fragment(&b, header),
                _ => Err(format!(
                    "unknown info string `{}`: use ```toml or ```toml fragment [table]",
                    b.info
                )),
            };
            checked += 1;
            if let Err(e) = result {
                failures.push(format!("{}:{}: {e}", b.file, b.line));
            }
        }
    }
    assert!(checked >= 25, "only {checked} TOML blocks found");
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn the_checker_catches_what_it_must() {
    let block = |info: &str, text: &str| Block {
        file: "t.md".into(),
        line: 1,
        info: info.into(),
        text: text.into(),
    };
    let typo = block("toml", "[server]\nhostnme = \"x\"\n");
    assert!(
        whole_tables(&typo)
            .unwrap_err()
            .contains("did you mean `hostname`?")
    );
    let unknown_account = block(
        "toml",
        "[[devices]]\nusername = \"a\"\npassword_hash = \"$argon2id$x\"\naccount = \"nas\"\n",
    );
    assert!(
        whole_tables(&unknown_account)
            .unwrap_err()
            .contains("devices.0.account")
    );
    let missing_file = block(
        "toml",
        "[tls]\ncert_file = \"/etc/x/cert.pem\"\nkey_file = \"/etc/x/key.pem\"\n",
    );
    assert_eq!(whole_tables(&missing_file), Ok(()));
    let loose = block("toml", "certificate_file = \"/x.pem\"\n");
    assert!(whole_tables(&loose).unwrap_err().contains("fragment"));
    let keys = block(
        "toml fragment [[accounts]]",
        "certificate_file = \"/x.pem\"\n",
    );
    assert_eq!(fragment(&keys, "[[accounts]]"), Ok(()));
    let wrong = block("toml fragment [[accounts]]", "certificate = \"/x.pem\"\n");
    assert!(
        fragment(&wrong, "[[accounts]]")
            .unwrap_err()
            .contains("certificate_file")
    );
}
