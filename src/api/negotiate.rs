//! What a FHIR request asks of the form of its answer: the media type and FHIR version
//! (`Accept`, `_format`; 406 for what the gateway does not serve), `Prefer` (`return=` and
//! `handling=`), the version preconditions (`If-Match`, `If-None-Match`) and `Last-Modified`.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::fhir::time::parse_instant;

/// Refuses with 406 a FHIR request for a media type other than FHIR JSON, or a FHIR version
/// other than R4 (`fhirVersion` 4.0).
pub async fn acceptable(req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/fhir")
        && let Err(e) = check_accept(req.headers(), req.uri().query().unwrap_or(""))
    {
        return e.into_response();
    }
    next.run(req).await
}

/// Refuses with 400 a request whose path or query, once percent-decoded, holds a character
/// FHIR forbids in every string (U+0000 and the other control characters but tab, CR and LF):
/// no search value, id or parameter can hold one, and PostgreSQL cannot bind U+0000 as text.
pub async fn forbidden_characters(req: Request, next: Next) -> Response {
    for (part, text) in [
        ("path", req.uri().path()),
        ("query", req.uri().query().unwrap_or("")),
    ] {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(text).collect();
        if let Some(b) = crate::fhir::forbidden_character(&decoded) {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!(
                    "the request's {part} holds {}",
                    crate::fhir::describe_forbidden(b)
                ),
            )
            .at(part)
            .into_response();
        }
    }
    next.run(req).await
}

fn not_acceptable(what: String) -> ApiError {
    ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "not-supported",
        format!("{what}: the gateway serves FHIR R4 (4.0) as application/fhir+json only"),
    )
}

fn check_accept(headers: &HeaderMap, query: &str) -> Result<(), ApiError> {
    for (k, v) in url_pairs(query) {
        if k == "_format" && !json_format(&v) {
            return Err(not_acceptable(format!("_format={v}")).at("_format"));
        }
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ranges: Vec<&str> = accept
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        if !ranges.is_empty() && !ranges.iter().any(|r| media_range_ok(r)) {
            return Err(not_acceptable(format!("Accept: {accept}")));
        }
    }
    for name in [header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok())
            && !fhir_version_ok(v)
        {
            return Err(not_acceptable(format!("{name}: {v}")));
        }
    }
    Ok(())
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let d = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect()
}

fn json_format(v: &str) -> bool {
    let mime = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        mime.as_str(),
        "json" | "application/json" | "application/fhir+json"
    ) && fhir_version_ok(v)
}

/// One media range of `Accept`: FHIR JSON, JSON or a wildcard, with no other fhirVersion.
fn media_range_ok(range: &str) -> bool {
    let mime = range
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        mime.as_str(),
        "application/fhir+json"
            | "application/json"
            | "*/*"
            | "application/*"
            | "text/*"
            | "text/plain"
            | "text/event-stream"
    ) && fhir_version_ok(range)
}

/// No `fhirVersion` parameter, or 4.0 / 4.0.1.
fn fhir_version_ok(value: &str) -> bool {
    value
        .split(';')
        .skip(1)
        .all(|p| match p.trim().split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("fhirVersion") => {
                matches!(v.trim().trim_matches('"'), "4.0" | "4.0.1")
            }
            _ => true,
        })
}

/// `Prefer: return=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

fn prefer<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().trim_matches('"'))
}

pub fn prefer_return(headers: &HeaderMap) -> Return {
    match prefer(headers, "return") {
        Some("minimal") => Return::Minimal,
        Some("OperationOutcome") => Return::OperationOutcome,
        _ => Return::Representation,
    }
}

/// `Prefer: handling=strict`: unknown search parameters are an error (lenient by default).
pub fn strict(headers: &HeaderMap) -> bool {
    prefer(headers, "handling") == Some("strict")
}

/// The version an ETag names: `W/"3"` or `"3"`.
fn etag_version(v: &str) -> Option<i64> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// `If-Match` of an update: the version it names (400 when it is not an ETag).
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(v)) => etag_version(v).map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "value",
                "If-Match takes the ETag of a version, W/\"<versionId>\"",
            )
        }),
        Some(Err(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "value",
            "If-Match is not readable",
        )),
    }
}

/// True when `If-None-Match` names the current version (or `*`): the answer is 304.
pub fn not_modified(headers: &HeaderMap, version: i64) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                let t = t.trim();
                // A bare versionId is read too (fhirpy's refresh sends one).
                t == "*" || etag_version(t).or_else(|| t.parse().ok()) == Some(version)
            })
        })
}

/// A 304 with the version's ETag.
pub fn not_modified_response(version: i64) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    set_version(&mut resp, version, None);
    resp
}

/// `ETag` and, for a FHIR instant, `Last-Modified` (an HTTP date).
pub fn set_version(resp: &mut Response, version: i64, last_updated: Option<&str>) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Some(date) = last_updated.and_then(http_date)
        && let Ok(v) = HeaderValue::from_str(&date)
    {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// A FHIR instant as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(instant: &str) -> Option<String> {
    let t = parse_instant(instant)?.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&fmt).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_versions_and_etags() {
        assert!(media_range_ok("application/fhir+json; fhirVersion=4.0"));
        assert!(!media_range_ok("application/fhir+json; fhirVersion=3.0"));
        assert!(!media_range_ok("application/fhir+xml"));
        assert!(json_format("json") && !json_format("xml"));
        assert_eq!(etag_version("W/\"3\""), Some(3));
        assert_eq!(etag_version("\"12\""), Some(12));
        assert_eq!(etag_version("3"), None);
        assert_eq!(
            http_date("2024-03-05T10:11:12.345Z").as_deref(),
            Some("Tue, 05 Mar 2024 10:11:12 GMT")
        );
    }
}
