//! Cutting a byte stream (a tar archive, say) into data frames of at most [`MAX_DATA`] bytes,
//! for whichever side sends it and whichever data message carries it.

use std::io::{self, Write};

use crate::MAX_DATA;

/// A [`Write`] that buffers bytes and hands them to `send` in chunks of at most
/// [`MAX_DATA`] bytes: whole chunks as they fill, the rest on [`flush`](Write::flush). It
/// never sends an empty chunk (an empty Stdin frame means end of stream).
pub struct ChunkWriter<F: FnMut(Vec<u8>) -> io::Result<()>> {
    send: F,
    buf: Vec<u8>,
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> ChunkWriter<F> {
    pub fn new(send: F) -> Self {
        Self {
            send,
            buf: Vec::new(),
        }
    }
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> Write for ChunkWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= MAX_DATA {
            let chunk = self.buf.drain(..MAX_DATA).collect();
            (self.send)(chunk)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            (self.send)(std::mem::take(&mut self.buf))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_ordered_and_never_empty() {
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let data: Vec<u8> = (0..(3 * MAX_DATA + 17)).map(|i| i as u8).collect();
        {
            let mut w = ChunkWriter::new(|c| {
                sent.push(c);
                Ok(())
            });
            for piece in data.chunks(1000) {
                w.write_all(piece).unwrap();
            }
            w.flush().unwrap();
            w.flush().unwrap();
        }
        assert!(sent.iter().all(|c| !c.is_empty() && c.len() <= MAX_DATA));
        assert_eq!(sent.len(), 4);
        assert_eq!(sent.concat(), data);
    }
}
