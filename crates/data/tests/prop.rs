//! Property tests: the parsers of files a user hands us never panic, whatever the bytes (an
//! error is fine; a panic, an abort or a huge allocation is not). Case counts are small so
//! each property runs in a few seconds.

use proptest::prelude::*;
use siamese_data::{decode, LfwPairs, OneShotRuns};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The first bytes of each format the decoder recognises, so that arbitrary bodies reach
/// each format's own decoder rather than the "unrecognised format" check.
const MAGICS: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"P5\n",
    b"P2\n",
    b"P6\n",
    b"P4\n",
    b"P1\n",
    b"",
];

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn decode_never_panics(
        magic in proptest::sample::select(MAGICS),
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes, "arbitrary");
    }

    /// PGM headers with arbitrary numbers: sizes up to 2^32, maxvals of any width.
    #[test]
    fn pgm_headers_never_panic(
        w in any::<u32>(),
        h in any::<u32>(),
        maxval in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = format!("P5\n{w} {h}\n{maxval}\n").into_bytes();
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes, "arbitrary.pgm");
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn lfw_pairs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = LfwPairs::parse(&String::from_utf8_lossy(&bytes), "pairs.txt");
    }

    /// Text shaped like a pairs file: a header of arbitrary numbers, then lines of names and
    /// numbers (including ones past u32 and negative).
    #[test]
    fn lfw_shaped_text_never_panics(
        header in proptest::collection::vec(any::<i64>(), 0..3),
        lines in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof!["[a-z_]{1,6}", any::<i64>().prop_map(|n| n.to_string())],
                0..5,
            ),
            0..12,
        ),
    ) {
        let mut text = header.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
        for l in lines {
            text.push('\n');
            text.push_str(&l.join(" "));
        }
        let _ = LfwPairs::parse(&text, "pairs.txt");
    }
}

proptest! {
    #![proptest_config(config(60))]

    /// A run folder with arbitrary `class_labels.txt`, and lines shaped like the real ones.
    #[test]
    fn oneshot_runs_never_panic(
        raw in proptest::collection::vec(any::<u8>(), 0..200),
        lines in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    Just("run01/test/item01.png".to_string()),
                    Just("run01/training/class01.png".to_string()),
                    Just("training/class01.png".to_string()),
                    "[a-z/.]{0,12}",
                ],
                0..4,
            ),
            0..6,
        ),
        shaped in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let run = dir.path().join("run01");
        let io = |e: std::io::Error| TestCaseError::fail(e.to_string());
        std::fs::create_dir_all(run.join("training")).map_err(io)?;
        std::fs::create_dir_all(run.join("test")).map_err(io)?;
        std::fs::write(run.join("training/class01.png"), b"x").map_err(io)?;
        std::fs::write(run.join("test/item01.png"), b"x").map_err(io)?;
        let text = if shaped {
            lines.iter().map(|l| l.join(" ")).collect::<Vec<_>>().join("\n").into_bytes()
        } else {
            raw
        };
        std::fs::write(run.join("class_labels.txt"), text).map_err(io)?;
        let _ = OneShotRuns::open(dir.path());
    }
}
