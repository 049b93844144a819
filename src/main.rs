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
    // PORTCULLIS_LOG_FORMAT=json: one JSON object per line (timestamp, level, target, fields
    // with the message), for journald/SIEM pipelines that parse rather than grep.
    // ... or `[log] format` in the config `run -c` starts (the variable wins)
    let format = match std::env::var("PORTCULLIS_LOG_FORMAT") {
        Ok(f) if !f.is_empty() => f,
        _ => match &cli.command {
            Command::Run { config: Some(path) } => cli::configured_log_format(path).to_string(),
            _ => String::new(),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format.as_str() {
        "" | "text" => builder.init(),
        "json" => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        other => {
            eprintln!("error: PORTCULLIS_LOG_FORMAT={other:?}: expected \"text\" or \"json\"");
            return ExitCode::FAILURE;
        }
    }
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
        Command::Mcp { command } => cli::mcp::run(command),
        Command::Ca { command } => cli::ca(command),
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
