//! The layering of settings: text values with their source (flags > environment > file >
//! defaults), read by key with errors that name the key, its source and what is accepted,
//! and rendered with secrets redacted.

use super::{ConfigError, Key};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(String),
    Env(&'static str),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {path}"),
            Source::Env(var) => write!(f, "environment {var}"),
            Source::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// Raw text values by key, with their source, and the named tables of the file
/// (`[providers.NAME]`): a table of tables whose fields their owner reads.
#[derive(Clone, Debug)]
pub struct Values {
    /// Every key that may be set.
    catalog: &'static [&'static Key],
    /// Top-level names in the file that hold `[NAME.SUB]` tables instead of a value.
    table_names: &'static [&'static str],
    keys: BTreeMap<&'static str, (String, Source)>,
    tables: BTreeMap<(&'static str, String), (toml::Table, String)>,
}

impl Values {
    /// The defaults of every key in `catalog`.
    pub fn defaults(
        catalog: &'static [&'static Key],
        table_names: &'static [&'static str],
    ) -> Self {
        Self {
            catalog,
            table_names,
            keys: catalog
                .iter()
                .map(|k| (k.name, (k.default.to_string(), Source::Default)))
                .collect(),
            tables: BTreeMap::new(),
        }
    }

    /// Every key that may be set.
    pub fn catalog(&self) -> &'static [&'static Key] {
        self.catalog
    }

    /// The `[NAME.SUB]` tables of the file: SUB, its fields and the file they came from.
    pub fn tables(&self, name: &str) -> impl Iterator<Item = (&str, &toml::Table, &str)> {
        self.tables
            .iter()
            .filter(move |((table, _), _)| *table == name)
            .map(|((_, sub), (fields, file))| (sub.as_str(), fields, file.as_str()))
    }

    fn key(&self, name: &str) -> Option<&'static Key> {
        self.catalog.iter().copied().find(|k| k.name == name)
    }

    /// Overlays the top-level keys of a TOML file; an unknown key is an error.
    pub fn with_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {shown}: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(format!("config file {shown} is not valid TOML: {e}")))?;
        for (name, value) in table {
            if let Some(&table) = self.table_names.iter().find(|&&t| t == name) {
                let toml::Value::Table(subs) = value else {
                    return Err(ConfigError(format!(
                        "`{table}` in config file {shown} must be tables: [{table}.NAME]"
                    )));
                };
                for (sub, fields) in subs {
                    let toml::Value::Table(fields) = fields else {
                        return Err(ConfigError(format!(
                            "`{table}.{sub}` in config file {shown} must be a table"
                        )));
                    };
                    self.tables.insert((table, sub), (fields, shown.clone()));
                }
                continue;
            }
            let key = self.key(&name).ok_or_else(|| {
                ConfigError(format!(
                    "unknown key `{name}` in config file {shown}; known keys: {}",
                    self.catalog
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if key.env_only {
                return Err(ConfigError(format!(
                    "`{name}` may not be set in config file {shown}: set the environment variable {} or use `{name}_file`",
                    key.env
                )));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(ConfigError(format!(
                        "key `{name}` in config file {shown} must be a string, number or boolean, not {}",
                        other.type_str()
                    )));
                }
            };
            self.set(key.name, text, Source::File(shown.clone()));
        }
        Ok(self)
    }

    /// Sets one value (a later source overrides an earlier one).
    pub fn set(&mut self, name: &'static str, value: String, source: Source) {
        self.keys.insert(name, (value, source));
    }

    /// The text of a key and where it came from.
    pub fn raw(&self, name: &str) -> (&str, &Source) {
        debug_assert!(
            self.key(name).is_some(),
            "`{name}` is read but missing from the catalog"
        );
        self.keys
            .get(name)
            .map(|(value, source)| (value.as_str(), source))
            .unwrap_or(("", &Source::Default))
    }

    /// Parses one value, naming the key, the source and what is accepted on error.
    pub fn get<T>(
        &self,
        name: &str,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let (value, source) = self.raw(name);
        parse(value.trim()).ok_or_else(|| {
            let env = self.key(name).map_or("", |k| k.env);
            ConfigError(format!(
                "invalid value {value:?} for `{name}` ({env}) from {source}: expected {accepted}"
            ))
        })
    }

    /// The trimmed text of a key ("" when unset).
    pub fn text(&self, name: &str) -> String {
        self.raw(name).0.trim().to_string()
    }

    /// The trimmed text of a key, if set.
    pub fn optional_text(&self, name: &str) -> Option<String> {
        Some(self.text(name)).filter(|s| !s.is_empty())
    }

    /// `true` or `false`.
    pub fn boolean(&self, name: &str) -> Result<bool, ConfigError> {
        self.get(name, "true or false", |s| s.parse().ok())
    }

    /// A duration above zero.
    pub fn positive_duration(&self, name: &str) -> Result<std::time::Duration, ConfigError> {
        self.get(
            name,
            "a positive duration such as 500ms, 5s, 12h or 7d",
            |s| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
        )
    }

    /// Every secret value and every password inside a URL, whichever key holds it, for
    /// redaction.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        for key in self.catalog {
            let value = self.text(key.name);
            if key.secret && !key.name.ends_with("_uri") {
                secrets.push(value.clone());
            }
            for item in value.split(',') {
                secrets.extend(url_password(item.trim()).map(String::from));
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets
    }

    /// The effective settings as TOML, secrets redacted, each with its source.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for key in self.catalog {
            let (value, source) = self.raw(key.name);
            let shown = if key.secret && !value.is_empty() {
                redact(key.name, value)
            } else {
                // A password inside a URL (`redis://:pw@host`) is a secret wherever it is.
                value
                    .split(',')
                    .map(|item| match url_password(item) {
                        Some(password) => item.replacen(password, "<redacted>", 1),
                        None => item.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out.push_str(&format!("{} = {:?}  # {source}\n", key.name, shown));
        }
        out
    }
}

/// The password of a `scheme://user:password@host...` URL, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.split_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// Hides a secret: a URI keeps everything but its password, anything else is replaced.
fn redact(name: &str, value: &str) -> String {
    if name.ends_with("_uri")
        && let Some((scheme, rest)) = value.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:<redacted>@{host}");
    }
    if name.ends_with("_uri") {
        return value.to_string();
    }
    "<redacted>".to_string()
}
