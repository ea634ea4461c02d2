//! Image references as docker writes them: `busybox`, `library/busybox:1.36`,
//! `ghcr.io/org/app@sha256:...`, `localhost:5000/x:y`.
//!
//! The grammar and Docker Hub normalization (`busybox` is `docker.io/library/busybox:latest`)
//! are oci-spec's `distribution::Reference`, a port of distribution's `reference` package.
//! On top of it brig adds what the crate lacks: a sha256 [`Digest`] (it names files in the
//! store), docker's short names for display, IPv6 registry hosts (`[::1]:5000/x`), two checks
//! the crate misses (lowercase repositories, ASCII tags), and the API host of Docker Hub.

use std::fmt;
use std::net::Ipv6Addr;

use oci_spec::distribution::ParseError;

use super::digest::Digest;

/// The registry an unqualified name refers to.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a reference without tag or digest refers to.
pub const DEFAULT_TAG: &str = "latest";

/// Errors from parsing a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The reference does not follow the grammar.
    #[error("invalid reference format: {input:?}{}", detail(.source))]
    Grammar { input: String, source: ParseError },
    /// A rule brig adds to the grammar is broken.
    #[error("invalid reference format: {input:?}: {why}")]
    Invalid { input: String, why: &'static str },
    /// The digest is not a sha256 digest.
    #[error("invalid reference format: {input:?}: {source}")]
    Digest {
        input: String,
        source: super::digest::DigestError,
    },
}

/// The crate's reason, unless it only repeats "invalid reference format".
fn detail(e: &ParseError) -> String {
    match e {
        ParseError::ReferenceInvalidFormat => String::new(),
        e => format!(": {e}"),
    }
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
        let invalid = |why| ReferenceError::Invalid {
            input: input.to_string(),
            why,
        };
        // oci-spec's grammar has no IPv6 hosts: parse `[ip]:port/x` as `localhost:port/x`.
        let (text, ipv6) = match input.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((ip, rest)) => {
                ip.parse::<Ipv6Addr>()
                    .map_err(|_| invalid("invalid IPv6 registry address"))?;
                (format!("localhost{rest}"), Some(ip))
            }
            None => (input.to_string(), None),
        };
        let r: oci_spec::distribution::Reference =
            text.parse().map_err(|source| ReferenceError::Grammar {
                input: input.to_string(),
                source,
            })?;
        let mut registry = r.registry().to_string();
        let mut repository = r.repository().to_string();
        if let Some(ip) = ipv6 {
            let port = r
                .registry()
                .strip_prefix("localhost")
                .ok_or_else(|| invalid("an IPv6 address must be followed by a repository"))?;
            registry = format!("[{ip}]{port}");
        }
        if registry == "registry-1.docker.io" {
            registry = DEFAULT_REGISTRY.to_string();
            if !repository.contains('/') {
                repository = format!("library/{repository}");
            }
        }
        // The crate lets an uppercase first component through when it is not a registry
        // (`UPPER/x`); distribution refuses it as the crate's own error says.
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Grammar {
                input: input.to_string(),
                source: ParseError::NameContainsUppercase,
            });
        }
        // The crate's `\w` is Unicode; docker's tags are ASCII.
        if r.tag().is_some_and(|t| !t.is_ascii()) {
            return Err(invalid("invalid tag"));
        }
        let digest = r
            .digest()
            .map(str::parse::<Digest>)
            .transpose()
            .map_err(|source| ReferenceError::Digest {
                input: input.to_string(),
                source,
            })?;
        Ok(Self {
            registry,
            repository,
            tag: r.tag().map(str::to_string),
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
            "UPPER/case",
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
            "x:é",
            "[::1]",
            "[zz]:5000/x",
            "x@sha512:{}",
        ] {
            let bad = bad.replace("{}", &"a".repeat(128));
            let bad = bad.as_str();
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = |s: &str| Reference::parse(s).unwrap_err().to_string();
        assert_eq!(e("UPPER"), r#"invalid reference format: "UPPER""#);
        assert_eq!(
            e("UPPER/case"),
            r#"invalid reference format: "UPPER/case": repository name must be lowercase"#
        );
        assert_eq!(e("x:é"), r#"invalid reference format: "x:é": invalid tag"#);
        assert!(e(&format!("x@sha512:{}", "a".repeat(128))).contains("only sha256"));
    }
}
