//! The `capstan` binary: parses the command line, installs logging and signal handling, and runs.

use anyhow::Context;
use capstan::config::{Cli, Command};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// mimalloc: per-thread free lists suit the proxy workers' allocate-and-free-per-request pattern
/// better than glibc malloc (measured in benches/ingress.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    match cli.command {
        Command::Run(args) => {
            capstan::telemetry::init_logging(&args.log);
            capstan::telemetry::coredns::count_panics();
            runtime
                .block_on(async {
                    let shutdown = CancellationToken::new();
                    tokio::spawn(stop_on_signals(shutdown.clone()));
                    capstan::run(*args, shutdown).await
                })
                .map_err(|error| match error.listener_hint() {
                    Some(hint) => anyhow::anyhow!("{error}\n{hint}"),
                    None => anyhow::Error::new(error),
                })?;
        }
        Command::Check(args) => {
            capstan::telemetry::init_logging("warn");
            let summary = runtime.block_on(capstan::check(&args))?;
            print!("{summary}");
        }
    }
    Ok(())
}

/// The first SIGTERM/SIGINT starts a graceful drain; a second one exits at once.
async fn stop_on_signals(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down: no new connections");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
