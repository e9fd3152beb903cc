//! The `tracehook` command: `serve`, `inject`, `certs`, `crd`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracehook::cluster::heal::Heal;
use tracehook::inject::{Flavor, InstanceRef, Settings};
use tracehook::tls::issue as certs;
use tracehook::{Error, Result, inject_command};

/// mimalloc instead of glibc's malloc: an admission allocates every key and string of
/// the Pod it parses, and glibc's malloc and free were 35–48% of its instructions
/// (BENCHMARKS.md, "Profile of the admission hot path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tracehook",
    version,
    about = "Injects a tracing agent sidecar into Pods at admission"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the admission webhook and run the reconciler.
    Serve(Box<ServeArgs>),
    /// Inject manifests offline, as the webhook would, and print YAML.
    Inject(InjectArgs),
    /// Write a CA and serving certificate for local use.
    Certs(CertsArgs),
    /// Print the Jaeger CustomResourceDefinition.
    Crd,
    /// Check that the webhook injects Pods in a namespace: a Pod created there with
    /// `dryRun` (nothing is stored) must come back with the sidecar and the marker. Exit
    /// 0 when it does, 1 when it does not (the chart's `helm test`).
    CheckInjection(CheckArgs),
    /// Explain, from the live cluster, the decision the webhook would make now for a
    /// Pod or for the Pods a workload creates. Exit 0: injected or would be; 1: not
    /// requested; 2: skipped; 3: missing its sidecar; 4: could not tell (an error).
    Explain(ExplainArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// A namespace the webhook sees (labelled tracehook.dev/injection=enabled).
    #[arg(short = 'n', long)]
    namespace: String,
}

#[derive(Args)]
struct ExplainArgs {
    /// pod/NAME, deployment/NAME, statefulset/NAME, daemonset/NAME, replicaset/NAME,
    /// job/NAME, cronjob/NAME or rollout/NAME.
    subject: tracehook::explain::live::Subject,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// tracehook's registration, whose namespaceSelector says which namespaces the
    /// webhook sees.
    #[arg(long, default_value = "tracehook")]
    webhook_configuration: String,
    /// tracehook's own namespace (never injected), as installed.
    #[arg(long, default_value = "tracehook")]
    tracehook_namespace: String,
    /// As installed (auto = when the API server is at least 1.29).
    #[arg(long, value_enum, default_value = "auto")]
    native_sidecars: NativeSidecars,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NativeSidecars {
    Auto,
    True,
    False,
}

impl NativeSidecars {
    /// `None` for the automatic choice.
    fn chosen(self) -> Option<bool> {
        match self {
            NativeSidecars::Auto => None,
            NativeSidecars::True => Some(true),
            NativeSidecars::False => Some(false),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InjectionScope {
    LabeledNamespaces,
    AllNamespaces,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FlavorArg {
    JaegerAgent,
    OtelCollector,
}

impl From<FlavorArg> for Flavor {
    fn from(f: FlavorArg) -> Self {
        match f {
            FlavorArg::JaegerAgent => Flavor::JaegerAgent,
            FlavorArg::OtelCollector => Flavor::OtelCollector,
        }
    }
}

#[derive(Args, Clone)]
struct SidecarArgs {
    /// Default sidecar flavor (an instance or Pod annotation can choose another).
    #[arg(
        long,
        value_enum,
        default_value = "jaeger-agent",
        env = "TRACEHOOK_DEFAULT_FLAVOR"
    )]
    default_flavor: FlavorArg,
    #[arg(long, default_value = tracehook::inject::DEFAULT_JAEGER_AGENT_IMAGE, env = "TRACEHOOK_JAEGER_AGENT_IMAGE")]
    jaeger_agent_image: String,
    #[arg(long, default_value = tracehook::inject::DEFAULT_OTEL_COLLECTOR_IMAGE, env = "TRACEHOOK_OTEL_COLLECTOR_IMAGE")]
    otel_collector_image: String,
    /// Default sidecar resources (instances and Pod annotations can override them).
    #[arg(long, default_value = tracehook::inject::DEFAULT_CPU_REQUEST)]
    sidecar_cpu_request: String,
    #[arg(long, default_value = tracehook::inject::DEFAULT_MEMORY_REQUEST)]
    sidecar_memory_request: String,
    #[arg(long, default_value = tracehook::inject::DEFAULT_CPU_LIMIT)]
    sidecar_cpu_limit: String,
    #[arg(long, default_value = tracehook::inject::DEFAULT_MEMORY_LIMIT)]
    sidecar_memory_limit: String,
}

#[derive(Args)]
struct ServeArgs {
    /// HTTPS address of `POST /mutate`.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    probe_listen: SocketAddr,
    /// Serving certificate (PEM); reloaded when it changes. Without it, a certificate
    /// is generated in memory.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// tracehook's own namespace (never injected; holds the reconciler's Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tracehook")]
    namespace: String,
    /// The webhook's Service name, for the generated certificate.
    #[arg(long, default_value = "tracehook")]
    service_name: String,
    /// Self-signed mode (no --tls-cert-file): the Secret in --namespace that holds the
    /// CA and serving pair shared by all replicas.
    #[arg(long, default_value = "tracehook-tls")]
    cert_secret: String,
    /// The MutatingWebhookConfiguration that registers tracehook: its selector says
    /// which namespaces the webhook sees (missed injections), and in self-signed mode
    /// its caBundle is kept set.
    #[arg(long, default_value = "tracehook")]
    webhook_configuration: String,
    /// Self-signed mode: lifetime of a serving certificate (e.g. 365d, 12h, 90s).
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    cert_validity: Duration,
    /// Self-signed mode: renew when less than this is left.
    #[arg(long, default_value = "120d", value_parser = parse_duration)]
    cert_renew_before: Duration,
    /// Native sidecars: auto = when the API server is at least 1.29; false = plain
    /// sidecars in `containers` for every Pod (the migration setting for checks that
    /// expect `jaeger-agent` in `containers`, as the Jaeger operator put it).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "TRACEHOOK_NATIVE_SIDECARS"
    )]
    native_sidecars: NativeSidecars,
    /// Which namespaces the webhook registration sends (the chart's
    /// webhook.injectionScope): with labeled-namespaces, workloads annotated for
    /// injection in other namespaces get an InjectionNotEnabled Event.
    #[arg(long, value_enum, default_value = "labeled-namespaces")]
    injection_scope: InjectionScope,
    /// Pods missing their sidecar (found by the leader): off = report them (metric,
    /// Event, the instance's status); report = also say which would be evicted; evict =
    /// evict those a ReplicaSet, StatefulSet or DaemonSet replaces, through the
    /// Eviction API (PodDisruptionBudgets honoured), so the replacement is injected.
    #[arg(
        long,
        value_enum,
        default_value = "off",
        env = "TRACEHOOK_HEAL_MISSING"
    )]
    heal_missing: Heal,
    /// With --heal-missing=evict: at most one eviction per this long, in all.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heal_interval: Duration,
    /// How often the leader looks through the live Pods for missing sidecars.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    missing_scan_interval: Duration,
    /// On SIGTERM, report not ready and keep answering for this long before draining,
    /// while the Service's endpoints and kube-proxy drop this replica (the chart sets
    /// 5s: with failurePolicy Fail, a rolling update then fails no Pod creation).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    shutdown_delay: Duration,
    /// Serve without a cluster: no caches, Events or reconciler (namespaces are taken
    /// to have no labels; for local experiments).
    #[arg(long)]
    no_cluster: bool,
    /// With --no-cluster: the Jaeger instances that exist, as NAMESPACE/NAME
    /// (repeatable).
    #[arg(long = "instance", requires = "no_cluster", value_parser = parse_instance)]
    instances: Vec<InstanceRef>,
    /// Do not serve the webhook (run only the reconciler).
    #[arg(long)]
    no_webhook: bool,
    /// Do not run the reconciler.
    #[arg(long)]
    no_reconciler: bool,
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// Log format: text (colour only on a terminal) or json (one object per line, span
    /// fields as keys, as log pipelines expect).
    #[arg(long, value_enum, default_value = "text", env = "TRACEHOOK_LOG_FORMAT")]
    log_format: LogFormat,
    /// Same as --log-format=json (kept for existing installs).
    #[arg(long, hide = true, env = "TRACEHOOK_LOG_JSON")]
    log_json: bool,
}

#[derive(Args)]
struct InjectArgs {
    /// A YAML or JSON file with one or more documents; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// The instance, NAMESPACE/NAME (default: what the annotation names).
    #[arg(long)]
    instance: Option<String>,
    /// The sidecar flavor (default: the annotation's, else jaeger-agent).
    #[arg(long, value_enum)]
    flavor: Option<FlavorArg>,
    /// Native sidecars (auto = true offline).
    #[arg(long, value_enum, default_value = "auto")]
    native_sidecars: NativeSidecars,
    /// Namespace for documents that name none (default: none, and the output takes the
    /// namespace from the downward API wherever it is applied).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

#[derive(Args)]
struct CertsArgs {
    /// Where ca.crt, tls.crt and tls.key go.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    #[arg(long, default_value = "tracehook")]
    service: String,
    #[arg(long, default_value = "tracehook")]
    namespace: String,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Explain(args) => return explain(args),
        Command::CheckInjection(args) => check_injection(args),
        Command::Serve(args) => serve(*args),
        Command::Inject(args) => inject(args),
        Command::Certs(args) => write_certs(args),
        Command::Crd => {
            print!("{}", tracehook::crd::crd_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracehook: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tracehook check-injection`: a Pod created with `dryRun` comes back injected.
#[tokio::main]
async fn check_injection(args: CheckArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client, &args.namespace);
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "tracehook-check-", "labels": {"app": "tracehook-check"}},
        "spec": {"containers": [{"name": "app", "image": "tracehook.dev/check:0"}]}
    }))?;
    let params = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    // A namespace created a moment ago (the chart's test) has no `default`
    // ServiceAccount yet, and the API server refuses its Pods until it does.
    let mut tries = 0;
    let answer = loop {
        match pods.create(&params, &pod).await {
            Ok(answer) => break answer,
            Err(e) if tries < 15 => {
                tries += 1;
                eprintln!("not yet ({e}); trying again");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let marker = answer
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(tracehook::inject::keys::STATUS));
    let spec = answer.spec.unwrap_or_default();
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| tracehook::inject::sidecar::SIDECAR_NAMES.contains(&c.name.as_str()));
    match (marker, sidecar) {
        (Some(marker), Some(sidecar)) => {
            println!(
                "injected in namespace {}: container {} ({marker})",
                args.namespace, sidecar.name
            );
            Ok(())
        }
        _ => Err(tracehook::Error::Argument(format!(
            "a Pod created in namespace {} came back without the sidecar: is the namespace labelled tracehook.dev/injection=enabled, is a Jaeger instance in reach (kubectl get jaegers -A), and is tracehook ready? (tracehook explain pod/NAME -n {} tells why for a Pod)",
            args.namespace, args.namespace
        ))),
    }
}

/// `tracehook explain`: the explanation on stdout, the verdict as the exit code.
#[tokio::main]
async fn explain(args: ExplainArgs) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = async {
        let client = kube::Client::try_default().await?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let case = tracehook::explain::live::gather(
            client,
            &args.subject,
            &namespace,
            settings(&args.sidecar, true, &args.tracehook_namespace),
            args.native_sidecars.chosen(),
            &args.webhook_configuration,
        )
        .await?;
        Ok::<_, tracehook::Error>(tracehook::explain::explain(&case))
    };
    match run.await {
        Ok(explanation) => {
            print!("{}", explanation.text);
            ExitCode::from(explanation.verdict.code())
        }
        Err(e) => {
            eprintln!("tracehook explain: {e}");
            ExitCode::from(4)
        }
    }
}

fn settings(sidecar: &SidecarArgs, native: bool, own_namespace: &str) -> Settings {
    Settings {
        jaeger_agent_image: sidecar.jaeger_agent_image.clone(),
        otel_collector_image: sidecar.otel_collector_image.clone(),
        default_flavor: sidecar.default_flavor.into(),
        default_resources: tracehook::inject::Resources {
            cpu_request: Some(sidecar.sidecar_cpu_request.clone()),
            memory_request: Some(sidecar.sidecar_memory_request.clone()),
            cpu_limit: Some(sidecar.sidecar_cpu_limit.clone()),
            memory_limit: Some(sidecar.sidecar_memory_limit.clone()),
        },
        native_sidecars: native,
        own_namespace: own_namespace.to_owned(),
    }
}

/// `90s`, `15m`, `12h`, `365d`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 90s, 15m, 12h or 365d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{value:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

fn parse_instance(value: &str) -> Result<InstanceRef, String> {
    InstanceRef::parse(value).ok_or_else(|| format!("{value:?} is not NAMESPACE/NAME"))
}

fn inject(args: InjectArgs) -> Result<()> {
    let input = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::io("reading standard input", e))?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| Error::io(format!("reading {}", args.file), e))?
    };
    let instance = args
        .instance
        .as_deref()
        .map(|s| parse_instance(s).map_err(|e| Error::Argument(format!("--instance {e}"))))
        .transpose()?;
    let native = tracehook::inject::native_sidecars(args.native_sidecars.chosen(), None);
    let options = inject_command::Options {
        settings: settings(&args.sidecar, native, ""),
        instance,
        flavor: args.flavor.map(Flavor::from),
        namespace: args.namespace,
    };
    let output = inject_command::inject_documents(&input, &options)?;
    print!("{output}");
    Ok(())
}

fn write_certs(args: CertsArgs) -> Result<()> {
    let names = certs::service_names(&args.service, &args.namespace);
    let ca = certs::generate_ca(certs::CA_VALIDITY)?;
    let bundle = certs::issue(&ca, &names, Duration::from_secs(args.days * 24 * 3600))?;
    certs::write(&bundle, &args.out)?;
    println!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}",
        args.out.display(),
        names.join(", ")
    );
    Ok(())
}

/// Lines the log writer holds while stderr is slower than tracehook (about 2 MiB of
/// JSON lines, a few tenths of a second of admissions at saturation).
const LOG_BUFFER_LINES: usize = 8_192;

/// Logs go to stderr from a thread of their own, written in batches: an admission
/// never waits on the pipe to the container runtime (a log line per admission, written
/// on the worker thread, was the one system call left in the hot path). When the
/// reader falls behind by more than [`LOG_BUFFER_LINES`] lines, new lines are dropped
/// and counted (`tracehook_log_lines_dropped_total`) rather than admissions delayed.
/// The guard flushes what is buffered when `serve` returns.
fn init_logging(
    format: LogFormat,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    tracing_appender::non_blocking::ErrorCounter,
) {
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("tracehook-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let dropped = writer.error_counter();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        // `kubectl logs` and log shippers read a pipe: colour codes only on a terminal.
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
    (guard, dropped)
}

#[tokio::main]
async fn serve(args: ServeArgs) -> Result<()> {
    let (_flush_logs, dropped_log_lines) = init_logging(if args.log_json {
        LogFormat::Json
    } else {
        args.log_format
    });
    // One crypto provider for the whole process, chosen here rather than left to
    // whichever crate asks first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = tracehook::serve::Config {
        listen: args.listen,
        probe_listen: args.probe_listen,
        tls_files: args.tls_cert_file.zip(args.tls_key_file),
        service_name: args.service_name,
        cert_secret: args.cert_secret,
        webhook_configuration: args.webhook_configuration,
        cert_validity: args.cert_validity,
        cert_renew_before: args.cert_renew_before,
        native_sidecars: args.native_sidecars.chosen(),
        report_unseen: matches!(args.injection_scope, InjectionScope::LabeledNamespaces),
        heal: args.heal_missing,
        heal_interval: args.heal_interval,
        missing_scan_interval: args.missing_scan_interval,
        shutdown_delay: args.shutdown_delay,
        no_cluster: args.no_cluster.then_some(args.instances),
        webhook: !args.no_webhook,
        reconciler: !args.no_reconciler,
        settings: settings(&args.sidecar, true, &args.namespace),
        namespace: args.namespace,
        pod_name: std::env::var("POD_NAME").ok(),
        dropped_log_lines: Some(dropped_log_lines),
    };
    tracehook::serve::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining connections");
}
