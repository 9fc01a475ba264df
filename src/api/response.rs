//! FHIR responses: a JSON body with the FHIR media type.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::fhir::FHIR_JSON;

/// A FHIR JSON response.
pub fn fhir_response(status: StatusCode, body: &Value) -> Response {
    fhir_text_response(status, body.to_string())
}

/// A FHIR JSON response of a body already written as JSON text.
pub fn fhir_text_response(status: StatusCode, json: String) -> Response {
    let mut resp = (status, json).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}
