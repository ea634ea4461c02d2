//! A seccomp program in JSON as one base64 string of its instructions (each packed in a
//! `u64`, little-endian) rather than an array of numbers: docker's default profile compiles to
//! about a thousand instructions, which as decimal numbers made most of a run request and of a
//! sandbox's config.json, and most of the time the agent spent parsing the request. Arrays
//! (from brigs that wrote them) are still read.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(insns: &[u64], s: S) -> Result<S::Ok, S::Error> {
    let bytes: Vec<u8> = insns.iter().flat_map(|i| i.to_le_bytes()).collect();
    s.serialize_str(&STANDARD.encode(bytes))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Insns {
        Packed(String),
        List(Vec<u64>),
    }
    match Insns::deserialize(d)? {
        Insns::List(list) => Ok(list),
        Insns::Packed(text) => {
            let bytes = STANDARD
                .decode(text.as_bytes())
                .map_err(|e| serde::de::Error::custom(format!("seccomp program: {e}")))?;
            if bytes.len() % 8 != 0 {
                return Err(serde::de::Error::custom(
                    "seccomp program: not a whole number of instructions",
                ));
            }
            Ok(bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::SecuritySpec;

    #[test]
    fn a_program_round_trips_as_one_string_and_arrays_still_read() {
        let spec = SecuritySpec {
            seccomp: vec![0x20, u64::MAX, 0x7fff_0000_0000_0006],
            ..Default::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"seccomp\":\""), "{json}");
        assert_eq!(serde_json::from_str::<SecuritySpec>(&json).unwrap(), spec);
        let old = r#"{"seccomp":[32,18446744073709551615,9223090561878065158]}"#;
        assert_eq!(
            serde_json::from_str::<SecuritySpec>(old).unwrap().seccomp,
            spec.seccomp
        );
        let empty = serde_json::to_string(&SecuritySpec::default()).unwrap();
        assert!(serde_json::from_str::<SecuritySpec>(&empty)
            .unwrap()
            .seccomp
            .is_empty());
        for bad in [r#"{"seccomp":"not base64!"}"#, r#"{"seccomp":"AAAA"}"#] {
            assert!(serde_json::from_str::<SecuritySpec>(bad).is_err(), "{bad}");
        }
    }
}
