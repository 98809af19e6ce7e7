//! Property tests: every parser of operator input gives a value or an error that names where
//! it came from, for any input; none panics. Bounded cases, so they run in CI.

use proptest::prelude::*;

use crate::compact::compact_route;
use crate::file::load;
use crate::rollout::RolloutSpec;
use crate::rule;

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that looks like what operators write: TOML, rules, routes, with a few wrong bytes.
fn config_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z\\[\\]\\.=\" \n0-9/:,_{}*-]{0,200}",
        prop::collection::vec(
            prop_oneof![
                Just("[routers.r]\n".to_string()),
                Just("[services.s]\n".to_string()),
                Just("[entrypoints.web]\n".to_string()),
                Just("service = \"s\"\n".to_string()),
                Just("hosts = [\"a.test\"]\n".to_string()),
                Just("path_prefix = \"/x\"\n".to_string()),
                Just("rule = \"Host(`a`) && PathPrefix(`/`)\"\n".to_string()),
                Just("backends = [{ url = \"http://10.0.0.1:80\" }]\n".to_string()),
                Just("trusted_ips = [\"10.0.0.0/8\"]\n".to_string()),
                Just("address = \"127.0.0.1:0\"\n".to_string()),
                Just("middlewares = [\"m\"]\n".to_string()),
                Just("[middlewares.m.headers]\n".to_string()),
                Just("[middlewares.m.rate_limit]\n".to_string()),
                Just("[middlewares.m.basic_auth]\n".to_string()),
                Just("[middlewares.m.ip_allow]\n".to_string()),
                Just("[middlewares.m.forward_auth]\naddress = \"http://a:1/\"\n".to_string()),
                Just("[middlewares.m.errors]\nstatus = [\"500-599\"]\nservice = \"s\"\n".to_string()),
                Just("[middlewares.m.headers.cors]\nallow_origins = [\"*\"]\n".to_string()),
                Just("request = { set = { X-A = \"1\" } }\n".to_string()),
                Just("average = 5\n".to_string()),
                Just("users = [\"u:$2y$04$abc\"]\n".to_string()),
                Just("allow = [\"10.0.0.0/8\"]\n".to_string()),
                Just("proxy_protocol = \"v2\"\n".to_string()),
                "[a-z_]{1,12} = \"[ -~]{0,20}\"\n",
                "[a-z_]{1,12} = [0-9-]{1,8}\n",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn config_files_never_panic_and_errors_name_the_file(text in config_like()) {
        if let Err(errs) = load(&text, "fuzz.toml") {
            prop_assert!(!errs.0.is_empty());
            for e in &errs.0 {
                prop_assert_eq!(&e.origin, "fuzz.toml", "{}", e);
                prop_assert!(!e.reason.is_empty());
            }
        }
    }

    #[test]
    fn compact_routes_never_panic(text in prop_oneof![any::<String>(), "(https?://)?[a-z0-9.*:\\[\\]-]{0,30}(/[ -~]{0,20})?"]) {
        match compact_route(&text) {
            Ok(r) => prop_assert!(!r.host.is_empty()),
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }

    #[test]
    fn rules_never_panic(text in prop_oneof![
        any::<String>(),
        "(Host|PathPrefix|Path|Method|Header|Query|Nope)\\(`[ -~]{0,12}`(, `[ -~]{0,8}`)?\\)( (&&|\\|\\|) (Host|PathPrefix)\\(`[a-z/]{0,8}`\\)){0,3}",
    ]) {
        if let Err(why) = rule::parse(&text) {
            prop_assert!(!why.is_empty());
        }
    }

    #[test]
    fn rollout_bodies_never_panic_and_errors_name_their_origin(body in prop_oneof![
        any::<Vec<u8>>(),
        "\\{(\"(stable|canary|steps|step_time|min_requests|max_error_rate|x)\": (\"[a-z0-9]{0,4}\"|[0-9-]{1,4}|\\[[0-9, ]{0,10}\\]|null), ?){0,6}\\}".prop_map(String::into_bytes),
    ]) {
        if let Err(errs) = RolloutSpec::from_json("svc", &body, "admin API") {
            for e in &errs.0 {
                prop_assert_eq!(&e.origin, "admin API", "{}", e);
            }
        }
    }
}
