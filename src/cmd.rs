//! Command-line front-ends. No data-plane logic here.
use crate::control::{self, Source};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Egress gateway for AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve. SIGHUP or `POST /v1/reload` swaps in a new config; SIGTERM drains and exits.
    Run {
        /// Config file (TOML). Without it, the embedded quickstart config is used.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate and compile a config; print a summary, or the errors and exit 1.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
}

pub fn run(source: Source) -> Result<()> {
    control::run(source)
}

/// Prints a summary of a compiled config, or returns its errors.
pub fn check(path: PathBuf) -> Result<bool> {
    match crate::config::compile_file(&path) {
        Ok(c) => {
            println!("{}: ok", path.display());
            println!(
                "  listen: {}",
                c.server
                    .listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let workers = if c.server.workers == 0 {
                "one per core".to_string()
            } else {
                c.server.workers.to_string()
            };
            println!("  workers: {workers}");
            if let Some(a) = c.server.admin_listen {
                println!("  admin: {a}");
            }
            println!("  proxies: {}", c.proxies.len());
            for p in &c.proxies {
                let u = &p.upstream;
                println!(
                    "    {:<16} -> {}://{}{}  default {:?}",
                    p.name,
                    if u.https { "https" } else { "http" },
                    u.authority,
                    u.base_path,
                    p.default_effect
                );
            }
            for w in &c.warnings {
                println!("warning: {w}");
            }
            Ok(true)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(false)
        }
    }
}
