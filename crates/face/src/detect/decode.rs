//! From scores to rectangles, as dlib's `loss_mmod_::to_label` does: every output position
//! scoring above the threshold becomes the detector window centred on its input position,
//! mapped from the tiled image to the image through the nearest tile's pyramid level
//! (`tiled_pyramid_to_image`, `pyramid_down<6>::rect_up`), rounded (`lround`); then sorted by
//! score and thinned by greedy non-maximum suppression with `test_box_overlap`.

use super::network::ScoreMap;
use crate::geometry::Rect;

/// A real-valued rectangle (dlib's `drectangle`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DRect {
    pub l: f64,
    pub t: f64,
    pub r: f64,
    pub b: f64,
}

impl DRect {
    /// `rectangle(drectangle)`: each side rounded half away from zero (`std::lround`).
    pub(crate) fn round(&self) -> Rect {
        Rect::new(
            self.l.round() as i64,
            self.t.round() as i64,
            self.r.round() as i64,
            self.b.round() as i64,
        )
    }

    fn from_rect(r: &Rect) -> Self {
        Self {
            l: r.left as f64,
            t: r.top as f64,
            r: r.right as f64,
            b: r.bottom as f64,
        }
    }

    /// Applies `f` to both corners.
    fn map(&self, f: impl Fn(f64, f64) -> (f64, f64)) -> Self {
        let (l, t) = f(self.l, self.t);
        let (r, b) = f(self.r, self.b);
        Self { l, t, r, b }
    }
}

/// dlib's `test_box_overlap`: two rectangles overlap when they intersect and the intersection
/// is more than `iou` of the rectangle bounding both (dlib divides by `(a + b).area()`, the
/// bounding box, not the union), or more than `covered` of either one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Overlap {
    /// Intersection over the bounding box of both.
    pub iou: f64,
    /// Intersection over either rectangle's area.
    pub covered: f64,
}

impl Overlap {
    pub(crate) fn test(&self, a: &Rect, b: &Rect) -> bool {
        let inner = a.intersect(b).area() as f64;
        if inner == 0.0 {
            return false;
        }
        let bound = Rect::new(
            a.left.min(b.left),
            a.top.min(b.top),
            a.right.max(b.right),
            a.bottom.max(b.bottom),
        );
        inner / bound.area() as f64 > self.iou
            || inner / a.area() as f64 > self.covered
            || inner / b.area() as f64 > self.covered
    }
}

/// What decoding needs besides the scores.
#[derive(Clone, Debug)]
pub(crate) struct Decoder<'a> {
    /// `p_in = scale * p_out + offset` from output positions to the tiled image.
    pub map: (f64, f64),
    /// Detector window `(width, height)`.
    pub window: (f64, f64),
    /// The tiles of the pyramid levels.
    pub rects: &'a [Rect],
    /// The NMS test.
    pub nms: Overlap,
}

/// dlib's `nearest_rect`: the first tile containing `p`, else the nearest one (Euclidean
/// distance to its nearest point; the first of equals).
fn nearest_rect(rects: &[Rect], x: i64, y: i64) -> usize {
    let mut best = (0usize, i128::MAX);
    for (i, r) in rects.iter().enumerate() {
        if x >= r.left && x <= r.right && y >= r.top && y <= r.bottom {
            return i;
        }
        let dx = i128::from(x.clamp(r.left, r.right) - x);
        let dy = i128::from(y.clamp(r.top, r.bottom) - y);
        let d = dx * dx + dy * dy;
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

impl Decoder<'_> {
    /// The window of output position `(row, col)` in image coordinates (of the pyramid's
    /// level 0).
    pub(crate) fn window_rect(&self, row: usize, col: usize) -> Rect {
        let (s, o) = self.map;
        let (px, py) = (col as f64 * s + o, row as f64 * s + o);
        let (hw, hh) = ((self.window.0 - 1.0) / 2.0, (self.window.1 - 1.0) / 2.0);
        let d = DRect {
            l: px - hw,
            t: py - hh,
            r: px + hw,
            b: py + hh,
        };
        // `nearest_rect(rects, dcenter(r))`, the centre converted to a point by rounding.
        let cx = ((d.l + d.r) / 2.0 + 0.5).floor() as i64;
        let cy = ((d.t + d.b) / 2.0 + 0.5).floor() as i64;
        if self.rects.is_empty() {
            return d.round();
        }
        let level = nearest_rect(self.rects, cx, cy);
        let origin = self.rects[level];
        let ratio = 6.0f64 / 5.0;
        d.map(|x, y| {
            let (mut x, mut y) = (x - origin.left as f64, y - origin.top as f64);
            for _ in 0..level {
                x = x * ratio + 0.3;
                y = y * ratio + 0.3;
            }
            (x, y)
        })
        .round()
    }

    /// Every position scoring above `threshold`, highest first, thinned by NMS.
    pub(crate) fn detections(&self, scores: &ScoreMap, threshold: f32) -> Vec<(Rect, f32)> {
        let mut cands: Vec<(Rect, f32)> = Vec::new();
        for row in 0..scores.rows {
            for col in 0..scores.cols {
                let s = scores.data[row * scores.cols + col];
                if f64::from(s) > f64::from(threshold) {
                    cands.push((self.window_rect(row, col), s));
                }
            }
        }
        cands.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept: Vec<(Rect, f32)> = Vec::new();
        for (rect, s) in cands {
            if !kept.iter().any(|(k, _)| self.nms.test(k, &rect)) {
                kept.push((rect, s));
            }
        }
        kept
    }
}

/// The Python wrapper's `pyramid_down<2>::rect_down(rect, levels)`: each corner halved and
/// moved by `(-1.25, -0.75)` per level, then rounded.
pub(crate) fn rect_down(rect: &Rect, levels: u32) -> Rect {
    DRect::from_rect(rect)
        .map(|x, y| {
            let (mut x, mut y) = (x, y);
            for _ in 0..levels {
                x = x / 2.0 - 1.25;
                y = y / 2.0 - 0.75;
            }
            (x, y)
        })
        .round()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_divides_by_the_bounding_box() {
        let o = Overlap {
            iou: 0.3382761351,
            covered: 1.0,
        };
        let a = Rect::new(0, 0, 9, 9);
        // Intersection 60, union and bounding box 140.
        assert!(o.test(&a, &Rect::new(4, 0, 13, 9)));
        // Intersection 5130: 0.345 of the union (14,870) but 0.326 of the bounding box
        // (15,730): dlib keeps both.
        let big = Rect::new(0, 0, 99, 99);
        assert!(!o.test(&big, &Rect::new(10, 43, 109, 142)));
        assert!(o.test(&big, &Rect::new(10, 40, 109, 139)));
        assert!(!o.test(&a, &Rect::new(20, 20, 29, 29)));
        // Contained: covered 1.0 is not > 1.0, but the IoU is.
        assert!(o.test(&a, &Rect::new(2, 2, 7, 7)) == (36.0 / 100.0 > 0.3382761351));
    }

    #[test]
    fn rect_down_inverts_pyramid_up_coordinates() {
        assert_eq!(
            rect_down(&Rect::new(100, 100, 200, 200), 0),
            Rect::new(100, 100, 200, 200)
        );
        assert_eq!(
            rect_down(&Rect::new(100, 100, 200, 200), 1),
            Rect::new(49, 49, 99, 99)
        );
        assert_eq!(
            rect_down(&Rect::new(-80, 0, 10, 10), 1),
            Rect::new(-41, -1, 4, 4)
        );
    }

    #[test]
    fn nearest_rect_prefers_containing_then_nearest() {
        let rects = [Rect::new(0, 0, 9, 9), Rect::new(20, 0, 29, 9)];
        assert_eq!(nearest_rect(&rects, 25, 5), 1);
        assert_eq!(nearest_rect(&rects, 14, 5), 0);
        assert_eq!(nearest_rect(&rects, 15, 5), 1);
        assert_eq!(nearest_rect(&rects, 100, 100), 1);
    }
}
