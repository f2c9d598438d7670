//! `PolicySet::evaluate` allocates nothing on the common path: counted with a global allocator that counts
//! only on the thread that asks (so other tests' threads do not disturb it).

mod policy_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use authz::policy::Tier;
use policy_support::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn evaluation_does_not_allocate() {
    let s = set(
        Tier::Waypoint,
        &[
            pol("ns/custom", "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: ['/ext/*']}}]}]}"),
            pol("ns/deny", "{action: DENY, rules: [{to: [{operation: {paths: ['/admin*']}}]}, {from: [{source: {notPrincipals: ['*']}}]}]}"),
            pol("ns/allow", "rules: [{from: [{source: {principals: ['*/sa/bob'], ipBlocks: [10.0.0.0/8]}}], to: [{operation: {methods: [GET], hosts: ['*.cluster.local'], paths: ['/api/{*}/items']}}], when: [{key: 'request.headers[x-user]', values: ['b*']}, {key: 'request.auth.claims[groups]', values: [dev]}]}]"),
            pol("ns/audit", "{action: AUDIT, rules: [{to: [{operation: {methods: [GET]}}]}]}"),
            dry(pol("ns/dry", "{action: DENY, rules: [{when: [{key: 'request.headers[x-user]', values: [eve]}]}]}")),
        ],
    );
    let r = R::from("ns", "bob")
        .path("/api/v1/items?page=2")
        .header("x-user", "bob")
        .jwt(
            "https://idp/bob",
            &["api"],
            None,
            r#"{"groups": ["ops", "dev"]}"#,
        );
    let request = r.request();
    let mut verdict = None;
    let n = allocations(|| {
        for _ in 0..100 {
            let d = s.evaluate(&request).unwrap();
            verdict = Some((
                d.verdict,
                d.decided_by.map(|m| m.rule),
                d.audit.is_some(),
                d.providers().count(),
            ));
        }
    });
    assert_eq!(verdict, Some((ALLOW, Some(0), true, 0)));
    assert_eq!(n, 0, "allocations in 100 evaluations");
    // the slow paths do allocate (and are counted): a path to normalize
    let encoded = R::from("ns", "bob").path("/api/%76%31/items");
    let request = encoded.request();
    assert!(
        allocations(|| {
            std::hint::black_box(s.evaluate(&request).unwrap());
        }) > 0
    );
}
