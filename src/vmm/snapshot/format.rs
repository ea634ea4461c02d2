//! The state file's format: `BRIGSNAP` | format version (u32 LE) | payload length (u64 LE) |
//! payload (JSON) | SHA-256 of everything before it. Loading checks the magic, the version,
//! the length (against the file and a cap, before anything is parsed) and the checksum, so a
//! foreign, truncated, corrupted or newer file is refused with its reason.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SnapshotError;

const MAGIC: &[u8; 8] = b"BRIGSNAP";
/// Bumped on every change to what is saved: a state file of another version is refused.
pub const VERSION: u32 = 1;
/// The most payload loading will parse (a few vCPUs' state is ~100 KiB of JSON).
const MAX_PAYLOAD: u64 = 16 << 20;
const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 32;

/// `state` as a state file's bytes.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotError> {
    let payload = serde_json::to_vec(state).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// The state in a state file's bytes, once every check passed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
    let corrupt = |why: &str| SnapshotError::Corrupt(why.to_string());
    if bytes.len() < HEADER + TRAILER {
        return Err(corrupt("the state file is truncated"));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a brig snapshot (bad magic)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != VERSION {
        return Err(SnapshotError::Version {
            found: version,
            supported: VERSION,
        });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    if len > MAX_PAYLOAD {
        return Err(corrupt("the state is larger than any brig writes"));
    }
    let end = HEADER + len as usize;
    if bytes.len() != end + TRAILER {
        return Err(corrupt("the state file is truncated or has trailing bytes"));
    }
    if Sha256::digest(&bytes[..end]).as_slice() != &bytes[end..] {
        return Err(corrupt("checksum mismatch"));
    }
    serde_json::from_slice(&bytes[HEADER..end]).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        a: u32,
        b: Vec<u8>,
    }

    fn sample() -> Vec<u8> {
        encode(&S {
            a: 7,
            b: vec![1, 2, 3],
        })
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let s: S = decode(&sample()).unwrap();
        assert_eq!(
            s,
            S {
                a: 7,
                b: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn every_kind_of_damage_is_refused_with_its_reason() {
        let good = sample();
        let err = |bytes: &[u8]| decode::<S>(bytes).unwrap_err().to_string();
        // Any single flipped byte.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode::<S>(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(err(&good[..good.len() - 1]).contains("truncated"));
        assert!(err(&good[..10]).contains("truncated"));
        assert!(err(&[]).contains("truncated"));
        let mut foreign = good.clone();
        foreign[..8].copy_from_slice(b"NOTBRIG!");
        assert!(err(&foreign).contains("bad magic"));
        let mut newer = good.clone();
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert!(err(&newer).contains("version"));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&huge).contains("larger"));
        let mut flipped = good;
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(err(&flipped).contains("checksum"));
    }
}
