//! The flags every bench target but P1 takes besides its own: `--smoke`, and the `--bench` that
//! `cargo bench` appends. Included with `#[path = "common/args.rs"] mod args;` and flattened
//! into a target's clap arguments (`#[command(flatten)] common: args::Common`).
#![allow(dead_code)]

#[derive(clap::Args)]
pub struct Common {
    /// A tiny run of every measurement: smaller defaults, no thresholds (`benches/run --smoke`).
    #[arg(long)]
    pub smoke: bool,
    /// Appended by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Common {
    /// The value given, else the default of the run (`full`, or `small` with `--smoke`).
    pub fn pick(&self, given: Option<usize>, full: usize, small: usize) -> usize {
        given.unwrap_or(if self.smoke { small } else { full })
    }
}
