//! `format/time.rs`: timestamps from the wire as RFC 3339 (for programs), as dates (for
//! people), and as Docker's relative "2 hours ago".

use std::time::Duration;

use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// What Go prints for a zero `time.Time`; Docker users' scripts know it as "unset".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub(crate) fn to_datetime(ts: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// RFC 3339 in UTC with only the fractional digits needed, like Go's `RFC3339Nano`.
pub(crate) fn rfc3339(ts: Option<&Timestamp>) -> String {
    ts.and_then(to_datetime)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ZERO_TIME.to_owned())
}

/// A date for people: `2024-05-01 12:30:00 +0000 UTC`.
pub(crate) fn human_date(ts: Option<&Timestamp>) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC");
    ts.and_then(to_datetime)
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "N/A".to_owned())
}

/// Log timestamps as Docker prints them (`RFC3339NanoFixed`): UTC, always nine fractional
/// digits, so the columns line up.
pub(crate) fn rfc3339_nano_fixed(ts: &Timestamp) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
    to_datetime(ts)
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "0001-01-01T00:00:00.000000000Z".to_owned())
}

/// How long ago `ts` was, as Docker's `HumanDuration` (`5 seconds`, `About an hour`), for
/// statuses like `Up 5 seconds`. Unset or future instants read as no time at all.
pub(crate) fn elapsed(ts: Option<&Timestamp>, now: OffsetDateTime) -> String {
    let elapsed = ts
        .and_then(to_datetime)
        .and_then(|then| Duration::try_from(now - then).ok())
        .unwrap_or(Duration::ZERO);
    human_duration(elapsed)
}

/// Docker's relative time for a past instant: `About a minute ago`, `3 days ago`.
/// A timestamp slightly in the future (clock skew) reads as just now.
pub(crate) fn ago(ts: Option<&Timestamp>, now: OffsetDateTime) -> String {
    let Some(then) = ts.and_then(to_datetime) else {
        return "N/A".to_owned();
    };
    let elapsed = now - then;
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    format!("{} ago", human_duration(elapsed))
}

/// Docker's `units.HumanDuration`, bucket for bucket.
pub(crate) fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    let hours = (d.as_secs_f64() / 3600.0).round() as u64;
    if seconds < 1 {
        "Less than a second".to_owned()
    } else if seconds == 1 {
        "1 second".to_owned()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".to_owned()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".to_owned()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", seconds / 3600 / 24 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn relative_buckets_match_docker() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(400)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(59)), "59 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(119)), "About a minute");
        assert_eq!(human_duration(s(120)), "2 minutes");
        assert_eq!(human_duration(s(59 * 60)), "59 minutes");
        assert_eq!(human_duration(s(60 * 60)), "About an hour");
        assert_eq!(human_duration(s(90 * 60 - 1)), "About an hour");
        assert_eq!(human_duration(s(2 * 3600)), "2 hours");
        assert_eq!(human_duration(s(47 * 3600)), "47 hours");
        assert_eq!(human_duration(s(48 * 3600)), "2 days");
        assert_eq!(human_duration(s(13 * 86400)), "13 days");
        assert_eq!(human_duration(s(14 * 86400)), "2 weeks");
        assert_eq!(human_duration(s(60 * 86400)), "2 months");
        assert_eq!(human_duration(s(2 * 365 * 86400)), "2 years");
    }

    #[test]
    fn ago_from_timestamps() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(
            ago(Some(&ts(1_700_000_000 - 75, 0)), now),
            "About a minute ago"
        );
        assert_eq!(ago(Some(&ts(1_700_000_000 - 7200, 0)), now), "2 hours ago");
        assert_eq!(
            ago(Some(&ts(1_700_000_010, 0)), now),
            "Less than a second ago"
        );
        assert_eq!(ago(None, now), "N/A");
    }

    #[test]
    fn log_timestamps_and_elapsed() {
        assert_eq!(
            rfc3339_nano_fixed(&ts(1_700_000_000, 5_000)),
            "2023-11-14T22:13:20.000005000Z"
        );
        assert_eq!(
            rfc3339_nano_fixed(&ts(1_700_000_000, 0)),
            "2023-11-14T22:13:20.000000000Z"
        );
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(elapsed(Some(&ts(1_700_000_000 - 5, 0)), now), "5 seconds");
        assert_eq!(elapsed(None, now), "Less than a second");
    }

    #[test]
    fn absolute_forms() {
        assert_eq!(rfc3339(Some(&ts(1_700_000_000, 0))), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339(Some(&ts(1_700_000_000, 991_066_200))),
            "2023-11-14T22:13:20.9910662Z"
        );
        assert_eq!(rfc3339(None), "0001-01-01T00:00:00Z");
        assert_eq!(
            human_date(Some(&ts(1_700_000_000, 5))),
            "2023-11-14 22:13:20 +0000 UTC"
        );
        assert_eq!(human_date(None), "N/A");
    }
}
