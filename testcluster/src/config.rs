//! The files a cluster is started from (PKI, kubeconfig, kwok's configuration) and
//! each component's command line.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use base64::Engine as _;

use crate::{Cluster, Component, certs, node, write_private};

/// kwok's default node and pod stages (Ready nodes with lease heartbeats; scheduled
/// Pods become Running at once).
const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");

impl Cluster {
    pub(crate) fn write_files(&self) -> Result<()> {
        for sub in [
            "pki",
            "logs",
            "etcd",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let pki = certs::generate()?;
        for (name, pem) in [
            ("ca.crt", &pki.ca_cert),
            ("ca.key", &pki.ca_key),
            ("apiserver.crt", &pki.serving_cert),
            ("apiserver.key", &pki.serving_key),
            ("admin.crt", &pki.admin_cert),
            ("admin.key", &pki.admin_key),
            ("front-proxy-ca.crt", &pki.front_proxy_ca_cert),
            ("front-proxy-client.crt", &pki.front_proxy_client_cert),
            ("front-proxy-client.key", &pki.front_proxy_client_key),
            ("sa.key", &pki.sa_key),
            ("sa.pub", &pki.sa_pub),
        ] {
            write_private(&self.pki(name), pem)?;
        }
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kubeconfig = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: testcluster\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n\
             - name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n\
             - name: testcluster\n  context:\n    cluster: testcluster\n    user: admin\n\
             current-context: testcluster\n",
            self.api_url,
            b64(&pki.ca_cert),
            b64(&pki.admin_cert),
            b64(&pki.admin_key),
        );
        write_private(&self.kubeconfig_path(), &kubeconfig)?;
        // Our own kwok configuration (so no ~/.kwok/kwok.yaml leaks in) holding kwok's
        // default stages: the kwok binary has none built in and exits "no stages found".
        // No KwokConfiguration document: one from a file is not defaulted (kwok then
        // fails "node leases parallelism must be greater than 0"); without it kwok
        // uses its defaulted built-in options.
        write_private(&self.dir.join("kwok.yaml"), KWOK_STAGES)?;
        Ok(())
    }

    pub(crate) fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }

    /// The command line of one component (ports and paths are fixed, so a restart runs
    /// the same command).
    pub(crate) fn command(&self, c: Component) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(c.name()));
        let p = &self.ports;
        let path = |p: PathBuf| p.display().to_string();
        let kubeconfig = path(self.kubeconfig_path());
        let etcd_client = format!("http://127.0.0.1:{}", p.etcd_client);
        let etcd_peer = format!("http://127.0.0.1:{}", p.etcd_peer);
        let args: Vec<String> = match c {
            Component::Etcd => vec![
                "--name=testcluster".into(),
                format!("--data-dir={}", path(self.dir.join("etcd"))),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=testcluster={etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
            ],
            Component::ApiServer => {
                let mut a = vec![
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={}", p.apiserver),
                    format!("--etcd-servers={etcd_client}"),
                    format!("--tls-cert-file={}", path(self.pki("apiserver.crt"))),
                    format!("--tls-private-key-file={}", path(self.pki("apiserver.key"))),
                    format!("--client-ca-file={}", path(self.pki("ca.crt"))),
                    "--authorization-mode=Node,RBAC".into(),
                    format!("--service-account-issuer={}", self.api_url),
                    format!("--service-account-key-file={}", path(self.pki("sa.pub"))),
                    format!(
                        "--service-account-signing-key-file={}",
                        path(self.pki("sa.key"))
                    ),
                    "--service-cluster-ip-range=10.0.0.0/24".into(),
                    "--allow-privileged=true".into(),
                    // Aggregation layer (front proxy); routed to endpoints, as there is
                    // no kube-proxy.
                    format!(
                        "--requestheader-client-ca-file={}",
                        path(self.pki("front-proxy-ca.crt"))
                    ),
                    "--requestheader-allowed-names=front-proxy-client".into(),
                    "--requestheader-username-headers=X-Remote-User".into(),
                    "--requestheader-group-headers=X-Remote-Group".into(),
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                    format!(
                        "--proxy-client-cert-file={}",
                        path(self.pki("front-proxy-client.crt"))
                    ),
                    format!(
                        "--proxy-client-key-file={}",
                        path(self.pki("front-proxy-client.key"))
                    ),
                    "--enable-aggregator-routing=true".into(),
                    // Graceful shutdown in ~2 s instead of the request timeout (60 s):
                    // without it, open watches (controller-manager, scheduler, kwok) keep
                    // the HTTP server's Shutdown waiting, and restart_apiserver hits the
                    // SIGKILL deadline. Requests during shutdown get a Retry-After.
                    "--shutdown-send-retry-after=true".into(),
                ];
                if self.opts.real_node {
                    a.extend(node::apiserver_args(self));
                }
                a.extend(self.opts.apiserver_args.iter().cloned());
                a
            }
            Component::ControllerManager => vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                format!(
                    "--service-account-private-key-file={}",
                    path(self.pki("sa.key"))
                ),
                format!("--root-ca-file={}", path(self.pki("ca.crt"))),
                format!("--cluster-signing-cert-file={}", path(self.pki("ca.crt"))),
                format!("--cluster-signing-key-file={}", path(self.pki("ca.key"))),
                "--controllers=*".into(),
                "--use-service-account-credentials=true".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", p.controller_manager),
                format!("--cert-dir={}", path(self.dir.join(c.name()))),
            ],
            Component::Scheduler => vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", p.scheduler),
                format!("--cert-dir={}", path(self.dir.join(c.name()))),
            ],
            Component::Kwok => vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", path(self.dir.join("kwok.yaml"))),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.0.0.1/24".into(),
                "--node-ip=10.0.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
            ],
        };
        cmd.args(args);
        cmd
    }
}
