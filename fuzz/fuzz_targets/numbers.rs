//! Duration, byte-size, count and int-or-percent parsing: never a panic or an
//! overflow, every accepted value within its documented bound, and formatting
//! round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewave::manifest::limits::{Limit, format_bytes, parse_bytes};
use nodewave::manifest::policy::{
    IntOrPercent, MAX_DURATION, format_duration, parse_duration, parse_int_or_percent,
};

fuzz_target!(|data: (&str, usize)| {
    let (s, total) = data;
    if let Ok(d) = parse_duration(s) {
        assert!(d <= MAX_DURATION, "{s:?} parsed to {d:?}");
        let formatted = format_duration(d);
        assert_eq!(parse_duration(&formatted), Ok(d), "{s:?} -> {formatted:?}");
    }
    if let Ok(v) = parse_int_or_percent(s) {
        if let IntOrPercent::Percent(p) = v {
            assert!((1..=100).contains(&p), "{s:?}");
        }
        let n = v.resolve(total);
        assert!(n >= 1);
        if let IntOrPercent::Percent(_) = v {
            assert!(n <= total.max(1), "{s:?} of {total} = {n}");
        }
        assert_eq!(parse_int_or_percent(&v.to_string()), Ok(v));
    }
    if let Ok(n) = parse_bytes(s) {
        let formatted = format_bytes(n);
        assert_eq!(
            parse_bytes(formatted.trim_end_matches(" bytes")),
            Ok(n),
            "{s:?} -> {formatted:?}"
        );
    }
    for limit in Limit::ALL {
        if let Ok(v) = limit.parse(s) {
            assert!(v >= 1 && limit.check(v).is_ok(), "{limit}: {s:?} -> {v}");
        }
    }
});
