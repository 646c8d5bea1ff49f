//! `shoal-shim`: the per-container supervisor the daemon starts (see `shoal_runtime::shim`).
//! It daemonizes, creates the container, prints `ok <shim pid> <container pid>` or
//! `error <message>` on stdout, then serves its socket until `shutdown`.

fn main() {
    let args = match shoal_runtime::shim::ShimArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            println!("error {e}");
            std::process::exit(2);
        }
    };
    std::process::exit(shoal_runtime::shim::server::run(args));
}
