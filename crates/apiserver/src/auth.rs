//! Authentication: client certificates (CN = user, O = groups) and bearer tokens
//! (service-account JWTs signed by the cluster's key, as TokenRequest issues them).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use kinglet_pki::identity::{UserInfo, user_from_cert};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Vec<String>,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(default)]
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub k8s: K8sClaims,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct K8sClaims {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<Ref>,
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// Signs and verifies service-account tokens.
pub struct TokenSigner {
    pub issuer: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenSigner {
    pub fn new(key_pem: &str, issuer: String) -> anyhow::Result<TokenSigner> {
        let kp = rcgen::KeyPair::from_pem(key_pem)?;
        let encoding = EncodingKey::from_ec_pem(key_pem.as_bytes())?;
        let decoding = DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes())?;
        Ok(TokenSigner {
            issuer,
            encoding,
            decoding,
        })
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token's signature, issuer, time and (if `audiences` is non-empty) audience.
    pub fn verify(&self, token: &str, audiences: &[String]) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[&self.issuer]);
        if audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(audiences);
        }
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// The identity of a verified service-account token.
pub fn user_from_claims(c: &Claims) -> UserInfo {
    let ns = &c.k8s.namespace;
    let mut extra = BTreeMap::new();
    if let Some(p) = &c.k8s.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec![p.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            vec![p.uid.clone()],
        );
    }
    if !c.jti.is_empty() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", c.jti)],
        );
    }
    UserInfo {
        name: format!("system:serviceaccount:{ns}:{}", c.k8s.serviceaccount.name),
        uid: c.k8s.serviceaccount.uid.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra,
    }
}

/// Shared authentication state.
pub struct Authenticator {
    pub signer: Arc<TokenSigner>,
    /// The API audience tokens must name (the issuer, as upstream defaults).
    pub api_audiences: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Bumped whenever an object a token can be bound to (ServiceAccount, Pod, Secret) is
    /// deleted: every cached answer from before is asked again.
    generation: AtomicU64,
}

struct Cached {
    user: Arc<UserInfo>,
    until: Instant,
    generation: u64,
}

/// How long a verified token's identity is reused, as upstream's token cache (10 s).
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 4096;

impl Authenticator {
    pub fn new(signer: Arc<TokenSigner>, api_audiences: Vec<String>) -> Authenticator {
        Authenticator {
            signer,
            api_audiences,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The identity a token verified as within the last 10 s, unless a binding object went since.
    pub fn cached(&self, token: &str) -> Option<Arc<UserInfo>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache.get(&Self::key(token))?;
        (c.until > Instant::now() && c.generation == self.generation.load(Ordering::Acquire))
            .then(|| c.user.clone())
    }

    /// The generation to pass to `remember`, read before the token is verified: a delete
    /// during the verification then voids the answer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Remembers a verified token's identity, no longer than the token is valid (`exp`).
    pub fn remember(&self, token: &str, user: Arc<UserInfo>, exp: i64, generation: u64) {
        let left = exp - chrono::Utc::now().timestamp();
        if left <= 0 {
            return;
        }
        let ttl = CACHE_TTL.min(Duration::from_secs(left as u64));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            Self::key(token),
            Cached {
                user,
                until: Instant::now() + ttl,
                generation,
            },
        );
    }

    /// Called after a delete: tokens bound to a ServiceAccount, Pod or Secret die with it.
    pub fn object_deleted(&self, group: &str, plural: &str) {
        if group.is_empty() && matches!(plural, "serviceaccounts" | "pods" | "secrets") {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}
