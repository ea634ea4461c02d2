//! The state file's format: `BRIGSNAP` | format version (u32 LE) | payload length (u64 LE) |
//! payload (postcard) | SHA-256 of everything before it. Loading checks the magic, the version,
//! the length (against the file and a cap, before anything is parsed) and the checksum, so a
//! foreign, truncated, corrupted or newer file is refused with its reason.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SnapshotError;

const MAGIC: &[u8; 8] = b"BRIGSNAP";
/// Bumped on every change to what is saved: a state file of another version is refused.
/// Version 2: the payload is postcard (serde's data model as compact binary: KVM's state
/// structs, which kvm-bindings serializes as bytes, are their bytes), not JSON (each byte a
/// decimal number: ~26 KB a vCPU, ~0.2 ms to parse natively and ~20 ms under nested
/// emulation, on every restore).
pub const VERSION: u32 = 2;
/// The most payload loading will parse (a few vCPUs' state is ~30 KiB).
const MAX_PAYLOAD: u64 = 16 << 20;
const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 32;

/// `state` as a state file's bytes.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_stdvec(state).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
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
    match postcard::take_from_bytes(&bytes[HEADER..end]) {
        Ok((state, [])) => Ok(state),
        Ok(_) => Err(corrupt("the state has bytes past its end")),
        Err(e) => Err(SnapshotError::Corrupt(e.to_string())),
    }
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
    fn a_payload_that_does_not_parse_or_has_bytes_left_is_refused() {
        let seal = |payload: &[u8]| {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(payload);
            let sum = Sha256::digest(&out);
            out.extend_from_slice(&sum);
            out
        };
        let payload = postcard::to_stdvec(&S { a: 7, b: vec![1] }).unwrap();
        assert!(decode::<S>(&seal(&payload)).is_ok());
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode::<S>(&seal(&longer))
            .unwrap_err()
            .to_string()
            .contains("past its end"));
        // A vector claiming more elements than there are bytes.
        assert!(decode::<S>(&seal(&[7, 0xff, 0xff, 0xff, 0x0f])).is_err());
    }

    #[test]
    fn kvm_state_structs_round_trip() {
        use kvm_bindings::{kvm_cpuid_entry2, kvm_lapic_state, kvm_xsave, CpuId};
        let mut cpuid = CpuId::new(3).unwrap();
        for (i, e) in cpuid.as_mut_slice().iter_mut().enumerate() {
            *e = kvm_cpuid_entry2 {
                function: i as u32,
                eax: 0xdead_beef,
                ..Default::default()
            };
        }
        let mut xsave = kvm_xsave::default();
        xsave.region[5] = 0x1234_5678;
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[0x20] = -3;
        let state = (cpuid, xsave, lapic, vec![(0x10u32, u64::MAX)]);
        let back: (CpuId, kvm_xsave, kvm_lapic_state, Vec<(u32, u64)>) =
            decode(&encode(&state).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&state).unwrap()
        );
        assert_eq!(back.1.region[5], 0x1234_5678);
        assert_eq!(back.0.as_slice()[2].eax, 0xdead_beef);
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
