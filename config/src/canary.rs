//! Canary settings of a service: version weights, overrides, sticky assignment, the stable
//! version; and the version-name grammar rollouts share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Errors;
use crate::hash::{HashOn, parse_hash_on};

/// How a service with versions places a request (see `docs/canary.md`).
///
/// Sticky assignment hashes a user key to a bucket in `0..10_000`; the versions own consecutive
/// bucket ranges in a fixed order (every version but the stable one by name, newest name
/// first, from bucket 0; the stable version last), each as wide as its share of the weight. A
/// user is in the canary exactly when their bucket is below the canary's share, so raising the
/// canary's weight only moves users from stable to canary, and every instance places a user the
/// same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Canary {
    /// The stable version (takes the top buckets); default: the first version by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The user key of sticky assignment; none: every request is placed by weight alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<HashOn>,
    /// Rules that pin a request to a version, tried in order, before weights and stickiness.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

impl Canary {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A request whose header or cookie `on` is present (and equals `value`, when set) goes to
/// `version`; without `version`, the header's or cookie's value names the version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Override {
    /// A header or a cookie (never `client_ip`).
    pub on: HashOn,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCanary {
    pub stable: Option<String>,
    pub sticky: Option<String>,
    #[serde(default)]
    pub overrides: Vec<FileOverride>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOverride {
    pub on: Option<String>,
    pub value: Option<String>,
    pub version: Option<String>,
}

/// The `canary` table of a service. Versions named here must be among `versions` when the
/// service declares them (weights set from elsewhere may bring others).
pub fn validate_canary(
    c: FileCanary,
    versions: &BTreeMap<String, u32>,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> Canary {
    let known = |v: &str, f: String, errs: &mut Errors| {
        if let Err(e) = check_version(v) {
            errs.push(origin, f, e);
        } else if !versions.is_empty() && !versions.contains_key(v) {
            errs.push(
                origin,
                f,
                format!(
                    "{v:?} is not one of the versions {:?}",
                    versions.keys().collect::<Vec<_>>()
                ),
            );
        }
    };
    let mut canary = Canary::default();
    if let Some(v) = c.stable {
        known(&v, format!("{field}.stable"), errs);
        canary.stable = Some(v);
    }
    if let Some(s) = c.sticky {
        match parse_hash_on(&s) {
            Ok(on) => canary.sticky = Some(on),
            Err(e) => errs.push(origin, format!("{field}.sticky"), e),
        }
    }
    for (i, o) in c.overrides.into_iter().enumerate() {
        let f = format!("{field}.overrides[{i}]");
        let on = match o.on.as_deref().map(parse_hash_on) {
            Some(Ok(HashOn::ClientIp)) => {
                errs.push(
                    origin,
                    format!("{f}.on"),
                    "an override matches \"header:NAME\" or \"cookie:NAME\"",
                );
                continue;
            }
            Some(Ok(on)) => on,
            Some(Err(e)) => {
                errs.push(origin, format!("{f}.on"), e);
                continue;
            }
            None => {
                errs.push(
                    origin,
                    format!("{f}.on"),
                    "missing: \"header:NAME\" or \"cookie:NAME\"",
                );
                continue;
            }
        };
        if let Some(v) = &o.version {
            known(v, format!("{f}.version"), errs);
        }
        canary.overrides.push(Override {
            on,
            value: o.value,
            version: o.version,
        });
    }
    canary
}

pub fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {v:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}
