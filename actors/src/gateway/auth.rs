//! Who calls the HTTP API: a customer or an operator, named by a bearer token (a JWT).
//!
//! By default the gateway checks tokens it can sign itself (HS256, with a random key kept 0600
//! under `<data-dir>/credentials/`); `commerce token customer <id>` and `commerce token
//! operator` mint them. A deployment with its own identity provider sets
//! `api.jwt_public_key_file` (the provider's RS256 public key, PEM) and, as it wishes,
//! `api.issuer` and `api.audience`: the provider's tokens then work as they are, with `sub` the
//! customer id and `"role": "operator"` for operators.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::settings::ApiSettings;
use crate::Settings;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Places, reads and cancels their own orders only.
    Customer(String),
    /// Every order, and the operator surfaces.
    Operator,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    #[default]
    Customer,
    Operator,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Role,
    exp: u64,
}

/// Why a request is not let in (401), or why the API cannot check tokens at all.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("API signing key {}: {why}", path.display())]
    Key { path: PathBuf, why: String },
}

/// How the gateway checks callers.
pub enum ApiAuth {
    /// Everyone is an operator (`auth = false`: benchmarks only).
    Open,
    Jwt {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
    },
}

impl ApiAuth {
    pub fn from_settings(settings: &Settings) -> Result<ApiAuth, AuthError> {
        if !settings.auth {
            return Ok(ApiAuth::Open);
        }
        let ApiSettings {
            jwt_public_key_file,
            issuer,
            audience,
        } = &settings.api;
        let (key, algorithm) = match jwt_public_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| key_error(path, e))?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| key_error(path, e))?;
                (key, Algorithm::RS256)
            }
            None => (
                DecodingKey::from_secret(&signing_key(&settings.data_dir)?),
                Algorithm::HS256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
        }
        validation.validate_aud = audience.is_some();
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
        }
        Ok(ApiAuth::Jwt {
            key: Box::new(key),
            validation: Box::new(validation),
        })
    }

    /// The caller of `request`.
    pub fn caller(&self, request: &HttpRequest) -> Result<Caller, AuthError> {
        let ApiAuth::Jwt { key, validation } = self else {
            return Ok(Caller::Operator);
        };
        let token = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token.trim(), key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        match claims.role {
            Role::Operator => Ok(Caller::Operator),
            Role::Customer if claims.sub.trim().is_empty() => {
                Err(AuthError::Invalid("empty subject".into()))
            }
            Role::Customer => Ok(Caller::Customer(claims.sub)),
        }
    }
}

/// Handlers take the [`Caller`] as an argument; a request without a valid token gets the 401
/// that says how to send one, before the handler runs. One that takes `Option<Caller>`
/// (`/health`) serves it as anyone instead.
impl actix_web::FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Caller, actix_web::Error>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let caller = match request.app_data::<actix_web::web::Data<ApiAuth>>() {
            Some(callers) => callers.caller(request),
            None => Err(AuthError::Invalid("the API checks no tokens".into())),
        };
        std::future::ready(caller.map_err(refusal))
    }
}

fn refusal(e: AuthError) -> actix_web::Error {
    use actix_web::http::StatusCode;
    let response = match &e {
        // The key's path and trouble are the operator's: logged under an incident.
        AuthError::Key { .. } => {
            let incident = super::incident::Incident::of("checking an API token", &e);
            actix_web::HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR).json(
                serde_json::json!({ "error": "tokens cannot be checked now", "incident": incident.id() }),
            )
        }
        AuthError::Missing | AuthError::Invalid(_) => {
            actix_web::HttpResponse::build(StatusCode::UNAUTHORIZED)
                .insert_header(("WWW-Authenticate", "Bearer"))
                .json(serde_json::json!({ "error": e.to_string() }))
        }
    };
    actix_web::error::InternalError::from_response(e, response).into()
}

/// A token for `caller`, valid for `ttl`, signed with the key under `data_dir`.
pub fn mint(data_dir: &Path, caller: &Caller, ttl: Duration) -> Result<String, AuthError> {
    let (sub, role) = match caller {
        Caller::Customer(id) => (id.clone(), Role::Customer),
        Caller::Operator => ("operator".to_string(), Role::Operator),
    };
    let claims = Claims {
        sub,
        role,
        exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
    };
    let key = EncodingKey::from_secret(&signing_key(data_dir)?);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// The API's signing key: 32 random bytes, made on first use and kept (hex, 0600).
fn signing_key(data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    let path = crate::access::credentials_dir(data_dir).join("api-signing.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return hex_decode(text.trim()).ok_or_else(|| AuthError::Key {
            path,
            why: "not 64 hex digits".into(),
        });
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| key_error(&path, e))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    crate::access::private_dir(&crate::access::credentials_dir(data_dir))
        .map_err(|e| key_error(&path, e))?;
    bus::auth::write_private(&path, hex.as_bytes()).map_err(|e| key_error(&path, e))?;
    // Two gateways starting at once: both use whichever file won.
    let text = std::fs::read_to_string(&path).map_err(|e| key_error(&path, e))?;
    hex_decode(text.trim()).ok_or_else(|| key_error(&path, "not 64 hex digits"))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn key_error(path: &Path, why: impl std::fmt::Display) -> AuthError {
    AuthError::Key {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> HttpRequest {
        let mut r = actix_web::test::TestRequest::default();
        if let Some(token) = token {
            r = r.insert_header(("Authorization", format!("Bearer {token}")));
        }
        r.to_http_request()
    }

    fn settings(dir: &Path) -> Settings {
        Settings {
            data_dir: dir.to_path_buf(),
            ..Settings::default()
        }
    }

    #[test]
    fn a_minted_token_names_its_caller_and_nothing_else_gets_in() {
        let dir = tempfile::tempdir().unwrap();
        let auth = ApiAuth::from_settings(&settings(dir.path())).unwrap();
        let alice = Caller::Customer("alice".into());
        let token = mint(dir.path(), &alice, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.caller(&request(Some(&token))).unwrap(), alice);
        let operator = mint(dir.path(), &Caller::Operator, Duration::from_secs(60)).unwrap();
        assert_eq!(
            auth.caller(&request(Some(&operator))).unwrap(),
            Caller::Operator
        );
        assert!(matches!(
            auth.caller(&request(None)),
            Err(AuthError::Missing)
        ));
        // Signed with another key (another data dir): refused.
        let other = tempfile::tempdir().unwrap();
        let forged = mint(other.path(), &Caller::Operator, Duration::from_secs(60)).unwrap();
        assert!(matches!(
            auth.caller(&request(Some(&forged))),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.caller(&request(Some("not.a.jwt"))),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn the_signing_key_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = signing_key(dir.path()).unwrap();
        assert_eq!(first, signing_key(dir.path()).unwrap());
        let path = dir.path().join("credentials/api-signing.key");
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
