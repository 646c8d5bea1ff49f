//! This host's OCI platform (`linux/amd64`, `linux/arm64`, ...) and matching index entries to it.

use oci_spec::image::Platform;

/// Images run on Linux only.
pub const HOST_OS: &str = "linux";

/// This host's architecture in Go's GOARCH spelling, as OCI platforms use it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Whether an index entry's platform is this host's. Variants are not compared except
/// that arm64 entries must be `v8` or unspecified.
pub(crate) fn matches_host(p: &Platform) -> bool {
    if p.os().to_string() != HOST_OS || p.architecture().to_string() != host_arch() {
        return false;
    }
    match (host_arch(), p.variant().as_deref()) {
        ("arm64", Some(v)) => v == "v8",
        _ => true,
    }
}
