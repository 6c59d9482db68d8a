//! Configuration: one TOML file, every key overridable from the environment, validated up front.
//!
//! An admin who edits a config file at 7 a.m. because the scanner stopped must be told exactly
//! which key is wrong and why, all at once, before the relay starts. So loading has two passes:
//! figment turns the file and the environment into [`Config`] (type errors name the key and the
//! file or variable it came from), then [`validate`] checks what types cannot (references between
//! tables, required credentials, readable files) and reports every problem with its key path.
//!
//! # Layout
//! - `schema.rs`: every key, type and default.
//! - `duration.rs`: human durations (`"30s"`, `"5d"`).
//! - `env.rs`: `SMTP2OAUTH_…` overrides, including entries of arrays of tables.
//! - `origin.rs`: the line of the file or the environment variable each key came from.
//! - `words.rs`: figment's and serde's errors in words, with the closest valid key for a typo.
//! - `validate.rs`: the semantic checks, which also turn each account into an [`AccountSpec`].
//! - `spec.rs`: accounts as the relay is built from them (routes, flows and credentials as
//!   enums carrying only the keys that apply).

#![warn(missing_docs)]

pub mod duration;
pub mod env;
mod origin;
mod schema;
mod spec;
mod validate;
mod words;

pub use origin::{Origin, Origins};
pub use schema::*;
pub use spec::*;
pub use validate::{Checked, admin_exposure, check, parse_dns_server, validate};

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong (or worth a warning) in the configuration, with the key it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `accounts.0.client_id`; empty when the problem is not about one key.
    pub key: String,
    /// What is wrong, in words an admin can act on.
    pub message: String,
    /// Where the key was set (the file's line or an environment variable), when known.
    pub origin: Option<Origin>,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }

    /// The same problem, found at `origin`.
    pub fn at(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }
}

/// `smtp2oauth.toml:3: `server.hostnme`: unknown key; did you mean `hostname`?`: where, which
/// key, what is wrong.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// The configuration could not be used. Holds every problem found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// A loaded, validated configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration as written (after environment overrides).
    pub config: Config,
    /// Every account as a spec, in the order of `config.accounts`.
    pub accounts: Vec<AccountSpec>,
    /// Warnings worth logging.
    pub warnings: Vec<Problem>,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
    /// Where each key came from, to point problems found later (loading a certificate, a
    /// stored sign-in) at the line to fix.
    pub origins: Origins,
}

impl Loaded {
    /// The account named `name`.
    pub fn account(&self, name: &str) -> Option<&AccountSpec> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// True when some account signs in with a delegated flow (and so needs the token store).
    pub fn has_delegated(&self) -> bool {
        self.accounts.iter().any(|a| a.delegated().is_some())
    }
}

/// Loads `path` (if any) and the process environment, then validates.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// Like [`load`], with the environment given explicitly (tests).
pub fn load_with_env(
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let Parsed { config, origins } = parse_located(path, vars)?;
    let mut checked = check(&config);
    origins.annotate(&mut checked.problems);
    origins.annotate(&mut checked.warnings);
    if !checked.problems.is_empty() {
        return Err(ConfigError {
            problems: checked.problems,
        });
    }
    Ok(Loaded {
        config,
        accounts: checked.accounts,
        warnings: checked.warnings,
        path: path.map(Path::to_path_buf),
        origins,
    })
}

/// A configuration as written, and where each of its keys came from.
#[derive(Debug)]
pub struct Parsed {
    /// The configuration (file and environment), not yet validated.
    pub config: Config,
    /// Where each key came from.
    pub origins: Origins,
}

/// Parses TOML text (no file) and `vars`, without semantic validation. Never panics, whatever
/// the input (the config loader is fuzzed through this).
pub fn parse_str(
    toml: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    parse_text(toml, Origins::default(), vars, false).map(|p| p.config)
}

/// Parses without semantic validation (used by `check-config` to report everything).
pub fn parse(
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    parse_located(path, vars).map(|p| p.config)
}

/// Like [`parse`], keeping where each key came from; its problems carry their origins.
pub fn parse_located(
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Parsed, ConfigError> {
    let Some(p) = path else {
        return parse_text("", Origins::default(), vars, true);
    };
    let one = |message: String| ConfigError {
        problems: vec![Problem::new("", message)],
    };
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(one(format!(
                "configuration file {} does not exist",
                p.display()
            )));
        }
        Err(e) => return Err(one(format!("cannot read {}: {e}", p.display()))),
    };
    if let Err(e) = toml_edit::ImDocument::parse(text.as_str()) {
        let line = e
            .span()
            .map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        let message = format!("not valid TOML: {}", e.message().trim().replace('\n', "; "));
        return Err(ConfigError {
            problems: vec![Problem::new("", message).at(Origin::Line {
                file: p.to_path_buf(),
                line,
            })],
        });
    }
    parse_text(&text, Origins::of_file(p, &text), vars, false)
}

/// The configuration of `text` with the environment's overrides applied; `env_alone` when
/// there is no file, so variables may create entries by name.
fn parse_text(
    text: &str,
    mut origins: Origins,
    vars: impl IntoIterator<Item = (String, String)>,
    env_alone: bool,
) -> Result<Parsed, ConfigError> {
    let mut figment = Figment::new().merge(Toml::string(text));
    let base: Dict = match figment.extract::<Value>() {
        Ok(Value::Dict(_, d)) => d,
        Ok(_) => Dict::new(),
        Err(e) => return Err(figment_problems(e, &origins)),
    };
    let overrides = env::EnvOverrides::new(&base, vars, env_alone)
        .map_err(|problems| ConfigError { problems })?;
    for (path, var) in overrides.sources() {
        origins.set_by_env(path.clone(), var.clone());
    }
    if !overrides.is_empty() {
        figment = figment.merge(overrides);
    }
    match figment.extract::<Config>() {
        Ok(config) => Ok(Parsed { config, origins }),
        Err(e) => Err(figment_problems(e, &origins)),
    }
}

fn figment_problems(err: figment::Error, origins: &Origins) -> ConfigError {
    let mut problems: Vec<Problem> = err.into_iter().map(|e| words::problem(&e)).collect();
    origins.annotate(&mut problems);
    ConfigError { problems }
}

impl Config {
    /// The host name to announce: `[server] hostname` or the system's.
    pub fn hostname(&self) -> String {
        if let Some(h) = &self.server.hostname {
            return h.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    /// The `[[accounts]]` entry named `name`, as written.
    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// Where `route = "capture"` writes for `account`.
    pub(crate) fn capture_dir(&self, account: &Account) -> PathBuf {
        account
            .capture_dir
            .clone()
            .unwrap_or_else(|| self.store.dir.join("capture"))
    }
}

impl Account {
    /// The client secret, from `client_secret` or the file named by `client_secret_file`
    /// (trailing newlines removed, as Docker secrets usually end with one).
    pub(crate) fn client_secret(&self) -> Result<Option<Secret>, String> {
        if let Some(s) = &self.client_secret {
            return Ok(Some(s.clone()));
        }
        if let Some(p) = &self.client_secret_file {
            let s = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read client_secret_file {}: {e}", p.display()))?;
            let s = s.trim_end_matches(['\r', '\n']).to_string();
            if s.is_empty() {
                return Err(format!("client_secret_file {} is empty", p.display()));
            }
            return Ok(Some(Secret::new(s)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
