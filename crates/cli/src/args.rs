//! Command-line arguments (clap). Names here are a stable surface: add flags freely, rename
//! none without keeping the old spelling.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub use crate::face_args::*;

/// Siamese networks for face verification, identification and one-shot recognition.
///
/// Train an encoder f on labelled images (one folder per identity), then verify pairs against
/// the calibrated threshold stored in the model, identify probes against an enrolled gallery,
/// and evaluate with the standard protocols.
#[derive(Parser, Debug)]
#[command(name = "siamese", version, propagate_version = true)]
pub struct Cli {
    /// CPU threads for the kernels (default: all cores; at most 1024).
    #[arg(long, global = true, value_parser = crate::values::threads)]
    pub threads: Option<usize>,
    /// Device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu", value_parser = crate::values::device)]
    pub device: String,
    /// Round the operands of the convolutions' matrix products to bf16 (accumulating in f32,
    /// as PyTorch's bf16 autocast does) on CPUs with AMX tiles (Intel Xeon Sapphire Rapids and
    /// later); an error elsewhere. Faster training and encoding; `train` records it in the
    /// run's configuration, so `--resume` needs it too.
    #[arg(long, global = true)]
    pub bf16: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train an encoder on labelled images and write a calibrated model file.
    ///
    /// Example: siamese train --data ../shared/data/att_faces --classes s1-s20 --recipe att-faces --time-budget 300 --out faces.safetensors
    Train(Box<TrainArgs>),
    /// Say whether two images show the same identity.
    ///
    /// Example: siamese verify --model faces.safetensors a.pgm b.pgm
    Verify(VerifyArgs),
    /// Write the encodings f(x) of images to a .safetensors or .npy file.
    ///
    /// Example: siamese embed --model faces.safetensors img/*.pgm --out enc.npy
    Embed(EmbedArgs),
    /// Enrol a gallery of known identities (one sub-folder per identity).
    ///
    /// Example: siamese enroll --model faces.safetensors --gallery known/ --out gallery.safetensors
    Enroll(EnrollArgs),
    /// Identify probe images against an enrolled gallery (top-k identities).
    ///
    /// Example: siamese identify --model faces.safetensors --gallery gallery.safetensors probe.pgm --top 3
    Identify(IdentifyArgs),
    /// Evaluate a model with a standard protocol.
    ///
    /// Example: siamese eval --model faces.safetensors --protocol unseen --data ../shared/data/att_faces --classes s21-s30
    Eval(EvalArgs),
    /// Show what a model file holds: architecture, preprocessing, threshold, provenance.
    ///
    /// Example: siamese inspect faces.safetensors
    Inspect(InspectArgs),
    /// Convert another project's model files into one siamese model file.
    ///
    /// Example: siamese import dlib --encoder dlib_face_recognition_resnet_model_v1.dat --landmarks shape_predictor_5_face_landmarks.dat --detector mmod_human_face_detector.dat --out faces.safetensors
    Import(ImportArgs),
    /// Find the faces in photos with a face model: box, confidence and 5 landmarks of each.
    ///
    /// Example: siamese detect --model faces.safetensors group.jpg --draw out/ --chips out/
    Detect(DetectArgs),
    /// Train on built-in synthetic glyphs and verify a few pairs, with no download.
    ///
    /// Example: siamese demo
    Demo(DemoArgs),
    /// Serve verification, embedding, identification and galleries over HTTP (JSON).
    ///
    /// Routes: POST /v1/verify, /v1/embed, /v1/identify; /v1/galleries (create, list, delete;
    /// enrol images of an identity, remove an identity, list identities); GET /healthz,
    /// /readyz, /metrics, /openapi.json. Concurrent requests share encoder passes. Stops
    /// cleanly on Ctrl-C or SIGTERM.
    #[command(
        before_help = "Example: siamese serve --model att.safetensors --store serve-data --addr 127.0.0.1:8080\n         curl -F a=@a.pgm -F b=@b.pgm http://127.0.0.1:8080/v1/verify"
    )]
    Serve(ServeArgs),
}

/// Arguments of `train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data: an image folder (one sub-folder per class, any depth), an Omniglot zip,
    /// or an IDX image file. Repeat to merge several (duplicate classes are removed).
    ///
    /// Without it, `--recipe` trains on everything its data set has under `$SIAMESE_DATA`
    /// (default `data/`, where `cargo xtask fetch` puts it): omniglot on every
    /// `omniglot/images_background*.zip` (both small sets), att-faces on all of `att_faces/`.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// The model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Only these classes, e.g. `s1-s20` or `Greek/*,Latin/*`.
    #[arg(long)]
    pub classes: Option<String>,
    /// A recipe of defaults: omniglot, att-faces or demo (default: chosen from the data).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["omniglot", "att-faces", "demo"]))]
    pub recipe: Option<String>,
    /// A TOML training configuration (overrides the recipe; flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Encoder architecture: koch, conv4 or resnet (dlib-resnet comes with `--init`).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["koch", "conv4", "resnet", "dlib-resnet"]))]
    pub arch: Option<String>,
    /// Channels of the architecture's layers, comma-separated: koch's four convolutions
    /// (default 64,128,128,256), one per conv4 block (64,64,64,64; the count sets the number
    /// of blocks), or resnet's stem and stages (32,32,64,128,256).
    #[arg(long, value_delimiter = ',', value_parser = crate::values::width)]
    pub widths: Vec<usize>,
    /// Loss: triplet (semi-hard), triplet-hard, triplet-all, contrastive, proto
    /// (leave-one-out prototypical softmax) or bce.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["triplet", "triplet-hard", "triplet-all", "contrastive", "proto", "bce", "triplet-semihard", "semihard", "batch-hard", "batch-all", "prototypical"]))]
    pub loss: Option<String>,
    /// Margin of the triplet or contrastive loss.
    #[arg(long, value_parser = crate::values::non_negative)]
    pub margin: Option<f64>,
    /// Scale (inverse temperature) of the proto loss's softmax over squared distances.
    #[arg(long, value_parser = crate::values::positive)]
    pub scale: Option<f64>,
    /// Add a normalised-softmax loss against one learned proxy per training class, with this
    /// weight (0 turns it off): each image is pushed away from every training class each
    /// step, not only from the classes of its batch.
    #[arg(long = "proxy-weight")]
    pub proxy_weight: Option<f64>,
    /// Scale (inverse temperature) of the proxy loss's softmax over cosine similarities
    /// (default 16).
    #[arg(long = "proxy-scale")]
    pub proxy_scale: Option<f64>,
    /// Keep and validate an exponential moving average of the encoder's weights with this
    /// decay per step (e.g. 0.999; 0 turns it off): the kept model is the average, which is
    /// smoother than the last step's weights.
    #[arg(long)]
    pub ema: Option<f64>,
    /// Passes over the training images.
    #[arg(long, value_parser = crate::values::positive)]
    pub epochs: Option<f64>,
    /// Optimiser updates.
    #[arg(long, value_parser = crate::values::count_u64)]
    pub steps: Option<u64>,
    /// Wall-clock seconds of training.
    #[arg(long = "time-budget", value_parser = crate::values::positive)]
    pub time_budget: Option<f64>,
    /// Seed of everything random.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from a checkpoint written by an earlier run with the same flags.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long, value_parser = crate::values::positive)]
    pub lr: Option<f64>,
    /// Classes per batch (P).
    #[arg(long = "batch-classes", value_parser = crate::values::batch_classes)]
    pub batch_classes: Option<usize>,
    /// Draw each batch's classes from this many groups (alphabets: the class-name part before
    /// the last `/`), so that negatives are look-alikes.
    #[arg(long = "batch-groups", value_parser = crate::values::batch_groups)]
    pub batch_groups: Option<usize>,
    /// Test-time augmentation stored with the model: none; hflip (average the encodings of
    /// the image and its mirror; for faces); or affine (average the encodings of the image
    /// and 31 small random rotations, shears, scalings and shifts of it, seeded by its
    /// pixels; for characters; 32 times the encoding work); or affine-set (the same 32
    /// encodings, with twice the ranges, kept as a set: two images are as far apart as the
    /// mean distance from each encoding to its nearest in the other set, both ways). Either
    /// affine one takes another copy count as `affine-set:64` (the Omniglot recipe's).
    #[arg(long)]
    pub tta: Option<String>,
    /// Images per class in a batch (K).
    #[arg(long = "batch-images", value_parser = crate::values::batch_images)]
    pub batch_images: Option<usize>,
    /// Embedding size.
    #[arg(long = "embedding-dim", value_parser = crate::values::embedding_dim)]
    pub embedding_dim: Option<usize>,
    /// Train this many independently initialised copies of the network at once (an ensemble
    /// in one model file): each gives an equal share of the embedding, and the distance is
    /// the mean of theirs. Each step costs this many times as much. All of them see the
    /// input as it is (1: a single network, even where the recipe has members at their own
    /// sizes).
    #[arg(long, value_parser = crate::values::members)]
    pub members: Option<usize>,
    /// An ensemble whose members see the image at different sizes, e.g. `28x28,40x40`: one
    /// member per size, each fed the input area-resampled to its size. The input is the
    /// largest size unless --input-size says otherwise.
    #[arg(
        long = "member-sizes",
        value_delimiter = ',',
        value_name = "HxW,...",
        value_parser = crate::values::size_text
    )]
    pub member_sizes: Vec<String>,
    /// Append conv4 blocks' features to each encoding at inference, e.g. `3:2,4:2` (the
    /// Omniglot recipe's): block 3 and block 4 (counted from 1), each averaged and max-pooled
    /// over the plane, scaled to unit length, weighing 2 against the linear layer's output in
    /// the squared distance: comparisons also look at the middle layers' stroke detectors
    /// (`--train-taps` says whether the loss sees them too). `none` turns them off. A recipe's taps are dropped when `--arch`,
    /// `--widths` or `--members` leave no such block.
    #[arg(long, value_delimiter = ',', value_name = "BLOCK:WEIGHT,...")]
    pub taps: Vec<String>,
    /// Train the taps: the loss compares whole tapped encodings, as inference does, so the
    /// tapped blocks learn to serve the comparison (the Omniglot recipe's choice). `false`:
    /// training sees the linear layer's output alone and the taps are read at inference only.
    #[arg(long = "train-taps", value_name = "BOOL")]
    pub train_taps: Option<bool>,
    /// Input size HxW, e.g. 105x105 or 112x92.
    #[arg(long = "input-size", value_parser = crate::values::size_text)]
    pub input_size: Option<String>,
    /// Centre each image's ink and scale it to fill this fraction of the input (0 < F ≤ 1;
    /// 0 turns it off): strokes get the same size and place whoever drew them. Stored with
    /// the model, so inference crops the same way.
    #[arg(long = "fit-ink", value_name = "F")]
    pub fit_ink: Option<f32>,
    /// Turn augmentation on or off.
    #[arg(long)]
    pub augment: Option<bool>,
    /// Multiply the ranges of the affine distortions (1 = Koch et al.'s: rotation ±10°, shear
    /// ±0.3, scale 0.8–1.2, shift ±2 px).
    #[arg(long = "augment-strength")]
    pub augment_strength: Option<f32>,
    /// Elastic distortion (Simard et al.): move every pixel by a smooth random displacement
    /// of this root-mean-square length in input pixels (0 turns it off).
    #[arg(long, value_name = "PX")]
    pub elastic: Option<f32>,
    /// Smoothness of the elastic displacement field: Gaussian standard deviation in input
    /// pixels.
    #[arg(long = "elastic-sigma", value_name = "PX")]
    pub elastic_sigma: Option<f32>,
    /// Count each 90° rotation of a class as a new class (square images only).
    #[arg(long)]
    pub rotations: Option<bool>,
    /// Count the left-right mirror of each class as a new class (characters; not for faces).
    #[arg(long)]
    pub mirrors: Option<bool>,
    /// Fraction of classes held out for validation and calibration (0 for none).
    #[arg(long = "val-fraction")]
    pub val_fraction: Option<f64>,
    /// Validate every N steps.
    #[arg(long = "val-every")]
    pub val_every: Option<u64>,
    /// What picks the kept model among the validated ones: auc, eer, oneshot, or last (the
    /// latest; validation then only calibrates the threshold).
    #[arg(long = "val-metric", value_parser = clap::builder::PossibleValuesParser::new(["auc", "eer", "oneshot", "last"]))]
    pub val_metric: Option<String>,
    /// Write a checkpoint every N steps (0: only on Ctrl-C).
    #[arg(long = "checkpoint-every")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint file (default: MODEL.ckpt beside the model).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Report folder (default: MODEL-report beside the model).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Skip images that cannot be read or decoded (and entries that cannot be listed, such
    /// as dangling links) instead of failing; everything skipped is listed.
    #[arg(long = "skip-bad")]
    pub skip_bad: bool,
    /// Start a new run even where the checkpoint file exists, replacing it (without this, an
    /// existing checkpoint is an error: continue it with `--resume`).
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Stop after N steps of this invocation, writing a checkpoint (for testing resume).
    #[arg(long = "stop-after", hide = true)]
    pub stop_after: Option<u64>,
    /// Start from this model's weights instead of random ones (fine-tuning): its encoder,
    /// preprocessing and distance are kept (flags that change them are refused). A face model
    /// (`siamese import dlib`) stays one: training images go through its face pipeline
    /// (largest face, landmarks, aligned chip), and the written model keeps the pipeline.
    #[arg(long, value_name = "MODEL")]
    pub init: Option<PathBuf>,
    /// With a face model as --init: how training faces are found.
    #[command(flatten)]
    pub face: FaceFlags,
}

/// Arguments of `verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
    /// Decide with this threshold instead of the model's calibrated one.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::values::threshold)]
    pub threshold: Option<f32>,
    /// Print one JSON object: distance, same, threshold (and, with a face model, each
    /// photo's face).
    #[arg(long)]
    pub json: bool,
    /// Override the model's test-time augmentation: none, hflip, affine or affine-set (the
    /// affine ones cost 32 encoder passes per image, or N as `affine-set:N`; none is the
    /// fastest).
    #[arg(long)]
    pub tta: Option<String>,
    #[command(flatten)]
    pub face: FaceFlags,
}

/// Arguments of `embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Images, or folders of images.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output: .safetensors (embeddings + file names) or .npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the model's test-time augmentation: none, hflip, affine or affine-set (the
    /// affine ones cost 32 encoder passes per image, or N as `affine-set:N`; none is the
    /// fastest). With affine-set an image's embedding is its encodings: the file holds
    /// [images, copies, dim].
    #[arg(long)]
    pub tta: Option<String>,
    #[command(flatten)]
    pub face: FaceFlags,
    /// With a face model: embed the largest face of each photo (one row per photo; a photo
    /// without a face is an error) or all of them (a row per face).
    #[arg(long, value_enum, value_name = "WHICH")]
    pub faces: Option<FacesArg>,
}

/// Arguments of `enroll`.
#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder with one sub-folder of images per identity.
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    /// The gallery file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Enrol this many random unit-length encodings instead of images (for benchmarks).
    #[arg(long, hide = true, conflicts_with = "gallery")]
    pub random: Option<usize>,
    /// Identities of the random encodings (`id0`, `id1`, ...; row i belongs to `id{i % N}`).
    #[arg(long = "random-identities", hide = true, default_value_t = 1000)]
    pub random_identities: usize,
    /// Seed of the random encodings.
    #[arg(long = "random-seed", hide = true, default_value_t = 0)]
    pub random_seed: u64,
    /// Skip images that cannot be read or decoded (and entries that cannot be listed, such
    /// as dangling links) instead of failing; everything skipped is listed.
    #[arg(long = "skip-bad")]
    pub skip_bad: bool,
    /// Override the model's test-time augmentation: none, hflip, affine or affine-set (the
    /// affine ones cost 32 encoder passes per image, or N as `affine-set:N`; affine-set
    /// stores that many encodings per image). The gallery records it, and `identify` encodes
    /// its probes the same way.
    #[arg(long)]
    pub tta: Option<String>,
    #[command(flatten)]
    pub face: FaceFlags,
    /// With a face model: enrol the largest face of each photo, or all of them. Photos
    /// without a face are skipped; both kinds are counted per identity.
    #[arg(long, value_enum, value_name = "WHICH")]
    pub faces: Option<FacesArg>,
}

/// Arguments of `identify`.
#[derive(Args, Debug)]
pub struct IdentifyArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// A gallery written by `enroll` with the same model.
    #[arg(long)]
    pub gallery: PathBuf,
    /// Probe images.
    #[arg(required = true)]
    pub probes: Vec<PathBuf>,
    /// Number of identities to list per probe.
    #[arg(long, default_value_t = 1, value_parser = crate::values::count)]
    pub top: usize,
    /// Decide "unknown" with this threshold instead of the model's.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::values::threshold)]
    pub threshold: Option<f32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub face: FaceFlags,
    /// With a face model: identify the largest face of each photo, or every face (a group
    /// photo). The text output is one line per face: `file,name,distance,left,top,right,bottom`
    /// (`file,no_persons_found` for a photo without one).
    #[arg(long, value_enum, value_name = "WHICH")]
    pub faces: Option<FacesArg>,
}

/// Arguments of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// unseen (class-disjoint test folder), oneshot-runs (Lake et al.) or pairs (LFW).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["unseen", "oneshot-runs", "pairs"]))]
    pub protocol: String,
    /// Test images (unseen).
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Only these classes of the test data, e.g. `s21-s30`.
    #[arg(long)]
    pub classes: Option<String>,
    /// Folder or zip of one-shot runs (oneshot-runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// pairs.txt (pairs).
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Image root of the pairs (pairs).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// LFW development view: choose the threshold on these pairs (pairsDevTrain.txt) and
    /// report accuracy on `--pairs` (pairsDevTest.txt).
    #[arg(long = "pairs-train")]
    pub pairs_train: Option<PathBuf>,
    /// Ways of the one-shot episodes (unseen; 2 or more).
    #[arg(long, default_value_t = 10, value_parser = crate::values::ways)]
    pub ways: usize,
    /// Number of episodes (unseen).
    #[arg(long, default_value_t = 2000, value_parser = crate::values::count)]
    pub episodes: usize,
    /// Enrolled images per class for rank-1 identification (unseen).
    #[arg(long, default_value_t = 5, value_parser = crate::values::count)]
    pub shots: usize,
    /// Seed of the episodes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the model's test-time augmentation (none, hflip, affine or affine-set, the
    /// affine ones optionally with a copy count, `affine-set:64`), to measure what it buys.
    #[arg(long)]
    pub tta: Option<String>,
    /// Override the conv4 blocks read into each encoding (`3:2,4:2`, or `none`; see `train
    /// --taps`), to measure what they buy. The stored threshold was calibrated without the
    /// change, so accuracy at the threshold is off; AUC, EER and one-shot are not.
    #[arg(long, value_delimiter = ',', value_name = "BLOCK:WEIGHT,...")]
    pub taps: Vec<String>,
    /// Write a report folder (JSON, Markdown, plots).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// With a face model (unseen): how faces are found.
    #[command(flatten)]
    pub face: FaceFlags,
}

/// Arguments of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model file.
    pub model: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the demo model.
    #[arg(long, default_value = "demo.safetensors")]
    pub out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 300, value_parser = crate::values::count_u64)]
    pub steps: u64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// A gallery written by `enroll` with the same model, served as the gallery `default`
    /// (copied into the store unless the store already has a `default`).
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    /// Where to listen. The default is loopback only; another address (0.0.0.0:8080) opens
    /// the service to the network, which wants --token-file.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub addr: String,
    /// A file holding a token: every request but /healthz and /readyz must then carry
    /// `Authorization: Bearer TOKEN`.
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A folder to keep galleries in (created when missing): every acknowledged change
    /// survives a crash. Without it galleries live in memory and are lost when the service
    /// stops.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Decide verification (and identification's "unknown") at this threshold instead of the
    /// model's calibrated one.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::values::threshold)]
    pub threshold: Option<f32>,
    /// Override the model's test-time augmentation: none, hflip, affine or affine-set.
    #[arg(long)]
    pub tta: Option<String>,
    /// Encode each request on its own instead of batching concurrent ones (for comparison).
    #[arg(long = "no-batch")]
    pub no_batch: bool,
    /// Encoder passes one batch may gather from concurrent requests (default: the model's
    /// embedding batch, 16).
    #[arg(long = "max-batch", value_name = "N")]
    pub max_batch: Option<usize>,
    /// The longest the encoder waits for requests still being decoded before a pass.
    #[arg(long = "max-wait-ms", default_value_t = 2, value_name = "MS")]
    pub max_wait_ms: u64,
    /// Bytes in one request body.
    #[arg(long = "max-body", default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_body: usize,
    /// Pixels in one image (width times height, read from the header before decoding).
    #[arg(long = "max-pixels", default_value_t = 16_000_000, value_name = "N")]
    pub max_pixels: u64,
    /// Images in one request.
    #[arg(long = "max-images", default_value_t = 32, value_name = "N")]
    pub max_images: usize,
    /// Requests served at once; more are answered 503 with Retry-After.
    #[arg(long = "max-concurrent", default_value_t = 256, value_name = "N")]
    pub max_concurrent: usize,
    /// Seconds one request may take, body included; longer ones are answered 503.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub timeout: f64,
}
