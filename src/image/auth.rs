//! Registry credentials and authentication challenges.
//!
//! Credentials live where docker keeps them, `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`), under `auths.<registry>.auth` as base64 `user:password`;
//! `brig login` writes them the same way, so docker, podman, skopeo and brig share logins.
//! Credential helpers (`credsStore`, `credHelpers`) are not consulted.
//!
//! A registry answers an anonymous request with 401 and a `WWW-Authenticate` challenge:
//! `Basic realm=...` (send the credentials) or `Bearer realm=...,service=...,scope=...`
//! (fetch a token from the realm, with the credentials if any, then send the token).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use base64::Engine as _;

use super::reference::DEFAULT_REGISTRY;

/// The key docker uses for Docker Hub in `config.json`.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Errors reading or writing the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither `DOCKER_CONFIG` nor `HOME` says where the file is.
    #[error("cannot find the docker config directory: set HOME or DOCKER_CONFIG")]
    NoConfigDir,
    /// The file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not valid JSON of the expected shape.
    #[error("{0}: malformed docker config: {1}")]
    Malformed(PathBuf, String),
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
        Ok(bytes) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| AuthError::Malformed(path.clone(), e.to_string()))?;
            if !v.is_object() {
                return Err(AuthError::Malformed(path, "not a JSON object".into()));
            }
            Ok((path, v))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((path, serde_json::Value::Object(Default::default())))
        }
        Err(e) => Err(AuthError::Io(path, e)),
    }
}

/// The key that `registry` is stored under.
fn config_key(registry: &str) -> String {
    if registry == DEFAULT_REGISTRY {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// Strips a scheme and path from a config key: `https://host:5000/v1/` → `host:5000`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The stored credentials for `registry`, if any.
pub fn lookup(registry: &str) -> Result<Option<Credentials>, AuthError> {
    let (path, v) = read_config()?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let want = config_key(registry);
    let want_host = key_host(&want);
    let entry = auths.get(&want).or_else(|| {
        auths.iter().find_map(|(k, e)| {
            let h = key_host(k);
            let hub = registry == DEFAULT_REGISTRY && (h == "index.docker.io" || h == "docker.io");
            (h == want_host || hub).then_some(e)
        })
    });
    let Some(entry) = entry else { return Ok(None) };
    let malformed = |why: &str| AuthError::Malformed(path.clone(), why.to_string());
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| malformed("auth is not base64"))?;
        let raw = String::from_utf8(raw).map_err(|_| malformed("auth is not UTF-8"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| malformed("auth is not user:password"))?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })),
        _ => Ok(None),
    }
}

/// Stores credentials for `registry` (keeping everything else in the file); returns the path.
pub fn store(registry: &str, creds: &Credentials) -> Result<PathBuf, AuthError> {
    let (path, mut v) = read_config()?;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.username, creds.password));
    let obj = v
        .as_object_mut()
        .ok_or_else(|| AuthError::Malformed(path.clone(), "not a JSON object".into()))?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let auths = auths
        .as_object_mut()
        .ok_or_else(|| AuthError::Malformed(path.clone(), "auths is not an object".into()))?;
    auths.insert(config_key(registry), serde_json::json!({ "auth": encoded }));
    let text = serde_json::to_vec_pretty(&v)
        .map_err(|e| AuthError::Malformed(path.clone(), e.to_string()))?;
    let dir = path.parent().ok_or(AuthError::NoConfigDir)?;
    fs::create_dir_all(dir).map_err(|e| AuthError::Io(dir.to_path_buf(), e))?;
    let tmp = dir.join(format!(".config.json.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        AuthError::Io(path.clone(), e)
    })?;
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
        assert_eq!(key_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(key_host("localhost:5000"), "localhost:5000");
        assert_eq!(config_key("docker.io"), DOCKER_HUB_KEY);
    }
}
