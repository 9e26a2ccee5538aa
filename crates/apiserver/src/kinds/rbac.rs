//! RBAC objects: names need only be valid path segments; bindings require an immutable
//! `roleRef`. Bindings show their role, everything else its creation time.

use serde_json::{Value, json};

use super::{KindBehaviour, NameCheck};
use crate::admission::validation::{immutable, str_at};
use crate::registry::Resource;
use crate::status::Cause;
use crate::table::{AGE, Columns, N, age, created_at_columns, name, s};

/// Roles, ClusterRoles and any other resource of the group.
pub struct RbacObjects;

impl KindBehaviour for RbacObjects {
    fn name_check(&self) -> Option<NameCheck> {
        Some(path_segment_name)
    }

    fn columns(&self) -> Option<Columns> {
        Some(created_at_columns())
    }
}

/// RoleBindings and ClusterRoleBindings.
pub struct RoleBindings;

impl KindBehaviour for RoleBindings {
    fn name_check(&self) -> Option<NameCheck> {
        Some(path_segment_name)
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, out: &mut Vec<Cause>) {
        if str_at(obj, "/roleRef/name").unwrap_or("").is_empty() {
            out.push(Cause::required("roleRef.name"));
        }
        if let Some(old) = old {
            immutable(obj, old, "/roleRef", "roleRef", out);
        }
    }

    fn columns(&self) -> Option<Columns> {
        let columns: Columns = {
            (vec![N, ("Role", "string", 0), AGE], |v| {
                vec![
                    name(v),
                    json!(format!(
                        "{}/{}",
                        s(v, "/roleRef/kind"),
                        s(v, "/roleRef/name")
                    )),
                    age(v),
                ]
            })
        };
        Some(columns)
    }
}

fn path_segment_name(name: &str) -> Option<String> {
    (name.contains('/') || name.contains('%') || name == "." || name == "..")
        .then(|| "may not contain '/' or '%'".into())
}
