//! Raw deflate for qcow2 zlib clusters, on zlib-rs through its C API so that
//! the match search can be tuned.
//!
//! Why not flate2's level setting alone: zlib-rs (like zlib-ng) compresses
//! levels 3–8 with its "medium" strategy, about 2.5% larger than stock
//! zlib's level 6 on disk data, and level 9 searches 4096-long hash chains
//! (slow). zlib's own level-6 search (lazy matching, chain 128) on zlib-rs's
//! level-9 code path gives stock zlib's ratio at zlib-rs's speed. The window
//! is 4 KiB (window bits 12): the only form QEMU inflates.

use std::mem::MaybeUninit;
use std::os::raw::c_int;

use libz_rs_sys::{
    Z_DEFAULT_STRATEGY, Z_DEFLATED, Z_FINISH, Z_OK, Z_STREAM_END, deflate, deflateEnd,
    deflateInit2_, deflateReset, deflateTune, z_stream, zlibVersion,
};

/// QEMU's deflate window: 2^12 bytes, negative for raw deflate (no header).
const RAW_WINDOW_BITS: c_int = -12;
const MEM_LEVEL: c_int = 9;

/// Match-search parameters: zlib's table entry for `level`
/// (good_length, max_lazy, nice_length, max_chain).
fn zlib_search_params(level: u32) -> Option<(c_int, c_int, c_int, c_int)> {
    Some(match level {
        4 => (4, 4, 16, 16),
        5 => (8, 16, 32, 32),
        6 => (8, 16, 128, 128),
        7 => (8, 32, 128, 256),
        8 => (32, 128, 258, 1024),
        9 => (32, 258, 258, 4096),
        _ => return None,
    })
}

/// One raw-deflate stream, reset for every cluster.
pub struct RawDeflate {
    // Boxed: zlib-rs keeps a pointer back to the stream in its state.
    strm: Box<MaybeUninit<z_stream>>,
    tune: Option<(c_int, c_int, c_int, c_int)>,
}

// SAFETY: the stream is owned by this value and used from one thread at a
// time (`&mut self`); zlib-rs keeps no thread-local state.
unsafe impl Send for RawDeflate {}

impl RawDeflate {
    /// Levels 4–9 use zlib's search parameters for that level on the lazy
    /// (level 9) code path; 0–3 use zlib-rs's own fast strategies.
    pub fn new(level: u32) -> std::io::Result<Self> {
        let tune = zlib_search_params(level);
        let init_level = if tune.is_some() {
            9
        } else {
            level.min(9) as c_int
        };
        let mut strm = Box::new(MaybeUninit::<z_stream>::zeroed());
        // SAFETY: `strm` is zeroed (null zalloc/zfree select the defaults) and
        // lives in a Box, so its address is stable for the stream's life.
        let rc = unsafe {
            deflateInit2_(
                strm.as_mut_ptr(),
                init_level,
                Z_DEFLATED,
                RAW_WINDOW_BITS,
                MEM_LEVEL,
                Z_DEFAULT_STRATEGY,
                zlibVersion(),
                std::mem::size_of::<z_stream>() as c_int,
            )
        };
        if rc != Z_OK {
            return Err(std::io::Error::other(format!("deflateInit2 failed ({rc})")));
        }
        Ok(Self { strm, tune })
    }

    /// Compresses `input` into `out` (cleared first) in one shot. Returns
    /// false when the result is larger than `limit` bytes.
    pub fn compress(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> std::io::Result<bool> {
        // Room for deflate's worst case (stored blocks): an output buffer cut
        // short trips an assertion in zlib-rs on incompressible data, so the
        // limit is checked afterwards instead.
        let room = input.len() + input.len() / 64 + 64;
        out.clear();
        out.reserve(room);
        let strm = self.strm.as_mut_ptr();
        // SAFETY: the stream was initialised in `new`; `next_in`/`next_out`
        // point into live buffers of the stated lengths for the duration of
        // the `deflate` call, and `out`'s length is set only to what deflate
        // reports having written.
        unsafe {
            if deflateReset(strm) != Z_OK {
                return Err(std::io::Error::other("deflateReset failed"));
            }
            if let Some((good, lazy, nice, chain)) = self.tune
                && deflateTune(strm, good, lazy, nice, chain) != Z_OK
            {
                return Err(std::io::Error::other("deflateTune failed"));
            }
            (*strm).next_in = input.as_ptr() as *mut u8;
            (*strm).avail_in = input.len() as u32;
            (*strm).next_out = out.as_mut_ptr();
            (*strm).avail_out = room as u32;
            let rc = deflate(strm, Z_FINISH);
            let written = room - (*strm).avail_out as usize;
            out.set_len(written);
            match rc {
                Z_STREAM_END => Ok(written <= limit),
                // Out of room (Z_OK or Z_BUF_ERROR): store the cluster plain.
                _ if rc >= 0 || rc == libz_rs_sys::Z_BUF_ERROR => Ok(false),
                _ => Err(std::io::Error::other(format!("deflate failed ({rc})"))),
            }
        }
    }
}

impl Drop for RawDeflate {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, ended exactly once here.
        unsafe {
            deflateEnd(self.strm.as_mut_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(c: &[u8]) -> Vec<u8> {
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(c, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn round_trips_through_a_4k_window_inflate() {
        let data: Vec<u8> = (0..65536u32)
            .map(|i| ((i * 7) % 251) as u8 ^ (i / 3000) as u8)
            .collect();
        for level in [1, 6, 9] {
            let mut d = RawDeflate::new(level).unwrap();
            let mut out = Vec::new();
            for _ in 0..3 {
                assert!(d.compress(&data, &mut out, 65535).unwrap());
                assert_eq!(inflate(&out), data);
            }
        }
    }

    #[test]
    fn incompressible_data_reports_no_fit() {
        let mut x = 88172645463325252u64;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut d = RawDeflate::new(6).unwrap();
        let mut out = Vec::new();
        assert!(!d.compress(&data, &mut out, 65535).unwrap());
        for cs in [4096, 512] {
            assert!(!d.compress(&data[..cs], &mut out, cs - 1).unwrap());
        }
    }
}
