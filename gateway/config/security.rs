//! Compile the security sections: consumers and their API keys, JWT issuers, forwarding headers, limit
//! policies, IP rules and route auth. Errors carry their YAML paths like the rest of `compile`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderName;

use super::context::{Compiler, Mode};
use super::schema::*;
use super::units::DurationOr;
use crate::edge::auth::{AuthRuntime, AuthSettings, RouteAuth};
use crate::edge::consumers::{
    generated_key_digest, key_digest, parse_digest_hex, Consumer, ConsumerTable, KeyDigest,
};
use crate::edge::ip_rules::{parse_network, IpRules};
use crate::edge::jwks::{JwksSource, JwksUrl};
use crate::edge::jwt::{
    family_of, key_from_pem, keys_from_jwks, parse_algorithm, IssuerSpec, JwtIssuer, JwtVerifier,
    KeyFamily, VerifyKey,
};
use crate::edge::limits::{counter_key, parse_rate, Gcra, LimitKey, LimitPolicy};

fn header_name(c: &mut Compiler, name: &str, path: String) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            c.error(path, format!("`{name}` is not a valid header name"));
            None
        }
    }
}

pub(super) fn compile_auth(
    c: &mut Compiler,
    consumers: &[ConsumerSection],
    auth: &AuthSection,
) -> AuthRuntime {
    let api_key_headers = auth
        .api_key
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, name)| header_name(c, name, format!("auth.api_key.headers[{i}]")))
        .collect();
    let consumer_header = header_name(
        c,
        &auth.forward.consumer_header,
        "auth.forward.consumer_header".into(),
    );
    let groups_header = header_name(
        c,
        &auth.forward.groups_header,
        "auth.forward.groups_header".into(),
    );
    let settings = AuthSettings {
        api_key_headers,
        api_key_query: auth.api_key.query_param.clone(),
        consumer_header: consumer_header.unwrap_or(HeaderName::from_static("x-consumer-id")),
        groups_header: groups_header.unwrap_or(HeaderName::from_static("x-consumer-groups")),
    };
    AuthRuntime {
        settings,
        consumers: compile_consumers(c, consumers),
        jwt: compile_issuers(c, &auth.jwt_issuers),
    }
}

fn compile_consumers(c: &mut Compiler, consumers: &[ConsumerSection]) -> ConsumerTable {
    let mut table = ConsumerTable::default();
    let mut names = HashSet::new();
    for (i, consumer) in consumers.iter().enumerate() {
        let path = format!("consumers[{i}]");
        if !names.insert(consumer.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!("duplicate consumer name `{}`", consumer.name),
            );
            continue;
        }
        let mut keys: Vec<KeyDigest> = Vec::new();
        for (j, key) in consumer.api_keys.iter().enumerate() {
            let kpath = format!("{path}.api_keys[{j}]");
            let digest = match (&key.sha256, &key.env) {
                (Some(hex), None) => parse_digest_hex(&hex.to_ascii_lowercase()).or_else(|| {
                    c.error(
                        format!("{kpath}.sha256"),
                        "must be 64 hex characters (the output of `gateway hash-key`)",
                    );
                    None
                }),
                (None, Some(env)) => match std::env::var(env) {
                    Ok(value) if !value.is_empty() => Some(key_digest(value.as_bytes())),
                    _ if key.generate_if_unset => {
                        (c.mode == Mode::Run).then(|| generated_key_digest(env))
                    }
                    _ => {
                        c.error(
                            format!("{kpath}.env"),
                            format!("environment variable {env} is not set"),
                        );
                        None
                    }
                },
                _ => {
                    c.error(kpath, "give `sha256: HEX` or `env: VARIABLE`, one of them");
                    None
                }
            };
            if let Some(digest) = digest {
                if table.contains_key_digest(&digest) || keys.contains(&digest) {
                    c.error(
                        format!("{path}.api_keys[{j}]"),
                        "this key already belongs to a consumer",
                    );
                } else {
                    keys.push(digest);
                }
            }
        }
        let groups: Vec<Arc<str>> = consumer
            .groups
            .iter()
            .map(|g| Arc::from(g.as_str()))
            .collect();
        let ai = crate::ai::routing::AiPolicy {
            allowed_models: consumer.ai.allowed_models.clone(),
            allowed_profiles: consumer.ai.allowed_profiles.clone(),
            system_prompt: None,
        };
        let built = Consumer {
            name: Arc::from(consumer.name.as_str()),
            groups_header: consumer.groups.join(","),
            groups,
            ai,
        };
        table.insert(Arc::new(built), &keys, &consumer.mtls_identities);
    }
    table
}

fn compile_issuers(c: &mut Compiler, issuers: &[JwtIssuerSection]) -> JwtVerifier {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, section) in issuers.iter().enumerate() {
        let path = format!("auth.jwt_issuers[{i}]");
        if !names.insert(section.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!("duplicate issuer name `{}`", section.name),
            );
            continue;
        }
        if let Some(issuer) = compile_issuer(c, section, &path) {
            out.push(Arc::new(issuer));
        }
    }
    if out.len() > 1 && out.iter().filter(|i| i.issuer.is_none()).count() > 1 {
        c.error(
            "auth.jwt_issuers",
            "with several issuers, all but one need `issuer:` to tell their tokens apart",
        );
    }
    JwtVerifier { issuers: out }
}

fn compile_issuer(c: &mut Compiler, section: &JwtIssuerSection, path: &str) -> Option<JwtIssuer> {
    let errors_before = c.errors.len();
    let mut algorithms = Vec::new();
    for (j, name) in section.algorithms.iter().enumerate() {
        match parse_algorithm(name) {
            Some(alg) => algorithms.push(alg),
            None => c.error(
                format!("{path}.algorithms[{j}]"),
                format!("`{name}` is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA"),
            ),
        }
    }
    if section.algorithms.is_empty() {
        c.error(
            format!("{path}.algorithms"),
            "pin at least one algorithm, e.g. `[RS256]`",
        );
    }
    let families: HashSet<KeyFamily> = algorithms.iter().map(|&a| family_of(a)).collect();
    let mut static_keys = Vec::new();
    let secret = match (&section.secret, &section.secret_file) {
        (Some(_), Some(_)) => {
            c.error(path.to_string(), "give `secret` or `secret_file`, not both");
            None
        }
        (Some(secret), None) => Some(secret.clone().into_bytes()),
        (None, Some(file)) => match std::fs::read(file) {
            Ok(bytes) => Some(trim_newline(bytes)),
            Err(e) => {
                c.error(
                    format!("{path}.secret_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        (None, None) => None,
    };
    if let Some(secret) = secret {
        if secret.len() < 32 {
            c.error(
                format!("{path}.secret"),
                "an HMAC secret needs at least 32 bytes",
            );
        }
        static_keys.push(VerifyKey {
            kid: None,
            family: KeyFamily::Hmac,
            key: jsonwebtoken::DecodingKey::from_secret(&secret),
        });
    }
    for (j, file) in section.public_key_files.iter().enumerate() {
        match std::fs::read(file)
            .map_err(|e| format!("cannot read {file}: {e}"))
            .and_then(|pem| key_from_pem(&pem))
        {
            Ok(key) => static_keys.push(key),
            Err(message) => c.error(format!("{path}.public_key_files[{j}]"), message),
        }
    }
    let jwks = match (&section.jwks_file, &section.jwks_url) {
        (Some(_), Some(_)) => {
            c.error(path.to_string(), "give `jwks_file` or `jwks_url`, not both");
            None
        }
        (Some(file), None) => Some(JwksSource::File(PathBuf::from(file))),
        (None, Some(url)) => match JwksUrl::parse(url) {
            Ok(url) => Some(JwksSource::Url(url)),
            Err(message) => {
                c.error(format!("{path}.jwks_url"), message);
                None
            }
        },
        (None, None) => None,
    };
    let initial_jwks = match &jwks {
        Some(JwksSource::File(file)) => match std::fs::read_to_string(file).map_err(|e| e.to_string()).and_then(|t| keys_from_jwks(&t)) {
            Ok(keys) => keys,
            Err(message) => {
                c.error(format!("{path}.jwks_file"), message);
                Vec::new()
            }
        },
        // A URL is fetched in the background; keys fetched by the previous generation serve meanwhile.
        Some(JwksSource::Url(url)) => c
            .previous
            .and_then(|rt| rt.auth.jwt.issuers.iter().find(|old| *old.name == *section.name))
            .filter(|old| matches!(&old.jwks, Some(JwksSource::Url(old_url)) if old_url.text == url.text))
            .map(|old| old.fetched.load().as_ref().clone())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if static_keys.is_empty() && jwks.is_none() {
        c.error(path.to_string(), "needs keys: `secret`/`secret_file` (HS*), `public_key_files`, `jwks_file` or `jwks_url`");
    }
    for family in &families {
        let has_static = static_keys.iter().any(|k| k.family == *family);
        if *family == KeyFamily::Hmac && !has_static && jwks.is_none() {
            c.error(
                format!("{path}.algorithms"),
                "HS* algorithms need `secret` or `secret_file`",
            );
        }
    }
    if c.errors.len() > errors_before {
        return None;
    }
    Some(JwtIssuer::new(IssuerSpec {
        name: section.name.clone(),
        issuer: section.issuer.clone(),
        audiences: section.audiences.clone(),
        algorithms,
        static_keys,
        initial_jwks,
        jwks,
        cache_ttl: section.jwks_cache_ttl.or_secs(600),
        min_refetch: section.jwks_min_refetch.or_secs(30),
        leeway: section.leeway.or_secs(30),
        consumer_claim: section.consumer_claim.clone(),
    }))
}

fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

pub(super) fn compile_limits(
    c: &mut Compiler,
    limits: &[LimitSection],
) -> HashMap<String, Arc<LimitPolicy>> {
    let mut out = HashMap::new();
    for (i, limit) in limits.iter().enumerate() {
        let path = format!("limits[{i}]");
        if out.contains_key(&limit.name) {
            c.error(
                format!("{path}.name"),
                format!("duplicate limit name `{}`", limit.name),
            );
            continue;
        }
        let rate = limit.rate.as_ref().and_then(|text| match parse_rate(text) {
            Ok((count, period)) => {
                let burst = limit.burst.unwrap_or(count);
                if burst == 0 {
                    c.error(format!("{path}.burst"), "must be at least 1");
                }
                Some(Gcra::new(count, period, burst))
            }
            Err(message) => {
                c.error(format!("{path}.rate"), message);
                None
            }
        });
        if limit.rate.is_none() && limit.burst.is_some() {
            c.error(format!("{path}.burst"), "only used with `rate`");
        }
        if limit.max_in_flight == Some(0) {
            c.error(format!("{path}.max_in_flight"), "must be at least 1");
        }
        if limit.rate.is_none() && limit.max_in_flight.is_none() {
            c.error(path.clone(), "give `rate`, `max_in_flight`, or both");
        }
        let key = match &limit.key {
            LimitKeySection::Consumer => LimitKey::Consumer,
            LimitKeySection::ClientIp => LimitKey::ClientIp,
            LimitKeySection::Route => LimitKey::Route,
            LimitKeySection::Header(name) => {
                match header_name(c, name, format!("{path}.key.header")) {
                    Some(name) => LimitKey::Header(name),
                    None => continue,
                }
            }
        };
        let seed = counter_key(0, limit.name.as_bytes());
        out.insert(
            limit.name.clone(),
            Arc::new(LimitPolicy {
                name: Arc::from(limit.name.as_str()),
                rate,
                max_in_flight: limit.max_in_flight,
                key,
                seed,
            }),
        );
    }
    out
}

pub(super) fn compile_ip_rules(c: &mut Compiler, rules: &IpRulesSection, path: &str) -> IpRules {
    let parse = |list: &[String], kind: &str, c: &mut Compiler| {
        list.iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                let parsed = parse_network(entry);
                if parsed.is_none() {
                    c.error(
                        format!("{path}.{kind}[{i}]"),
                        format!("`{entry}` is neither an IP address nor a CIDR"),
                    );
                }
                parsed
            })
            .collect()
    };
    let allow = parse(&rules.allow, "allow", c);
    let deny = parse(&rules.deny, "deny", c);
    IpRules::new(allow, deny)
}

pub(super) fn compile_route_auth(
    c: &mut Compiler,
    auth: &RouteAuthSection,
    path: &str,
    runtime: &AuthRuntime,
) -> RouteAuth {
    if auth.methods.is_empty() {
        c.error(
            format!("{path}.auth.methods"),
            "list at least one of `api_key`, `jwt`, `mtls` (or drop `auth` for anonymous access)",
        );
    }
    let has = |m: AuthMethodSection| auth.methods.contains(&m);
    if has(AuthMethodSection::Jwt) && runtime.jwt.issuers.is_empty() {
        c.error(
            format!("{path}.auth.methods"),
            "`jwt` needs at least one `auth.jwt_issuers` entry",
        );
    }
    for (i, name) in auth.consumers.iter().enumerate() {
        if runtime.consumers.by_name(name).is_none() && !has(AuthMethodSection::Jwt) {
            c.error(
                format!("{path}.auth.consumers[{i}]"),
                format!("no consumer named `{name}`"),
            );
        }
    }
    RouteAuth {
        api_key: has(AuthMethodSection::ApiKey),
        jwt: has(AuthMethodSection::Jwt),
        mtls: has(AuthMethodSection::Mtls),
        consumers: auth.consumers.clone(),
        groups: auth.groups.clone(),
    }
}
