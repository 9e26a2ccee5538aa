//! CertificateSigningRequests: the `spec.signerName` field selector.

use super::KindBehaviour;

pub struct CertificateSigningRequests;

impl KindBehaviour for CertificateSigningRequests {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.signerName"]
    }
}
