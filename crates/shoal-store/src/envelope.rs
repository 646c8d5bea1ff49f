//! Kind-independent access to the object inside a `StoreObject` envelope: its name, version
//! and a typed borrow, so that the tables can hold every kind in one shape.

use std::any::Any;

use shoal_api::object::Object;
use shoal_api::v1::{StoreObject, store_object::Object as Inner};

/// Runs `$body` with `$object` bound to whichever concrete object the envelope holds.
macro_rules! each_kind {
    ($inner:expr, |$object:ident| $body:expr) => {
        match $inner {
            Inner::Cluster($object) => $body,
            Inner::Node($object) => $body,
            Inner::Service($object) => $body,
            Inner::Task($object) => $body,
            Inner::Network($object) => $body,
            Inner::Secret($object) => $body,
            Inner::Config($object) => $body,
        }
    };
}

/// The unique name of the object (empty when unnamed or for kinds without unique names).
pub(crate) fn name(object: &StoreObject) -> &str {
    object
        .object
        .as_ref()
        .map_or("", |inner| each_kind!(inner, |o| o.name()))
}

/// The version last written (0 when never stored).
pub(crate) fn version(object: &StoreObject) -> u64 {
    object
        .object
        .as_ref()
        .map_or(0, |inner| each_kind!(inner, |o| o.version()))
}

pub(crate) fn set_version(object: &mut StoreObject, version: u64) {
    if let Some(inner) = object.object.as_mut() {
        each_kind!(inner, |o| o.meta_mut().version = version);
    }
}

/// Borrows the object as `T` when the envelope holds a `T`.
pub(crate) fn downcast<T: Object>(object: &StoreObject) -> Option<&T> {
    let inner: &dyn Any = each_kind!(object.object.as_ref()?, |o| o as &dyn Any);
    inner.downcast_ref()
}
