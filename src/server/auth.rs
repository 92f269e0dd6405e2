//! Bearer-token authentication: each token names a tenant, compared in constant time.

use crate::domain::Tenant;
use sha2::{Digest, Sha256};
use std::fmt;
use tonic::{Request, Status};

/// The configured tokens, kept only as SHA-256 digests.
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants: Vec<&str> = self.entries.iter().map(|(t, _)| t.as_str()).collect();
        write!(f, "Tokens(tenants {tenants:?}, tokens <redacted>)")
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `tenant:token` entries, comma- or newline-separated. Errors never show a token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, entry) in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .enumerate()
        {
            let (tenant, token) = entry
                .split_once(':')
                .ok_or_else(|| format!("entry {}: expected tenant:token", i + 1))?;
            let valid_tenant = !tenant.is_empty()
                && tenant.len() <= 64
                && tenant
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_tenant {
                return Err(format!(
                    "entry {}: a tenant is 1 to 64 letters, digits, '_' or '-'",
                    i + 1
                ));
            }
            if token.len() < 16 {
                return Err(format!(
                    "tenant {tenant}: a token needs at least 16 characters"
                ));
            }
            let digest = digest(token);
            // One token for two tenants would silently belong to the last of them.
            if let Some((other, _)) = entries.iter().find(|(_, d)| *d == digest) {
                return Err(format!(
                    "tenant {tenant}: its token is also the token of tenant {other}; give each tenant its own"
                ));
            }
            entries.push((tenant.to_string(), digest));
        }
        if entries.is_empty() {
            return Err("no token is given".into());
        }
        Ok(Self { entries })
    }

    /// The tenant of `token`. Every entry is compared, each in constant time, so the time
    /// taken says nothing about which token or how much of it matched.
    pub fn tenant_of(&self, token: &str) -> Option<Tenant> {
        let offered = digest(token);
        let mut found = None;
        for (tenant, expected) in &self.entries {
            let difference = expected
                .iter()
                .zip(offered.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(Tenant(tenant.clone()));
            }
        }
        found
    }

    /// Checks a request's `authorization: Bearer <token>` and records its tenant.
    pub fn authenticate(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        let tenant = self
            .tenant_of(token.trim())
            .ok_or_else(|| Status::unauthenticated("the token is not valid"))?;
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants_and_never_show() {
        let tokens = Tokens::parse("shop-a:aaaaaaaaaaaaaaaa1, shop-b:bbbbbbbbbbbbbbbb2").unwrap();
        assert_eq!(
            tokens.tenant_of("aaaaaaaaaaaaaaaa1"),
            Some(Tenant("shop-a".into()))
        );
        assert_eq!(
            tokens.tenant_of("bbbbbbbbbbbbbbbb2"),
            Some(Tenant("shop-b".into()))
        );
        assert_eq!(tokens.tenant_of("aaaaaaaaaaaaaaaa"), None);
        assert!(!format!("{tokens:?}").contains("aaaa"));
        let shared =
            Tokens::parse("shop-a:same-token-0123456789,shop-b:same-token-0123456789").unwrap_err();
        assert!(
            shared.contains("shop-a") && shared.contains("shop-b"),
            "{shared}"
        );
        assert!(!shared.contains("same-token"), "{shared}");
        for bad in ["", "notenant", "a b:0123456789abcdef", "x:short"] {
            let error = Tokens::parse(bad).unwrap_err();
            assert!(!error.contains("0123456789abcdef"), "{error}");
        }
    }

    #[test]
    fn requests_need_a_valid_bearer_token() {
        let tokens = Tokens::parse("t1:0123456789abcdef").unwrap();
        let request = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(value) = value {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            request
        };
        let code = |r: Result<Request<()>, Status>| r.map(|_| ()).map_err(|s| s.code());
        assert_eq!(
            code(tokens.authenticate(request(None))),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(tokens.authenticate(request(Some("Bearer nope")))),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(tokens.authenticate(request(Some("0123456789abcdef")))),
            Err(tonic::Code::Unauthenticated)
        );
        let ok = tokens
            .authenticate(request(Some("Bearer 0123456789abcdef")))
            .unwrap();
        assert_eq!(ok.extensions().get::<Tenant>(), Some(&Tenant("t1".into())));
    }
}
