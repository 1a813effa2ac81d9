//! Client authentication at the WebSocket handshake: JWTs (HS256 with a shared secret; RS256 or
//! ES256 with a PEM public key or keys from a JWKS), or `?user=` in dev mode.
//!
//! Owns turning request credentials into an `Identity`, and the reverse for operators (`mint`,
//! behind `shardcast token`). It must not touch connections or shards; session policy is decided
//! by the user's home shard, not here.

pub mod jwks;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::core::Name;
use crate::core::error::{ErrorCode, HandshakeError, ReplyError};
use crate::core::name::is_valid_name;
use crate::core::rights::{Grant, Grants, Pattern, Rights};
use jwks::{Jwks, Key};

/// Who a connection belongs to, as its credentials said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Name,
    /// The token's `rooms` claim: what the user may do in which rooms (its plain names are
    /// joined at connect). `None`: no claim, every right in every room.
    pub rooms: Option<Grants>,
    /// The token's `exp`, unix seconds.
    pub exp: Option<u64>,
    /// What other members see of the user in presence: a JSON object the connect hook gave,
    /// at most `max_presence_info_bytes`. `None`: nothing.
    pub info: Option<bytes::Bytes>,
}

/// A token's claims, as read at the handshake and written by [`mint`]. `aud`, `iss` and `nbf`
/// are checked by `jsonwebtoken` and not kept.
#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<RoomClaim>>,
}

/// One entry of a `rooms` claim: a room name (joined at connect, every right), or a room or
/// `prefix*` pattern with the rights it grants.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RoomClaim {
    Name(String),
    Grant { room: String, rights: Vec<String> },
}

/// An HS256 token for `identity` (its user as `sub`, and its `rooms` and `exp` if set), signed
/// with `secret`: what `shardcast token` prints, and what [`Authenticator`] accepts.
pub fn mint(secret: &str, identity: &Identity) -> String {
    let claims = Claims {
        sub: identity.user.to_string(),
        exp: identity.exp,
        rooms: identity
            .rooms
            .as_ref()
            .map(|g| g.iter().map(claim_of).collect()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of a serializable struct cannot fail")
}

/// Why the configured keys could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read jwt_public_key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "jwt_public_key {path} is not a PEM RSA or P-256 EC public key (-----BEGIN PUBLIC KEY-----)"
    )]
    Pem { path: std::path::PathBuf },
    #[error(transparent)]
    Jwks(#[from] jwks::JwksError),
}

/// The keys that verify client tokens, and the claims every token must carry.
struct Keys {
    /// HS256.
    secret: Option<DecodingKey>,
    /// RS256 or ES256, from `jwt_public_key`.
    public: Option<Key>,
    jwks: Option<Jwks>,
    audience: Option<String>,
    issuer: Option<String>,
    /// `require_exp`: a token must carry `exp`.
    require_exp: bool,
}

/// Checks handshake credentials; cheap to clone (every shard holds one). No keys means dev mode.
#[derive(Clone)]
pub struct Authenticator {
    keys: Option<Arc<Keys>>,
}

impl Authenticator {
    /// Loads the keys `config` names: reads `jwt_public_key`, and starts the JWKS fetcher
    /// (waiting for its first fetch).
    pub fn new(config: &Config) -> Result<Authenticator, KeyError> {
        if config.dev_mode() {
            return Ok(Authenticator { keys: None });
        }
        let public = match &config.jwt_public_key {
            None => None,
            Some(path) => Some(read_public_key(path)?),
        };
        let jwks = match &config.jwks_url {
            None => None,
            Some(url) => Some(Jwks::start(
                url.clone(),
                Duration::from_secs(config.jwks_refresh_secs),
                config.jwks_ca_file.as_deref(),
            )?),
        };
        let keys = Keys {
            secret: config
                .jwt_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            jwks,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            require_exp: config.require_exp,
        };
        Ok(Authenticator {
            keys: Some(Arc::new(keys)),
        })
    }

    /// `query` is the request's query string; `bearer` the `Authorization: Bearer` token if any.
    pub fn authenticate(
        &self,
        query: Option<&str>,
        bearer: Option<&str>,
        max_rooms: usize,
    ) -> Result<Identity, HandshakeError> {
        let unauthorized = |m: &str| HandshakeError::Unauthorized(m.to_owned());
        let param = |name: &str| query.and_then(|q| query_param(q, name));
        let Some(keys) = &self.keys else {
            let user = param("user").ok_or_else(|| {
                unauthorized("dev mode: pass ?user=ID (no JWT key is configured)")
            })?;
            let user =
                Name::new(&user).map_err(|_| unauthorized("?user is not a valid user id"))?;
            return Ok(Identity {
                user,
                rooms: None,
                exp: None,
                info: None,
            });
        };
        let token = param("token")
            .or_else(|| bearer.map(str::to_owned))
            .ok_or_else(|| unauthorized("missing token: pass ?token= or Authorization: Bearer"))?;
        let claims = keys.verify(&token)?;
        identity(claims, max_rooms)
    }

    /// The identity of a token sent in a `connect` frame (`first_frame_auth`).
    pub fn verify_token(&self, token: &str, max_rooms: usize) -> Result<Identity, HandshakeError> {
        let keys = self.keys.as_ref().ok_or_else(|| {
            HandshakeError::Unauthorized("dev mode takes ?user=, not tokens".into())
        })?;
        identity(keys.verify(token)?, max_rooms)
    }

    /// The request carries credentials: `?token=`, `?user=` or a bearer token.
    pub fn has_credentials(query: Option<&str>, bearer: Option<&str>) -> bool {
        bearer.is_some()
            || query.is_some_and(|q| {
                query_param(q, "token").is_some() || query_param(q, "user").is_some()
            })
    }
}

impl Authenticator {
    /// Checks a `refresh` token for a connection of `user`: it must verify like a handshake
    /// token and name the same `sub`. Returns what it says: the connection's new expiry
    /// (`exp`) and the rooms it now allows (`rooms`).
    pub fn refresh(
        &self,
        user: &Name,
        token: &str,
        max_rooms: usize,
    ) -> Result<Identity, ReplyError> {
        let refused = |m: String| ReplyError::new(ErrorCode::Unauthorized, m);
        let keys = self.keys.as_ref().ok_or_else(|| {
            ReplyError::new(ErrorCode::BadRequest, "dev mode has no tokens to refresh")
        })?;
        let claims = keys.verify(token).map_err(|e| refused(e.to_string()))?;
        if claims.sub != **user {
            return Err(refused(format!(
                "the token is for another user; this connection is {user}"
            )));
        }
        identity(claims, max_rooms).map_err(|e| refused(e.to_string()))
    }
}

impl Keys {
    /// The token's claims, if a configured key for its header's `alg` (and `kid`) verifies it
    /// and its registered claims hold. The algorithm comes from the key, never from the token
    /// alone: an HS256 token is only ever checked against `jwt_secret`, so one "signed" with a
    /// public key's bytes fails, and `alg: none` is not an algorithm `jsonwebtoken` parses.
    fn verify(&self, token: &str) -> Result<Claims, HandshakeError> {
        let unauthorized = |m: String| HandshakeError::Unauthorized(m);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
        let (alg, key) = match header.alg {
            Algorithm::HS256 => {
                let secret = self.secret.as_ref().ok_or_else(|| {
                    unauthorized(
                        "HS256 tokens are not accepted: no jwt_secret is configured".into(),
                    )
                })?;
                (Algorithm::HS256, secret.clone())
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let from_jwks = match (&self.jwks, &header.kid) {
                    (Some(jwks), Some(kid)) => Some(jwks.get(kid).ok_or_else(|| {
                        unauthorized(format!("no key with kid {kid:.64} in the JWKS"))
                    })?),
                    _ => None,
                };
                from_jwks
                    .or_else(|| self.public.clone())
                    .filter(|(key_alg, _)| *key_alg == alg)
                    .ok_or_else(|| unauthorized(format!("no {alg:?} key is configured")))?
            }
            other => {
                return Err(unauthorized(format!(
                    "{other:?} tokens are not accepted; use HS256, RS256 or ES256"
                )));
            }
        };
        let mut v = Validation::new(alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::from(["sub".to_owned()]);
        if self.require_exp {
            v.required_spec_claims.insert("exp".to_owned());
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".to_owned());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".to_owned());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => HandshakeError::TokenExpired(
                jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
                    .ok()
                    .and_then(|d| d.claims.exp)
                    .unwrap_or(0),
            ),
            ErrorKind::InvalidSignature => unauthorized("token signature does not verify".into()),
            ErrorKind::ImmatureSignature => unauthorized("token is not valid yet (nbf)".into()),
            ErrorKind::InvalidAudience => unauthorized("token aud is not this server's".into()),
            ErrorKind::InvalidIssuer => {
                unauthorized("token iss is not the configured issuer".into())
            }
            ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => unauthorized(
                "the token has no exp claim, and this server requires one (require_exp): \
                 issue tokens that expire"
                    .into(),
            ),
            _ => unauthorized(format!("invalid token: {e}")),
        })?;
        Ok(data.claims)
    }
}

/// Reads a PEM public key: RSA (RS256) or P-256 EC (ES256).
fn read_public_key(path: &std::path::Path) -> Result<Key, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    DecodingKey::from_ec_pem(&pem)
        .map(|key| (Algorithm::ES256, key))
        .map_err(|_| KeyError::Pem {
            path: path.to_owned(),
        })
}

/// The identity a verified token's claims name.
fn identity(claims: Claims, max_rooms: usize) -> Result<Identity, HandshakeError> {
    let unauthorized = |m: &str| HandshakeError::Unauthorized(m.to_owned());
    if !is_valid_name(claims.sub.as_bytes()) {
        return Err(unauthorized("token sub is not a valid user id"));
    }
    let rooms = match claims.rooms {
        None => None,
        Some(rooms) if rooms.len() > max_rooms => {
            return Err(unauthorized(
                "token rooms claim lists more rooms than allowed",
            ));
        }
        Some(rooms) => {
            let mut grants: Vec<Grant> = Vec::with_capacity(rooms.len());
            for room in rooms {
                let grant = grant_of(room).map_err(|m| unauthorized(&m))?;
                if !grants.contains(&grant) {
                    grants.push(grant);
                }
            }
            Some(Grants::new(grants))
        }
    };
    Ok(Identity {
        user: Name::new(&claims.sub).expect("validated above"),
        rooms,
        exp: claims.exp,
        info: None,
    })
}

/// A `rooms` claim given as JSON (a connect hook's answer) as grants, read as a token's.
pub fn grants_of_json(rooms: &str, max_rooms: usize) -> Result<Grants, String> {
    let claims: Vec<RoomClaim> = serde_json::from_str(rooms)
        .map_err(|e| format!("rooms is not a list of rooms or {{room, rights}}: {e}"))?;
    if claims.len() > max_rooms {
        return Err("rooms lists more rooms than allowed".into());
    }
    let mut grants: Vec<Grant> = Vec::with_capacity(claims.len());
    for claim in claims {
        let grant = grant_of(claim)?;
        if !grants.contains(&grant) {
            grants.push(grant);
        }
    }
    Ok(Grants::new(grants))
}

/// An identity's `rooms` as a token would carry them, as JSON (`null`: no claim).
pub fn rooms_json(identity: &Identity) -> String {
    let claims: Option<Vec<RoomClaim>> =
        (identity.rooms.as_ref()).map(|g| g.iter().map(claim_of).collect());
    serde_json::to_string(&claims).expect("claims serialize")
}

/// A claim entry as a grant. A pattern is a room name, or a name's start followed by `*` (`*`
/// alone: every room).
fn grant_of(claim: RoomClaim) -> Result<Grant, String> {
    let invalid = |what: &str| format!("token rooms claim has {what}");
    match claim {
        RoomClaim::Name(room) => Ok(Grant {
            pattern: Pattern::Room(Name::new(&room).map_err(|_| invalid("an invalid room name"))?),
            rights: Rights::ALL,
            join_at_connect: true,
        }),
        RoomClaim::Grant { room, rights } => {
            let pattern = match room.strip_suffix('*') {
                Some(prefix) if prefix.is_empty() || is_valid_name(prefix.as_bytes()) => {
                    Pattern::Prefix(prefix.into())
                }
                Some(_) => return Err(invalid("an invalid room pattern")),
                None => {
                    Pattern::Room(Name::new(&room).map_err(|_| invalid("an invalid room name"))?)
                }
            };
            let mut granted = Rights::NONE;
            for right in &rights {
                let right = Rights::named(right).ok_or_else(|| {
                    invalid(&format!(
                        "an unknown right {right:?} (rights are join, publish, presence, history)"
                    ))
                })?;
                granted = granted.with(right);
            }
            Ok(Grant {
                pattern,
                rights: granted,
                join_at_connect: false,
            })
        }
    }
}

/// A grant as a claim entry: a plain name when it is one (every right, joined at connect).
fn claim_of(grant: &Grant) -> RoomClaim {
    match &grant.pattern {
        Pattern::Room(room) if grant.join_at_connect && grant.rights == Rights::ALL => {
            RoomClaim::Name(room.to_string())
        }
        pattern => RoomClaim::Grant {
            room: match pattern {
                Pattern::Room(room) => room.to_string(),
                Pattern::Prefix(prefix) => format!("{prefix}*"),
            },
            rights: grant.rights.names().map(String::from).collect(),
        },
    }
}

/// The percent-decoded value of `name` in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rights::{Grant, Grants, Pattern, Rights};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(secret: &str) -> Authenticator {
        Authenticator::new(&Config {
            jwt_secret: Some(secret.into()),
            ..Config::default()
        })
        .unwrap()
    }

    #[test]
    fn dev_mode_takes_user_param() {
        let a = Authenticator::new(&Config::default()).unwrap();
        let id = a.authenticate(Some("x=1&user=al%40ice"), None, 10).unwrap();
        assert_eq!(&*id.user, "al@ice");
        assert!(a.authenticate(None, None, 10).is_err());
        assert!(a.authenticate(Some("user=a%20b"), None, 10).is_err());
    }

    #[test]
    fn jwt_claims_are_checked() {
        let a = hs("s3cret");
        let later = now() + 60;
        let t = token(
            json!({"sub":"bob","exp":later,"rooms":["r1","r2","r1"]}),
            "s3cret",
        );
        let id = a
            .authenticate(Some(&format!("token={t}")), None, 10)
            .unwrap();
        assert_eq!(&*id.user, "bob");
        assert_eq!(id.rooms.unwrap().len(), 2);
        let id = a.authenticate(None, Some(&t), 10).unwrap();
        assert_eq!(&*id.user, "bob");

        let bad = token(json!({"sub":"bob"}), "other");
        assert!(matches!(
            a.authenticate(Some(&format!("token={bad}")), None, 10),
            Err(HandshakeError::Unauthorized(_))
        ));
        let expired = token(json!({"sub":"bob","exp":now() - 5}), "s3cret");
        assert!(matches!(
            a.authenticate(None, Some(&expired), 10),
            Err(HandshakeError::TokenExpired(_))
        ));
        let live = token(json!({"sub":"bob","exp":now() + 60}), "s3cret");
        assert!(a.authenticate(None, Some(&live), 10).is_ok());
        assert!(a.authenticate(Some("user=bob"), None, 10).is_err());
        let bad_sub = token(json!({"sub":"no spaces","exp":later}), "s3cret");
        assert!(a.authenticate(None, Some(&bad_sub), 10).is_err());
        let too_many = token(
            json!({"sub":"b","exp":later,"rooms":["a","b","c"]}),
            "s3cret",
        );
        assert!(a.authenticate(None, Some(&too_many), 2).is_err());
        // require_exp (the default): a token without exp is refused, saying why.
        let forever = token(json!({"sub":"bob"}), "s3cret");
        let err = a.authenticate(None, Some(&forever), 10).unwrap_err();
        assert!(err.to_string().contains("require_exp"), "{err}");
        let relaxed = Authenticator::new(&Config {
            jwt_secret: Some("s3cret".into()),
            require_exp: false,
            ..Config::default()
        })
        .unwrap();
        assert!(relaxed.authenticate(None, Some(&forever), 10).is_ok());
    }

    #[test]
    fn minted_tokens_authenticate_as_their_identity() {
        let a = hs("s3cret");
        let id = Identity {
            user: Name::new("bob").unwrap(),
            rooms: Some(Grants::new(vec![
                Grant {
                    pattern: Pattern::Room(Name::new("r1").unwrap()),
                    rights: Rights::ALL,
                    join_at_connect: true,
                },
                Grant {
                    pattern: Pattern::Prefix("live:".into()),
                    rights: Rights::JOIN.with(Rights::PRESENCE),
                    join_at_connect: false,
                },
            ])),
            exp: Some(now() + 60),
            info: None,
        };
        let t = mint("s3cret", &id);
        assert_eq!(a.authenticate(None, Some(&t), 10).unwrap(), id);
        let bare = Identity { rooms: None, ..id };
        let t = mint("s3cret", &bare);
        assert_eq!(a.authenticate(None, Some(&t), 10).unwrap(), bare);
        let other = hs("other");
        assert!(other.authenticate(None, Some(&t), 10).is_err());
    }
}
