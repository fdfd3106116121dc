//! The `capstan.dev/*` annotations that give an Ingress route the HTTPRoute filters, for users
//! leaving ingress-nginx: the same names where ingress-nginx has one, its meaning where the two
//! agree, and an error where it relies on nginx (regex captures in `rewrite-target`).
//!
//! | Capstan key | HTTPRoute filter | ingress-nginx |
//! |---|---|---|
//! | `rewrite-target: /new` | `URLRewrite` `ReplacePrefixMatch` | `rewrite-target` without captures |
//! | `rewrite-full-path: /x` | `URLRewrite` `ReplaceFullPath` | `rewrite-target` on an Exact path |
//! | `permanent-redirect: URL` (+ `permanent-redirect-code`) | `RequestRedirect` 301 | same names |
//! | `temporal-redirect: URL` | `RequestRedirect` 302 | same name |
//! | `request-headers-set` / `-add`, one `Name: value` per line; `request-headers-remove: a,b` | `RequestHeaderModifier` | `proxy-set-headers` |
//! | `response-headers-set` / `-add` / `-remove` | `ResponseHeaderModifier` | `custom-headers` / `more_set_headers` |
//! | `request-timeout: 30s` | `timeouts.request` | `proxy-read-timeout` |

use capstan_table::{HeaderEdits, PathModifier, RouteFilters};
use http::{HeaderName, HeaderValue};

use super::{Keys, duration, get, number};

/// The route's filters and request timeout.
pub(super) fn route_filters(
    pairs: Keys<'_>,
) -> Result<(RouteFilters, Option<std::time::Duration>), String> {
    let mut filters = RouteFilters::default();
    if let Some(target) = get(pairs, "rewrite-target") {
        if target.contains('$') {
            return Err(format!(
                "rewrite-target: {target:?} uses regex captures, which need nginx; use a prefix (capstan.dev/rewrite-target: /new) or an HTTPRoute"
            ));
        }
        filters.rewrite = Some(PathModifier::ReplacePrefixMatch(path(
            target,
            "rewrite-target",
        )?));
    }
    if let Some(full) = get(pairs, "rewrite-full-path") {
        if filters.rewrite.is_some() {
            return Err("rewrite-target and rewrite-full-path exclude each other".into());
        }
        filters.rewrite = Some(PathModifier::ReplaceFullPath(path(
            full,
            "rewrite-full-path",
        )?));
    }
    let permanent = get(pairs, "permanent-redirect").map(|url| {
        let code = get(pairs, "permanent-redirect-code")
            .map(|c| number(c, "permanent-redirect-code", 300..=308))
            .transpose()?;
        Ok::<_, String>((code.unwrap_or(301), url))
    });
    let temporal = get(pairs, "temporal-redirect").map(|url| Ok((302, url)));
    if let Some(redirect) = permanent.or(temporal) {
        let (code, url) = redirect?;
        if HeaderValue::from_str(url).is_err() || !url.contains("://") {
            return Err(format!("redirect: {url:?} is not an absolute URL"));
        }
        filters.redirect = Some((code, url.into()));
    }
    filters.request_headers = edits(pairs, "request-headers")?;
    filters.response_headers = edits(pairs, "response-headers")?;
    let timeout = get(pairs, "request-timeout")
        .map(|v| duration(v, "request-timeout"))
        .transpose()?;
    Ok((filters, timeout))
}

fn path(value: &str, key: &str) -> Result<Box<str>, String> {
    if value.starts_with('/') || value.is_empty() {
        Ok(value.into())
    } else {
        Err(format!("{key}: {value:?} must start with /"))
    }
}

/// `PREFIX-set`, `PREFIX-add` (one `Name: value` per line) and `PREFIX-remove` (names, comma
/// separated).
fn edits(pairs: Keys<'_>, prefix: &str) -> Result<HeaderEdits, String> {
    let name = |n: &str, key: &str| {
        HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{key}: {n:?} is not a header name"))
    };
    let lines = |key: String| -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let Some(text) = get(pairs, &key) else {
            return Ok(vec![]);
        };
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|line| {
                let (n, v) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{key}: {line:?} is not \"Name: value\""))?;
                let value = HeaderValue::from_str(v.trim())
                    .map_err(|_| format!("{key}: the value of {n:?} is not a header value"))?;
                Ok((name(n, &key)?, value))
            })
            .collect()
    };
    let remove_key = format!("{prefix}-remove");
    let remove = get(pairs, &remove_key)
        .map(|v| {
            v.split(',')
                .filter(|n| !n.trim().is_empty())
                .map(|n| name(n, &remove_key))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(HeaderEdits {
        set: lines(format!("{prefix}-set"))?,
        add: lines(format!("{prefix}-add"))?,
        remove,
    })
}
