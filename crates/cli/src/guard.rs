//! What every command does before any work: its outputs checked against each other and its
//! inputs ([`siamese_infer::check_outputs`]; a refusal is a usage error, exit 2), and, after
//! reading a data set, what was skipped said on stderr.

use crate::commands::UsageError;
use siamese_data::Skipped;
use siamese_infer::outputs::{Input, Output};

/// [`siamese_infer::check_outputs`], its refusal a usage error.
pub fn check(inputs: &[Input<'_>], outputs: &[Output<'_>]) -> anyhow::Result<()> {
    siamese_infer::check_outputs(inputs, outputs).map_err(|e| UsageError(e.to_string()).into())
}

/// How many skipped entries are named on stderr (`--json` lists all of them).
const SHOWN: usize = 5;

/// Says on stderr what `what` (e.g. "training data") skipped: the count and the first
/// [`SHOWN`] entries with their reasons.
pub fn report_skipped(what: &str, skipped: &[Skipped]) {
    if skipped.is_empty() {
        return;
    }
    let n = skipped.len();
    eprintln!(
        "{what}: skipped {n} {}:",
        if n == 1 { "entry" } else { "entries" }
    );
    for s in skipped.iter().take(SHOWN) {
        eprintln!("  {s}");
    }
    if n > SHOWN {
        eprintln!("  … and {} more", n - SHOWN);
    }
}

/// The images an [`siamese_data::ImageCache`] load left out, as skipped entries.
pub fn skipped_items(
    data: &siamese_data::Dataset,
    items: Vec<siamese_data::SkippedItem>,
) -> Vec<Skipped> {
    items
        .into_iter()
        .map(|s| {
            let path = data
                .items
                .get(s.index)
                .map(|i| i.source.display_name())
                .unwrap_or_default();
            Skipped::new(path, s.error.to_string())
        })
        .collect()
}
