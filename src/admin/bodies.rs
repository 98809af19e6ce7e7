//! The admin API's request bodies, parsed without side effects: what a write asks for, or the
//! message of a 400 that says what was wrong and what was expected. (Rollout bodies are the
//! config crate's `RolloutSpec::from_json`.)

use std::collections::BTreeMap;

use gantry_config::MAX_WEIGHT;
use serde_json::Value;

/// `PUT /api/v1/services/<name>/weights`: `{"v1": 95, "v2": 5}`, whole numbers in
/// 0..=MAX_WEIGHT, at least one above zero.
pub fn weights(body: &[u8]) -> Result<BTreeMap<String, u32>, String> {
    let raw: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        format!("body: {e}; expected an object of version weights, e.g. {{\"v1\": 95, \"v2\": 5}}")
    })?;
    let mut weights = BTreeMap::new();
    for (v, w) in &raw {
        match w.as_u64() {
            Some(n) if n <= u64::from(MAX_WEIGHT) => {
                weights.insert(v.clone(), n as u32);
            }
            _ => {
                return Err(format!(
                    "weights.{v}: {w} is not a whole number in 0..={MAX_WEIGHT}"
                ));
            }
        }
    }
    if weights.values().all(|&w| w == 0) {
        return Err("weights: at least one version needs a weight above 0".into());
    }
    Ok(weights)
}

/// `POST /api/v1/services/<name>/drain`: `{"url": "http://host:port"}`; the URL as given, without
/// a trailing slash.
pub fn drain(body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Drain {
        url: String,
    }
    let d: Drain = serde_json::from_slice(body)
        .map_err(|e| format!("body: {e}; expected {{\"url\": \"http://host:port\"}}"))?;
    Ok(d.url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> ProptestConfig {
        ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Bodies that look like what a user or script would send, and some that do not.
    fn json_like() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (0u32..=20_000).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            "\"[ -~]{0,8}\"",
            Just("null".to_string()),
            Just("true".to_string()),
            Just("[1, 2]".to_string()),
            Just("{}".to_string()),
        ];
        prop_oneof![
            prop::collection::vec(("[a-z0-9.\"\\\\-]{0,6}", value), 0..5).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                format!("{{{}}}", fields.join(", ")).into_bytes()
            }),
            any::<Vec<u8>>(),
            "[ -~]{0,40}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(cases())]

        /// Any body gives weights or a message that names what was wrong; accepted weights are
        /// in range, not all zero, and exactly the object's fields.
        #[test]
        fn weight_bodies_never_panic_and_accepted_ones_are_valid(body in json_like()) {
            match weights(&body) {
                Ok(w) => {
                    prop_assert!(w.values().all(|&n| n <= MAX_WEIGHT));
                    prop_assert!(w.values().any(|&n| n > 0));
                    let raw: serde_json::Map<String, Value> = serde_json::from_slice(&body).unwrap();
                    prop_assert_eq!(raw.len(), w.len());
                }
                Err(e) => prop_assert!(e.starts_with("body: ") || e.starts_with("weights"), "{}", e),
            }
        }

        #[test]
        fn drain_bodies_never_panic(body in prop_oneof![
            json_like(),
            "[ -~]{0,30}".prop_map(|u| format!("{{\"url\": {u:?}}}").into_bytes()),
        ]) {
            match drain(&body) {
                Ok(url) => prop_assert!(!url.ends_with('/')),
                Err(e) => prop_assert!(e.starts_with("body: "), "{}", e),
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(
            weights(br#"{"v1": 95, "v2": 5}"#),
            Ok(BTreeMap::from([("v1".into(), 95), ("v2".into(), 5)]))
        );
        assert_eq!(
            weights(br#"{"v1": 0}"#).unwrap_err(),
            "weights: at least one version needs a weight above 0"
        );
        assert!(
            weights(br#"{"v1": -1}"#)
                .unwrap_err()
                .starts_with("weights.v1: -1 is not")
        );
        assert!(
            weights(br#"{"v1": 2.5}"#)
                .unwrap_err()
                .starts_with("weights.v1: 2.5 is not")
        );
        assert!(weights(b"[1]").unwrap_err().starts_with("body: "));
        assert_eq!(drain(br#"{"url": "http://a:80/"}"#), Ok("http://a:80".into()));
        assert!(
            drain(br#"{"url": "x", "extra": 1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
