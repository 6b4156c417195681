//! Photos: a JPEG whose EXIF says "rotate 90°" comes out upright, and a corrupt EXIF block
//! never fails a decode.

use std::path::PathBuf;

use siamese_data::{decode, decode_photo, encode_png_rgb, load_photo};

fn fixture() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg/pattern-420.jpg");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `jpeg` with an APP1 segment holding `exif` inserted after its SOI marker.
fn with_exif(jpeg: &[u8], exif: &[u8]) -> Vec<u8> {
    let mut v = jpeg[..2].to_vec();
    v.extend_from_slice(&[0xFF, 0xE1]);
    v.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    v.extend_from_slice(exif);
    v.extend_from_slice(&jpeg[2..]);
    v
}

/// A big-endian EXIF block (as most cameras write) whose one IFD entry is orientation `o`.
fn exif_orientation(o: u16) -> Vec<u8> {
    let mut v = b"Exif\0\0MM\0*".to_vec();
    v.extend_from_slice(&8u32.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&0x0112u16.to_be_bytes());
    v.extend_from_slice(&3u16.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&o.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&0u32.to_be_bytes());
    v
}

#[test]
fn exif_rotate_90_is_applied() -> anyhow::Result<()> {
    let plain = decode(&fixture(), "pattern-420.jpg")?.to_rgb8();
    let rotated = with_exif(&fixture(), &exif_orientation(6));
    // `decode` gives the stored rows; `decode_photo` the upright photo.
    assert_eq!(decode(&rotated, "r.jpg")?.to_rgb8(), plain);
    let upright = decode_photo(&rotated, "r.jpg")?.to_rgb8();
    let (w, h) = plain.dimensions();
    assert_eq!(upright.dimensions(), (h, w));
    // Rotated 90° clockwise: the stored image's bottom-left pixel is the top-left one.
    for (x, y) in [(0, 0), (5, 7), (h - 1, w - 1), (h - 1, 0)] {
        assert_eq!(
            upright.get_pixel(x, y),
            plain.get_pixel(y, h - 1 - x),
            "({x}, {y})"
        );
    }
    // Through a file, too.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("phone.jpg");
    std::fs::write(&path, &rotated)?;
    assert_eq!(load_photo(&path)?.to_rgb8(), upright);
    Ok(())
}

#[test]
fn a_corrupt_exif_block_decodes_as_stored() -> anyhow::Result<()> {
    let plain = decode(&fixture(), "pattern-420.jpg")?.to_rgb8();
    let mut garbage = b"Exif\0\0".to_vec();
    garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    for exif in [
        garbage,
        b"Exif\0\0".to_vec(),
        b"Exif\0\0II*\0\xff\xff\xff\x7f".to_vec(),
        exif_orientation(0),
        exif_orientation(77),
    ] {
        let photo = decode_photo(&with_exif(&fixture(), &exif), "bad-exif.jpg")?.to_rgb8();
        assert_eq!(photo, plain);
    }
    Ok(())
}

#[test]
fn png_round_trip() -> anyhow::Result<()> {
    let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7) as u8).collect();
    let png = encode_png_rgb(5, 3, &rgb, "x.png")?;
    assert_eq!(decode(&png, "x.png")?.to_rgb8().into_raw(), rgb);
    assert!(encode_png_rgb(5, 4, &rgb, "x.png").is_err());
    Ok(())
}
