//! The aggregation layer: API groups that an `apiregistration.k8s.io/v1` APIService delegates
//! to a Service are proxied there (after authentication and authorization here).

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};

use super::Api;
use super::auth::UserInfo;
use super::request::ApiPath;
use super::status::ApiError;

/// Where a delegated group/version is served.
pub struct Target {}

/// The delegated target of a request's path, if an APIService other than a local one serves it.
pub fn target(_api: &Api, _path: Option<&ApiPath>) -> Option<Target> {
    None
}

/// Proxies a request to its APIService's server.
pub async fn proxy(
    _api: &Arc<Api>,
    _target: Target,
    _user: &UserInfo,
    _parts: http::request::Parts,
    _body: Body,
) -> Response {
    ApiError::path_not_found().into_response()
}
