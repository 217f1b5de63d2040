//! The test server cannot drift from the real API: its routes exist in the
//! spec, and its replies (every peer state, every error) validate against
//! the spec's schemas, tightened so that a field the spec does not define is
//! an error too.

use serde_json::{json, Map, Value};

use hygiene_nginx::testing::{FakeNginx, Hs, Kind, State, ROUTES};

const SPEC: &str = include_str!("../data/nginx_api.yaml");

fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64())
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(s) => Value::Array(s.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Y::String(s) => s,
                        other => serde_yaml::to_string(&other)
                            .expect("scalar key")
                            .trim()
                            .to_owned(),
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

fn spec() -> Value {
    yaml_to_json(serde_yaml::from_str(SPEC).expect("the spec parses as YAML"))
}

/// `additionalProperties: false` on every object schema that lists its
/// properties (but not the `codes` placeholder map, nor examples).
fn tighten(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let listed = m
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| !p.contains_key("codeNumber"));
            if listed && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), json!(false));
            }
            for (k, child) in m.iter_mut() {
                if k != "example" {
                    tighten(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(tighten),
        _ => {}
    }
}

struct Schemas {
    definitions: Value,
}

impl Schemas {
    fn new() -> Self {
        let mut definitions = spec()["definitions"].clone();
        assert!(definitions.is_object(), "spec has definitions");
        tighten(&mut definitions);
        Self { definitions }
    }

    fn check(&self, def: &str, instance: &Value, what: &str) {
        assert!(
            self.definitions.get(def).is_some(),
            "no definition {def} in the spec"
        );
        let schema =
            json!({"$ref": format!("#/definitions/{def}"), "definitions": self.definitions});
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            // The spec says `format: hostname` for stream peer names, which are host:port.
            .should_validate_formats(false)
            .build(&schema)
            .expect("schema builds");
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: reply does not match {def}: {errors:#?}\n{instance:#}"
        );
    }
}

#[test]
fn vendored_spec_is_the_shared_one() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/nginx_api.yaml"
    );
    match std::fs::read_to_string(shared) {
        Ok(s) => assert_eq!(
            s, SPEC,
            "tests/data/nginx_api.yaml differs from {shared}: copy it again"
        ),
        Err(e) => eprintln!("shared spec not found at {shared} ({e}); using the vendored copy"),
    }
    assert_eq!(spec()["info"]["version"], json!("9.0"));
}

#[test]
fn every_route_is_in_the_spec() {
    let spec = spec();
    for (method, path) in ROUTES {
        let ops = spec["paths"]
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not a path of the spec"));
        assert!(
            ops.get(*method).is_some(),
            "{method} {path} is not in the spec"
        );
        let codes = ops[*method]["responses"].as_object().expect("responses");
        assert!(
            codes.contains_key("200"),
            "{method} {path} has no 200 response"
        );
    }
    let stream_patch = &spec["definitions"]["NginxStreamUpstreamConfServer"]["properties"];
    assert!(
        stream_patch.get("drain").is_none(),
        "stream servers have no drain (DESIGN §4)"
    );
    assert!(
        spec["definitions"]["NginxHTTPUpstreamConfServer"]["properties"]
            .get("drain")
            .is_some()
    );
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON reply"))
}

async fn patch(url: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .patch(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON reply"))
}

#[tokio::test]
async fn replies_match_the_spec_schemas() {
    let sc = Schemas::new();
    let srv = FakeNginx::start(State::standard()).await;
    // Every peer state and shape the server can show.
    srv.with(|s| {
        let b = s.upstream_mut(Kind::Http, "backend");
        b.peers[0].drain = true;
        b.peers[0].active = 4;
        b.peers[1].down = true;
        b.peers[2].health = Hs::Checking;
        b.peers[2].max_conns = 10;
        b.peers[2].backup = true;
        let n = s.upstream_mut(Kind::Http, "nohc");
        n.peers[0].health = Hs::Unhealthy;
        n.peers[1].health = Hs::Unavail;
        s.upstream_mut(Kind::Stream, "tcp").peers[0].down = true;
    });
    let base = srv.url();

    let (st, versions) = get(&format!("{base}/")).await;
    assert_eq!(st, 200);
    assert!(
        versions
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_u64)),
        "{versions}"
    );

    let (st, v) = get(&format!("{base}/9/")).await;
    assert_eq!(st, 200);
    sc.check("ArrayOfStrings", &v, "GET /");

    let (_, v) = get(&format!("{base}/9/http/upstreams/")).await;
    sc.check("NginxHTTPUpstreamMap", &v, "GET /http/upstreams/");
    let (_, v) = get(&format!("{base}/9/http/upstreams/backend/")).await;
    sc.check("NginxHTTPUpstream", &v, "GET /http/upstreams/backend/");
    let states: Vec<&str> = v["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|p| p["state"].as_str())
        .collect();
    assert_eq!(states, ["draining", "down", "checking"]);
    let (_, v) = get(&format!("{base}/9/http/upstreams/nohc/")).await;
    sc.check("NginxHTTPUpstream", &v, "GET /http/upstreams/nohc/");
    let (_, v) = get(&format!("{base}/9/http/upstreams/backend/servers/")).await;
    sc.check("NginxHTTPUpstreamConfServerMap", &v, "GET servers");
    let (_, v) = get(&format!("{base}/9/http/upstreams/backend/servers/0")).await;
    sc.check("NginxHTTPUpstreamConfServer", &v, "GET server");
    assert_eq!(v["drain"], json!(true));
    let (st, v) = patch(
        &format!("{base}/9/http/upstreams/backend/servers/0"),
        r#"{"drain":false,"down":false,"weight":2}"#,
    )
    .await;
    assert_eq!(st, 200);
    sc.check("NginxHTTPUpstreamConfServer", &v, "PATCH server");

    let (_, v) = get(&format!("{base}/9/stream/upstreams/")).await;
    sc.check("NginxStreamUpstreamMap", &v, "GET /stream/upstreams/");
    let (_, v) = get(&format!("{base}/9/stream/upstreams/tcp/")).await;
    sc.check("NginxStreamUpstream", &v, "GET /stream/upstreams/tcp/");
    let (_, v) = get(&format!("{base}/9/stream/upstreams/tcp/servers/")).await;
    sc.check("NginxStreamUpstreamConfServerMap", &v, "GET stream servers");
    let (st, v) = patch(
        &format!("{base}/9/stream/upstreams/tcp/servers/1"),
        r#"{"down":true}"#,
    )
    .await;
    assert_eq!(st, 200);
    sc.check("NginxStreamUpstreamConfServer", &v, "PATCH stream server");

    // Every error the server produces.
    let cases: Vec<(u16, &str, String, Option<&str>)> = vec![
        (
            404,
            "UnknownVersion",
            format!("{base}/99/http/upstreams/"),
            None,
        ),
        (
            404,
            "UpstreamNotFound",
            format!("{base}/9/http/upstreams/nope/"),
            None,
        ),
        (
            400,
            "UpstreamStatic",
            format!("{base}/9/http/upstreams/legacy/"),
            None,
        ),
        (
            404,
            "UpstreamServerNotFound",
            format!("{base}/9/http/upstreams/backend/servers/42"),
            None,
        ),
        (
            400,
            "UpstreamBadServerId",
            format!("{base}/9/http/upstreams/backend/servers/x"),
            None,
        ),
        (
            400,
            "UpstreamConfFormatError",
            format!("{base}/9/http/upstreams/backend/servers/1"),
            Some(r#"{"id":1,"down":true}"#),
        ),
        (
            400,
            "UpstreamConfFormatError",
            format!("{base}/9/http/upstreams/backend/servers/1"),
            Some(r#"{"bogus":1}"#),
        ),
        (
            400,
            "UpstreamConfFormatError",
            format!("{base}/9/http/upstreams/backend/servers/1"),
            Some(r#"{"down":"yes"}"#),
        ),
        (
            400,
            "UpstreamConfFormatError",
            format!("{base}/9/http/upstreams/backend/servers/1"),
            Some(r#"{"down":[true]}"#),
        ),
        (
            400,
            "UpstreamConfFormatError",
            format!("{base}/9/stream/upstreams/tcp/servers/1"),
            Some(r#"{"drain":true}"#),
        ),
        (
            415,
            "JsonError",
            format!("{base}/9/http/upstreams/backend/servers/1"),
            Some("{not json"),
        ),
    ];
    for (want, code, url, body) in cases {
        let (st, v) = match body {
            Some(b) => patch(&url, b).await,
            None => get(&url).await,
        };
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (want, Some(code)),
            "{url} {body:?}: {v}"
        );
        assert_eq!(v["error"]["status"], json!(want));
        sc.check("NginxError", &v, code);
    }
    srv.with(|s| s.write = false);
    let (st, v) = patch(
        &format!("{base}/9/http/upstreams/backend/servers/1"),
        r#"{"down":true}"#,
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (405, Some("MethodDisabled"))
    );
    sc.check("NginxError", &v, "MethodDisabled");
    // A rejected PATCH changed nothing.
    assert!(!srv.peer(Kind::Http, "backend", 1).drain);
    assert!(!srv.peer(Kind::Stream, "tcp", 1).drain);
}

#[test]
fn tightened_schema_rejects_invented_fields() {
    let sc = Schemas::new();
    let mut peer = Map::new();
    peer.insert("id".into(), json!(0));
    peer.insert("state".into(), json!("up"));
    peer.insert("connections_now".into(), json!(3));
    let v = json!({"peers": [Value::Object(peer)]});
    let r = std::panic::catch_unwind(|| sc.check("NginxHTTPUpstream", &v, "invented"));
    assert!(r.is_err(), "an invented field must fail validation");
    let bad_state = json!({"peers": [{"id": 0, "state": "sleeping"}]});
    let r = std::panic::catch_unwind(|| sc.check("NginxHTTPUpstream", &bad_state, "bad state"));
    assert!(r.is_err(), "a state outside the enum must fail validation");
}
