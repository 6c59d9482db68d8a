//! Where each key came from: a line of the configuration file or an environment variable.
//!
//! A key path such as `accounts.0.client_id` tells the admin what is wrong but not where to
//! look: with three `[[accounts]]` blocks and an override in a compose file, "line 31" or
//! "environment variable SMTP2OAUTH_ACCOUNTS__SCANNER__CLIENT_ID" is what gets the file open at
//! the right place. The file is parsed once more with `toml_edit`, which keeps the span of every
//! key and table; figment and serde, which give the values, keep none.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a problem's key was set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file (from 1).
    Line {
        /// The file, as it was named to us.
        file: PathBuf,
        /// The line, counted from 1.
        line: usize,
    },
    /// An environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { file, line } => write!(f, "{}:{line}", file.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// The origins of the keys of one configuration: the line of every key and table of the file,
/// and the key set by each environment variable.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    file: Option<PathBuf>,
    /// Dotted key path (`accounts.0.client_id`, `accounts.0` for a table) → line.
    lines: HashMap<String, usize>,
    /// Dotted key path set by an environment variable → the variable.
    env: Vec<(String, String)>,
}

impl Origins {
    /// The lines of every key and table of `text`, the contents of `file`. Text that does not
    /// parse as TOML gives no lines (its syntax error is reported by itself).
    pub fn of_file(file: &Path, text: &str) -> Origins {
        let mut lines = HashMap::new();
        if let Ok(doc) = toml_edit::ImDocument::parse(text) {
            let starts = LineStarts::new(text);
            walk_table(doc.as_table(), "", &starts, &mut lines);
        }
        Origins {
            file: Some(file.to_path_buf()),
            lines,
            env: Vec::new(),
        }
    }

    /// Records that the environment variable `var` set the key at `path`.
    pub(crate) fn set_by_env(&mut self, path: String, var: String) {
        self.env.push((path, var));
    }

    /// Where `key` was set: the environment variable that set it (or one of its tables), else
    /// the line of the key in the file, else of the nearest table around it that the file has.
    pub fn locate(&self, key: &str) -> Option<Origin> {
        if key.is_empty() {
            return None;
        }
        let by_env = self
            .env
            .iter()
            .filter(|(path, _)| is_within(key, path))
            .max_by_key(|(path, _)| path.len());
        if let Some((_, var)) = by_env {
            return Some(Origin::Env(var.clone()));
        }
        let file = self.file.as_ref()?;
        let mut path = key;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(Origin::Line {
                    file: file.clone(),
                    line,
                });
            }
            path = &path[..path.rfind('.')?];
        }
    }

    /// Gives each problem without an origin the origin of its key.
    pub fn annotate(&self, problems: &mut [crate::Problem]) {
        for p in problems.iter_mut().filter(|p| p.origin.is_none()) {
            p.origin = self.locate(&p.key);
        }
    }
}

/// True when `key` is `path` or a key inside it (`accounts.0.x` is within `accounts.0`).
fn is_within(key: &str, path: &str) -> bool {
    key == path
        || key
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The byte offset at which each line starts, to turn spans into line numbers.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineStarts(starts)
    }

    /// The line (from 1) holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(
    table: &toml_edit::Table,
    prefix: &str,
    starts: &LineStarts,
    lines: &mut HashMap<String, usize>,
) {
    if let Some(span) = table.span() {
        lines
            .entry(prefix.to_string())
            .or_insert(starts.line(span.start));
    }
    for (name, item) in table.iter() {
        let path = join(prefix, name);
        if let Some(span) = table.key(name).and_then(|k| k.span()) {
            lines.insert(path.clone(), starts.line(span.start));
        }
        walk_item(item, &path, starts, lines);
    }
}

fn walk_item(
    item: &toml_edit::Item,
    path: &str,
    starts: &LineStarts,
    lines: &mut HashMap<String, usize>,
) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, starts, lines),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                walk_table(t, &join(path, &i.to_string()), starts, lines);
            }
        }
        toml_edit::Item::Value(v) => walk_value(v, path, starts, lines),
        toml_edit::Item::None => {}
    }
}

fn walk_value(
    value: &toml_edit::Value,
    path: &str,
    starts: &LineStarts,
    lines: &mut HashMap<String, usize>,
) {
    match value {
        toml_edit::Value::InlineTable(t) => {
            for (name, v) in t.iter() {
                let inner = join(path, name);
                if let Some(span) = t.key(name).and_then(|k| k.span()) {
                    lines.insert(inner.clone(), starts.line(span.start));
                }
                walk_value(v, &inner, starts, lines);
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let inner = join(path, &i.to_string());
                if let Some(span) = v.span() {
                    lines.insert(inner.clone(), starts.line(span.start));
                }
                walk_value(v, &inner, starts, lines);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# comment\n[server]\nhostname = \"x\"\n\n[[accounts]]\nname = \"a\"\n\n[[accounts]]\nname = \"b\"\nallowed_senders = [\n  \"x@y\",\n  \"z@y\",\n]\n";

    #[test]
    fn keys_and_tables_have_their_lines() {
        let o = Origins::of_file(Path::new("c.toml"), TEXT);
        let line = |k: &str| match o.locate(k) {
            Some(Origin::Line { line, .. }) => line,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(line("server"), 2);
        assert_eq!(line("server.hostname"), 3);
        // a key the file does not have: the table around it
        assert_eq!(line("server.max_errors"), 2);
        assert_eq!(line("accounts.0"), 5);
        assert_eq!(line("accounts.1.name"), 9);
        assert_eq!(line("accounts.1.client_id"), 8);
        assert_eq!(line("accounts.1.allowed_senders.1"), 12);
        assert_eq!(o.locate("devices.0.account"), None);
        assert_eq!(o.locate("server.hostname").unwrap().to_string(), "c.toml:3");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let mut o = Origins::of_file(Path::new("c.toml"), TEXT);
        o.set_by_env(
            "accounts.1.client_id".into(),
            "SMTP2OAUTH_ACCOUNTS__B__CLIENT_ID".into(),
        );
        assert_eq!(
            o.locate("accounts.1.client_id"),
            Some(Origin::Env("SMTP2OAUTH_ACCOUNTS__B__CLIENT_ID".into()))
        );
        assert!(matches!(
            o.locate("accounts.1.client_idx"),
            Some(Origin::Line { line: 8, .. })
        ));
    }
}
