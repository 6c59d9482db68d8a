//! figment's and serde's errors, said in the admin's words.
//!
//! serde describes a mismatch in its own vocabulary ("invalid type: boolean `true`, expected
//! u64", "data did not match any variant of untagged enum Raw", "unknown field ..., expected one
//! of" and 40 names). An admin needs the key, what belongs there and what was found, and for a
//! typo the one key they meant: the closest valid name by edit distance.

use crate::Problem;
use figment::error::{Actual, Kind};

/// One figment error as a problem with its key (no origin yet).
pub(crate) fn problem(e: &figment::Error) -> Problem {
    let parent = e.path.join(".");
    match &e.kind {
        Kind::UnknownField(name, expected) => {
            let key = if e.path.last() == Some(name) {
                parent
            } else {
                join(&parent, name)
            };
            let message = unknown_key(name, expected, &table_of(&e.path));
            Problem::new(key, message)
        }
        Kind::MissingField(name) => Problem::new(
            join(&parent, name),
            "is required here, and missing".to_string(),
        ),
        Kind::UnknownVariant(value, expected) => {
            Problem::new(parent, unknown_value(value, expected))
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => Problem::new(
            parent,
            format!(
                "expected {}, found {}",
                expected_words(expected),
                found(actual)
            ),
        ),
        Kind::InvalidLength(n, expected) => Problem::new(
            parent,
            format!("expected {}, found {n} item(s)", expected_words(expected)),
        ),
        Kind::DuplicateField(name) => Problem::new(join(&parent, name), "is set twice".to_string()),
        Kind::Message(m) => Problem::new(parent, message_words(m)),
        other => Problem::new(parent, other.to_string()),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// `unknown key; did you mean `hostname`?`, else the valid keys when they are few, else where
/// they are listed. The problem's key already names the unknown one.
fn unknown_key(name: &str, expected: &[&str], table: &str) -> String {
    match closest(name, expected) {
        Some(best) => format!("unknown key; did you mean `{best}`?"),
        None if expected.is_empty() => "unknown key: this table takes no keys".to_string(),
        None if expected.len() <= 10 => {
            format!("unknown key; the keys here are {}", listed(expected))
        }
        None => format!(
            "unknown key; docs/configuration.md lists the keys of {table} with what each does"
        ),
    }
}

/// The table a key path is in, as the file writes it: `[server]`, `[[accounts]]`.
fn table_of(path: &[String]) -> String {
    match path {
        [table, index, ..] if index.parse::<usize>().is_ok() => format!("[[{table}]]"),
        [table, _, ..] => format!("[{table}]"),
        _ => "the file's top level".to_string(),
    }
}

fn unknown_value(value: &str, expected: &[&str]) -> String {
    let hint = closest(value, expected)
        .map(|best| format!("; did you mean \"{best}\"?"))
        .unwrap_or_default();
    format!(
        "\"{}\" is not one of {}{hint}",
        value.escape_debug(),
        listed(expected)
    )
}

/// `"a", "b" or "c"`; of spellings that differ only in case (serde aliases such as `XOAUTH2`
/// for `xoauth2`), the lower-case one.
fn listed(names: &[&str]) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for n in names {
        match distinct.iter_mut().find(|d| d.eq_ignore_ascii_case(n)) {
            Some(d) if n.chars().all(|c| !c.is_ascii_uppercase()) => *d = n,
            Some(_) => {}
            None => distinct.push(n),
        }
    }
    let quoted: Vec<String> = distinct.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The valid name closest to `typed`: within a third of its length in edits (at least two),
/// or the one valid name that contains it or that it contains (`smarthost` for
/// `smarthost_host`).
pub(crate) fn closest<'a>(typed: &str, valid: &[&'a str]) -> Option<&'a str> {
    let typed_lc = typed.to_ascii_lowercase();
    let limit = (typed.chars().count() / 3).max(2);
    let by_distance = valid
        .iter()
        .map(|v| (edit_distance(&typed_lc, v), *v))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v);
    by_distance.or_else(|| {
        let mut containing = valid
            .iter()
            .filter(|v| typed_lc.len() >= 4 && (v.contains(&typed_lc) || typed_lc.contains(*v)));
        match (containing.next(), containing.next()) {
            (Some(one), None) => Some(*one),
            _ => None,
        }
    })
}

/// Levenshtein distance over characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// serde's "expected ..." in words: `u64` is a whole number, `struct Server` a table.
fn expected_words(expected: &str) -> String {
    let e = expected.trim();
    let words = match e {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (such as 25)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "a list in brackets (such as [\"a\", \"b\"])",
        "a map" => "a table",
        "socket address" => "an address with a port, such as \"127.0.0.1:2525\"",
        "a string" | "a boolean" => e,
        _ if e.starts_with("struct ") => "a table",
        _ if e.starts_with("enum ") || e.starts_with("variant identifier") => {
            "one of the words listed for this key"
        }
        _ => e,
    };
    words.to_string()
}

/// The standard library's parse errors that serde passes on as they are, in words.
fn message_words(m: &str) -> String {
    match m {
        "invalid socket address syntax" => {
            "expected an address with a port, such as \"127.0.0.1:2525\" or \"[::1]:2525\"".into()
        }
        "invalid IP address syntax" => "expected an IP address, such as \"192.168.1.23\"".into(),
        other => other.to_string(),
    }
}

/// What was found, in words: `a boolean`, `the number 25`, `the string "big"`.
fn found(actual: &Actual) -> String {
    match actual {
        Actual::Bool(_) => "a boolean".into(),
        Actual::Unsigned(n) => format!("the number {n}"),
        Actual::Signed(n) => format!("the number {n}"),
        Actual::Float(n) => format!("the number {n}"),
        Actual::Char(c) => format!("the string \"{}\"", c.escape_debug()),
        Actual::Str(s) => format!("the string \"{}\"", s.escape_debug()),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        Actual::Unit | Actual::Option => "nothing".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("hostnme", "hostname"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn the_closest_valid_name_or_none() {
        let keys = ["hostname", "max_errors", "max_sessions", "smarthost_host"];
        assert_eq!(closest("hostnme", &keys), Some("hostname"));
        assert_eq!(closest("HOSTNAME_", &keys), Some("hostname"));
        assert_eq!(closest("max_sesions", &keys), Some("max_sessions"));
        assert_eq!(closest("smarthost", &keys), Some("smarthost_host"));
        assert_eq!(closest("colour", &keys), None);
        assert_eq!(closest("ab", &["ac", "xyz"]), Some("ac"));
    }

    #[test]
    fn lists_read_as_words() {
        assert_eq!(
            listed(&["none", "starttls", "implicit"]),
            "\"none\", \"starttls\" or \"implicit\""
        );
        assert_eq!(listed(&["x"]), "\"x\"");
        assert_eq!(
            listed(&["XOAUTH2", "xoauth2", "OAUTHBEARER", "oauthbearer"]),
            "\"xoauth2\" or \"oauthbearer\""
        );
    }
}
