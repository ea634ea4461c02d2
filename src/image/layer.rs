//! Layer streams: decompression (gzip, zstd or none, detected by magic number) and the
//! bounds every layer is held to, so a tar bomb fails cleanly.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

/// Default cap on one layer's uncompressed size (64 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
/// Default cap on one layer's number of tar entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 4_000_000;
/// Bounds on one layer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl Limits {
    /// The defaults, overridden by `BRIG_MAX_LAYER_BYTES` / `BRIG_MAX_LAYER_ENTRIES`.
    pub fn from_env() -> Self {
        let get = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        Self {
            max_bytes: get("BRIG_MAX_LAYER_BYTES", DEFAULT_MAX_BYTES),
            max_entries: get("BRIG_MAX_LAYER_ENTRIES", DEFAULT_MAX_ENTRIES),
        }
    }
}

/// Opens a layer file, undoing gzip or zstd compression (detected by magic number).
pub fn open_layer(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let head = io::BufRead::fill_buf(&mut f)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(f)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(f)?))
    } else {
        Ok(Box::new(f))
    }
}

/// Counts bytes and fails once past a limit.
pub(crate) struct Limited<R> {
    pub(crate) inner: R,
    pub(crate) left: u64,
    pub(crate) exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("layer size limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
