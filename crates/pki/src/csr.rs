//! Certificate signing requests (PKCS#10) as the certificates API takes them: parsing with the
//! signature check the API server makes, and signing by the cluster CA with the policy of
//! upstream's local signer (`pkg/controller/certificates/authority`): the subject and SANs of
//! the request, the approved usages, no other extension, not a CA, backdated five minutes.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::CertKey;

const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
const COMMON_NAME: &[u64] = &[2, 5, 4, 3];

const RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const EC: &[u64] = &[1, 2, 840, 10045, 2, 1];
const P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const P384: &[u64] = &[1, 3, 132, 0, 34];
const ED25519: &[u64] = &[1, 3, 101, 112];

/// A parsed request whose signature checked out.
#[derive(Debug, Clone)]
pub struct Request {
    /// Subject attributes (type OID, value) in the request's order.
    pub subject: Vec<(Vec<u64>, String)>,
    /// The subject as the request encodes it (DER), which the certificate carries.
    subject_der: Vec<u8>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
    pub is_rsa: bool,
    key: RequestKey,
}

/// The requester's public key, as rcgen writes it into the certificate.
#[derive(Debug, Clone)]
struct RequestKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl Request {
    pub fn common_name(&self) -> &str {
        self.values(COMMON_NAME).next().unwrap_or("")
    }

    pub fn organizations(&self) -> Vec<&str> {
        self.values(ORGANIZATION).collect()
    }

    fn values<'a>(&'a self, oid: &'a [u64]) -> impl Iterator<Item = &'a str> {
        self.subject
            .iter()
            .filter(move |(t, _)| t == oid)
            .map(|(_, v)| v.as_str())
    }
}

fn oid_of(oid: &x509_parser::der_parser::oid::Oid) -> Vec<u64> {
    oid.iter().map(Iterator::collect).unwrap_or_default()
}

/// Upstream's `ParseCSR` then `CheckSignature`: the first PEM block must be a `CERTIFICATE
/// REQUEST` whose signature verifies with its own key. The error reads as upstream's.
pub fn parse(pem: &[u8]) -> Result<Request, String> {
    let block = match x509_parser::pem::parse_x509_pem(pem) {
        Ok((_, block)) if block.label == "CERTIFICATE REQUEST" => block,
        _ => return Err("PEM block type must be CERTIFICATE REQUEST".into()),
    };
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
    let info = &csr.certification_request_info;
    let mut subject = Vec::new();
    for rdn in info.subject.iter() {
        for attr in rdn.iter() {
            let value = attr
                .as_str()
                .map_err(|_| "x509: invalid subject attribute".to_string())?;
            subject.push((oid_of(attr.attr_type()), value.to_string()));
        }
    }
    let (mut dns_names, mut ip_addresses, mut emails, mut uris) = (vec![], vec![], vec![], vec![]);
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ip_addresses.extend(<[u8; 4]>::try_from(*b).ok().map(IpAddr::from)),
                        16 => ip_addresses.extend(<[u8; 16]>::try_from(*b).ok().map(IpAddr::from)),
                        _ => return Err("x509: invalid IP address in subjectAltName".into()),
                    },
                    _ => {}
                }
            }
        }
    }
    let spki = &info.subject_pki;
    let key_alg = oid_of(&spki.algorithm.algorithm);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| x509_parser::der_parser::oid::Oid::try_from(p).ok())
        .map(|o| oid_of(&o));
    let alg: &'static SignatureAlgorithm = match (key_alg.as_slice(), curve.as_deref()) {
        (RSA, _) => &rcgen::PKCS_RSA_SHA256,
        (EC, Some(P256)) => &rcgen::PKCS_ECDSA_P256_SHA256,
        (EC, Some(P384)) => &rcgen::PKCS_ECDSA_P384_SHA384,
        (ED25519, _) => &rcgen::PKCS_ED25519,
        _ => return Err("x509: unsupported public key algorithm".into()),
    };
    // Go's messages for a signature that does not verify.
    csr.verify_signature().map_err(|_| match alg {
        a if a == &rcgen::PKCS_RSA_SHA256 => "crypto/rsa: verification error".to_string(),
        a if a == &rcgen::PKCS_ED25519 => "x509: Ed25519 verification failure".to_string(),
        _ => "x509: ECDSA verification failure".to_string(),
    })?;
    Ok(Request {
        subject,
        subject_der: info.subject.as_raw().to_vec(),
        dns_names,
        ip_addresses,
        emails,
        uris,
        is_rsa: key_alg == RSA,
        key: RequestKey {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
        },
    })
}

/// Upstream's check of `status.certificate`: one or more `CERTIFICATE` PEM blocks, each
/// holding a certificate that parses.
pub fn check_certificates(pem: &[u8]) -> Result<(), String> {
    let mut blocks = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {:?}",
                block.label
            ));
        }
        x509_parser::parse_x509_certificate(&block.contents).map_err(|e| format!("x509: {e}"))?;
        blocks += 1;
    }
    if blocks == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    Ok(())
}

/// The usages of the certificates API (`spec.usages` values) as key usages and extended key
/// usages, extended ones in Go's order; unknown values are refused as upstream does.
pub fn key_usages(
    usages: &[String],
) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), String> {
    use ExtendedKeyUsagePurpose as E;
    use KeyUsagePurpose as K;
    let mut ku: Vec<K> = Vec::new();
    // (Go's ExtKeyUsage number, usage) so the list sorts as upstream's.
    let mut eku: Vec<(u8, E)> = Vec::new();
    let mut unknown = Vec::new();
    for u in usages {
        let k = match u.as_str() {
            "signing" | "digital signature" => Some(K::DigitalSignature),
            "content commitment" => Some(K::ContentCommitment),
            "key encipherment" => Some(K::KeyEncipherment),
            "key agreement" => Some(K::KeyAgreement),
            "data encipherment" => Some(K::DataEncipherment),
            "cert sign" => Some(K::KeyCertSign),
            "crl sign" => Some(K::CrlSign),
            "encipher only" => Some(K::EncipherOnly),
            "decipher only" => Some(K::DecipherOnly),
            _ => None,
        };
        let e = match u.as_str() {
            "any" => Some((0, E::Any)),
            "server auth" => Some((1, E::ServerAuth)),
            "client auth" => Some((2, E::ClientAuth)),
            "code signing" => Some((3, E::CodeSigning)),
            "email protection" | "s/mime" => Some((4, E::EmailProtection)),
            "ipsec end system" => Some((5, E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5]))),
            "ipsec tunnel" => Some((6, E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]))),
            "ipsec user" => Some((7, E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7]))),
            "timestamping" => Some((8, E::TimeStamping)),
            "ocsp signing" => Some((9, E::OcspSigning)),
            "microsoft sgc" => Some((10, E::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3]))),
            "netscape sgc" => Some((11, E::Other(vec![2, 16, 840, 1, 113730, 4, 1]))),
            _ => None,
        };
        match (k, e) {
            (Some(k), _) if !ku.contains(&k) => ku.push(k),
            (Some(_), _) => {}
            (None, Some(e)) if !eku.iter().any(|(n, _)| *n == e.0) => eku.push(e),
            (None, Some(_)) => {}
            (None, None) => unknown.push(format!("{u:?}")),
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unrecognized usage values: [{}]",
            unknown.join(" ")
        ));
    }
    eku.sort_by_key(|(n, _)| *n);
    Ok((ku, eku.into_iter().map(|(_, e)| e).collect()))
}

/// How far back a certificate's validity starts, and below which lifetime its end is not
/// moved back too (upstream's signer: 5 minutes, 8 hours).
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const SHORT: Duration = Duration::from_secs(8 * 3600);

/// Signs `req` with `ca` for `usages` and lifetime `ttl`; returns the certificate PEM.
pub fn sign(
    ca: &CertKey,
    req: &Request,
    usages: &[String],
    ttl: Duration,
) -> Result<String, String> {
    let (key_usages, extended) = key_usages(usages)?;
    let ca_not_after = {
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes())
            .map_err(|e| format!("parsing the CA certificate: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("parsing the CA certificate: {e}"))?;
        cert.validity().not_after.to_datetime()
    };
    let now = time::OffsetDateTime::now_utc();
    let ttl = time::Duration::try_from(ttl).map_err(|e| e.to_string())?;
    let backdate = time::Duration::try_from(BACKDATE).map_err(|e| e.to_string())?;
    let not_before = now - backdate;
    let mut not_after = if ttl < SHORT {
        now + ttl
    } else {
        now + ttl - backdate
    };
    if not_after >= ca_not_after {
        not_after = ca_not_after;
    }
    if not_before >= ca_not_after {
        return Err(format!("the signer has expired: NotAfter={ca_not_after}"));
    }
    if now >= ca_not_after {
        return Err(format!(
            "refusing to sign a certificate that expired in the past: NotAfter={ca_not_after}"
        ));
    }

    let mut params = CertificateParams::default();
    // A stand-in subject: rcgen holds one value per attribute type, so the request's own
    // subject (two organizations are two groups) is put in place after signing.
    if !req.subject.is_empty() {
        params
            .distinguished_name
            .push(DnType::CommonName, req.common_name());
    }
    params.subject_alt_names = sans_of(req)?;
    params.key_usages = key_usages;
    params.extended_key_usages = extended;
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    // A random positive 128-bit serial, as upstream's.
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));

    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| format!("loading the CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, &ca_key)
        .map_err(|e| format!("loading the CA certificate: {e}"))?;
    let cert = params
        .signed_by(&req.key, &issuer)
        .map_err(|e| format!("failed to sign certificate: {e}"))?;
    let der = with_subject(cert.der(), &req.subject_der, &ca_key)?;
    Ok(pem_encode("CERTIFICATE", &der))
}

/// Puts `subject` (a DER Name) in place of the subject of certificate `cert` and signs the
/// result again with `key`, the key that signed `cert`.
fn with_subject(cert: &[u8], subject: &[u8], key: &KeyPair) -> Result<Vec<u8>, String> {
    let malformed = || "failed to sign certificate: unexpected certificate layout".to_string();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| malformed())?;
    let tbs = parsed.tbs_certificate.as_ref();
    let old = parsed.tbs_certificate.subject.as_raw();
    // Offsets of the slices the parser returned within `cert`.
    let offset = |part: &[u8]| (part.as_ptr() as usize).checked_sub(cert.as_ptr() as usize);
    let (tbs_at, old_at) = offset(tbs).zip(offset(old)).ok_or_else(malformed)?;
    let tbs_content_at = tbs_at + header_len(tbs).ok_or_else(malformed)?;
    let old_end = old_at + old.len();
    let tbs_end = tbs_at + tbs.len();
    if !(tbs_content_at <= old_at && old_end <= tbs_end) {
        return Err(malformed());
    }
    let content = [
        &cert[tbs_content_at..old_at],
        subject,
        &cert[old_end..tbs_end],
    ]
    .concat();
    let new_tbs = der(0x30, &content);
    // The signature algorithm follows the TBS certificate.
    let algorithm = cert
        .get(tbs_end..)
        .and_then(|rest| rest.get(..element_len(rest)?))
        .ok_or_else(malformed)?;
    let signature = key
        .sign(&new_tbs)
        .map_err(|e| format!("failed to sign certificate: {e}"))?;
    let bits = der(0x03, &[&[0u8][..], &signature].concat());
    Ok(der(0x30, &[&new_tbs[..], algorithm, &bits].concat()))
}

/// The size of a DER element's tag and length octets.
fn header_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    Some(if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7f)
    })
}

/// The size of the DER element `der` starts with.
fn element_len(der: &[u8]) -> Option<usize> {
    let header = header_len(der)?;
    let len = match der.get(1)? {
        n if *n < 0x80 => usize::from(*n),
        _ => der.get(2..header)?.iter().try_fold(0usize, |acc, b| {
            acc.checked_mul(256)?.checked_add(usize::from(*b))
        })?,
    };
    header.checked_add(len)
}

/// A DER element of `tag` holding `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn sans_of(req: &Request) -> Result<Vec<SanType>, String> {
    let mut sans = Vec::new();
    let bad = |e: rcgen::Error| format!("invalid subjectAltName: {e}");
    for d in &req.dns_names {
        sans.push(SanType::DnsName(d.clone().try_into().map_err(bad)?));
    }
    for e in &req.emails {
        sans.push(SanType::Rfc822Name(e.clone().try_into().map_err(bad)?));
    }
    sans.extend(req.ip_addresses.iter().copied().map(SanType::IpAddress));
    for u in &req.uris {
        sans.push(SanType::URI(u.clone().try_into().map_err(bad)?));
    }
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::DistinguishedName;

    fn ca() -> CertKey {
        let dir = tempfile::tempdir().unwrap();
        crate::Pki::load_or_create(dir.path(), &[]).unwrap().ca
    }

    fn request(cn: &str, orgs: &[&str], sans: Vec<SanType>) -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, csr)
    }

    #[test]
    fn parses_subject_and_sans_and_refuses_other_pem() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let (_, pem) = request(
            "system:node:n1",
            &["system:nodes"],
            vec![
                SanType::DnsName("n1.example".try_into().unwrap()),
                SanType::IpAddress(ip),
            ],
        );
        let req = parse(pem.as_bytes()).unwrap();
        assert_eq!(req.common_name(), "system:node:n1");
        assert_eq!(req.organizations(), vec!["system:nodes"]);
        assert_eq!(req.dns_names, vec!["n1.example"]);
        assert_eq!(req.ip_addresses, vec![ip]);
        assert!(!req.is_rsa);
        let cert_pem = ca().cert_pem;
        assert_eq!(
            parse(cert_pem.as_bytes()).unwrap_err(),
            "PEM block type must be CERTIFICATE REQUEST"
        );
        assert!(parse(b"junk").is_err());
    }

    #[test]
    fn a_tampered_request_fails_its_signature_check() {
        let (_, pem) = request("jane", &["devs"], vec![]);
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents.clone();
        // Change one byte of the subject's common name ("jane" -> "jbne").
        let at = der.windows(4).position(|w| w == b"jane").unwrap();
        der[at + 1] = b'b';
        use base64::Engine;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let err = parse(tampered.as_bytes()).unwrap_err();
        assert!(err.contains("verification"), "{err}");
    }

    #[test]
    fn signs_with_subject_usages_and_bounded_validity() {
        let ca = ca();
        let (_, pem) = request("jane", &["devs"], vec![]);
        let req = parse(pem.as_bytes()).unwrap();
        let usages = vec!["digital signature".to_string(), "client auth".to_string()];
        let cert_pem = sign(&ca, &req, &usages, Duration::from_secs(3600)).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        let cert = block.parse_x509().unwrap();
        let user = crate::identity::user_from_cert(&block.contents).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, vec!["devs", "system:authenticated"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
        let v = cert.validity();
        let life = v.not_after.timestamp() - v.not_before.timestamp();
        // Short-lived: backdated 5 minutes, end not moved back.
        assert!((3600 + 300 - 5..=3600 + 300 + 5).contains(&life), "{life}");
        // Verifies against the CA.
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_block.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    /// A CSR whose subject names two organizations, which rcgen cannot write: built by hand.
    fn two_group_request() -> String {
        let key = KeyPair::generate().unwrap();
        let attr = |oid: &[u8], value: &str| {
            let pair = [der(0x06, oid), der(0x0c, value.as_bytes())].concat();
            der(0x31, &der(0x30, &pair))
        };
        let name = [
            attr(&[0x55, 4, 10], "devs"),
            attr(&[0x55, 4, 10], "ops"),
            attr(&[0x55, 4, 3], "jane"),
        ]
        .concat();
        let info = der(
            0x30,
            &[
                &[2, 1, 0][..],
                &der(0x30, &name),
                &key.subject_public_key_info(),
                &[0xa0, 0],
            ]
            .concat(),
        );
        let ecdsa_sha256 = der(0x30, &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2]));
        let signature = der(0x03, &[&[0u8][..], &key.sign(&info).unwrap()].concat());
        pem_encode(
            "CERTIFICATE REQUEST",
            &der(0x30, &[info, ecdsa_sha256, signature].concat()),
        )
    }

    #[test]
    fn the_certificate_carries_the_requests_whole_subject() {
        let ca = ca();
        let req = parse(two_group_request().as_bytes()).unwrap();
        assert_eq!(req.organizations(), vec!["devs", "ops"]);
        let cert_pem = sign(&ca, &req, &["client auth".into()], SHORT).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        let user = crate::identity::user_from_cert(&block.contents).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, vec!["devs", "ops", "system:authenticated"]);
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_block.parse_x509().unwrap();
        let cert = block.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn unknown_usages_are_refused() {
        let err = key_usages(&["client auth".into(), "bogus".into()]).unwrap_err();
        assert_eq!(err, "unrecognized usage values: [\"bogus\"]");
        let (_, pem) = request("jane", &[], vec![]);
        let req = parse(pem.as_bytes()).unwrap();
        assert!(sign(&ca(), &req, &["bogus".into()], SHORT).is_err());
    }
}
