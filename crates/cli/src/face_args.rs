//! Arguments of the face commands (`import`, `detect`) and the face flags of `verify`,
//! `embed`, `enroll` and `identify`.

use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Arguments of `import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// What to import.
    #[command(subcommand)]
    pub source: ImportSource,
}

/// Model formats `import` reads.
#[derive(Subcommand, Debug)]
pub enum ImportSource {
    /// dlib's three face models (as face_recognition uses them) into one face model file.
    ///
    /// Example: siamese import dlib --encoder dlib_face_recognition_resnet_model_v1.dat --landmarks shape_predictor_5_face_landmarks.dat --detector mmod_human_face_detector.dat --out faces.safetensors
    Dlib(ImportDlibArgs),
}

/// Arguments of `import dlib`.
#[derive(Args, Debug)]
pub struct ImportDlibArgs {
    /// The face encoder, `dlib_face_recognition_resnet_model_v1.dat`.
    #[arg(long)]
    pub encoder: PathBuf,
    /// The 5-point landmark predictor, `shape_predictor_5_face_landmarks.dat`.
    #[arg(long)]
    pub landmarks: PathBuf,
    /// The CNN face detector, `mmod_human_face_detector.dat`.
    #[arg(long)]
    pub detector: PathBuf,
    /// The model file to write (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `detect`.
#[derive(Args, Debug)]
pub struct DetectArgs {
    /// A face model (`siamese import dlib`).
    #[arg(long)]
    pub model: PathBuf,
    /// Photos, or folders of photos.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print one JSON object with every face's box, confidence and landmarks.
    #[arg(long)]
    pub json: bool,
    /// Write each photo with its faces' boxes and landmarks drawn, as DIR/NAME.faces.png.
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
    /// Write each face's aligned chip (the encoder's input) as DIR/NAME.faceK.png.
    #[arg(long, value_name = "DIR")]
    pub chips: Option<PathBuf>,
    #[command(flatten)]
    pub face: FaceFlags,
}

/// How a face model finds faces in photos.
#[derive(Args, Debug, Default, Clone)]
pub struct FaceFlags {
    /// With a face model: how faces are found, cnn (the model's detector) or none (the whole
    /// image is the face: photos already cropped to one face).
    #[arg(long, value_enum, value_name = "HOW")]
    pub detect: Option<DetectArg>,
    /// With a face model: double the photo this many times before detection (default: the
    /// model's, 1; 0 is four times faster and misses faces under about 80 pixels).
    #[arg(long, value_name = "N")]
    pub upsample: Option<u32>,
}

/// `--detect`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectArg {
    /// The model's CNN face detector.
    Cnn,
    /// No detection: the whole image is the face's box.
    None,
}

/// `--faces`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FacesArg {
    /// The largest face of each photo.
    Largest,
    /// Every face of each photo.
    All,
}
