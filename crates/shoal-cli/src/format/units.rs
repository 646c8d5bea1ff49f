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

/// Docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units and Go's `%.3g`, as
/// `docker image ls` and `docker stats` print sizes (`4.26MB`, `648B`, `1.2kB`).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", go_g(value, 3), UNITS[unit])
}

/// Go's `%.{precision}g` for a non-negative value: `precision` significant digits, trailing
/// zeros dropped, and the exponent form once rounding reaches `10^precision` (Go prints
/// 999.9 with `%.3g` as `1e+03`, and so does Docker).
pub(crate) fn go_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let scientific = format!("{:.*e}", precision.saturating_sub(1), value);
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |text: &str| -> String {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text.to_owned()
        }
    };
    if exponent < -4 || exponent >= precision as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    } else {
        let decimals = (precision as i32 - 1 - exponent).max(0) as usize;
        trim(&format!("{value:.decimals$}"))
    }
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
    fn human_sizes_match_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(648), "648B");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(4_264_999), "4.26MB");
        assert_eq!(human_size(7_800_000), "7.8MB");
        assert_eq!(human_size(77_800_000), "77.8MB");
        assert_eq!(human_size(1_000_000_000), "1GB");
        assert_eq!(human_size(999_999), "1e+03kB");
        assert_eq!(go_g(0.0001234, 3), "0.000123");
        assert_eq!(go_g(0.00001234, 3), "1.23e-05");
        assert_eq!(go_g(12.0, 3), "12");
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(cpus(2_000_000_000), "2");
        assert_eq!(cpus(1_500_000_000), "1.5");
        assert_eq!(cpus(0), "0");
    }
}
