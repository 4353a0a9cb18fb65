//! Who may post: a per-connection gate in front of the [`Handler`]. A request
//! is let in when its connection presented a verified client certificate, or
//! it carries the configured bearer token (RFC 6750, `Authorization: Bearer
//! <token>`), or the listener asks for neither. Otherwise it is answered 401
//! `unauthenticated` before its body is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{Handler, RequestError};
use crate::server::Handle;
use crate::tls::TlsError;

/// A bearer token read from a file (surrounding whitespace removed), reloaded
/// on [`TokenFile::reload`].
pub struct TokenFile {
    path: PathBuf,
    key: &'static str,
    token: ArcSwap<Vec<u8>>,
}

impl TokenFile {
    /// Reads the token; `key` names the config key in errors.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file when it cannot be read or is empty.
    pub fn load(key: &'static str, path: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            path: path.to_owned(),
            key,
            token: ArcSwap::from_pointee(read_token(key, path)?),
        })
    }

    /// The token of `bearer_token_file` at `path`, or `None` when the key is
    /// unset (empty).
    ///
    /// # Errors
    ///
    /// As [`TokenFile::load`].
    pub fn from_config(path: &Path) -> Result<Option<Arc<Self>>, TlsError> {
        match crate::config::is_set(path) {
            true => Ok(Some(Arc::new(Self::load("bearer_token_file", path)?))),
            false => Ok(None),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; `Ok(true)` when the token changed.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when the file cannot be read or is empty; the old token stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let token = read_token(self.key, &self.path)?;
        if **self.token.load() == token {
            return Ok(false);
        }
        self.token.store(Arc::new(token));
        Ok(true)
    }

    /// Whether `Authorization` carries the token (compared in constant time).
    /// The scheme is matched without regard to case (RFC 9110 §11.1).
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization
            .and_then(|v| bearer_credentials(v.as_bytes()))
            .map(<[u8]>::trim_ascii)
        else {
            return false;
        };
        let token = self.token.load();
        presented.len() == token.len()
            && presented
                .iter()
                .zip(token.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The credentials after the `Bearer` scheme, in any case, and the spaces
/// that follow it (RFC 6750 §2.1).
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    let rest = rest.strip_prefix(b" ")?;
    scheme.eq_ignore_ascii_case(b"bearer").then_some(rest)
}

fn read_token(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let token = crate::tls::load::read(key, path)?.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(TlsError::Invalid {
            key,
            path: path.to_owned(),
            message: "the file is empty".to_owned(),
        });
    }
    Ok(token)
}

/// The gate of one connection (or of a whole plain listener).
pub struct Gate {
    handler: Arc<Handler>,
    token: Option<Arc<TokenFile>>,
    open: bool,
}

impl Gate {
    /// Lets every request through when `open`; otherwise only those with the
    /// token (none without one).
    pub fn new(handler: Arc<Handler>, token: Option<Arc<TokenFile>>, open: bool) -> Self {
        Self {
            handler,
            token,
            open,
        }
    }
}

impl Handle for Gate {
    async fn call(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if self.open {
            return self.handler.handle(req).await;
        }
        let why = match &self.token {
            Some(t) if t.admits(req.headers().get(header::AUTHORIZATION)) => {
                return self.handler.handle(req).await;
            }
            Some(_) if req.headers().contains_key(header::AUTHORIZATION) => {
                "the bearer token is not the one configured"
            }
            Some(_) => "no client certificate and no bearer token",
            None => "no client certificate",
        };
        let client = super::handler::Client::of(&req);
        let mut resp = self
            .handler
            .refuse(&client, RequestError::Unauthenticated(why));
        if self.token.is_some() {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
