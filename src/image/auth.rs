//! Registry credentials and authentication challenges.
//!
//! Credentials live where docker keeps them, `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`): under `auths.<registry>.auth` as base64 `user:password`, or in
//! the credential helper that `credHelpers.<registry>` or `credsStore` names
//! (`docker-credential-NAME get`). The `docker_credential` crate reads them; `brig login`
//! writes `auths` entries the way docker does, so docker, podman, skopeo and brig share logins.
//!
//! A registry answers an anonymous request with 401 and a `WWW-Authenticate` challenge:
//! `Basic realm=...` (send the credentials) or `Bearer realm=...,service=...,scope=...`
//! (fetch a token from the realm, with the credentials if any, then send the token).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};

use super::reference::DEFAULT_REGISTRY;

/// The key docker uses for Docker Hub in `config.json` and with credential helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a credential helper prints when it has nothing for a registry (docker's
/// `credentials.errCredentialsNotFound`): not an error, the registry is used anonymously.
const HELPER_NOT_FOUND: &str = "credentials not found";

/// Errors reading or writing the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither `DOCKER_CONFIG` nor `HOME` says where the file is.
    #[error("cannot find the docker config directory: set HOME or DOCKER_CONFIG")]
    NoConfigDir,
    /// The file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The file is not valid JSON, or an `auth` entry is not base64 `user:password`.
    #[error("{path}: malformed docker config: {source}")]
    Malformed {
        path: PathBuf,
        source: CredentialRetrievalError,
    },
    /// The file to update is not JSON.
    #[error("{path}: malformed docker config: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The file to update is JSON of another shape.
    #[error("{path}: malformed docker config: {what} is not a JSON object")]
    NotObject { path: PathBuf, what: &'static str },
    /// The credential helper for a registry failed.
    #[error("credentials for {registry}: {}", helper_failure(.source))]
    Helper {
        registry: String,
        source: CredentialRetrievalError,
    },
}

/// A helper's failure in one line (the crate's message spans lines, with stdout and stderr).
fn helper_failure(e: &CredentialRetrievalError) -> String {
    match e {
        CredentialRetrievalError::HelperFailure {
            helper,
            stdout,
            stderr,
        } => {
            let said = [stderr, stdout]
                .into_iter()
                .find_map(|s| s.lines().map(str::trim).find(|l| !l.is_empty()))
                .unwrap_or("no output");
            format!("{helper} failed: {said}")
        }
        e => format!("credential helper: {e}"),
    }
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where the docker config file is.
pub fn config_path() -> Result<PathBuf, AuthError> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(AuthError::NoConfigDir)?;
    Ok(PathBuf::from(home).join(".docker").join("config.json"))
}

fn read_config() -> Result<(PathBuf, serde_json::Value), AuthError> {
    let path = config_path()?;
    match fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v @ serde_json::Value::Object(_)) => Ok((path, v)),
            Ok(_) => Err(AuthError::NotObject {
                path,
                what: "the file",
            }),
            Err(source) => Err(AuthError::Json { path, source }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((path, serde_json::Value::Object(Default::default())))
        }
        Err(e) => Err(AuthError::Io(path, e)),
    }
}

/// The key that `registry` is stored under.
fn config_key(registry: &str) -> &str {
    if registry == DEFAULT_REGISTRY {
        DOCKER_HUB_KEY
    } else {
        registry
    }
}

/// The stored credentials for `registry`, if any (`None`: use it anonymously).
pub fn lookup(registry: &str) -> Result<Option<Credentials>, AuthError> {
    let path = config_path()?;
    let config = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuthError::Io(path, e)),
    };
    lookup_in(path, &config, registry)
}

/// The credentials for `registry` in `config`, the contents of the file at `path`.
fn lookup_in(
    path: PathBuf,
    config: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, AuthError> {
    let get = |server| docker_credential::get_credential_from_reader(config, server);
    let mut found = get(config_key(registry));
    if registry == DEFAULT_REGISTRY
        && found == Err(CredentialRetrievalError::NoCredentialConfigured)
    {
        // Podman and older tools key Docker Hub as `docker.io` or `index.docker.io`: the
        // crate matches any of those spellings when asked for `docker.io`.
        found = get(DEFAULT_REGISTRY);
    }
    match found {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credentials { username, password }))
        }
        Ok(DockerCredential::IdentityToken(_)) => {
            tracing::warn!(
                registry,
                "ignoring an identity token: brig does not support them"
            );
            Ok(None)
        }
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(CredentialRetrievalError::HelperFailure { stdout, stderr, .. })
            if stdout.contains(HELPER_NOT_FOUND) || stderr.contains(HELPER_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(
            source @ (CredentialRetrievalError::ConfigReadError
            | CredentialRetrievalError::CredentialDecodingError
            | CredentialRetrievalError::CredentialMismatchError),
        ) => Err(AuthError::Malformed { path, source }),
        Err(source) => Err(AuthError::Helper {
            registry: registry.to_string(),
            source,
        }),
    }
}

/// Stores credentials for `registry` (keeping everything else in the file); returns the path.
pub fn store(registry: &str, creds: &Credentials) -> Result<PathBuf, AuthError> {
    let (path, mut v) = read_config()?;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let obj = v.as_object_mut().ok_or_else(|| AuthError::NotObject {
        path: path.clone(),
        what: "the file",
    })?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let auths = auths.as_object_mut().ok_or_else(|| AuthError::NotObject {
        path: path.clone(),
        what: "auths",
    })?;
    auths.insert(
        config_key(registry).to_string(),
        serde_json::json!({ "auth": encoded }),
    );
    let text = serde_json::to_vec_pretty(&v).map_err(|source| AuthError::Json {
        path: path.clone(),
        source,
    })?;
    let dir = path.parent().ok_or(AuthError::NoConfigDir)?;
    fs::create_dir_all(dir).map_err(|e| AuthError::Io(dir.to_path_buf(), e))?;
    let mut text = text;
    text.push(b'\n');
    // Credentials: readable by the user alone, as docker's own config.json.
    crate::atomic::write(&path, &text, 0o600).map_err(|e| AuthError::Io(path.clone(), e))?;
    Ok(path)
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the credentials with every request.
    Basic,
    /// Get a token from `realm` for `service` and `scope`, then send it.
    Bearer {
        realm: String,
        params: BTreeMap<String, String>,
    },
}

/// Parses a `WWW-Authenticate` header value (one challenge; `Bearer` or `Basic`).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let mut params = parse_params(rest);
            let realm = params.remove("realm")?;
            Some(Challenge::Bearer { realm, params })
        }
        _ => None,
    }
}

/// Parses `key="value", key2=value2` (quoted values may contain commas).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        let Challenge::Bearer { realm, params } = c else {
            panic!("not bearer")
        };
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/busybox:pull,push");
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn config_keys() {
        assert_eq!(config_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(config_key("localhost:5000"), "localhost:5000");
    }

    #[test]
    fn looks_up_auths_under_docker_and_podman_keys() {
        let find = |config: &str, registry| lookup_in("c".into(), config.as_bytes(), registry);
        let alice = Some(Credentials {
            username: "alice".into(),
            password: "pw:1".into(),
        });
        // base64("alice:pw:1")
        let auth = |key: &str| format!(r#"{{"auths":{{"{key}":{{"auth":"YWxpY2U6cHc6MQ=="}}}}}}"#);
        assert_eq!(find(&auth(DOCKER_HUB_KEY), "docker.io").unwrap(), alice);
        assert_eq!(find(&auth("docker.io"), "docker.io").unwrap(), alice);
        assert_eq!(find(&auth("https://h:5000/v1/"), "h:5000").unwrap(), alice);
        assert_eq!(find(&auth("h:5000"), "other:5000").unwrap(), None);
        assert_eq!(find("{}", "h:5000").unwrap(), None);
        let plain = r#"{"auths":{"h":{"username":"alice","password":"pw:1"}}}"#;
        assert_eq!(find(plain, "h").unwrap(), alice);
        assert!(matches!(
            find("not json", "h"),
            Err(AuthError::Malformed { .. })
        ));
        assert!(matches!(
            find(r#"{"auths":{"h":{"auth":"%%%"}}}"#, "h"),
            Err(AuthError::Malformed { .. })
        ));
        // A helper that is not installed is an error naming the registry, on one line.
        let e = find(r#"{"credHelpers":{"h":"brig-test-absent"}}"#, "h").unwrap_err();
        assert!(matches!(e, AuthError::Helper { .. }), "{e:?}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
