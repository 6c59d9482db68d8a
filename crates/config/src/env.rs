//! Environment overrides: every key can be set as `SMTP2OAUTH_<TABLE>__<KEY>`.
//!
//! A container is often configured from its environment alone (Docker secrets and compose files),
//! so the environment must reach every key, including those inside `[[accounts]]`, `[[devices]]`
//! and `[[listeners]]`. figment's own `Env` provider cannot address an element of an array of
//! tables, so this provider resolves such paths itself: the segment after the table name is an
//! index (`SMTP2OAUTH_ACCOUNTS__0__CLIENT_SECRET`) or the entry's name, compared without regard
//! to case and to `-`/`_` (`SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET`). A name that matches
//! no entry is an error naming the entries there are when a configuration file is read: a typo
//! (`SCANER`) must not quietly make a second account. New entries then come from the next index
//! (`SMTP2OAUTH_ACCOUNTS__1__NAME=nas`); variables are applied in order of their names, so such
//! an entry can be addressed by its name as well. Without a file (a container configured from
//! its environment alone) a name that matches no entry creates one.
//!
//! Values are parsed the way figment parses environment values (`true`, numbers, `[a, b]`
//! arrays), and `__` separates levels because keys themselves contain `_`.

use crate::{Origin, Problem, words};
use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// Every variable this reads starts with it: `SMTP2OAUTH_SERVER__HOSTNAME`.
pub const PREFIX: &str = "SMTP2OAUTH_";

/// Arrays of tables, and the keys that name their entries.
const ARRAY_TABLES: &[(&str, &[&str])] = &[
    ("accounts", &["name"]),
    ("devices", &["name", "username"]),
    ("listeners", &["name"]),
];

/// The configuration values set in the environment, as a figment provider layered over the
/// file.
pub struct EnvOverrides {
    overlay: Dict,
    /// The key path each variable set (`accounts.0.client_secret`), with the variable.
    sources: Vec<(String, String)>,
    /// A name that matches no entry creates one (no configuration file).
    names_create: bool,
}

impl EnvOverrides {
    /// Builds the overrides from `vars` (normally `std::env::vars()`), resolving array entries
    /// against `base` (the configuration file's values). Every variable that cannot apply is
    /// one problem.
    /// With `names_create` (no configuration file), a name that matches no entry creates one.
    pub fn new(
        base: &Dict,
        vars: impl IntoIterator<Item = (String, String)>,
        names_create: bool,
    ) -> Result<Self, Vec<Problem>> {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX) && k[PREFIX.len()..].contains("__"))
            .collect();
        vars.sort();
        let mut working = base.clone();
        let mut overrides = EnvOverrides {
            overlay: Dict::new(),
            sources: Vec::new(),
            names_create,
        };
        let mut problems = Vec::new();
        for (key, raw) in &vars {
            match overrides.apply(&mut working, key, raw) {
                Ok(path) => overrides.sources.push((path, key.clone())),
                Err(e) => problems.push(Problem::new("", e).at(Origin::Env(key.clone()))),
            }
        }
        if problems.is_empty() {
            Ok(overrides)
        } else {
            Err(problems)
        }
    }

    /// Applies one variable; returns the key path it set, with array entries by index.
    fn apply(&mut self, working: &mut Dict, key: &str, raw: &str) -> Result<String, String> {
        let path: Vec<String> = key[PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err("empty path segment (`____` or a trailing `__`)".into());
        }
        let value = parse_value(raw);
        let top = path[0].clone();
        if let Some((_, name_keys)) = ARRAY_TABLES.iter().find(|(t, _)| *t == top) {
            let index = set_in_array(
                working,
                &top,
                &path[1..],
                value,
                name_keys,
                self.names_create,
            )?;
            let full = working
                .get(&top)
                .cloned()
                .unwrap_or(Value::from(Vec::<Value>::new()));
            self.overlay.insert(top.clone(), full);
            let rest = path[2..].join(".");
            return Ok(format!("{top}.{index}.{rest}"));
        }
        if path.len() < 2 {
            return Err("names no key".into());
        }
        set_path(&mut self.overlay, &path, value.clone())?;
        set_path(working, &path, value)?;
        Ok(path.join("."))
    }

    /// True when no variable applies.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The key path each variable set, with the variable.
    pub fn sources(&self) -> &[(String, String)] {
        &self.sources
    }
}

/// Parses an environment value like figment does (`true`, `42`, `[a, b]`), but only when the
/// parsed value reads back as the same text: `00123` or `1.50` (a secret, a client id) stay
/// strings instead of losing digits.
fn parse_value(raw: &str) -> Value {
    // figment 0.10.19 panics unescaping a quoted value with a non-ASCII character before a
    // backslash (it slices by character index; found by fuzzing). Such a value cannot be a
    // number, boolean, array or table anyway: keep it as the text it is.
    if !raw.is_ascii() && raw.contains('\\') {
        return Value::from(raw.to_string());
    }
    let parsed: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.to_string()));
    let faithful = match &parsed {
        Value::String(..) | Value::Array(..) | Value::Dict(..) => true,
        Value::Bool(_, b) => raw == b.to_string(),
        Value::Num(_, n) => match n
            .to_u128()
            .map(|v| v.to_string())
            .or_else(|| n.to_i128().map(|v| v.to_string()))
        {
            Some(text) => raw == text,
            None => n.to_f64().is_some_and(|f| raw == f.to_string()),
        },
        _ => false,
    };
    if faithful {
        parsed
    } else {
        Value::from(raw.to_string())
    }
}

fn set_path(dict: &mut Dict, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut cur = dict;
    for seg in parents {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        cur = match entry {
            Value::Dict(_, d) => d,
            _ => return Err(format!("`{seg}` is not a table")),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn normalise(s: &str) -> String {
    s.to_ascii_lowercase().replace('-', "_")
}

/// Sets `rest[1..]` in the entry of `table` that `rest[0]` (an index or a name) selects;
/// returns the entry's index.
fn set_in_array(
    working: &mut Dict,
    table: &str,
    rest: &[String],
    value: Value,
    name_keys: &[&str],
    names_create: bool,
) -> Result<usize, String> {
    if rest.len() < 2 {
        return Err(format!(
            "use {PREFIX}{}__<index or name>__<KEY>",
            table.to_ascii_uppercase()
        ));
    }
    let entry = working
        .entry(table.to_string())
        .or_insert_with(|| Value::from(Vec::<Value>::new()));
    let items = match entry {
        Value::Array(_, items) => items,
        _ => return Err(format!("`{table}` is not an array of tables")),
    };
    let selector = &rest[0];
    let index = match selector.parse::<usize>() {
        Ok(i) if i > items.len() => {
            return Err(format!(
                "index {i} skips entries ({table} has {} entries)",
                items.len()
            ));
        }
        Ok(i) => {
            if i == items.len() {
                items.push(Value::from(Dict::new()));
            }
            i
        }
        Err(_) => match find_by_name(items, table, selector, name_keys) {
            Ok(i) => i,
            Err(_) if names_create => {
                let mut d = Dict::new();
                d.insert(name_keys[0].to_string(), Value::from(selector.clone()));
                items.push(Value::from(d));
                items.len() - 1
            }
            Err(e) => return Err(e),
        },
    };
    match &mut items[index] {
        Value::Dict(_, d) => set_path(d, &rest[1..], value).map(|()| index),
        _ => Err(format!("{table} entry {index} is not a table")),
    }
}

/// The index of the entry named `selector`, or why there is none: the names there are, the
/// closest one, and how to add an entry instead.
fn find_by_name(
    items: &[Value],
    table: &str,
    selector: &str,
    name_keys: &[&str],
) -> Result<usize, String> {
    let names_of = |item: &Value| -> Vec<String> {
        match item {
            Value::Dict(_, d) => name_keys
                .iter()
                .filter_map(|k| match d.get(*k) {
                    Some(Value::String(_, s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let wanted = normalise(selector);
    if let Some(i) = items
        .iter()
        .position(|item| names_of(item).iter().any(|n| normalise(n) == wanted))
    {
        return Ok(i);
    }
    let known: Vec<String> = items.iter().flat_map(names_of).collect();
    let normalised: Vec<String> = known.iter().map(|n| normalise(n)).collect();
    let choices: Vec<&str> = normalised.iter().map(String::as_str).collect();
    let hint = words::closest(&wanted, &choices)
        .and_then(|best| normalised.iter().position(|n| n == best))
        .map(|i| format!("did you mean `{}`? ", known[i]))
        .unwrap_or_default();
    let entries = if items.is_empty() {
        format!("there are no [[{table}]] entries")
    } else if known.is_empty() {
        format!("no [[{table}]] entry has a name: address them by index, from 0")
    } else {
        let quoted: Vec<String> = known.iter().map(|n| format!("`{n}`")).collect();
        format!("the {table} are {}", quoted.join(", "))
    };
    Err(format!(
        "no [[{table}]] entry is named `{selector}` ({hint}{entries}); to add one from the environment, set {PREFIX}{}__{}__{}",
        table.to_ascii_uppercase(),
        items.len(),
        name_keys[0].to_ascii_uppercase()
    ))
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        let mut label = String::from("environment variable");
        let vars: Vec<&str> = self.sources.iter().map(|(_, var)| var.as_str()).collect();
        if vars.len() == 1 {
            label = format!("environment variable {}", vars[0]);
        } else if !vars.is_empty() {
            label = format!("environment variables ({})", vars.join(", "));
        }
        Metadata::named(label)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut m = Map::new();
        m.insert(Profile::Default, self.overlay.clone());
        Ok(m)
    }
}
