//! Fitting the sidecar's resources into what the namespace allows. A LimitRange or a
//! ResourceQuota that refuses the sidecar refuses the whole Pod, so the sidecar must
//! either fit or not be added: tracehook never blocks a Pod by what it adds.
//!
//! The rules are the API server's LimitRanger and ResourceQuota admission plugins, as
//! far as the sidecar changes the outcome: per-container `min`, `max`,
//! `maxLimitRequestRatio` and the `default`/`defaultRequest` the plugin would fill in,
//! the same bounds for the Pod as a whole, and the quota's `hard` minus `used`. Values
//! tracehook chose (its defaults) are moved to fit; values the user chose (annotations,
//! the instance's `spec.sidecar.resources`) are kept, and a Pod they cannot fit is
//! skipped with the object named.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Skip, SkipReason, quantity};

/// The LimitRanges and ResourceQuotas of one namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourcePolicy {
    pub limit_ranges: Vec<LimitRange>,
    pub quotas: Vec<ResourceQuota>,
}

impl ResourcePolicy {
    pub fn is_empty(&self) -> bool {
        self.limit_ranges.is_empty() && self.quotas.is_empty()
    }
}

/// One quantity: its text as written and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Amount {
    pub text: String,
    pub value: f64,
}

impl Amount {
    pub fn parse(text: &str) -> Option<Self> {
        quantity::parse(text).map(|value| Self {
            text: text.to_owned(),
            value,
        })
    }
}

/// Resource name → amount.
pub type AmountMap = BTreeMap<String, Amount>;

/// The bounds of a LimitRange item of one type (`Container` or `Pod`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bounds {
    pub min: AmountMap,
    pub max: AmountMap,
    pub default: AmountMap,
    pub default_request: AmountMap,
    /// Resource name → the largest limit/request ratio.
    pub max_ratio: BTreeMap<String, f64>,
}

impl Bounds {
    fn is_empty(&self) -> bool {
        self.min.is_empty()
            && self.max.is_empty()
            && self.default.is_empty()
            && self.default_request.is_empty()
            && self.max_ratio.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitRange {
    pub name: String,
    pub container: Bounds,
    pub pod: Bounds,
}

impl LimitRange {
    /// Reads a LimitRange's `spec` as the API server stores it. Quantities that do not
    /// parse are left out (the API server validated them; this never happens).
    pub fn from_spec(name: &str, spec: Option<&Value>) -> Self {
        let mut out = LimitRange {
            name: name.to_owned(),
            ..Self::default()
        };
        let items = spec
            .and_then(|s| s.get("limits"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for item in items {
            let target = match item.get("type").and_then(Value::as_str) {
                Some("Container") => &mut out.container,
                Some("Pod") => &mut out.pod,
                _ => continue,
            };
            let read = |key: &str| amounts(item.get(key));
            target.min.extend(read("min"));
            target.max.extend(read("max"));
            target.default.extend(read("default"));
            target.default_request.extend(read("defaultRequest"));
            target.max_ratio.extend(
                read("maxLimitRequestRatio")
                    .into_iter()
                    .map(|(k, a)| (k, a.value)),
            );
        }
        out
    }
}

/// A ResourceQuota: what it allows and what is used, from its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceQuota {
    pub name: String,
    pub hard: AmountMap,
    pub used: AmountMap,
    /// `spec.scopes`, and the `spec.scopeSelector` expressions as (scope, operator,
    /// values).
    pub scopes: Vec<String>,
    pub scope_selector: Vec<(String, String, Vec<String>)>,
}

impl ResourceQuota {
    /// Reads a ResourceQuota's `spec` and `status` as the API server stores them.
    pub fn from_parts(name: &str, spec: Option<&Value>, status: Option<&Value>) -> Self {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let scope_selector = spec
            .and_then(|s| s.pointer("/scopeSelector/matchExpressions"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e.get("scopeName")?.as_str()?.to_owned(),
                    e.get("operator")?.as_str()?.to_owned(),
                    strings(e.get("values")),
                ))
            })
            .collect();
        ResourceQuota {
            name: name.to_owned(),
            hard: amounts(spec.and_then(|s| s.get("hard"))),
            used: amounts(status.and_then(|s| s.get("used"))),
            scopes: strings(spec.and_then(|s| s.get("scopes"))),
            scope_selector,
        }
    }

    /// Does the quota count the Pod (`spec` its spec, after injection: not BestEffort)?
    fn applies_to(&self, spec: &serde_json::Map<String, Value>) -> bool {
        let terminating = spec.get("activeDeadlineSeconds").is_some();
        let priority = spec.get("priorityClassName").and_then(Value::as_str);
        let scope = |name: &str| match name {
            "Terminating" => Some(terminating),
            "NotTerminating" => Some(!terminating),
            "BestEffort" => Some(false),
            "NotBestEffort" => Some(true),
            _ => None,
        };
        let scopes_match = self.scopes.iter().all(|s| scope(s).unwrap_or(true));
        let selector_match = self.scope_selector.iter().all(|(name, op, values)| {
            if name == "PriorityClass" {
                match op.as_str() {
                    "In" => priority.is_some_and(|p| values.iter().any(|v| v == p)),
                    "NotIn" => priority.is_none_or(|p| !values.iter().any(|v| v == p)),
                    "Exists" => priority.is_some(),
                    "DoesNotExist" => priority.is_none(),
                    _ => true,
                }
            } else {
                // Scopes tracehook cannot evaluate count as matching: the sidecar is
                // then checked against the quota, which errs on the side of skipping.
                match (scope(name), op.as_str()) {
                    (None, _) => true,
                    (Some(v), "DoesNotExist" | "NotIn") => !v,
                    (Some(v), _) => v,
                }
            }
        });
        scopes_match && selector_match
    }
}

fn amounts(map: Option<&Value>) -> AmountMap {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Amount::parse(v.as_str()?)?)))
        .collect()
}

/// One resource of the sidecar: request and limit, and whether the user chose each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pair {
    pub request: Option<Amount>,
    pub limit: Option<Amount>,
    pub user_request: bool,
    pub user_limit: bool,
}

/// The sidecar's resources by resource name (`cpu`, `memory`, and any other resource
/// a LimitRange requires).
pub type SidecarResources = BTreeMap<String, Pair>;

/// What the Pod's own containers request and limit, summed, for the Pod-level
/// LimitRange bounds and the quotas. `None` for a resource some container leaves
/// unset with no default to fill it (the check then cannot be the sidecar's fault).
#[derive(Debug, Default)]
struct PodTotals {
    requests: BTreeMap<String, Option<f64>>,
    limits: BTreeMap<String, Option<f64>>,
}

/// Fits `sidecar` into `policy` for a Pod with `spec` whose app containers (and
/// existing sidecars) are `running`.
pub fn fit(
    mut sidecar: SidecarResources,
    policy: &ResourcePolicy,
    spec: &serde_json::Map<String, Value>,
    running: &[&Value],
) -> Result<SidecarResources, Skip> {
    if policy.is_empty() {
        return Ok(sidecar);
    }
    for range in policy
        .limit_ranges
        .iter()
        .filter(|r| !r.container.is_empty())
    {
        apply_defaults(&mut sidecar, &range.container);
    }
    for range in &policy.limit_ranges {
        fit_bounds(&mut sidecar, &range.container, &range.name, "Container")?;
    }
    let totals = PodTotals::of(running, policy);
    for range in &policy.limit_ranges {
        fit_pod(&mut sidecar, &range.pod, &range.name, &totals)?;
    }
    // The bounds may have pulled against each other: check every one again.
    for range in &policy.limit_ranges {
        check_bounds(&sidecar, &range.container, &range.name, "Container", None)?;
        check_bounds(&sidecar, &range.pod, &range.name, "Pod", Some(&totals))?;
    }
    for quota in policy.quotas.iter().filter(|q| q.applies_to(spec)) {
        check_quota(&sidecar, quota, &totals)?;
    }
    Ok(sidecar)
}

/// What LimitRanger would fill in for values the sidecar leaves unset: written out, so
/// that what is checked here is what the API server stores.
fn apply_defaults(sidecar: &mut SidecarResources, bounds: &Bounds) {
    for (resource, default) in &bounds.default {
        let pair = sidecar.entry(resource.clone()).or_default();
        if pair.limit.is_none() {
            pair.limit = Some(default.clone());
        }
    }
    for (resource, default) in &bounds.default_request {
        let pair = sidecar.entry(resource.clone()).or_default();
        if pair.request.is_none() {
            pair.request = Some(default.clone());
        }
    }
    for pair in sidecar.values_mut() {
        if pair.request.is_none() {
            pair.request = pair.limit.clone();
        }
    }
}

fn limit_range_skip(name: &str, message: String) -> Skip {
    Skip::new(
        SkipReason::LimitRange,
        format!(
            "LimitRange {name}: {message}; the sidecar was not added so that the Pod is admitted"
        ),
    )
}

/// Moves the values tracehook chose into one LimitRange item's bounds.
fn fit_bounds(
    sidecar: &mut SidecarResources,
    bounds: &Bounds,
    name: &str,
    kind: &str,
) -> Result<(), Skip> {
    for (resource, max) in &bounds.max {
        let pair = sidecar.entry(resource.clone()).or_default();
        lower(&mut pair.limit, pair.user_limit, max);
        if pair.request.is_some() {
            lower(&mut pair.request, pair.user_request, max);
        }
    }
    for (resource, min) in &bounds.min {
        let pair = sidecar.entry(resource.clone()).or_default();
        raise(&mut pair.request, pair.user_request, min);
        if pair.limit.is_some() {
            raise(&mut pair.limit, pair.user_limit, min);
        }
    }
    for (resource, ratio) in &bounds.max_ratio {
        let pair = sidecar.entry(resource.clone()).or_default();
        fit_ratio(pair, resource, *ratio, bounds.max.get(resource));
    }
    check_bounds(sidecar, bounds, name, kind, None)
}

/// `value` ≤ `bound`, moving it when tracehook chose it (or nothing was set).
fn lower(value: &mut Option<Amount>, user: bool, bound: &Amount) {
    match value {
        Some(v) if v.value > bound.value && !user => *value = Some(bound.clone()),
        None => *value = Some(bound.clone()),
        _ => {}
    }
}

fn raise(value: &mut Option<Amount>, user: bool, bound: &Amount) {
    match value {
        Some(v) if v.value < bound.value && !user => *value = Some(bound.clone()),
        None => *value = Some(bound.clone()),
        _ => {}
    }
}

/// limit / request ≤ `ratio`: the request is raised when tracehook chose it (a larger
/// request costs the scheduler a little; a lower limit would throttle the agent),
/// else the limit is lowered when tracehook chose that.
fn fit_ratio(pair: &mut Pair, resource: &str, ratio: f64, max: Option<&Amount>) {
    let (Some(request), Some(limit)) = (&pair.request, &pair.limit) else {
        return;
    };
    if request.value > 0.0 && limit.value / request.value <= ratio {
        return;
    }
    let wanted = limit.value / ratio;
    if !pair.user_request && max.is_none_or(|m| wanted <= m.value) {
        pair.request = Some(amount(resource, wanted, true));
    } else if !pair.user_limit && request.value > 0.0 {
        pair.limit = Some(amount(resource, request.value * ratio, false));
    }
}

/// An amount computed here, written as Kubernetes would: CPU in millicores, other
/// resources in whole units (binary suffixes when exact), rounded in the safe direction.
fn amount(resource: &str, value: f64, round_up: bool) -> Amount {
    let round = |v: f64| if round_up { v.ceil() } else { v.floor() };
    let text = if resource == "cpu" {
        let milli = round(value * 1000.0 - if round_up { 1e-6 } else { -1e-6 });
        if milli % 1000.0 == 0.0 {
            format!("{}", milli / 1000.0)
        } else {
            format!("{milli}m")
        }
    } else {
        let units = round(value - if round_up { 1e-6 } else { -1e-6 });
        let mib = 1024.0 * 1024.0;
        if units >= mib && units % mib == 0.0 {
            format!("{}Mi", units / mib)
        } else if units >= 1024.0 && units % 1024.0 == 0.0 {
            format!("{}Ki", units / 1024.0)
        } else {
            format!("{units}")
        }
    };
    let value = quantity::parse(&text).unwrap_or(value);
    Amount { text, value }
}

/// The sidecar against one LimitRange item, with the Pod's other containers when the
/// item is of type `Pod`.
fn check_bounds(
    sidecar: &SidecarResources,
    bounds: &Bounds,
    name: &str,
    kind: &str,
    pod: Option<&PodTotals>,
) -> Result<(), Skip> {
    let per = if kind == "Pod" { "Pod" } else { "container" };
    let value = |resource: &str, limit: bool| -> Option<f64> {
        let pair = sidecar.get(resource)?;
        let own = if limit { &pair.limit } else { &pair.request };
        let own = own.as_ref()?.value;
        match pod {
            None => Some(own),
            Some(totals) => {
                let map = if limit {
                    &totals.limits
                } else {
                    &totals.requests
                };
                map.get(resource)
                    .copied()
                    .unwrap_or(Some(0.0))
                    .map(|t| t + own)
            }
        }
    };
    let whose = |user: bool| {
        if user {
            "set by the user"
        } else {
            "tracehook's default"
        }
    };
    for (resource, max) in &bounds.max {
        let pair = sidecar.get(resource).cloned().unwrap_or_default();
        for (limit, user) in [(true, pair.user_limit), (false, pair.user_request)] {
            if let Some(v) = value(resource, limit)
                && v > max.value + 1e-9
            {
                return Err(limit_range_skip(
                    name,
                    format!(
                        "at most {} {resource} per {per}, but the sidecar's {resource} {} ({}) makes it {}",
                        max.text,
                        if limit { "limit" } else { "request" },
                        whose(user),
                        amount(resource, v, true).text
                    ),
                ));
            }
        }
    }
    for (resource, min) in &bounds.min {
        if pod.is_some() {
            // Adding a container only raises the Pod's totals.
            continue;
        }
        let pair = sidecar.get(resource).cloned().unwrap_or_default();
        if let Some(v) = value(resource, false)
            && v + 1e-9 < min.value
        {
            return Err(limit_range_skip(
                name,
                format!(
                    "at least {} {resource} per {per}, but the sidecar's {resource} request is {} ({})",
                    min.text,
                    amount(resource, v, false).text,
                    whose(pair.user_request)
                ),
            ));
        }
    }
    for (resource, ratio) in &bounds.max_ratio {
        let pair = sidecar.get(resource).cloned().unwrap_or_default();
        // The Pod's ratio stays within bounds when the sidecar's own ratio is (the
        // sum of fractions lies between them), so the sidecar's ratio is checked.
        if let (Some(r), Some(l)) = (&pair.request, &pair.limit)
            && (r.value <= 0.0 || l.value / r.value > ratio + 1e-9)
        {
            return Err(limit_range_skip(
                name,
                format!(
                    "a {resource} limit at most {ratio} times the request per {per}, but the sidecar's are {} and {}",
                    r.text, l.text
                ),
            ));
        }
    }
    Ok(())
}

/// Pod-level bounds: the sidecar's values tracehook chose are lowered to what the
/// Pod's `max` leaves.
fn fit_pod(
    sidecar: &mut SidecarResources,
    bounds: &Bounds,
    name: &str,
    totals: &PodTotals,
) -> Result<(), Skip> {
    for (resource, max) in &bounds.max {
        let pair = sidecar.entry(resource.clone()).or_default();
        for (limit, total) in [
            (true, totals.limits.get(resource)),
            (false, totals.requests.get(resource)),
        ] {
            let Some(Some(total)) = total else { continue };
            let room = max.value - total;
            let (value, user) = if limit {
                (&mut pair.limit, pair.user_limit)
            } else {
                (&mut pair.request, pair.user_request)
            };
            if let Some(v) = value
                && v.value > room
                && !user
                && room > 0.0
            {
                *value = Some(amount(resource, room, false));
            }
        }
        if let (Some(r), Some(l)) = (&pair.request, &pair.limit)
            && r.value > l.value
            && !pair.user_request
        {
            pair.request = pair.limit.clone();
        }
    }
    for (resource, ratio) in &bounds.max_ratio {
        let pair = sidecar.entry(resource.clone()).or_default();
        fit_ratio(pair, resource, *ratio, bounds.max.get(resource));
    }
    check_bounds(sidecar, bounds, name, "Pod", Some(totals))
}

impl PodTotals {
    /// Sums the containers' requests and limits, with the LimitRange defaults for the
    /// values they leave unset (the API server fills those in before counting).
    fn of(running: &[&Value], policy: &ResourcePolicy) -> Self {
        let mut totals = PodTotals::default();
        let default_of = |resource: &str, limit: bool| -> Option<f64> {
            policy.limit_ranges.iter().find_map(|r| {
                let map = if limit {
                    &r.container.default
                } else {
                    &r.container.default_request
                };
                map.get(resource).map(|a| a.value)
            })
        };
        let mut names: Vec<String> = policy
            .limit_ranges
            .iter()
            .flat_map(|r| r.pod.max.keys().chain(r.pod.max_ratio.keys()))
            .cloned()
            .collect();
        for quota in &policy.quotas {
            for key in quota.hard.keys() {
                let resource = key
                    .strip_prefix("requests.")
                    .or_else(|| key.strip_prefix("limits."))
                    .unwrap_or(key);
                names.push(resource.to_owned());
            }
        }
        names.sort();
        names.dedup();
        for resource in names {
            let mut request_sum = Some(0.0);
            let mut limit_sum = Some(0.0);
            for c in running {
                let read = |kind: &str| {
                    c.get("resources")
                        .and_then(|r| r.get(kind))
                        .and_then(|m| m.get(&resource))
                        .and_then(Value::as_str)
                        .and_then(quantity::parse)
                };
                let limit = read("limits").or_else(|| default_of(&resource, true));
                let request = read("requests")
                    .or_else(|| default_of(&resource, false))
                    .or(limit);
                request_sum = request_sum.zip(request).map(|(a, b)| a + b);
                limit_sum = limit_sum.zip(limit).map(|(a, b)| a + b);
            }
            totals.requests.insert(resource.clone(), request_sum);
            totals.limits.insert(resource, limit_sum);
        }
        totals
    }
}

/// The sidecar must fit in what the quota has left beside the Pod's own usage. A Pod
/// that does not fit without the sidecar is refused anyway: not the sidecar's doing.
fn check_quota(
    sidecar: &SidecarResources,
    quota: &ResourceQuota,
    totals: &PodTotals,
) -> Result<(), Skip> {
    for (key, hard) in &quota.hard {
        let (resource, limit) = match key.split_once('.') {
            Some(("requests", r)) => (r, false),
            Some(("limits", r)) => (r, true),
            _ if key == "cpu" || key == "memory" || key == "ephemeral-storage" => {
                (key.as_str(), false)
            }
            _ => continue,
        };
        let Some(pair) = sidecar.get(resource) else {
            continue;
        };
        let own = if limit { &pair.limit } else { &pair.request };
        let Some(own) = own else { continue };
        let used = quota.used.get(key).map_or(0.0, |a| a.value);
        let map = if limit {
            &totals.limits
        } else {
            &totals.requests
        };
        let pod = map.get(resource).copied().flatten().unwrap_or(0.0);
        let left = hard.value - used;
        if pod <= left + 1e-9 && pod + own.value > left + 1e-9 {
            return Err(Skip::new(
                SkipReason::ResourceQuota,
                format!(
                    "ResourceQuota {} has {} of {key} left ({} used of {}): the Pod needs {} and the sidecar {} more; the sidecar was not added so that the Pod is admitted",
                    quota.name,
                    amount(resource, left.max(0.0), false).text,
                    quota.used.get(key).map_or("0", |a| a.text.as_str()),
                    hard.text,
                    amount(resource, pod, true).text,
                    own.text
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn a(text: &str) -> Amount {
        Amount::parse(text).expect("quantity")
    }

    fn defaults() -> SidecarResources {
        let pair = |r: &str, l: &str| Pair {
            request: Some(a(r)),
            limit: Some(a(l)),
            user_request: false,
            user_limit: false,
        };
        [
            ("cpu".to_owned(), pair("10m", "200m")),
            ("memory".to_owned(), pair("32Mi", "128Mi")),
        ]
        .into()
    }

    fn range(spec: Value) -> ResourcePolicy {
        ResourcePolicy {
            limit_ranges: vec![LimitRange::from_spec("limits", Some(&spec))],
            quotas: vec![],
        }
    }

    fn text(r: &SidecarResources, resource: &str) -> (String, String) {
        let p = &r[resource];
        (
            p.request
                .as_ref()
                .map(|a| a.text.clone())
                .unwrap_or_default(),
            p.limit.as_ref().map(|a| a.text.clone()).unwrap_or_default(),
        )
    }

    #[test]
    fn lowers_the_default_limit_to_a_container_max() {
        let policy = range(json!({"limits": [{"type": "Container", "max": {"cpu": "150m"}}]}));
        let spec = serde_json::Map::new();
        let r = fit(defaults(), &policy, &spec, &[]).expect("fits");
        assert_eq!(text(&r, "cpu"), ("10m".into(), "150m".into()));
    }

    #[test]
    fn raises_the_default_request_to_meet_a_ratio() {
        let policy = range(
            json!({"limits": [{"type": "Container", "maxLimitRequestRatio": {"cpu": "10"}}]}),
        );
        let r = fit(defaults(), &policy, &serde_json::Map::new(), &[]).expect("fits");
        assert_eq!(text(&r, "cpu"), ("20m".into(), "200m".into()));
    }

    #[test]
    fn a_user_limit_above_the_max_is_skipped() {
        let policy = range(json!({"limits": [{"type": "Container", "max": {"cpu": "150m"}}]}));
        let mut s = defaults();
        s.get_mut("cpu").expect("cpu").user_limit = true;
        let skip = fit(s, &policy, &serde_json::Map::new(), &[]).expect_err("skipped");
        assert_eq!(skip.reason, SkipReason::LimitRange);
        assert!(
            skip.message.contains("LimitRange limits"),
            "{}",
            skip.message
        );
    }

    #[test]
    fn a_required_resource_the_sidecar_does_not_set_is_filled_in() {
        let policy = range(json!({"limits": [{"type": "Container",
            "max": {"ephemeral-storage": "1Gi"}, "min": {"ephemeral-storage": "10Mi"}}]}));
        let r = fit(defaults(), &policy, &serde_json::Map::new(), &[]).expect("fits");
        assert_eq!(text(&r, "ephemeral-storage"), ("10Mi".into(), "1Gi".into()));
    }

    #[test]
    fn a_pod_max_leaves_room_or_skips() {
        let policy = range(json!({"limits": [{"type": "Pod", "max": {"memory": "300Mi"}}]}));
        let app =
            json!({"resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "256Mi"}}});
        let r = fit(defaults(), &policy, &serde_json::Map::new(), &[&app]).expect("fits");
        assert_eq!(text(&r, "memory"), ("32Mi".into(), "44Mi".into()));
        let big = json!({"resources": {"limits": {"memory": "300Mi"}}});
        let skip = fit(defaults(), &policy, &serde_json::Map::new(), &[&big]).expect_err("no room");
        assert_eq!(skip.reason, SkipReason::LimitRange);
    }

    #[test]
    fn a_full_quota_skips_naming_it() {
        let policy = ResourcePolicy {
            limit_ranges: vec![],
            quotas: vec![ResourceQuota::from_parts(
                "compute",
                Some(&json!({"hard": {"requests.cpu": "1", "limits.memory": "1Gi"}})),
                Some(&json!({"used": {"requests.cpu": "950m", "limits.memory": "0"}})),
            )],
        };
        let app = json!({"resources": {"requests": {"cpu": "45m"}, "limits": {"memory": "64Mi"}}});
        let skip = fit(defaults(), &policy, &serde_json::Map::new(), &[&app]).expect_err("full");
        assert_eq!(skip.reason, SkipReason::ResourceQuota);
        assert!(
            skip.message.contains("ResourceQuota compute"),
            "{}",
            skip.message
        );
        // A Pod that does not fit on its own is not the sidecar's doing.
        let hungry =
            json!({"resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}});
        assert!(fit(defaults(), &policy, &serde_json::Map::new(), &[&hungry]).is_ok());
    }

    #[test]
    fn a_quota_for_other_priority_classes_does_not_count() {
        let policy = ResourcePolicy {
            limit_ranges: vec![],
            quotas: vec![ResourceQuota::from_parts(
                "high",
                Some(
                    &json!({"hard": {"requests.cpu": "0"}, "scopeSelector": {"matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}),
                ),
                None,
            )],
        };
        assert!(fit(defaults(), &policy, &serde_json::Map::new(), &[]).is_ok());
        let spec = json!({"priorityClassName": "high"});
        let spec = spec.as_object().expect("object");
        assert!(fit(defaults(), &policy, spec, &[]).is_err());
    }

    #[test]
    fn computed_amounts_are_kubernetes_quantities() {
        assert_eq!(amount("cpu", 0.02, true).text, "20m");
        assert_eq!(amount("cpu", 2.0, true).text, "2");
        assert_eq!(amount("memory", 44.0 * 1024.0 * 1024.0, false).text, "44Mi");
        assert_eq!(amount("memory", 1500.0, false).text, "1500");
    }
}
