//! A blocking client for the OCI distribution API v2 (what `docker pull` speaks).
//!
//! HTTPS by default; plain HTTP only for loopback registries (`localhost`, `127.0.0.0/8`,
//! `[::1]`) and those the user names with `--insecure-registry`. Authentication follows
//! the challenge flow: an anonymous request first; on 401, `Basic` sends the stored
//! credentials, `Bearer` fetches a token from the challenge's realm (with the
//! credentials when there are some) and retries with it. Tokens are kept for the client's
//! life, shared by the download threads.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::auth::{self, Challenge, Credentials};
use super::digest::Digest;

/// The most bytes a manifest, index or token response may have.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Manifest media types brig accepts, for the `Accept` header.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached (DNS, connection refused, timeout, TLS).
    #[error("registry {0} is unreachable: {1}")]
    Unreachable(String, String),
    /// The repository, tag, manifest or blob does not exist (404).
    #[error("{0}: not found (manifest unknown or repository does not exist)")]
    NotFound(String),
    /// The registry wants credentials and none are stored (401).
    #[error("{0}: authentication required (run `brig login {1}`)")]
    AuthRequired(String, String),
    /// The registry refused the credentials or the access (401 with credentials, 403).
    #[error("{0}: access denied by the registry ({1})")]
    Denied(String, String),
    /// Any other unexpected HTTP status.
    #[error("{0}: registry answered HTTP {1}{2}")]
    Status(String, u16, String),
    /// The HTTP exchange failed after it had started.
    #[error("{0}: {1}")]
    Http(String, String),
    /// A manifest or token response was larger than allowed.
    #[error("{0}: response larger than {1} bytes")]
    TooLarge(String, u64),
    /// The token endpoint answered something that is not a token.
    #[error("token from {0} is malformed")]
    BadToken(String),
}

/// A blob being read: the body, its length if known, and whether the requested offset
/// was honoured (HTTP 206).
pub type BlobStream = (Box<dyn Read + Send>, Option<u64>, bool);

/// A client for one repository on one registry.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    creds: Option<Credentials>,
    authorization: Mutex<Option<String>>,
}

/// Whether `registry` (host[:port]) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client for `registry`/`repository`; `insecure` lists registries allowed plain HTTP.
    pub fn new(
        registry: &str,
        repository: &str,
        insecure: &[String],
    ) -> Result<Self, auth::AuthError> {
        let loopback = is_loopback(registry);
        let plain = loopback || insecure.iter().any(|r| r == registry);
        let host = super::reference::api_host(registry);
        let base = format!("{}://{host}/v2", if plain { "http" } else { "https" });
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .max_redirects(10)
            .user_agent(concat!("brig/", env!("CARGO_PKG_VERSION")))
            .proxy(if loopback {
                None
            } else {
                ureq::Proxy::try_from_env()
            })
            .build();
        Ok(Self {
            agent: config.new_agent(),
            base,
            registry: registry.to_string(),
            repository: repository.to_string(),
            creds: auth::lookup(registry)?,
            authorization: Mutex::new(None),
        })
    }

    /// Uses these credentials instead of the stored ones (for `brig login`).
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = Some(creds);
        self
    }

    /// Checks that the registry answers and accepts the credentials (`GET /v2/`).
    pub fn ping(&self) -> Result<(), RegistryError> {
        let url = format!("{}/", self.base);
        let what = self.registry.clone();
        let resp = self.send(&url, &what, None, None)?;
        self.expect_ok(resp, &what).map(|_| ())
    }

    /// Fetches a manifest or index: returns its bytes and its `Content-Type`.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let url = format!("{}/{}/manifests/{reference}", self.base, self.repository);
        let what = format!("{}/{}:{reference}", self.registry, self.repository);
        let what = what.replace(":sha256:", "@sha256:");
        let resp = self.send(&url, &what, Some(MANIFEST_ACCEPT), None)?;
        let mut resp = self.expect_ok(resp, &what)?;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let bytes = read_limited(resp.body_mut(), MAX_MANIFEST_BYTES, &what)?;
        Ok((bytes, ct))
    }

    /// Opens a blob for reading from byte `offset`. Returns the reader, the number of
    /// bytes it will deliver (if known) and whether the server honoured the offset.
    pub fn blob(&self, digest: &Digest, offset: u64) -> Result<BlobStream, RegistryError> {
        let url = format!("{}/{}/blobs/{digest}", self.base, self.repository);
        let what = format!("blob {}", digest.short());
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let resp = self.send(&url, &what, None, range.as_deref())?;
        if offset > 0 && resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return self.blob(digest, 0);
        }
        let resumed = resp.status() == StatusCode::PARTIAL_CONTENT;
        let resp = self.expect_ok(resp, &what)?;
        let len = resp.body().content_length();
        let reader = resp.into_body().into_reader();
        Ok((Box::new(reader), len, resumed))
    }

    /// Sends a GET, answering authentication challenges.
    fn send(
        &self,
        url: &str,
        what: &str,
        accept: Option<&str>,
        range: Option<&str>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut tried_auth = false;
        loop {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(r) = range {
                req = req.header("Range", r);
            }
            let authz = self.authorization.lock().map(|a| a.clone()).unwrap_or(None);
            if let Some(a) = &authz {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.transport_error(what, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            if tried_auth || challenge.is_none() {
                return Err(self.unauthorized(what, authz.is_some()));
            }
            tried_auth = true;
            let header = match challenge {
                Some(Challenge::Basic) => match &self.creds {
                    Some(c) => c.basic_header(),
                    None => return Err(self.unauthorized(what, false)),
                },
                Some(Challenge::Bearer { realm, params }) => {
                    format!("Bearer {}", self.token(&realm, &params, what)?)
                }
                None => return Err(self.unauthorized(what, false)),
            };
            if let Ok(mut a) = self.authorization.lock() {
                *a = Some(header);
            }
        }
    }

    /// Gets a bearer token from `realm`.
    fn token(
        &self,
        realm: &str,
        params: &std::collections::BTreeMap<String, String>,
        what: &str,
    ) -> Result<String, RegistryError> {
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let mut req = self.agent.get(realm).query("scope", &scope);
        if let Some(service) = params.get("service") {
            req = req.query("service", service);
        }
        if let Some(c) = &self.creds {
            req = req.header("Authorization", &c.basic_header());
        }
        let mut resp = req.call().map_err(|e| self.transport_error(realm, e))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => return Err(self.unauthorized(what, self.creds.is_some())),
            s => return Err(RegistryError::Status(realm.to_string(), s, String::new())),
        }
        let body = read_limited(resp.body_mut(), MAX_MANIFEST_BYTES, realm)?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| RegistryError::BadToken(realm.into()))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .ok_or_else(|| RegistryError::BadToken(realm.into()))
    }

    fn unauthorized(&self, what: &str, sent_credentials: bool) -> RegistryError {
        if sent_credentials || self.creds.is_some() {
            RegistryError::Denied(what.to_string(), "credentials refused".into())
        } else {
            RegistryError::AuthRequired(what.to_string(), self.registry.clone())
        }
    }

    fn transport_error(&self, what: &str, e: ureq::Error) -> RegistryError {
        match e {
            ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::Timeout(_)
            | ureq::Error::Tls(_)
            | ureq::Error::Rustls(_) => {
                RegistryError::Unreachable(self.registry.clone(), e.to_string())
            }
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::NotConnected
                | std::io::ErrorKind::AddrNotAvailable => {
                    RegistryError::Unreachable(self.registry.clone(), io.to_string())
                }
                _ => RegistryError::Http(what.to_string(), io.to_string()),
            },
            e => RegistryError::Http(what.to_string(), e.to_string()),
        }
    }

    /// Turns a non-success status into an error.
    fn expect_ok(
        &self,
        mut resp: Response<Body>,
        what: &str,
    ) -> Result<Response<Body>, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let detail = read_limited(resp.body_mut(), 64 << 10, what)
            .ok()
            .and_then(|b| registry_message(&b))
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        Err(match status.as_u16() {
            404 => RegistryError::NotFound(what.to_string()),
            401 => self.unauthorized(what, true),
            403 => RegistryError::Denied(what.to_string(), format!("HTTP 403{detail}")),
            s => RegistryError::Status(what.to_string(), s, detail),
        })
    }
}

/// The first message of a distribution error body `{"errors":[{"code":..,"message":..}]}`.
fn registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
    Some(format!("{code} {msg}").trim().chars().take(200).collect())
}

fn read_limited(body: &mut Body, limit: u64, what: &str) -> Result<Vec<u8>, RegistryError> {
    body.with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => RegistryError::TooLarge(what.to_string(), limit),
            e => RegistryError::Http(what.to_string(), e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_get_plain_http() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:40000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("localhost.example.com"));
        assert!(!is_loopback("127.evil.example:5000"));
        let c = Client::new("ghcr.io", "a/b", &[]).unwrap();
        assert!(c.base.starts_with("https://ghcr.io/v2"));
        let c = Client::new("docker.io", "library/x", &[]).unwrap();
        assert_eq!(c.base, "https://registry-1.docker.io/v2");
        let c = Client::new("reg.lan:5000", "x", &["reg.lan:5000".into()]).unwrap();
        assert_eq!(c.base, "http://reg.lan:5000/v2");
    }
}
