//! JWT over real sockets: every algorithm family verified, the classic attacks refused (`alg: none`,
//! HS256 signed with the RSA public key, tampered payload, expired, not yet valid, wrong `iss`/`aud`),
//! and unknown `kid`s accepted once the JWKS file or URL (a local test server) gains the key.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use loadtest::MockOrigin;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use serde_json::{json, Value};

const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, sub: &str) -> Value {
    json!({ "iss": iss, "sub": sub, "aud": "api", "exp": now() + 600, "iat": now() })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

/// An RSA key pair from the openssl command line (ring cannot generate RSA keys): (private PEM, public PEM).
fn rsa_pair(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join("rsa.key");
    let public = dir.join("rsa.pub");
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(private).unwrap(),
        std::fs::read(public).unwrap(),
    )
}

/// The public JWK of a P-256 key.
fn ec_jwk(key: &KeyPair, kid: &str) -> Value {
    let raw = key.public_key_raw();
    json!({ "kty": "EC", "crv": "P-256", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]) })
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

async fn call(client: &reqwest::Client, gateway: &Gateway, token: &str) -> (u16, String) {
    let response = client
        .get(gateway.url("/api"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    (status, code.unwrap_or(body))
}

#[tokio::test]
async fn every_algorithm_family_verifies_and_confusion_is_refused() {
    let origin = MockOrigin::start("origin").await.unwrap();
    let jwks_server = MockOrigin::start("jwks").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let (rsa_private, rsa_public) = rsa_pair(dir.dir.path());
    let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let write = |name: &str, pem: &[u8]| {
        let path = dir.path(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (rsa_pub, p256_pub, p384_pub, ed_pub) = (
        write("rsa.pub", &rsa_public),
        write("p256.pub", p256.public_key_pem().as_bytes()),
        write("p384.pub", p384.public_key_pem().as_bytes()),
        write("ed.pub", ed.public_key_pem().as_bytes()),
    );
    let file_key_1 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let file_key_2 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let jwks_file = dir.path("keys.jwks");
    std::fs::write(&jwks_file, jwks(&[ec_jwk(&file_key_1, "f1")])).unwrap();
    let url_key_1 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let url_key_2 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    jwks_server.set_static(
        "/jwks.json",
        "application/json",
        jwks(&[ec_jwk(&url_key_1, "u1")]),
    );

    let body = format!(
        r#"
auth:
  jwt_issuers:
    - {{ name: hs, issuer: hs.test, audiences: [api], algorithms: [HS256, HS384, HS512], secret: "{HS_SECRET}" }}
    - {{ name: rsa, issuer: rsa.test, audiences: [api], algorithms: [RS256, PS256], public_key_files: [{rsa_pub}] }}
    - {{ name: mixed, issuer: mixed.test, algorithms: [HS256, RS256], secret: "{HS_SECRET}", public_key_files: [{rsa_pub}] }}
    - {{ name: ec, issuer: ec.test, algorithms: [ES256, ES384], public_key_files: [{p256_pub}, {p384_pub}] }}
    - {{ name: ed, issuer: ed.test, algorithms: [EdDSA], public_key_files: [{ed_pub}] }}
    - {{ name: file, issuer: file.test, algorithms: [ES256], jwks_file: {jwks_file}, jwks_min_refetch: 200ms }}
    - {{ name: url, issuer: url.test, algorithms: [ES256], jwks_url: "http://{jwks}/jwks.json", jwks_min_refetch: 200ms }}
clusters:
  - name: origin
    backends: [{{ address: "{origin}" }}]
routes:
  - name: api
    auth: {{ methods: [jwt] }}
    proxy: {{ cluster: origin }}
"#,
        jwks_file = jwks_file.display(),
        jwks = jwks_server.addr,
        origin = origin.addr,
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    let client = client();

    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let rsa = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let ec256 = EncodingKey::from_ec_pem(p256.serialize_pem().as_bytes()).unwrap();
    let ec384 = EncodingKey::from_ec_pem(p384.serialize_pem().as_bytes()).unwrap();
    let eddsa = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let valid = [
        (Algorithm::HS256, &hs, "hs.test"),
        (Algorithm::HS384, &hs, "hs.test"),
        (Algorithm::HS512, &hs, "hs.test"),
        (Algorithm::RS256, &rsa, "rsa.test"),
        (Algorithm::PS256, &rsa, "rsa.test"),
        (Algorithm::ES256, &ec256, "ec.test"),
        (Algorithm::ES384, &ec384, "ec.test"),
        (Algorithm::EdDSA, &eddsa, "ed.test"),
    ];
    for (alg, key, iss) in valid {
        let token = sign(alg, key, None, &claims(iss, &format!("user-{alg:?}")));
        assert_eq!(call(&client, &gateway, &token).await.0, 200, "{alg:?}");
        let seen = origin.requests().pop().unwrap();
        assert_eq!(
            seen.header("x-consumer-id"),
            Some(format!("user-{alg:?}").as_str())
        );
        assert_eq!(
            seen.header("authorization"),
            None,
            "the token is not forwarded"
        );
    }

    // HS256 signed with the RSA public key as the HMAC secret.
    let confused = EncodingKey::from_secret(&rsa_public);
    let token = sign(
        Algorithm::HS256,
        &confused,
        None,
        &claims("rsa.test", "mallory"),
    );
    assert_eq!(
        call(&client, &gateway, &token).await,
        (401, "jwt_algorithm_not_allowed".into())
    );
    let token = sign(
        Algorithm::HS256,
        &confused,
        None,
        &claims("mixed.test", "mallory"),
    );
    assert_eq!(
        call(&client, &gateway, &token).await,
        (401, "jwt_bad_signature".into())
    );
    // An algorithm outside the issuer's pin list, with a valid key of the right family.
    let token = sign(Algorithm::RS384, &rsa, None, &claims("rsa.test", "mallory"));
    assert_eq!(
        call(&client, &gateway, &token).await,
        (401, "jwt_algorithm_not_allowed".into())
    );
    // `alg: none`.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("hs.test", "mallory").to_string())
    );
    assert_eq!(
        call(&client, &gateway, &none).await,
        (401, "jwt_malformed".into())
    );
    // Tampered payload under a valid signature.
    let token = sign(Algorithm::RS256, &rsa, None, &claims("rsa.test", "user"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims("rsa.test", "admin").to_string()),
        parts[2]
    );
    assert_eq!(
        call(&client, &gateway, &forged).await,
        (401, "jwt_bad_signature".into())
    );
    // An issuer nobody configured.
    let token = sign(Algorithm::HS256, &hs, None, &claims("evil.test", "x"));
    assert_eq!(
        call(&client, &gateway, &token).await,
        (401, "jwt_unknown_issuer".into())
    );

    // Unknown kid in a JWKS file: refused, then accepted once the file has the key.
    let file_signer = EncodingKey::from_ec_pem(file_key_2.serialize_pem().as_bytes()).unwrap();
    let token = sign(
        Algorithm::ES256,
        &file_signer,
        Some("f2"),
        &claims("file.test", "rotated"),
    );
    assert_eq!(
        call(&client, &gateway, &token).await,
        (401, "jwt_unknown_key".into())
    );
    std::fs::write(
        &jwks_file,
        jwks(&[ec_jwk(&file_key_1, "f1"), ec_jwk(&file_key_2, "f2")]),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&client, &gateway, &token).await.0, 200);

    // The same through a JWKS URL served by a local server.
    let url_signer = EncodingKey::from_ec_pem(url_key_1.serialize_pem().as_bytes()).unwrap();
    let token = sign(
        Algorithm::ES256,
        &url_signer,
        Some("u1"),
        &claims("url.test", "from-url"),
    );
    let fetched = eventually(Duration::from_secs(5), || async {
        call(&client, &gateway, &token).await.0 == 200
    })
    .await;
    assert!(fetched, "{}", dir.gateway_log());
    let url_signer = EncodingKey::from_ec_pem(url_key_2.serialize_pem().as_bytes()).unwrap();
    let token = sign(
        Algorithm::ES256,
        &url_signer,
        Some("u2"),
        &claims("url.test", "rotated"),
    );
    assert_eq!(
        call(&client, &gateway, &token).await,
        (401, "jwt_unknown_key".into())
    );
    jwks_server.set_static(
        "/jwks.json",
        "application/json",
        jwks(&[ec_jwk(&url_key_1, "u1"), ec_jwk(&url_key_2, "u2")]),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&client, &gateway, &token).await.0, 200);

    // The JWKS server goes away: a refetch (forced by an unknown kid) fails and the last good keys stay.
    jwks_server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stray = sign(
        Algorithm::ES256,
        &url_signer,
        Some("u9"),
        &claims("url.test", "x"),
    );
    assert_eq!(
        call(&client, &gateway, &stray).await,
        (401, "jwt_unknown_key".into())
    );
    assert_eq!(call(&client, &gateway, &token).await.0, 200);
}

/// A gateway with one JWT issuer (`SECRET` in `issuer` stands for the HMAC secret) on a route to an origin.
async fn one_issuer(issuer: &str) -> (MockOrigin, TestDir, Gateway) {
    let origin = MockOrigin::start("origin").await.unwrap();
    let (dir, ports) = (TestDir::new(), Ports::new());
    let issuer = issuer.replace("SECRET", &format!("\"{HS_SECRET}\""));
    let body = format!(
        r#"
auth:
  jwt_issuers:
    - {issuer}
clusters:
  - name: origin
    backends: [{{ address: "{}" }}]
routes:
  - name: api
    auth: {{ methods: [jwt] }}
    proxy: {{ cluster: origin }}
"#,
        origin.addr
    );
    let gateway = Gateway::start(&dir, ports, &dir.plain_config(&ports, &body)).await;
    (origin, dir, gateway)
}

#[tokio::test]
async fn time_issuer_and_audience_claims_are_enforced() {
    let (_origin, _dir, gateway) = one_issuer(
        "{ name: only, issuer: good.test, audiences: [api], algorithms: [HS256], secret: SECRET, leeway: 5s }",
    )
    .await;
    let client = client();
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let token = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims("good.test", "user");
        edit(&mut c);
        sign(Algorithm::HS256, &key, None, &c)
    };
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(Edit, u16, &str); 6] = [
        (&|_| {}, 200, ""),
        (&|c| c["exp"] = json!(now() - 60), 401, "jwt_expired"),
        (&|c| c["nbf"] = json!(now() + 600), 401, "jwt_not_yet_valid"),
        (&|c| c["iss"] = json!("other.test"), 401, "jwt_wrong_issuer"),
        (
            &|c| c["aud"] = json!("elsewhere"),
            401,
            "jwt_wrong_audience",
        ),
        (
            &|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("sub")
                    .map(|_| ())
                    .unwrap_or(())
            },
            401,
            "jwt_missing_claim",
        ),
    ];
    for (edit, status, code) in cases {
        let (got_status, got_code) = call(&client, &gateway, &token(edit)).await;
        assert_eq!(got_status, status, "{code}");
        if status != 200 {
            assert_eq!(got_code, code);
        }
    }
    // Within the leeway an expired token still passes.
    let recent = token(&|c| c["exp"] = json!(now() - 2));
    assert_eq!(call(&client, &gateway, &recent).await.0, 200);
}

/// An HS256 token with a hand-written header (jsonwebtoken's `Header` has no `crit`).
fn sign_raw_header(header: &Value, claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn absent_issuer_or_audience_and_critical_headers_are_refused() {
    let (origin, dir, gateway) = one_issuer(
        "{ name: hs, issuer: hs.test, audiences: [api], algorithms: [HS256], secret: SECRET }",
    )
    .await;
    let client = client();
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let full = claims("hs.test", "user");
    let token = sign(Algorithm::HS256, &hs, None, &full);
    assert_eq!(call(&client, &gateway, &token).await.0, 200);

    for missing in ["aud", "iss", "exp"] {
        let mut partial = full.clone();
        partial.as_object_mut().unwrap().remove(missing);
        let token = sign(Algorithm::HS256, &hs, None, &partial);
        assert_eq!(
            call(&client, &gateway, &token).await,
            (401, "jwt_missing_claim".into()),
            "a token without `{missing}`"
        );
    }
    let header = json!({ "alg": "HS256", "typ": "JWT" });
    assert_eq!(
        call(&client, &gateway, &sign_raw_header(&header, &full))
            .await
            .0,
        200
    );
    for crit in [json!(["x-unknown-extension"]), json!([]), json!(["exp"])] {
        let header =
            json!({ "alg": "HS256", "typ": "JWT", "crit": crit, "x-unknown-extension": 1 });
        assert_eq!(
            call(&client, &gateway, &sign_raw_header(&header, &full)).await,
            (401, "jwt_unsupported_critical_header".into()),
            "crit {crit}"
        );
    }
    assert_eq!(origin.requests().len(), 2);

    // A token in the query is not a credential here, and it never reaches the access log.
    let url = gateway.url(&format!(
        "/api?state=1&access_token={token}&id_token={token}"
    ));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let logged = eventually(Duration::from_secs(5), || async {
        dir.access_log()
            .contains("access_token=REDACTED&id_token=REDACTED")
    })
    .await;
    let log = dir.access_log();
    assert!(logged, "{log}");
    assert!(!log.contains(&token), "{log}");
}
