//! Points and rectangles as dlib has them: integer points, rectangles with inclusive corners.

/// An integer image point (column `x`, row `y`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Point {
    /// Column.
    pub x: i64,
    /// Row.
    pub y: i64,
}

impl Point {
    /// The point `(x, y)`.
    pub fn new(x: i64, y: i64) -> Self {
        Self { x, y }
    }
}

/// A rectangle with inclusive corners, as dlib's `rectangle`: it covers columns
/// `left..=right` and rows `top..=bottom`, so its width is `right - left + 1`. An empty
/// rectangle has `right < left` or `bottom < top`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rect {
    /// First column.
    pub left: i64,
    /// First row.
    pub top: i64,
    /// Last column (inclusive).
    pub right: i64,
    /// Last row (inclusive).
    pub bottom: i64,
}

impl Rect {
    /// The rectangle with these inclusive corners.
    pub fn new(left: i64, top: i64, right: i64, bottom: i64) -> Self {
        Self {
            left,
            top,
            right,
            bottom,
        }
    }

    /// Columns covered (0 when empty).
    pub fn width(&self) -> i64 {
        (self.right - self.left + 1).max(0)
    }

    /// Rows covered (0 when empty).
    pub fn height(&self) -> i64 {
        (self.bottom - self.top + 1).max(0)
    }

    /// Pixels covered (0 when empty).
    pub fn area(&self) -> i64 {
        self.width() * self.height()
    }

    /// Whether it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.area() == 0
    }

    /// The pixels both cover (possibly empty).
    pub fn intersect(&self, o: &Rect) -> Rect {
        Rect::new(
            self.left.max(o.left),
            self.top.max(o.top),
            self.right.min(o.right),
            self.bottom.min(o.bottom),
        )
    }
}
