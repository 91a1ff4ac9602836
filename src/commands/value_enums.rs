//! How the library's choice enums are spelled on the command line: the
//! `clap::ValueEnum` impls for `ImageFormat`, `Compression`, `ReclaimMode`
//! and `ChecksumKind`. The types stay in their layers (image, reclaim,
//! artifact) and know nothing of clap; only the CLI layer does. Written by
//! hand rather than derived for that reason: a derive would put clap back
//! into the format modules.
//!
//! Each variant's text is the one its `Display`/serde spelling uses, so
//! what `--help` offers, what the JSON report prints and what error
//! messages say stay one word.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::artifact::ChecksumKind;
use crate::image::ImageFormat;
use crate::image::qcow2::Compression;
use crate::reclaim::ReclaimMode;

impl ValueEnum for ImageFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[ImageFormat::Raw, ImageFormat::Qcow2, ImageFormat::Zst]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Zst => "zst",
        }))
    }
}

impl ValueEnum for Compression {
    fn value_variants<'a>() -> &'a [Self] {
        &[Compression::Zlib, Compression::Zstd]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Compression::Zlib => PossibleValue::new("zlib")
                .help("Raw deflate with a 4 KiB window: every QEMU reads it"),
            Compression::Zstd => {
                PossibleValue::new("zstd").help("One zstd frame per cluster: QEMU 5.1 or newer")
            }
        })
    }
}

impl ValueEnum for ReclaimMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            ReclaimMode::Auto,
            ReclaimMode::Discard,
            ReclaimMode::Zero,
            ReclaimMode::None,
        ]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            ReclaimMode::Auto => PossibleValue::new("auto")
                .help("discard, falling back to zero where discard is not supported"),
            ReclaimMode::Discard => {
                PossibleValue::new("discard").help("FITRIM: punch holes for free blocks")
            }
            ReclaimMode::Zero => {
                PossibleValue::new("zero").help("write zeros over free space, then delete them")
            }
            ReclaimMode::None => PossibleValue::new("none").help("leave free space as it is"),
        })
    }
}

impl ValueEnum for ChecksumKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[ChecksumKind::Sha256]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            ChecksumKind::Sha256 => PossibleValue::new("sha256"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command-line word of each variant is its Display text.
    #[test]
    fn words_match_display() {
        for f in ImageFormat::value_variants() {
            assert_eq!(f.to_possible_value().unwrap().get_name(), f.to_string());
        }
        for c in Compression::value_variants() {
            assert_eq!(c.to_possible_value().unwrap().get_name(), c.to_string());
        }
    }
}
