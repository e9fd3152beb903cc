//! The install paths checked against the real API server's schemas: the Helm chart
//! (`helm lint`, `helm template` with each mode, the rendering applied with
//! `--dry-run=server`) and `kubectl kustomize manifests/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// helm, built from its Go module by tests/cluster/build-helm.sh (cached).
fn helm() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("tests/cluster/build-helm.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("build-helm.sh runs");
    assert!(out.status.success(), "building helm failed");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    PathBuf::from(stdout.lines().last().expect("a path").trim())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Applies `manifest` with `--dry-run=server`: every object is validated and defaulted
/// by the real API server, nothing is stored.
fn server_dry_run(manifest: &str) -> String {
    let (ok, stdout, stderr) = kubectl_stdin(
        env().cluster,
        &["apply", "--dry-run=server", "-f", "-"],
        manifest,
    );
    assert!(
        ok,
        "server-side dry run rejected the manifests:\n{stderr}\n{stdout}"
    );
    stdout
}

async fn ensure_namespace(name: &str) {
    let (_, _, _) = kubectl_stdin(
        env().cluster,
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"),
    );
}

#[tokio::test]
async fn helm_chart_lints_renders_and_passes_the_api_servers_validation() {
    env();
    let helm = helm();
    let chart = root().join("charts/tracehook");
    run(Command::new(&helm).arg("lint").arg(&chart).arg("--strict"));
    ensure_namespace("tracehook-chart").await;
    let variants: [&[&str]; 4] = [
        &[],
        &[
            "--set",
            "webhook.injectionScope=all-namespaces",
            "--set",
            "webhook.failurePolicy=Fail",
            "--set",
            "sidecar.nativeSidecars=false",
        ],
        &[
            "--set",
            "certificates.mode=files",
            "--set",
            "reconciler.enabled=false",
        ],
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "podDisruptionBudget.enabled=false",
            "--set",
            "webhook.excludedNamespaces={legacy,batch}",
            "--set",
            "extraLabels.team=platform",
        ],
    ];
    for values in variants {
        let rendered = run(Command::new(&helm)
            .args(["template", "tracehook"])
            .arg(&chart)
            .args(["--namespace", "tracehook-chart", "--include-crds"])
            // The `helm test` hook creates its own namespace, which a dry run cannot
            // hold: it is applied for real below.
            .arg("--skip-tests")
            .args(values));
        assert!(!rendered.contains("check-injection"), "tests are skipped");
        for kind in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "ClusterRole",
            "MutatingWebhookConfiguration",
            "CustomResourceDefinition",
        ] {
            assert!(
                rendered.contains(&format!("kind: {kind}")),
                "{values:?} renders a {kind}"
            );
        }
        let applied = server_dry_run(&rendered);
        assert!(
            applied.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/tracehook"),
            "{applied}"
        );
        assert!(applied.contains("(server dry run)"), "{applied}");
    }
    // The `helm test` hook, applied for real (its Role lives in the namespace it creates),
    // then removed the way its hook-delete-policy would.
    let hook = run(Command::new(&helm)
        .args(["template", "tracehook"])
        .arg(&chart)
        .args(["--namespace", "tracehook-chart"])
        .args(["--show-only", "templates/tests/check-injection.yaml"]));
    let (ok, stdout, stderr) = kubectl_stdin(env().cluster, &["apply", "-f", "-"], &hook);
    assert!(ok, "the helm test hook was refused:\n{stderr}\n{stdout}");
    for object in [
        "namespace/tracehook-check created",
        "serviceaccount/tracehook-check created",
        "role.rbac.authorization.k8s.io/tracehook-check created",
        "rolebinding.rbac.authorization.k8s.io/tracehook-check created",
        "pod/tracehook-check created",
    ] {
        assert!(stdout.contains(object), "{object} in:\n{stdout}");
    }
    let (ok, _, stderr) =
        kubectl_stdin(env().cluster, &["delete", "--wait=false", "-f", "-"], &hook);
    assert!(ok, "{stderr}");
    // cert-manager's kinds are not installed here: the rendering is checked, not applied.
    let cert_manager = run(Command::new(&helm)
        .args(["template", "tracehook"])
        .arg(&chart)
        .args([
            "--namespace",
            "tracehook-chart",
            "--set",
            "certificates.mode=cert-manager",
        ]));
    assert!(cert_manager.contains("kind: Certificate"));
    assert!(cert_manager.contains("cert-manager.io/inject-ca-from: tracehook-chart/tracehook"));
    // Invalid values are refused with a message, not rendered.
    let bad = Command::new(&helm)
        .args(["template", "tracehook"])
        .arg(&chart)
        .args(["--set", "certificates.mode=vault"])
        .output()
        .expect("helm runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("certificates.mode must be"));
}

#[tokio::test]
async fn kustomize_manifests_pass_the_api_servers_validation() {
    env();
    let rendered = run(env()
        .cluster
        .kubectl(["kustomize"])
        .arg(root().join("manifests")));
    // Namespaced objects need their namespace to exist for a server-side dry run.
    ensure_namespace("tracehook").await;
    let applied = server_dry_run(&rendered);
    for object in [
        "namespace/tracehook",
        "customresourcedefinition.apiextensions.k8s.io/jaegers.tracehook.dev",
        "serviceaccount/tracehook",
        "clusterrole.rbac.authorization.k8s.io/tracehook-webhook",
        "deployment.apps/tracehook",
        "poddisruptionbudget.policy/tracehook",
        "service/tracehook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/tracehook",
    ] {
        assert!(
            applied.contains(object),
            "{object} missing from:\n{applied}"
        );
    }
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let chart =
        std::fs::read_to_string(root().join("charts/tracehook/crds/crd.yaml")).expect("chart CRD");
    assert_eq!(
        chart,
        tracehook::crd::crd_yaml(),
        "run `tracehook crd > charts/tracehook/crds/crd.yaml`"
    );
}
