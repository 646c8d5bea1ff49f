//! Uniform access to the replicated objects: their kind, ID, metadata and name, and the
//! `StoreObject` envelope that carries any of them.

use crate::v1::{self, store_object::Object as Inner};

/// The kinds of replicated object, in a fixed order (snapshots and listings use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Cluster,
        Kind::Node,
        Kind::Service,
        Kind::Task,
        Kind::Network,
        Kind::Secret,
        Kind::Config,
    ];

    /// Lowercase noun used in messages ("node", "config", …).
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.noun())
    }
}

/// Implemented by every replicated object type.
pub trait Object: Clone + Send + Sync + 'static {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn meta(&self) -> Option<&v1::Meta>;
    fn meta_mut(&mut self) -> &mut v1::Meta;
    /// The unique name, for kinds whose names are unique (empty when unnamed).
    fn name(&self) -> &str;
    fn into_store_object(self) -> v1::StoreObject;
    fn from_store_object(object: v1::StoreObject) -> Option<Self>;

    /// The version last written (0 for an object never stored).
    fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }
}

fn annotations_name(annotations: &Option<v1::Annotations>) -> &str {
    annotations.as_ref().map_or("", |a| a.name.as_str())
}

macro_rules! impl_object {
    ($ty:ident, $kind:ident, |$this:ident| $name:expr) => {
        impl Object for v1::$ty {
            const KIND: Kind = Kind::$kind;
            fn id(&self) -> &str {
                &self.id
            }
            fn meta(&self) -> Option<&v1::Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut v1::Meta {
                self.meta.get_or_insert_with(Default::default)
            }
            fn name(&self) -> &str {
                let $this = self;
                $name
            }
            fn into_store_object(self) -> v1::StoreObject {
                v1::StoreObject {
                    object: Some(Inner::$kind(self)),
                }
            }
            fn from_store_object(object: v1::StoreObject) -> Option<Self> {
                match object.object {
                    Some(Inner::$kind(inner)) => Some(inner),
                    _ => None,
                }
            }
        }
    };
}

impl_object!(Cluster, Cluster, |c| c
    .spec
    .as_ref()
    .map_or("", |s| annotations_name(&s.annotations)));
impl_object!(Node, Node, |n| n
    .spec
    .as_ref()
    .map_or("", |s| annotations_name(&s.annotations)));
impl_object!(Service, Service, |s| s
    .spec
    .as_ref()
    .map_or("", |s| annotations_name(&s.annotations)));
impl_object!(Task, Task, |_t| "");
impl_object!(Network, Network, |n| n
    .spec
    .as_ref()
    .map_or("", |s| annotations_name(&s.annotations)));
impl_object!(Secret, Secret, |s| s
    .spec
    .as_ref()
    .map_or("", |s| annotations_name(&s.annotations)));
impl_object!(Config, Config, |c| c
    .spec
    .as_ref()
    .map_or("", |s| annotations_name(&s.annotations)));

impl v1::StoreObject {
    pub fn kind(&self) -> Option<Kind> {
        Some(match self.object.as_ref()? {
            Inner::Cluster(_) => Kind::Cluster,
            Inner::Node(_) => Kind::Node,
            Inner::Service(_) => Kind::Service,
            Inner::Task(_) => Kind::Task,
            Inner::Network(_) => Kind::Network,
            Inner::Secret(_) => Kind::Secret,
            Inner::Config(_) => Kind::Config,
        })
    }

    pub fn id(&self) -> Option<&str> {
        Some(match self.object.as_ref()? {
            Inner::Cluster(o) => &o.id,
            Inner::Node(o) => &o.id,
            Inner::Service(o) => &o.id,
            Inner::Task(o) => &o.id,
            Inner::Network(o) => &o.id,
            Inner::Secret(o) => &o.id,
            Inner::Config(o) => &o.id,
        })
    }
}
