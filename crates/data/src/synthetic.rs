//! A synthetic data set of procedurally drawn glyphs, so everything runs without a download.

use std::f32::consts::PI;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::dataset::{Dataset, Item};
use crate::source::ImageSource;

/// Points per stroke polyline.
const STROKE_POINTS: usize = 16;

type Stroke = Vec<(f32, f32)>;

/// A class prototype: 2 to 4 strokes in unit coordinates, each a quadratic curve or an
/// elliptic arc.
fn prototype(rng: &mut ChaCha8Rng) -> Vec<Stroke> {
    let n = rng.random_range(2..=4);
    (0..n)
        .map(|_| {
            if rng.random_bool(0.5) {
                let p: Vec<(f32, f32)> = (0..3)
                    .map(|_| (rng.random_range(0.15..0.85), rng.random_range(0.15..0.85)))
                    .collect();
                (0..STROKE_POINTS)
                    .map(|i| {
                        let t = i as f32 / (STROKE_POINTS - 1) as f32;
                        let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
                        (
                            a * p[0].0 + b * p[1].0 + c * p[2].0,
                            a * p[0].1 + b * p[1].1 + c * p[2].1,
                        )
                    })
                    .collect()
            } else {
                let (cx, cy) = (rng.random_range(0.3..0.7), rng.random_range(0.3..0.7));
                let (rx, ry) = (rng.random_range(0.1..0.28), rng.random_range(0.1..0.28));
                let start = rng.random_range(0.0..2.0 * PI);
                let sweep = rng.random_range(0.5 * PI..2.0 * PI);
                (0..STROKE_POINTS)
                    .map(|i| {
                        let a = start + sweep * i as f32 / (STROKE_POINTS - 1) as f32;
                        (cx + rx * a.cos(), cy + ry * a.sin())
                    })
                    .collect()
            }
        })
        .collect()
}

/// Distance from `p` to the segment `a`-`b`.
fn seg_dist(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let (wx, wy) = (p.0 - a.0, p.1 - a.1);
    let l2 = vx * vx + vy * vy;
    let t = if l2 > 0.0 {
        ((wx * vx + wy * vy) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (wx - t * vx, wy - t * vy);
    (dx * dx + dy * dy).sqrt()
}

/// Renders one distorted sample of a prototype: black strokes on white, `size x size`.
fn render(proto: &[Stroke], size: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let rot = rng.random_range(-12.0f32..12.0).to_radians();
    let scale = rng.random_range(0.9f32..1.1);
    let (tx, ty) = (
        rng.random_range(-0.05f32..0.05),
        rng.random_range(-0.05f32..0.05),
    );
    let thick = rng.random_range(0.03f32..0.05);
    let (s, c) = rot.sin_cos();
    // Transformed strokes in pixel coordinates, with a little per-point jitter.
    let px = size as f32;
    let segs: Vec<((f32, f32), (f32, f32))> = proto
        .iter()
        .flat_map(|stroke| {
            let pts: Vec<(f32, f32)> = stroke
                .iter()
                .map(|&(x, y)| {
                    let (x, y) = (
                        x + rng.random_range(-0.012f32..0.012),
                        y + rng.random_range(-0.012f32..0.012),
                    );
                    let (dx, dy) = (x - 0.5, y - 0.5);
                    let xr = scale * (c * dx - s * dy) + 0.5 + tx;
                    let yr = scale * (s * dx + c * dy) + 0.5 + ty;
                    (xr * px, yr * px)
                })
                .collect();
            pts.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()
        })
        .collect();
    let half = thick * px;
    // Distance of each pixel centre to the nearest segment, visiting only the pixels near
    // each segment.
    let mut dist = vec![f32::INFINITY; size * size];
    let reach = half + 1.0;
    for &(a, b) in &segs {
        let x0 = ((a.0.min(b.0) - reach).floor().max(0.0)) as usize;
        let x1 = ((a.0.max(b.0) + reach).ceil().clamp(0.0, px)) as usize;
        let y0 = ((a.1.min(b.1) - reach).floor().max(0.0)) as usize;
        let y1 = ((a.1.max(b.1) + reach).ceil().clamp(0.0, px)) as usize;
        for y in y0..y1 {
            for x in x0..x1 {
                let d = seg_dist((x as f32 + 0.5, y as f32 + 0.5), a, b);
                let cell = &mut dist[y * size + x];
                if d < *cell {
                    *cell = d;
                }
            }
        }
    }
    let mut img = vec![255u8; size * size];
    for (v, d) in img.iter_mut().zip(&dist) {
        let ink = (half - d + 0.5).clamp(0.0, 1.0);
        let noise = rng.random_range(-0.04f32..0.04);
        *v = ((1.0 - ink + noise).clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    img
}

/// `classes` classes of procedurally drawn glyphs, `per_class` distorted samples each,
/// `size x size` grey, black strokes on white (like Omniglot), held in memory.
///
/// Each class is 2 to 4 random strokes (curves and arcs); each sample shifts, rotates
/// (±12°), scales (±10 %), jitters and thickens them a little and adds pixel noise.
/// Everything is determined by `seed`; classes are named `glyph000`, `glyph001`, ...
pub fn synthetic(classes: usize, per_class: usize, size: u32, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let protos: Vec<Vec<Stroke>> = (0..classes).map(|_| prototype(&mut rng)).collect();
    let s = size as usize;
    let images: Vec<Vec<u8>> = (0..classes * per_class)
        .into_par_iter()
        .map(|i| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(i as u64 + 1);
            render(&protos[i / per_class.max(1)], s, &mut r)
        })
        .collect();
    let data: Arc<[u8]> = images.concat().into();
    let width = classes.saturating_sub(1).to_string().len().max(3);
    let items = (0..classes * per_class)
        .map(|i| Item {
            source: ImageSource::Raw {
                width: size,
                height: size,
                channels: 1,
                data: data.clone(),
                offset: i * s * s,
            },
            class: i / per_class.max(1),
        })
        .collect();
    Dataset {
        items,
        classes: (0..classes).map(|c| format!("glyph{c:0width$}")).collect(),
    }
}
