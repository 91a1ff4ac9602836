//! An input image read from stdin (`-`). The converter plans its jobs over
//! the whole virtual disk and its workers read in any order, while a pipe
//! has no size until it ends and reads only in order; so the stream is first
//! kept in an unnamed temporary file (`O_TMPFILE`: it has no name, and the
//! kernel frees it however the process ends, SIGKILL included), and the
//! conversion then reads that file like any other input:
//!
//! * a raw stream is kept sparse (all-zero 4 KiB blocks are not written), so
//!   it costs the disk only its non-zero data;
//! * a `.zst` stream is kept as it came; if it is seekable (vmfinal's own
//!   `.zst`) it is read frame by frame in parallel from there, otherwise it
//!   is decompressed into a second, sparse temporary file;
//! * qcow2 cannot be streamed (its tables point anywhere in the file) and is
//!   refused.
//!
//! The temporary file lives beside OUT (the space is needed on OUT's
//! filesystem anyway), or in `$TMPDIR` (default `/var/tmp`) when OUT is
//! stdout too.
//!
//! Not here: the formats themselves (`image`), stdout (`output::dest`).
//!
//! Crates: the unnamed file is `tempfile::tempfile_in` (O_TMPFILE, with its
//! own fallback); no raw libc call is left here.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

use crate::convert::ConvertRequest;
use crate::image::{self, ImageError, ImageFormat};
use crate::output::is_stdio;
use crate::pipeline::PipelineError;
use crate::report::{ConvertReport, human_bytes};

/// Zero blocks of this size are left as holes in the temporary file.
const BLOCK: usize = 4096;
/// Bytes read from the stream at a time.
const CHUNK: usize = 4 << 20;
/// A disk image is whole sectors.
const SECTOR: u64 = 512;

/// The stream, kept in an unnamed file that the conversion reads.
pub struct Spool {
    /// Open for as long as the conversion runs; the file vanishes on close.
    _files: Vec<File>,
    /// `/proc/self/fd/N` of the file to read.
    path: PathBuf,
    /// The format the conversion reads it as.
    open_as: ImageFormat,
    /// The stream's own format and length, for the report.
    stream_format: ImageFormat,
    stream_bytes: u64,
}

impl Spool {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The report names the input as the user did: `-`, its stream format
    /// and length.
    pub fn relabel(&self, r: &mut ConvertReport) {
        r.input.path = PathBuf::from("-");
        r.input.format = self.stream_format;
        r.input.host_bytes = self.stream_bytes;
    }

    /// Errors name stdin, not the temporary file. Interruption stays
    /// recognisable.
    pub fn relabel_err(&self, e: anyhow::Error) -> anyhow::Error {
        if crate::pipeline::is_interrupted(&e) {
            return e;
        }
        let p = self.path.display().to_string();
        let chain: Vec<String> = e
            .chain()
            .map(|c| c.to_string().replace(&p, "stdin"))
            .collect();
        anyhow!(chain.join(": "))
    }
}

/// The conversion's result as the user sees it: with a spool, the report
/// and any error name stdin instead of the temporary file.
pub fn relabeled(
    spool: &Option<Spool>,
    r: anyhow::Result<ConvertReport>,
) -> anyhow::Result<ConvertReport> {
    match spool {
        None => r,
        Some(s) => {
            let mut report = r.map_err(|e| s.relabel_err(e))?;
            s.relabel(&mut report);
            Ok(report)
        }
    }
}

/// If `req.input` is `-`, reads stdin into a spool and points the request
/// at it. The caller keeps the spool alive until the conversion is done.
pub fn redirect_stdin(req: &mut ConvertRequest) -> anyhow::Result<Option<Spool>> {
    if !is_stdio(&req.input) {
        return Ok(None);
    }
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        bail!("stdin is a terminal: pipe an image into it (`... | vmfinal compact - -o OUT`)");
    }
    let dir = spool_dir(&req.output);
    let spool = from_reader(&mut stdin.lock(), &dir, req.input_format)?;
    req.input = spool.path.clone();
    req.input_format = Some(spool.open_as);
    Ok(Some(spool))
}

/// Where the temporary file goes: OUT's directory, or `$TMPDIR` / `/var/tmp`
/// when OUT is stdout.
fn spool_dir(output: &Path) -> PathBuf {
    if is_stdio(output) {
        return std::env::var_os("TMPDIR")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    }
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reads the whole stream `r` into a spool in `dir`. `forced` is `--format`.
pub fn from_reader(
    r: &mut dyn Read,
    dir: &Path,
    forced: Option<ImageFormat>,
) -> anyhow::Result<Spool> {
    let mut head = Vec::with_capacity(4);
    read_full(&mut Read::take(&mut *r, 4), &mut head)?;
    let format = match forced {
        Some(f) => f,
        None => probe(&head),
    };
    if format == ImageFormat::Qcow2 {
        bail!(
            "stdin: qcow2 cannot be read from a stream (its tables point anywhere in the file); give the file's name instead of -"
        );
    }
    let mut stream = std::io::Cursor::new(head).chain(r);
    let st = crate::progress::stage("stdin");
    let file = unnamed_file(dir)?;
    let n = copy_sparse(&mut stream, &file, &st).map_err(|e| stdin_err(e, dir))?;
    st.done();
    let path = proc_path(&file);
    if format == ImageFormat::Raw {
        if n == 0 {
            bail!("stdin was empty: no disk image to read");
        }
        if forced.is_none() && n % SECTOR != 0 {
            bail!(
                "stdin: {n} bytes is not a whole number of 512-byte sectors, so not a disk image (give --format raw to take it anyway)"
            );
        }
        return Ok(Spool {
            _files: vec![file],
            path,
            open_as: ImageFormat::Raw,
            stream_format: ImageFormat::Raw,
            stream_bytes: n,
        });
    }
    // zst: seekable (read in place) or not (decompress it).
    match image::open(&path, Some(ImageFormat::Zst)) {
        Ok(_) => Ok(Spool {
            _files: vec![file],
            path,
            open_as: ImageFormat::Zst,
            stream_format: ImageFormat::Zst,
            stream_bytes: n,
        }),
        Err(ImageError::Unsupported { .. }) => {
            let st = crate::progress::stage("decompress");
            let raw = unnamed_file(dir)?;
            let mut dec = zstd::stream::read::Decoder::with_buffer(BufReader::new(
                File::open(&path).map_err(|e| anyhow!("stdin: {e}"))?,
            ))
            .map_err(|e| anyhow!("stdin: {e}"))?;
            copy_sparse(&mut dec, &raw, &st).map_err(|e| {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    anyhow::Error::from(PipelineError::Interrupted)
                } else {
                    anyhow!("stdin: not a complete zstd stream: {e}")
                }
            })?;
            st.done();
            let raw_path = proc_path(&raw);
            Ok(Spool {
                _files: vec![file, raw],
                path: raw_path,
                open_as: ImageFormat::Raw,
                stream_format: ImageFormat::Zst,
                stream_bytes: n,
            })
        }
        Err(e) => Err(anyhow!(
            "{}",
            e.to_string().replace(&path.display().to_string(), "stdin")
        )),
    }
}

fn probe(head: &[u8]) -> ImageFormat {
    match <[u8; 4]>::try_from(head) {
        Ok(m) if m == image::qcow2::format::QCOW2_MAGIC.to_be_bytes() => ImageFormat::Qcow2,
        Ok(m) if image::zst::is_zstd_magic(&m) => ImageFormat::Zst,
        _ => ImageFormat::Raw,
    }
}

fn stdin_err(e: std::io::Error, dir: &Path) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::Interrupted => PipelineError::Interrupted.into(),
        std::io::ErrorKind::StorageFull => anyhow!(
            "{}: no space left for the copy of stdin (the stream's non-zero data must fit there; set TMPDIR, or write OUT elsewhere)",
            dir.display()
        ),
        _ => anyhow!("stdin: {e}"),
    }
}

fn proc_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// A file with no name in `dir`: `tempfile` opens it with `O_TMPFILE` and,
/// where the filesystem lacks that, creates a named file (mode 0600) and
/// unlinks it at once.
fn unnamed_file(dir: &Path) -> anyhow::Result<File> {
    tempfile::tempfile_in(dir).map_err(|e| {
        anyhow!(
            "cannot create a temporary file in {} for stdin: {e}",
            dir.display()
        )
    })
}

/// Reads until `buf` holds `limit` bytes (the reader's `take`) or the end.
fn read_full(r: &mut dyn Read, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let start = buf.len();
    loop {
        match r.read_to_end(buf) {
            Ok(_) => return Ok(buf.len() - start),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Fills `buf` from `r`; fewer bytes only at the end of the stream.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if crate::interrupt::requested() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies the stream into `f`, leaving all-zero blocks as holes; returns
/// the stream's length. Ctrl-C ends it with `ErrorKind::Interrupted`.
fn copy_sparse(r: &mut dyn Read, f: &File, st: &crate::progress::Stage) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        if crate::interrupt::requested() {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = fill(r, &mut buf)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        let mut i = 0;
        while i < n {
            let end = (i + BLOCK).min(n);
            if crate::bytes::is_zero(&data[i..end]) {
                i = end;
                continue;
            }
            let mut j = end;
            while j < n {
                let e = (j + BLOCK).min(n);
                if crate::bytes::is_zero(&data[j..e]) {
                    break;
                }
                j = e;
            }
            f.write_all_at(&data[i..j], off + i as u64)?;
            i = j;
        }
        off += n as u64;
        st.message(format!("{} read", human_bytes(off)));
    }
    f.set_len(off)?;
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_stream_is_kept_sparse_and_exact() {
        let d = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 3 << 20];
        data[5000] = 7;
        data[(2 << 20) + 1] = 9;
        let s = from_reader(&mut &data[..], d.path(), None).unwrap();
        assert_eq!(std::fs::read(s.path()).unwrap(), data);
        let meta = std::fs::metadata(s.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 <= 64 << 10,
            "not sparse: {}",
            meta.blocks()
        );
        // Nothing named in the directory.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn refusals() {
        let d = tempfile::tempdir().unwrap();
        let e = from_reader(&mut &b""[..], d.path(), None).err().unwrap();
        assert!(e.to_string().contains("stdin was empty"), "{e}");
        let e = from_reader(&mut &[1u8; 1000][..], d.path(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("512-byte sectors"), "{e}");
        assert!(from_reader(&mut &[1u8; 1000][..], d.path(), Some(ImageFormat::Raw)).is_ok());
        let q = image::qcow2::format::QCOW2_MAGIC.to_be_bytes();
        let e = from_reader(&mut &q[..], d.path(), None).err().unwrap();
        assert!(
            e.to_string().contains("qcow2 cannot be read from a stream"),
            "{e}"
        );
    }

    #[test]
    fn plain_zstd_stream_is_decompressed() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let s = from_reader(&mut &z[..], d.path(), None).unwrap();
        assert_eq!(s.open_as, ImageFormat::Raw);
        assert_eq!(s.stream_format, ImageFormat::Zst);
        assert_eq!(std::fs::read(s.path()).unwrap(), data);
        let e = from_reader(&mut &z[..z.len() - 10], d.path(), None)
            .err()
            .unwrap();
        // The reader sees a stream cut inside its frame (no seek table, the
        // file ends inside the frame) before any decompression starts.
        let e = e.to_string();
        assert!(
            e.contains("not a complete zstd stream") || e.contains("ends inside the zstd frame"),
            "{e}"
        );
    }
}
