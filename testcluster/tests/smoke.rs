//! Starts the shared cluster and runs a Pod on the kwok node.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_on_the_kwok_node() -> anyhow::Result<()> {
    let cluster = testcluster::shared();
    assert_eq!(cluster.server_version().await?, "v1.35.4");

    cluster.create_namespace("smoke").await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, "smoke");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "app" },
        "spec": { "containers": [{ "name": "app", "image": "registry.example/none:1" }] },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pod = pods.get("app").await?;
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Running") {
            assert_eq!(node.as_deref(), Some(testcluster::NODE_NAME));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod not Running after 60s: node {node:?}, phase {phase:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kubectl sees the same cluster.
    let out = cluster
        .kubectl(["get", "pod", "-n", "smoke", "app", "-o", "name"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pod/app");
    Ok(())
}
