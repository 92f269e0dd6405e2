//! The deployment files under `deploy/` parse, and agree with the server and the docs:
//! probe port and health service names, image name, and every configuration variable.

use csai_sidecar::config::catalog;
use csai_sidecar::server::health;
use serde_yaml::Value;
use std::collections::BTreeMap;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// The port the Dockerfile makes the sidecar listen on.
fn dockerfile_port() -> u64 {
    let dockerfile = read("deploy/Dockerfile");
    let listen = dockerfile
        .split_whitespace()
        .find_map(|word| word.strip_prefix("CSAI_LISTEN="))
        .expect("the Dockerfile sets CSAI_LISTEN");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        dockerfile.contains(&format!("EXPOSE {port}")),
        "EXPOSE {port} is missing"
    );
    port
}

fn known_env_names() -> Vec<&'static str> {
    catalog().iter().map(|key| key.env).collect()
}

/// A ConfigMap's or Secret's variables; every CSAI_* one must be a configuration key.
fn variables(manifest: &Value, field: &str) -> BTreeMap<String, String> {
    let map: BTreeMap<String, String> =
        serde_yaml::from_value(manifest[field].clone()).expect("string values");
    let known = known_env_names();
    for name in map.keys().filter(|n| n.starts_with("CSAI_")) {
        assert!(
            known.contains(&name.as_str()),
            "{name} is not a configuration key"
        );
    }
    map
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_health_check() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile.matches("FROM ").count() >= 2,
        "multi-stage build"
    );
    assert!(dockerfile.contains("USER 10001"));
    // Dependencies are cached between builds (BuildKit cache mounts on the registry and
    // target/), and the binary the runtime stage copies is the one built.
    assert!(dockerfile.starts_with("# syntax=docker/dockerfile:1"));
    for cache in ["target=/usr/local/cargo/registry", "target=/src/target"] {
        assert!(
            dockerfile.contains(&format!("--mount=type=cache,{cache}")),
            "{cache}"
        );
    }
    assert!(dockerfile.contains("cp target/release/csai-sidecar /usr/local/bin/csai-sidecar"));
    assert!(dockerfile.contains("COPY --from=build /usr/local/bin/csai-sidecar "));
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/csai-sidecar", "health"]"#));
    assert_eq!(dockerfile_port(), 50051);
    let deploying = read("docs/deploying.md");
    assert!(deploying.contains("docker build -f deploy/Dockerfile -t csai-sidecar ."));
}

#[test]
fn the_kubernetes_pod_probes_the_servers_health_services() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = pod["initContainers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"] == "csai-sidecar"))
        .expect("a csai-sidecar native sidecar container");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert!(
        sidecar["image"]
            .as_str()
            .unwrap()
            .starts_with("csai-sidecar:")
    );
    let port = dockerfile_port();
    let probe = |kind: &str| -> (u64, String) {
        let grpc = &sidecar[kind]["grpc"];
        (
            grpc["port"]
                .as_u64()
                .unwrap_or_else(|| panic!("{kind} port")),
            grpc["service"].as_str().unwrap_or_default().to_string(),
        )
    };
    assert_eq!(probe("livenessProbe"), (port, health::SERVER.to_string()));
    assert_eq!(probe("startupProbe"), (port, health::SERVER.to_string()));
    assert_eq!(
        probe("readinessProbe"),
        (port, health::SESSION_STORE.to_string())
    );
    for resource in ["requests", "limits"] {
        for kind in ["cpu", "memory"] {
            assert!(
                !sidecar["resources"][resource][kind].is_null(),
                "{resource}.{kind}"
            );
        }
    }
    let from: Vec<&str> = sidecar["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|source| {
            source["configMapRef"]["name"]
                .as_str()
                .or(source["secretRef"]["name"].as_str())
        })
        .collect();
    let config = yaml("deploy/kubernetes/configmap.yaml");
    let secret = yaml("deploy/kubernetes/secret.yaml");
    assert_eq!(
        from,
        [
            config["metadata"]["name"].as_str().unwrap(),
            secret["metadata"]["name"].as_str().unwrap()
        ]
    );
    // The bot talks to the sidecar on localhost.
    let bot = &pod["containers"][0];
    assert_eq!(bot["env"][0]["value"], format!("127.0.0.1:{port}").as_str());
    let metrics_port = sidecar["ports"][1]["containerPort"].as_u64().unwrap();
    let listen = variables(&config, "data")["CSAI_METRICS_LISTEN"].clone();
    assert!(listen.ends_with(&format!(":{metrics_port}")), "{listen}");
}

/// Regression: the manifests listened on every address with no token and no
/// NetworkPolicy, so any Pod could export or delete every session.
#[test]
fn the_kubernetes_pod_needs_a_token_and_admits_only_the_scraper() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = pod["initContainers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"] == "csai-sidecar"))
        .unwrap();
    let env = |container: &Value, name: &str| -> Value {
        container["env"]
            .as_sequence()
            .and_then(|vars| vars.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not set"))
    };
    let token_secret = yaml("deploy/kubernetes/bot-token-secret.yaml");
    let secret_name = token_secret["metadata"]["name"].as_str().unwrap();
    let token = token_secret["stringData"]["token"].as_str().unwrap();
    let from_secret = |var: &Value| {
        let source = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(source["name"], secret_name, "{var:?}");
        assert_eq!(source["key"], "token", "{var:?}");
    };
    from_secret(&env(sidecar, "BOT_TOKEN"));
    let tokens = env(sidecar, "CSAI_AUTH_TOKENS")["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(tokens, "support-bot:$(BOT_TOKEN)");
    let bot = &pod["containers"][0];
    from_secret(&env(bot, "CSAI_SIDECAR_TOKEN"));
    // As Kubernetes expands it, the sidecar accepts it (16 characters at least).
    csai_sidecar::server::auth::Tokens::parse(&tokens.replace("$(BOT_TOKEN)", token))
        .expect("the expanded tokens parse");

    let policy = yaml("deploy/kubernetes/networkpolicy.yaml");
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(policy["spec"]["policyTypes"][0], "Ingress");
    let metrics_port = sidecar["ports"][1]["containerPort"].as_u64().unwrap();
    let rules = policy["spec"]["ingress"].as_sequence().unwrap();
    let mut admitted = Vec::new();
    for rule in rules {
        assert!(
            !rule["from"].as_sequence().unwrap().is_empty(),
            "every rule names who may connect"
        );
        for port in rule["ports"].as_sequence().unwrap() {
            admitted.push(port["port"].as_u64().unwrap());
        }
    }
    assert_eq!(
        admitted,
        [metrics_port],
        "only the metrics port is admitted"
    );
}

#[test]
fn the_configmap_and_secret_are_a_configuration_the_sidecar_accepts() {
    let config = variables(&yaml("deploy/kubernetes/configmap.yaml"), "data");
    let secret = variables(&yaml("deploy/kubernetes/secret.yaml"), "stringData");
    // The Secret holds the secret keys, the ConfigMap none of them.
    let is_secret = |name: &str| catalog().iter().any(|key| key.env == name && key.secret);
    for name in secret.keys() {
        assert!(is_secret(name), "{name} is not a secret key");
    }
    for name in config.keys() {
        assert!(
            !is_secret(name),
            "{name} is a secret; it belongs in the Secret"
        );
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_csai-sidecar"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CSAI_") || name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let output = command
        .arg("config")
        .envs(config.iter().chain(secret.iter()))
        .output()
        .expect("run csai-sidecar config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("type = \"redis\""), "{stdout}");
    assert!(
        !stdout.contains("change-me"),
        "secrets are redacted: {stdout}"
    );
}

#[test]
fn compose_runs_the_image_on_redis_with_its_health_check() {
    let compose = yaml("deploy/docker-compose.yaml");
    let sidecar = &compose["services"]["csai-sidecar"];
    assert_eq!(sidecar["build"]["dockerfile"], "deploy/Dockerfile");
    assert_eq!(sidecar["environment"]["CSAI_STORAGE_TYPE"], "redis");
    let known = known_env_names();
    for name in sidecar["environment"].as_mapping().unwrap().keys() {
        assert!(known.contains(&name.as_str().unwrap()), "{name:?}");
    }
    // Published on the host's loopback only, and tokens on.
    let ports: Vec<&str> = sidecar["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&format!("127.0.0.1:{0}:{0}", dockerfile_port()).as_str()));
    assert!(
        ports.iter().all(|p| p.starts_with("127.0.0.1:")),
        "{ports:?}"
    );
    assert!(
        sidecar["environment"]["CSAI_AUTH_TOKENS"]
            .as_str()
            .unwrap()
            .contains("${CSAI_DEV_TOKEN:?")
    );
    assert_eq!(
        sidecar["healthcheck"]["test"][1],
        "/usr/local/bin/csai-sidecar"
    );
    assert!(!compose["services"]["redis"].is_null());
}

#[test]
fn the_dynamodb_definitions_agree() {
    let template = yaml("deploy/dynamodb-table.cloudformation.yaml");
    let table = &template["Resources"]["SessionsTable"]["Properties"];
    // JSON is YAML: the AWS CLI inputs parse the same way.
    let cli = yaml("deploy/dynamodb-table.json");
    let ttl = yaml("deploy/dynamodb-ttl.json");
    let keys = |schema: &Value| -> Vec<(String, String)> {
        schema
            .as_sequence()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["AttributeName"].as_str().unwrap().to_string(),
                    k["KeyType"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(keys(&table["KeySchema"]), keys(&cli["KeySchema"]));
    assert_eq!(
        table["TimeToLiveSpecification"]["AttributeName"].as_str(),
        ttl["TimeToLiveSpecification"]["AttributeName"].as_str()
    );
    assert_eq!(
        template["Parameters"]["TableName"]["Default"].as_str(),
        cli["TableName"].as_str()
    );
    let default_table = catalog()
        .iter()
        .find(|key| key.env == "CSAI_DYNAMO_TABLE")
        .unwrap()
        .default;
    assert_eq!(cli["TableName"].as_str(), Some(default_table));
}

/// The Unix-socket overlay: both containers share the socket's folder, the bot dials the
/// address the sidecar listens on (a value the sidecar accepts), and the probes exec the
/// health command since the kubelet's gRPC probe cannot dial a socket.
#[test]
fn the_unix_socket_overlay_shares_the_socket_and_probes_it() {
    let kustomization = yaml("deploy/kubernetes/unix-socket/kustomization.yaml");
    for resource in kustomization["resources"].as_sequence().expect("resources") {
        let path = format!(
            "deploy/kubernetes/unix-socket/{}",
            resource.as_str().unwrap()
        );
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(&path)
                .exists(),
            "{path}"
        );
    }
    let patch = yaml("deploy/kubernetes/unix-socket/deployment-patch.yaml");
    assert_eq!(
        patch["metadata"]["name"],
        yaml("deploy/kubernetes/deployment.yaml")["metadata"]["name"]
    );
    let pod = &patch["spec"]["template"]["spec"];
    let volume = &pod["volumes"][0];
    assert!(!volume["emptyDir"].is_null(), "{volume:?}");
    assert!(pod["securityContext"]["fsGroup"].as_u64().is_some());
    let env = |container: &Value| -> BTreeMap<String, String> {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().into(),
                    v["value"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let mount = |container: &Value| -> (String, String) {
        let mount = &container["volumeMounts"][0];
        (
            mount["name"].as_str().unwrap().into(),
            mount["mountPath"].as_str().unwrap().into(),
        )
    };
    let sidecar = &pod["initContainers"][0];
    let bot = &pod["containers"][0];
    let listen = env(sidecar)["CSAI_LISTEN"].clone();
    assert_eq!(env(bot)["CSAI_SIDECAR_ADDRESS"], listen);
    let socket = listen.strip_prefix("unix://").expect("a unix:// address");
    let (name, folder) = mount(sidecar);
    assert_eq!(mount(bot), (name.clone(), folder.clone()));
    assert_eq!(volume["name"].as_str(), Some(name.as_str()));
    assert_eq!(
        std::path::Path::new(socket).parent(),
        Some(std::path::Path::new(&folder))
    );

    let mut values = csai_sidecar::config::defaults();
    for (key, value) in [
        ("listen", listen.clone()),
        (
            "listen_socket_mode",
            env(sidecar)["CSAI_LISTEN_SOCKET_MODE"].clone(),
        ),
    ] {
        values.set(key, value, csai_sidecar::settings::Source::Default);
    }
    let config = csai_sidecar::config::parse(&values).expect("the sidecar accepts the overlay");
    assert_eq!(config.listen.to_string(), listen);

    let exec = |kind: &str| -> Vec<String> {
        assert!(sidecar[kind]["grpc"].is_null(), "{kind} still dials a port");
        sidecar[kind]["exec"]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{kind} execs"))
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(exec("livenessProbe"), ["csai-sidecar", "health"]);
    assert_eq!(exec("startupProbe"), ["csai-sidecar", "health"]);
    assert_eq!(
        exec("readinessProbe"),
        ["csai-sidecar", "health", "--service", health::SESSION_STORE]
    );
}

/// The SQLite overlay: one replica replaced (not rolled), the file on the claim's mount,
/// and a configuration the sidecar accepts.
#[test]
fn the_sqlite_overlay_runs_one_replica_on_its_volume() {
    let patch = yaml("deploy/kubernetes/sqlite/deployment-patch.yaml");
    let claim = yaml("deploy/kubernetes/sqlite/volume-claim.yaml");
    assert_eq!(patch["spec"]["replicas"], 1);
    assert_eq!(patch["spec"]["strategy"]["type"], "Recreate");
    let pod = &patch["spec"]["template"]["spec"];
    let volume = &pod["volumes"][0];
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        claim["metadata"]["name"]
    );
    let sidecar = &pod["initContainers"][0];
    let env: BTreeMap<String, String> = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mount = &sidecar["volumeMounts"][0];
    assert_eq!(mount["name"], volume["name"]);
    let path = &env["CSAI_SQLITE_PATH"];
    assert!(
        path.starts_with(mount["mountPath"].as_str().unwrap()),
        "{path}"
    );
    let mut values = csai_sidecar::config::defaults();
    values.set(
        "type",
        env["CSAI_STORAGE_TYPE"].clone(),
        csai_sidecar::settings::Source::Default,
    );
    values.set(
        "sqlite_path",
        path.clone(),
        csai_sidecar::settings::Source::Default,
    );
    let config = csai_sidecar::config::parse(&values).expect("the sidecar accepts the overlay");
    assert_eq!(config.storage.backend.name, "sqlite");
}
