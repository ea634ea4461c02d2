//! Content digests (`sha256:<64 hex>`): parsing, validation and hashing while streaming.
//!
//! A digest names a blob in the store and, through it, a path on disk, so only
//! well-formed sha256 digests are ever accepted. Validation is oci-spec's
//! [`Sha256Digest`] (exactly 64 lowercase hex characters); brig's [`Digest`] wraps it to
//! print and serialize as `sha256:<hex>` and to hash bytes.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use oci_spec::image::{DigestAlgorithm, Sha256Digest};
use oci_spec::OciSpecError;
use sha2::{Digest as _, Sha256};

/// Errors from parsing a digest.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The algorithm is not sha256 (the only one brig stores).
    #[error("unsupported digest algorithm {0:?} (only sha256 is supported)")]
    Algorithm(String),
    /// The hex part is not 64 lowercase hex characters.
    #[error("malformed digest {input:?}: {source}")]
    Malformed { input: String, source: OciSpecError },
}

/// A sha256 content digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest(Sha256Digest);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest of what `h` has hashed.
    pub fn from_hasher(h: Sha256) -> Self {
        Self::from_hex(&format!("{:x}", h.finalize())).expect("sha256 output is 64 hex digits")
    }

    /// Parses a bare 64-character hex string (as used in file names).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        hex.parse()
            .map(Self)
            .map_err(|source| DigestError::Malformed {
                input: hex.to_string(),
                source,
            })
    }

    /// The hex part, 64 characters.
    pub fn hex(&self) -> &str {
        self.0.digest()
    }

    /// The first 12 hex characters, as docker shows IDs.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d: oci_spec::image::Digest = s.parse().map_err(|source| DigestError::Malformed {
            input: s.to_string(),
            source,
        })?;
        d.try_into()
    }
}

impl TryFrom<oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    /// Keeps sha256 digests (whose hex oci-spec has already checked), refuses the others.
    fn try_from(d: oci_spec::image::Digest) -> Result<Self, Self::Error> {
        match d.algorithm() {
            DigestAlgorithm::Sha256 => Self::from_hex(d.digest()),
            other => Err(DigestError::Algorithm(other.to_string())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The digest of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    /// The writer, the digest and length of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!("sha512:abc".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64))
            .parse::<Digest>()
            .is_err());
        assert!(format!("sha256:../{}", "a".repeat(61))
            .parse::<Digest>()
            .is_err());
    }
}
