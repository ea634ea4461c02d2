//! Deterministic random inputs for the property tests that run the fuzzing harnesses on
//! stable Rust (`devices::virtio::fuzzing`, `image::fuzzing`): a fixed-seed generator, so a
//! failure reproduces, and a mutator for seed documents.

/// xorshift64*: enough randomness for inputs, no crate needed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[3]).collect()
    }

    /// `seed` with 1-4 mutations: bit flips, random bytes, cuts, insertions, copied chunks,
    /// and tokens that matter to JSON.
    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b",",
            b":",
            b"null",
            b"-1",
            b"1e999",
            b"\\u0000",
            b"\"sha256:\"",
            b"18446744073709551616",
            b"\xff",
        ];
        let mut data = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            if data.is_empty() {
                break;
            }
            let at = self.below(data.len());
            match self.below(6) {
                0 => data[at] ^= 1 << self.below(8),
                1 => data[at] = self.next().to_le_bytes()[0],
                2 => data.truncate(at),
                3 => {
                    let t = TOKENS[self.below(TOKENS.len())];
                    data.splice(at..at, t.iter().copied());
                }
                4 => {
                    let end = (at + 1 + self.below(8)).min(data.len());
                    data.drain(at..end);
                }
                _ => {
                    let from = self.below(data.len());
                    let chunk: Vec<u8> = data[from..].iter().take(32).copied().collect();
                    data.splice(at..at, chunk);
                }
            }
        }
        data
    }
}

/// Runs `harness` on `runs` inputs from `gen`, with a generator seeded with `seed`.
///
/// With `BRIG_FUZZ_SECONDS` set (`scripts/fuzz` does, where cargo-fuzz or nightly is
/// missing) it runs for that long instead, from `BRIG_FUZZ_SEED` (default: the clock), and
/// prints `prop-fuzz: NAME RUNS SECONDS SEED`; a failing input is dumped as hex first.
pub fn check(
    name: &str,
    harness: fn(&[u8]),
    seed: u64,
    runs: usize,
    mut gen: impl FnMut(&mut Rng) -> Vec<u8>,
) {
    let Some(secs) = std::env::var("BRIG_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    else {
        let mut rng = Rng(seed);
        for _ in 0..runs {
            harness(&gen(&mut rng));
        }
        return;
    };
    let seed = std::env::var("BRIG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(seed, |d| d.as_nanos() as u64 | 1)
        });
    let mut rng = Rng(seed);
    let start = std::time::Instant::now();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let input = gen(&mut rng);
        let result = std::panic::catch_unwind(|| harness(&input));
        if let Err(panic) = result {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("prop-fuzz: {name} failed on run {done} (BRIG_FUZZ_SEED={seed}): {hex}");
            std::panic::resume_unwind(panic);
        }
        done += 1;
    }
    println!(
        "prop-fuzz: {name} {done} {:.0} {seed}",
        start.elapsed().as_secs_f64()
    );
}

/// [`check`] on random byte strings of up to `max_len` bytes.
pub fn run(name: &str, harness: fn(&[u8]), seed: u64, runs: usize, max_len: usize) {
    check(name, harness, seed, runs, |rng| {
        let len = rng.below(max_len);
        rng.bytes(len)
    });
}
