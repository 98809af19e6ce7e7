//! Checks shared by every slice of the configuration: names, bounded numbers, durations with
//! defaults. Each reports into an [`Errors`] with the origin and the dotted field path.

use std::time::Duration;

use crate::duration;
use crate::error::Errors;

/// Names of routers, services and entrypoints appear in metrics labels, URLs of the admin API
/// and etcd keys, so they are kept to a safe alphabet.
pub fn check_name(errs: &mut Errors, origin: &str, field: &str, name: &str) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(
            origin,
            field,
            format!("name {name:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    ok
}

/// An integer field within a range, reported with its field path.
pub(crate) fn bounded(
    v: Option<i64>,
    default: u32,
    min: i64,
    max: i64,
    origin: &str,
    field: String,
    errs: &mut Errors,
) -> u32 {
    match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => v as u32,
        Some(v) => {
            errs.push(origin, field, format!("{v} is out of range {min}..={max}"));
            default
        }
    }
}

/// A duration field with a default, reported with its field path.
pub(crate) fn duration_or(
    text: &Option<String>,
    default: Duration,
    origin: &str,
    field: String,
    errs: &mut Errors,
) -> Duration {
    match text {
        None => default,
        Some(t) => match duration::parse(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(origin, field, "must be greater than zero");
                default
            }
            Err(e) => {
                errs.push(origin, field, e);
                default
            }
        },
    }
}

/// Header names (lowercased), each bad one reported as `field[i]`.
pub(crate) fn header_names(
    list: Option<Vec<String>>,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, n) in list.into_iter().flatten().enumerate() {
        match http::HeaderName::from_bytes(n.trim().as_bytes()) {
            Ok(h) => out.push(h.as_str().to_string()),
            Err(_) => errs.push(
                origin,
                format!("{field}[{i}]"),
                format!("{n:?} is not a header name"),
            ),
        }
    }
    out
}

/// `"502"` or `"500-599"` as an inclusive range of statuses within `allowed`.
pub(crate) fn status_range(text: &str, allowed: std::ops::RangeInclusive<u16>) -> Option<(u16, u16)> {
    let code = |t: &str| t.trim().parse::<u16>().ok().filter(|c| allowed.contains(c));
    match text.split_once('-') {
        Some((lo, hi)) => code(lo).zip(code(hi)).filter(|(lo, hi)| lo <= hi),
        None => code(text).map(|c| (c, c)),
    }
}
