//! Which Jaeger instance an injection request names.
//!
//! `<ns>/<name>` is exact; `<name>` looks in the Pod's namespace first, then for the
//! only instance of that name cluster-wide; `true` takes the only instance in the Pod's
//! namespace, else the only one in the cluster.

use std::fmt;

use super::{SidecarSettings, Skip, SkipReason};

/// A Jaeger instance as the engine sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    pub namespace: String,
    pub name: String,
    pub sidecar: SidecarSettings,
}

/// `<namespace>/<name>` of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceRef {
    pub namespace: String,
    pub name: String,
}

impl InstanceRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `<ns>/<name>`.
    pub fn parse(value: &str) -> Option<Self> {
        let (namespace, name) = value.split_once('/')?;
        (is_dns_label(namespace) && is_dns_label(name)).then(|| Self::new(namespace, name))
    }

    /// The collector's headless Service, which the Jaeger agent balances over by DNS.
    pub fn collector_headless_host(&self) -> String {
        self.host("collector-headless")
    }

    /// The collector's Service, for OTLP.
    pub fn collector_host(&self) -> String {
        self.host("collector")
    }

    /// `<name>-<suffix>.<ns>.svc`; without a namespace (offline, not known), the short
    /// name, which the Pod's DNS search path resolves in its own namespace.
    fn host(&self, suffix: &str) -> String {
        if self.namespace.is_empty() {
            format!("{}-{suffix}", self.name)
        } else {
            format!("{}-{suffix}.{}.svc", self.name, self.namespace)
        }
    }
}

impl fmt::Display for InstanceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Where instances are looked up.
#[derive(Clone, Copy, Debug)]
pub enum Instances<'a> {
    /// The instances the cluster has (the webhook's cache).
    Known(&'a [Instance]),
    /// Offline (`tracehook inject`): any named instance is taken to exist with default
    /// sidecar settings; `true` resolves to `default` when one is given.
    Offline { default: Option<&'a InstanceRef> },
}

/// What an injection request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `true`: the only instance in reach.
    Any,
    /// `<name>`.
    Named(String),
    /// `<ns>/<name>`.
    Qualified(InstanceRef),
}

impl Target {
    /// Parses an annotation value that is not `true`/`false`.
    pub fn parse(value: &str) -> Option<Self> {
        if value.contains('/') {
            InstanceRef::parse(value).map(Target::Qualified)
        } else if is_dns_label(value) {
            Some(Target::Named(value.to_owned()))
        } else {
            None
        }
    }
}

static NO_SIDECAR_SETTINGS: SidecarSettings = SidecarSettings {
    flavor: None,
    image: None,
    resources: super::Resources {
        cpu_request: None,
        memory_request: None,
        cpu_limit: None,
        memory_limit: None,
    },
    agent_options: std::collections::BTreeMap::new(),
};

/// Resolves `target` for a Pod in `pod_namespace`.
pub fn resolve<'a>(
    target: &Target,
    pod_namespace: &str,
    instances: Instances<'a>,
) -> Result<(InstanceRef, &'a SidecarSettings), Skip> {
    match instances {
        Instances::Offline { default } => {
            let found = match target {
                Target::Qualified(r) => r.clone(),
                Target::Named(name) => InstanceRef::new(pod_namespace, name),
                Target::Any => default.cloned().ok_or_else(|| {
                    Skip::new(
                        SkipReason::NoInstance,
                        "injection was requested with `true`, which names no instance: pass --instance NAMESPACE/NAME",
                    )
                })?,
            };
            Ok((found, &NO_SIDECAR_SETTINGS))
        }
        Instances::Known(all) => {
            let found = resolve_known(target, pod_namespace, all)?;
            Ok((
                InstanceRef::new(&found.namespace, &found.name),
                &found.sidecar,
            ))
        }
    }
}

fn resolve_known<'a>(
    target: &Target,
    pod_namespace: &str,
    all: &'a [Instance],
) -> Result<&'a Instance, Skip> {
    match target {
        Target::Qualified(r) => all
            .iter()
            .find(|i| i.namespace == r.namespace && i.name == r.name)
            .ok_or_else(|| {
                Skip::new(
                    SkipReason::UnknownInstance,
                    format!("Jaeger instance {r} does not exist"),
                )
            }),
        Target::Named(name) => {
            if let Some(local) = all
                .iter()
                .find(|i| i.namespace == pod_namespace && &i.name == name)
            {
                return Ok(local);
            }
            only_one(all.iter().filter(|i| &i.name == name)).map_err(|count| {
                if count == 0 {
                    Skip::new(
                        SkipReason::UnknownInstance,
                        format!("no Jaeger instance named {name} exists"),
                    )
                } else {
                    Skip::new(
                        SkipReason::AmbiguousInstance,
                        format!(
                            "{count} Jaeger instances are named {name} and none is in namespace {pod_namespace}: use <namespace>/{name}"
                        ),
                    )
                }
            })
        }
        Target::Any => {
            match only_one(all.iter().filter(|i| i.namespace == pod_namespace)) {
                Ok(local) => return Ok(local),
                Err(count) if count > 1 => {
                    return Err(Skip::new(
                        SkipReason::AmbiguousInstance,
                        format!(
                            "{count} Jaeger instances exist in namespace {pod_namespace}: name one in the annotation"
                        ),
                    ));
                }
                Err(_) => {}
            }
            only_one(all.iter()).map_err(|count| {
                if count == 0 {
                    Skip::new(SkipReason::NoInstance, "no Jaeger instance exists")
                } else {
                    Skip::new(
                        SkipReason::AmbiguousInstance,
                        format!(
                            "{count} Jaeger instances exist and none is in namespace {pod_namespace}: name one in the annotation"
                        ),
                    )
                }
            })
        }
    }
}

/// Why `target` resolved to `found` for a Pod in `pod_namespace`, as a sentence
/// (`tracehook explain`).
pub fn why(target: &Target, pod_namespace: &str, found: &InstanceRef) -> String {
    match target {
        Target::Qualified(r) => format!("the request names {r}"),
        Target::Named(name) if found.namespace == pod_namespace => {
            format!("the request names {name}, which exists in the Pod's namespace")
        }
        Target::Named(name) => format!(
            "the request names {name}: none in namespace {pod_namespace}, and {found} is the only one of that name"
        ),
        Target::Any if found.namespace == pod_namespace => format!(
            "the request is `true`: {found} is the only instance in namespace {pod_namespace}"
        ),
        Target::Any => format!(
            "the request is `true`: none in namespace {pod_namespace}, and {found} is the only instance in the cluster"
        ),
    }
}

/// The single item, or how many there were.
fn only_one<T>(mut items: impl Iterator<Item = T>) -> Result<T, usize> {
    match (items.next(), items.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(0),
        (Some(_), Some(_)) => Err(2 + items.count()),
    }
}

/// An RFC 1123 label: what namespaces and instance names are.
pub fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(ns: &str, name: &str) -> Instance {
        Instance {
            namespace: ns.into(),
            name: name.into(),
            ..Instance::default()
        }
    }

    fn resolved(target: &Target, ns: &str, all: &[Instance]) -> Result<String, SkipReason> {
        resolve(target, ns, Instances::Known(all))
            .map(|(r, _)| r.to_string())
            .map_err(|s| s.reason)
    }

    #[test]
    fn named_prefers_the_pods_namespace() {
        let all = [inst("obs", "test"), inst("app", "test")];
        assert_eq!(
            resolved(&Target::Named("test".into()), "app", &all),
            Ok("app/test".into())
        );
    }

    #[test]
    fn named_falls_back_to_the_only_one_cluster_wide() {
        let all = [inst("obs", "test"), inst("obs", "other")];
        assert_eq!(
            resolved(&Target::Named("test".into()), "app", &all),
            Ok("obs/test".into())
        );
    }

    #[test]
    fn named_twice_elsewhere_is_ambiguous() {
        let all = [inst("a", "test"), inst("b", "test")];
        assert_eq!(
            resolved(&Target::Named("test".into()), "app", &all),
            Err(SkipReason::AmbiguousInstance)
        );
    }

    #[test]
    fn true_takes_the_only_local_then_the_only_global() {
        let all = [inst("obs", "a"), inst("app", "b")];
        assert_eq!(resolved(&Target::Any, "app", &all), Ok("app/b".into()));
        assert_eq!(
            resolved(&Target::Any, "other", &all),
            Err(SkipReason::AmbiguousInstance)
        );
        assert_eq!(
            resolved(&Target::Any, "other", &all[..1]),
            Ok("obs/a".into())
        );
        assert_eq!(
            resolved(&Target::Any, "other", &[]),
            Err(SkipReason::NoInstance)
        );
    }

    #[test]
    fn qualified_must_exist() {
        let all = [inst("obs", "a")];
        let target = Target::parse("obs/b").expect("valid");
        assert_eq!(
            resolved(&target, "app", &all),
            Err(SkipReason::UnknownInstance)
        );
    }

    #[test]
    fn parses_targets() {
        assert_eq!(Target::parse("Test"), None);
        assert_eq!(Target::parse("a/b/c"), None);
        assert_eq!(Target::parse("-a"), None);
        assert_eq!(Target::parse(""), None);
        assert_eq!(Target::parse("test"), Some(Target::Named("test".into())));
    }
}
