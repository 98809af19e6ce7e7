//! Property tests: any Docker label map and any etcd key and value give routes or errors that
//! name their label or key; none panics, none is dropped in silence, and a bad one never takes
//! the good ones down. Bounded cases, so they run in CI.

use proptest::prelude::*;

use crate::docker::labels::{ContainerFacts, parse};
use crate::etcd::layout::{Entry, Layout};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "(aliyun|gantry)\\.routing\\.port_[0-9a-z]{0,6}",
        "aliyun\\.scale",
        "gantry\\.(version|weight|enable|middlewares|docker\\.network)",
        "gantry\\.scale\\.(min|max|target|utilization|window|burst_window|x)",
        "gantry\\.http\\.(routers|services|middlewares)\\.[a-z]{1,4}\\.[a-z._]{1,24}",
        "gantry\\.http\\.middlewares\\.[a-z]{1,4}\\.(headers\\.(request|response)\\.(set|add|remove)(\\.[A-Za-z-]{1,6})?|ip_allow\\.(allow|deny)|basic_auth\\.(users|realm|users_file)|rate_limit\\.(average|burst|key)|headers\\.cors\\.(allow_origins|allow_methods|allow_credentials|max_age)|forward_auth\\.(address|timeout|response_headers)|errors\\.(status|service|path|file)|redirect\\.(regex|replacement|scheme|permanent))",
        "[a-z.]{1,20}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(https?://)?[a-z0-9.*-]{0,15}(/[a-z/]{0,10})?(;[ a-z.]{0,10})?",
        "[0-9-]{0,6}",
        "(true|false|yes|)",
        "(Host|PathPrefix)\\(`[a-z.]{0,8}`\\)",
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_label_map_gives_routes_or_errors_that_name_a_label(
        labels in prop::collection::btree_map(label_key(), label_value(), 0..8)
    ) {
        let facts = ContainerFacts {
            id: "abc".into(),
            name: "fuzz-1".into(),
            labels: labels.clone(),
            ..Default::default()
        };
        let (decl, errs) = parse(&facts, true, None);
        for e in &errs.0 {
            prop_assert!(e.origin.contains("fuzz-1"), "{}", e);
            prop_assert!(e.field.starts_with("label "), "{}", e);
            prop_assert!(!e.reason.is_empty());
        }
        // A routing label is never dropped in silence: it routes or it is reported.
        for (k, v) in &labels {
            if k.contains(".routing.port_") && decl.routes.iter().all(|r| !v.to_ascii_lowercase().contains(&r.host)) {
                prop_assert!(
                    errs.0.iter().any(|e| e.field == format!("label {k}")),
                    "{k}={v:?} made no route and no report"
                );
            }
        }
    }

    #[test]
    fn any_etcd_key_and_value_gives_state_or_a_warning_that_names_the_key(
        entries in prop::collection::vec(
            (
                "/g/(routers|services|backends|weights|instances|middlewares|x)/[a-z]{0,4}(/[a-z0-9]{0,3})?",
                prop_oneof![
                    any::<Vec<u8>>(),
                    "\\{(\"(hosts|service|url|weight|version|path_prefix|policy)\": (\"[a-z0-9:/.]{0,12}\"|[0-9-]{1,6}|\\[\"[a-z.]{0,6}\"\\]), ?){0,4}\\}"
                        .prop_map(String::into_bytes),
                    "\\{\"(headers|ip_allow|basic_auth|rate_limit)\": \\{(\"(set|allow|deny|users|average|burst|key|request)\": (\"[a-z0-9:/.]{0,12}\"|[0-9-]{1,6}|\\[\"[a-z0-9./:]{0,8}\"\\]), ?){0,3}\\}\\}"
                        .prop_map(String::into_bytes),
                ],
            ),
            0..10,
        )
    ) {
        let mut l = Layout::new("/g/");
        for (rev, (key, value)) in (2..).zip(&entries) {
            let _ = l.apply([(key.as_str(), Some(Entry { value: value.clone(), mod_revision: rev }))]);
        }
        let state = l.desired();
        for e in &l.warnings().0 {
            prop_assert!(e.origin.starts_with("etcd key /g/"), "{}", e);
        }
        // Whatever was refused, what is there compiles into a table or names its problem.
        let names: Vec<String> = vec!["web".into()];
        let _ = gantry_config::RoutingTable::compile(&state, &names, &|_| "etcd".into());
    }
}
