//! `palisade-jobs`: the admin command line of the palisade-jobs queue (feature `cli`).
//! Run `palisade-jobs --help`; the logic lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    palisade_jobs::cli::main()
}
