//! JPEGs decode bit for bit as libjpeg-turbo decodes them, which is what PIL (and so
//! face_recognition and dlib's golden outputs) saw; damaged files are errors naming the file.
//!
//! The expected values are SHA-256 digests of reference decoders' output, kept here because
//! CI machines have neither djpeg nor PIL:
//! - colour and grey files: the pixel bytes (after the PNM header) of libjpeg-turbo 2.1.5's
//!   `djpeg -dct int -pnm FILE` (Debian's `libjpeg-turbo-progs`), i.e. the accurate integer
//!   IDCT and fancy upsampling, libjpeg-turbo's defaults. PIL 13.0 (bundling libjpeg-turbo
//!   3.2.0) gave the same bytes for every one of them with `Image.open(f).tobytes()`.
//! - the CMYK and YCCK files: PIL 13.0's `Image.open(f).convert("RGB").tobytes()` (djpeg has
//!   no PIL-style CMYK-to-RGB output).
//!
//! The fixtures in `tests/fixtures/jpeg` are made from a synthetic 77x59 pattern (no
//! photo): R = 128 + 100 sin(x/7) cos(y/5), G = (3x + 2y) mod 256, B = 128 + 120 sin((x+y)/9),
//! encoded with libjpeg-turbo 2.1.5's `cjpeg -quality 90` and: `-sample 2x2` (`pattern-420`),
//! `-sample 2x1 -progressive` (`pattern-422-progressive`), `-sample 1x2 -restart 1`
//! (`pattern-440-restart`), `-grayscale` (`pattern-grey`), `-grayscale -progressive`
//! (`pattern-grey-progressive`), `-sample 2x2 -arithmetic` (`pattern-arithmetic`);
//! `pattern-cmyk` and `pattern-ycck` were written by libjpeg's compressor
//! (`in_color_space = JCS_CMYK`, `jpeg_set_colorspace` to `JCS_CMYK` / `JCS_YCCK`, quality 90,
//! Adobe marker) from samples (R, G, B, 200 + (x + y) mod 56) of that pattern;
//! `grey-127-scans` likewise from its green channel, greyscale, with a scan script of 127
//! scans (DC, then each AC coefficient alone at `Al` 1, then refined to `Al` 0).

use std::path::{Path, PathBuf};

use image::DynamicImage;
use sha2::{Digest, Sha256};
use siamese_data::{decode, load_image, DataError};

/// `../shared/faces/images`, from the workspace root.
fn faces_images() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/faces/images")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jpeg")
        .join(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (file, width, height, SHA-256 of djpeg's RGB bytes) for every JPEG of `shared/faces/images`.
#[rustfmt::skip]
const FACE_PHOTOS: &[(&str, u32, u32, &str)] = &[
    ("biden.jpg", 970, 2204, "4fa33c4b39578062cfcce3dff2f9eb8e52e357b3f630ccd14aad6e054d7510dc"),
    ("obama-1080p.jpg", 1920, 1080, "2c2a897cc8354252fc11c1bd80caf54b23413046eb3600da12c0cf6a955c170d"),
    ("obama-240p.jpg", 427, 240, "3655be27574ea5b6301127a0861edec6c98f91aff244c36f6cf719039a3d5f53"),
    ("obama-480p.jpg", 853, 480, "4b1e29636f8235d8bc8a3b5d5b99715b74804e1f2657298c167d68da8c46c9fc"),
    ("obama-720p.jpg", 1280, 720, "022f092b80c0f39c274007887e45b48539c0fec98594cd1a9cb0c7a4dd755fdc"),
    ("obama.jpg", 910, 1137, "fc008c49b09a2c260f438218a38efcc471b10df79f39e34117c0a7453a722afd"),
    ("obama2.jpg", 626, 1200, "5f36099b2a55d78c83297da5d8b24ac47838bfa36db77a8450678e7e3aa44648"),
    ("obama3.jpg", 1434, 2333, "bc281369b96cebf7bfa2eb59ebf41a4aff1bdc4a1709fe2cb120fc4d277db658"),
    ("obama_partial_face.jpg", 491, 1137, "358ae602ebd4331b234691f20db58a162af7a37ea4e800c69ae4e4ee441a5a3a"),
    ("obama_partial_face2.jpg", 551, 1137, "e0dc9cea299754eca3177f60811cd910dc51d238c50790bf8823c5b426253678"),
    ("obama_small.jpg", 320, 240, "53a174e2bb2d95c7702daa837f0fae9ff89b2177739cadfacb92aa1a8fd2a542"),
    ("two_people.jpg", 1126, 661, "eb2eb96fef33a020060fc86b190072ba912471623c3885c7a8cc244a97591549"),
];

/// Grey (`true`) or RGB, and the SHA-256 of the reference bytes, for each fixture (77x59).
#[rustfmt::skip]
const FIXTURES: &[(&str, bool, &str)] = &[
    ("pattern-420.jpg", false, "5ffcb5efa5d43d6038cd36c60d3b4c92cf844a95272e5fcf0c624d056b2ce35e"),
    ("pattern-422-progressive.jpg", false, "942927185aefd357f34a71704846eecde8243f8a6ab110c14a830dfa4e8ca79e"),
    ("pattern-440-restart.jpg", false, "1eeb1b2e5ece248bcb0daa835626b6928fea00481dec4452e3461b4208b75317"),
    // Same coefficients as pattern-420, arithmetic-coded.
    ("pattern-arithmetic.jpg", false, "5ffcb5efa5d43d6038cd36c60d3b4c92cf844a95272e5fcf0c624d056b2ce35e"),
    ("pattern-grey.jpg", true, "58fbe6b2bc05117ef6ed123d1905d6b38226d7e04c3df497c16f7c0a64f65da9"),
    ("pattern-grey-progressive.jpg", true, "58fbe6b2bc05117ef6ed123d1905d6b38226d7e04c3df497c16f7c0a64f65da9"),
    // PIL's convert("RGB").
    ("pattern-cmyk.jpg", false, "2f33675aa221c6e3d6d887eb2539a6643e3abec769b64195d5b5953b0304fdd0"),
    ("pattern-ycck.jpg", false, "d66d3444a789ab9444bc4dcd600f2b9d678bf0c1a7391345c4b9f46348b12e07"),
];

#[test]
fn every_face_photo_decodes_as_libjpeg_turbo_does() {
    let dir = faces_images();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg") || n.ends_with(".jpeg"))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = FACE_PHOTOS.iter().map(|f| f.0).collect();
    assert_eq!(on_disk, listed, "every JPEG there has its reference here");
    for &(name, w, h, sha) in FACE_PHOTOS {
        let img = load_image(dir.join(name)).unwrap();
        let DynamicImage::ImageRgb8(rgb) = img else {
            panic!("{name}: {:?}, expected RGB", img.color());
        };
        assert_eq!(rgb.dimensions(), (w, h), "{name}");
        assert_eq!(sha256_hex(rgb.as_raw()), sha, "{name}");
    }
}

#[test]
fn subsampled_progressive_arithmetic_grey_and_cmyk_files_match_the_references() {
    for &(name, grey, sha) in FIXTURES {
        let img = load_image(fixture(name)).unwrap();
        let bytes = match (&img, grey) {
            (DynamicImage::ImageLuma8(g), true) => g.as_raw(),
            (DynamicImage::ImageRgb8(c), false) => c.as_raw(),
            _ => panic!("{name}: {:?}", img.color()),
        };
        assert_eq!((img.width(), img.height()), (77, 59), "{name}");
        assert_eq!(sha256_hex(bytes), sha, "{name}");
    }
}

/// A grey JPEG written by another encoder (the `image` crate's) comes back grey, unchanged in
/// size and close to what was written.
#[test]
fn a_grey_jpeg_from_another_encoder_decodes_as_grey() {
    let (w, h) = (37u32, 21u32);
    let src = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 6 + y * 3) as u8]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&src)
        .unwrap();
    let img = decode(&jpeg, "grey.jpg").unwrap();
    let DynamicImage::ImageLuma8(g) = img else {
        panic!("{:?}", img.color());
    };
    assert_eq!(g.dimensions(), (w, h));
    let worst = g
        .as_raw()
        .iter()
        .zip(src.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 8, "max difference {worst}");
}

fn assert_decode_error(bytes: &[u8], name: &str, what: &str) -> String {
    match decode(bytes, name) {
        Ok(img) => panic!("{what}: decoded {}x{}", img.width(), img.height()),
        Err(e @ DataError::Decode { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "{what}: {msg}");
            msg
        }
        Err(e) => panic!("{what}: not a decode error: {e}"),
    }
}

#[test]
fn truncated_jpegs_are_errors_naming_the_file() {
    for file in [
        fixture("pattern-420.jpg"),
        fixture("pattern-422-progressive.jpg"),
    ] {
        let bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        // In the markers, in the scan data, and only the end-of-image marker missing (PIL
        // refuses that too: "image file is truncated").
        for cut in [3, 4, 20, 200, n / 2, n - 10, n - 2, n - 1] {
            let msg = assert_decode_error(&bytes[..cut], "cut.jpg", &format!("{cut} of {n}"));
            println!("{} cut at {cut}: {msg}", file.display());
        }
    }
}

#[test]
fn garbage_inside_a_jpeg_is_an_error_naming_the_file() {
    let bytes = std::fs::read(faces_images().join("obama_small.jpg")).unwrap();
    let n = bytes.len();
    for at in [n / 4, n / 2, 3 * n / 4] {
        for junk in [[0x12u8, 0x34, 0x56, 0x78], [0xff, 0xd0, 0xff, 0xd0]] {
            let mut b = bytes.clone();
            for (i, byte) in b[at..at + 256].iter_mut().enumerate() {
                *byte = junk[i % 4];
            }
            let msg = assert_decode_error(&b, "garbled.jpg", &format!("junk at {at}"));
            println!("junk {junk:02x?} at {at}: {msg}");
        }
    }
    // Broken headers: a bad marker length, a frame of zero lines.
    let mut b = bytes.clone();
    b[4] = 0xff;
    b[5] = 0xff;
    assert_decode_error(&b, "header.jpg", "bad APP0 length");
    let sof = bytes.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    let mut b = bytes.clone();
    b[sof + 5] = 0;
    b[sof + 6] = 0;
    assert_decode_error(&b, "empty.jpg", "zero height");
    assert_decode_error(&[0xff, 0xd8, 0xff], "short.jpg", "just a start marker");
}

#[test]
fn flipped_bytes_never_panic() {
    let bytes = std::fs::read(fixture("pattern-422-progressive.jpg")).unwrap();
    let (mut ok, mut err) = (0, 0);
    for i in 2..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        match decode(&b, "flipped.jpg") {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains("flipped.jpg"), "{e}");
                err += 1;
            }
        }
    }
    println!("{ok} flipped copies decode, {err} are errors");
    assert!(err > 0);
}

#[test]
fn a_jpeg_over_the_pixel_limit_is_refused_from_its_header() {
    let mut bytes = std::fs::read(fixture("pattern-420.jpg")).unwrap();
    let sof = bytes.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    // 60,000 x 60,000: 3.6 gigapixels, over the 64-megapixel limit.
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]);
    let msg = assert_decode_error(&bytes, "huge.jpg", "60000x60000");
    assert!(
        msg.contains("60000x60000") && msg.contains("megapixels"),
        "{msg}"
    );
}

#[test]
fn a_progressive_jpeg_of_more_than_100_scans_is_refused() {
    // A valid file (djpeg decodes it) of 127 scans; each scan is a pass over the whole image.
    let bytes = std::fs::read(fixture("grey-127-scans.jpg")).unwrap();
    let msg = assert_decode_error(&bytes, "scans.jpg", "127 scans");
    assert!(msg.contains("more than 100 scans"), "{msg}");
}

#[test]
fn decoding_is_repeatable_across_threads() {
    let bytes = std::fs::read(fixture("pattern-422-progressive.jpg")).unwrap();
    let first = decode(&bytes, Path::new("a.jpg")).unwrap().into_bytes();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(decode(&bytes, "a.jpg").unwrap().into_bytes(), first);
                    // Errors in between leave nothing behind.
                    assert!(decode(&bytes[..bytes.len() / 2], "b.jpg").is_err());
                }
            });
        }
    });
}
