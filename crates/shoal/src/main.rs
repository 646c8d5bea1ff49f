//! The `shoal` binary: `shoal daemon` runs the host's daemon; every other verb is the command
//! line client, which talks to a daemon over its unix socket.

mod daemon;
mod observability;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// shoal: a clustered container orchestrator with Docker swarm mode's commands.
#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    global: shoal_cli::GlobalArgs,

    #[command(subcommand)]
    command: TopLevel,
}

#[derive(Debug, clap::Subcommand)]
enum TopLevel {
    /// Run the shoal daemon on this host.
    Daemon(daemon::DaemonArgs),
    /// The OCI runtime command line (create, start, state, kill, delete, exec), usable in
    /// place of runc.
    Runtime(shoal_runtime::oci_cli::RuntimeArgs),
    #[command(flatten)]
    Client(shoal_cli::Command),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    // Container creation needs a single-threaded process: decide before any runtime starts.
    if let TopLevel::Runtime(args) = cli.command {
        return match shoal_runtime::oci_cli::run(args) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
            Err(error) => {
                eprintln!("Error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    // The daemon serves many clients at once; a client command is one conversation, where a
    // single thread starts faster (no worker threads, no CPU-quota probing) and is enough.
    let runtime = match cli.command {
        TopLevel::Daemon(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        TopLevel::Daemon(args) => {
            let host = args.host.clone().unwrap_or(cli.global.host.clone());
            match runtime.block_on(daemon::run(args, &host)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("Error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        TopLevel::Runtime(_) => unreachable!("handled before the async runtime starts"),
        TopLevel::Client(command) => match runtime.block_on(shoal_cli::run(&cli.global, command)) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("Error: {error}");
                ExitCode::from(error.exit_code())
            }
        },
    }
}

/// Help and version print as clap renders them; a usage mistake is one line (clap's first
/// paragraph, so "required arguments were not provided: <IMAGE>" keeps its argument) and exit 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    }
    let rendered = error.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = paragraph.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("Error: {message} (see --help)");
    ExitCode::from(2)
}
