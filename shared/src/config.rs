//! Layered configuration: built-in defaults (serde `Default`s) → an optional YAML file →
//! environment variables `<PREFIX>__<SECTION>__<FIELD>`, each layer overriding the one before.
//!
//! The environment is passed in as a map instead of being read here, so tests can load real
//! configurations without touching the process environment.

use std::{collections::HashMap, fmt, path::Path};

use config::{Config, ConfigError, Environment, File, FileFormat};
use serde::de::DeserializeOwned;

/// Exit code for refused configuration (`EX_USAGE` from sysexits.h).
pub const EX_USAGE: i32 = 64;

/// Refuses start-up: prints each problem on its own line to stderr and returns the exit code
/// for `main` (`EX_USAGE`).
pub fn refuse(problems: &[ConfigProblem]) -> std::process::ExitCode {
    for problem in problems {
        eprintln!("{problem}");
    }
    std::process::ExitCode::from(EX_USAGE as u8)
}

/// One thing wrong with a configuration, naming the setting and the variable that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted setting path, e.g. `server.port`; empty when the problem is not about one setting.
    pub setting: String,
    /// The environment variable that sets it, e.g. `PETMESH_NODE__SERVER__PORT`.
    pub env_var: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigProblem {
    /// A problem with `setting` of the binary whose variables start with `env_prefix`.
    pub fn new(env_prefix: &str, setting: &str, message: impl Into<String>) -> Self {
        Self {
            setting: setting.to_owned(),
            env_var: env_var_name(env_prefix, setting),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.setting.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid configuration: {} ({}): {}",
                self.setting, self.env_var, self.message
            )
        }
    }
}

impl std::error::Error for ConfigProblem {}

/// The environment variable for a dotted setting: `server.port` → `PETMESH_NODE__SERVER__PORT`.
pub fn env_var_name(env_prefix: &str, setting: &str) -> String {
    format!(
        "{env_prefix}__{}",
        setting.replace('.', "__").to_ascii_uppercase()
    )
}

/// Where the layers come from.
#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    /// Optional YAML file; a missing file is an error only when named explicitly.
    pub file: Option<&'a Path>,
    /// The process environment (or a test's stand-in).
    pub env: HashMap<String, String>,
    /// Conventional variables honoured when the prefixed one is absent, e.g.
    /// `("DATABASE_URL", "database.url")`.
    pub aliases: &'a [(&'a str, &'a str)],
}

/// Loads `T` from the layers, reporting the first problem with the setting it concerns.
pub fn load<T: DeserializeOwned>(
    env_prefix: &str,
    sources: Sources<'_>,
) -> Result<T, ConfigProblem> {
    let mut builder = Config::builder();
    if let Some(file) = sources.file {
        builder = builder.add_source(File::from(file).format(FileFormat::Yaml).required(true));
    }
    builder = builder.add_source(
        Environment::with_prefix(env_prefix)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(sources.env.clone().into_iter().collect())),
    );
    for (alias, setting) in sources.aliases {
        let prefixed = env_var_name(env_prefix, setting);
        if !sources.env.contains_key(&prefixed) {
            let value = sources.env.get(*alias).cloned();
            builder = builder
                .set_override_option(*setting, value)
                .map_err(|e| problem_from(env_prefix, e))?;
        }
    }
    builder
        .build()
        .and_then(|c| c.try_deserialize::<T>())
        .map_err(|e| problem_from(env_prefix, e))
}

/// Turns a `config` error into a problem naming the setting where the error says which.
fn problem_from(env_prefix: &str, err: ConfigError) -> ConfigProblem {
    let key = match &err {
        ConfigError::Type { key: Some(key), .. } | ConfigError::At { key: Some(key), .. } => {
            Some(key.clone())
        }
        _ => None,
    };
    match key {
        Some(key) => ConfigProblem::new(env_prefix, &key, strip_key_suffix(&err.to_string())),
        None => ConfigProblem {
            setting: String::new(),
            env_var: String::new(),
            message: err.to_string(),
        },
    }
}

/// `config` appends " for key `x` in <origin>" to its messages; the problem line names the
/// setting itself, so that tail is dropped.
fn strip_key_suffix(message: &str) -> String {
    match message.find(" for key `") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Server {
        port: u16,
        host: String,
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Root {
        server: Server,
        url: String,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_defaults() {
        let root: Root = load(
            "APP",
            Sources {
                env: env(&[("APP__SERVER__PORT", "9000"), ("OTHER", "x")]),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(root.server.port, 9000);
        assert_eq!(root.server.host, "");
    }

    #[test]
    fn alias_applies_only_when_prefixed_variable_is_absent() {
        let aliases = [("DATABASE_URL", "url")];
        let from_alias: Root = load(
            "APP",
            Sources {
                env: env(&[("DATABASE_URL", "pg://a")]),
                aliases: &aliases,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(from_alias.url, "pg://a");
        let prefixed_wins: Root = load(
            "APP",
            Sources {
                env: env(&[("DATABASE_URL", "pg://a"), ("APP__URL", "pg://b")]),
                aliases: &aliases,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(prefixed_wins.url, "pg://b");
    }

    #[test]
    fn wrong_type_names_the_setting_and_its_variable() {
        let err = load::<Root>(
            "APP",
            Sources {
                env: env(&[("APP__SERVER__PORT", "eighty")]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.setting, "server.port");
        let line = err.to_string();
        assert!(
            line.starts_with("invalid configuration: server.port (APP__SERVER__PORT): "),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
