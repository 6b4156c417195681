//! `cargo xtask`: project automation that would be awkward in shell scripts.
//!
//! The alias in `.cargo/config.toml` runs this binary in release mode:
//! `cargo xtask <command> [arguments]`. Each command lives in its own module; `main` only
//! dispatches. Commands:
//!
//! - `fetch`: download (or copy from a mirror) the data sets, verify their checksums and
//!   unpack them safely into the data root ([`fetch`]).
//! - `eval`: fetch, train with a recipe and evaluate through the real `siamese` binary,
//!   writing a report under `target/eval/NAME/` ([`eval`]).
//! - `bench`: speed and peak memory of train, embed, verify and identify, and of dlib's face
//!   pipeline, through the release binary, optionally against PyTorch and dlib references, in
//!   `target/bench/` ([`mod@bench`]).
//!
//! Errors are `anyhow` chains printed on stderr; exit status 1 for failures, 2 for bad usage.

mod bench;
mod eval;
mod fetch;
mod tidy;

use std::process::ExitCode;

/// A command-line mistake: printed with the usage text, exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

const USAGE: &str = "\
usage: cargo xtask <command> [arguments]

commands:
  fetch --list                                   list the data sets that can be fetched
                                                 (dlib-face-models: also imported into
                                                 faces/faces.safetensors by the release binary)
  fetch NAME... [--data-root DIR] [--mirror DIR] fetch data sets into the data root
                                                 (default $SIAMESE_DATA or ./data; the mirror,
                                                 default $SIAMESE_MIRROR, replaces the network)
  eval NAME [--time-budget S] [--seeds 0,1,2] [--train-all] [--mirror DIR] [-- TRAIN FLAGS]
                                                 fetch, train with the recipe and evaluate through
                                                 the real binary (NAME: omniglot, att-faces);
                                                 report in target/eval/NAME/
  bench [--quick] [--peer] [--rounds N] [--steps N] [--runs N] [--threads N] [--galleries 10000,1000000]
        [--only conv4,resnet,koch,faces]         images/s of training and embed, verify cold
                                                 start, identify latency per probe, peak RSS,
                                                 and dlib's face pipeline (faces: detect,
                                                 detect+landmarks+encode, encode per chip,
                                                 identify RSS), through the release binary;
                                                 --peer also times bench/peer/peer.py (PyTorch)
                                                 and bench/peer/faces.py (dlib; $FACES_PYTHON),
                                                 alternating --rounds times (default 3); --only
                                                 narrows the groups; report in target/bench/
";

fn run(args: &[String]) -> anyhow::Result<()> {
    let Some((command, rest)) = args.split_first() else {
        return Err(UsageError("no command given".into()).into());
    };
    // `cargo xtask bench --help` and the like: the usage, not an unknown flag (flags after
    // `--` are the training's).
    if rest
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--help" || a == "-h")
    {
        print!("{USAGE}");
        return Ok(());
    }
    match command.as_str() {
        "fetch" => fetch::run(rest),
        "eval" => eval::run(rest),
        "bench" => bench::run(rest),
        // Further commands are dispatched here, one module each.
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(UsageError(format!("unknown command `{other}`")).into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("error: {u}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
