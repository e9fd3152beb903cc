//! The `tracehook` command as users run it: `inject`, `certs`, `crd`.

use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{assert_success, tracehook};

fn docs(yaml: &[u8]) -> Vec<Value> {
    serde_saphyr::from_multiple(std::str::from_utf8(yaml).expect("utf-8")).expect("YAML output")
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  namespace: retail
spec:
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: shop
          image: registry.example/shop:1
          env:
            - name: OTEL_SERVICE_NAME
              value: storefront
";

#[test]
fn inject_gives_a_deployment_template_one_native_jaeger_agent_and_the_env() {
    let out = tracehook(&["inject", "-f", "-", "--instance", "obs/test"], DEPLOYMENT);
    assert_success(&out);
    let doc = &docs(&out.stdout)[0];
    let spec = &doc["spec"]["template"]["spec"];
    let init = spec["initContainers"].as_array().expect("init containers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["name"], "jaeger-agent");
    assert_eq!(init[0]["restartPolicy"], "Always");
    let env = spec["containers"][0]["env"].as_array().expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        value("OTEL_SERVICE_NAME").as_deref(),
        Some("storefront"),
        "kept"
    );
    assert_eq!(value("JAEGER_SERVICE_NAME").as_deref(), Some("shop.retail"));
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://test-collector.obs.svc:4317")
    );
    // The Deployment itself is not annotated: only its pod template gets the marker.
    assert!(doc["metadata"]["annotations"].is_null());
    assert!(doc["spec"]["template"]["metadata"]["annotations"]["tracehook.dev/status"].is_string());
}

#[test]
fn inject_output_fed_back_in_is_identical() {
    let first = tracehook(&["inject", "-f", "-", "--instance", "obs/test"], DEPLOYMENT);
    assert!(first.status.success());
    let text = String::from_utf8(first.stdout).expect("utf-8");
    let second = tracehook(&["inject", "-f", "-", "--instance", "obs/test"], &text);
    assert!(second.status.success());
    assert_eq!(String::from_utf8(second.stdout).expect("utf-8"), text);
}

#[test]
fn inject_handles_every_workload_kind_and_passes_others_through() {
    // A pod template under `template:` at the given indentation.
    let template = |indent: usize| {
        let pad = " ".repeat(indent);
        format!(
            "\n{pad}metadata: {{labels: {{app: x}}}}\n{pad}spec:\n{pad}  containers: [{{name: x, image: registry.example/x:1}}]"
        )
    };
    let (t4, t8) = (template(4), template(8));
    let input = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: v}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: x, image: registry.example/x:1}}]\n---\n\
         apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec:\n  template:{t4}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: d}}\nspec:\n  template:{t4}\n---\n\
         apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: r}}\nspec:\n  template:{t4}\n---\n\
         apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec:\n  template:{t4}\n---\n\
         apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: cj}}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:{t8}\n"
    );
    let out = tracehook(&["inject", "-f", "-", "--instance", "obs/test"], &input);
    assert_success(&out);
    let docs = docs(&out.stdout);
    assert_eq!(docs.len(), 7);
    assert_eq!(docs[0]["data"]["k"], "v");
    assert!(docs[0].get("spec").is_none(), "a ConfigMap passes through");
    let injected = |v: &Value, pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["name"] == "jaeger-agent"))
    };
    assert!(injected(&docs[1], "/spec/initContainers"));
    for doc in &docs[2..6] {
        assert!(injected(doc, "/spec/template/spec/initContainers"), "{doc}");
    }
    assert!(injected(
        &docs[6],
        "/spec/jobTemplate/spec/template/spec/initContainers"
    ));
}

#[test]
fn inject_flavor_and_plain_containers() {
    let out = tracehook(
        &[
            "inject",
            "-f",
            "-",
            "--instance",
            "obs/test",
            "--flavor",
            "otel-collector",
            "--native-sidecars",
            "false",
        ],
        DEPLOYMENT,
    );
    assert!(out.status.success());
    let doc = &docs(&out.stdout)[0];
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], "otc-container");
}

#[test]
fn unreadable_input_names_the_document_and_line_and_exits_1() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n";
    let out = tracehook(&["inject", "-f", "-"], input);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(stderr.contains("line"), "{stderr}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = tracehook(&["inject", "-f", "/nonexistent/manifest.yaml"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/manifest.yaml"));
}

#[test]
fn true_without_an_instance_offline_says_what_to_pass() {
    let out = tracehook(&["inject", "-f", "-"], DEPLOYMENT);
    assert!(out.status.success(), "other documents still come out");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--instance"), "{stderr}");
    let doc = &docs(&out.stdout)[0];
    assert!(
        doc["spec"]["template"]["spec"]["initContainers"].is_null(),
        "unchanged"
    );
}

#[test]
fn certs_writes_a_ca_and_a_serving_pair_with_a_private_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tracehook(
        &[
            "certs",
            "--out",
            dir.path().to_str().expect("utf-8"),
            "--service",
            "hook",
            "--namespace",
            "ops",
        ],
        "",
    );
    assert!(out.status.success());
    let cert = std::fs::read_to_string(dir.path().join("tls.crt")).expect("tls.crt");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(dir.path().join("ca.crt").exists());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("tls.key"))
        .expect("tls.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is private");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hook.ops.svc"));
}

/// The issue's shape: unquoted YAML 1.1 octal modes and an exponent quantity, as kubectl
/// reads them (0400 is 256, 0755 is 493, 1e3 is 1000), never `400.0` or `1000.0`.
const DEPLOYMENT_WITH_MODES: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: keys, namespace: vault}
spec:
  selector: {matchLabels: {app: keys}}
  template:
    metadata: {labels: {app: keys}}
    spec:
      containers:
        - name: keys
          image: registry.example/keys:1
          resources:
            limits: {memory: 1e3}
          volumeMounts: [{name: key, mountPath: /keys}]
      volumes:
        - name: key
          secret:
            secretName: private-key
            defaultMode: 0400
            items: [{key: id_rsa, path: id_rsa, mode: 0600}]
        - name: scripts
          configMap: {name: scripts, defaultMode: 0755}
";

#[test]
fn octal_file_modes_keep_their_value() {
    let out = tracehook(
        &["inject", "-f", "-", "--instance", "obs/test"],
        DEPLOYMENT_WITH_MODES,
    );
    assert_success(&out);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let doc = &docs(text.as_bytes())[0];
    let spec = &doc["spec"]["template"]["spec"];
    assert!(
        spec["initContainers"].is_array(),
        "the Deployment was injected: {text}"
    );
    let volumes = &spec["volumes"];
    assert_eq!(volumes[0]["secret"]["defaultMode"], 256, "{text}");
    assert_eq!(volumes[0]["secret"]["items"][0]["mode"], 384, "{text}");
    assert_eq!(volumes[1]["configMap"]["defaultMode"], 493, "{text}");
    assert!(text.contains("defaultMode: 256"), "{text}");
    assert!(text.contains("mode: 384"), "{text}");
    assert!(text.contains("defaultMode: 493"), "{text}");
    assert!(!text.contains("400.0") && !text.contains("755.0"), "{text}");
}

#[test]
fn exponent_quantities_stay_integers() {
    let out = tracehook(
        &["inject", "-f", "-", "--instance", "obs/test"],
        DEPLOYMENT_WITH_MODES,
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let doc = &docs(text.as_bytes())[0];
    let memory = &doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"];
    assert_eq!(memory.as_u64(), Some(1000), "{text}");
    assert!(text.contains("memory: 1000\n"), "{text}");
    assert!(!text.contains("1000.0"), "{text}");
}

#[test]
fn strings_that_yaml_1_1_reads_otherwise_stay_quoted() {
    let input = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: flags
  labels: {enabled: \"yes\", mode: \"0755\"}
data: {a: \"on\", b: \"1e3\", c: \"~\", d: \"0x1F\", e: \"1_000\", f: \"null\", g: \"y\"}
";
    let out = tracehook(&["inject", "-f", "-"], input);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for quoted in [
        "enabled: \"yes\"",
        "mode: \"0755\"",
        "a: \"on\"",
        "b: \"1e3\"",
        "c: \"~\"",
        "d: \"0x1F\"",
        "e: \"1_000\"",
        "f: \"null\"",
        "g: \"y\"",
    ] {
        assert!(text.contains(quoted), "{quoted} in {text}");
    }
}

const ROLLOUT: &str = "\
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: checkout
  namespace: retail
  annotations: {tracehook.dev/inject: obs/test}
spec:
  replicas: 3
  selector: {matchLabels: {app: checkout}}
  strategy:
    canary: {steps: [{setWeight: 20}, {pause: {}}]}
  template:
    metadata: {labels: {app: checkout}}
    spec:
      containers: [{name: checkout, image: registry.example/checkout:1}]
";

#[test]
fn rollout_template_is_injected() {
    // No --instance: the Rollout's own annotation, as the owning workload's, asks.
    let out = tracehook(&["inject", "-f", "-"], ROLLOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("document 1: Rollout checkout: injected jaeger-agent for obs/test"),
        "{stderr}"
    );
    let doc = &docs(&out.stdout)[0];
    let spec = &doc["spec"]["template"]["spec"];
    let init = spec["initContainers"].as_array().expect("init containers");
    assert_eq!(init[0]["name"], "jaeger-agent");
    assert_eq!(
        doc["spec"]["strategy"]["canary"]["steps"][0]["setWeight"],
        20
    );
    assert!(doc["spec"]["template"]["metadata"]["annotations"]["tracehook.dev/status"].is_string());
    // Fed back in: already injected, unchanged.
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let again = tracehook(&["inject", "-f", "-"], &text);
    assert_eq!(String::from_utf8(again.stdout).expect("utf-8"), text);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already injected"));
}

#[test]
fn rollout_with_a_workload_ref_is_named_as_left_alone() {
    let input = "\
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: checkout}
spec:
  workloadRef: {apiVersion: apps/v1, kind: Deployment, name: checkout-base}
";
    let out = tracehook(&["inject", "-f", "-", "--instance", "obs/test"], input);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 1: Rollout checkout: left alone"),
        "{stderr}"
    );
    assert!(stderr.contains("Deployment checkout-base"), "{stderr}");
    assert!(
        stderr.contains("inject that Deployment instead"),
        "{stderr}"
    );
    assert_eq!(docs(&out.stdout)[0], docs(input.as_bytes())[0], "unchanged");
}

#[test]
fn every_document_left_alone_is_named_with_the_reason() {
    let input = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
spec: {template: {spec: {containers: [{name: x, image: x}]}}}
---
apiVersion: example.com/v1
kind: Rollout
metadata: {name: not-argo}
spec: {template: {spec: {containers: [{name: x, image: x}]}}}
---
metadata: {name: kindless}
---
just a string
";
    let out = tracehook(&["inject", "-f", "-", "--instance", "obs/test"], input);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "document 1: Service web: left alone (not a workload)",
        "document 2: ConfigMap settings: left alone (not a workload)",
        "document 3: CustomResourceDefinition widgets.example.com: left alone (not a workload)",
        "document 4: Widget w: left alone (not a workload)",
        "document 5: Rollout not-argo: left alone (not a workload)",
        "document 6: kindless: left alone (no kind)",
        "document 7: left alone (not a Kubernetes object)",
    ] {
        assert!(stderr.contains(line), "{line:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 7, "{stderr}");
    assert_eq!(docs(&out.stdout), docs(input.as_bytes()), "all unchanged");
}

const DEPLOYMENT_WITHOUT_NAMESPACE: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: myapp
spec:
  selector:
    matchLabels: {app: myapp}
  template:
    metadata:
      labels: {app: myapp}
      annotations:
        tracehook.dev/inject: test
    spec:
      containers:
        - name: myapp
          image: registry.example/myapp:1
";

/// `name → value` (or `fieldRef:<path>`) of a container's env.
fn env_map(container: &Value) -> std::collections::BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = e["value"].as_str().map(str::to_owned).unwrap_or_else(|| {
                format!(
                    "fieldRef:{}",
                    e["valueFrom"]["fieldRef"]["fieldPath"]
                        .as_str()
                        .unwrap_or("?")
                )
            });
            (e["name"].as_str().unwrap_or_default().to_owned(), value)
        })
        .collect()
}

#[test]
fn output_without_a_namespace_is_right_in_any_namespace() {
    // `tracehook inject -f app.yaml | kubectl apply -n shop -f -` used to bake in
    // `default`: JAEGER_SERVICE_NAME=myapp.default, k8s.namespace.name=default.
    let out = tracehook(&["inject", "-f", "-"], DEPLOYMENT_WITHOUT_NAMESPACE);
    assert_success(&out);
    let doc = &docs(&out.stdout)[0];
    let spec = &doc["spec"]["template"]["spec"];
    let env = env_map(&spec["containers"][0]);
    assert_eq!(env["POD_NAMESPACE"], "fieldRef:metadata.namespace");
    assert_eq!(env["JAEGER_SERVICE_NAME"], "myapp.$(POD_NAMESPACE)");
    assert!(
        env["OTEL_RESOURCE_ATTRIBUTES"].starts_with("k8s.namespace.name=$(POD_NAMESPACE),"),
        "{env:?}"
    );
    // The instance named without a namespace is the one where the output is applied:
    // its Services by their short names, which the Pod's DNS search path resolves.
    assert_eq!(
        env["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://test-collector:4317"
    );
    let sidecar = &spec["initContainers"][0];
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--reporter.grpc.host-port=dns:///test-collector-headless:14250"),
        "{args:?}"
    );
    assert!(
        args.iter()
            .any(|a| a.contains("pod.namespace=${POD_NAMESPACE:}")),
        "{args:?}"
    );
    assert_eq!(
        env_map(sidecar)["POD_NAMESPACE"],
        "fieldRef:metadata.namespace"
    );
    assert_eq!(
        doc["spec"]["template"]["metadata"]["labels"]["tracehook.dev/injected"],
        "test"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("default"), "no namespace baked in:\n{text}");

    // With -n, the namespace is known and written out.
    let out = tracehook(
        &["inject", "-f", "-", "-n", "shop"],
        DEPLOYMENT_WITHOUT_NAMESPACE,
    );
    let doc = &docs(&out.stdout)[0];
    let env = env_map(&doc["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(env["JAEGER_SERVICE_NAME"], "myapp.shop");
    assert!(!env.contains_key("POD_NAMESPACE"), "{env:?}");
}

/// What `tracehook serve --no-cluster --log-format FORMAT` writes to a pipe (as
/// `kubectl logs` and log shippers read it) until it serves, then stops it.
fn serve_log(format: &str) -> String {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("address").port();
    let probes = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let probe_port = probes.local_addr().expect("address").port();
    drop((listener, probes));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracehook"))
        .args(["serve", "--no-cluster", "--log-format", format])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--probe-listen=127.0.0.1:{probe_port}"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracehook serve runs");
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.expect("a line");
        let done = line.contains("serving POST /mutate");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines.join("\n")
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let text = serve_log("text");
    assert!(text.contains("serving POST /mutate"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a pipe:\n{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let text = serve_log("json");
    for line in text.lines() {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        text.contains(r#""message":"serving POST /mutate over TLS""#),
        "{text}"
    );
}

#[test]
fn large_floats_read_back_the_same() {
    // Found by fuzzing: `11e32` came out as 1.1000000000000001e+33 (the float parsed back
    // from its text one ULP off), which read back as 1.1e+33.
    let input = "apiVersion: example.com/v1\nkind: Thing\nmetadata: {name: t}\nspec: {a: 11e32, b: 3.3e-7, c: 0.1}\n";
    let first = tracehook(&["inject", "-f", "-"], input);
    assert!(first.status.success());
    let text = String::from_utf8(first.stdout).expect("utf-8");
    assert!(text.contains("1.1e+33"), "{text}");
    let second = tracehook(&["inject", "-f", "-"], &text);
    assert_eq!(String::from_utf8(second.stdout).expect("utf-8"), text);
}

/// A log reader that stops reading (the pipe to the container runtime full) does not
/// stop admissions: the lines beyond the writer's buffer are dropped and counted. When
/// the line of each admission was written on the worker thread, the first admission
/// to meet the full pipe blocked, and every one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_log_reader_does_not_stop_admissions() {
    use common::{client, tls};
    common::tls::install_provider();
    let dir = tempfile::tempdir().expect("a directory");
    let out = dir.path().to_str().expect("utf-8");
    assert_success(&tracehook(&["certs", "--out", out], ""));
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca.crt");
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("address").port()
    };
    let (port, probe_port) = (free_port(), free_port());
    // stderr is a pipe nobody reads: it fills after a few hundred lines.
    let child = Command::new(env!("CARGO_BIN_EXE_tracehook"))
        .args(["serve", "--no-cluster", "--instance", "obs/test"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--probe-listen=127.0.0.1:{probe_port}"))
        .arg(format!("--tls-cert-file={out}/tls.crt"))
        .arg(format!("--tls-key-file={out}/tls.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracehook serve runs");
    /// Stops the server however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(child);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let started = std::time::Instant::now();
    let stream = loop {
        match tls::connect(addr, tls::client_config(&ca, b"h2")).await {
            Ok(stream) => break stream,
            Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("tracehook serve did not listen: {e}"),
        }
    };
    let (sender, _connection) = client::http2_client(stream).await;
    // More admissions than the writer's buffer (8,192 lines) and the pipe hold.
    const ADMISSIONS: usize = 12_000;
    // Injected, so each admission logs a line at the default level.
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reviews/pod-asking-for-injection.json"
    ))
    .expect("the review");
    let mut answered = 0;
    for chunk in 0..ADMISSIONS / 16 {
        let calls = (0..16).map(|_| {
            let mut sender = sender.clone();
            let request = client::post_json("/mutate", body.clone());
            async move {
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sender.send_request(request),
                )
                .await
                .unwrap_or_else(|_| panic!("an admission waited 5 s (chunk {chunk})"))
                .expect("an answer");
                client::json_body(response).await
            }
        });
        for review in futures::future::join_all(calls).await {
            assert_eq!(review["response"]["patchType"], "JSONPatch", "{review}");
            answered += 1;
        }
    }
    assert_eq!(answered, ADMISSIONS);
    let (_, metrics) = common::http::http_get(probe_port, "/metrics").expect("metrics");
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tracehook_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines counter:\n{metrics}"));
    assert!(dropped > 0.0, "{metrics}");
}
