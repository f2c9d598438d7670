//! The kinds read from the API server: their group, version, plural and scope, in the order the store renders
//! them (the order [`mesh::config::Mesh::from_documents`] is happiest with: namespaces before what they hold).
//!
//! Every kind is watched as a [`kube::api::DynamicObject`] through its [`ApiResource`], so CRDs (Gateway API,
//! Istio) need no generated types here: the mesh parser reads the rendered JSON with its own types.

use kube::core::{ApiResource, GroupVersionKind};

/// One kind the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Service,
    Pod,
    EndpointSlice,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    DestinationRule,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    /// Every kind, in render order.
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Service,
        Kind::Pod,
        Kind::EndpointSlice,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ReferenceGrant,
        Kind::DestinationRule,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ];

    /// `(group, version, kind, plural)`.
    const fn gvkp(self) -> (&'static str, &'static str, &'static str, &'static str) {
        const GW: &str = "gateway.networking.k8s.io";
        match self {
            Kind::Namespace => ("", "v1", "Namespace", "namespaces"),
            Kind::Service => ("", "v1", "Service", "services"),
            Kind::Pod => ("", "v1", "Pod", "pods"),
            Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
            Kind::Gateway => (GW, "v1", "Gateway", "gateways"),
            Kind::HttpRoute => (GW, "v1", "HTTPRoute", "httproutes"),
            Kind::GrpcRoute => (GW, "v1", "GRPCRoute", "grpcroutes"),
            // v1beta1 is the version every Gateway API release since 0.6 serves (v1 only from 1.3 on).
            Kind::ReferenceGrant => (GW, "v1beta1", "ReferenceGrant", "referencegrants"),
            Kind::DestinationRule => (
                "networking.istio.io",
                "v1",
                "DestinationRule",
                "destinationrules",
            ),
            Kind::AuthorizationPolicy => (
                "security.istio.io",
                "v1",
                "AuthorizationPolicy",
                "authorizationpolicies",
            ),
            Kind::RequestAuthentication => (
                "security.istio.io",
                "v1",
                "RequestAuthentication",
                "requestauthentications",
            ),
        }
    }

    /// The `kind` field, e.g. `HTTPRoute`.
    pub const fn name(self) -> &'static str {
        self.gvkp().2
    }

    /// Everything but Namespace lives in a namespace.
    pub const fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace)
    }

    /// The resource to build a `kube::Api<DynamicObject>` with.
    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural) = self.gvkp();
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    /// The kind whose `kind` field is `name` (e.g. `HTTPRoute`).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_name_their_group_version_and_plural() {
        let r = Kind::HttpRoute.api_resource();
        assert_eq!(r.api_version, "gateway.networking.k8s.io/v1");
        assert_eq!(r.plural, "httproutes");
        assert_eq!(Kind::Pod.api_resource().api_version, "v1");
        assert_eq!(
            Kind::ReferenceGrant.api_resource().api_version,
            "gateway.networking.k8s.io/v1beta1"
        );
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("Deployment"), None);
        assert!(!Kind::Namespace.namespaced() && Kind::Pod.namespaced());
    }
}
