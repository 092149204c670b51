//! Typed services, remote objects and discovery: DataSnap's server classes on top of the
//! command engine.
//!
//! - A [`Method`] names a method of a service and fixes its argument and result types; a
//!   constant shared by server and client code makes calls typed end to end.
//! - A [`Service`] is a set of stateless methods; a [`Class`] is a service whose instances
//!   a client creates ([`Calls::create`](crate::Calls::create)), calls ([`RemoteObject::call`]) and frees.
//!   Instances belong to the connection that created them and are dropped when it closes.
//! - [`Services`] holds them all and is mounted on a [`Router`] with
//!   [`Router::services`]; it can expose only an allow-list ([`Services::expose_only`],
//!   DataSnap's "registered only").
//! - A client resolves a service's method names to numeric ids once per connection (one
//!   `$svc.resolve` call); every call after that carries the id, not the name.
//! - [`Calls::services`](crate::Calls::services) lists what the server offers, with type names.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use zserver_core::service::{Class, Method, ObjectId, Service, Services};
//! use zserver_core::{Error, Router};
//!
//! // Shared by server and client.
//! const ADD: Method<(i64, i64), i64> = Method::new("calc", "add");
//! const NEW_COUNTER: Method<u64, ObjectId> = Method::new("counter", "new");
//! const BUMP: Method<u64, u64> = Method::new("counter", "bump");
//!
//! struct Counter(std::sync::atomic::AtomicU64);
//!
//! let services = Services::new()
//!     .service(Service::new("calc").method(ADD, |_ctx, (a, b)| async move { Ok(a + b) }))
//!     .class(
//!         Class::new(NEW_COUNTER, |_ctx, start| async move {
//!             Ok(Counter(std::sync::atomic::AtomicU64::new(start)))
//!         })
//!         .method(BUMP, |_ctx, counter, by| async move {
//!             Ok(counter.0.fetch_add(by, std::sync::atomic::Ordering::Relaxed) + by)
//!         }),
//!     );
//! let router = Router::new().services(services);
//! # let _ = router;
//! // Client side: `client.invoke(&ADD, &(1, 2)).await?`,
//! // `let c = client.create(&NEW_COUNTER, &10).await?; c.call(&BUMP, &1).await?; c.free().await?`.
//! ```

use std::any::{type_name, Any};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;
use crate::error::Error;
use crate::handler::{Context, Router};
use crate::runtime::BoxFuture;

/// Lists the services a server offers.
pub const LIST: &str = "$svc.list";
/// Resolves one service's method names to ids.
pub const RESOLVE: &str = "$svc.resolve";
/// Calls a method by id (a service method, a constructor, or an instance method).
pub const CALL: &str = "$svc.call";
/// Frees a remote object.
pub const FREE: &str = "$svc.free";

/// Remote objects one connection may hold at once by default.
pub const DEFAULT_MAX_OBJECTS: usize = 10_000;

/// A method of a service, with its argument and result types. Declare it once as a
/// constant shared by server and client.
pub struct Method<A, R> {
    service: &'static str,
    name: &'static str,
    types: PhantomData<fn(A) -> R>,
}

impl<A, R> Method<A, R> {
    /// The method `name` of service `service`.
    pub const fn new(service: &'static str, name: &'static str) -> Self {
        Self {
            service,
            name,
            types: PhantomData,
        }
    }

    /// The service's name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<A, R> Clone for Method<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, R> Copy for Method<A, R> {}

/// What a class's constructor returns to the client: the new object's id on this
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectId(pub u64);

/// One method as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// The method's name.
    pub name: String,
    /// Its id, valid on the server that reported it.
    pub id: u32,
    /// The argument's Rust type name.
    pub argument: String,
    /// The result's Rust type name.
    pub result: String,
    /// Whether it creates an instance of its class.
    pub constructor: bool,
}

/// One service as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The service's name.
    pub name: String,
    /// Whether it is a class (its instances are remote objects).
    pub class: bool,
    /// Its methods.
    pub methods: Vec<MethodInfo>,
}

/// A boxed instance of some class.
type Instance = Arc<dyn Any + Send + Sync>;

/// What a method's code gives back.
enum Output {
    Value(Vec<u8>),
    Object(Instance),
}

type Invoke = Arc<
    dyn Fn(Context, Option<Instance>, Bytes) -> BoxFuture<'static, Result<Output, Error>>
        + Send
        + Sync,
>;

/// How a method is called.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Static,
    Constructor,
    Instance,
}

struct Entry {
    name: &'static str,
    argument: &'static str,
    result: &'static str,
    shape: Shape,
    invoke: Invoke,
}

fn decode<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::BadRequest(e.to_string()))
}

fn entry<A, R, Fut>(
    method: Method<A, R>,
    shape: Shape,
    run: impl Fn(Context, Option<Instance>, A) -> Fut + Send + Sync + 'static,
) -> Entry
where
    A: DeserializeOwned + Send + 'static,
    Fut: Future<Output = Result<Output, Error>> + Send + 'static,
{
    let invoke: Invoke = Arc::new(move |ctx, object, bytes: Bytes| match decode::<A>(&bytes) {
        Ok(argument) => Box::pin(run(ctx, object, argument)),
        Err(e) => Box::pin(async move { Err(e) }),
    });
    Entry {
        name: method.name,
        argument: type_name::<A>(),
        result: type_name::<R>(),
        shape,
        invoke,
    }
}

fn encoded<R: Serialize>(value: &R) -> Result<Output, Error> {
    Ok(Output::Value(postcard::to_allocvec(value)?))
}

/// A set of stateless methods.
pub struct Service {
    name: &'static str,
    methods: Vec<Entry>,
}

impl Service {
    /// A service called `name`, with no methods yet.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            methods: Vec::new(),
        }
    }

    /// Adds `method`, run by `f`. Panics if the method belongs to another service.
    pub fn method<A, R, F, Fut>(mut self, method: Method<A, R>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
    {
        assert_eq!(method.service, self.name, "method of another service");
        let f = Arc::new(f);
        self.methods.push(entry(
            method,
            Shape::Static,
            move |ctx, _object, argument| {
                let reply = f(ctx, argument);
                async move { encoded(&reply.await?) }
            },
        ));
        self
    }
}

/// A service whose instances are remote objects of type `S`, created by its constructor
/// and owned by the connection that created them.
pub struct Class<S> {
    name: &'static str,
    methods: Vec<Entry>,
    state: PhantomData<fn() -> S>,
}

impl<S: Send + Sync + 'static> Class<S> {
    /// A class whose instances `constructor` makes (its service name is the class's).
    pub fn new<A, F, Fut>(constructor: Method<A, ObjectId>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, Error>> + Send + 'static,
    {
        let make = entry(
            constructor,
            Shape::Constructor,
            move |ctx, _object, argument| {
                let made = f(ctx, argument);
                async move { Ok(Output::Object(Arc::new(made.await?) as Instance)) }
            },
        );
        Self {
            name: constructor.service,
            methods: vec![make],
            state: PhantomData,
        }
    }

    /// Adds an instance method: `f` gets the object it is called on.
    pub fn method<A, R, F, Fut>(mut self, method: Method<A, R>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(Context, Arc<S>, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
    {
        assert_eq!(method.service, self.name, "method of another class");
        let f = Arc::new(f);
        let name = self.name;
        self.methods.push(entry(
            method,
            Shape::Instance,
            move |ctx, object, argument| {
                let object = object.and_then(|o| o.downcast::<S>().ok());
                let reply = object.map(|o| f(ctx, o, argument));
                async move {
                    match reply {
                        Some(reply) => encoded(&reply.await?),
                        None => Err(Error::NoSuchObject(format!("not an instance of `{name}`"))),
                    }
                }
            },
        ));
        self
    }
}

struct ServiceEntry {
    name: &'static str,
    class: bool,
    /// Ids of its methods in `Services::methods`.
    methods: Vec<u32>,
}

/// Every service and class a server offers, mounted with [`Router::services`].
pub struct Services {
    services: Vec<ServiceEntry>,
    methods: Vec<(usize, Entry)>,
    exposed: Option<HashSet<String>>,
    max_objects: usize,
    checks: Vec<Check>,
}

/// A check run before every method call: `(context, service, method)`.
type Check = Box<dyn Fn(&Context, &str, &str) -> Result<(), Error> + Send + Sync>;

impl Default for Services {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            methods: Vec::new(),
            exposed: None,
            max_objects: DEFAULT_MAX_OBJECTS,
            checks: Vec::new(),
        }
    }
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, name: &'static str, class: bool, methods: Vec<Entry>) -> Self {
        assert!(
            self.services.iter().all(|s| s.name != name),
            "service `{name}` registered twice"
        );
        let index = self.services.len();
        let mut ids = Vec::new();
        for method in methods {
            assert!(
                ids.iter()
                    .all(|&id: &u32| self.methods[id as usize].1.name != method.name),
                "method `{name}.{}` registered twice",
                method.name
            );
            ids.push(self.methods.len() as u32);
            self.methods.push((index, method));
        }
        self.services.push(ServiceEntry {
            name,
            class,
            methods: ids,
        });
        self
    }

    /// Adds a service.
    pub fn service(self, service: Service) -> Self {
        self.add(service.name, false, service.methods)
    }

    /// Adds a class.
    pub fn class<S: Send + Sync + 'static>(self, class: Class<S>) -> Self {
        self.add(class.name, true, class.methods)
    }

    /// Offers only these services: the others are neither listed nor callable
    /// (DataSnap's "registered only").
    pub fn expose_only<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.exposed = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Runs `check` before every method call (constructors and instance methods too) with
    /// the connection and the service and method names, for authorisation and logging by
    /// method (a router hook sees them all as `$svc.call`). An error vetoes the call: the
    /// caller gets [`Error::Denied`] and the method does not run.
    ///
    /// ```
    /// # use zserver_core::service::Services;
    /// # use zserver_core::Error;
    /// let services = Services::new().on_call(|ctx, service, _method| {
    ///     if service == "admin" && !ctx.peer_addr().ip().is_loopback() {
    ///         return Err(Error::Denied("admin only from this host".into()));
    ///     }
    ///     Ok(())
    /// });
    /// # let _ = services;
    /// ```
    pub fn on_call(
        mut self,
        check: impl Fn(&Context, &str, &str) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.checks.push(Box::new(check));
        self
    }

    /// Remote objects one connection may hold at once; creating more fails.
    pub fn max_objects_per_connection(mut self, max: usize) -> Self {
        self.max_objects = max;
        self
    }

    fn exposed(&self, service: &ServiceEntry) -> bool {
        self.exposed
            .as_ref()
            .is_none_or(|names| names.contains(service.name))
    }

    fn info(&self, service: &ServiceEntry) -> ServiceInfo {
        ServiceInfo {
            name: service.name.to_owned(),
            class: service.class,
            methods: service
                .methods
                .iter()
                .map(|&id| {
                    let m = &self.methods[id as usize].1;
                    MethodInfo {
                        name: m.name.to_owned(),
                        id,
                        argument: m.argument.to_owned(),
                        result: m.result.to_owned(),
                        constructor: m.shape == Shape::Constructor,
                    }
                })
                .collect(),
        }
    }

    fn list(&self) -> Vec<ServiceInfo> {
        self.services
            .iter()
            .filter(|s| self.exposed(s))
            .map(|s| self.info(s))
            .collect()
    }

    fn resolve(&self, name: &str) -> Result<ServiceInfo, Error> {
        self.services
            .iter()
            .find(|s| s.name == name && self.exposed(s))
            .map(|s| self.info(s))
            .ok_or_else(|| Error::UnknownCommand(format!("service `{name}`")))
    }

    async fn call(&self, ctx: Context, request: Bytes) -> Result<Vec<u8>, Error> {
        let (head, rest): (CallHead, &[u8]) =
            postcard::take_from_bytes(&request).map_err(|e| Error::BadRequest(e.to_string()))?;
        let argument = request.slice_ref(rest);
        let (service, entry) = self
            .methods
            .get(head.method as usize)
            .filter(|(service, _)| self.exposed(&self.services[*service]))
            .ok_or_else(|| Error::UnknownCommand(format!("method #{}", head.method)))?;
        let service_name = self.services[*service].name;
        for check in &self.checks {
            check(&ctx, service_name, entry.name).map_err(|e| match e {
                Error::Denied(_) => e,
                other => Error::Denied(other.to_string()),
            })?;
        }
        let objects = ctx.connection().extension::<Objects>();
        let object = match (entry.shape, head.object) {
            (Shape::Instance, 0) => {
                return Err(Error::BadRequest(format!(
                    "`{}.{}` is called on an object",
                    self.services[*service].name, entry.name
                )))
            }
            (Shape::Instance, id) => Some(objects.get(id, *service)?),
            (Shape::Constructor, 0) => {
                // Checked before the constructor runs, so nothing is built to be thrown away.
                objects.has_room(self.max_objects)?;
                None
            }
            (_, 0) => None,
            (_, _) => {
                return Err(Error::BadRequest(format!(
                    "`{}.{}` is not called on an object",
                    self.services[*service].name, entry.name
                )))
            }
        };
        match (entry.invoke)(ctx, object, argument).await? {
            Output::Value(bytes) => Ok(bytes),
            Output::Object(instance) => {
                let id = objects.insert(instance, *service, self.max_objects)?;
                Ok(postcard::to_allocvec(&ObjectId(id))?)
            }
        }
    }
}

/// The head of a `$svc.call` request; the argument follows it.
#[derive(Serialize, Deserialize)]
struct CallHead {
    method: u32,
    /// 0 for a service method or a constructor.
    object: u64,
}

/// The error for a connection that holds `max` objects already.
fn full(held: usize, max: usize) -> Result<(), Error> {
    if held >= max {
        return Err(Error::Remote(format!(
            "this connection already holds {max} remote objects"
        )));
    }
    Ok(())
}

/// The remote objects of one connection (server side).
#[derive(Default)]
struct Objects {
    next: AtomicU64,
    live: Mutex<HashMap<u64, (Instance, usize)>>,
}

impl Objects {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instance, usize)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_room(&self, max: usize) -> Result<(), Error> {
        full(self.live().len(), max)
    }

    fn insert(&self, instance: Instance, service: usize, max: usize) -> Result<u64, Error> {
        let mut live = self.live();
        full(live.len(), max)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        live.insert(id, (instance, service));
        Ok(id)
    }

    fn get(&self, id: u64, service: usize) -> Result<Instance, Error> {
        match self.live().get(&id) {
            Some((instance, of)) if *of == service => Ok(instance.clone()),
            Some(_) => Err(Error::NoSuchObject(format!(
                "object #{id} is of another class"
            ))),
            None => Err(Error::NoSuchObject(format!(
                "no object #{id} on this connection (freed, or never created here)"
            ))),
        }
    }

    fn free(&self, id: u64) -> Result<(), Error> {
        // Dropped outside the lock: an instance's `Drop` may take its time.
        let freed = self.live().remove(&id);
        freed.map(drop).ok_or_else(|| {
            Error::NoSuchObject(format!(
                "no object #{id} on this connection (freed, or never created here)"
            ))
        })
    }
}

impl Router {
    /// Mounts `services`: registers the built-in commands `$svc.list`, `$svc.resolve`,
    /// `$svc.call` and `$svc.free` that serve them.
    pub fn services(self, services: Services) -> Self {
        let services = Arc::new(services);
        let (list, resolve, call) = (services.clone(), services.clone(), services);
        self.bytes(LIST, move |_ctx, _bytes| {
            let infos = list.list();
            async move { Ok(postcard::to_allocvec(&infos)?) }
        })
        .bytes(RESOLVE, move |_ctx, bytes| {
            let info = decode::<String>(&bytes).and_then(|name| resolve.resolve(&name));
            async move { Ok(postcard::to_allocvec(&info?)?) }
        })
        .bytes(CALL, move |ctx, bytes| {
            let services = call.clone();
            async move { services.call(ctx, bytes).await }
        })
        .bytes(FREE, |ctx, bytes| async move {
            let ObjectId(id) = decode(&bytes)?;
            ctx.connection().extension::<Objects>().free(id)?;
            Ok(Vec::new())
        })
    }
}

/// The method ids this side resolved, per service, for one connection (client side).
#[derive(Default)]
struct Resolved {
    services: Mutex<HashMap<&'static str, Arc<HashMap<String, u32>>>>,
}

impl Connection {
    /// The services the peer offers, with their methods' ids and type names.
    pub(crate) async fn list_services(&self) -> Result<Vec<ServiceInfo>, Error> {
        let bytes = self.call_raw(LIST, b"", None).await?;
        postcard::from_bytes(&bytes).map_err(|e| Error::Payload(e.to_string()))
    }

    /// The id of `method` on this connection, asking the peer once per service.
    async fn method_id<A, R>(&self, method: &Method<A, R>) -> Result<u32, Error> {
        let resolved = self.extension::<Resolved>();
        let cached = resolved
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(method.service)
            .cloned();
        let ids = match cached {
            Some(ids) => ids,
            None => {
                let request = postcard::to_allocvec(method.service)?;
                let bytes = self.call_raw(RESOLVE, &request, None).await?;
                let info: ServiceInfo =
                    postcard::from_bytes(&bytes).map_err(|e| Error::Payload(e.to_string()))?;
                let ids: Arc<HashMap<String, u32>> =
                    Arc::new(info.methods.into_iter().map(|m| (m.name, m.id)).collect());
                resolved
                    .services
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(method.service, ids.clone());
                ids
            }
        };
        ids.get(method.name)
            .copied()
            .ok_or_else(|| Error::UnknownCommand(format!("{}.{}", method.service, method.name)))
    }

    async fn call_method<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &Method<A, R>,
        object: u64,
        argument: &A,
    ) -> Result<R, Error> {
        let id = self.method_id(method).await?;
        let head = CallHead { method: id, object };
        let request = postcard::to_extend(argument, postcard::to_allocvec(&head)?)?;
        let bytes = self.call_raw(CALL, &request, None).await?;
        postcard::from_bytes(&bytes).map_err(|e| Error::Payload(e.to_string()))
    }

    /// Calls a service method, typed end to end.
    pub(crate) async fn invoke_method<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &Method<A, R>,
        argument: &A,
    ) -> Result<R, Error> {
        self.call_method(method, 0, argument).await
    }

    /// Creates an instance of a class on the peer with its constructor; the object lives
    /// until [`RemoteObject::free`] or until this connection closes.
    pub(crate) async fn create_object<A: Serialize>(
        &self,
        constructor: &Method<A, ObjectId>,
        argument: &A,
    ) -> Result<RemoteObject, Error> {
        let ObjectId(id) = self.call_method(constructor, 0, argument).await?;
        Ok(RemoteObject {
            conn: self.clone(),
            id,
            class: constructor.service,
        })
    }
}

/// A remote object: an instance of a class on the peer, owned by this connection.
#[derive(Debug, Clone)]
pub struct RemoteObject {
    conn: Connection,
    id: u64,
    class: &'static str,
}

impl RemoteObject {
    /// Its id on the connection.
    pub fn id(&self) -> ObjectId {
        ObjectId(self.id)
    }

    /// Its class.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// Calls one of its methods.
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &Method<A, R>,
        argument: &A,
    ) -> Result<R, Error> {
        if method.service != self.class {
            return Err(Error::BadRequest(format!(
                "`{}.{}` is not a method of `{}`",
                method.service, method.name, self.class
            )));
        }
        self.conn.call_method(method, self.id, argument).await
    }

    /// Frees it on the peer; calls on it fail from then on with [`Error::NoSuchObject`].
    pub async fn free(&self) -> Result<(), Error> {
        let request = postcard::to_allocvec(&ObjectId(self.id))?;
        self.conn.call_raw(FREE, &request, None).await?;
        Ok(())
    }
}
