#![forbid(unsafe_code)]
use clap::Parser;
use portcullis::cli::{self, Cli, Command, Source};
use std::process::ExitCode;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let result = match cli.command {
        Command::Run { config } => {
            let source = match config {
                Some(p) => Source::File(p),
                None => {
                    tracing::info!("no -c given: using the embedded quickstart config");
                    Source::Embedded
                }
            };
            cli::run(source).map(|_| true)
        }
        Command::Check {
            config,
            offline,
            as_user,
        } => cli::check(config, offline, as_user),
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout()).map(|_| true)
        }
        Command::Manpage => cli::manpage(&mut std::io::stdout()).map(|_| true),
        Command::Agent { command } => cli::agent(command),
        Command::Vault { command } => cli::vault(command),
        Command::Logs(args) => cli::logs(args),
        Command::Audit { command } => cli::audit(command),
        Command::Approvals { command } => cli::approvals::run(command),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
