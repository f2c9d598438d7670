//! Path normalization before matching, as Istio configures Envoy (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`): so no encoding trick bypasses a DENY.
