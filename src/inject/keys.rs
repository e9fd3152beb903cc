//! Label and annotation keys: the names users and manifests rely on (DESIGN.md).

/// Namespace label: `enabled` / `disabled`.
pub const INJECTION_LABEL: &str = "tracehook.dev/injection";
/// Pod, workload or Namespace annotation: `true`, `false`, `<instance>`, `<ns>/<instance>`.
pub const INJECT: &str = "tracehook.dev/inject";
/// The Jaeger operator's annotation, honoured with its meaning.
pub const JAEGER_OPERATOR_INJECT: &str = "sidecar.jaegertracing.io/inject";
pub const SIDECAR_FLAVOR: &str = "tracehook.dev/sidecar-flavor";
pub const NATIVE_SIDECAR: &str = "tracehook.dev/native-sidecar";
pub const SIDECAR_IMAGE: &str = "tracehook.dev/sidecar-image";
pub const SIDECAR_CPU_REQUEST: &str = "tracehook.dev/sidecar-cpu-request";
pub const SIDECAR_MEMORY_REQUEST: &str = "tracehook.dev/sidecar-memory-request";
pub const SIDECAR_CPU_LIMIT: &str = "tracehook.dev/sidecar-cpu-limit";
pub const SIDECAR_MEMORY_LIMIT: &str = "tracehook.dev/sidecar-memory-limit";
pub const SERVICE_NAME: &str = "tracehook.dev/service-name";
/// Marker annotation: JSON describing what was injected.
pub const STATUS: &str = "tracehook.dev/status";
/// Marker label: `<instance-namespace>.<instance>`.
pub const INJECTED_LABEL: &str = "tracehook.dev/injected";
/// Pods carrying `managed-by=tracehook` belong to the tracing backend itself.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tracehook";
/// Pods labelled `app.kubernetes.io/name=jaeger-operator` are never injected, as the
/// Jaeger operator does.
pub const APP_NAME: &str = "app.kubernetes.io/name";
pub const JAEGER_OPERATOR_APP: &str = "jaeger-operator";

/// Namespaces that are never injected, besides tracehook's own.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
