//! `cargo xtask demo`: the project's main job, end to end on this machine.
//!
//! Builds tracehook, starts the local control plane with a real node (kubelet,
//! containerd, CNI, kube-proxy, CoreDNS; root), runs `tracehook serve` against it,
//! registers the webhook, applies the CRD, the `Jaeger` instance `obs/test` and the
//! HotROD example in a labelled namespace, shows the injected Pod and the backend
//! objects, sends HotROD a few requests and prints the trace of one, read back from
//! Jaeger, as a waterfall. `--kwok` runs on kwok's simulated node instead (no root; no
//! container runs, so no span either). `cargo xtask demo down` stops everything.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::{state_dir, workspace_root};

fn demo_dir() -> PathBuf {
    workspace_root().join("target").join("demo")
}

fn step(started: Instant, what: &str) {
    println!("\n[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
}

pub fn up(kwok: bool) -> Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid(2) has no preconditions.
    if !kwok && unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo's real node needs root (kubelet, containerd, a bridge): run it as root, \
             or `cargo xtask demo --kwok` for the control plane alone (no container runs there)"
        );
    }
    let root = workspace_root();
    let dir = demo_dir();
    if tracehook_pid(&dir).is_some() {
        bail!("the demo is already running: `cargo xtask demo down` stops it");
    }
    std::fs::create_dir_all(&dir)?;

    step(started, "building tracehook (cargo build --bin tracehook)");
    run(crate::cargo().args(["build", "--bin", "tracehook"]))?;
    let tracehook = root.join("target/debug/tracehook");

    step(
        started,
        if kwok {
            "starting the local control plane with kwok's node (the first run builds it from the Go modules: about 9 min on 2 cores)"
        } else {
            "starting the local control plane and a real node (the first run builds them and the images from the Go modules: about 17 min on 2 cores, a line per step)"
        },
    );
    crate::up(!kwok)?;
    let kubeconfig = state_dir().join("kubeconfig");
    let bin = testcluster::binaries()?;
    let kubectl = |args: &[&str]| {
        let mut c = Command::new(bin.join("kubectl"));
        c.arg("--kubeconfig").arg(&kubeconfig).args(args);
        c
    };

    step(
        started,
        "writing a CA and serving certificate (tracehook certs)",
    );
    let certs = dir.join("certs");
    run(Command::new(&tracehook)
        .arg("certs")
        .arg("--out")
        .arg(&certs))?;

    step(
        started,
        "applying the Jaeger CustomResourceDefinition (tracehook crd)",
    );
    let crd = output(Command::new(&tracehook).arg("crd"))?;
    run_stdin(&mut kubectl(&["apply", "-f", "-"]), &crd)?;
    run(&mut kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/jaegers.tracehook.dev",
        "--timeout=60s",
    ]))?;

    step(
        started,
        "creating tracehook's namespace (it holds the reconciler's Lease)",
    );
    run_stdin(
        &mut kubectl(&["apply", "-f", "-"]),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tracehook\n",
    )?;

    step(started, "starting tracehook serve");
    let port = free_port()?;
    let probe_port = free_port()?;
    let log = dir.join("tracehook.log");
    let log_file = std::fs::File::create(&log)?;
    let mut serve = Command::new(&tracehook);
    serve
        .arg("serve")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--probe-listen=127.0.0.1:{probe_port}"))
        .arg("--tls-cert-file")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(certs.join("tls.key"))
        .arg("--namespace=tracehook")
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // Its own process group: it outlives this command, and `demo down` stops it.
    std::os::unix::process::CommandExt::process_group(&mut serve, 0);
    let child = serve.spawn().context("starting tracehook serve")?;
    std::fs::write(dir.join("tracehook.pid"), child.id().to_string())?;
    wait(Duration::from_secs(60), "tracehook /readyz", || {
        http_status(probe_port, "/readyz") == Some(200)
    })
    .with_context(|| format!("tracehook did not become ready; see {}", log.display()))?;
    println!(
        "  serving https://127.0.0.1:{port}/mutate, probes on :{probe_port}, log {}",
        log.display()
    );

    step(
        started,
        "registering the MutatingWebhookConfiguration `tracehook`",
    );
    let ca = std::fs::read(certs.join("ca.crt"))?;
    run_stdin(
        &mut kubectl(&["apply", "-f", "-"]),
        &webhook_configuration(port, &ca),
    )?;

    step(
        started,
        "applying Jaeger obs/test and the HotROD example (namespace hotrod, labelled)",
    );
    let examples = root.join("manifests/examples");
    run(kubectl(&["apply", "-f"]).arg(examples.join("jaeger.yaml")))?;
    // The webhook sees a new instance through its watch; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    run(kubectl(&["apply", "-f"]).arg(examples.join("hotrod.yaml")))?;

    step(
        started,
        if kwok {
            "waiting for the HotROD Pod to be Running on the kwok node"
        } else {
            "waiting for the HotROD Pod to be Ready on the real node"
        },
    );
    run(&mut kubectl(&[
        "wait",
        "-n",
        "hotrod",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=example-hotrod",
        "--timeout=120s",
    ]))?;

    step(started, "the injected Pod");
    run(&mut kubectl(&[
        "get",
        "pods",
        "-n",
        "hotrod",
        "-o",
        "custom-columns=POD:.metadata.name,PHASE:.status.phase,SIDECAR:.spec.initContainers[*].name,SIDECAR-RESTART:.spec.initContainers[*].restartPolicy,CONTAINERS:.spec.containers[*].name,INJECTED:.metadata.labels.tracehook\\.dev/injected",
    ]))?;
    println!("\n  environment tracehook gave the app container:");
    run(&mut kubectl(&[
        "get",
        "pods",
        "-n",
        "hotrod",
        "-l",
        "app=example-hotrod",
        "-o",
        "jsonpath={range .items[0].spec.containers[0].env[*]}    {.name}={.value}{.valueFrom.fieldRef.fieldPath}{\"\\n\"}{end}",
    ]))?;
    println!("\n  the sidecar's arguments:");
    run(&mut kubectl(&[
        "get",
        "pods",
        "-n",
        "hotrod",
        "-l",
        "app=example-hotrod",
        "-o",
        "jsonpath={range .items[0].spec.initContainers[0].args[*]}    {@}{\"\\n\"}{end}",
    ]))?;
    println!("\n  the Deployment was not rewritten (generation 1, no sidecar in its template):");
    run(&mut kubectl(&[
        "get",
        "deployment",
        "-n",
        "hotrod",
        "example-hotrod",
        "-o",
        "custom-columns=DEPLOYMENT:.metadata.name,GENERATION:.metadata.generation,TEMPLATE-INIT-CONTAINERS:.spec.template.spec.initContainers[*].name",
    ]))?;

    step(
        started,
        "waiting for the Jaeger instance to be Running (the reconciler's work)",
    );
    run(&mut kubectl(&[
        "wait",
        "-n",
        "obs",
        "jaeger/test",
        "--for=jsonpath={.status.phase}=Running",
        "--timeout=120s",
    ]))?;

    step(started, "the Jaeger backend objects in namespace obs");
    run(&mut kubectl(&[
        "get",
        "jaegers,deployments,services,configmaps,serviceaccounts,ingresses",
        "-n",
        "obs",
        "-l",
        "app.kubernetes.io/instance=test",
    ]))?;
    run(&mut kubectl(&["get", "jaegers", "-n", "obs"]))?;

    if kwok {
        println!(
            "\nkwok runs no container, so no span is sent; run `cargo xtask demo` as root for HotROD's trace."
        );
    } else {
        step(
            started,
            "waiting for the Jaeger Pod to be Ready on the real node",
        );
        run(&mut kubectl(&[
            "wait",
            "-n",
            "obs",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app.kubernetes.io/instance=test,app.kubernetes.io/managed-by=tracehook",
            "--timeout=120s",
        ]))?;
        step(
            started,
            "three requests to HotROD: GET /dispatch?customer=123 (through its Service)",
        );
        let get = |path: &str| output(&mut kubectl(&["get", "--raw", path]));
        for _ in 0..3 {
            let mut answer = Err(anyhow::anyhow!("not tried"));
            for _ in 0..60 {
                answer = get(
                    "/api/v1/namespaces/hotrod/services/example-hotrod:frontend/proxy/dispatch?customer=123",
                );
                if answer.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            println!("  {}", answer?.trim());
        }
        step(
            started,
            "the trace of a request, from Jaeger's /api/traces?service=frontend",
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let trace = loop {
            let found = get("/api/v1/namespaces/obs/services/test-query:http-query/proxy/api/traces?service=frontend&lookback=1h&limit=20")
                .ok()
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| {
                    v["data"].as_array()?.iter().find(|t| {
                        t["spans"].as_array().is_some_and(|spans| {
                            spans.iter().any(|s| {
                                s["operationName"].as_str().is_some_and(|o| o.contains("/dispatch"))
                            })
                        })
                    }).cloned()
                });
            if let Some(trace) = found {
                break trace;
            }
            if Instant::now() > deadline {
                bail!(
                    "no /dispatch trace in Jaeger after 60 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let first_trace = started.elapsed();
        print!("{}", crate::waterfall::render(&trace, 40));
        println!(
            "\nfrom `cargo xtask demo` to this trace: {:.0}s",
            first_trace.as_secs_f64()
        );
        println!(
            "Reach Jaeger's query API from this machine:\n  {} --kubeconfig {} -n obs port-forward svc/test-query 16686:16686\n  then curl 'http://localhost:16686/api/traces?service=frontend&limit=1'\n(The UI is not there: this Jaeger is built from its Go module, which carries a placeholder page instead of the jaeger-ui bundle; the published jaegertracing/jaeger image has it.)",
            bin.join("kubectl").display(),
            kubeconfig.display()
        );
    }
    println!(
        "\ndone in {:.0}s. Try it yourself:\n  export KUBECONFIG={}\n  {} get pods -A\n  {} inject -f manifests/examples/hotrod-jaeger-operator-style.yaml\nStop and clean up with: cargo xtask demo down",
        started.elapsed().as_secs_f64(),
        kubeconfig.display(),
        bin.join("kubectl").display(),
        tracehook.display(),
    );
    Ok(())
}

pub fn down() -> Result<()> {
    let dir = demo_dir();
    if let Some(pid) = tracehook_pid(&dir) {
        // SAFETY: plain kill(2) on a pid we started and checked is still ours.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        println!("stopped tracehook serve ({pid})");
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    crate::down()
}

/// The pid of the demo's `tracehook serve`, if it still runs.
fn tracehook_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("tracehook.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("tracehook") && cmdline.contains("serve")).then_some(pid)
}

/// The webhook registration of DESIGN.md, reaching the local process by URL.
fn webhook_configuration(port: u16, ca_pem: &[u8]) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: tracehook
webhooks:
  - name: inject.tracehook.dev
    admissionReviewVersions: ["v1"]
    clientConfig:
      url: https://127.0.0.1:{port}/mutate
      caBundle: {ca}
    rules:
      - operations: ["CREATE"]
        apiGroups: [""]
        apiVersions: ["v1"]
        resources: ["pods"]
        scope: Namespaced
    sideEffects: NoneOnDryRun
    reinvocationPolicy: IfNeeded
    failurePolicy: Ignore
    timeoutSeconds: 5
    matchPolicy: Equivalent
    namespaceSelector:
      matchLabels:
        tracehook.dev/injection: enabled
      matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values: ["kube-system", "kube-public", "kube-node-lease", "tracehook"]
"#
    )
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn run_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Read as _;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
