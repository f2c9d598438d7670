//! The fake API server's HTTP side: routes `/api/v1/…` and `/apis/<group>/<version>/…` paths to list, watch
//! (chunked JSON lines), get, create, replace, merge-patch (object or `/status`) and delete, and records each
//! request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::state::{EventType, Recorded, Refused, Resource, Selector, State};

type Body = BoxBody<Bytes, io::Error>;

/// The state and the tick that announces its changes.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub tick: watch::Sender<u64>,
    pub resources: Vec<Resource>,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            state: Mutex::new(State::default()),
            tick: watch::channel(0).0,
            resources: super::state::resources(),
        }
    }
    /// Reads the state (never call [`Shared::mutate`] while holding it).
    pub fn read(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Changes the state, then wakes every waiter (after the lock is released).
    pub fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let out = f(&mut self.read());
        self.tick.send_modify(|t| *t += 1);
        out
    }
    pub fn resource_by_kind(&self, group: &str, kind: &str) -> Option<Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
    }
}

/// Accepts connections until the listener's task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, shared).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A watch stream we cut ends the connection with an error: expected, not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Where a request points.
struct Target {
    res: Resource,
    api_version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn target(shared: &Shared, path: &str) -> Result<Target, Refused> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(path)),
    };
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" => (Some(*ns), *plural, tail),
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return Err(not_found(path)),
    };
    let res = shared
        .resources
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .cloned()
        .ok_or_else(|| not_found(path))?;
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] => (Some(name.to_string()), true),
        _ => return Err(not_found(path)),
    };
    let api_version = match group {
        "" => version.to_string(),
        g => format!("{g}/{version}"),
    };
    Ok(Target {
        res,
        api_version,
        namespace: namespace.map(str::to_string),
        name,
        status,
    })
}

fn not_found(path: &str) -> Refused {
    Refused {
        code: 404,
        reason: "NotFound",
        message: format!("the server could not find the requested resource ({path})"),
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(Full::new(bytes).map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    resp
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn refused(r: Refused) -> Response<Body> {
    json_response(r.code, &status_body(r.code, r.reason, &r.message))
}

/// An object as served at `api_version`.
fn served(mut object: Value, t: &Target) -> Value {
    object["apiVersion"] = json!(t.api_version);
    object["kind"] = json!(t.res.kind);
    object
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let patch_kind = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes()).ok(),
        Err(_) => None,
    };
    let mut rec = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query,
        body: body.clone(),
        status: 200,
    };
    let resp = match target(&shared, &path) {
        Err(r) => refused(r),
        Ok(t) if method == Method::GET && t.name.is_none() && rec.is_watch() => {
            // Recorded when asked, not when answered: a held watch may wait long.
            let index = shared.mutate(|s| {
                s.requests.push(rec.clone());
                s.requests.len() - 1
            });
            let resp = watch(&shared, &t, &rec).await;
            if resp.status() != StatusCode::OK {
                shared.mutate(|s| s.requests[index].status = resp.status().as_u16());
            }
            return resp;
        }
        Ok(t) => route(&shared, &method, &t, &rec, body, &patch_kind),
    };
    rec.status = resp.status().as_u16();
    shared.mutate(|s| s.requests.push(rec));
    resp
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    t: &Target,
    rec: &Recorded,
    body: Option<Value>,
    content_type: &str,
) -> Response<Body> {
    let ns = t.namespace.clone().unwrap_or_default();
    let result = match (method.as_str(), &t.name) {
        ("GET", None) => return list(shared, t, rec),
        ("GET", Some(name)) => shared
            .read()
            .get(&t.res, &ns, name)
            .cloned()
            .ok_or_else(|| not_found(&rec.path)),
        ("POST", None) => {
            let object = body.unwrap_or(Value::Null);
            shared.mutate(|s| s.create(&t.res, &ns, object))
        }
        ("PUT", Some(name)) => {
            let object = body.unwrap_or(Value::Null);
            shared.mutate(|s| s.replace(&t.res, &ns, name, object, t.status))
        }
        ("PATCH", Some(name)) if content_type.starts_with("application/merge-patch+json") => {
            let patch = body.unwrap_or(Value::Null);
            shared.mutate(|s| {
                let mut object = s
                    .get(&t.res, &ns, name)
                    .cloned()
                    .ok_or_else(|| not_found(&rec.path))?;
                merge_patch(&mut object, &patch);
                s.replace(&t.res, &ns, name, object, t.status)
            })
        }
        ("PATCH", Some(_)) => Err(Refused {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the fake API server speaks merge patches only, not {content_type}"),
        }),
        ("DELETE", Some(name)) => shared.mutate(|s| s.delete(&t.res, &ns, name)),
        _ => Err(Refused {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
        }),
    };
    match result {
        Ok(object) => json_response(200, &served(object, t)),
        Err(r) => refused(r),
    }
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("made an object above");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn selector(rec: &Recorded) -> Result<Selector, Refused> {
    Selector::parse(
        rec.query.get("labelSelector").map(String::as_str),
        rec.query.get("fieldSelector").map(String::as_str),
    )
    .map_err(|message| Refused {
        code: 400,
        reason: "BadRequest",
        message,
    })
}

/// A list at the current `resourceVersion` (unpaged: `limit` is ignored and no `continue` is given).
fn list(shared: &Shared, t: &Target, rec: &Recorded) -> Response<Body> {
    let sel = match selector(rec) {
        Ok(s) => s,
        Err(r) => return refused(r),
    };
    let state = shared.read();
    let items: Vec<Value> = state
        .list(&t.res, t.namespace.as_deref(), &sel)
        .into_iter()
        .map(|o| served(o, t))
        .collect();
    let body = json!({"apiVersion": t.api_version, "kind": format!("{}List", t.res.kind),
        "metadata": {"resourceVersion": state.rv.to_string()}, "items": items});
    json_response(200, &body)
}

/// A watch: waits while watches are held, then `410` when the version is compacted away, else a stream of
/// events after it, live.
async fn watch(shared: &Arc<Shared>, t: &Target, rec: &Recorded) -> Response<Body> {
    let sel = match selector(rec) {
        Ok(s) => s,
        Err(r) => return refused(r),
    };
    let mut tick = shared.tick.subscribe();
    loop {
        tick.borrow_and_update();
        if !shared.read().held {
            break;
        }
        if tick.changed().await.is_err() {
            return refused(not_found(&rec.path));
        }
    }
    let from = rec.resource_version().unwrap_or(0);
    let (gone, as_http, compacted) = {
        let s = shared.read();
        (from != 0 && from < s.compacted, s.gone_as_http, s.compacted)
    };
    let expired = format!("too old resource version: {from} ({compacted})");
    if gone && as_http {
        return json_response(410, &status_body(410, "Expired", &expired));
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(64);
    let watch = Watch {
        shared: shared.clone(),
        res: t.res.clone(),
        api_version: t.api_version.clone(),
        namespace: t.namespace.clone(),
        sel,
        bookmarks: matches!(
            rec.query.get("allowWatchBookmarks").map(String::as_str),
            Some("true" | "1")
        ),
        tx,
    };
    if gone {
        let line = json!({"type": "ERROR", "object": status_body(410, "Expired", &expired)});
        tokio::spawn(async move { watch.send(&line).await });
    } else {
        tokio::spawn(watch.run(from));
    }
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(body)));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    resp
}

/// One open watch stream.
struct Watch {
    shared: Arc<Shared>,
    res: Resource,
    api_version: String,
    namespace: Option<String>,
    sel: Selector,
    bookmarks: bool,
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
}

impl Watch {
    async fn send(&self, line: &Value) -> bool {
        let bytes = Bytes::from(format!("{line}\n"));
        self.tx.send(Ok(Frame::data(bytes))).await.is_ok()
    }

    /// Streams from `from` (0: the current objects as ADDED first).
    async fn run(self, from: u64) {
        let mut tick = self.shared.tick.subscribe();
        let plural = self.res.plural.clone();
        let (mut pos, (cuts, ends), initial) = self.shared.mutate(|s| {
            *s.open_watches.entry(plural.clone()).or_default() += 1;
            let initial = match from {
                0 => s.list(&self.res, self.namespace.as_deref(), &self.sel),
                _ => Vec::new(),
            };
            (
                if from == 0 { s.rv } else { from },
                (s.cuts, s.ends),
                initial,
            )
        });
        let mut ok = true;
        for o in initial {
            ok = ok && self.send(&self.line(EventType::Added, o, 0)).await;
        }
        while ok {
            tick.borrow_and_update();
            let (events, last, cut, end) = {
                let s = self.shared.read();
                let start = s.log.partition_point(|e| e.rv <= pos);
                let events: Vec<Value> = s.log[start..]
                    .iter()
                    .filter_map(|e| self.event(e.event, &e.resource, &e.object, e.rv))
                    .collect();
                let last = s.log.last().map_or(pos, |e| e.rv.max(pos));
                (events, last, s.cuts != cuts, s.ends != ends)
            };
            for e in events {
                ok = ok && self.send(&e).await;
            }
            if cut {
                // Half an event, then the connection breaks: the client must not apply it.
                let partial = Bytes::from_static(b"{\"type\":\"MODIFIED\",\"object\":{\"kind\":");
                let _ = self.tx.send(Ok(Frame::data(partial))).await;
                let _ = self
                    .tx
                    .send(Err(io::Error::other("watch cut by the test")))
                    .await;
                break;
            }
            if end {
                break; // the body ends cleanly, as when a watch's timeoutSeconds runs out
            }
            pos = last;
            tokio::select! {
                changed = tick.changed() => ok = ok && changed.is_ok(),
                _ = self.tx.closed() => ok = false,
            }
        }
        self.shared.mutate(|s| {
            if let Some(n) = s.open_watches.get_mut(&plural) {
                *n = n.saturating_sub(1);
            }
        });
    }

    /// The line for a history entry, if this watch sees it.
    fn event(
        &self,
        ty: EventType,
        resource: &(String, String),
        object: &Value,
        rv: u64,
    ) -> Option<Value> {
        if ty == EventType::Bookmark {
            return self.bookmarks.then(|| self.line(ty, Value::Null, rv));
        }
        if resource.0 != self.res.group || resource.1 != self.res.plural {
            return None;
        }
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
        if self.namespace.as_deref().is_some_and(|want| want != ns) || !self.sel.matches(object) {
            return None;
        }
        Some(self.line(ty, object.clone(), rv))
    }

    fn line(&self, ty: EventType, object: Value, rv: u64) -> Value {
        let object = match ty {
            EventType::Bookmark => json!({"apiVersion": self.api_version, "kind": self.res.kind,
                "metadata": {"resourceVersion": rv.to_string()}}),
            _ => {
                let mut o = object;
                o["apiVersion"] = json!(self.api_version);
                o["kind"] = json!(self.res.kind);
                o
            }
        };
        json!({"type": ty.as_str(), "object": object})
    }
}
