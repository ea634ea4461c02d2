//! The decoder's contract under hostile input, as one function: the `cargo fuzz` target
//! (`protocol/fuzz`, `decode`) calls it with fuzzer-made bytes, and this crate's tests call it
//! with a deterministic stream of mutated frames, so that CI on stable Rust checks the same
//! property the fuzzer explores.
//!
//! For any byte string: decoding never panics; the incremental [`Decoder`] (fed in uneven
//! chunks) and the blocking [`read_message`] agree message for message and on where they
//! fail; the decoder never holds more than one frame's worth of unconsumed bytes beyond what
//! it was fed; and every message that decodes re-encodes to a frame that decodes to the same
//! message.

use crate::{encode, read_message, Decoder, Message, MAX_FRAME};

/// Checks the decoder's contract on `data`; panics when it is broken.
pub fn check_decoder(data: &[u8]) {
    let blocking = decode_blocking(data);
    let incremental = decode_incremental(data);
    assert_eq!(
        blocking.0, incremental.0,
        "read_message and Decoder disagree on the messages"
    );
    assert_eq!(
        blocking.1, incremental.1,
        "read_message and Decoder disagree on whether the stream is bad"
    );
    for msg in &blocking.0 {
        let frame = encode(msg);
        assert!(
            frame.len() <= 4 + MAX_FRAME,
            "an encoded frame passes the cap"
        );
        let again = read_message(&mut frame.as_slice())
            .expect("a re-encoded message decodes")
            .expect("a re-encoded message is a whole frame");
        assert_eq!(&again, msg, "a message changes across encode and decode");
    }
}

/// Messages from `read_message` until the end, and whether it stopped on an error (other
/// than a frame cut short by the end of the data, which the incremental decoder reports as
/// "need more").
fn decode_blocking(data: &[u8]) -> (Vec<Message>, bool) {
    let mut reader = data;
    let mut out = Vec::new();
    loop {
        match read_message(&mut reader) {
            Ok(Some(m)) => out.push(m),
            Ok(None) | Err(crate::DecodeError::Truncated) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

/// The same through [`Decoder`], fed in chunks whose sizes come from the data itself.
fn decode_incremental(data: &[u8]) -> (Vec<Message>, bool) {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut step = 1 + data.first().copied().unwrap_or(0) as usize;
    loop {
        let n = step.min(rest.len());
        dec.feed(&rest[..n]);
        rest = &rest[n..];
        step = step * 7 % 251 + 1;
        loop {
            match dec.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        assert!(
            dec.pending() < 4 + MAX_FRAME,
            "the decoder holds {} bytes it cannot use",
            dec.pending()
        );
        if rest.is_empty() {
            return (out, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::all_messages;

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn valid_streams_hold() {
        let stream: Vec<u8> = all_messages().iter().flat_map(encode).collect();
        check_decoder(&stream);
        assert_eq!(decode_blocking(&stream).0, all_messages());
    }

    #[test]
    fn mutated_streams_never_break_the_decoder() {
        let frames: Vec<Vec<u8>> = all_messages().iter().map(encode).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut data: Vec<u8> = (0..1 + rng.below(4))
                .flat_map(|_| frames[rng.below(frames.len())].clone())
                .collect();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len());
                match rng.below(6) {
                    0 => data[at] ^= 1 << rng.below(8),
                    1 => data[at] = rng.next() as u8,
                    2 => data.truncate(at),
                    3 => data.insert(at, rng.next() as u8),
                    // A length prefix that lies, bigger or smaller.
                    4 if data.len() >= 4 => {
                        let len = (rng.next() % (2 * MAX_FRAME as u64)) as u32;
                        data[..4].copy_from_slice(&len.to_le_bytes());
                    }
                    _ => {
                        let from = rng.below(data.len());
                        let chunk: Vec<u8> = data[from..].iter().take(16).copied().collect();
                        data.splice(at..at, chunk);
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            check_decoder(&data);
        }
    }
}
