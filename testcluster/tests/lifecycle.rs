//! An own (not shared) cluster: data survives etcd and API server restarts, and
//! dropping the cluster leaves no process and no directory behind.

use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use testcluster::{Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_data_and_drop_leaves_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(Options::default())?;
    let dir = cluster.dir().to_owned();
    let url = cluster.api_url().to_owned();

    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await?, "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "survivor" },
        "data": { "k": "v" },
    }))?;
    cms.create(&PostParams::default(), &cm).await?;

    let t = Instant::now();
    cluster.restart_etcd().await?;
    eprintln!("etcd restart took {:?}", t.elapsed());
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await?, "default");
    assert_eq!(cms.get("survivor").await?.data.unwrap()["k"], "v");

    let t = Instant::now();
    cluster.restart_apiserver().await?;
    eprintln!("kube-apiserver restart took {:?}", t.elapsed());
    assert_eq!(cluster.api_url(), url);
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await?, "default");
    assert_eq!(cms.get("survivor").await?.data.unwrap()["k"], "v");

    let pids: Vec<u32> = std::fs::read_to_string(dir.join("pids"))?
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), testcluster::Component::ALL.len());

    let t = Instant::now();
    drop(cluster);
    eprintln!("teardown took {:?}", t.elapsed());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived the drop"
        );
    }
    assert!(!dir.exists(), "{} survived the drop", dir.display());
    Ok(())
}
