//! qcow2: our own strict reader and consistency checker. The layout is
//! QEMU's specification (`docs/interop/qcow2.txt` in the QEMU source);
//! `format.rs` holds the header and directory decodings and `entry.rs` every
//! table entry decoded and encoded side by side, as pure functions, which
//! the writer (`output::qcow2`) encodes with too. `deflate.rs` is the tuned
//! raw deflate the writer and `estimate` compress with (a codec: it reads and
//! writes no file).
//! Hand-written rather than a qcow2 crate: the one there was (qcow2-rs) is
//! async only, writes no compressed clusters, has no zstd and returned
//! success on a truncated image (docs/ARCHITECTURE.md, Decisions).
//!
//! The reader never opens a backing file or an external data file: images
//! that need one are refused with an error naming the feature.

pub mod check;
pub mod deflate;
pub mod entry;
pub mod format;
pub mod reader;

pub use reader::Qcow2Image;

/// Cluster compression of a qcow2 image (header byte 104).
/// (Its command-line spelling: `commands::value_enums`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Raw deflate with a 4 KiB window: every QEMU reads it.
    Zlib,
    /// One zstd frame per cluster: QEMU 5.1 or newer.
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        })
    }
}
