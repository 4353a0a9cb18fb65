//! The request headers of an HTTP sink, with the ones read from files
//! (`headers.*.value_from_file`, and the destinations' credentials:
//! Elasticsearch's password and API key, Splunk's HEC token) read again
//! when the files change, watched like certificate files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::config::{Encoding, HttpSinkConfig};
use crate::tls::watch::{self, FileWatcher};

/// How a file's content becomes a header value.
#[derive(Debug, Clone)]
enum Form {
    /// As it is.
    Plain,
    /// After a scheme: `ApiKey <key>`, `Splunk <token>`.
    Scheme(&'static str),
    /// `Basic base64(username:password)` (RFC 7617).
    Basic(String),
}

#[derive(Debug, Clone)]
struct FileHeader {
    /// The config key naming the file, for messages.
    key: String,
    name: HeaderName,
    path: PathBuf,
    form: Form,
}

/// The headers of every request, the file-sourced ones kept current.
#[derive(Clone)]
pub(crate) struct Headers {
    fixed: HeaderMap,
    files: Arc<[FileHeader]>,
    current: Arc<ArcSwap<HeaderMap>>,
    sink: String,
}

impl Headers {
    /// Resolves `cfg.headers` and the encoding's credentials, on top of `fixed`.
    ///
    /// # Errors
    ///
    /// A header or file named in the message.
    pub(crate) fn build(cfg: &HttpSinkConfig, mut fixed: HeaderMap) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        for (name, source) in &cfg.headers {
            let hname = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("headers.{name}"))?;
            let text = match (
                &source.value,
                &source.value_from_file,
                &source.value_from_env,
            ) {
                (Some(v), _, _) => v.clone(),
                (_, Some(path), _) => {
                    files.push(FileHeader {
                        key: format!("headers.{name}.value_from_file"),
                        name: hname,
                        path: path.clone(),
                        form: Form::Plain,
                    });
                    continue;
                }
                (_, _, Some(var)) => std::env::var(var).with_context(|| {
                    format!("headers.{name}.value_from_env: variable {var} is not set")
                })?,
                _ => anyhow::bail!("headers.{name}: no value"),
            };
            fixed.insert(
                hname,
                sensitive(&text).with_context(|| format!("headers.{name}"))?,
            );
        }
        let es = &cfg.elasticsearch;
        let hec = &cfg.splunk_hec;
        let auth = |key: &str, path: &PathBuf, form| FileHeader {
            key: key.to_owned(),
            name: header::AUTHORIZATION,
            path: path.clone(),
            form,
        };
        match cfg.encoding {
            Encoding::Elasticsearch => {
                if let Some(path) = &es.api_key_file {
                    files.push(auth(
                        "elasticsearch.api_key_file",
                        path,
                        Form::Scheme("ApiKey"),
                    ));
                } else if let (Some(user), Some(path)) = (&es.username, &es.password_file) {
                    files.push(auth(
                        "elasticsearch.password_file",
                        path,
                        Form::Basic(user.clone()),
                    ));
                }
            }
            Encoding::SplunkHec => {
                if let Some(path) = &hec.token_file {
                    files.push(auth("splunk_hec.token_file", path, Form::Scheme("Splunk")));
                }
            }
            _ => {}
        }
        let this = Self {
            fixed,
            files: files.into(),
            current: Arc::new(ArcSwap::from_pointee(HeaderMap::new())),
            sink: cfg.name.clone(),
        };
        this.current.store(Arc::new(this.read()?));
        Ok(this)
    }

    /// The headers to send now.
    pub(crate) fn get(&self) -> Arc<HeaderMap> {
        self.current.load_full()
    }

    /// All headers with the files read now.
    fn read(&self) -> anyhow::Result<HeaderMap> {
        let mut map = self.fixed.clone();
        for f in self.files.iter() {
            let text = std::fs::read_to_string(&f.path)
                .with_context(|| format!("failed to read {} {}", f.key, f.path.display()))?;
            let text = text.trim_end_matches(['\r', '\n']);
            let value = match &f.form {
                Form::Plain => text.to_owned(),
                Form::Scheme(scheme) => format!("{scheme} {}", text.trim()),
                Form::Basic(user) => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{text}"))
                ),
            };
            let value =
                sensitive(&value).with_context(|| format!("{} {}", f.key, f.path.display()))?;
            map.insert(f.name.clone(), value);
        }
        Ok(map)
    }

    /// Reads the files again; keeps the headers in use when one cannot be read.
    fn reload(&self) {
        match self.read() {
            Ok(map) if map != *self.current.load_full() => {
                self.current.store(Arc::new(map));
                tracing::info!(sink = %self.sink, "credentials read again from their changed files");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sink = %self.sink, error = %format!("{e:#}"), "failed to read a credentials file again; keeping the ones in use");
            }
        }
    }

    /// Watches the header files: read again when they change, and every
    /// `recheck` in any case. `None` when no header comes from a file.
    ///
    /// # Errors
    ///
    /// A directory that cannot be watched.
    pub(crate) fn watch(&self, recheck: Duration) -> anyhow::Result<Option<FileWatcher>> {
        if self.files.is_empty() {
            return Ok(None);
        }
        let paths: Vec<PathBuf> = self.files.iter().map(|f| f.path.clone()).collect();
        let me = self.clone();
        Ok(Some(watch::watch(&paths, recheck, move |_| me.reload())?))
    }
}

fn sensitive(text: &str) -> anyhow::Result<HeaderValue> {
    let mut v = HeaderValue::from_str(text).context("not a valid header value")?;
    v.set_sensitive(true);
    Ok(v)
}
