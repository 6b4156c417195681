//! The `siamese` command: a thin layer that parses arguments, calls the library crates and
//! prints. Diagnostics and progress go to stderr; `--json` results go to stdout.
//!
//! Exit status: 0 success, 1 failure (the cause chain is printed), 2 bad usage.

mod args;
mod commands;
mod images;

use clap::Parser;

// Training allocates and frees the same large activation buffers every step. glibc's malloc
// hands buffers this large back to the kernel on every free, so each step paid for page faults,
// zeroing and cross-thread TLB shootdowns (measured: a third of the wall time, with the second
// core idle). mimalloc keeps them for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `siamese inspect model | head` closes stdout early: end quietly, as Unix tools do,
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are successes; everything else is bad usage (exit 2).
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            std::process::exit(2);
        }
        // candle's kernels and ours read the thread count from RAYON_NUM_THREADS.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    match commands::run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            let code = if e.downcast_ref::<commands::UsageError>().is_some() {
                2
            } else {
                1
            };
            std::process::exit(code);
        }
    }
}
