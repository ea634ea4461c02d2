//! Image references as docker writes them: `busybox`, `library/busybox:1.36`,
//! `ghcr.io/org/app@sha256:...`, `localhost:5000/x:y`.
//!
//! The grammar follows distribution's `reference` package: an optional registry (the first
//! component, when it has a `.` or a `:` or is `localhost`), a lowercase path, an optional
//! tag and an optional digest. Docker Hub names are normalized (`busybox` is
//! `docker.io/library/busybox:latest`).

use std::fmt;

use super::digest::Digest;

/// The registry an unqualified name refers to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a reference without tag or digest refers to.
pub const DEFAULT_TAG: &str = "latest";

/// Errors from parsing a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("invalid reference format: empty")]
    Empty,
    /// The reference does not follow the grammar.
    #[error("invalid reference format {0:?}: {1}")]
    Invalid(String, &'static str),
    /// The digest part is malformed.
    #[error("invalid reference format {0:?}: {1}")]
    Digest(String, super::digest::DigestError),
}

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest was written).
    pub tag: Option<String>,
    /// Digest, if written.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference as docker does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let bad = |why| ReferenceError::Invalid(input.to_string(), why);
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() > 512 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or is too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((name, d)) => {
                let d = d
                    .parse::<Digest>()
                    .map_err(|e| ReferenceError::Digest(input.to_string(), e))?;
                (name, Some(d))
            }
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(bad("invalid registry name"));
        }
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY.to_string(),
            _ => registry,
        };
        if path.is_empty() || path.len() > 255 {
            return Err(bad("repository name must have 1 to 255 characters"));
        }
        if !path.split('/').all(valid_component) {
            return Err(bad(
                "repository name must be lowercase letters, digits and separators",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` as docker shows it: `busybox`, `ghcr.io/org/app`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            match self.repository.strip_prefix("library/") {
                Some(short) if !short.contains('/') => short.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// `registry/repository`, always fully qualified.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry's manifest endpoint for: the digest if any, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

/// The host serving the API of `registry`.
pub fn api_host(registry: &str) -> &str {
    if registry == DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.familiar_name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(stripped) = r.strip_prefix('[') {
        // [ipv6]:port
        match stripped.split_once(']') {
            Some((ip, rest)) => {
                if ip.is_empty() || !ip.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return false;
                }
                ("x", rest.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_names_are_normalized() {
        let r = p("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.familiar_name(), "busybox");
        assert_eq!(r.to_string(), "busybox:latest");
        assert_eq!(api_host(&r.registry), "registry-1.docker.io");
        let r = p("library/busybox:1.36");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        assert_eq!(p("index.docker.io/foo/bar").familiar_name(), "foo/bar");
    }

    #[test]
    fn registries_ports_and_digests() {
        let r = p("localhost:5000/x:y");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag.as_deref(), Some("y"));
        let hex = "a".repeat(64);
        let r = p(&format!("ghcr.io/org/app@sha256:{hex}"));
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/app");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), format!("sha256:{hex}"));
        let r = p(&format!("127.0.0.1:5000/a/b:v1@sha256:{hex}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.digest.is_some());
        assert_eq!(p("[::1]:5000/x").registry, "[::1]:5000");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "UPPER",
            "a b",
            "x:",
            "x:-tag",
            "x@sha256:abc",
            "x@md5:abc",
            "/x",
            "x/",
            "x//y",
            "localhost:port/x",
            "-x",
            "a/../b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
