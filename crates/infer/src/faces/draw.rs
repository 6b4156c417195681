//! Pictures for people: a photo with its faces' boxes and landmarks drawn, written as PNG.

use std::path::Path;

use siamese_face::{Face, RgbImage};

use crate::error::Result;
use crate::fsutil::write_atomic;

/// The boxes' colour.
const BOX: [u8; 3] = [0, 255, 0];

/// The landmarks' colour.
const POINT: [u8; 3] = [255, 0, 0];

/// Sets the pixels of the rectangle `x0..=x1` by `y0..=y1`, clipped to the image.
fn fill(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, x1) = (x0.max(0), x1.min(w - 1));
    let (y0, y1) = (y0.max(0), y1.min(h - 1));
    if x0 > x1 || y0 > y1 {
        return;
    }
    let width = img.width();
    let data = img.as_raw_mut();
    for y in y0..=y1 {
        for x in x0..=x1 {
            let i = (y as usize * width + x as usize) * 3;
            data[i..i + 3].copy_from_slice(&colour);
        }
    }
}

/// A copy of `img` with each face's box drawn in green (lines about 1/300 of the image's
/// longer side thick, at least 2 pixels, inside the box) and its landmarks as red squares.
/// Boxes and points outside the image are clipped.
pub fn draw_faces(img: &RgbImage, faces: &[Face]) -> RgbImage {
    let mut out = img.clone();
    let t = (img.width().max(img.height()) as i64 / 300).max(2);
    for f in faces {
        let r = f.rect;
        let (l, tp, rt, b) = (r.left, r.top, r.right, r.bottom);
        fill(&mut out, (l, tp), (rt, tp + t - 1), BOX);
        fill(&mut out, (l, b - t + 1), (rt, b), BOX);
        fill(&mut out, (l, tp), (l + t - 1, b), BOX);
        fill(&mut out, (rt - t + 1, tp), (rt, b), BOX);
        for p in &f.points {
            fill(&mut out, (p.x - t, p.y - t), (p.x + t, p.y + t), POINT);
        }
    }
    out
}

/// Writes `img` to `path` as a PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let png =
        siamese_data::encode_png_rgb(img.width() as u32, img.height() as u32, img.as_raw(), path)?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use siamese_face::{Point, Rect};

    #[test]
    fn boxes_and_points_are_clipped_to_the_image() -> Result<()> {
        let img = RgbImage::zeroed(20, 10).map_err(|source| crate::InferError::Face {
            path: "test".into(),
            source,
        })?;
        let faces = [Face {
            rect: Rect::new(-5, 2, 30, 8),
            confidence: Some(1.0),
            points: vec![Point::new(10, 5), Point::new(-100, 1000)],
        }];
        let out = draw_faces(&img, &faces);
        assert_eq!(out.pixel(0, 2), BOX);
        assert_eq!(out.pixel(19, 8), BOX);
        assert_eq!(out.pixel(10, 5), POINT);
        assert_eq!(out.pixel(10, 0), [0, 0, 0]);
        Ok(())
    }
}
