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

mod https;
mod process;
mod sinks;
mod types;

use std::path::{Path, PathBuf};

pub use process::*;
pub use sinks::*;
pub use types::*;

/// Prefix of environment overrides, before the `__` separator.
pub const ENV_PREFIX: &str = "AUDIT_FORWARDER";

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
    let origin = file.map_or_else(
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
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("source.http.paths")
        .source(Some(overrides));
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
        // The config crate appends where it was; the key path says it already.
        if let Some(at) = message
            .rfind(" for key `")
            .filter(|_| message.ends_with('`'))
        {
            message.truncate(at);
        }
        ConfigError::key(&origin, key, message)
    })?;
    config
        .validate()
        .map_err(|(key, message)| ConfigError::key(&origin, key, message))?;
    Ok(config)
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
