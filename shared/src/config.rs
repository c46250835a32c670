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

/// Variables that share a binary's prefix but are not settings, e.g. `PETMESH_NODE_CONFIG`
/// (the settings file, read by the command line parser).
const NOT_SETTINGS: &[&str] = &["CONFIG"];

/// What loading found: the settings built from every layer that could be read, and a problem
/// for each variable or file that could not.
#[derive(Debug)]
pub struct Loaded<T> {
    /// `T` from the defaults and every acceptable layer; `None` when even that failed (a bad
    /// file).
    pub value: Option<T>,
    /// One entry per unknown or invalid setting.
    pub problems: Vec<ConfigProblem>,
}

impl<T> Loaded<T> {
    /// Runs the semantic checks on what was loaded, so that a bad variable does not hide
    /// another setting's problem, and returns the settings only if nothing at all is wrong.
    pub fn validate(
        self,
        validate: impl FnOnce(T) -> Result<T, Vec<ConfigProblem>>,
    ) -> Result<T, Vec<ConfigProblem>> {
        let mut problems = self.problems;
        if let Some(value) = self.value {
            match validate(value) {
                Ok(value) if problems.is_empty() => return Ok(value),
                Ok(_) => {}
                Err(more) => problems.extend(more),
            }
        }
        Err(problems)
    }
}

/// Loads `T` from the layers. When the whole does not deserialise, each layer is tried on its
/// own to name every culprit: the file, and each variable by its own name. Variables that look
/// like settings of this binary but cannot be one (`PETMESH_NODE_SERVER_PORT`, one underscore)
/// are problems too, so a misspelt setting never passes silently.
pub fn load<T: DeserializeOwned>(env_prefix: &str, sources: Sources<'_>) -> Loaded<T> {
    let mut problems = stray_variables(env_prefix, &sources.env);
    let settings: Vec<(String, String)> = setting_variables(env_prefix, &sources.env);
    let aliased: Vec<(&str, &str, String)> = sources
        .aliases
        .iter()
        .filter(|(_, setting)| !sources.env.contains_key(&env_var_name(env_prefix, setting)))
        .filter_map(|(alias, setting)| {
            let value = sources.env.get(*alias)?;
            Some((*alias, *setting, value.clone()))
        })
        .collect();
    let build = |file: Option<&Path>,
                 vars: &[&(String, String)],
                 overrides: &[&(&str, &str, String)]| {
        let mut builder = Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).format(FileFormat::Yaml).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix(env_prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(
                    vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                )),
        );
        for (_, setting, value) in overrides {
            builder = builder.set_override(*setting, value.as_str())?;
        }
        builder.build()?.try_deserialize::<T>()
    };

    let all_vars: Vec<_> = settings.iter().collect();
    let all_aliases: Vec<_> = aliased.iter().collect();
    let err = match build(sources.file, &all_vars, &all_aliases) {
        Ok(value) => {
            return Loaded {
                value: Some(value),
                problems,
            }
        }
        Err(err) => err,
    };

    // Something is wrong: find every culprit, each layer on top of the defaults alone.
    let mut file_ok = true;
    if let Some(file) = sources.file {
        if let Err(err) = build(Some(file), &[], &[]) {
            problems.push(problem_from(env_prefix, err));
            file_ok = false;
        }
    }
    let mut good_vars = Vec::new();
    for var in &settings {
        match build(None, &[var], &[]) {
            Ok(_) => good_vars.push(var),
            Err(err) => problems.push(ConfigProblem {
                setting: setting_of(env_prefix, &var.0),
                env_var: var.0.clone(),
                message: strip_key_suffix(&err.to_string()),
            }),
        }
    }
    let mut good_aliases = Vec::new();
    for alias in &aliased {
        match build(None, &[], &[alias]) {
            Ok(_) => good_aliases.push(alias),
            Err(err) => problems.push(ConfigProblem {
                setting: alias.1.to_owned(),
                env_var: alias.0.to_owned(),
                message: strip_key_suffix(&err.to_string()),
            }),
        }
    }
    let file = if file_ok { sources.file } else { None };
    let value = match build(file, &good_vars, &good_aliases) {
        Ok(value) if file_ok => Some(value),
        Ok(_) => None,
        Err(rest) => {
            // Only a combination fails (every layer passed alone): report the whole error.
            problems.push(problem_from(env_prefix, rest));
            None
        }
    };
    if problems.is_empty() {
        problems.push(problem_from(env_prefix, err));
    }
    Loaded { value, problems }
}

/// The environment variables that set a setting of this binary (`<PREFIX>__...`).
fn setting_variables(env_prefix: &str, env: &HashMap<String, String>) -> Vec<(String, String)> {
    let prefix = format!("{env_prefix}__");
    let mut vars: Vec<_> = env
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    vars.sort();
    vars
}

/// Variables named like this binary's (`<PREFIX>_...`) that are neither settings
/// (`<PREFIX>__...`) nor known non-settings such as `<PREFIX>_CONFIG`.
fn stray_variables(env_prefix: &str, env: &HashMap<String, String>) -> Vec<ConfigProblem> {
    let prefix = format!("{env_prefix}_");
    let setting_prefix = format!("{env_prefix}__");
    let mut stray: Vec<_> = env
        .keys()
        .filter(|name| name.starts_with(&prefix) && !name.starts_with(&setting_prefix))
        .filter(|name| !NOT_SETTINGS.contains(&&name[prefix.len()..]))
        .map(|name| ConfigProblem {
            setting: String::new(),
            env_var: name.clone(),
            message: format!(
                "{name} is not a setting: settings are {env_prefix}__<SECTION>__<FIELD>, with two underscores between levels"
            ),
        })
        .collect();
    stray.sort_by(|a, b| a.env_var.cmp(&b.env_var));
    stray
}

/// The dotted setting a variable sets: `PETMESH_NODE__SERVER__PORT` → `server.port`.
fn setting_of(env_prefix: &str, var: &str) -> String {
    var[env_prefix.len() + 2..]
        .split("__")
        .collect::<Vec<_>>()
        .join(".")
        .to_ascii_lowercase()
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

    fn ok<T: std::fmt::Debug>(loaded: Loaded<T>) -> T {
        assert_eq!(loaded.problems, []);
        loaded.value.expect("loaded")
    }

    fn problems<T: std::fmt::Debug>(loaded: Loaded<T>) -> Vec<ConfigProblem> {
        loaded.validate(Ok).unwrap_err()
    }

    #[test]
    fn every_unknown_or_invalid_variable_is_named() {
        let problems = problems(load::<Root>(
            "APP",
            Sources {
                env: env(&[
                    ("APP__SERVER__PROT", "9000"),
                    ("APP__SERVER__PORT", "eighty"),
                    ("APP__SERVER__HOST", "fine"),
                    ("APP__TYPO", "x"),
                    ("APP_SERVER__PORT", "1"),
                    ("APP_CONFIG", "/etc/app.yaml"),
                    ("OTHER", "x"),
                ]),
                ..Default::default()
            },
        ));
        let named: Vec<_> = problems.iter().map(|p| p.env_var.as_str()).collect();
        assert_eq!(
            named,
            [
                "APP_SERVER__PORT",
                "APP__SERVER__PORT",
                "APP__SERVER__PROT",
                "APP__TYPO"
            ],
            "{problems:?}"
        );
        assert_eq!(problems[2].setting, "server.prot");
        assert!(
            problems[2].message.contains("unknown field `prot`"),
            "{}",
            problems[2]
        );
        assert!(
            problems[0].to_string().contains("two underscores"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn good_layers_are_still_validated_when_one_variable_is_bad() {
        let loaded = load::<Root>(
            "APP",
            Sources {
                env: env(&[("APP__SERVER__PORT", "eighty"), ("APP__URL", "")]),
                ..Default::default()
            },
        );
        let problems = loaded
            .validate(|root| {
                if root.url.is_empty() {
                    Err(vec![ConfigProblem::new("APP", "url", "must not be empty")])
                } else {
                    Ok(root)
                }
            })
            .unwrap_err();
        let named: Vec<_> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(named, ["server.port", "url"]);
    }

    #[test]
    fn a_bad_file_is_named_and_nothing_is_loaded() {
        let dir = std::env::temp_dir().join(format!("petmesh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.yaml");
        std::fs::write(&file, "server:\n  port: eighty\n").unwrap();
        let loaded = load::<Root>(
            "APP",
            Sources {
                file: Some(&file),
                env: env(&[("APP__URL", "pg://a")]),
                ..Default::default()
            },
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(loaded.value.is_none());
        assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
        assert_eq!(loaded.problems[0].setting, "server.port");
    }

    #[test]
    fn environment_overrides_defaults() {
        let root: Root = ok(load(
            "APP",
            Sources {
                env: env(&[("APP__SERVER__PORT", "9000"), ("OTHER", "x")]),
                ..Default::default()
            },
        ));
        assert_eq!(root.server.port, 9000);
        assert_eq!(root.server.host, "");
    }

    #[test]
    fn alias_applies_only_when_prefixed_variable_is_absent() {
        let aliases = [("DATABASE_URL", "url")];
        let from_alias: Root = ok(load(
            "APP",
            Sources {
                env: env(&[("DATABASE_URL", "pg://a")]),
                aliases: &aliases,
                ..Default::default()
            },
        ));
        assert_eq!(from_alias.url, "pg://a");
        let prefixed_wins: Root = ok(load(
            "APP",
            Sources {
                env: env(&[("DATABASE_URL", "pg://a"), ("APP__URL", "pg://b")]),
                aliases: &aliases,
                ..Default::default()
            },
        ));
        assert_eq!(prefixed_wins.url, "pg://b");
    }

    #[test]
    fn wrong_type_names_the_setting_and_its_variable() {
        let problems = problems(load::<Root>(
            "APP",
            Sources {
                env: env(&[("APP__SERVER__PORT", "eighty")]),
                ..Default::default()
            },
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let err = &problems[0];
        assert_eq!(err.setting, "server.port");
        let line = err.to_string();
        assert!(
            line.starts_with("invalid configuration: server.port (APP__SERVER__PORT): "),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
