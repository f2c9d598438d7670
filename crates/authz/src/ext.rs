//! The CUSTOM action: an external authorizer over gRPC (`envoy.service.auth.v3.Authorization/Check`), with
//! providers named in a mesh config file, per-provider timeout and fail-open/fail-closed.
