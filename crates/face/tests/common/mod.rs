//! Shared by the golden tests: the paths of `../shared/faces`, its images decoded as
//! face_recognition reads them (converted to 8-bit RGB), and dlib's printed outputs.
#![allow(dead_code)]

use std::path::PathBuf;

use siamese_face::{Point, Rect, RgbImage};

/// `../shared/faces`, from the workspace root.
pub fn faces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/faces")
}

/// The bytes of a model file in `../shared/faces/models`.
pub fn model_bytes(name: &str) -> Vec<u8> {
    let p = faces_dir().join("models").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A PNG or JPEG as 8-bit RGB (alpha dropped, grey replicated), as PIL's `convert("RGB")`:
/// JPEGs through `siamese_data::decode`, i.e. libjpeg-turbo's decoder, the one PIL uses, so
/// these are exactly the pixels dlib was given.
pub fn load_rgb(path: &std::path::Path) -> RgbImage {
    let img = siamese_data::load_image(path).unwrap_or_else(|e| panic!("{e}"));
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    RgbImage::new(w as usize, h as usize, rgb.into_raw()).unwrap()
}

/// An image of `../shared/faces/images`.
pub fn image(name: &str) -> RgbImage {
    load_rgb(&faces_dir().join("images").join(name))
}

/// A chip of `../shared/faces/golden/chips`.
pub fn chip(name: &str) -> RgbImage {
    load_rgb(&faces_dir().join("golden/chips").join(name))
}

/// One face dlib reported.
#[derive(Debug, Clone)]
pub struct GoldenFace {
    /// Which detector found it: `cnn` or `hog`.
    pub detector: String,
    /// Its rectangle.
    pub rect: Rect,
    /// The CNN's confidence (`None` for HOG).
    pub confidence: Option<f64>,
    /// The 5 points for that rectangle.
    pub points: Vec<Point>,
    /// The chip's file name in `golden/chips`.
    pub chip: String,
    /// The descriptor of the chip.
    pub descriptor_from_chip: Vec<f32>,
    /// The descriptor face_recognition returns.
    pub descriptor: Vec<f32>,
}

/// One image and what dlib found in it.
#[derive(Debug, Clone)]
pub struct GoldenImage {
    /// File name in `images/`.
    pub name: String,
    /// `[height, width, channels]`.
    pub shape: Vec<usize>,
    /// Every face, CNN ones first.
    pub faces: Vec<GoldenFace>,
}

impl GoldenImage {
    /// The faces one detector found.
    pub fn by(&self, detector: &str) -> Vec<&GoldenFace> {
        self.faces
            .iter()
            .filter(|f| f.detector == detector)
            .collect()
    }
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default()
}

/// Everything in `golden/dlib.json`, images in name order.
pub fn golden() -> Vec<GoldenImage> {
    let p = faces_dir().join("golden/dlib.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let images = v["images"].as_object().unwrap();
    let mut out = Vec::new();
    for (name, im) in images {
        let mut faces = Vec::new();
        for det in ["cnn", "hog"] {
            for f in im[det].as_array().into_iter().flatten() {
                let r = &f["rect"];
                let g = |k: &str| r[k].as_i64().unwrap();
                let points = f["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| Point::new(p[0].as_i64().unwrap(), p[1].as_i64().unwrap()))
                    .collect();
                faces.push(GoldenFace {
                    detector: det.to_string(),
                    rect: Rect::new(g("left"), g("top"), g("right"), g("bottom")),
                    confidence: f["confidence"].as_f64(),
                    points,
                    chip: f["chip"].as_str().unwrap_or_default().to_string(),
                    descriptor_from_chip: floats(&f["descriptor_from_chip"]),
                    descriptor: floats(&f["descriptor"]),
                });
            }
        }
        let shape = im["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        out.push(GoldenImage {
            name: name.clone(),
            shape,
            faces,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
