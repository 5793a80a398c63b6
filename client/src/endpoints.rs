//! Which node to ask: the configured endpoints, their zones, and the order a call tries them in.
//!
//! Order of preference, recomputed at the start of every call:
//! 1. nodes not cooling down (a node that failed is demoted for [`ENDPOINT_COOLDOWN`]),
//! 2. nodes in the client's zone, then nodes whose zone is unknown, then other zones,
//! 3. within a tier, a rotation fixed per client (seeded), so clients spread over a zone's nodes
//!    while each one keeps reusing its pooled connection.
//!
//! Zones come from the builder or are learned from `GET /v1/cluster`, matching a member's
//! `client_addr` (host:port) against an endpoint's authority.
//!
//! Invariants: the endpoint list is fixed at build time, non-empty and free of duplicates; a plan
//! is a permutation of its indexes.
//!
//! Left out: discovering nodes that were not configured (membership changes need a new client),
//! and the retry rules (`retry.rs`).

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Instant;

use crate::error::Error;
use crate::limits::ENDPOINTS_MAX;
use crate::limits::ENDPOINT_COOLDOWN;
use crate::limits::ZONE_LEARN_INTERVAL;

/// One configured node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Normalised base URL without a trailing slash, e.g. `http://127.0.0.1:7001`.
    pub url: String,
    /// `host:port`, to match the `client_addr` of `GET /v1/cluster` members.
    pub authority: String,
}

/// Parses `http://host:port`, `https://host:port` or a bare `host:port` (http). Paths and
/// queries are refused: the client appends API paths itself.
pub(crate) fn parse_endpoint(raw: &str) -> Result<Endpoint, Error> {
    let raw = raw.trim();
    let bad = |why: &str| Error::Config {
        message: format!("endpoint {raw:?} {why}; expected e.g. http://127.0.0.1:7001"),
    };
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    let scheme = url.scheme().to_string();
    if scheme != "http" && scheme != "https" {
        return Err(bad("must use http or https"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a path or query"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let host = url.host_str().ok_or_else(|| bad("has no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad("has no port"))?;
    let authority = format!("{host}:{port}");
    Ok(Endpoint {
        url: format!("{scheme}://{authority}"),
        authority,
    })
}

/// What the client knows about one endpoint right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EndpointState {
    pub zone: Option<String>,
    /// Demoted until this instant after a failure.
    pub cooldown_until: Option<Instant>,
}

/// The preference order (a permutation of `0..states.len()`); see the module doc.
pub(crate) fn plan_order(
    states: &[EndpointState],
    my_zone: Option<&str>,
    rotation: usize,
    now: Instant,
) -> Vec<usize> {
    let n = states.len();
    let mut order: Vec<usize> = (0..n).map(|i| (i + rotation) % n.max(1)).collect();
    // A stable sort keeps the rotation inside each tier.
    order.sort_by_key(|&i| {
        let state = &states[i];
        let cooling = state.cooldown_until.is_some_and(|until| until > now);
        let zone_rank = match (my_zone, state.zone.as_deref()) {
            (None, _) => 0,
            (Some(mine), Some(theirs)) if mine == theirs => 0,
            (Some(_), None) => 1,
            (Some(_), Some(_)) => 2,
        };
        (cooling, zone_rank)
    });
    order
}

struct Shared {
    states: Vec<EndpointState>,
    zones_learned_at: Option<Instant>,
}

/// The configured endpoints and what the client has learned about them.
pub(crate) struct Endpoints {
    list: Vec<Endpoint>,
    my_zone: Option<String>,
    rotation: usize,
    learn_zones: bool,
    shared: Mutex<Shared>,
}

impl Endpoints {
    /// `zones` pairs endpoints (as configured) with their zone. Duplicate endpoints are merged.
    pub(crate) fn new(
        raw: &[String],
        zones: &[(String, String)],
        my_zone: Option<String>,
        learn_zones: bool,
        rotation_seed: usize,
    ) -> Result<Self, Error> {
        let mut list: Vec<Endpoint> = Vec::new();
        for r in raw {
            let endpoint = parse_endpoint(r)?;
            if !list.contains(&endpoint) {
                list.push(endpoint);
            }
        }
        if list.is_empty() {
            return Err(Error::Config {
                message: "no endpoints configured".to_string(),
            });
        }
        if list.len() > ENDPOINTS_MAX {
            return Err(Error::Config {
                message: format!(
                    "{} endpoints configured, at most {ENDPOINTS_MAX}",
                    list.len()
                ),
            });
        }
        let mut states = vec![EndpointState::default(); list.len()];
        for (raw_endpoint, zone) in zones {
            let endpoint = parse_endpoint(raw_endpoint)?;
            let index = list
                .iter()
                .position(|e| *e == endpoint)
                .ok_or_else(|| Error::Config {
                    message: format!("zone given for {raw_endpoint:?}, which is not an endpoint"),
                })?;
            states[index].zone = Some(zone.clone());
        }
        let rotation = rotation_seed % list.len();
        let shared = Mutex::new(Shared {
            states,
            zones_learned_at: None,
        });
        Ok(Endpoints {
            list,
            my_zone,
            rotation,
            learn_zones,
            shared,
        })
    }

    /// A copy limited to one endpoint, for single-node clients.
    pub(crate) fn single(endpoint: &str) -> Result<Self, Error> {
        Self::new(&[endpoint.to_string()], &[], None, false, 0)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn url(&self, index: usize) -> &str {
        &self.list[index].url
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // The state is advisory (ordering hints), so a panic elsewhere cannot leave it invalid.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The order to try endpoints in for a call starting now.
    pub(crate) fn plan(&self, now: Instant) -> Vec<usize> {
        let shared = self.lock();
        plan_order(&shared.states, self.my_zone.as_deref(), self.rotation, now)
    }

    /// Demotes an endpoint after a failure that says something about the node.
    pub(crate) fn mark_failed(&self, index: usize, now: Instant) {
        self.lock().states[index].cooldown_until = Some(now + ENDPOINT_COOLDOWN);
    }

    /// Restores an endpoint that answered.
    pub(crate) fn mark_ok(&self, index: usize) {
        self.lock().states[index].cooldown_until = None;
    }

    /// True when zones should be (re)learned now: the client has a zone, some endpoint's zone is
    /// unknown, and the last try was long enough ago. Claims the try, so concurrent calls do not
    /// all ask.
    pub(crate) fn claim_zone_learning(&self, now: Instant) -> bool {
        if !self.learn_zones || self.my_zone.is_none() {
            return false;
        }
        let mut shared = self.lock();
        if shared.states.iter().all(|s| s.zone.is_some()) {
            return false;
        }
        if shared
            .zones_learned_at
            .is_some_and(|at| now.duration_since(at) < ZONE_LEARN_INTERVAL)
        {
            return false;
        }
        shared.zones_learned_at = Some(now);
        true
    }

    /// Records zones from cluster members, given as (`client_addr`, zone). Zones set by the
    /// builder are overwritten too: the cluster knows best.
    pub(crate) fn learn_zones<'a>(&self, members: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut shared = self.lock();
        for (client_addr, zone) in members {
            if zone.is_empty() {
                continue;
            }
            if let Some(index) = self.list.iter().position(|e| e.authority == client_addr) {
                shared.states[index].zone = Some(zone.to_string());
            }
        }
    }

    /// The known zone of each endpoint, for diagnostics.
    pub(crate) fn zones(&self) -> Vec<(String, Option<String>)> {
        let shared = self.lock();
        self.list
            .iter()
            .zip(&shared.states)
            .map(|(e, s)| (e.url.clone(), s.zone.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn zoned(zones: &[Option<&str>]) -> Vec<EndpointState> {
        zones
            .iter()
            .map(|z| EndpointState {
                zone: z.map(str::to_string),
                cooldown_until: None,
            })
            .collect()
    }

    #[test]
    fn endpoints_parse_and_normalise() {
        let e = parse_endpoint("http://127.0.0.1:7001/").expect("valid");
        assert_eq!(e.url, "http://127.0.0.1:7001");
        assert_eq!(e.authority, "127.0.0.1:7001");
        assert_eq!(
            parse_endpoint("127.0.0.1:7002").expect("valid").url,
            "http://127.0.0.1:7002"
        );
        assert_eq!(parse_endpoint("http://h").expect("valid").authority, "h:80");
        assert_eq!(
            parse_endpoint("[::1]:7001").expect("valid").url,
            "http://[::1]:7001"
        );
        assert_eq!(
            parse_endpoint("https://h:1").expect("valid").url,
            "https://h:1"
        );
        for bad in [
            "http://h:1/v1",
            "http://h:1?x=1",
            "http://u:p@h:1",
            "",
            "ftp://h",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(Error::Config { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn same_zone_comes_first_then_unknown_then_others() {
        let now = Instant::now();
        let states = zoned(&[Some("dc-b"), None, Some("dc-a"), Some("dc-c"), Some("dc-a")]);
        assert_eq!(
            plan_order(&states, Some("dc-a"), 0, now),
            vec![2, 4, 1, 0, 3]
        );
        // Without a zone of our own, only the rotation matters.
        assert_eq!(plan_order(&states, None, 2, now), vec![2, 3, 4, 0, 1]);
    }

    #[test]
    fn rotation_spreads_clients_within_a_zone() {
        let now = Instant::now();
        let states = zoned(&[Some("dc-a"), Some("dc-a"), Some("dc-b")]);
        assert_eq!(plan_order(&states, Some("dc-a"), 0, now), vec![0, 1, 2]);
        assert_eq!(plan_order(&states, Some("dc-a"), 1, now), vec![1, 0, 2]);
        assert_eq!(plan_order(&states, Some("dc-a"), 2, now), vec![0, 1, 2]);
    }

    #[test]
    fn a_failed_node_rotates_to_the_back_until_its_cooldown_ends() {
        let endpoints = Endpoints::new(
            &[
                "http://a:1".into(),
                "http://b:1".into(),
                "http://c:1".into(),
            ],
            &[
                ("http://a:1".into(), "dc-a".into()),
                ("http://b:1".into(), "dc-a".into()),
            ],
            Some("dc-a".into()),
            true,
            0,
        )
        .expect("valid");
        let now = Instant::now();
        assert_eq!(endpoints.plan(now), vec![0, 1, 2]);
        endpoints.mark_failed(0, now);
        assert_eq!(endpoints.plan(now), vec![1, 2, 0]);
        endpoints.mark_failed(1, now);
        assert_eq!(endpoints.plan(now), vec![2, 0, 1]);
        // After the cooldown the same-zone nodes are preferred again.
        let later = now + ENDPOINT_COOLDOWN + Duration::from_millis(1);
        assert_eq!(endpoints.plan(later), vec![0, 1, 2]);
        endpoints.mark_ok(1);
        assert_eq!(endpoints.plan(now), vec![1, 2, 0]);
    }

    #[test]
    fn zones_are_learned_from_client_addrs() {
        let endpoints = Endpoints::new(
            &[
                "http://127.0.0.1:7001".into(),
                "127.0.0.1:7002".into(),
                "127.0.0.1:7003".into(),
            ],
            &[],
            Some("dc-b".into()),
            true,
            0,
        )
        .expect("valid");
        let now = Instant::now();
        assert!(endpoints.claim_zone_learning(now));
        assert!(
            !endpoints.claim_zone_learning(now),
            "claimed once per interval"
        );
        endpoints.learn_zones([
            ("127.0.0.1:7001", "dc-a"),
            ("127.0.0.1:7002", "dc-a"),
            ("127.0.0.1:7003", "dc-b"),
            ("10.0.0.9:7001", "dc-c"),
        ]);
        assert_eq!(endpoints.plan(now), vec![2, 0, 1]);
        assert!(
            !endpoints.claim_zone_learning(now + ZONE_LEARN_INTERVAL * 2),
            "all known"
        );
    }

    #[test]
    fn configuration_errors_are_reported() {
        assert!(Endpoints::new(&[], &[], None, false, 0).is_err());
        let zone_for_stranger = [("http://z:1".to_string(), "dc-a".to_string())];
        assert!(
            Endpoints::new(&["http://a:1".into()], &zone_for_stranger, None, false, 0).is_err()
        );
        let dup = Endpoints::new(&["http://a:1".into(), "a:1".into()], &[], None, false, 7)
            .expect("duplicates merge");
        assert_eq!(dup.len(), 1);
        assert_eq!(dup.plan(Instant::now()), vec![0]);
    }
}
