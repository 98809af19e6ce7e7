//! Request mirroring (shadow traffic): a share of the requests a service's other versions answer
//! is copied to one version, whose answers are discarded. The service option
//! (`[services.<name>.mirror]`), and [`Split`]: the version weights, and the mirror share, set
//! over a service at run time (etcd `weights/` keys, the admin API, a rollout's shadow steps).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::MAX_WEIGHT;
use crate::canary::check_version;
use crate::error::Errors;
use crate::size::FileSize;

/// Mirrors `percent` of the requests that go to any other version of the service to `version`.
/// Mirroring never delays or fails the user's request: the copy is sent beside it (a body once
/// the user's body has been read, up to `max_body` bytes), its answer is read and dropped, and
/// at most `max_in_flight` copies are outstanding (more are dropped and counted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub version: String,
    /// 1..=100.
    pub percent: u32,
    /// Requests with a longer body are not mirrored.
    pub max_body: u64,
    /// Also mirror POST, PATCH and other methods that are not idempotent (off by default: a
    /// copy of such a request may act twice on shared state).
    pub non_idempotent: bool,
    pub max_in_flight: u32,
}

pub const DEFAULT_MAX_BODY: u64 = 64 << 10;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMirror {
    pub version: Option<String>,
    pub percent: Option<i64>,
    pub max_body: Option<FileSize>,
    pub non_idempotent: Option<bool>,
    pub max_in_flight: Option<i64>,
}

impl Mirror {
    /// A mirror of `percent` to `version` with the other settings at their defaults (a
    /// rollout's shadow step on a service without a mirror of its own).
    pub fn share(version: &str, percent: u32) -> Self {
        Self {
            version: version.to_string(),
            percent,
            max_body: DEFAULT_MAX_BODY,
            non_idempotent: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Validates a service's mirror against its `versions` (the version mirrored to must be one).
pub fn validate_mirror(
    m: FileMirror,
    versions: &BTreeMap<String, u32>,
    origin: &str,
    field: &str,
    errs: &mut Errors,
) -> Option<Mirror> {
    let before = errs.0.len();
    let version = match m.version {
        None => {
            errs.push(
                origin,
                format!("{field}.version"),
                "missing: the version that gets the copies",
            );
            String::new()
        }
        Some(v) if !versions.contains_key(&v) => {
            let known: Vec<&str> = versions.keys().map(String::as_str).collect();
            errs.push(
                origin,
                format!("{field}.version"),
                format!(
                    "{v:?} is not one of the service's versions ({})",
                    known.join(", ")
                ),
            );
            v
        }
        Some(v) => v,
    };
    let percent = percent(
        m.percent.unwrap_or(100),
        origin,
        &format!("{field}.percent"),
        errs,
    );
    let max_body = match m.max_body.map(|s| s.bytes()) {
        None => DEFAULT_MAX_BODY,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errs.push(origin, format!("{field}.max_body"), e);
            0
        }
    };
    let max_in_flight = match m.max_in_flight {
        None => DEFAULT_MAX_IN_FLIGHT,
        Some(n) => match u32::try_from(n) {
            Ok(n) if n > 0 => n,
            _ => {
                errs.push(
                    origin,
                    format!("{field}.max_in_flight"),
                    format!("{n}: at least 1"),
                );
                0
            }
        },
    };
    (errs.0.len() == before).then_some(Mirror {
        version,
        percent,
        max_body,
        non_idempotent: m.non_idempotent.unwrap_or(false),
        max_in_flight,
    })
}

fn percent(p: i64, origin: &str, field: &str, errs: &mut Errors) -> u32 {
    match u32::try_from(p) {
        Ok(p) if (1..=100).contains(&p) => p,
        _ => {
            errs.push(origin, field, format!("{p}: a share in percent, 1..=100"));
            0
        }
    }
}

/// What is set over a service at run time: its version weights (they replace the service's own
/// `versions`) and, during a rollout's shadow step, a mirror share (it replaces the service's
/// own mirror, keeping its other settings). As JSON: `{"v1": 100, "v2": 0}`, with
/// `"mirror": {"version": "v2", "percent": 50}` for a mirror (a version named `mirror` has a
/// number, the mirror an object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub versions: BTreeMap<String, u32>,
    pub mirror: Option<(String, u32)>,
}

impl From<BTreeMap<String, u32>> for Split {
    fn from(versions: BTreeMap<String, u32>) -> Self {
        Self {
            versions,
            mirror: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShare {
    version: String,
    percent: i64,
}

impl Split {
    /// Parses the JSON form; problems name `origin` and `value.<version>` / `value.mirror`.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, Errors> {
        let mut errs = Errors::new();
        let raw: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => {
                errs.push(
                    origin,
                    "value",
                    format!("{e}; expected an object of version weights, e.g. {{\"v1\": 95, \"v2\": 5}}"),
                );
                return Err(errs);
            }
        };
        let mut split = Split::default();
        for (version, value) in raw {
            if version == "mirror" && value.is_object() {
                match serde_json::from_value::<RawShare>(value) {
                    Ok(s) => {
                        if let Err(e) = check_version(&s.version) {
                            errs.push(origin, "value.mirror.version", e);
                        }
                        let p = percent(s.percent, origin, "value.mirror.percent", &mut errs);
                        split.mirror = Some((s.version, p));
                    }
                    Err(e) => errs.push(
                        origin,
                        "value.mirror",
                        format!("{e}; expected {{\"version\": \"v2\", \"percent\": 50}}"),
                    ),
                }
                continue;
            }
            if let Err(e) = check_version(&version) {
                errs.push(origin, format!("value.{version}"), e);
                continue;
            }
            match value.as_i64().map(u32::try_from) {
                Some(Ok(w)) if w <= MAX_WEIGHT => {
                    split.versions.insert(version, w);
                }
                _ => errs.push(
                    origin,
                    format!("value.{version}"),
                    format!("{value} is not a whole number in 0..={MAX_WEIGHT}"),
                ),
            }
        }
        if let Some((v, _)) = &split.mirror
            && !split.versions.contains_key(v)
        {
            errs.push(
                origin,
                "value.mirror.version",
                format!("{v:?} is not one of the versions weighed here"),
            );
        }
        if errs.is_empty() { Ok(split) } else { Err(errs) }
    }

    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    fn to_value(&self) -> serde_json::Value {
        let mut m: serde_json::Map<String, serde_json::Value> = self
            .versions
            .iter()
            .map(|(v, w)| (v.clone(), (*w).into()))
            .collect();
        if let Some((version, percent)) = &self.mirror {
            m.insert(
                "mirror".into(),
                serde_json::json!({"version": version, "percent": percent}),
            );
        }
        serde_json::Value::Object(m)
    }

    /// Sets this over `service`: its weights, and the mirror share (over the service's own
    /// mirror settings, or the defaults).
    pub fn apply(&self, service: &mut crate::Service) {
        service.versions = self.versions.clone();
        if let Some((version, percent)) = &self.mirror {
            let mut m = service
                .mirror
                .clone()
                .unwrap_or_else(|| Mirror::share(version, *percent));
            m.version = version.clone();
            m.percent = *percent;
            service.mirror = Some(m);
        }
    }
}

impl Serialize for Split {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_reads_weights_and_a_mirror_and_writes_them_back() {
        let s = Split::from_json(
            br#"{"v1": 100, "v2": 0, "mirror": {"version": "v2", "percent": 50}}"#,
            "etcd",
        )
        .unwrap();
        assert_eq!(s.versions, BTreeMap::from([("v1".into(), 100), ("v2".into(), 0)]));
        assert_eq!(s.mirror, Some(("v2".into(), 50)));
        assert_eq!(Split::from_json(s.to_json().as_bytes(), "etcd").unwrap(), s);
        // A version named mirror is a weight.
        let w = Split::from_json(br#"{"mirror": 5, "v1": 95}"#, "etcd").unwrap();
        assert_eq!((w.versions["mirror"], w.mirror), (5, None));
        for (bad, field) in [
            (
                r#"{"v1": 100, "mirror": {"version": "v2", "percent": 50}}"#,
                "value.mirror.version",
            ),
            (
                r#"{"v1": 100, "v2": 0, "mirror": {"version": "v2", "percent": 0}}"#,
                "value.mirror.percent",
            ),
            (r#"{"v1": 100, "mirror": {"version": "v1"}}"#, "value.mirror"),
            (r#"{"v1": -1}"#, "value.v1"),
        ] {
            let e = Split::from_json(bad.as_bytes(), "etcd key /gantry/weights/web")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(field) && e.contains("/gantry/weights/web"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_mirror_names_one_of_the_versions_and_has_sane_bounds() {
        let versions = BTreeMap::from([("v1".to_string(), 90), ("v2".to_string(), 10)]);
        let mut errs = Errors::new();
        let m = validate_mirror(
            FileMirror {
                version: Some("v2".into()),
                percent: Some(20),
                ..Default::default()
            },
            &versions,
            "gantry.toml",
            "services.web.mirror",
            &mut errs,
        )
        .unwrap();
        assert_eq!(
            (m.percent, m.max_body, m.non_idempotent),
            (20, DEFAULT_MAX_BODY, false)
        );
        let bad = FileMirror {
            version: Some("v3".into()),
            percent: Some(101),
            max_in_flight: Some(0),
            ..Default::default()
        };
        assert!(validate_mirror(bad, &versions, "gantry.toml", "services.web.mirror", &mut errs).is_none());
        let e = errs.to_string();
        for f in ["mirror.version", "mirror.percent", "mirror.max_in_flight"] {
            assert!(e.contains(f), "{f}: {e}");
        }
    }
}
