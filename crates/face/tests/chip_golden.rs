//! Face chips cut from dlib's landmarks match the chips real dlib cut
//! (`dlib.get_face_chip(image, shape, size=150, padding=0.25)`), pyramid step included, and odd
//! inputs give black chips or errors, never a panic.

mod common;

use siamese_face::chip::{
    chip_details, extract_chip, face_chip, ChipDetails, DRect, MAX_CHIP_SIZE,
};
use siamese_face::{Point, RgbImage};

/// Whether the chip's rectangle is large enough for dlib to sample a `pyramid_down<2>` level.
fn uses_pyramid(d: &ChipDetails) -> bool {
    let w = (d.rect.right - d.rect.left) / 2.0 + 1.0;
    let h = (d.rect.bottom - d.rect.top) / 2.0 + 1.0;
    w * h > (d.rows * d.cols) as f64
}

#[test]
fn chips_match_dlib_on_every_golden_face() {
    let (mut faces, mut pyramid, mut exact_chips) = (0usize, 0usize, 0usize);
    let (mut max_all, mut sum_all, mut bytes_all, mut exact_bytes) = (0u8, 0u64, 0usize, 0usize);
    let mut worst_mean = 0f64;
    // Every image, JPEGs included, has exactly the pixels dlib was given: `common::image`
    // decodes JPEGs with libjpeg-turbo's decoder, as PIL does for face_recognition.
    for im in common::golden() {
        let img = common::image(&im.name);
        for f in &im.faces {
            let d = chip_details(&f.points, 150, 0.25).unwrap();
            let chip = extract_chip(&img, &d).unwrap();
            let gold = common::chip(&f.chip);
            assert_eq!((chip.width(), chip.height()), (150, 150));
            assert_eq!((gold.width(), gold.height()), (150, 150), "{}", f.chip);
            let diffs: Vec<u8> = chip
                .as_raw()
                .iter()
                .zip(gold.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            let sum: u64 = diffs.iter().map(|&v| v as u64).sum();
            let mean = sum as f64 / diffs.len() as f64;
            let same = diffs.iter().filter(|&&v| v == 0).count();
            let pyr = uses_pyramid(&d);
            println!(
                "{:32} width {:7.3} {} max {max:2} mean {mean:.4} exact {:.2}%",
                f.chip,
                d.rect.right - d.rect.left + 1.0,
                if pyr { "pyramid" } else { "direct " },
                100.0 * same as f64 / diffs.len() as f64
            );
            faces += 1;
            pyramid += pyr as usize;
            exact_chips += (max == 0) as usize;
            max_all = max_all.max(max);
            sum_all += sum;
            bytes_all += diffs.len();
            exact_bytes += same;
            worst_mean = worst_mean.max(mean);
        }
    }
    println!(
        "chips: {faces} faces ({pyramid} through the pyramid), {exact_chips} identical; \
         max abs diff {max_all}, mean abs diff {:.4} (worst face {worst_mean:.4}), {:.2}% of bytes exact",
        sum_all as f64 / bytes_all as f64,
        100.0 * exact_bytes as f64 / bytes_all as f64
    );
    assert!(
        faces >= 30 && pyramid >= 4,
        "{faces} faces, {pyramid} through the pyramid"
    );
    // Given the pixels dlib saw, the chips are dlib's: identical here, and never more than the
    // one level a last-bit difference in the transform could flip a truncation by.
    assert!(max_all <= 1, "max abs diff {max_all}");
}

#[test]
fn a_face_outside_the_image_gives_a_black_chip() {
    let img = common::image("obama_small.jpg");
    let pts = [(196, 98), (177, 98), (129, 99), (147, 99), (162, 134)];
    for (dx, dy) in [(-10_000, 0), (0, 5_000), (1 << 40, -(1 << 40))] {
        let moved: Vec<Point> = pts
            .iter()
            .map(|&(x, y)| Point::new(x + dx, y + dy))
            .collect();
        let chip = face_chip(&img, &moved, 150, 0.25).unwrap();
        assert!(chip.as_raw().iter().all(|&v| v == 0), "{dx},{dy}");
    }
    // Half outside: the outside half is black, the inside half is not.
    let moved: Vec<Point> = pts.iter().map(|&(x, y)| Point::new(x + 150, y)).collect();
    let chip = face_chip(&img, &moved, 150, 0.25).unwrap();
    let right_col: u64 = (0..150)
        .map(|r| chip.pixel(149, r).iter().map(|&v| v as u64).sum::<u64>())
        .sum();
    let left_col: u64 = (0..150)
        .map(|r| chip.pixel(0, r).iter().map(|&v| v as u64).sum::<u64>())
        .sum();
    assert_eq!(right_col, 0);
    assert!(left_col > 0);
}

#[test]
fn huge_faces_tiny_images_and_bad_sizes() {
    let tiny = RgbImage::new(1, 1, vec![9, 9, 9]).unwrap();
    let small = RgbImage::new(5, 4, vec![100; 60]).unwrap();
    let face = |s: i64| -> Vec<Point> {
        [(196, 98), (177, 98), (129, 99), (147, 99), (162, 134)]
            .iter()
            .map(|&(x, y)| Point::new(x * s, y * s))
            .collect()
    };
    for img in [&tiny, &small, &common::image("obama_small.jpg")] {
        // From a face of a few pixels to one of a trillion: a chip, black or not, never a panic.
        for s in [1, 1_000, 1 << 30, 1 << 40] {
            let chip = face_chip(img, &face(s), 150, 0.25).unwrap();
            assert_eq!((chip.width(), chip.height()), (150, 150));
        }
        let tiny_face: Vec<Point> = [(2, 1), (1, 1), (0, 1), (1, 1), (1, 3)]
            .iter()
            .map(|&(x, y)| Point::new(x, y))
            .collect();
        assert!(face_chip(img, &tiny_face, 150, 0.25).is_ok());
        for size in [1, 2, 3, 9] {
            let chip = face_chip(img, &face(1), size, 0.25).unwrap();
            assert_eq!((chip.width(), chip.height()), (size, size));
        }
        assert!(face_chip(img, &face(1), 0, 0.25).is_err());
        assert!(face_chip(img, &face(1), MAX_CHIP_SIZE + 1, 0.25).is_err());
        assert!(face_chip(img, &face(1), usize::MAX, 0.25).is_err());
        assert!(face_chip(img, &face(1), 150, f64::INFINITY).is_err());
        assert!(face_chip(img, &face(1)[..3], 150, 0.25).is_err());
        assert!(face_chip(img, &[Point::new(i64::MIN, i64::MAX); 5], 150, 0.25).is_err());
        let mut extreme = face(1);
        extreme[0] = Point::new(i64::MAX, i64::MIN);
        let _ = face_chip(img, &extreme, 150, 0.25);
    }
    // Hand-made details: empty, inverted or non-finite rectangles are errors.
    let img = common::image("obama_small.jpg");
    let bad = [
        DRect::new(10.0, 10.0, 5.0, 50.0),
        DRect::new(f64::NAN, 0.0, 10.0, 10.0),
        DRect::new(0.0, 0.0, f64::INFINITY, 10.0),
    ];
    for rect in bad {
        let d = ChipDetails {
            rect,
            angle: 0.3,
            rows: 150,
            cols: 150,
        };
        assert!(extract_chip(&img, &d).is_err(), "{rect:?}");
    }
    let d = ChipDetails {
        rect: DRect::new(0.0, 0.0, 1e300, 1e300),
        angle: 1.0,
        rows: 150,
        cols: 150,
    };
    assert!(extract_chip(&img, &d).is_ok());
    let d = ChipDetails {
        rect: DRect::new(0.0, 0.0, 100.0, 100.0),
        angle: f64::NAN,
        rows: 150,
        cols: 150,
    };
    assert!(extract_chip(&img, &d).is_err());
}
