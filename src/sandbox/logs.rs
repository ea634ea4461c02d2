//! The workload's log: what the main process wrote to stdout and stderr, byte-exact, with
//! the time each chunk arrived, capped in size (rotated once: `workload.log.1`).
//!
//! Record format: `nanos since the epoch: u64 LE | stream: u8 (1 stdout, 2 stderr) |
//! length: u32 LE | bytes`. A torn last record (the writer was killed) is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default cap of one log file; with the rotated one, twice this is kept.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
const HEADER: usize = 13;

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

struct Inner {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

/// Appends records; cheap to clone (one file shared by both streams).
#[derive(Clone)]
pub struct LogWriter {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

impl LogWriter {
    /// Opens (appending) the log at `path`, capped at `max` bytes per file.
    pub fn open(path: &Path, max: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                file,
                size,
                max: max.max(HEADER as u64 + 1),
            })),
        })
    }

    /// A writer of records into `file` as they come, never rotated: a pipe to the process
    /// that keeps the real log (a jailed VMM cannot reach the sandbox's directory; see
    /// [`relay`]).
    pub fn unrotated(file: File) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                path: PathBuf::new(),
                file,
                size: 0,
                max: u64::MAX,
            })),
        }
    }

    /// Appends one record.
    pub fn append(&self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.append_at(nanos, stream, data)
    }

    /// Appends one record that arrived at `nanos` since the epoch.
    fn append_at(&self, nanos: u64, stream: Stream, data: &[u8]) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in data.chunks(u32::MAX as usize) {
            let len = (HEADER + chunk.len()) as u64;
            if inner.size > 0 && inner.size + len > inner.max {
                let old = rotated(&inner.path);
                fs::rename(&inner.path, &old)?;
                inner.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&inner.path)?;
                inner.size = 0;
            }
            let mut rec = Vec::with_capacity(len as usize);
            rec.extend_from_slice(&nanos.to_le_bytes());
            rec.push(stream as u8);
            rec.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            rec.extend_from_slice(chunk);
            inner.file.write_all(&rec)?;
            inner.size += len;
        }
        Ok(())
    }

    /// A `Write` for one stream.
    pub fn stream(&self, stream: Stream) -> StreamWriter {
        StreamWriter {
            log: self.clone(),
            stream,
        }
    }
}

/// Writes into one stream of a log.
#[derive(Debug)]
pub struct StreamWriter {
    log: LogWriter,
    stream: Stream,
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.log.append(self.stream, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub nanos: u64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// The longest record [`relay`] waits for (the agent's frames are far shorter).
const MAX_RELAYED_RECORD: usize = 16 << 20;

/// Copies the records arriving on `from` (from a [`LogWriter::unrotated`] in another
/// process) into `to`, each with its own time, until `from` ends. What comes is not trusted:
/// a record that is malformed or too long ends the relay with an error.
pub fn relay(mut from: impl Read, to: &LogWriter) -> io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        let (records, used) = parse(&buf);
        for r in records {
            to.append_at(r.nanos, r.stream, &r.data)?;
        }
        buf.drain(..used);
        let bad_stream = buf.len() >= HEADER && !matches!(buf[8], 1 | 2);
        if bad_stream || buf.len() > HEADER + MAX_RELAYED_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a malformed log record",
            ));
        }
    }
}

/// Parses complete records from `bytes`; returns them and how many bytes they took.
pub fn parse(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= HEADER {
        let h = &bytes[pos..pos + HEADER];
        let nanos = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        let stream = match h[8] {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            _ => break, // not a log brig wrote: stop rather than guess
        };
        let len = u32::from_le_bytes(h[9..13].try_into().unwrap_or_default()) as usize;
        if bytes.len() - pos - HEADER < len {
            break;
        }
        out.push(Record {
            nanos,
            stream,
            data: bytes[pos + HEADER..pos + HEADER + len].to_vec(),
        });
        pos += HEADER + len;
    }
    (out, pos)
}

/// Everything in the log (rotated part first).
pub fn read_all(path: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        let mut bytes = Vec::new();
        match File::open(&p) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        records.extend(parse(&bytes).0);
    }
    Ok(records)
}

/// Splits records into lines per stream (a line keeps the time of the record it started
/// in); a final line without a newline is kept as is.
pub fn lines(records: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut partial: [Option<Record>; 2] = [None, None];
    for r in records {
        let slot = &mut partial[r.stream as usize - 1];
        for piece in r.data.split_inclusive(|b| *b == b'\n') {
            let line = slot.get_or_insert_with(|| Record {
                nanos: r.nanos,
                stream: r.stream,
                data: Vec::new(),
            });
            line.data.extend_from_slice(piece);
            if piece.ends_with(b"\n") {
                out.extend(slot.take());
            }
        }
    }
    let mut rest: Vec<Record> = partial.into_iter().flatten().collect();
    rest.sort_by_key(|r| r.nanos);
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_records_keep_their_streams_and_times_and_garbage_ends_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let to = LogWriter::open(&path, DEFAULT_MAX_BYTES).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let relaying = std::thread::spawn(move || relay(File::from(r), &to));
        let from = LogWriter::unrotated(File::from(w));
        from.append(Stream::Stdout, b"out\n").unwrap();
        from.append(Stream::Stderr, &vec![b'e'; 100_000]).unwrap();
        drop(from);
        relaying.join().unwrap().unwrap();
        let got = read_all(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].stream, got[0].data.as_slice()),
            (Stream::Stdout, &b"out\n"[..])
        );
        assert_eq!(
            (got[1].stream, got[1].data.len()),
            (Stream::Stderr, 100_000)
        );
        assert!(got[0].nanos <= got[1].nanos && got[0].nanos > 0);

        let to = LogWriter::open(&dir.path().join("bad"), DEFAULT_MAX_BYTES).unwrap();
        let mut bad = [0u8; HEADER];
        bad[8] = 7;
        let err = relay(&bad[..], &to).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut huge = vec![0u8; 8];
        huge.push(1);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.resize(HEADER + MAX_RELAYED_RECORD + 1, 0);
        assert!(relay(&huge[..], &to).is_err());
    }

    #[test]
    fn records_round_trip_and_split_into_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogWriter::open(&path, DEFAULT_MAX_BYTES).unwrap();
        log.append(Stream::Stdout, b"one\ntw").unwrap();
        log.append(Stream::Stderr, b"err\n").unwrap();
        log.append(Stream::Stdout, b"o\nthree").unwrap();
        log.append(Stream::Stdout, &[0, 255, b'\n']).unwrap();
        let all = read_all(&path).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[1].stream, Stream::Stderr);
        let l: Vec<(Stream, Vec<u8>)> = lines(&all)
            .into_iter()
            .map(|r| (r.stream, r.data))
            .collect();
        assert_eq!(
            l,
            vec![
                (Stream::Stdout, b"one\n".to_vec()),
                (Stream::Stderr, b"err\n".to_vec()),
                (Stream::Stdout, b"two\n".to_vec()),
                (Stream::Stdout, b"three\0\xff\n".to_vec()),
            ]
        );
    }

    #[test]
    fn the_log_is_capped_and_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogWriter::open(&path, 1000).unwrap();
        for i in 0..100 {
            log.append(Stream::Stdout, format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        let size = fs::metadata(&path).unwrap().len() + fs::metadata(rotated(&path)).unwrap().len();
        assert!(size <= 2000, "{size}");
        let all = lines(&read_all(&path).unwrap());
        assert_eq!(all.last().unwrap().data, b"line 0099\n");
        assert!(all.len() < 100, "the oldest lines were dropped");
    }

    #[test]
    fn a_torn_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogWriter::open(&path, DEFAULT_MAX_BYTES).unwrap();
        log.append(Stream::Stdout, b"whole\n").unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6, 7, 8, 1, 100, 0, 0, 0, b'x'])
            .unwrap();
        assert_eq!(read_all(&path).unwrap().len(), 1);
    }
}
