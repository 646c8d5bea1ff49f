//! Links the shim as a position-dependent executable.
//!
//! A PIE's `.data.rel.ro` (vtables, string tables: ~270 KiB here) is rewritten by the dynamic
//! loader at every start, so each shim would carry a private copy; without PIE those pages stay
//! clean and shared by every shim on the host. The shim is root-only, listens on a 0600 socket
//! and parses nothing from the container, so giving up ASLR for its own image is a fair price
//! for keeping one idle shim per container small.

fn main() {
    println!("cargo:rustc-link-arg-bin=shoal-shim=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
