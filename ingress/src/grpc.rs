//! gRPC requests answered by Capstan itself (no route, no backend, no endpoint, upstream
//! failures): a gRPC client reads its status from `grpc-status`, not from the HTTP status, so
//! those answers go out as *Trailers-Only* responses (HTTP 200, `content-type:
//! application/grpc`, `grpc-status` and `grpc-message` in the one HEADERS frame), with the code
//! the gRPC project maps each HTTP status to (`doc/http-grpc-status-mapping.md`), as Envoy does
//! for its local replies. Metrics and the access log keep the HTTP status of the fault.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// gRPC status codes (`grpc/doc/statuscodes.md`).
const UNKNOWN: u8 = 2;
const PERMISSION_DENIED: u8 = 7;
const UNIMPLEMENTED: u8 = 12;
const INTERNAL: u8 = 13;
const UNAVAILABLE: u8 = 14;
const UNAUTHENTICATED: u8 = 16;

/// Whether the request is gRPC (`content-type: application/grpc`, `application/grpc+proto`...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The gRPC code for an HTTP status (`doc/http-grpc-status-mapping.md`).
pub(crate) fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// Capstan's own error answer to a gRPC request, as a Trailers-Only response. Answers from
/// upstreams, and Capstan's answers below 400, pass unchanged.
pub(crate) fn local_reply(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let Some(text) = response.body_mut().take_local() else {
        return response;
    };
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(code_for(status))),
    );
    // `grpc-message` is percent-encoded: Capstan's texts are printable ASCII without `%`.
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let headers = |value: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            map
        };
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(is_grpc(&headers("application/grpc;charset=utf-8")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    /// `doc/http-grpc-status-mapping.md` of grpc/grpc.
    #[test]
    fn http_status_to_grpc_code_as_grpc_maps_it() {
        let code = |s: u16| code_for(StatusCode::from_u16(s).expect("status"));
        assert_eq!(code(400), INTERNAL);
        assert_eq!(code(401), UNAUTHENTICATED);
        assert_eq!(code(403), PERMISSION_DENIED);
        assert_eq!(code(404), UNIMPLEMENTED);
        for unavailable in [429, 502, 503, 504] {
            assert_eq!(code(unavailable), UNAVAILABLE);
        }
        assert_eq!(code(500), UNKNOWN);
    }

    #[test]
    fn a_local_404_becomes_trailers_only_unimplemented() {
        let mut response = Response::new(ResponseBody::full("no route\n", None));
        *response.status_mut() = StatusCode::NOT_FOUND;
        let response = local_reply(response);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "12");
        assert_eq!(response.headers()["grpc-message"], "no route");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert!(http_body::Body::is_end_stream(response.body()));
    }
}
