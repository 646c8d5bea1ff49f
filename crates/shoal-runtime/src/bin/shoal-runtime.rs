//! `shoal-runtime`: the OCI runtime command line on its own (runc's verbs), for tools that drive
//! a runc-compatible binary and for this crate's tests. `shoal runtime` exposes the same.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "shoal-runtime", about = "OCI runtime (runc-compatible verbs)")]
struct Cli {
    #[command(flatten)]
    runtime: shoal_runtime::oci_cli::RuntimeArgs,
}

fn main() {
    let cli = Cli::parse();
    match shoal_runtime::oci_cli::run(cli.runtime) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("shoal-runtime: {e}");
            std::process::exit(1);
        }
    }
}
