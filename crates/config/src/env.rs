//! Environment overrides: every key can be set as `SMTP2OAUTH_<TABLE>__<KEY>`.
//!
//! A container is often configured from its environment alone (Docker secrets and compose files),
//! so the environment must reach every key, including those inside `[[accounts]]`, `[[devices]]`
//! and `[[listeners]]`. figment's own `Env` provider cannot address an element of an array of
//! tables, so this provider resolves such paths itself: the segment after the table name is an
//! index (`SMTP2OAUTH_ACCOUNTS__0__CLIENT_SECRET`) or the entry's name, compared without regard
//! to case and to `-`/`_` (`SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_SECRET`). A name that matches
//! no entry creates one, so a whole account can come from the environment.
//!
//! Values are parsed the way figment parses environment values (`true`, numbers, `[a, b]`
//! arrays), and `__` separates levels because keys themselves contain `_`.

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
    vars: Vec<String>,
}

impl EnvOverrides {
    /// Builds the overrides from `vars` (normally `std::env::vars()`), resolving array entries
    /// against `base` (the configuration file's values).
    pub fn new(
        base: &Dict,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX) && k[PREFIX.len()..].contains("__"))
            .collect();
        vars.sort();
        let mut working = base.clone();
        let mut overlay = Dict::new();
        let mut names = Vec::new();
        for (key, raw) in &vars {
            let path: Vec<String> = key[PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("environment variable {key}: empty path segment"));
            }
            let value = parse_value(raw);
            let top = path[0].clone();
            if let Some((_, name_keys)) = ARRAY_TABLES.iter().find(|(t, _)| *t == top) {
                set_in_array(&mut working, &top, &path[1..], value, name_keys)
                    .map_err(|e| format!("environment variable {key}: {e}"))?;
                let full = working
                    .get(&top)
                    .cloned()
                    .unwrap_or(Value::from(Vec::<Value>::new()));
                overlay.insert(top, full);
            } else {
                if path.len() < 2 {
                    return Err(format!("environment variable {key}: names no key"));
                }
                set_path(&mut overlay, &path, value.clone())
                    .map_err(|e| format!("environment variable {key}: {e}"))?;
                set_path(&mut working, &path, value)
                    .map_err(|e| format!("environment variable {key}: {e}"))?;
            }
            names.push(key.clone());
        }
        Ok(EnvOverrides {
            overlay,
            vars: names,
        })
    }

    /// True when no variable applies.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
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

fn set_in_array(
    working: &mut Dict,
    table: &str,
    rest: &[String],
    value: Value,
    name_keys: &[&str],
) -> Result<(), String> {
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
    let index = if let Ok(i) = selector.parse::<usize>() {
        if i > items.len() {
            return Err(format!(
                "index {i} skips entries ({table} has {} entries)",
                items.len()
            ));
        }
        if i == items.len() {
            items.push(Value::from(Dict::new()));
        }
        i
    } else {
        let wanted = normalise(selector);
        let found = items.iter().position(|item| match item {
            Value::Dict(_, d) => name_keys
                .iter()
                .any(|k| matches!(d.get(*k), Some(Value::String(_, s)) if normalise(s) == wanted)),
            _ => false,
        });
        match found {
            Some(i) => i,
            None => {
                let mut d = Dict::new();
                d.insert(name_keys[0].to_string(), Value::from(selector.clone()));
                items.push(Value::from(d));
                items.len() - 1
            }
        }
    };
    match &mut items[index] {
        Value::Dict(_, d) => set_path(d, &rest[1..], value),
        _ => Err(format!("{table} entry {index} is not a table")),
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        let mut label = String::from("environment variable");
        if self.vars.len() == 1 {
            label = format!("environment variable {}", self.vars[0]);
        } else if !self.vars.is_empty() {
            label = format!("environment variables ({})", self.vars.join(", "));
        }
        Metadata::named(label)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut m = Map::new();
        m.insert(Profile::Default, self.overlay.clone());
        Ok(m)
    }
}
