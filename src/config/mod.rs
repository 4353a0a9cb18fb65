//! Configuration: one YAML file read through the `config` crate, environment
//! overrides, and a built-in default that needs no file (listen on
//! `0.0.0.0:3000`, write JSON lines to stdout, metrics on `0.0.0.0:9090`).
//!
//! Environment overrides are named `AUDIT_FORWARDER__` followed by the key path
//! in upper case with `__` between the parts, for example
//! `AUDIT_FORWARDER__SOURCE__HTTP__ADDRESS=0.0.0.0:8080`. The double underscore
//! after the prefix keeps the variables Kubernetes injects for a Service named
//! `audit-forwarder` (`AUDIT_FORWARDER_SERVICE_HOST`, `AUDIT_FORWARDER_PORT`, …)
//! out; variables shaped like those are skipped in any case.
//!
//! `config/default.yaml` lists every key with its default.

mod destinations;
mod https;
mod kafka;
mod process;
mod sinks;
mod syslog;
mod types;

use std::path::{Path, PathBuf};

pub use destinations::*;
pub use kafka::*;
pub use process::*;
pub use sinks::*;
pub use syslog::*;
pub use types::*;

/// Prefix of environment overrides, before the `__` separator.
pub const ENV_PREFIX: &str = "AUDIT_FORWARDER";

/// The list keys outside `sinks`: from the environment they are given as
/// comma-separated values (`AUDIT_FORWARDER__SOURCE__HTTP__PATHS=/a,/b`).
const LIST_KEYS: &[&str] = &["source.http.paths", "source.https.allowed_client_names"];

/// A configuration that could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not YAML.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: config::ConfigError,
    },
    /// A key has a value of the wrong type, or is unknown.
    #[error("invalid config {origin}: {key}: {message}")]
    Key {
        /// The file, or "from the environment" / "default".
        origin: String,
        /// The key path, for example `sinks[0].queue.capacity_events`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn key(origin: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            origin: origin.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Loads the configuration from `file` (or the built-in default when `None`),
/// applies the environment overrides found in `env`, and validates it.
///
/// # Errors
///
/// [`ConfigError`] naming the file and the key at fault.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let file_origin = file.map_or_else(
        || "(built-in default)".to_owned(),
        |p| p.display().to_string(),
    );
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: config::ConfigError::Foreign(Box::new(e)),
        })?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Yaml));
    }
    let overrides: config::Map<String, String> =
        env.into_iter().filter(|(k, _)| is_override(k)).collect();
    // A key set from the environment is blamed on its variable, not the file.
    let origin = |key: &str| {
        overrides
            .keys()
            .find(|var| {
                let k = override_key(var);
                key == k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["))
            })
            .map_or_else(
                || file_origin.clone(),
                |var| format!("from environment variable {var}"),
            )
    };
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let environment = environment.source(Some(overrides.clone()));
    let built = builder
        .add_source(environment)
        .build()
        .map_err(|e| ConfigError::Read {
            path: file.map(Path::to_owned).unwrap_or_default(),
            source: e,
        })?;
    let config: Config = serde_path_to_error::deserialize(built).map_err(|e| {
        let mut key = e.path().to_string();
        let mut message = e.into_inner().to_string();
        if let Some((inner, rest)) = message.strip_prefix('@').and_then(|m| m.split_once("@ ")) {
            if inner != "." {
                key = format!("{key}.{inner}");
            }
            message = rest.to_owned();
        }
        // The config crate appends where it was; the key path and the
        // origin say it already.
        if let Some(at) = message
            .rfind(" for key `")
            .filter(|_| message.ends_with('`') || message.ends_with("` in the environment"))
        {
            message.truncate(at);
        }
        let message = without_type_names(&message);
        ConfigError::key(&origin(&key), key, message)
    })?;
    config
        .validate()
        .map_err(|(key, message)| ConfigError::key(&origin(&key), key, message))?;
    Ok(config)
}

/// The key path an override variable sets: `AUDIT_FORWARDER__LOG__LEVEL`
/// sets `log.level`.
fn override_key(var: &str) -> String {
    var.strip_prefix(ENV_PREFIX)
        .and_then(|r| r.strip_prefix("__"))
        .unwrap_or(var)
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// A message without Rust type names. The config crate names an enum by its
/// type when a string is not one of its variants ("enum LogFormat does not
/// have variant constructor xml"): said instead as "unknown variant `xml`,
/// expected `text` or `json`". serde's "expected struct QueueConfig" and
/// "expected u64" become "expected a map of keys" and "expected a
/// non-negative integer".
fn without_type_names(message: &str) -> String {
    let Some((name, value)) = message
        .strip_prefix("enum ")
        .and_then(|m| m.split_once(" does not have variant constructor "))
    else {
        return plain_expectation(message);
    };
    let variants = match name {
        "LogFormat" => variants::<LogFormat>(),
        "BufferKind" => variants::<BufferKind>(),
        "ClientAuth" => variants::<ClientAuth>(),
        "WhenFull" => variants::<crate::pipeline::WhenFull>(),
        _ => &[],
    };
    let quoted: Vec<String> = variants.iter().map(|v| format!("`{v}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown variant `{value}`"),
        [one] => format!("unknown variant `{value}`, expected {one}"),
        [first @ .., last] => format!(
            "unknown variant `{value}`, expected {} or {last}",
            first.join(", ")
        ),
    }
}

/// `message` with a trailing "expected struct X" or "expected u64" said in
/// words.
fn plain_expectation(message: &str) -> String {
    let Some((head, expected)) = message.rsplit_once("expected ") else {
        return message.to_owned();
    };
    let words = match expected {
        e if e.starts_with("struct ") => "a map of keys",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "path string" => "a path",
        _ => return message.to_owned(),
    };
    format!("{head}expected {words}")
}

/// The variant names a unit-variant enum is deserialized from, read off
/// what it asks a deserializer for.
fn variants<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// A deserializer that only records the variants it is asked for.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not an enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }

    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut found));
    found
}

/// Whether an environment variable is one of ours and not one Kubernetes injects
/// for a Service (`…_SERVICE_HOST`, `…_SERVICE_PORT…`, `…_PORT`, `…_PORT_<n>_<PROTO>…`).
fn is_override(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(ENV_PREFIX)
        .and_then(|r| r.strip_prefix("__"))
    else {
        return false;
    };
    let service_link = rest.ends_with("_SERVICE_HOST")
        || rest.contains("_SERVICE_PORT")
        || rest.ends_with("_PORT")
        || rest
            .split("_PORT_")
            .nth(1)
            .is_some_and(|p| p.starts_with(|c: char| c.is_ascii_digit()));
    if service_link {
        tracing::warn!(
            variable = name,
            "ignoring a Kubernetes service variable that shares the override prefix"
        );
    }
    !service_link
}

#[cfg(test)]
mod tests;
