//! `handover-sidecar`: see `--help`.

mod cli;
mod resources;

use clap::Parser;
use handover_common::logging::{LogFormat, init_logging};

use cli::{Cli, Command, CookieCommand};

/// mimalloc instead of glibc's malloc: a request allocates and frees short-lived buffers on
/// whichever worker runs it (headers, cookies, the state codec's ~300 KB of deflate tables), and
/// glibc's per-thread arenas hand freed memory back to the kernel only to fault it in again on the
/// next request (a profile under the bench: ~15 % of the sidecar's CPU in page faults).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = run() {
        eprintln!("handover-sidecar: {e}");
        std::process::exit(1);
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let mut builder = if workers == 1 {
        // One thread (a pod limited to one CPU): no work-stealing scheduler between the tasks of
        // a request, its client connection and its app connection.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().map_err(|e| format!("cannot start the runtime: {e}"))
}

fn run() -> Result<(), String> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(&args.log_level, args.log_format);
            runtime(args.workers)?.block_on(cli::run(*args))
        }
        Command::Demo(args) => runtime(0)?.block_on(handover_lab::demo::run(args)),
        Command::DemoApp(args) => {
            init_logging("info", LogFormat::Text);
            // As an app in a pod behind the sidecar: one connection for each of its client
            // connections in flight, past containerd's soft limit of 1024 under load.
            resources::raise_open_files();
            runtime(args.workers)?.block_on(handover_lab::demo_app::run(args))
        }
        Command::Bench(args) => {
            // Its idle connections' figure holds 2 000 connections open, past the soft limit of 1024.
            resources::raise_open_files();
            runtime(0)?.block_on(handover_lab::bench::run(args))
        }
        Command::LeanProxy(args) => runtime(1)?.block_on(handover_lab::lean_proxy::run(args)),
        Command::Cookie(CookieCommand::Inspect { value, key_file, pool, cookie_name }) => {
            println!("{}", cli::inspect(&value, &key_file, &pool, cookie_name.as_deref())?);
            Ok(())
        }
        Command::Keygen { id } => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            println!("{}", handover_dataplane::keys::generate_line(id, now));
            Ok(())
        }
    }
}
