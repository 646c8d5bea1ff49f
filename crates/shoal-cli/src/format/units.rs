//! `format/units.rs`: sizes and CPU counts as `docker info` prints them.

/// Docker's `units.BytesSize`: binary units, four significant digits (`1.944GiB`).
pub(crate) fn bytes_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{}{}", significant(value, 4), UNITS[unit])
}

/// Nano-CPUs as a count of CPUs, without trailing zeros (`2`, `1.5`).
pub(crate) fn cpus(nano_cpus: i64) -> String {
    significant(nano_cpus as f64 / 1e9, 6)
}

/// `value` with `digits` significant digits and no trailing zeros, like Go's `%.4g` for the
/// magnitudes shown here.
fn significant(value: f64, digits: usize) -> String {
    let whole_digits = if value < 1.0 {
        1
    } else {
        value.log10().floor() as usize + 1
    };
    let decimals = digits.saturating_sub(whole_digits);
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes_size(0), "0B");
        assert_eq!(bytes_size(512), "512B");
        assert_eq!(bytes_size(1024), "1KiB");
        assert_eq!(bytes_size(1536), "1.5KiB");
        assert_eq!(bytes_size(2_087_354_368), "1.944GiB");
        assert_eq!(bytes_size(25_769_803_776), "24GiB");
        assert_eq!(bytes_size(1_039_843_328), "991.7MiB");
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(cpus(2_000_000_000), "2");
        assert_eq!(cpus(1_500_000_000), "1.5");
        assert_eq!(cpus(0), "0");
    }
}
