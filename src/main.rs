//! `rstar-gpu` command-line entry: parses arguments and hands off to `cli`.
mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
