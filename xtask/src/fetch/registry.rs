//! The data sets `cargo xtask fetch` knows: files, official URLs, published checksums, and
//! where each goes under the data root.

/// A digest a file must match (any one of a file's accepted digests will do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Lower-case hex SHA-256.
    Sha256(&'static str),
    /// Lower-case hex MD5 (only where the publisher gives nothing stronger).
    Md5(&'static str),
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checksum::Sha256(h) => write!(f, "sha256 {h}"),
            Checksum::Md5(h) => write!(f, "md5 {h}"),
        }
    }
}

/// One published file.
#[derive(Debug)]
pub struct RemoteFile {
    /// File name, also the name looked up in a mirror.
    pub name: &'static str,
    /// Folder under the data root where it is stored.
    pub dir: &'static str,
    /// Official URLs, tried in order.
    pub urls: &'static [&'static str],
    /// Accepted digests.
    pub accept: &'static [Checksum],
    /// Folder under the data root to unpack the archive into, if it must be unpacked.
    pub unpack_to: Option<&'static str>,
    /// How the URLs serve it. The data root always holds the plain file, and `accept` are the
    /// plain file's digests; a mirror may hold either form.
    pub packed: Packed,
}

/// How a file is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packed {
    /// As it is stored.
    Plain,
    /// bzip2-compressed, `NAME.bz2` (decompressed while it streams in, to a bounded size).
    Bzip2,
}

impl Packed {
    /// The extension the packed form adds to the file's name (`.bz2`), if any.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Packed::Plain => None,
            Packed::Bzip2 => Some(".bz2"),
        }
    }
}

/// A step after the files are in place: a `siamese` command that turns them into a file the
/// binary reads (`siamese import dlib ...`), run through the release binary.
#[derive(Debug)]
pub struct Import {
    /// The file it writes, under the data root; it is made again whenever it is missing or
    /// older than one of the data set's files.
    pub out: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// The `siamese` arguments, given the data root and the output path.
    pub args: fn(&std::path::Path, &std::path::Path) -> Vec<String>,
}

/// A data set already in its own layout that a mirror may hold instead of the archive.
#[derive(Debug)]
pub struct Layout {
    /// Folder name in the mirror, and under the data root.
    pub dir: &'static str,
    /// Checks that a folder really is in this layout.
    pub check: fn(&std::path::Path) -> anyhow::Result<()>,
}

/// A named data set.
#[derive(Debug)]
pub struct DataSet {
    /// The name given on the command line.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// Its files.
    pub files: &'static [RemoteFile],
    /// A layout folder a mirror may provide instead of the files.
    pub layout: Option<Layout>,
    /// System folders holding the same files (a distribution package), used before the
    /// network.
    pub system_dirs: &'static [&'static str],
    /// What `cargo xtask fetch` makes of the files once they are in place, if anything.
    pub import: Option<Import>,
}

/// A Fashion-MNIST file. Two digests are accepted: the MD5 Zalando publishes for its files,
/// and the SHA-256 of the Debian package `dataset-fashion-mnist`, whose files hold the same
/// IDX data gzip-compressed again (different bytes, so different digests).
macro_rules! fashion {
    ($name:literal, $md5:literal, $debian_sha256:literal) => {
        RemoteFile {
            name: $name,
            dir: "fashion-mnist",
            urls: &[
                concat!("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", $name),
                concat!(
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                    $name
                ),
            ],
            accept: &[Checksum::Md5($md5), Checksum::Sha256($debian_sha256)],
            unpack_to: None,
            packed: Packed::Plain,
        }
    };
}

/// An Omniglot file in the official repository.
macro_rules! omniglot_url {
    ($path:literal) => {
        concat!(
            "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/",
            $path
        )
    };
}

/// A figshare file, as scikit-learn's `fetch_lfw_*` uses them.
macro_rules! figshare_url {
    ($id:literal) => {
        concat!("https://ndownloader.figshare.com/files/", $id)
    };
}

/// One of dlib's face models: served bzip2-compressed from dlib.net; the digest is the
/// decompressed `.dat` file's (the bytes `face_recognition_models` ships).
macro_rules! dlib_model {
    ($name:literal, $sha256:literal) => {
        RemoteFile {
            name: $name,
            dir: "faces",
            urls: &[concat!("http://dlib.net/files/", $name, ".bz2")],
            accept: &[Checksum::Sha256($sha256)],
            unpack_to: None,
            packed: Packed::Bzip2,
        }
    };
}

/// `siamese import dlib` of the three models in `root/faces`, writing `out`.
fn dlib_import_args(root: &std::path::Path, out: &std::path::Path) -> Vec<String> {
    let model = |name: &str| root.join("faces").join(name).display().to_string();
    vec![
        "import".into(),
        "dlib".into(),
        "--encoder".into(),
        model("dlib_face_recognition_resnet_model_v1.dat"),
        "--landmarks".into(),
        model("shape_predictor_5_face_landmarks.dat"),
        "--detector".into(),
        model("mmod_human_face_detector.dat"),
        "--out".into(),
        out.display().to_string(),
    ]
}

/// Every data set, in `--list` order.
pub static DATASETS: &[DataSet] = &[
    DataSet {
        name: "omniglot-small",
        about: "Omniglot small background sets 1 and 2 (5 alphabets each, 136 + 156 characters x 20 drawers), kept zipped",
        files: &[
            RemoteFile {
                name: "images_background_small1.zip",
                dir: "omniglot",
                urls: &[omniglot_url!("images_background_small1.zip")],
                accept: &[Checksum::Sha256(
                    "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
                )],
                unpack_to: None,
                packed: Packed::Plain,
            },
            RemoteFile {
                name: "images_background_small2.zip",
                dir: "omniglot",
                urls: &[omniglot_url!("images_background_small2.zip")],
                accept: &[Checksum::Sha256(
                    "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
                )],
                unpack_to: None,
                packed: Packed::Plain,
            },
        ],
        layout: None,
        system_dirs: &[],
        import: None,
    },
    DataSet {
        name: "omniglot",
        about: "Omniglot background (30 alphabets, 964 characters) and evaluation (20 alphabets, 659 characters) sets, kept zipped",
        files: &[
            RemoteFile {
                name: "images_background.zip",
                dir: "omniglot",
                urls: &[omniglot_url!("images_background.zip")],
                accept: &[Checksum::Md5("68d2efa1b9178cc56df9314c21c6e718")],
                unpack_to: None,
                packed: Packed::Plain,
            },
            RemoteFile {
                name: "images_evaluation.zip",
                dir: "omniglot",
                urls: &[omniglot_url!("images_evaluation.zip")],
                accept: &[Checksum::Md5("6b91aef0f799c5bb55b94e3f2daec811")],
                unpack_to: None,
                packed: Packed::Plain,
            },
        ],
        layout: None,
        system_dirs: &[],
        import: None,
    },
    DataSet {
        name: "omniglot-runs",
        about: "Lake et al.'s 20 one-shot classification runs (20-way, within alphabet), unpacked to omniglot/all_runs",
        files: &[RemoteFile {
            name: "all_runs.zip",
            dir: "omniglot",
            urls: &[omniglot_url!("one-shot-classification/all_runs.zip")],
            accept: &[Checksum::Sha256(
                "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
            )],
            unpack_to: Some("omniglot/all_runs"),
            packed: Packed::Plain,
        }],
        layout: None,
        system_dirs: &[],
        import: None,
    },
    DataSet {
        name: "att-faces",
        about: "AT&T (ORL) faces: 40 subjects x 10 images, 92x112 PGM, unpacked to att_faces/sN/M.pgm",
        files: &[RemoteFile {
            name: "att_faces.zip",
            dir: "downloads",
            urls: &[
                "https://www.cl.cam.ac.uk/Research/DTG/attarchive/pub/data/att_faces.zip",
                "http://www.cl.cam.ac.uk/Research/DTG/attarchive/pub/data/att_faces.zip",
            ],
            accept: &[Checksum::Md5("6efb25cb0d40755e9492b9c012e3348d")],
            unpack_to: Some("att_faces"),
            packed: Packed::Plain,
        }],
        layout: Some(Layout {
            dir: "att_faces",
            check: super::layout::check_att_faces,
        }),
        system_dirs: &[],
        import: None,
    },
    DataSet {
        name: "lfw",
        about: "Labeled Faces in the Wild (original and funneled, 13,233 images) and the pairs files, unpacked to lfw/lfw and lfw/lfw_funneled",
        files: &[
            RemoteFile {
                name: "lfw.tgz",
                dir: "lfw",
                urls: &[figshare_url!("5976018")],
                accept: &[Checksum::Sha256(
                    "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
                )],
                unpack_to: Some("lfw/lfw"),
                packed: Packed::Plain,
            },
            RemoteFile {
                name: "lfw-funneled.tgz",
                dir: "lfw",
                urls: &[figshare_url!("5976015")],
                accept: &[Checksum::Sha256(
                    "b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a",
                )],
                unpack_to: Some("lfw/lfw_funneled"),
                packed: Packed::Plain,
            },
            RemoteFile {
                name: "pairs.txt",
                dir: "lfw",
                urls: &[figshare_url!("5976006")],
                accept: &[Checksum::Sha256(
                    "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
                )],
                unpack_to: None,
                packed: Packed::Plain,
            },
            RemoteFile {
                name: "pairsDevTrain.txt",
                dir: "lfw",
                urls: &[figshare_url!("5976012")],
                accept: &[Checksum::Sha256(
                    "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
                )],
                unpack_to: None,
                packed: Packed::Plain,
            },
            RemoteFile {
                name: "pairsDevTest.txt",
                dir: "lfw",
                urls: &[figshare_url!("5976009")],
                accept: &[Checksum::Sha256(
                    "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
                )],
                unpack_to: None,
                packed: Packed::Plain,
            },
        ],
        layout: None,
        system_dirs: &[],
        import: None,
    },
    DataSet {
        name: "fashion-mnist",
        about: "Fashion-MNIST in IDX format (60,000 + 10,000 28x28 images, 10 classes), kept gzipped",
        files: &[
            fashion!("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
            fashion!("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
            fashion!("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
            fashion!("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
        ],
        layout: None,
        system_dirs: &["/usr/share/datasets/fashion-mnist"],
        import: None,
    },
    DataSet {
        name: "dlib-face-models",
        about: "dlib's three public face models (CC0; face_recognition's): ResNet encoder, 5-point landmarks, MMOD CNN detector, imported into faces/faces.safetensors",
        files: &[
            dlib_model!(
                "dlib_face_recognition_resnet_model_v1.dat",
                "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
            ),
            dlib_model!(
                "shape_predictor_5_face_landmarks.dat",
                "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
            ),
            dlib_model!(
                "mmod_human_face_detector.dat",
                "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
            ),
        ],
        layout: None,
        system_dirs: &[],
        import: Some(Import {
            out: "faces/faces.safetensors",
            about: "siamese import dlib --encoder ... --landmarks ... --detector ... --out",
            args: dlib_import_args,
        }),
    },
];
