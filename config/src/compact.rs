//! The compact route grammar, `[http://|https://]host[/path]`, shared by Docker labels
//! (`aliyun.routing.port_<port>`, `gantry.routing.port_<port>`), `gantry register --route` and the
//! fleet; and the name a compact route's service gets.

use crate::matcher::{check_path, parse_host_pattern};

/// One route of the compact grammar: `[http://|https://]host[/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRoute {
    pub host: String,
    pub path: Option<String>,
    /// Written as `https://`: plain HTTP is redirected.
    pub https: bool,
}

/// Parses one route of the compact grammar (`aliyun.routing.port_*`, `gantry register --route`).
pub fn compact_route(item: &str) -> Result<CompactRoute, String> {
    let (https, rest) = if let Some(r) = item.strip_prefix("https://") {
        (true, r)
    } else {
        (false, item.strip_prefix("http://").unwrap_or(item))
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let host = parse_host_pattern(host)?.to_string();
    let path = match path {
        Some("/") | None => None,
        Some(p) => {
            check_path(p)?;
            Some(p.trim_end_matches('/').to_string()).filter(|p| !p.is_empty())
        }
    };
    Ok(CompactRoute { host, path, https })
}
/// The service name of a compact route: its host and path, in the alphabet names allow.
pub fn route_service_name(host: &str, path: Option<&str>) -> String {
    let raw = match path {
        Some(p) => format!("{host}{p}"),
        None => host.to_string(),
    };
    raw.replace("*.", "wildcard.")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
