//! JPEG decoding through libjpeg-turbo's decoder, so that photos reach the face pipeline with
//! exactly the pixels PIL (`Image.open(f).convert("RGB")`) and therefore dlib were given.
//!
//! The C library is mozjpeg's copy of libjpeg-turbo (a fork whose decoder is libjpeg-turbo's),
//! compiled from source by the `mozjpeg-sys` crate with its plain C paths: no nasm, no system
//! libjpeg. Settings are libjpeg's defaults, which are PIL's: the accurate integer IDCT
//! (`JDCT_ISLOW`), fancy (triangle) chroma upsampling, block smoothing for progressive files.
//! Output follows PIL's modes: one component gives grey, three give RGB, four (CMYK or YCCK)
//! give CMYK, read with Adobe's inverted convention and turned into RGB by PIL's formula.
//!
//! Errors: libjpeg reports a fatal error by calling `error_exit`, which must not return. Ours
//! unwinds (`resume_unwind`, so no panic message is printed) back through the C frames
//! (`mozjpeg-sys` builds them with `-fexceptions` under its `unwinding` feature, and types
//! the callbacks `extern "C-unwind"`), and [`decode_jpeg`] catches it with `catch_unwind` at
//! this one boundary and returns a [`DataError::Decode`]; the decompressor is then destroyed
//! as libjpeg allows after an error. Warnings (corrupt entropy data, a file that ends early:
//! libjpeg would go on and fill the rest with grey) are made fatal the same way. PIL refuses
//! truncated files too (`image file is truncated`, even when only the end marker is missing);
//! it decodes garbled ones through their warnings, where we refuse them rather than hand on
//! garbage.

use std::ffi::{c_char, c_int, c_ulong, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg_sys as ffi;

use crate::error::{DataError, Result};

/// The most scans a progressive JPEG may have. Real files have about 10, `cjpeg` writes at most
/// 100 and the `image` crate's decoder refused more; each scan is another pass over the whole
/// image, so a small file of thousands of scans would take minutes (libjpeg-turbo's tools
/// offer the same limit, `djpeg -maxscans`). PIL has none.
pub(crate) const MAX_JPEG_SCANS: c_int = 100;

/// The size of libjpeg's message buffer (`JMSG_LENGTH_MAX` in jpeglib.h).
const JMSG_LENGTH_MAX: usize = 200;

/// What the unwinding callbacks carry back to [`decode_jpeg`]: libjpeg's message.
struct LibjpegError(String);

/// libjpeg's state, boxed so the pointers libjpeg keeps to `err` and `progress` stay valid.
struct Decompressor {
    cinfo: ffi::jpeg_decompress_struct,
    err: ffi::jpeg_error_mgr,
    progress: ffi::jpeg_progress_mgr,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // Frees every pool; allowed in any state, after an error too, and a no-op on a
        // struct `jpeg_create_decompress` never set up (its memory manager is null).
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// libjpeg's text for its current message (`err.msg_code` and its parameters).
fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    // SAFETY: `cinfo.err` is the error manager `jpeg_std_error` filled in, which lives in the
    // same `Decompressor` as `cinfo`.
    let err = unsafe { &*cinfo.err };
    let (Some(format), code) = (err.format_message, err.msg_code) else {
        return format!("libjpeg message {}", err.msg_code);
    };
    // `mozjpeg-sys` types the buffer `&[u8; 80]`, but libjpeg writes into it, up to
    // JMSG_LENGTH_MAX (200) bytes: call it with the raw pointer the C function takes (same
    // ABI) and a buffer of the size jpeglib.h asks for, plus a NUL of our own.
    type FormatFn = unsafe extern "C-unwind" fn(*mut ffi::jpeg_common_struct, *mut c_char);
    let mut buffer = [0 as c_char; JMSG_LENGTH_MAX + 1];
    // SAFETY: the two function types differ only in how Rust sees the buffer pointer, and
    // libjpeg writes at most JMSG_LENGTH_MAX bytes (`snprintf`), NUL included.
    unsafe {
        let format = std::mem::transmute::<
            unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, &[u8; 80]),
            FormatFn,
        >(format);
        format(cinfo, buffer.as_mut_ptr());
    }
    // SAFETY: the buffer ends in NUL whatever was written (its last byte is never touched).
    let text = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy();
    if text.is_empty() {
        format!("libjpeg message {code}")
    } else {
        text.into_owned()
    }
}

/// `error_exit`: unwinds to [`decode_jpeg`]'s `catch_unwind`; never returns to libjpeg.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    resume_unwind(Box::new(LibjpegError(message(cinfo))));
}

/// `emit_message`: warnings (level -1, corrupt data) are fatal; trace messages are dropped.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level < 0 {
        let text = message(cinfo);
        resume_unwind(Box::new(LibjpegError(text)));
    }
}

/// `progress_monitor`: refuses progressive files with more than [`MAX_JPEG_SCANS`] scans.
unsafe extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor != 0 {
        // SAFETY: a decompressor's common fields are the start of its
        // `jpeg_decompress_struct` (libjpeg's own casts rely on it).
        let scans = unsafe {
            (*(cinfo as *mut ffi::jpeg_common_struct).cast::<ffi::jpeg_decompress_struct>())
                .input_scan_number
        };
        if scans > MAX_JPEG_SCANS {
            resume_unwind(Box::new(LibjpegError(format!(
                "more than {MAX_JPEG_SCANS} scans in a progressive JPEG"
            ))));
        }
    }
}

/// Decodes a JPEG held in memory as libjpeg-turbo and PIL do: grey for one component, RGB
/// for three, CMYK/YCCK converted to RGB as PIL's `convert("RGB")` does. The size is checked
/// against the limits from the header (`check_size`) before any pixel is decoded.
pub(crate) fn decode_jpeg(
    bytes: &[u8],
    name: &Path,
    check_size: impl FnOnce(u32, u32) -> Result<()>,
) -> Result<DynamicImage> {
    // `check_size`'s own error, if any, comes back through here, not as a panic.
    let mut refused = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        decode_unwinding(bytes, |w, h| match check_size(w, h) {
            Ok(()) => true,
            Err(e) => {
                refused = Some(e);
                false
            }
        })
    }));
    match outcome {
        Ok(Some(img)) => Ok(img),
        Ok(None) => Err(refused.unwrap_or_else(|| DataError::decode(name, "refused"))),
        Err(payload) => {
            let text = match payload.downcast::<LibjpegError>() {
                Ok(e) => e.0,
                // Not libjpeg's: a bug here; still an error naming the file, not a crash.
                Err(other) => match other.downcast::<String>() {
                    Ok(s) => format!("internal error: {s}"),
                    Err(other) => match other.downcast::<&str>() {
                        Ok(s) => format!("internal error: {s}"),
                        Err(_) => "internal error".to_string(),
                    },
                },
            };
            Err(DataError::decode(name, text))
        }
    }
}

/// The decoding proper; libjpeg's errors unwind out of it as [`LibjpegError`] panics.
/// Returns `None` where `size_ok` refused the header's size.
fn decode_unwinding(bytes: &[u8], size_ok: impl FnOnce(u32, u32) -> bool) -> Option<DynamicImage> {
    let len = c_ulong::try_from(bytes.len()).unwrap_or(c_ulong::MAX);
    // SAFETY: all-zero is a valid value of these C structs (null pointers, `None` callbacks,
    // the zero enum variants); libjpeg initialises them below.
    let mut d: Box<Decompressor> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: the error manager and progress monitor are set before any libjpeg call that can
    // fail, and live (boxed, unmoved) as long as `cinfo`; `bytes` outlives the decompressor.
    unsafe {
        ffi::jpeg_std_error(&mut d.err);
        d.err.error_exit = Some(error_exit);
        d.err.emit_message = Some(emit_message);
        d.progress.progress_monitor = Some(progress_monitor);
        d.cinfo.common.err = &mut d.err;
        ffi::jpeg_create_decompress(&mut d.cinfo);
        d.cinfo.common.progress = &mut d.progress;
        ffi::jpeg_mem_src(&mut d.cinfo, bytes.as_ptr(), len);
        ffi::jpeg_read_header(&mut d.cinfo, 1);
    }
    let cinfo = &mut d.cinfo;
    if !size_ok(cinfo.image_width, cinfo.image_height) {
        return None;
    }
    // PIL's modes by component count (JpegImagePlugin's SOF handler and JpegDecode.c).
    let components = cinfo.num_components;
    cinfo.out_color_space = match components {
        1 => ffi::J_COLOR_SPACE::JCS_GRAYSCALE,
        3 => ffi::J_COLOR_SPACE::JCS_RGB,
        4 => ffi::J_COLOR_SPACE::JCS_CMYK,
        n => resume_unwind(Box::new(LibjpegError(format!(
            "cannot handle a JPEG with {n} components"
        )))),
    };
    // libjpeg-turbo's defaults, set explicitly: they are what PIL decodes with.
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    // SAFETY: the header has been read.
    unsafe { ffi::jpeg_start_decompress(cinfo) };
    let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
    let channels = cinfo.output_components as usize;
    let stride = w * channels;
    let mut pixels = vec![0u8; stride * h];
    let mut rows: Vec<*mut u8> = pixels
        .chunks_exact_mut(stride)
        .map(|r| r.as_mut_ptr())
        .collect();
    while (cinfo.output_scanline as usize) < h {
        let at = cinfo.output_scanline as usize;
        // SAFETY: `rows[at..]` point at `h - at` rows of `stride` bytes each in `pixels`.
        let read =
            unsafe { ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr().add(at), (h - at) as u32) };
        if read == 0 {
            // Only a suspending data source returns nothing; the memory source never does.
            resume_unwind(Box::new(LibjpegError("no scanline decoded".to_string())));
        }
    }
    // Reads on to the end-of-image marker, so that corrupt data after the last row is
    // reported as well.
    // SAFETY: every scanline has been read.
    unsafe { ffi::jpeg_finish_decompress(cinfo) };
    drop(rows);
    drop(d);
    let (w32, h32) = (w as u32, h as u32);
    let img = match channels {
        1 => GrayImage::from_raw(w32, h32, pixels).map(DynamicImage::ImageLuma8),
        3 => RgbImage::from_raw(w32, h32, pixels).map(DynamicImage::ImageRgb8),
        _ => RgbImage::from_raw(w32, h32, cmyk_to_rgb(&pixels)).map(DynamicImage::ImageRgb8),
    };
    Some(img.expect("the buffer holds width x height pixels"))
}

/// PIL's reading of a 4-component JPEG as RGB: the samples are taken as Adobe's inverted CMYK
/// (rawmode `CMYK;I`), then `cmyk2rgb`: `R = nk - nk * C / 255` with `nk = 255 - K`, rounded
/// with PIL's `MULDIV255`.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    fn muldiv255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        // Inverted: PIL's C = 255 - sample, and its 255 - K is the sample itself.
        let nk = px[3] as u32;
        for &s in &px[..3] {
            let c = 255 - s as u32;
            rgb.push((nk - muldiv255(c, nk)) as u8);
        }
    }
    rgb
}
