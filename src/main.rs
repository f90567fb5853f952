//! The `baton` binary: serve a node, run a local dev cluster, or talk to a
//! cluster as a client.

mod cli;
mod dev;

use clap::Parser;

/// mimalloc instead of glibc's malloc: under load a node's allocations come
/// from many threads, and glibc's per-thread arenas held 385–465 MB of RSS
/// for 100,000 sessions and primitives (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("baton: {:?}: {}", status.code(), status.message()),
                None => eprintln!("baton: {error}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
