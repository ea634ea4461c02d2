//! Length-prefixed frame codec: `len: u32 LE | kind: u8 | payload`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::messages::{
    ExecErrorKind, ExitStatus, Message, PathInfo, ResourceUpdate, RestoreSpec, RunSpec, Stats,
};
use crate::MAX_FRAME;

const HELLO: u8 = 1;
const RUN: u8 = 2;
const STARTED: u8 = 3;
const STDIN: u8 = 4;
const STDOUT: u8 = 5;
const STDERR: u8 = 6;
const RESIZE: u8 = 7;
const SIGNAL: u8 = 8;
const EXIT: u8 = 9;
const EXEC_FAILED: u8 = 10;
const KILL: u8 = 11;
const STATS_REQUEST: u8 = 12;
const STATS: u8 = 13;
const COPY_OUT: u8 = 14;
const COPY_IN: u8 = 15;
const DONE: u8 = 16;
const STAT: u8 = 17;
const PATH_INFO: u8 = 18;
const FREEZE: u8 = 19;
const RESTORE: u8 = 20;
const UPDATE: u8 = 21;
const CHECKPOINT: u8 = 22;
const PARKED: u8 = 23;

/// A frame that cannot be decoded. The connection it came from cannot be trusted any further.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame length is zero or larger than [`MAX_FRAME`].
    #[error("frame length {0} is out of bounds (1..={MAX_FRAME})")]
    BadLength(usize),
    /// The kind byte names no message.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A control frame's payload is not the JSON its kind calls for.
    #[error("malformed payload for frame kind {kind}: {source}")]
    BadPayload {
        kind: u8,
        #[source]
        source: serde_json::Error,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading the stream failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

#[derive(Serialize, Deserialize)]
struct HelloBody {
    version: u32,
    uptime_ns: u64,
}

#[derive(Serialize, Deserialize)]
struct StartedBody {
    pid: u32,
    uptime_ns: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    phases: Vec<(String, u64)>,
}

#[derive(Serialize, Deserialize)]
struct ResizeBody {
    rows: u16,
    cols: u16,
}

#[derive(Serialize, Deserialize)]
struct PathBody {
    path: String,
}

#[derive(Serialize, Deserialize)]
struct DoneBody {
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ExecFailedBody {
    kind: ExecErrorKind,
    message: String,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Encodes one message as a complete frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match msg {
        Message::Hello { version, uptime_ns } => (
            HELLO,
            json(&HelloBody {
                version: *version,
                uptime_ns: *uptime_ns,
            })
            .into(),
        ),
        Message::Run(spec) => (RUN, json(spec.as_ref()).into()),
        Message::Started {
            pid,
            uptime_ns,
            phases,
        } => (
            STARTED,
            json(&StartedBody {
                pid: *pid,
                uptime_ns: *uptime_ns,
                phases: phases.clone(),
            })
            .into(),
        ),
        Message::Stdin(data) => (STDIN, data.as_slice().into()),
        Message::Stdout(data) => (STDOUT, data.as_slice().into()),
        Message::Stderr(data) => (STDERR, data.as_slice().into()),
        Message::Resize { rows, cols } => (
            RESIZE,
            json(&ResizeBody {
                rows: *rows,
                cols: *cols,
            })
            .into(),
        ),
        Message::Signal(sig) => (SIGNAL, json(sig).into()),
        Message::Exit(status) => (EXIT, json(status).into()),
        Message::ExecFailed { kind, message } => (
            EXEC_FAILED,
            json(&ExecFailedBody {
                kind: *kind,
                message: message.clone(),
            })
            .into(),
        ),
        Message::Kill { signal } => (KILL, json(signal).into()),
        Message::StatsRequest => (STATS_REQUEST, Vec::new().into()),
        Message::Stats(stats) => (STATS, json(stats).into()),
        Message::CopyOut { path } => (COPY_OUT, json(&PathBody { path: path.clone() }).into()),
        Message::CopyIn { path } => (COPY_IN, json(&PathBody { path: path.clone() }).into()),
        Message::Done { error } => (
            DONE,
            json(&DoneBody {
                error: error.clone(),
            })
            .into(),
        ),
        Message::Stat { path } => (STAT, json(&PathBody { path: path.clone() }).into()),
        Message::PathInfo(info) => (PATH_INFO, json(info).into()),
        Message::Freeze => (FREEZE, Vec::new().into()),
        Message::Restore(spec) => (RESTORE, json(spec).into()),
        Message::Update(update) => (UPDATE, json(update).into()),
        Message::Checkpoint => (CHECKPOINT, Vec::new().into()),
        Message::Parked => (PARKED, Vec::new().into()),
    };
    let len = payload.len() + 1;
    let mut frame = Vec::with_capacity(4 + len);
    // Data frames are split by senders at MAX_DATA, control frames are tiny: len fits in u32.
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(&payload);
    frame
}

fn parse<'a, T: Deserialize<'a>>(kind: u8, payload: &'a [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError::BadPayload { kind, source })
}

fn decode_body(kind: u8, payload: &[u8]) -> Result<Message, DecodeError> {
    Ok(match kind {
        HELLO => {
            let b: HelloBody = parse(kind, payload)?;
            Message::Hello {
                version: b.version,
                uptime_ns: b.uptime_ns,
            }
        }
        RUN => Message::Run(Box::new(parse::<RunSpec>(kind, payload)?)),
        STARTED => {
            let b: StartedBody = parse(kind, payload)?;
            Message::Started {
                pid: b.pid,
                uptime_ns: b.uptime_ns,
                phases: b.phases,
            }
        }
        STDIN => Message::Stdin(payload.to_vec()),
        STDOUT => Message::Stdout(payload.to_vec()),
        STDERR => Message::Stderr(payload.to_vec()),
        RESIZE => {
            let b: ResizeBody = parse(kind, payload)?;
            Message::Resize {
                rows: b.rows,
                cols: b.cols,
            }
        }
        SIGNAL => Message::Signal(parse(kind, payload)?),
        EXIT => Message::Exit(parse::<ExitStatus>(kind, payload)?),
        EXEC_FAILED => {
            let b: ExecFailedBody = parse(kind, payload)?;
            Message::ExecFailed {
                kind: b.kind,
                message: b.message,
            }
        }
        KILL => Message::Kill {
            signal: parse(kind, payload)?,
        },
        STATS_REQUEST => Message::StatsRequest,
        STATS => Message::Stats(parse::<Stats>(kind, payload)?),
        COPY_OUT => Message::CopyOut {
            path: parse::<PathBody>(kind, payload)?.path,
        },
        COPY_IN => Message::CopyIn {
            path: parse::<PathBody>(kind, payload)?.path,
        },
        DONE => Message::Done {
            error: parse::<DoneBody>(kind, payload)?.error,
        },
        STAT => Message::Stat {
            path: parse::<PathBody>(kind, payload)?.path,
        },
        PATH_INFO => Message::PathInfo(parse::<PathInfo>(kind, payload)?),
        FREEZE => Message::Freeze,
        RESTORE => Message::Restore(parse::<RestoreSpec>(kind, payload)?),
        UPDATE => Message::Update(parse::<ResourceUpdate>(kind, payload)?),
        CHECKPOINT => Message::Checkpoint,
        PARKED => Message::Parked,
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

fn check_len(raw: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(raw) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(DecodeError::BadLength(len));
    }
    Ok(len)
}

/// Incremental decoder for non-blocking readers: feed bytes, take messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet consumed as complete frames.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = check_len([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode_body(self.buf[4], &self.buf[5..4 + len]);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}

/// Reads one message from a blocking stream; `Ok(None)` at a clean end of stream.
pub fn read_message<R: Read>(reader: &mut R) -> Result<Option<Message>, DecodeError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(DecodeError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = check_len(head)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => DecodeError::Truncated,
        _ => DecodeError::Io(e),
    })?;
    decode_body(body[0], &body[1..]).map(Some)
}

/// Writes one message to a blocking stream.
pub fn write_message<W: Write>(writer: &mut W, msg: &Message) -> io::Result<()> {
    writer.write_all(&encode(msg))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::messages::{FileKind, Rlimit, RootfsSpec};

    /// One of every message, with non-default fields.
    pub(crate) fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                version: crate::PROTOCOL_VERSION,
                uptime_ns: 123_456_789,
            },
            Message::Run(Box::new(RunSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["PATH=/bin".into(), "A=b=c".into()],
                cwd: "/work".into(),
                user: "1000:1000".into(),
                groups: vec!["10".into()],
                tty: true,
                rows: 24,
                cols: 80,
                stdin: true,
                rlimits: vec![Rlimit {
                    resource: "nofile".into(),
                    soft: 1024,
                    hard: 4096,
                }],
                umask: Some(0o027),
                hostname: "box".into(),
                rootfs: Some(RootfsSpec {
                    device: "/dev/vda".into(),
                    fstype: "erofs".into(),
                    scratch: "/dev/vdb".into(),
                    read_only: false,
                    mounts: vec![crate::MountSpec {
                        fstype: "virtiofs".into(),
                        source: "brig-vol0".into(),
                        target: "/src".into(),
                        read_only: true,
                        options: String::new(),
                        file: String::new(),
                        copy_up: false,
                    }],
                    files: vec![crate::FileSpec {
                        path: "/run/.containerenv".into(),
                        content: "engine=\"podman\"\n".into(),
                    }],
                }),
                memory_limit: 1 << 30,
                pids_limit: 100,
                memory_swap: 3 << 29,
                cpuset_cpus: "0-1".into(),
                cpuset_mems: "0".into(),
                network: Some(crate::NetworkSpec {
                    address: "10.89.0.2".into(),
                    prefix_len: 30,
                    gateway: "10.89.0.1".into(),
                    mtu: 1500,
                    mac: "02:42:0a:59:00:02".into(),
                    resolv_conf: "nameserver 192.0.2.53\n".into(),
                    hosts: "127.0.0.1\tlocalhost\n".into(),
                }),
                security: Some(crate::SecuritySpec {
                    capabilities: 0xa80425fb,
                    no_new_privs: true,
                    seccomp: vec![0x20, u64::MAX, 0x7fff_0000_0000_0006],
                    masked_paths: vec!["/proc/kcore".into()],
                    readonly_paths: vec!["/proc/sys".into()],
                }),
                discard_disks: true,
            })),
            Message::Run(Box::default()),
            Message::Started {
                pid: 7,
                uptime_ns: 9,
                phases: Vec::new(),
            },
            Message::Started {
                pid: 8,
                uptime_ns: 10,
                phases: vec![("rootfs".into(), 3), ("network".into(), 5)],
            },
            Message::Stdin(b"input\n".to_vec()),
            Message::Stdin(Vec::new()),
            Message::Stdout((0..=255u8).collect()),
            Message::Stderr(b"oops\0\xff".to_vec()),
            Message::Resize {
                rows: 50,
                cols: 132,
            },
            Message::Signal(15),
            Message::Exit(ExitStatus {
                code: Some(7),
                signal: None,
                uptime_ns: 1,
            }),
            Message::Exit(ExitStatus {
                code: None,
                signal: Some(9),
                uptime_ns: 2,
            }),
            Message::ExecFailed {
                kind: ExecErrorKind::NotFound,
                message: "nope: not found".into(),
            },
            Message::Kill { signal: 15 },
            Message::StatsRequest,
            Message::Stats(Stats {
                cpu_usage_usec: 1,
                memory_current: 2,
                memory_max: 3,
                memory_total: 4,
                pids_current: 5,
                cpus: 6,
                uptime_ns: 7,
                net_rx_bytes: 8,
                net_tx_bytes: 9,
            }),
            Message::CopyOut {
                path: "/etc/../x y".into(),
            },
            Message::CopyIn {
                path: "/tmp".into(),
            },
            Message::Done { error: None },
            Message::Done {
                error: Some("no such file".into()),
            },
            Message::Stat {
                path: "/etc/passwd".into(),
            },
            Message::PathInfo(PathInfo {
                kind: FileKind::Directory,
                mode: 0o1777,
                size: 4096,
                mtime: -5,
            }),
            Message::Freeze,
            Message::Update(crate::messages::ResourceUpdate {
                memory_max: Some("67108864".into()),
                memory_swap_max: None,
                pids_max: Some("max".into()),
            }),
            Message::Restore(RestoreSpec {
                realtime_ns: 1_700_000_000_123_456_789,
                seed: vec![7; 64],
                disks: vec![crate::messages::DiskSize {
                    name: "vda".into(),
                    sectors: 2048,
                }],
                network: None,
            }),
            Message::Checkpoint,
            Message::Parked,
        ]
    }

    #[test]
    fn every_message_round_trips_through_blocking_io() {
        for msg in all_messages() {
            let mut wire = Vec::new();
            write_message(&mut wire, &msg).unwrap();
            let mut reader = wire.as_slice();
            assert_eq!(read_message(&mut reader).unwrap(), Some(msg));
            assert!(read_message(&mut reader).unwrap().is_none());
        }
    }

    #[test]
    fn decoder_handles_byte_by_byte_delivery() {
        let msgs = all_messages();
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        for b in wire {
            dec.feed(&[b]);
            while let Some(m) = dec.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn rejects_zero_and_oversized_lengths() {
        let mut dec = Decoder::new();
        dec.feed(&0u32.to_le_bytes());
        assert!(matches!(dec.next_message(), Err(DecodeError::BadLength(0))));

        let huge = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes();
        let mut dec = Decoder::new();
        dec.feed(&huge);
        assert!(matches!(dec.next_message(), Err(DecodeError::BadLength(_))));
        assert!(matches!(
            read_message(&mut &huge[..]),
            Err(DecodeError::BadLength(_))
        ));
        let mut all_ones = &[0xffu8; 4][..];
        assert!(matches!(
            read_message(&mut all_ones),
            Err(DecodeError::BadLength(_))
        ));
    }

    #[test]
    fn rejects_unknown_kinds_and_bad_json() {
        let mut frame = 1u32.to_le_bytes().to_vec();
        frame.push(200);
        assert!(matches!(
            read_message(&mut frame.as_slice()),
            Err(DecodeError::UnknownKind(200))
        ));
        for kind in [
            HELLO,
            RUN,
            STARTED,
            RESIZE,
            SIGNAL,
            EXIT,
            EXEC_FAILED,
            KILL,
            STATS,
            COPY_OUT,
            COPY_IN,
            DONE,
        ] {
            let mut frame = 4u32.to_le_bytes().to_vec();
            frame.push(kind);
            frame.extend_from_slice(b"{x:");
            assert!(
                matches!(
                    read_message(&mut frame.as_slice()),
                    Err(DecodeError::BadPayload { .. })
                ),
                "kind {kind}"
            );
        }
        // A Hello with a field of the wrong type.
        let body = br#"{"version":"one","uptime_ns":0}"#;
        let mut frame = u32::try_from(body.len() + 1)
            .unwrap()
            .to_le_bytes()
            .to_vec();
        frame.push(HELLO);
        frame.extend_from_slice(body);
        assert!(read_message(&mut frame.as_slice()).is_err());
    }

    #[test]
    fn truncated_streams_are_errors_not_eof() {
        let wire = encode(&Message::Stdout(b"hello".to_vec()));
        for cut in 1..wire.len() {
            let res = read_message(&mut &wire[..cut]);
            assert!(matches!(res, Err(DecodeError::Truncated)), "cut at {cut}");
        }
        let mut dec = Decoder::new();
        dec.feed(&wire[..wire.len() - 1]);
        assert!(dec.next_message().unwrap().is_none());
    }

    #[test]
    fn run_spec_fields_added_later_default_when_absent() {
        // A RunSpec from a host that predates memory_swap and the cpuset fields.
        let body = br#"{"argv":["true"],"memory_limit":67108864}"#;
        let mut frame = u32::try_from(body.len() + 1)
            .unwrap()
            .to_le_bytes()
            .to_vec();
        frame.push(RUN);
        frame.extend_from_slice(body);
        let Some(Message::Run(spec)) = read_message(&mut frame.as_slice()).unwrap() else {
            panic!("not a Run");
        };
        assert_eq!(spec.memory_swap, 0);
        assert!(spec.cpuset_cpus.is_empty() && spec.cpuset_mems.is_empty());
        assert_eq!(spec.swap_max().as_deref(), Some("67108864"));
    }

    #[test]
    fn swap_max_follows_docker() {
        let spec = |memory_limit, memory_swap| RunSpec {
            memory_limit,
            memory_swap,
            ..Default::default()
        };
        assert_eq!(spec(0, 0).swap_max(), None);
        assert_eq!(spec(64 << 20, 0).swap_max().as_deref(), Some("67108864"));
        assert_eq!(
            spec(64 << 20, 128 << 20).swap_max().as_deref(),
            Some("67108864")
        );
        assert_eq!(
            spec(64 << 20, 96 << 20).swap_max().as_deref(),
            Some("33554432")
        );
        assert_eq!(spec(64 << 20, 64 << 20).swap_max().as_deref(), Some("0"));
        assert_eq!(spec(64 << 20, -1).swap_max().as_deref(), Some("max"));
        assert_eq!(spec(0, -1).swap_max().as_deref(), Some("max"));
    }

    #[test]
    fn shell_codes_follow_docker() {
        let code = |code, signal| ExitStatus {
            code,
            signal,
            uptime_ns: 0,
        };
        assert_eq!(code(Some(0), None).shell_code(), 0);
        assert_eq!(code(Some(7), None).shell_code(), 7);
        assert_eq!(code(None, Some(9)).shell_code(), 137);
    }
}
