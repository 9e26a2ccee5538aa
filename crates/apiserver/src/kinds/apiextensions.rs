//! CustomResourceDefinitions: their admission (names, conversion defaults and structural
//! checks, in `crd`) and a creation-time column, which any other resource of the group shows too.

use futures::future::BoxFuture;
use serde_json::Value;

use super::KindBehaviour;
use crate::Api;
use crate::registry::Resource;
use crate::status::ApiResult;
use crate::table::{Columns, created_at_columns};

pub struct CustomResourceDefinitions;

impl KindBehaviour for CustomResourceDefinitions {
    fn admit<'a>(
        &'a self,
        _api: &'a Api,
        _res: &'a Resource,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(crate::crd::admit_crd(obj, old)))
    }

    fn columns(&self) -> Option<Columns> {
        Some(created_at_columns())
    }
}

/// Any other resource of the group.
pub struct ApiExtensionsObjects;

impl KindBehaviour for ApiExtensionsObjects {
    fn columns(&self) -> Option<Columns> {
        Some(created_at_columns())
    }
}
