//! `pull`: resolve a reference on its registry, download what the store lacks, build the
//! rootfs.
//!
//! Layers download in parallel (three at a time, as docker does), each verified against
//! its digest while it streams into `tmp/partial/<hex>`; a complete, verified blob is
//! synced and renamed into `blobs/`. An interrupted download keeps its partial file, and
//! the next pull resumes it with an HTTP `Range` request (re-hashing what is already
//! there). Unpacking starts as soon as the first layer is in, in order, while the others
//! still download.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use sha2::Digest as _;

use super::digest::Digest;
use super::manifest::{self, Document, Platform};
use super::names::{self, NameEntry};
use super::progress::Progress;
use super::reference::Reference;
use super::registry::Client;
use super::store::{sync_parent, IoContext, Store, StoreError};
use super::unpack::Limits;
use super::{rootfs, ImageError, ImageRecord, MAX_JSON_BLOB};

/// How many layers download at once.
pub const PARALLEL_DOWNLOADS: usize = 3;

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to resolve indexes to; `None` means this host's, without checking
    /// single-platform images.
    pub platform: Option<Platform>,
    /// Registries that may be spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Bounds on each layer.
    pub limits: Limits,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: None,
            insecure_registries: Vec::new(),
            limits: Limits::from_env(),
        }
    }
}

/// The result of a pull.
#[derive(Debug)]
pub struct PullOutcome {
    pub record: ImageRecord,
    /// The digest to show the user (the index's, for a multi-platform image).
    pub digest: Digest,
    /// Whether anything new was downloaded or built.
    pub downloaded: bool,
}

/// Pulls `r` into the store.
pub fn pull(
    store: &Store,
    r: &Reference,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<PullOutcome, ImageError> {
    let _shared = store.lock_shared()?;
    let client = Client::new(&r.registry, &r.repository, &opts.insecure_registries)?;
    let want = opts.platform.clone().unwrap_or_else(Platform::host);

    let (bytes, ct) = client.manifest(&r.manifest_ref())?;
    let top = Digest::of(&bytes);
    if let Some(d) = &r.digest {
        check_digest(d, &top, "manifest")?;
    }
    let mut downloaded = false;
    let (manifest_digest, manifest_bytes, index_digest) = match manifest::parse(&bytes, &ct)? {
        Document::Manifest(_) => (top.clone(), bytes, None),
        Document::Index(idx) => {
            let desc = manifest::select_platform(&idx, &want)?;
            let d = manifest::descriptor_digest(&desc)?;
            let mbytes = if store.has_blob(&d) {
                store.read_blob(&d, MAX_JSON_BLOB)?
            } else {
                let (mbytes, _) = client.manifest(&d.to_string())?;
                check_digest(&d, &Digest::of(&mbytes), "manifest")?;
                mbytes
            };
            downloaded |= !store.has_blob(&top);
            store.put_blob(&bytes)?;
            (d, mbytes, Some(top.clone()))
        }
    };
    let m = match manifest::parse(&manifest_bytes, "")? {
        Document::Manifest(m) => m,
        Document::Index(_) => {
            return Err(manifest::ManifestError::UnsupportedMediaType(
                "nested image index".into(),
                "",
            )
            .into())
        }
    };
    downloaded |= !store.has_blob(&manifest_digest);

    // The config: small, fetched first to check the platform.
    let config_digest = manifest::descriptor_digest(m.config())?;
    if !store.has_blob(&config_digest) {
        downloaded = true;
        let (mut reader, _, _) = client.blob(&config_digest, 0)?;
        let mut limited = (&mut reader).take(MAX_JSON_BLOB);
        store.put_blob_from(
            &mut limited,
            &config_digest,
            Some(m.config().size()),
            &format!("config {}", config_digest.short()),
        )?;
    }
    let cfg = store.config(&config_digest)?;
    if let Some(p) = &opts.platform {
        let have = Platform {
            os: cfg.os().to_string(),
            architecture: cfg.architecture().to_string(),
            variant: cfg.variant().clone(),
        };
        if !p.matches(&have) {
            return Err(
                manifest::ManifestError::PlatformMismatch(p.to_string(), have.to_string()).into(),
            );
        }
    }

    // Layers: parallel downloads, unpacking in order as they arrive.
    let layers: Vec<(Digest, u64)> = m
        .layers()
        .iter()
        .map(|l| Ok((manifest::descriptor_digest(l)?, l.size())))
        .collect::<Result<_, ImageError>>()?;
    downloaded |= layers.iter().any(|(d, _)| !store.has_blob(d));
    downloaded |= !store.rootfs_path(&manifest_digest).is_file();
    let digests: Vec<Digest> = layers.iter().map(|(d, _)| d.clone()).collect();
    let cancel = AtomicBool::new(false);
    let queue = Mutex::new((0..layers.len()).collect::<VecDeque<_>>());
    let (tx, rx) = mpsc::channel::<(usize, Result<(), ImageError>)>();
    let bars: Vec<_> = layers
        .iter()
        .map(|(d, size)| progress.layer(d.short(), *size))
        .collect();

    let result = std::thread::scope(|scope| {
        for _ in 0..PARALLEL_DOWNLOADS.min(layers.len()) {
            let tx = tx.clone();
            let (queue, cancel, client, layers, bars) = (&queue, &cancel, &client, &layers, &bars);
            scope.spawn(move || loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(i) = next else { break };
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                let (d, size) = &layers[i];
                let r = fetch_blob(store, client, d, *size, &bars[i], cancel);
                if r.is_err() {
                    bars[i].fail();
                    cancel.store(true, Ordering::Relaxed);
                }
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut ready = vec![false; layers.len()];
        let mut first_err: Option<ImageError> = None;
        let wait_for = |i: usize, ready: &mut Vec<bool>| -> Result<(), ImageError> {
            while !ready[i] {
                match rx.recv() {
                    Ok((j, Ok(()))) => ready[j] = true,
                    Ok((_, Err(e))) => return Err(e),
                    Err(_) => return Err(ImageError::Cancelled),
                }
            }
            Ok(())
        };
        let built =
            rootfs::ensure::<ImageError>(store, &manifest_digest, &digests, opts.limits, |i| {
                wait_for(i, &mut ready)?;
                Ok(store.blob_path(&digests[i]))
            });
        if let Err(e) = built {
            cancel.store(true, Ordering::Relaxed);
            first_err = Some(e);
        }
        // Keep every layer even when the rootfs was already there.
        for i in 0..layers.len() {
            if first_err.is_some() {
                break;
            }
            if let Err(e) = wait_for(i, &mut ready) {
                cancel.store(true, Ordering::Relaxed);
                first_err = Some(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    });
    result?;

    // Manifest last: a blob in the store means everything below it is too.
    store.put_blob(&manifest_bytes)?;
    let entry = NameEntry::new(
        r.name(),
        r.tag.clone(),
        manifest_digest.clone(),
        index_digest.clone(),
        config_digest,
    );
    let previous = names::set(store, entry)?;
    downloaded |= previous.as_ref() != Some(&manifest_digest);
    let record = store.record(&manifest_digest)?;
    Ok(PullOutcome {
        record,
        digest: index_digest.unwrap_or(manifest_digest),
        downloaded,
    })
}

fn check_digest(expected: &Digest, actual: &Digest, what: &str) -> Result<(), ImageError> {
    if expected != actual {
        return Err(StoreError::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        }
        .into());
    }
    Ok(())
}

/// Downloads one blob into the store unless it is there, resuming a partial download.
fn fetch_blob(
    store: &Store,
    client: &Client,
    d: &Digest,
    size: u64,
    bar: &super::progress::LayerProgress,
    cancel: &AtomicBool,
) -> Result<(), ImageError> {
    if store.has_blob(d) {
        bar.done("Already exists");
        return Ok(());
    }
    let _lock = store.lock_blob(d)?;
    if store.has_blob(d) {
        bar.done("Already exists");
        return Ok(());
    }
    let partial: PathBuf = store.partial_path(d);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .at(&partial)?;
    let mut have = file.metadata().at(&partial)?.len();
    if have > size {
        file.set_len(0).at(&partial)?;
        have = 0;
    }
    let mut hasher = sha2::Sha256::new();
    if have > 0 {
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        while left > 0 {
            let n = file.read(&mut buf).at(&partial)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left = left.saturating_sub(n as u64);
        }
    }
    let (mut reader, _, resumed) = if have == size && size > 0 {
        (Box::new(io::empty()) as Box<dyn Read + Send>, None, true)
    } else {
        client.blob(d, have)?
    };
    if have > 0 && !resumed {
        file.set_len(0).at(&partial)?;
        hasher = sha2::Sha256::new();
        have = 0;
    }
    file.seek(SeekFrom::Start(have)).at(&partial)?;
    bar.start(have);
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 256 << 10];
    let mut got = have;
    let truncated = |got: u64, why: String| ImageError::Truncated {
        digest: d.short().to_string(),
        got,
        want: size,
        why,
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = out.flush();
            return Err(ImageError::Cancelled);
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = out.flush();
                return Err(truncated(got, format!(" ({e})")));
            }
        };
        if got + n as u64 > size {
            drop(out);
            let _ = fs::remove_file(&partial);
            return Err(StoreError::SizeMismatch {
                what: format!("blob {}", d.short()),
                expected: size,
                actual: got + n as u64,
            }
            .into());
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            drop(out);
            let _ = fs::remove_file(&partial);
            return Err(StoreError::Io(partial, e).into());
        }
        hasher.update(&buf[..n]);
        got += n as u64;
        bar.inc(n as u64);
    }
    let file = out.into_inner().map_err(|e| e.into_error()).at(&partial)?;
    if got < size {
        return Err(truncated(got, String::new()));
    }
    let actual = Digest::from_hasher(hasher);
    if &actual != d {
        drop(file);
        let _ = fs::remove_file(&partial);
        return Err(StoreError::DigestMismatch {
            what: format!("blob {}", d.short()),
            expected: d.clone(),
            actual,
        }
        .into());
    }
    file.sync_all().at(&partial)?;
    drop(file);
    let dest = store.blob_path(d);
    fs::rename(&partial, &dest).at(&dest)?;
    sync_parent(&dest);
    bar.done("Download complete");
    Ok(())
}
