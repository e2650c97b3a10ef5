//! `herd-bench`: the command line of herd's fleet simulator and benchmark harness.
//!
//! Only parses flags and hands over to the library; everything that measures lives in `herd_bench`.
//! It must not hold state of its own, so that an interrupt anywhere unwinds through the library's
//! guards (which stop the server and drop the PostgreSQL database).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args = herd_bench::cli::Args::parse();
    match args.command.take() {
        Some(herd_bench::cli::Check::Crash(crash)) => return crash_check(crash.settings()),
        Some(herd_bench::cli::Check::StaticServe(serve)) => return static_serve(serve),
        None => {}
    }
    let settings = match herd_bench::cli::Settings::from_args(args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("herd-bench: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herd-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herd_bench::run_until_interrupted(settings)) {
        Ok(outcome) if outcome.all_phases_ran() => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("herd-bench: some phases failed (see the table); results were still written");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("herd-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn crash_check(settings: herd_bench::crash::CrashSettings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herd-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herd_bench::crash_until_interrupted(settings)) {
        Ok(outcomes) if outcomes.iter().all(|outcome| outcome.nothing_lost()) => {
            println!("crash check: every acknowledged write survived every kill");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("herd-bench crash: acknowledged writes were LOST (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("herd-bench crash: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn static_serve(args: herd_bench::cli::StaticServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herd-bench static-serve: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(herd_bench::static_serve::run(args.file, args.addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herd-bench static-serve: {error:#}");
            ExitCode::FAILURE
        }
    }
}
