//! The `basic_auth` middleware: users and bcrypt hashes, inline or from an htpasswd file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::Errors;

/// HTTP basic authentication against bcrypt hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BasicAuth {
    pub realm: String,
    /// User -> bcrypt hash. Never shown: the admin API lists the user names only.
    #[serde(serialize_with = "user_names")]
    pub users: BTreeMap<String, String>,
    /// Remove `Authorization` before forwarding (default true).
    pub remove_header: bool,
    /// Send the authenticated user's name upstream in this header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_header: Option<String>,
}

fn user_names<S: Serializer>(users: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(users.keys())
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBasicAuth {
    /// `user:bcrypt-hash` entries, as `htpasswd -nbB user password` prints them.
    pub users: Option<Vec<String>>,
    /// An htpasswd file (bcrypt entries), relative to the config file; config file only.
    pub users_file: Option<String>,
    pub realm: Option<String>,
    pub remove_header: Option<bool>,
    pub user_header: Option<String>,
}

pub(super) fn validate_basic_auth(
    b: FileBasicAuth,
    origin: &str,
    field: &str,
    read: crate::file::ReadFile<'_>,
    errs: &mut Errors,
) -> BasicAuth {
    let before = errs.0.len();
    let mut users = BTreeMap::new();
    let mut entries: Vec<(String, String)> = b
        .users
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, e)| (format!("{field}.users[{i}]"), e))
        .collect();
    if let Some(path) = &b.users_file {
        let f = format!("{field}.users_file");
        match read(path).map(String::from_utf8) {
            Ok(Ok(text)) => entries.extend(
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .map(|(n, l)| (format!("{f} ({path} line {})", n + 1), l.to_string())),
            ),
            Ok(Err(_)) => errs.push(origin, &f, format!("{path} is not UTF-8 text")),
            Err(e) => errs.push(origin, &f, e),
        }
    }
    for (f, entry) in entries {
        let Some((user, hash)) = entry.trim().split_once(':') else {
            errs.push(
                origin,
                &f,
                "expected user:bcrypt-hash (as `htpasswd -nbB user password` prints)",
            );
            continue;
        };
        let bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| hash.starts_with(p));
        if user.is_empty() {
            errs.push(origin, &f, "empty user name");
        } else if !bcrypt {
            // Named without echoing the hash or password.
            let what = if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
                "an MD5 hash"
            } else if hash.starts_with("{SHA}") {
                "a SHA-1 hash"
            } else {
                "not a bcrypt hash (plaintext or crypt)"
            };
            errs.push(
                origin,
                &f,
                format!("user {user:?}: {what}; only bcrypt is accepted (htpasswd -B)"),
            );
        } else if users.insert(user.to_string(), hash.to_string()).is_some() {
            errs.push(origin, &f, format!("user {user:?} is listed twice"));
        }
    }
    if users.is_empty() && errs.0.len() == before {
        errs.push(
            origin,
            format!("{field}.users"),
            "no users: nobody could get through",
        );
    }
    let realm = b.realm.unwrap_or_else(|| "gantry".into());
    if realm.contains('"') || http::HeaderValue::from_str(&realm).is_err() {
        errs.push(
            origin,
            format!("{field}.realm"),
            format!("{realm:?} cannot be quoted in a header"),
        );
    }
    if let Some(h) = &b.user_header
        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        errs.push(
            origin,
            format!("{field}.user_header"),
            format!("{h:?} is not a header name"),
        );
    }
    BasicAuth {
        realm,
        users,
        remove_header: b.remove_header.unwrap_or(true),
        user_header: b.user_header.map(|h| h.to_ascii_lowercase()),
    }
}
